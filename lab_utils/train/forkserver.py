"""A fork server: one process imports torch, transformers, TRL, PEFT and bitsandbytes once, before any model exists,
then forks a fresh child per request. Each child starts from the same idle state and exits when done, so one run's
memory cannot leak into the next, and the imports (about 11 s on a slow CPU) are paid once (the memory sweep)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HEAVY_MODULES = ("torch", "transformers", "trl", "peft", "datasets", "bitsandbytes", "psutil")
# Importing bitsandbytes asks torch for the GPU's compute capability, which initializes CUDA, and peft imports
# bitsandbytes: a child forked after that fails with "Cannot re-initialize CUDA in forked subprocess". With a GPU the
# server imports the rest only; each child imports these itself, after the fork.
CUDA_UNSAFE_BEFORE_FORK = ("bitsandbytes", "peft", "trl")


def preload_modules(cuda: bool) -> tuple[str, ...]:
    """What the server imports before it forks: everything heavy on a CPU; nothing that initializes CUDA with a GPU."""
    return tuple(m for m in HEAVY_MODULES if not (cuda and m in CUDA_UNSAFE_BEFORE_FORK))


def preload(cuda: bool) -> None:
    """Import what the server keeps loaded: `preload_modules`, and on a CPU the trainer's module trees too. Not with a
    GPU: `transformers.trainer` imports peft, which imports bitsandbytes (found by scripts/gpu_check.py's c1_fork)."""
    for name in preload_modules(cuda):
        try:
            __import__(name)
        except ImportError:
            pass
    if not cuda:
        import transformers.trainer  # noqa: F401
        import trl  # noqa: F401 - the SFTTrainer's module tree


_TAG = "@@lab-memsweep "


class SweepWorkerError(RuntimeError):
    """A configuration's run failed; the message quotes the end of its log."""


class ForkServer:
    """A process that imports the training stack once, then forks one fresh child per configuration.

    `with ForkServer(log, cuda) as server: server.run(config, ...)`. Children write their result to a pipe; their stdout
    and stderr go to the log file. The server is stopped (with any child) when the block ends, even after an error."""

    def __init__(self, log_path: str | Path, cuda: bool, module: str = "lab_utils.train.memsweep") -> None:
        self.log_path = Path(log_path)
        self.cuda = cuda  # the machine has a CUDA GPU (the run's resolved hardware): what the server preloads
        self.module = module  # its `main(["--serve"])` calls `serve` with the child's work
        self.proc: subprocess.Popen[str] | None = None
        self.import_seconds: float | None = None

    def __enter__(self) -> ForkServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--serve"] + (["--cuda"] if self.cuda else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            start_new_session=True,
        )
        log.close()
        ready = self._read(timeout=600)
        self.import_seconds = ready.get("import_seconds")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server and any child it still has."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def _read(self, timeout: float) -> dict[str, Any]:
        """The server's next tagged message (other output is ignored); raise on death or timeout."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise SweepWorkerError(
                    f"the memory-sweep worker gave no answer within {timeout:.0f} s; log: {self.log_path}"
                )
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 5.0))
            if not ready:
                continue
            line = self.proc.stdout.readline()
            if not line:
                raise SweepWorkerError(f"the memory-sweep worker exited (code {self.proc.poll()}):\n{self._log_tail()}")
            if line.startswith(_TAG):
                return json.loads(line[len(_TAG) :])

    def _log_tail(self, n: int = 12) -> str:
        """The last lines of the worker's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.strip().splitlines()[-n:])

    def run(self, request: dict[str, Any], label: str, timeout: float = 900.0) -> dict[str, Any]:
        """Run one request in a fresh child of the server and return its result."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self._read(timeout)
        if "error" in reply:
            raise SweepWorkerError(f"memory sweep run {label!r} failed: {reply['error']}\n{self._log_tail()}")
        return reply["result"]


def serve(handler: Callable[[dict[str, Any]], dict[str, Any]], cuda: bool) -> int:
    """The fork server's loop: import once (`cuda`: for a GPU machine), then for each request line fork a child that
    runs `handler` on it."""
    t0 = time.perf_counter()
    preload(cuda)
    import torch

    if torch.cuda.is_initialized():  # forking now would hand every child a CUDA it cannot use
        raise RuntimeError("CUDA was initialized before the fork server forked: the sweep cannot run its rows safely")

    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")  # the protocol keeps its own copy of stdout...
    os.dup2(2, 1)  # ...and library prints go to the log instead
    sys.stdout = sys.stderr

    def say(message: dict[str, Any]) -> None:
        out.write(_TAG + json.dumps(message) + "\n")
        out.flush()

    say({"ready": True, "import_seconds": round(time.perf_counter() - t0, 2)})
    for line in sys.stdin:
        request = json.loads(line)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one configuration, then exit without running the parent's cleanup
            os.close(read_fd)
            out.close()
            code = 0
            try:
                payload = {"result": handler(request)}
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                import traceback

                traceback.print_exc()
                payload, code = {"error": f"{type(e).__name__}: {e}"}, 1
            with os.fdopen(write_fd, "w") as w:
                w.write(json.dumps(payload))
            sys.stderr.flush()
            os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd) as r:
            text = r.read()
        _, status = os.waitpid(pid, 0)
        if text:
            say(json.loads(text))
        else:
            say({"error": f"the run's process died ({_status_text(status)}): out of memory?"})
    return 0


def _status_text(status: int) -> str:
    """A child's wait status in words."""
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.WEXITSTATUS(status)}"
