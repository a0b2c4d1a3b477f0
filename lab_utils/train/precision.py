"""Mixed precision: the flags the trainers get (bf16, or fp16 on GPUs without bf16), what a run trained in, and the
fixes fp16 needs."""

from __future__ import annotations

from typing import Any

from lab_utils.models.loading import half_dtype
from lab_utils.run.hardware import Hardware
from lab_utils.run.profiles import TrainSettings


def adapters_for_fp16(trainer: Any) -> int:
    """Under fp16 mixed precision (a GPU without bf16, such as a T4), the trainable parameters in fp32; returns how many
    tensors were cast. TRL 1.16's SFTTrainer and DPOTrainer cast a quantized model's LoRA adapters to bf16 (the QLoRA
    paper's recommendation), and fp16's gradient scaler cannot unscale bf16 gradients ("..._unscale_cuda not
    implemented for 'BFloat16'", pytorch#127176): QLoRA on a T4 crashed at its first optimizer step (issue 19, C3).
    fp32 adapters under fp16 autocast are PEFT's own default. Call it before `train()`, which builds the optimizer."""
    import torch

    if not getattr(trainer.args, "fp16", False):
        return 0
    cast = [p for p in trainer.model.parameters() if p.requires_grad and p.dtype != torch.float32]
    for param in cast:
        param.data = param.data.float()
    return len(cast)


def trained_precision(trainer: Any) -> dict[str, Any]:
    """The mixed precision a trainer trains in (bf16 | fp16 | fp32) and its trainable weights' dtypes."""
    args = trainer.args
    dtypes = {str(p.dtype).removeprefix("torch.") for p in trainer.model.parameters() if p.requires_grad}
    return {"precision": "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32", "trainable_dtypes": sorted(dtypes)}


def mixed_precision(settings: TrainSettings, hardware: Hardware | None = None) -> dict[str, bool]:
    """SFTConfig's precision flags: the profile's bf16 becomes fp16 autocast on a GPU below compute capability 8.0
    (bf16 is emulated there), with the loss scaling fp16 needs; fp32 when the profile turns bf16 off. A rehearsal
    decides for its target GPU (`half_dtype`): a T4 rehearsal trains in fp16 autocast on the CPU."""
    if not settings.bf16:
        return {"bf16": False, "fp16": False}
    fp16 = half_dtype(hardware) == "float16"
    return {"bf16": not fp16, "fp16": fp16}
