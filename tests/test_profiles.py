"""Profiles: lookup and the overrides the notebook and the command line share."""

from __future__ import annotations

import json

import pytest

from lab_utils.run.paths import REPO_ROOT
from lab_utils.run.profiles import PROFILES, get_profile


def test_overrides_keep_the_profile_values_when_empty() -> None:
    pocket = get_profile("pocket")
    assert pocket.with_overrides() is pocket
    changed = pocket.with_overrides("qlora", 7)
    assert (changed.train.method, changed.train.max_steps) == ("qlora", 7)
    assert changed.train.learning_rate == pocket.train.learning_rate and pocket.train.method == "lora"


def test_unknown_profile_lists_the_choices() -> None:
    with pytest.raises(KeyError, match="choose one of: auto, pocket"):
        get_profile("llama2")
    assert {"pocket", "smollm2-135m", "llama3-8b", "llama3-8b-qlora", "llama3-70b-qlora"} <= set(PROFILES)


def test_a_new_profile_needs_nothing_outside_its_own_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-model facts live on the profile: the estimator, the disk check, the rehearsal's target GPU and a
    profile handed to another process read them from there."""
    from dataclasses import replace

    from lab_utils.lab import readiness
    from lab_utils.models import memory, rehearsal
    from lab_utils.run.hardware import DESCRIBED
    from lab_utils.run.profiles import ModelDims, ModelFacts, Profile

    facts = ModelFacts("model-7b", ModelDims(32, 4096, 11008, 32, 32, 32000), download_gb=30.0)
    new = replace(
        PROFILES["llama3-8b"], name="model-7b", base_model="org/Model-7B", model=facts, rehearsal_target="h100"
    )
    monkeypatch.setitem(PROFILES, new.name, new)
    assert memory.dims_for_model("org/Model-7B") == facts.dims
    assert 10 < memory.profile_peak_gb(new)["training"] < 40
    assert rehearsal.target_hardware(new) is DESCRIBED["h100"]
    assert not readiness._disk_check(new, 29.0).ok and readiness._disk_check(new, 31.0).ok
    assert Profile.from_dict(new.to_dict()) == new
    # The notebooks' parameters cells do not list the profiles (a new one would mean editing seven notebooks).
    for path in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        cells = json.loads(path.read_text())["cells"]
        params = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
        assert "llama3-70b-qlora" not in params and "profile: str" in params, path.name
