"""Where the lab keeps its data, caches and runs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Ignored folder for built models and other rebuildable artifacts (LAB_CACHE overrides)."""
    path = Path(os.environ.get("LAB_CACHE", REPO_ROOT / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def repo_path(path: str | Path) -> Path:
    """A path as given if absolute or existing, else relative to the repository root."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def recipe(name: str) -> Any:
    """A recipe of `recipes/` imported as a module (`recipe("sft").build`): the lab measures the code the learner takes
    home, not a copy of it."""
    import importlib.util
    import sys

    module = f"lab_recipe_{name}"
    if module not in sys.modules:
        spec = importlib.util.spec_from_file_location(module, REPO_ROOT / "recipes" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        sys.modules[module] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[module])
    return sys.modules[module]


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file (UTF-8, "\\n" line ends, readable by all) so that readers never see it half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; the lab's files are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically, pretty-printed."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


@contextmanager
def staged(target: str | Path) -> Iterator[Path]:
    """The one way the lab writes a folder or a large file: yield `<target>.partial` to write into (any leftover of a
    crashed write removed first); when the block ends without error it takes `target`'s place by renames, so `target`
    is never half-written; after an error the partial write is removed and `target` is left as it was."""
    target = Path(target)
    tmp = target.with_name(target.name + ".partial")
    _remove(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir():
        swap_in_dir(tmp, target)
    else:
        os.replace(tmp, target)


def _remove(path: Path) -> None:
    """Remove a file or a folder, if there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def swap_in_dir(staged: Path, target: Path) -> Path:
    """Put a fully written folder in place of `target` by renames, so `target` is never half-written."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)
    return target
