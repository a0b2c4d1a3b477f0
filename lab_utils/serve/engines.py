"""Which inference engine serves the OpenAI API in notebooks 04-07: vLLM where it is installed, else llama.cpp.

vLLM has wheels for Linux only (CUDA, and the CPU build the lab uses); on macOS and Windows the lab serves the same
models through llama.cpp (GGUF files the lab exports itself) with the same API, so the story still runs. An engine is
an object (`VLLM`, `LlamaCpp`; `resolve` picks one) that says once what differs: how a server is built for a model
folder, what a request must say to be greedy, what keeps a load-test request from stopping, and what /metrics offers.
Both servers share one lifecycle (`process.ServerProcess`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lab_utils.core.hardware import Hardware, vllm_build
from lab_utils.core.paths import recipe
from lab_utils.core.profiles import Profile
from lab_utils.models.loading import load_tokenizer
from lab_utils.serve import loadtest
from lab_utils.serve.llamacpp import LlamaCppServer, LlamaCppSpec, build_command, installed, no_stop_fields
from lab_utils.serve.process import ServerProcess, start_together
from lab_utils.serve.vllm import VLLMServer, command_table, serve_dtype, spec_for

# The GGUF file type 04 and 05 serve on llama.cpp: f32, so answers match transformers' fp32 greedy ones token for token
# (f16 and q8_0 can flip near-tied tokens on a small model); notebook 06 compares the smaller types.
SERVE_FILE_TYPE = "f32"


class EngineError(RuntimeError):
    """No engine can serve here, or the one asked for cannot, with the fix."""


class Engine:
    """What the notebooks need of an inference engine; one subclass per engine."""

    name = ""  # vllm | llamacpp
    label = ""  # as printed
    serves_adapters = False  # serves a LoRA adapter beside the base (--enable-lora)
    takes_request_template = False  # accepts a chat template in the request
    greedy: dict[str, Any] = {}  # what a request adds to be decoded greedily
    fix = ""  # how to install it
    KV_LOG_PATTERNS: tuple[tuple[str, str, float], ...] = ()  # (key, regex, scale) read from the server's log

    def installed(self) -> bool:
        """True when the engine can be imported here."""
        raise NotImplementedError

    def server(
        self,
        profile: Profile,
        hw: Hardware,
        model_dir: str,
        *,
        served_name: str,
        log_dir: str | Path,
        log_name: str,
        timeout: float | None = None,
        **changes: Any,
    ) -> ServerProcess:
        """A (not yet started) server for one model folder."""
        raise NotImplementedError

    def finetuned_server(
        self,
        run: Any,
        profile: Profile,
        hw: Hardware,
        *,
        served_name: str,
        log_dir: str | Path,
        log_name: str,
        timeout: float | None = None,
        **changes: Any,
    ) -> ServerProcess:
        """The fine-tuned model's server: what 02 trained (`runconfig.TrainedRun`)."""
        raise NotImplementedError

    def no_stop(self, model_dir: str | Path) -> dict[str, Any] | None:
        """The load test's fields that keep a request from stopping at EOS (None: vLLM's ignore_eos, the default)."""
        return None

    def kv_cache_usage(self, base_url: str) -> dict[str, float]:
        """The KV-cache gauges from /metrics, where the engine has them."""
        return {}

    def kv_cache_dtype(self, profile: Profile, hw: Hardware) -> str:
        """The dtype its KV cache stores keys and values in, for a model served with this profile here."""
        raise NotImplementedError

    def kv_cache_log(self, log_text: str) -> dict[str, float]:
        """What a server's log says it allocated for the KV cache: `gib` and `tokens` (those it states)."""
        found = {}
        for key, pattern, scale in self.KV_LOG_PATTERNS:
            match = re.search(pattern, log_text)
            if match:
                found[key] = float(next(g for g in match.groups() if g).replace(",", "")) * scale
        return found

    def command_table(self, profile: Profile, model_dir: str) -> Any:
        """The server command this engine would run."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name


class VLLM(Engine):
    """vLLM's OpenAI-compatible server (CUDA, or the CPU build)."""

    name, label = "vllm", "vLLM"
    serves_adapters = takes_request_template = True
    greedy: dict[str, Any] = {}  # nothing: the lab starts vLLM with temperature 0 as the default
    fix = "vLLM has wheels for Linux only; use engine='llamacpp' here"
    KV_LOG_PATTERNS = (
        ("tokens", r"(?:GPU|CPU) KV cache size: ([\d,]+) tokens", 1.0),
        ("gib", r"Available KV cache memory: ([\d.]+) GiB|Explicitly set \(([\d.]+)/[\d.]+\) GiB for KV cache", 1.0),
    )

    def installed(self) -> bool:
        return vllm_build() is not None  # the one rule: the hardware probe reports the same

    def server(self, profile, hw, model_dir, *, served_name, log_dir, log_name, timeout=None, **changes):  # type: ignore[no-untyped-def]
        return VLLMServer(spec_for(profile, hw, model_dir, served_name, **changes), log_dir, log_name, timeout)

    def finetuned_server(self, run, profile, hw, *, served_name, log_dir, log_name, timeout=None, **changes):  # type: ignore[no-untyped-def]
        return VLLMServer(run.finetuned_spec(profile, hw, served_name, **changes), log_dir, log_name, timeout)

    def kv_cache_usage(self, base_url: str) -> dict[str, float]:
        return loadtest.kv_cache_usage(base_url)

    def kv_cache_dtype(self, profile: Profile, hw: Hardware) -> str:
        return serve_dtype(profile.serve.dtype, hw)[0]  # the model's --dtype: the lab sets no --kv-cache-dtype

    def command_table(self, profile: Profile, model_dir: str) -> Any:
        return command_table(profile, model_dir)


class LlamaCpp(Engine):
    """llama-cpp-python's OpenAI-compatible server, on GGUF files the lab exports."""

    name, label = "llamacpp", "llama.cpp"
    greedy: dict[str, Any] = {"temperature": 0.0}  # its server samples at 0.8 unless told
    fix = "`make setup LLAMACPP=1` (builds llama.cpp, 8-11 minutes on 2 cores)"
    KV_LOG_PATTERNS = (
        ("gib", r"llama_kv_cache: size =\s*([\d.]+) MiB", 1 / 1024),
        ("tokens", r"llama_kv_cache: size =\s*[\d.]+ MiB \(\s*(\d+) cells", 1.0),
    )

    def kv_cache_dtype(self, profile: Profile, hw: Hardware) -> str:
        return "float16"  # llama.cpp's default KV type (f16), whatever the GGUF's weights are

    def installed(self) -> bool:
        return installed()

    def server(self, profile, hw, model_dir, *, served_name, log_dir, log_name, timeout=None, **changes):  # type: ignore[no-untyped-def]
        gguf = gguf_for(model_dir, Path(log_dir).parent / "gguf")
        note = f"llama.cpp serves {gguf.name}, exported from {model_dir} by recipes/gguf.py"
        return gguf_server(
            gguf, profile, served_name=served_name, log_dir=log_dir, log_name=log_name, timeout=timeout, note=note
        )

    def finetuned_server(self, run, profile, hw, *, served_name, log_dir, log_name, timeout=None, **changes):  # type: ignore[no-untyped-def]
        if not run.merged:
            raise EngineError("llama.cpp serves merged models only, and notebook 02 merged none here (70B): use vLLM")
        return self.server(
            profile,
            hw,
            str(run.merged_dir),
            served_name=served_name,
            log_dir=log_dir,
            log_name=log_name,
            timeout=timeout,
        )

    def no_stop(self, model_dir: str | Path) -> dict[str, Any] | None:
        return no_stop_fields(int(load_tokenizer(str(model_dir)).eos_token_id))

    def command_table(self, profile: Profile, model_dir: str) -> Any:
        import pandas as pd

        spec = gguf_spec(f"{Path(model_dir).name}-{SERVE_FILE_TYPE}.gguf", profile, "model")

        cmd, _ = build_command(spec, 8000, "$API_KEY")
        return pd.DataFrame([{"engine": "llama.cpp", "command": " ".join(cmd[1:])}]).set_index("engine")


ENGINES: dict[str, Engine] = {e.name: e for e in (VLLM(), LlamaCpp())}


# Servers start side by side only on a CPU with this much memory: each vLLM server on a CPU holds about 2 GB (its
# process and its 1 GiB KV cache), and an 8 GB laptop cannot hold three beside the notebook.
TOGETHER_MIN_MEMORY_GB = 16.0


def start_with_next(first: ServerProcess, *later: ServerProcess | None, hw: Hardware) -> None:
    """Start `first`. On a CPU with the memory for it the `later` servers start beside it: a start is mostly one core
    importing Python, so on two cores several starts take little more than one. On a GPU (or a small machine) each
    later one waits for its turn (`with server:` or `server.start()` starts it): two vLLM servers do not share one
    GPU's memory. None entries are skipped."""
    together = hw.device == "cpu" and hw.memory_gb >= TOGETHER_MIN_MEMORY_GB
    start_together([first, *(s for s in later if s is not None)] if together else [first])


def resolve(engine: str | Engine = "auto") -> Engine:
    """ "auto" -> vLLM where installed, else llama.cpp; a named engine must be installed."""
    if isinstance(engine, Engine):
        return engine
    if engine not in ("auto", *ENGINES):
        raise EngineError(f"engine {engine!r}: choose auto, {' or '.join(ENGINES)}")
    if engine == "auto":
        for candidate in ENGINES.values():
            if candidate.installed():
                return candidate
        raise EngineError(
            "neither vLLM nor llama.cpp is installed: on Linux `make setup`; elsewhere `make setup LLAMACPP=1` "
            "(builds llama.cpp, 8-11 minutes on 2 cores)"
        )
    chosen = ENGINES[engine]
    if not chosen.installed():
        raise EngineError(f"engine {engine!r} is not installed: {chosen.fix}")
    return chosen


def vllm_installed() -> bool:
    """True when vLLM can be imported here (Linux only: it has no macOS or Windows wheel)."""
    return ENGINES["vllm"].installed()


def llamacpp_installed() -> bool:
    """True when llama-cpp-python and its server extra can be imported here."""
    return ENGINES["llamacpp"].installed()


def gguf_for(model_dir: str | Path, folder: str | Path, file_type: str = SERVE_FILE_TYPE) -> Path:
    """The model folder as a GGUF file in `folder` (exported once, then reused)."""
    model_dir = Path(model_dir)
    path = Path(folder) / f"{model_dir.name}-{file_type}.gguf"
    if not path.exists() or path.stat().st_mtime < (model_dir / "config.json").stat().st_mtime:
        recipe("gguf").export(model_dir, path, file_type)
    return path


def gguf_spec(
    gguf: str | Path, profile: Profile, served_name: str, file_type: str = SERVE_FILE_TYPE, note: str = ""
) -> Any:
    """llama.cpp's server settings for one GGUF file, with the profile's context length."""
    return LlamaCppSpec(
        model=str(gguf),
        served_model_name=served_name,
        n_ctx=profile.serve.max_model_len,
        quantization=f"gguf {file_type}",
        notes=(note or f"llama.cpp serves {Path(gguf).name}",),
    )


def gguf_server(
    gguf: str | Path,
    profile: Profile,
    *,
    served_name: str,
    log_dir: str | Path,
    log_name: str,
    timeout: float | None = None,
    file_type: str = SERVE_FILE_TYPE,
    note: str = "",
) -> ServerProcess:
    """A (not yet started) llama.cpp server for one GGUF file."""
    return LlamaCppServer(gguf_spec(gguf, profile, served_name, file_type, note), log_dir, log_name, timeout)
