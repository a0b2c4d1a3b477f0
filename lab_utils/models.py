"""Loading models and tokenizers, in one place: the base model for training (full, LoRA, 4-bit QLoRA), base +
adapter unmerged, and a model for evaluation; the tokenizer with a pad token distinct from EOS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab_utils.profiles import Profile


def resolve_model_path(profile: Profile) -> str:
    """The base model's local folder (the shipped pocket model, or a local rebuild with LAB_POCKET=local) or hub id."""
    if profile.is_pocket:
        from lab_utils.pocket import pocket_model_path

        return str(pocket_model_path())
    return profile.base_model


def load_tokenizer(model_path: str) -> Any:
    """The base model's tokenizer, with a pad token distinct from EOS where the model has none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        # pad == eos makes some collators mask the EOS label, and the model never learns to stop (trl#1623).
        reserved = "<|reserved_special_token_0|>"
        tok.pad_token = reserved if reserved in tok.get_vocab() else tok.unk_token or tok.eos_token
    return tok


def load_model(model_path: str, method: str, bf16: bool, attn_implementation: str | None = None) -> Any:
    """The base model for training: full precision for full/LoRA, 4-bit NF4 for QLoRA."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    return AutoModelForCausalLM.from_pretrained(model_path, **kwargs)


def load_base_and_adapter(base_path: str, adapter_dir: str | Path, dtype: str = "bfloat16") -> Any:
    """The base model in `dtype` (never 4-bit) with the adapter applied, not merged."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype))
    return PeftModel.from_pretrained(base, str(adapter_dir))


def load_for_eval(path: str, adapter_dir: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in fp32 on CPU or bf16 on a GPU; with `adapter_dir`, base+adapter unmerged."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    dtype = "bfloat16" if cuda else "float32"
    if adapter_dir:
        model = load_base_and_adapter(path, adapter_dir, dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    if cuda:
        model = model.to("cuda")
    return model, load_tokenizer(adapter_dir or path)
