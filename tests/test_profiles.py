"""Profiles: lookup and the overrides the notebook and the command line share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab_utils.core.paths import REPO_ROOT
from lab_utils.core.profiles import PROFILES, get_profile


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


NEW_PROFILE = """# a profile added as one file
name: model-7b
description: A 7B model on one H100, a learner's own profile.
base_model: org/Model-7B
dataset: tatsu-lab/alpaca
heldout: data/pocket_alpaca/heldout.jsonl
needs_gpu: true
min_memory_gb: 24.0
rehearsal_target: h100
method: lora
facts:
  name: model-7b
  dims: {n_layers: 32, hidden: 4096, intermediate: 11008, n_heads: 32, n_kv_heads: 32, vocab: 32000}
  download_gb: 30.0
lora:
  r: 8
sft:
  learning_rate: 1.0e-4
  per_device_train_batch_size: 2
"""


def test_adding_a_profile_is_adding_one_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new file in configs/profiles is a profile: the estimator, the disk check, the rehearsal's target GPU, the
    run's config file and a profile handed to another process read it from there, nothing else changes."""
    import shutil

    from lab_utils.core.hardware import DESCRIBED
    from lab_utils.core.profiles import PROFILES_DIR, ModelDims, Profile, load_profiles
    from lab_utils.lab import config_file, readiness, runconfig
    from lab_utils.models import memory, rehearsal

    folder = tmp_path / "profiles"
    shutil.copytree(PROFILES_DIR, folder)
    (folder / "model-7b.yaml").write_text(NEW_PROFILE)
    loaded = load_profiles(folder)
    assert set(loaded) == set(PROFILES) | {"model-7b"}
    new = loaded["model-7b"]
    assert (new.train.lora_r, new.train.learning_rate, new.train.per_device_batch_size) == (8, 1e-4, 2)
    monkeypatch.setitem(PROFILES, "model-7b", new)
    assert memory.dims_for_model("org/Model-7B") == ModelDims(32, 4096, 11008, 32, 32, 32000)
    assert 10 < memory.profile_peak_gb(new)["training"] < 40
    assert rehearsal.target_hardware(new) is DESCRIBED["h100"]
    assert not readiness._disk_check(new, 29.0).ok and readiness._disk_check(new, 31.0).ok
    assert Profile.from_dict(new.to_dict()) == new
    cfg = runconfig.resolve("model-7b", hardware=DESCRIBED["h100"])
    values = config_file.sections(cfg, tmp_path / "out", {"train_file": "t", "eval_file": "e"}, "<pad>")
    assert values["lora"]["r"] == 8 and values["sft"]["learning_rate"] == 1e-4 and values["sft"]["bf16"] is True


def test_the_profile_files_are_the_profiles() -> None:
    """Every profile is one file of configs/profiles, named after it; the files hold the reference run's values."""
    from lab_utils.core.profiles import PROFILES_DIR

    assert {p.stem for p in PROFILES_DIR.glob("*.yaml")} == set(PROFILES)
    ref = get_profile("llama3-8b").train
    assert (ref.learning_rate, ref.lora_r, ref.lora_alpha, ref.max_seq_length) == (2e-4, 16, 32, 1024)
    assert get_profile("pocket").train.learning_rate == 2e-3 and get_profile("llama3-8b-qlora").train.method == "qlora"


def test_a_bad_profile_file_is_named_with_its_key(tmp_path: Path) -> None:
    from lab_utils.core.profiles import ProfileError, profile_from_file

    (tmp_path / "typo.yaml").write_text(
        NEW_PROFILE.replace("name: model-7b", "name: typo").replace("  r: 8", "  rank: 8")
    )
    with pytest.raises(ProfileError, match=r"typo.yaml: .*rank"):
        profile_from_file(tmp_path / "typo.yaml")
    (tmp_path / "other.yaml").write_text(NEW_PROFILE)
    with pytest.raises(ProfileError, match="differs from the file's name"):
        profile_from_file(tmp_path / "other.yaml")


def test_notebooks_do_not_list_the_profiles() -> None:
    # The notebooks' parameters cells do not list the profiles (a new one would mean editing seven notebooks).
    for path in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        cells = json.loads(path.read_text())["cells"]
        params = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
        assert "llama3-70b-qlora" not in params and "profile: str" in params, path.name
