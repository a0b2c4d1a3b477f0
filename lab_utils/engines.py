"""Which inference engine serves the OpenAI API in notebooks 04-06: vLLM where it is installed, else llama.cpp.

vLLM has wheels for Linux only (CUDA, and the CPU build the lab uses); on macOS and Windows the lab serves the same
models through llama.cpp (GGUF files the lab exports itself) with the same API, so the story still runs. Both servers
share one lifecycle (`serve.VLLMServer`); what differs is said here once: how a server is built for a model folder,
what a request must say to be greedy, what keeps a load-test request from stopping, and what /metrics offers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from lab_utils.hardware import Hardware
from lab_utils.profiles import Profile

ENGINES = ("vllm", "llamacpp")
# The GGUF file type 04 and 05 serve on llama.cpp: f32, so answers match transformers' fp32 greedy ones token for token
# (f16 and q8_0 can flip near-tied tokens on a small model); notebook 06 compares the smaller types.
SERVE_FILE_TYPE = "f32"


class EngineError(RuntimeError):
    """No engine can serve here, or the one asked for cannot, with the fix."""


def vllm_installed() -> bool:
    """True when vLLM can be imported here (Linux only: it has no macOS or Windows wheel)."""
    return importlib.util.find_spec("vllm") is not None


def llamacpp_installed() -> bool:
    """True when llama-cpp-python and its server extra can be imported here."""
    from lab_utils.llamacpp import installed

    return installed()


def resolve(engine: str = "auto") -> str:
    """ "auto" -> vLLM where installed, else llama.cpp; a named engine must be installed."""
    if engine not in ("auto", *ENGINES):
        raise EngineError(f"engine {engine!r}: choose auto, {' or '.join(ENGINES)}")
    have = {"vllm": vllm_installed(), "llamacpp": llamacpp_installed()}
    if engine == "auto":
        for name in ENGINES:
            if have[name]:
                return name
        raise EngineError(
            "neither vLLM nor llama.cpp is installed: on Linux `make setup`; elsewhere `make setup LLAMACPP=1` "
            "(builds llama.cpp, 8-11 minutes on 2 cores)"
        )
    if not have[engine]:
        fix = (
            "`make setup LLAMACPP=1` (builds llama.cpp, 8-11 minutes on 2 cores)"
            if engine == "llamacpp"
            else ("vLLM has wheels for Linux only; use engine='llamacpp' here")
        )
        raise EngineError(f"engine {engine!r} is not installed: {fix}")
    return engine


def gguf_for(model_dir: str | Path, folder: str | Path, file_type: str = SERVE_FILE_TYPE) -> Path:
    """The model folder as a GGUF file in `folder` (exported once, then reused)."""
    from lab_utils.gguf_export import export

    model_dir = Path(model_dir)
    path = Path(folder) / f"{model_dir.name}-{file_type}.gguf"
    if not path.exists() or path.stat().st_mtime < (model_dir / "config.json").stat().st_mtime:
        export(model_dir, path, file_type)
    return path


def server(
    engine: str,
    profile: Profile,
    hw: Hardware,
    model_dir: str,
    served_name: str,
    log_dir: str | Path,
    log_name: str,
    timeout: float | None = None,
    **vllm_changes: Any,
) -> Any:
    """A (not yet started) server for one model folder on `engine`; vLLM takes `vllm_changes` (LoRA modules, chat
    template, enforce_eager...), which llama.cpp has no use for."""
    from lab_utils import serve

    if engine == "vllm":
        return serve.VLLMServer(
            serve.spec_for(profile, hw, model_dir, served_name, **vllm_changes), log_dir, log_name, timeout
        )
    gguf = gguf_for(model_dir, Path(log_dir).parent / "gguf")
    note = f"llama.cpp serves {gguf.name}, exported from {model_dir} by lab_utils.gguf_export"
    return gguf_server(gguf, profile, served_name, log_dir, log_name, timeout, SERVE_FILE_TYPE, note)


def gguf_server(
    gguf: str | Path,
    profile: Profile,
    served_name: str,
    log_dir: str | Path,
    log_name: str,
    timeout: float | None = None,
    file_type: str = SERVE_FILE_TYPE,
    note: str = "",
) -> Any:
    """A (not yet started) llama.cpp server for one GGUF file, with the profile's context length."""
    from lab_utils.llamacpp import LlamaCppServer, LlamaCppSpec

    spec = LlamaCppSpec(
        model=str(gguf),
        served_model_name=served_name,
        n_ctx=profile.serve.max_model_len,
        quantization=f"gguf {file_type}",
        notes=(note or f"llama.cpp serves {Path(gguf).name}",),
    )
    return LlamaCppServer(spec, log_dir, log_name, timeout)


def finetuned_server(
    engine: str,
    run: Any,
    profile: Profile,
    hw: Hardware,
    served_name: str,
    log_dir: str | Path,
    log_name: str,
    timeout: float | None = None,
    **vllm_changes: Any,
) -> Any:
    """The fine-tuned model's server: what 02 trained (`runconfig.TrainedRun`), merged, on `engine`."""
    from lab_utils import serve

    if engine == "vllm":
        return serve.VLLMServer(
            run.finetuned_spec(profile, hw, served_name, **vllm_changes), log_dir, log_name, timeout
        )
    if not run.merged:
        raise EngineError("llama.cpp serves merged models only, and notebook 02 merged none here (70B): use vLLM")
    return server(engine, profile, hw, str(run.merged_dir), served_name, log_dir, log_name, timeout)


def greedy(engine: str) -> dict[str, Any]:
    """What a request must add to be decoded greedily: nothing on vLLM (the lab starts it with temperature 0 as the
    default), temperature 0 on llama.cpp (whose server samples at 0.8 unless told)."""
    return {} if engine == "vllm" else {"temperature": 0.0}


def no_stop(engine: str, model_dir: str | Path) -> dict[str, Any] | None:
    """The load test's fields that keep a request from stopping at EOS (None: vLLM's ignore_eos, the default)."""
    if engine == "vllm":
        return None
    from lab_utils.llamacpp import no_stop_fields
    from lab_utils.models import load_tokenizer

    return no_stop_fields(int(load_tokenizer(str(model_dir)).eos_token_id))


def kv_cache_usage(engine: str, base_url: str) -> dict[str, float]:
    """vLLM's KV-cache gauges from /metrics; llama.cpp's server has no such endpoint (empty)."""
    from lab_utils import loadtest

    return loadtest.kv_cache_usage(base_url) if engine == "vllm" else {}


def command_table(engine: str, profile: Profile, model_dir: str) -> Any:
    """The server command this engine would run: vLLM's on each described machine, or llama.cpp's here."""
    import pandas as pd

    from lab_utils import serve

    if engine == "vllm":
        return serve.command_table(profile, model_dir)
    from lab_utils.llamacpp import LlamaCppSpec, build_command

    spec = LlamaCppSpec(
        model=f"{Path(model_dir).name}-{SERVE_FILE_TYPE}.gguf",
        served_model_name="model",
        n_ctx=profile.serve.max_model_len,
    )
    cmd, _ = build_command(spec, 8000, "$API_KEY")
    return pd.DataFrame([{"engine": "llama.cpp", "command": " ".join(cmd[1:])}]).set_index("engine")
