"""llama.cpp behind the same OpenAI API: llama-cpp-python's server for a GGUF file, started and stopped like vLLM.

llama-cpp-python has no CPU wheel on PyPI: it builds llama.cpp from source when installed (8-11 minutes on 2 cores), so
it is an extra of its own (`pip install -e ".[llamacpp]"`; `make setup LLAMACPP=1`), which `make test` installs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_utils.serve.process import ServerProcess

# What keeps llama.cpp's server from stopping at EOS in a load test (its request schema has no `ignore_eos`): a
# logit bias that makes the end-of-text token never the most likely one. The key is the token id, as a string.
NO_STOP_BIAS = -100.0


@dataclass(frozen=True)
class LlamaCppSpec:
    """Everything the llama-cpp-python server command is built from."""

    model: str  # a .gguf file
    served_model_name: str
    n_ctx: int  # the context the model was trained for (its max_position_embeddings)
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    api_key: str = ""  # "": generate one
    n_threads: int = 0  # 0: llama.cpp's default
    start_timeout_s: float = 120.0
    quantization: str | None = None  # the GGUF file type, for tables (f32, f16, q8_0, q4_0)
    notes: tuple[str, ...] = ()


def installed() -> bool:
    """True when llama-cpp-python (with its server) can be imported here."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("uvicorn") is not None


def build_command(spec: LlamaCppSpec, port: int, api_key: str) -> tuple[list[str], dict[str, str]]:
    """The command line (and extra environment) that starts llama-cpp-python's OpenAI-compatible server."""
    # On a CPU with AMX, llama.cpp's AMX weight buffers crash at the first matmul (llama.cpp#20824; seen here with
    # q8_0 and llama.cpp's own quantizer): the lab's entry point runs the same server with them off.
    module = __name__ if amx_cpu() else "llama_cpp.server"
    cmd = [
        sys.executable,
        "-m",
        module,
        "--model",
        spec.model,
        "--model_alias",
        spec.served_model_name,
        "--host",
        spec.host,
        "--port",
        str(port),
        "--api_key",
        api_key,
        "--n_ctx",
        str(spec.n_ctx),
        # By default a new request interrupts the one being streamed; queue them instead, as a server should.
        "--interrupt_requests",
        "False",
    ]
    if spec.n_threads:
        cmd += ["--n_threads", str(spec.n_threads)]
    return cmd, {}


class LlamaCppServer(ServerProcess):
    """A running llama-cpp-python server, with the lab's one server lifecycle; ready when /v1/models answers with the
    key."""

    engine_label = "llama.cpp"

    def __init__(self, spec: LlamaCppSpec, log_dir: str | Path, name: str = "llamacpp", timeout: float | None = None):
        super().__init__(log_dir, name, timeout or spec.start_timeout_s, spec.host, spec.port, spec.api_key)
        self.spec = spec

    def _command(self) -> tuple[list[str], dict[str, str]]:
        return build_command(self.spec, self.port, self.api_key)

    def _ready(self) -> bool:
        import requests

        return requests.get(f"{self.base_url}/v1/models", headers=self.headers(), timeout=2).status_code == 200


def no_stop_fields(eos_token_id: int) -> dict[str, Any]:
    """Request fields that make llama.cpp's server write max_tokens tokens (its stand-in for vLLM's ignore_eos)."""
    return {"logit_bias": {str(eos_token_id): NO_STOP_BIAS}}


def amx_cpu() -> bool:
    """True on a CPU with AMX (Intel Sapphire Rapids and later), whose llama.cpp AMX kernels are unsafe here."""
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _without_extra_buffers() -> None:
    """Make every model llama-cpp-python loads use plain CPU buffers (`use_extra_bufts = False`: no AMX or repacked
    weights); the same arithmetic, without the kernels that crash."""
    import llama_cpp.llama as llama_module

    default = llama_module.llama_cpp.llama_model_default_params

    def params() -> Any:
        p = default()
        p.use_extra_bufts = False
        return p

    llama_module.llama_cpp.llama_model_default_params = params


if __name__ == "__main__":  # `python -m lab_utils.serve.llamacpp ARGS`: llama-cpp-python's server, AMX buffers off
    _without_extra_buffers()
    from llama_cpp.server.__main__ import main

    main()
