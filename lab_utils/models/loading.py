"""Loading models and tokenizers, in one place: the base model for training (full, LoRA, 4-bit QLoRA), base +
adapter unmerged, and a model for evaluation; the tokenizer with a pad token distinct from EOS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lab_utils.core.hardware import Hardware, compute_dtype
from lab_utils.core.profiles import Profile
from lab_utils.models import rehearsal
from lab_utils.models.pocket import pocket_model_path


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


def _placement(method: str, cuda: bool) -> dict[str, Any]:
    """Where each process puts a 4-bit model on a GPU (`cuda`): under plain DDP each rank on its own GPU (otherwise
    bitsandbytes puts every rank's model on cuda:0); under DeepSpeed or FSDP the launcher places and shards it."""
    import os

    if method != "qlora" or not cuda:
        return {}
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" or os.environ.get("ACCELERATE_USE_FSDP") == "true":
        return {}
    return {"device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}


def load_dtype(method: str, bf16: bool, hardware: Hardware) -> str:
    """The dtype the base model's weights load in. Full fine-tuning trains every weight: fp32 master weights, with
    bf16 only in autocast (4 + 2 + 4 + 8: the 18 bytes per parameter the lab teaches for the HF Trainer's mixed
    precision; pure-bf16 AdamW would lose small updates).
    LoRA and QLoRA freeze the base, so it loads in `hardware`'s 16-bit compute dtype when training runs in mixed
    precision (`hardware`: the run's decision hardware, a rehearsal's target GPU)."""
    if method == "full" or not bf16:
        return "float32"
    return compute_dtype(hardware)


def bnb_kwargs(method: str, hardware: Hardware) -> dict[str, Any]:
    """`BitsAndBytesConfig` arguments for QLoRA (4-bit NF4, double quantization, computing in `hardware`'s 16-bit
    compute dtype); empty for LoRA and full fine-tuning, which load no quantized weights."""
    return nf4_kwargs(compute_dtype(hardware)) if method == "qlora" else {}


def nf4_kwargs(compute: str) -> dict[str, Any]:
    """4-bit NF4 with double quantization, computing in `compute` (a 16-bit float's name)."""
    import torch

    dtype = getattr(torch, compute)
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": dtype,
        # 4-bit weights stored in the compute dtype: FSDP and ZeRO-3 can then shard them like the other weights.
        "bnb_4bit_quant_storage": dtype,
    }


def load_kwargs(
    method: str, bf16: bool, hardware: Hardware, cuda: bool, attn_implementation: str | None = None
) -> dict[str, Any]:
    """`from_pretrained` arguments for the base model to train, besides its quantization config: the weights' dtype
    (`load_dtype`, for `hardware`), where each process puts a 4-bit model (on a GPU: `cuda`), and the attention kernel
    when one is chosen."""
    import torch

    kwargs: dict[str, Any] = {"dtype": getattr(torch, load_dtype(method, bf16, hardware)), **_placement(method, cuda)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


@dataclass(frozen=True)
class EvalLoad:
    """How a model loads to be evaluated, decided once by `resolve` (`eval_load`): on which device, in which dtype,
    and whether in 4-bit NF4 (computing in `compute_dtype`), as a QLoRA profile trained."""

    device: str
    dtype: str
    four_bit: bool = False
    compute_dtype: str = "bfloat16"

    @property
    def precision(self) -> str:
        """How the weights are held, in short: nf4, fp32, bf16 or fp16."""
        return "nf4" if self.four_bit else {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[self.dtype]


def eval_load(machine: Hardware, decision: Hardware, four_bit: bool = False) -> EvalLoad:
    """fp32 on a CPU, the 16-bit compute dtype on a GPU (`machine`, the one the process runs on); NF4's compute dtype is
    the decision hardware's (a T4 rehearsal evaluates 4-bit in float16, as the T4 would)."""
    cuda = machine.device == "cuda"
    dtype = compute_dtype(machine) if cuda else "float32"
    return EvalLoad("cuda" if cuda else "cpu", dtype, four_bit, compute_dtype(decision))


def free() -> None:
    """Release memory between phases, after the caller has dropped its references (`del model`): collect, and return
    cached CUDA memory to the device."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _from_pretrained(path: str, load: EvalLoad) -> Any:
    """A model's weights in `load`'s dtype, or in NF4."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(**nf4_kwargs(load.compute_dtype)) if load.four_bit else None
    return AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, load.dtype), quantization_config=quant)


def load_for_eval(path: str, load: EvalLoad, adapter_dir: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) as `load` says (fp32 on a CPU, 16-bit on a GPU; NF4 for a QLoRA profile: an 8B model then
    takes ~6 GB instead of 16); with `adapter_dir`, base+adapter unmerged."""
    from peft import PeftModel

    model = _from_pretrained(path, load)
    if adapter_dir:  # the adapter applied, not merged
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    if load.device != "cpu" and not load.four_bit:  # bitsandbytes places a 4-bit model on the GPU itself
        model = model.to(load.device)
    return model, load_tokenizer(adapter_dir or path)
