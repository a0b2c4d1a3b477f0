"""Merging a LoRA adapter into its base, into a folder vLLM serves as is."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_utils.data import ALPACA_CHAT_TEMPLATE
from lab_utils.models import load_base_and_adapter
from lab_utils.paths import atomic_write_text, swap_in_dir
from lab_utils.profiles import Profile


def merge_adapter(base_path: str, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """Merge the adapter into the base loaded in bf16; save safetensors, tokenizer, chat template, generation config."""
    from transformers import AutoTokenizer, GenerationConfig

    out_dir = Path(out_dir)
    if (Path(adapter_dir) / "adapter_config.json").exists():
        model = load_base_and_adapter(base_path, adapter_dir, dtype).merge_and_unload()
    else:  # full fine-tuning saved a whole model: nothing to merge, only the serving files to add
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(adapter_dir), dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    tokenizer.chat_template = ALPACA_CHAT_TEMPLATE
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # vLLM misreads a merged model that still claims quantization
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    (tmp / "chat_template.jinja").write_text(ALPACA_CHAT_TEMPLATE)
    return swap_in_dir(tmp, out_dir)


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


def prepare_for_serving(profile: Profile, base_path: str, adapter_dir: str | Path, out_dir: str | Path) -> ServingPlan:
    """Merge the adapter into the base (`merge_adapter`), or, for a profile that must not merge (70B: a bf16 copy is
    ~141 GB, more than 128 GB of unified memory), only write the chat template beside the adapter."""
    from lab_utils.train import merge_dtype

    adapter_dir = Path(adapter_dir)
    if profile.merge_for_serving:
        dtype = merge_dtype(profile.train)
        merged = merge_adapter(base_path, adapter_dir, out_dir, dtype=dtype)
        note = f"merged in {dtype} into {merged}"
        return ServingPlan(str(merged), str(adapter_dir), str(merged / "chat_template.jinja"), note)
    template = adapter_dir / "chat_template.jinja"
    atomic_write_text(template, ALPACA_CHAT_TEMPLATE)
    note = (
        f"not merged: {profile.name} keeps its base quantized; vLLM serves the base in FP8 with the adapter beside it "
        "(--enable-lora), and the transformers-side evaluation is skipped (a bf16 copy of the model would not fit)"
    )
    return ServingPlan("", str(adapter_dir), str(template), note)
