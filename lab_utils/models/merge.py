"""What a merged folder must hold for vLLM, and how the fine-tuned model is served (merged, or the adapter beside the
base). The merge itself is written in 02's cells and `recipes/sft.py`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_utils.core.paths import atomic_write_text
from lab_utils.core.profiles import Profile
from lab_utils.data.alpaca import ALPACA_CHAT_TEMPLATE


def check_merged(merged_dir: str | Path) -> dict[str, Any]:
    """Facts about a merged folder that vLLM relies on: safetensors only, no quantization config, EOS, template."""
    merged_dir = Path(merged_dir)
    config = json.loads((merged_dir / "config.json").read_text())
    gen = json.loads((merged_dir / "generation_config.json").read_text())
    files = [p.name for p in merged_dir.iterdir()]
    return {
        "safetensors_only": any(f.endswith(".safetensors") for f in files)
        and not any(f.endswith(".bin") for f in files),
        "has_quantization_config": "quantization_config" in config,
        "generation_eos_token_id": gen.get("eos_token_id"),
        "has_chat_template": (merged_dir / "chat_template.jinja").exists(),
    }


@dataclass(frozen=True)
class ServingPlan:
    """How the fine-tuned model is served: a merged folder, or (where merging does not fit) the adapter beside the
    base model in one vLLM server (`--enable-lora`), with the training template as chat template either way."""

    merged_dir: str  # "" when the adapter is served beside the base
    adapter_dir: str
    chat_template: str  # path of the Jinja file vLLM gets with --chat-template
    note: str

    @property
    def merged(self) -> bool:
        """True when a merged model folder exists (and transformers can evaluate it)."""
        return bool(self.merged_dir)


def merged_plan(merged_dir: str | Path, adapter_dir: str | Path, dtype: str) -> ServingPlan:
    """How a merged folder is served: itself, with the chat template it carries."""
    merged_dir = Path(merged_dir)
    note = f"merged in {dtype} into {merged_dir}"
    return ServingPlan(str(merged_dir), str(adapter_dir), str(merged_dir / "chat_template.jinja"), note)


def adapter_plan(profile: Profile, adapter_dir: str | Path) -> ServingPlan:
    """For a profile that must not merge (70B: a bf16 copy is ~141 GB, more than 128 GB of unified memory): only the
    chat template is written beside the adapter, and vLLM serves the base with the adapter beside it."""
    template = Path(adapter_dir) / "chat_template.jinja"
    atomic_write_text(template, ALPACA_CHAT_TEMPLATE)
    note = (
        f"not merged: {profile.name} keeps its base quantized; vLLM serves the base in FP8 with the adapter beside it "
        "(--enable-lora), and the transformers-side evaluation is skipped (a bf16 copy of the model would not fit)"
    )
    return ServingPlan("", str(adapter_dir), str(template), note)


def without_chat_template(model_dir: str | Path, dest: str | Path) -> Path:
    """A copy of a model folder without its chat template (04's exercise): the files are linked, not copied (no second
    copy of the weights; copied where links are not allowed), the template file (transformers 5's
    `chat_template.jinja`) is left out, and `tokenizer_config.json` is written without a `chat_template` key (where
    older versions keep it)."""
    import shutil

    src, dest = Path(model_dir).resolve(), Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for path in src.iterdir():
        if path.name in ("chat_template.jinja", "chat_template.json"):
            continue
        if path.name == "tokenizer_config.json":
            config = {k: v for k, v in json.loads(path.read_text()).items() if k != "chat_template"}
            atomic_write_text(dest / path.name, json.dumps(config, indent=2))
            continue
        try:
            (dest / path.name).symlink_to(path)
        except OSError:  # Windows without developer mode
            shutil.copy2(path, dest / path.name)
    return dest
