"""The pocket base model: the shipped copy matches the builder, builds run a fixed number of steps, sources."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields, replace
from pathlib import Path

import pytest

from lab_utils.models import pocket, pocketbuild


def test_shipped_model_matches_the_builders_recipe_and_files() -> None:
    info = pocket.build_info(pocket.SHIPPED_DIR)
    # The recipe key hashes every build setting, the data generator (pocket_data.py) and the recipe version: a change
    # to any of them without re-shipping the model fails here.
    assert info["key"] == pocket.PocketConfig().key()
    assert info["config"] == {f.name: getattr(pocket.PocketConfig(), f.name) for f in fields(pocket.PocketConfig)}
    for name, digest in info["files"].items():
        assert pocketbuild.file_sha256(pocket.SHIPPED_DIR / name) == digest, f"{name} differs from its build record"
    assert pocketbuild.WEIGHTS_FILE in info["files"] and "tokenizer.json" in info["files"]
    # Built by steps, never by the clock: every one of the 500 steps ran, and the record says how it went.
    assert info["quick"] is False and info["pretrain"]["steps"] == 500 == len(info["pretrain"]["losses"])
    assert info["pretrain"]["final_loss"] < 1.2 < info["pretrain"]["losses"][0]
    assert info["fact_recall"] >= 0.8
    assert info["machine"]["cpu"] and info["versions"]["torch"] and info["pretrain"]["tokens_per_s"] > 0
    assert info["compared_to_shipped"] is None
    assert 10 < info["size_mb"] < 20


def test_the_lab_uses_the_shipped_model_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pocket.SOURCE_ENV, raising=False)
    assert pocket.pocket_model_path() == pocket.SHIPPED_DIR
    monkeypatch.setenv(pocket.SOURCE_ENV, "latest")
    with pytest.raises(pocket.PocketError, match="LAB_POCKET='latest': choose one of shipped, local"):
        pocket.pocket_model_path()


def test_a_shipped_model_from_another_recipe_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "pocket-base"
    shutil.copytree(pocket.SHIPPED_DIR, stale)
    info = json.loads((stale / pocket.BUILD_INFO).read_text())
    (stale / pocket.BUILD_INFO).write_text(json.dumps({**info, "key": "0000000000"}))
    monkeypatch.setattr(pocket, "SHIPPED_DIR", stale)
    with pytest.raises(pocket.PocketError, match="another recipe .*build-pocket --ship"):
        pocket.shipped_model()
    monkeypatch.setattr(pocket, "SHIPPED_DIR", tmp_path / "missing")
    with pytest.raises(pocket.PocketError, match="holds no pocket model"):
        pocket.shipped_model()


def test_quick_build_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few steps through the whole builder: corpus, tokenizer, pretraining, save, record, comparison, reload."""
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    config = replace(pocket.PocketConfig(), max_steps=3, n_docs=60, warmup_steps=1)
    assert config.quick and config.key() != pocket.PocketConfig().key()
    path = pocket.ensure_pocket_model(config, progress=False)
    assert path == tmp_path / f"pocket-{config.key()}-quick" and pocket.is_built(path)
    info = pocket.build_info(path)
    assert info["quick"] is True and info["pretrain"]["steps"] == 3 == len(info["pretrain"]["losses"])
    compared = info["compared_to_shipped"]
    assert compared["shipped_present"] and compared["same_recipe"] is False and compared["identical_weights"] is False
    assert compared["max_abs_weight_diff"] > 0
    summary = pocket.summary(path)
    assert summary["pocket_source"] == "local" and summary["pocket_identical_to_shipped"] is False
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert tok.pad_token_id != tok.eos_token_id
    out = model.generate(**tok("The capital of Peru is", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 3
    # Cached: asking again finds it without a rebuild.
    assert pocket.ensure_pocket_model(config, progress=False) == path
    assert pocket.build_info(path)["build_seconds"] == info["build_seconds"]


def test_quick_builds_are_never_shipped(tmp_path: Path) -> None:
    fake = tmp_path / "m"
    fake.mkdir()
    (fake / pocket.BUILD_INFO).write_text(json.dumps({"quick": True, "pretrain": {"steps": 3}}))
    with pytest.raises(pocket.PocketError, match="quick build"):
        pocket.ship(fake)


@pytest.mark.slow
@pytest.mark.rebuild
def test_full_rebuild_reaches_the_shipped_quality(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rebuild from scratch (3 min on a fast CPU, about 8 on a slow one): the same recipe, the same quality."""
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    path = pocket.ensure_pocket_model(progress=False)
    info, shipped = pocket.build_info(path), pocket.build_info(pocket.SHIPPED_DIR)
    assert info["key"] == shipped["key"] and info["pretrain"]["steps"] == 500
    assert info["compared_to_shipped"]["same_recipe"] is True
    assert info["pretrain"]["final_loss"] <= 1.1 * shipped["pretrain"]["final_loss"]
    assert info["fact_recall"] >= shipped["fact_recall"] - 0.1
