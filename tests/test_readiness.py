"""Readiness checks against described hardware and environments, and the prefetch report."""

from __future__ import annotations

import pytest

from lab_utils.core.hardware import DESCRIBED
from lab_utils.core.profiles import get_profile
from lab_utils.lab import readiness


def reachable(env: object) -> tuple[bool, str]:
    return True, "described as reachable"


def failed(profile: str, hw: str, env: dict[str, str] | None = None, disk: float = 500.0) -> dict[str, readiness.Check]:
    results = readiness.checks(get_profile(profile), DESCRIBED[hw], env or {}, free_disk_gb=disk, reach=reachable)
    return {c.name: c for c in results if not c.ok}


def test_pocket_on_this_cpu_is_ready() -> None:
    assert failed("pocket", "cpu") == {}


def test_gpu_profile_on_a_cpu_says_to_use_pocket() -> None:
    bad = failed("llama3-8b", "cpu", {"HF_TOKEN": "x"})
    assert "GPU" in bad and "pocket" in bad["GPU"].fix


def test_gated_model_without_token_names_the_fix() -> None:
    bad = failed("llama3-8b", "h100", {})
    assert set(bad) == {"model access"}
    assert "export HF_TOKEN" in bad["model access"].fix and "never paste it into a notebook" in bad["model access"].fix


def test_memory_too_small_suggests_qlora_then_pocket() -> None:
    bad = failed("llama3-8b", "t4", {"HF_TOKEN": "x"})
    assert "memory" in bad and "llama3-8b-qlora" in bad["memory"].fix
    assert "memory" not in failed("llama3-8b-qlora", "t4", {"HF_TOKEN": "x"})
    assert "memory" in failed("llama3-70b-qlora", "h100", {"HF_TOKEN": "x"})
    assert "memory" not in failed("llama3-70b-qlora", "dgx-spark", {"HF_TOKEN": "x"})


def test_host_ram_for_the_merge_is_checked_beside_the_gpu() -> None:
    """Issue 19, C6: 02 reloads the 8B base in 16 bits on the host to merge (about 16 GB); Colab's T4 has 12.7 GB."""
    assert 17 < readiness.merge_host_memory_gb(get_profile("llama3-8b-qlora")) < 19
    bad = failed("llama3-8b-qlora", "t4", {"HF_TOKEN": "x"})
    assert set(bad) == {"host memory"} and "12.7 GB of host RAM" in bad["host memory"].detail
    assert "High-RAM" in bad["host memory"].fix
    assert failed("llama3-8b", "h100", {"HF_TOKEN": "x"}) == {}  # 250 GB of host RAM
    assert readiness.merge_host_memory_gb(get_profile("llama3-70b-qlora")) == 0  # 70B merges nothing
    assert "host memory" not in failed("llama3-70b-qlora", "dgx-spark", {"HF_TOKEN": "x"})
    names = [c.name for c in readiness.checks(get_profile("pocket"), DESCRIBED["cpu"], {}, 500.0, reachable)]
    assert "host memory" not in names  # a CPU's memory check is the same RAM


def test_offline_without_cache_and_small_disk() -> None:
    bad = failed("smollm2-135m", "cpu", {"HF_HUB_OFFLINE": "1"}, disk=1.0)
    assert "make prefetch PROFILE=smollm2-135m" in bad["hub"].fix
    assert "disk" in bad


def test_require_lists_every_failure() -> None:
    with pytest.raises(readiness.NotReadyError) as err:
        readiness.require(get_profile("llama3-8b"), DESCRIBED["cpu"], {})
    text = str(err.value)
    assert "GPU" in text and "model access" in text and "Fix:" in text


def test_cache_report_does_not_download(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    rows = readiness.cache_report(get_profile("llama3-8b"))
    assert [r["cached"] for r in rows] == [False, False]
    assert rows[0]["item"] == "meta-llama/Meta-Llama-3-8B" and rows[1]["item"] == "tatsu-lab/alpaca"


def test_an_unreachable_hub_is_said_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    """Behind a firewall (the hub address points nowhere), with nothing cached: `make ready` says so, in seconds."""
    import time

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    env = {"HF_TOKEN": "x", "HF_ENDPOINT": "http://127.0.0.1:9"}  # the discard port: nothing listens there
    start = time.monotonic()
    results = readiness.checks(get_profile("llama3-8b"), DESCRIBED["h100"], env, free_disk_gb=500.0)
    hub = next(c for c in results if c.name == "hub")
    assert time.monotonic() - start < 3 * readiness.HUB_TIMEOUT_S
    assert not hub.ok and "cannot reach the hub" in hub.detail and "not cached" in hub.detail
    assert "make prefetch PROFILE=llama3-8b" in hub.fix and "HF_HOME" in hub.fix
    ok, detail = readiness.hub_reachable(env, timeout=1.0)
    assert not ok and "127.0.0.1:9" in detail
