"""Merging a LoRA adapter into its base, into a folder vLLM serves as is."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_utils.data.alpaca import ALPACA_CHAT_TEMPLATE
from lab_utils.run.paths import atomic_write_text, staged
from lab_utils.run.profiles import Profile


def merge_adapter(base_path: str, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """Notebook 02's merge cells in one call: the base in `dtype` + the adapter, `merge_and_unload()`, made ready to serve
    (`prepare_to_serve`) and saved (safetensors, tokenizer, chat template) by a staged write."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (Path(adapter_dir) / "adapter_config.json").exists():
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype))
        model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    else:  # full fine-tuning saved a whole model: nothing to merge, only the serving files to add
        model = AutoModelForCausalLM.from_pretrained(str(adapter_dir), dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    prepare_to_serve(model, tokenizer)
    with staged(out_dir) as tmp:
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)  # writes the chat template to chat_template.jinja
    return Path(out_dir)


def prepare_to_serve(model: Any, tokenizer: Any) -> None:
    """What vLLM needs of a merged model, set in place: the training prompt as chat template, no leftover
    `quantization_config` (vLLM misreads it, vllm#19050), and the EOS the model learned in the config and in a greedy
    `generation_config` (read with `--generation-config auto`)."""
    from transformers import GenerationConfig

    tokenizer.chat_template = ALPACA_CHAT_TEMPLATE
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )


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
