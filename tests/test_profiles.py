"""Profiles: lookup and the overrides the notebook and the command line share."""

from __future__ import annotations

import pytest

from lab_utils.profiles import PROFILES, get_profile


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
