"""Mixed precision: the flags the trainers get (bf16, or fp16 on GPUs without bf16) and what a run trained in. The fix
fp16 needs (fp32 adapters, issue 19 C3) is in the recipes and the lesson cells that build the trainers."""

from __future__ import annotations

from typing import Any

from lab_utils.core.hardware import Hardware, compute_dtype
from lab_utils.core.profiles import TrainSettings


def trained_precision(trainer: Any) -> dict[str, Any]:
    """The mixed precision a trainer trains in (bf16 | fp16 | fp32) and its trainable weights' dtypes."""
    args = trainer.args
    dtypes = {str(p.dtype).removeprefix("torch.") for p in trainer.model.parameters() if p.requires_grad}
    return {"precision": "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32", "trainable_dtypes": sorted(dtypes)}


def mixed_precision(settings: TrainSettings, hardware: Hardware) -> dict[str, bool]:
    """SFTConfig's precision flags: the profile's bf16 becomes fp16 autocast on a GPU below compute capability 8.0
    (bf16 is emulated there), with the loss scaling fp16 needs; fp32 when the profile turns bf16 off. `hardware` is the
    run's decision hardware: a T4 rehearsal trains in fp16 autocast on the CPU."""
    if not settings.bf16:
        return {"bf16": False, "fp16": False}
    fp16 = compute_dtype(hardware) == "float16"
    return {"bf16": not fp16, "fp16": fp16}
