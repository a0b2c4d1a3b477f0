"""The lab's one server lifecycle: a subprocess serving the OpenAI API, started with a deadline, stopped for sure."""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any

LOG_ROOT_CAUSE = re.compile(
    r"(Error|Exception|error:|Traceback|RuntimeError|ValueError|OSError|CUDA out of memory|Unsupported|not supported)"
)


class ServerError(RuntimeError):
    """The server could not start or answer; the message quotes the log lines with the root cause."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def root_cause(log_text: str, context: int = 2, limit: int = 25) -> str:
    """The log lines that explain a failure: those matching error patterns (with context), else the tail."""
    lines = log_text.splitlines()
    keep: list[int] = []
    for i, line in enumerate(lines):
        if LOG_ROOT_CAUSE.search(line):
            keep.extend(range(max(0, i - context), min(len(lines), i + context + 1)))
    chosen = sorted(set(keep))[-limit:] if keep else list(range(max(0, len(lines) - limit), len(lines)))
    return "\n".join(lines[i] for i in chosen)


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it if the notebook kernel dies without cleaning up."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


_LIVE: weakref.WeakSet[ServerProcess] = weakref.WeakSet()


def _stop_all() -> None:
    """Stop every server still running when the interpreter exits."""
    for server in list(_LIVE):
        server.stop()


atexit.register(_stop_all)


class ServerProcess:
    """One OpenAI-compatible server process: `with server: server.base_url ...`. Its own process group, 127.0.0.1 and
    an API key unless told otherwise, a deadline to become ready, the log's root cause on failure, and stopped however
    the caller ends (and when the interpreter exits). An engine's server (`vllm.VLLMServer`,
    `llamacpp.LlamaCppServer`) gives its command line and its readiness probe."""

    engine_label = "server"
    log_env: dict[str, str] = {}  # environment the process needs for its log to hold what the lab reads from it

    def __init__(
        self, log_dir: str | Path, name: str, timeout: float, host: str = "127.0.0.1", port: int = 0, api_key: str = ""
    ) -> None:
        self.timeout = timeout
        self.log_path = Path(log_dir) / f"{name}.log"
        self.host = host
        self.api_key = api_key or "lab-" + secrets.token_urlsafe(16)
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None
        self.command: list[str] = []
        self._launched_at = 0.0

    def _command(self) -> tuple[list[str], dict[str, str]]:
        """The command line and extra environment that start this server."""
        raise NotImplementedError

    def _ready(self) -> bool:
        """One readiness probe."""
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        """The server's root URL (the OpenAI API lives under /v1)."""
        return f"http://{self.host}:{self.port}"

    def command_line(self) -> str:
        """The command that starts this server, copyable into a terminal (`$API_KEY` in place of the key; the port is
        the one it runs on once started, else 8000)."""
        port = self.port or 8000
        cmd, env = self._command() if self.port else self._command_at(port)
        shown = {k: ("$API_KEY" if k.endswith("API_KEY") else v) for k, v in env.items()}
        text = shlex.join(cmd).replace(self.api_key, "$API_KEY")
        return " ".join(f"{k}={v}" for k, v in shown.items()) + (" " if shown else "") + text

    def _command_at(self, port: int) -> tuple[list[str], dict[str, str]]:
        """The command as it would be with `port`."""
        self.port, saved = port, self.port
        try:
            return self._command()
        finally:
            self.port = saved

    def start(self, timeout: float | None = None) -> ServerProcess:
        """Start the process and wait until /health answers 200, the process dies, or the deadline passes (the
        server's timeout unless one is given)."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> ServerProcess:
        """Start the process without waiting for it to be ready (`wait_ready` waits)."""
        if self.port and port_in_use(self.port, self.host):
            raise ServerError(f"port {self.port} on {self.host} is already in use: stop that server or pass port=0")
        self.port = self.port or free_port(self.host)
        self.command, extra_env = self._command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.log_env, **extra_env}
        self._launched_at = time.perf_counter()
        with open(self.log_path, "wb") as log:
            log.write(("$ " + " ".join(self.command) + "\n").encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        _LIVE.add(self)
        return self

    def wait_ready(self, timeout: float | None = None) -> ServerProcess:
        """Wait until the launched server is ready (its start time counted from the launch); stop it and raise if it
        dies or the deadline passes."""
        t0 = self._launched_at
        try:
            self._wait_healthy(t0 + (timeout or self.timeout))
        except BaseException:
            self.stop()
            raise
        self.start_seconds = round(time.perf_counter() - t0, 1)
        return self

    def _wait_healthy(self, deadline: float) -> None:
        """Probe readiness until it passes; raise ServerError quoting the log on death or timeout."""
        import requests

        while time.perf_counter() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(
                    f"{self.engine_label} exited with code {self.process.returncode} before it was ready; from "
                    f"{self.log_path}:\n" + root_cause(self.log_text())
                )
            try:
                if self._ready():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)  # a probe is cheap; a start is ready up to a second sooner than with 1 s polls
        raise ServerError(
            f"{self.engine_label} was not ready within the deadline; last lines of {self.log_path}:\n"
            + root_cause(self.log_text())
        )

    def log_text(self) -> str:
        """Everything the server has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, grace: float = 15.0) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after `grace` seconds."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            _LIVE.discard(self)
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
        except ProcessLookupError:
            pass
        _LIVE.discard(self)

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> ServerProcess:
        if not self.running:
            self.start(self.timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def headers(self) -> dict[str, str]:
        """Authorization header for /v1 requests."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def client(self) -> Any:
        """An official `openai` client pointed at this server."""
        from openai import OpenAI

        return OpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key, max_retries=0, timeout=120)


def start_together(servers: list[ServerProcess]) -> None:
    """Launch every server, then wait for each to be ready. If one fails, every one launched is stopped, then the error
    is raised."""
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready()
    except BaseException:
        for server in servers:
            server.stop()
        raise
