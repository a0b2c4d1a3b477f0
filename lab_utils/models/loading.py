"""Loading models and tokenizers, in one place: the base model for training (full, LoRA, 4-bit QLoRA), base +
adapter unmerged, and a model for evaluation; the tokenizer with a pad token distinct from EOS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab_utils.models import rehearsal
from lab_utils.models.pocket import pocket_model_path
from lab_utils.run.hardware import Hardware, compute_dtype, probe
from lab_utils.run.profiles import Profile


def resolve_model_path(profile: Profile) -> str:
    """The base model's local folder (the shipped pocket model, or a local rebuild with LAB_POCKET=local) or hub id."""
    if profile.is_pocket:
        return str(pocket_model_path())
    return resolve_hub_model(profile.base_model, standin=profile.rehearsal)


def resolve_hub_model(model_id: str, standin: bool = False) -> str:
    """A hub model id as the lab loads it: the id itself, or in a rehearsal (`standin`, from the resolved run
    configuration) the local stand-in of the same family built in its place."""
    return str(rehearsal.model_standin(model_id)) if standin else model_id


def load_tokenizer(model_path: str) -> Any:
    """The base model's tokenizer, with a pad token distinct from EOS where the model has none (as 02 shows)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.pad_token = distinct_pad_token(tok)
    return tok


def distinct_pad_token(tokenizer: Any) -> str:
    """A pad token that is not EOS: pad == eos makes some collators mask the EOS label, and the model never learns to
    stop (trl#1623). Llama 3's reserved special token where it has one, else UNK (EOS only as a last resort)."""
    reserved = "<|reserved_special_token_0|>"
    return reserved if reserved in tokenizer.get_vocab() else tokenizer.unk_token or tokenizer.eos_token


def half_dtype(hardware: Hardware | None = None) -> str:
    """The 16-bit float `hardware` computes in (the resolved run's decision hardware): bfloat16, except float16 on a CUDA
    GPU below compute capability 8.0 (T4, V100), where bf16 is only emulated and vLLM refuses it. Without it: this
    machine's, or in a rehearsal the target GPU's (a T4 rehearsal trains and merges in float16 on the CPU)."""
    return compute_dtype(hardware or rehearsal.decision_target() or probe())


def _placement(method: str, cuda: bool | None = None) -> dict[str, Any]:
    """Where each process puts a 4-bit model: under plain DDP each rank on its own GPU (otherwise bitsandbytes puts
    every rank's model on cuda:0); under DeepSpeed or FSDP the launcher places and shards it (no device_map)."""
    import os

    import torch

    if method != "qlora" or not (torch.cuda.is_available() if cuda is None else cuda):
        return {}
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" or os.environ.get("ACCELERATE_USE_FSDP") == "true":
        return {}
    return {"device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}


def load_dtype(method: str, bf16: bool, hardware: Hardware | None = None) -> str:
    """The dtype the base model's weights load in. Full fine-tuning trains every weight: fp32 master weights, with
    bf16 only in autocast (4 + 2 + 4 + 8: the 18 bytes per parameter the lab teaches for the HF Trainer's mixed
    precision; pure-bf16 AdamW would lose small updates).
    LoRA and QLoRA freeze the base, so it loads in the 16-bit compute dtype when training runs in mixed precision."""
    if method == "full" or not bf16:
        return "float32"
    return half_dtype(hardware)


def bnb_kwargs(method: str, hardware: Hardware | None = None) -> dict[str, Any]:
    """`BitsAndBytesConfig` arguments for QLoRA (4-bit NF4, double quantization, computing in the 16-bit compute dtype);
    empty for LoRA and full fine-tuning, which load no quantized weights."""
    if method != "qlora":
        return {}
    import torch

    compute = getattr(torch, half_dtype(hardware))
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": compute,
        # 4-bit weights stored in the compute dtype: FSDP and ZeRO-3 can then shard them like the other weights.
        "bnb_4bit_quant_storage": compute,
    }


def nf4_config() -> Any:
    """QLoRA's `BitsAndBytesConfig` (`bnb_kwargs("qlora")`), for loading a model in 4-bit to evaluate it."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**bnb_kwargs("qlora"))


def load_kwargs(
    method: str,
    bf16: bool,
    attn_implementation: str | None = None,
    hardware: Hardware | None = None,
    cuda: bool | None = None,
) -> dict[str, Any]:
    """`from_pretrained` arguments for the base model to train, besides its quantization config: the weights' dtype
    (`load_dtype`, for `hardware`), where each process puts a 4-bit model (on a GPU: `cuda`), and the attention kernel
    when one is chosen."""
    import torch

    kwargs: dict[str, Any] = {"dtype": getattr(torch, load_dtype(method, bf16, hardware)), **_placement(method, cuda)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def load_model(model_path: str, method: str, bf16: bool, attn_implementation: str | None = None) -> Any:
    """The base model for training, loaded as notebook 02 shows (`load_kwargs`, and `bnb_kwargs` for QLoRA). Call it
    after the `SFTConfig` is made, so DeepSpeed ZeRO-3 and FSDP see the model load."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = bnb_kwargs(method)
    quant = BitsAndBytesConfig(**bnb) if bnb else None
    return AutoModelForCausalLM.from_pretrained(
        model_path, quantization_config=quant, **load_kwargs(method, bf16, attn_implementation)
    )


def free() -> None:
    """Release memory between phases, after the caller has dropped its references (`del model`): collect, and return
    cached CUDA memory to the device."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_base_and_adapter(
    base_path: str, adapter_dir: str | Path, dtype: str = "bfloat16", four_bit: bool = False
) -> Any:
    """The base model in `dtype` (or 4-bit NF4 with `four_bit`, as QLoRA trained) with the adapter applied, not
    merged."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"quantization_config": nf4_config()} if four_bit else {}
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=getattr(torch, dtype), **kwargs)
    return PeftModel.from_pretrained(base, str(adapter_dir))


def load_for_eval(path: str, adapter_dir: str | None = None, four_bit: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) in fp32 on CPU or 16-bit on a GPU; with `adapter_dir`, base+adapter unmerged. `four_bit`
    loads the weights in NF4, as QLoRA trained: an 8B model then takes ~6 GB instead of 16 (the 16 GB profile)."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    dtype = half_dtype() if cuda else "float32"
    kwargs: dict[str, Any] = {"quantization_config": nf4_config()} if four_bit else {}
    if adapter_dir:
        model = load_base_and_adapter(path, adapter_dir, dtype, four_bit)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **kwargs)
    if cuda and not four_bit:  # bitsandbytes places a 4-bit model on the GPU itself
        model = model.to("cuda")
    return model, load_tokenizer(adapter_dir or path)
