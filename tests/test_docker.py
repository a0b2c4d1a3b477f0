"""The compose file's structure (no Docker engine here): reference flags, loopback-only port, health check, volumes."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker" / "compose.yaml"


def test_vllm_service_has_reference_flags_loopback_port_and_health_check() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    vllm = spec["services"]["vllm"]
    assert vllm["image"].startswith("nvcr.io/nvidia/vllm:")
    cmd = [str(c) for c in vllm["command"]]
    assert cmd[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    for flag, value in [
        ("--quantization", "fp8"),
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


def test_dockerfile_lints() -> None:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(COMPOSE.parent / "Dockerfile"))
    assert parser.baseimage.startswith("nvcr.io/nvidia/pytorch:") and not parser.baseimage.endswith(":latest")
    instructions = [i["instruction"] for i in parser.structure if i["instruction"] != "COMMENT"]
    assert instructions[0] == "FROM" and "CMD" in instructions and "EXPOSE" in instructions
    runs = " ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
    assert ".[gpu" in runs and "ipykernel install" in runs and "--no-cache-dir" in runs
    assert "apt-get install" not in runs or "--no-install-recommends" in runs
    env = parser.envs
    assert "HF_TOKEN" not in env and not any("token" in k.lower() for k in env), "no secrets baked into the image"
    cmd = next(i["value"] for i in parser.structure if i["instruction"] == "CMD")
    assert "jupyter lab" in cmd and "token=${JUPYTER_TOKEN:?" in cmd
    assert sum(1 for i in instructions if i == "CMD") == 1


def test_compose_runs_the_command_the_lab_builds() -> None:
    """The compose file and the notebooks start vLLM the same way: no hand-written flag drifts (it once lacked the
    default-temperature override)."""
    from lab_utils import serve
    from lab_utils.hardware import DESCRIBED
    from lab_utils.profiles import get_profile

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
    vllm = yaml.safe_load(COMPOSE.read_text())["services"]["vllm"]
    key = next(e for e in vllm["environment"] if e.startswith("VLLM_API_KEY="))
    assert ":?" in key, "an empty key would leave /v1 open: compose must refuse to start without one"
