"""The pocket base model: a tiny Llama the lab builds, tokenizes and pretrains itself on a CPU.

It stands in for Llama-3-8B when there is no GPU and no hub: same architecture family, same tokenizer
conventions (BOS/EOS, a pad token distinct from EOS), and, like any base model, it was pretrained on plain
prose only, so it continues text and has never seen the Alpaca instruction template.

The repository ships the model `pocketbuild` makes (`models/pocket-base/`), so every learner starts from the same
weights whatever their CPU. `make pocket` (or notebook 01's `rebuild_pocket`) rebuilds it from scratch into the
cache: a fixed number of steps with fixed seeds, never a time budget, so a slow laptop gets the same model, later.
This module finds the model the lab uses, builds a local one when asked, ships it, and reads its record.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

from lab_utils.core.paths import atomic_write_json, cache_dir, staged
from lab_utils.models.pocketbuild import (
    BUILD_INFO,
    SHIPPED_DIR,
    PocketConfig,
    build_info,
    build_pocket_model,
    is_built,
)

SOURCE_ENV = "LAB_POCKET"  # which pocket model the lab uses: "shipped" (default) or "local" (rebuilt here)
SOURCES = ("shipped", "local")


class PocketError(RuntimeError):
    """The pocket model asked for is missing or was built from another recipe; the message says how to fix it."""


def model_dir(config: PocketConfig = PocketConfig()) -> Path:
    """Where a local build of `config` lives in the cache (it may not exist yet)."""
    return cache_dir() / f"pocket-{config.key()}{'-quick' if config.quick else ''}"


def pocket_source(source: str | None = None) -> str:
    """Which pocket model to use: the argument, else $LAB_POCKET, else "shipped"."""
    chosen = source or os.environ.get(SOURCE_ENV) or "shipped"
    if chosen not in SOURCES:
        raise PocketError(f"{SOURCE_ENV}={chosen!r}: choose one of {', '.join(SOURCES)}")
    return chosen


def shipped_model() -> Path:
    """The pocket base model shipped in the repository, checked against the builder's current recipe."""
    if not is_built(SHIPPED_DIR):
        raise PocketError(
            f"{SHIPPED_DIR} holds no pocket model (a partial checkout?): restore it with `git checkout -- models/`, "
            f"or build one here with `make pocket` and use it with {SOURCE_ENV}=local"
        )
    shipped_key, current = build_info(SHIPPED_DIR).get("key"), PocketConfig().key()
    if shipped_key != current:
        raise PocketError(
            f"the shipped pocket model was built from another recipe (key {shipped_key}, the builder's is {current}): "
            f"rebuild it with `python -m lab_utils build-pocket --ship`, or use a local build ({SOURCE_ENV}=local)"
        )
    return SHIPPED_DIR


def pocket_model_path(source: str | None = None, progress: bool = True) -> Path:
    """The pocket base model the lab uses: the shipped one by default, or the one rebuilt on this machine."""
    if pocket_source(source) == "shipped":
        return shipped_model()
    return ensure_pocket_model(progress=progress)


def ensure_pocket_model(config: PocketConfig = PocketConfig(), force: bool = False, progress: bool = True) -> Path:
    """Return a local build's folder, building it first if it is missing (or `force`)."""
    target = model_dir(config)
    with open(cache_dir() / f".pocket-{config.key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(target) and not force:
            return target
        with staged(target) as tmp:
            build_pocket_model(tmp, config, progress=progress)
    return target


def ship(path: Path) -> Path:
    """Copy a full (not quick) local build into the repository as the shipped model (for maintainers)."""
    info = build_info(path)
    if info["quick"]:
        raise PocketError(f"{path} is a quick build ({info['pretrain']['steps']} steps): only a full build is shipped")
    with staged(SHIPPED_DIR) as tmp:
        shutil.copytree(path, tmp)
        info["compared_to_shipped"] = None
        atomic_write_json(tmp / BUILD_INFO, info)
    return SHIPPED_DIR


def summary(path: str | Path) -> dict[str, Any]:
    """The figures of a pocket model's build record that a notebook shows and records (flat)."""
    info = build_info(path)
    pre = info["pretrain"]
    out = {
        "pocket_source": "shipped" if Path(path).resolve() == SHIPPED_DIR.resolve() else "local",
        "pocket_key": info["key"],
        "pocket_quick": info["quick"],
        "pocket_params": info["n_params"],
        "pocket_size_mb": info["size_mb"],
        "pocket_pretrain_steps": pre["steps"],
        "pocket_final_loss": pre["final_loss"],
        "pocket_fact_recall": info["fact_recall"],
        "pocket_build_seconds": info["build_seconds"],
        "pocket_pretrain_tokens_per_s": pre["tokens_per_s"],
        "pocket_built_on": info["machine"]["cpu"],
    }
    compared = info.get("compared_to_shipped") or {}
    if compared.get("shipped_present"):
        out.update(
            {
                "pocket_same_recipe_as_shipped": compared["same_recipe"],
                "pocket_identical_to_shipped": compared["identical_weights"],
                "pocket_max_abs_weight_diff": compared["max_abs_weight_diff"],
            }
        )
    return out


def plot_build(paths: dict[str, str | Path]) -> Any:
    """Pretraining loss per step of one or more pocket builds (e.g. shipped and rebuilt here), on one plot."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for label, path in paths.items():
        info = build_info(path)
        losses = info["pretrain"]["losses"]
        ax.plot(
            range(1, len(losses) + 1),
            losses,
            label=f"{label}: final {info['pretrain']['final_loss']:.2f}, "
            f"{info['pretrain']['tokens_per_s']:,.0f} tokens/s on {info['machine']['cpu']}",
            linewidth=1,
        )
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("The pocket base model's pretraining: a fixed number of steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
