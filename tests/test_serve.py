"""The vLLM server component: flags for described hardware, port handling, clear start errors, no orphan processes."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from lab_utils import serve
from lab_utils.core.hardware import DESCRIBED
from lab_utils.core.profiles import get_profile
from lab_utils.serve.process import ServerProcess, start_together

LLAMA = get_profile("llama3-8b")
POCKET = get_profile("pocket")


def flags(profile, hw_name: str, **kw) -> tuple[list[str], dict[str, str]]:  # noqa: ANN001
    spec = serve.spec_for(profile, DESCRIBED[hw_name], "/models/ft", "ft", **kw)
    return serve.build_command(spec, 8123, "KEY")


def value(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_h100_runs_the_reference_fp8_command() -> None:
    cmd, env = flags(LLAMA, "h100")
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert value(cmd, "--quantization") == "fp8_per_tensor", "vLLM 0.32 deprecates `fp8` for a bf16 checkpoint"
    assert value(cmd, "--gpu-memory-utilization") == "0.80"
    assert value(cmd, "--tensor-parallel-size") == "1"
    assert value(cmd, "--host") == "127.0.0.1" and value(cmd, "--port") == "8123"
    assert "--api-key" not in cmd and "KEY" not in cmd, "the key is not visible in `ps`"
    assert "--enable-prefix-caching" in cmd and value(cmd, "--max-model-len") == "4096"
    assert json.loads(value(cmd, "--override-generation-config")) == {"temperature": 0.0}, "greedy unless asked"
    assert env == {"VLLM_API_KEY": "KEY"}


def test_a100_gets_weight_only_fp8_with_a_note() -> None:
    spec = serve.spec_for(LLAMA, DESCRIBED["a100"], "/m", "m")
    assert spec.quantization == "fp8_per_tensor" and "weight-only" in spec.notes[0] and "Marlin" in spec.notes[0]


def test_dgx_spark_unified_memory_keeps_headroom() -> None:
    spec = serve.spec_for(LLAMA, DESCRIBED["dgx-spark"], "/m", "m")
    cmd, _ = serve.build_command(spec, 8000, "k")
    assert value(cmd, "--quantization") == "fp8_per_tensor" and value(cmd, "--gpu-memory-utilization") == "0.80"
    assert any("unified memory" in n for n in spec.notes)


def test_t4_serves_float16_with_weight_only_fp8() -> None:
    """vLLM refuses --dtype bfloat16 below compute capability 8.0 and runs FP8 Marlin from 7.5."""
    t4 = serve.spec_for(LLAMA, DESCRIBED["t4"], "/m", "m")
    assert t4.dtype == "float16" and any("--dtype float16" in n and "7.5" in n for n in t4.notes)
    assert t4.quantization == "fp8_per_tensor" and "weight-only" in t4.notes[0]
    cmd, _ = serve.build_command(t4, 8000, "k")
    assert value(cmd, "--dtype") == "float16"
    assert serve.serve_dtype("bfloat16", DESCRIBED["a100"]) == ("bfloat16", None)
    assert serve.serve_dtype("float32", DESCRIBED["t4"]) == ("float32", None), "only bf16 is changed"


def test_cpu_gets_no_fp8_and_says_why() -> None:
    cpu = serve.spec_for(LLAMA, DESCRIBED["cpu"], "/m", "m")
    assert cpu.quantization is None and "no FP8" in cpu.notes[0]
    cmd, env = flags(POCKET, "cpu")
    assert "--quantization" not in cmd and "--gpu-memory-utilization" not in cmd
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_API_KEY": "KEY", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert "--no-enable-prefix-caching" in cmd


def test_a_cpu_runs_vllm_in_one_process_and_a_gpu_in_its_own() -> None:
    """On a CPU the API server, engine and worker share one process (vLLM is imported once, not three times: about
    10 s less per start); on a GPU vLLM keeps its engine process, its default."""
    cmd, env = serve.build_command(serve.spec_for(POCKET, DESCRIBED["cpu"], "/m", "m"), 8000, "k")
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and value(cmd, "--distributed-executor-backend") == "uni"
    cmd, env = serve.build_command(serve.spec_for(LLAMA, DESCRIBED["h100"], "/m", "m"), 8000, "k")
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in env and "--distributed-executor-backend" not in cmd


def test_eager_mode_is_decided_by_hardware_and_can_be_asked_for() -> None:
    """Eager on a CPU (compiling doubles a start and pays back only on a GPU), compiled with CUDA graphs on a GPU."""
    command = lambda spec: serve.build_command(spec, 8000, "k")[0]  # noqa: E731
    cpu = serve.spec_for(POCKET, DESCRIBED["cpu"], "/m", "m")
    assert "--enforce-eager" in command(cpu) and any("--enforce-eager on a CPU" in n for n in cpu.notes)
    assert "--enforce-eager" not in command(serve.spec_for(LLAMA, DESCRIBED["h100"], "/m", "m"))
    assert "--enforce-eager" in command(serve.spec_for(LLAMA, DESCRIBED["h100"], "/m", "m", enforce_eager=True))
    assert "--enforce-eager" not in command(serve.spec_for(POCKET, DESCRIBED["cpu"], "/m", "m", enforce_eager=False))


def test_a_cpu_without_native_bf16_serves_in_float32() -> None:
    from dataclasses import replace

    slow = DESCRIBED["cpu"]  # AVX2 only: bf16 would be emulated
    spec = serve.spec_for(LLAMA, slow, "/m", "m")
    assert spec.dtype == "float32" and any("emulated" in n for n in spec.notes)
    fast = replace(slow, bf16_native=True, bf16_reason="AVX512_BF16")
    assert serve.spec_for(LLAMA, fast, "/m", "m").dtype == "bfloat16"
    assert serve.spec_for(LLAMA, DESCRIBED["h100"], "/m", "m").dtype == "bfloat16"


def test_multi_gpu_tensor_parallel_and_lora_and_template() -> None:
    from dataclasses import replace

    four = replace(DESCRIBED["h100"], gpu_count=4)
    spec = serve.spec_for(
        LLAMA, four, "/m", "m", chat_template="/m/chat_template.jinja", lora_modules={"alpaca": "/a"}, max_lora_rank=16
    )
    cmd, _ = serve.build_command(spec, 8000, "k")
    assert value(cmd, "--tensor-parallel-size") == "1", "one GPU unless asked: an 8B model needs no more"
    assert value(cmd, "--chat-template") == "/m/chat_template.jinja"
    assert (
        "--enable-lora" in cmd and value(cmd, "--lora-modules") == "alpaca=/a" and value(cmd, "--max-lora-rank") == "16"
    )
    asked = serve.spec_for(LLAMA, four, "/m", "m", tensor_parallel_size=4)
    assert value(serve.build_command(asked, 8000, "k")[0], "--tensor-parallel-size") == "4"
    assert serve.spec_for(LLAMA, four, "/m", "m", tensor_parallel_size=3).tensor_parallel_size == 3, "the user's call"


@pytest.mark.parametrize(("hw_name", "gpus", "size"), [("h100", 4, 8), ("h100", 1, 2), ("cpu", 0, 2), ("h100", 2, 0)])
def test_tensor_parallel_beyond_the_gpus_is_a_clear_error(hw_name: str, gpus: int, size: int) -> None:
    from dataclasses import replace

    hw = replace(DESCRIBED[hw_name], gpu_count=gpus)
    with pytest.raises(ValueError, match=f"tensor_parallel_size={size}, but .* has {gpus} CUDA GPU"):
        serve.spec_for(LLAMA, hw, "/m", "m", tensor_parallel_size=size)


@pytest.mark.parametrize(
    ("rank", "allowed"), [(1, 1), (4, 8), (8, 8), (12, 16), (16, 16), (17, 32), (300, 320), (512, 512)]
)
def test_lora_rank_rounds_up_to_a_value_vllm_allows(rank: int, allowed: int) -> None:
    assert serve.lora_rank_for(rank) == allowed


@pytest.mark.parametrize("rank", [0, 513, 1024])
def test_lora_rank_outside_vllms_range_is_a_clear_error(rank: int) -> None:
    with pytest.raises(ValueError, match="lora_r"):
        serve.lora_rank_for(rank)


def test_adapter_rank_becomes_an_allowed_max_lora_rank() -> None:
    """A rank-12 adapter is served with --max-lora-rank 16 (vLLM rejects 12), in the spec and in the command."""
    spec = serve.spec_for(POCKET, DESCRIBED["cpu"], "/m", "m", lora_modules={"a": "/a"}, max_lora_rank=12)
    assert spec.max_lora_rank == 16 and any("--max-lora-rank 16" in n for n in spec.notes)
    assert value(serve.build_command(spec, 8000, "k")[0], "--max-lora-rank") == "16"
    from dataclasses import replace

    direct = replace(spec, max_lora_rank=24)  # a spec built without spec_for
    assert value(serve.build_command(direct, 8000, "k")[0], "--max-lora-rank") == "32"
    with pytest.raises(ValueError, match="above the largest"):
        serve.spec_for(POCKET, DESCRIBED["cpu"], "/m", "m", lora_modules={"a": "/a"}, max_lora_rank=1024)


@pytest.mark.slow
def test_flags_are_values_the_installed_vllm_accepts() -> None:
    """The lab's constants match the installed vLLM's source (about 10 s to import it)."""
    from typing import get_args

    pytest.importorskip("vllm")
    import importlib.util

    from vllm.config.lora import MaxLoRARanks
    from vllm.config.model import ModelDType
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    assert serve.VLLM_LORA_RANKS == get_args(MaxLoRARanks)
    assert importlib.util.find_spec(serve.API_SERVER_MODULE) is not None
    assert serve.FP8_ONLINE in QUANTIZATION_METHODS
    assert {"bfloat16", "float16", "float32"} <= set(get_args(ModelDType))


def test_profile_can_turn_fp8_off() -> None:
    from dataclasses import replace

    prof = replace(LLAMA, serve=replace(LLAMA.serve, quantization="none"))
    assert serve.spec_for(prof, DESCRIBED["h100"], "/m", "m").quantization is None


def test_busy_port_is_a_clear_error_and_port_zero_picks_another(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        spec = serve.spec_for(POCKET, DESCRIBED["cpu"], "/m", "m", port=busy)
        with pytest.raises(serve.ServerError, match=f"port {busy} on 127.0.0.1 is already in use"):
            serve.VLLMServer(spec, tmp_path).start(timeout=5)
        assert serve.free_port() != busy and serve.port_in_use(busy)


def test_root_cause_quotes_the_error_lines() -> None:
    log = "\n".join(
        ["INFO starting"] * 50
        + ["Traceback (most recent call last):", "  File x", "OSError: no such model", "INFO shutting down"]
    )
    cause = serve.root_cause(log)
    assert "OSError: no such model" in cause and "Traceback" in cause and cause.count("INFO starting") <= 2


@pytest.mark.slow
@pytest.mark.server
def test_failed_start_raises_with_the_log_root_cause(tmp_path: Path) -> None:
    spec = serve.spec_for(POCKET, DESCRIBED["cpu"], str(tmp_path / "no-such-model"), "m")
    server = serve.VLLMServer(spec, tmp_path, "bad")
    with pytest.raises(serve.ServerError) as err:
        server.start(timeout=240)
    text = str(err.value)
    assert "vLLM exited with code" in text and "no-such-model" in text and str(server.log_path) in text
    assert not server.running
    assert "KEY" not in server.log_text() and server.api_key not in server.log_text(), "the API key is not logged"


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.notebook
def test_no_server_outlives_a_notebook_cell_that_raises(pocket_model: str, tmp_path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from lab_utils.lab.runner import NotebookError, execute_notebook

    pid_file = tmp_path / "pid.json"
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        new_code_cell(f"model = {pocket_model!r}  # model folder", metadata={"tags": ["parameters"]}),
        new_code_cell(
            "import json, os\nfrom lab_utils import serve\nfrom lab_utils.core import hardware, profiles\n"
            "spec = serve.spec_for(profiles.get_profile('pocket'), hardware.probe(), model, 'm')\n"
            f"server = serve.VLLMServer(spec, {str(tmp_path)!r}, 'orphan-check').start(240)\n"
            f"json.dump({{'pid': server.process.pid, 'pgid': os.getpgid(server.process.pid)}}, open({str(pid_file)!r}, 'w'))\n"
            "raise RuntimeError('a cell fails while the server runs')"
        ),
    ]
    path = tmp_path / "95_orphan.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(NotebookError, match="a cell fails while the server runs"):
        execute_notebook(path, tmp_path / "run", {"model": pocket_model}, cell_timeout=300)
    pgid = json.loads(pid_file.read_text())["pgid"]
    assert not _group_alive(pgid, wait_s=20), "the server's process group outlived the notebook"


def _group_alive(pgid: int, wait_s: float) -> bool:
    """Whether any process of the group still exists after up to `wait_s` seconds."""
    import time

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.5)
    return True


class _Sleeper(ServerProcess):
    """A stand-in server: python's http.server after `delay` seconds (or a command that fails at once)."""

    def __init__(self, log_dir: Path, name: str, delay: float = 1.0, fail: bool = False) -> None:
        super().__init__(log_dir, name, timeout=30)
        self.delay, self.fail = delay, fail

    def _command(self) -> tuple[list[str], dict[str, str]]:
        code = (
            "raise SystemExit('bad model')"
            if self.fail
            else (
                f"import time, http.server; time.sleep({self.delay}); "
                f"http.server.HTTPServer(('127.0.0.1', {self.port}), http.server.SimpleHTTPRequestHandler).serve_forever()"
            )
        )
        return [sys.executable, "-c", code], {}

    def _ready(self) -> bool:
        import requests

        return requests.get(self.base_url, timeout=1).status_code == 200


def test_a_cpu_starts_the_next_server_beside_the_first_and_a_gpu_waits(tmp_path: Path) -> None:
    from lab_utils.serve import engines

    first, then = _Sleeper(tmp_path, "a", delay=2), _Sleeper(tmp_path, "b", delay=2)
    try:
        t0 = time.perf_counter()
        engines.start_with_next(first, then, hw=DESCRIBED["cpu"])
        together = time.perf_counter() - t0
        assert first.running and then.running and together < 2 * 2, "both started in about one start's time"
    finally:
        first.stop()
        then.stop()
    first, then = _Sleeper(tmp_path, "c", delay=0), _Sleeper(tmp_path, "d", delay=0)
    try:
        engines.start_with_next(first, then, hw=DESCRIBED["h100"])
        assert first.running and not then.running, "on a GPU the second server waits for its turn"
        first.stop()
        laptop = dataclasses.replace(DESCRIBED["cpu"], memory_gb=8.0)  # no room for several vLLM servers at once
        engines.start_with_next(first, then, None, hw=laptop)
        assert first.running and not then.running, "an 8 GB CPU machine starts one server at a time"
        with then:
            assert then.running
        assert not then.running
    finally:
        first.stop()


def test_when_one_of_two_starts_fails_neither_keeps_running(tmp_path: Path) -> None:
    good, bad = _Sleeper(tmp_path, "good", delay=0.5), _Sleeper(tmp_path, "bad", fail=True)
    with pytest.raises(serve.ServerError, match="bad model"):
        start_together([good, bad])
    assert not good.running and not bad.running


def test_a_folder_without_its_chat_template_links_the_weights(tmp_path: Path) -> None:
    """04's exercise 1 serves the merged model without its template: no second copy of the weights, no template left
    in either place transformers keeps one."""
    from lab_utils.models import merge

    src = tmp_path / "merged"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"weights")
    (src / "chat_template.jinja").write_text("{{ messages }}")
    (src / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "chat_template": "{{ x }}"}))
    bare = merge.without_chat_template(src, tmp_path / "bare")
    assert sorted(p.name for p in bare.iterdir()) == ["model.safetensors", "tokenizer_config.json"]
    assert (bare / "model.safetensors").is_symlink() and (bare / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((bare / "tokenizer_config.json").read_text()) == {"eos_token": "<eos>"}
    assert "chat_template" in json.loads((src / "tokenizer_config.json").read_text()), "the original is untouched"
    assert merge.without_chat_template(src, tmp_path / "bare") == bare, "made again over an earlier copy"


def test_vllm_logs_at_info_even_after_trl_set_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing TRL sets VLLM_LOGGING_LEVEL=ERROR for its process; the servers the lab starts still log INFO (the lab
    reads the KV cache's size and a failed start's cause from those lines)."""
    import subprocess as sp

    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "ERROR")
    seen: dict[str, str] = {}

    class Popen:
        def __init__(self, cmd: list[str], env: dict[str, str], **kwargs: object) -> None:
            seen.update(env)
            self.pid = os.getpid()

        def poll(self) -> int:
            return 1

    monkeypatch.setattr(sp, "Popen", Popen)
    server = serve.VLLMServer(serve.spec_for(POCKET, DESCRIBED["cpu"], "/m", "m"), tmp_path, "env-check")
    server.launch()
    assert seen["VLLM_LOGGING_LEVEL"] == "INFO" and seen["VLLM_API_KEY"] == server.api_key
    assert "VLLM_LOGGING_LEVEL" not in server.command_line(), "the learner's copyable command stays as it was"
