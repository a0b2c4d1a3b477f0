"""One run configuration, resolved once; later notebooks read what 02 trained."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lab_utils.core.hardware import DESCRIBED
from lab_utils.core.paths import REPO_ROOT as REPO
from lab_utils.core.paths import atomic_write_json
from lab_utils.lab import runconfig


def test_resolve_applies_every_override_once() -> None:
    cfg = runconfig.resolve(
        "pocket",
        DESCRIBED["cpu"],
        method="qlora",
        max_steps=7,
        dataset="my.jsonl",
        max_new_tokens=33,
        n_prompts=5,
        start_timeout_s=12,
    )
    assert (cfg.name, cfg.method, cfg.profile.train.max_steps, cfg.dataset) == ("pocket", "qlora", 7, "my.jsonl")
    assert (cfg.max_new_tokens, cfg.n_prompts, cfg.start_timeout_s) == (33, 5, 12)
    assert cfg.is_pocket and cfg.hardware is DESCRIBED["cpu"]
    plain = runconfig.resolve("pocket", DESCRIBED["cpu"])
    assert plain.method == "lora" and plain.dataset == plain.profile.dataset
    assert plain.max_new_tokens == plain.profile.max_new_tokens and plain.start_timeout_s == 300.0
    assert len(plain.heldout()) >= 90 and len(runconfig.resolve("pocket", DESCRIBED["cpu"], n_prompts=5).heldout()) == 5
    # A dataset of the user's own: the before/after compares on its held-out split (the pocket file by another name is
    # the profile's own).
    assert cfg.own_dataset and not plain.own_dataset and "held-out split of my.jsonl" in cfg.heldout_source
    assert not runconfig.resolve("pocket", DESCRIBED["cpu"], dataset=str(REPO / plain.dataset)).own_dataset
    assert cfg.to_dict()["profile"]["train"]["method"] == "qlora" and cfg.to_dict()["hardware"]["device"] == "cpu"


@pytest.mark.parametrize(("machine", "name"), [("h100", "llama3-8b"), ("t4", "llama3-8b-qlora"), ("cpu", "pocket")])
def test_auto_is_resolved_from_the_given_hardware(machine: str, name: str) -> None:
    cfg = runconfig.resolve("auto", DESCRIBED[machine])
    assert cfg.name == name and cfg.requested == "auto" and cfg.reason
    assert not runconfig.resolve("auto", DESCRIBED[machine]).is_pocket or machine == "cpu"


def _record_02(folder: Path, method: str, tmp_path: Path) -> None:
    merged, adapter = tmp_path / "merged", tmp_path / "adapter"
    merged.mkdir(exist_ok=True), adapter.mkdir(exist_ok=True)
    cfg = runconfig.resolve("pocket", DESCRIBED["cpu"], method=method, dataset="custom.jsonl")
    atomic_write_json(
        folder / "results.json",
        {
            "01_alpaca_data": {"dataset": "custom.jsonl"},
            "02_sft": {
                "run_config": cfg.to_dict(),
                "merged_dir": str(merged),
                "adapter_dir": str(adapter),
                "base_model": "/base",
            },
        },
    )


def test_later_notebooks_read_what_02_trained_not_the_profile_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bug this fixes: 04 took the method from the profile (lora) after 02 trained `method="full"`, and would
    have handed vLLM a full model as a LoRA adapter."""
    monkeypatch.setenv("LAB_RUN_DIR", str(tmp_path / "run"))
    _record_02(tmp_path / "run", "full", tmp_path)
    run = runconfig.trained()
    assert run.method == "full" and not run.has_adapter
    assert run.dataset == "custom.jsonl" and run.base_model == "/base" and run.lora_r == 16
    assert runconfig.trained(merged_dir="/explicit").merged_dir == "/explicit"
    _record_02(tmp_path / "run", "qlora", tmp_path)
    assert runconfig.trained().has_adapter


def test_02_trains_on_the_data_01_loaded_in_this_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_RUN_DIR", str(tmp_path / "empty"))
    assert runconfig.dataset_from_01() == ""
    monkeypatch.setenv("LAB_RUN_DIR", str(tmp_path / "run"))
    _record_02(tmp_path / "run", "lora", tmp_path)
    assert runconfig.dataset_from_01() == "custom.jsonl"
    assert runconfig.resolve("pocket", DESCRIBED["cpu"], dataset=runconfig.dataset_from_01()).dataset == "custom.jsonl"


def test_the_engine_travels_with_the_run_configuration() -> None:
    from lab_utils.serve import engines

    cfg = runconfig.resolve("pocket", DESCRIBED["cpu"], engine="llamacpp")
    assert cfg.engine_choice == "llamacpp" and cfg.to_dict()["engine_choice"] == "llamacpp"
    if engines.llamacpp_installed():
        assert cfg.engine is engines.ENGINES["llamacpp"]
    with pytest.raises(engines.EngineError, match="engine 'tgi'"):
        _ = runconfig.resolve("pocket", DESCRIBED["cpu"], engine="tgi").engine


def test_a_subset_run_takes_02_from_a_run_of_its_own_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pocket subset run right after a llama3-8b rehearsal run takes the pocket run's model, and says which run."""
    import json
    import os
    import time

    from lab_utils.core.profiles import PROFILES
    from lab_utils.models.rehearsal import scaled

    def recorded_02(name: str, profile: Any) -> Path:
        folder = tmp_path / name
        (folder / "sft" / "adapter").mkdir(parents=True)
        (folder / "sft" / "merged").mkdir()
        train = {"method": "lora", "lora_r": 16}
        section = {
            "adapter_dir": str(folder / "sft" / "adapter"),
            "merged_dir": str(folder / "sft" / "merged"),
            "base_model": profile.base_model,
            "run_config": {"profile": {**profile.to_dict(), "train": train}},
        }
        (folder / "results.json").write_text(json.dumps({"02_sft": section}))
        return folder

    pocket_run = recorded_02("20260101-000000", PROFILES["pocket"])
    rehearsal_run = recorded_02("20260101-010000", scaled(PROFILES["llama3-8b"]))
    later = time.time() + 10
    os.utime(rehearsal_run / "results.json", (later, later))  # the rehearsal is the newest run
    monkeypatch.setenv("LAB_RUN_DIR", str(tmp_path / "20260101-020000"))
    monkeypatch.setattr("lab_utils.core.results.REPO_ROOT", tmp_path)  # no runs of this checkout's runs/ folder
    assert runconfig.trained().merged_dir == str(rehearsal_run / "sft" / "merged"), "no profile: the newest run"
    run = runconfig.trained(profile=PROFILES["pocket"])
    assert run.merged_dir == str(pocket_run / "sft" / "merged") and run.base_model == "pocket"
    assert f"in the earlier run {pocket_run} (profile pocket)" in capsys.readouterr().out
    again = runconfig.trained(profile=scaled(PROFILES["llama3-8b"]))
    assert again.merged_dir == str(rehearsal_run / "sft" / "merged")
    assert "(profile llama3-8b, rehearsal)" in capsys.readouterr().out
    with pytest.raises(LookupError, match="for profile 'llama3-8b'"):
        runconfig.trained(profile=PROFILES["llama3-8b"])  # the real profile: only a rehearsal ran
    # A run on your own file (DATASET=...) is newer still: the pocket run's data keeps the pocket run's model.
    own = replace(PROFILES["pocket"], dataset=str(tmp_path / "antonyms.jsonl"))
    own_run = recorded_02("20260101-0002own-data", own)
    later += 10
    os.utime(own_run / "results.json", (later, later))
    assert runconfig.trained(profile=PROFILES["pocket"]).merged_dir == str(pocket_run / "sft" / "merged")
    assert runconfig.trained(profile=own).merged_dir == str(own_run / "sft" / "merged")


def test_class_mode_is_one_switch_that_jupyter_honours_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from lab_utils.lab.runconfig import CLASS_MODE, class_mode, for_class, notebook_defaults

    monkeypatch.delenv("LAB_CLASS", raising=False)
    assert not class_mode() and for_class("04", concurrency_levels=[1, 4, 16, 32]) == ([1, 4, 16, 32],)
    monkeypatch.setenv("LAB_CLASS", "1")
    defaults = notebook_defaults("04")
    # A parameter still at its parameters-cell default takes class mode's value; one you typed (or papermill injected) wins.
    assert for_class("04", concurrency_levels=defaults["concurrency_levels"], compare_lora=True) == ([1, 8], False)
    assert for_class("04", concurrency_levels=[2], compare_lora=True) == ([2], False)
    assert for_class("02", max_steps=0, benchmark_steps=notebook_defaults("02")["benchmark_steps"]) == (100, 8)
    assert for_class("00", profile="auto") == ("auto",), "a notebook class mode does not change keeps its values"
    assert runconfig.resolve("pocket").class_mode is True
    monkeypatch.setenv("LAB_CLASS", "0")
    assert not class_mode()
    # Every value class mode changes is applied in its notebook's setup cell (so Jupyter sessions honour it too).
    for prefix, values in CLASS_MODE.items():
        (path,) = Path(__file__).resolve().parents[1].glob(f"notebooks/{prefix}_*.ipynb")
        code = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        call = code[code.index(f'runconfig.for_class("{prefix}"') :].split("#")[0]
        assert all(f"{name}={name}" in call for name in values), f"{path.name} applies {sorted(values)}"
