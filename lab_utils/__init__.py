"""lab_utils: the plumbing behind the fine-tuning lab's notebooks, in stage subpackages layered bottom to top.

`core` (paths, hardware, profiles, results) < `data` < `models` < `train` < `serve` < `measure` < `course` (quizzes,
report, headline figures, diagrams) < `lab` (the run configuration and its file, readiness, runner): a stage imports
only the stages below it (import-linter checks it in `make test`; the contract is in pyproject.toml). A notebook imports modules by their short name
(`from lab_utils import train, evaluate`), resolved here.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

__version__ = "0.1.0"

STAGES = ("core", "data", "models", "train", "serve", "measure", "course", "lab")  # bottom to top
# Stages whose package re-exports its main module take the stage's own name (`from lab_utils import train`).
MODULES: dict[str, str] = {
    **{
        m.name: f"lab_utils.{stage}.{m.name}"
        for stage in STAGES
        for m in pkgutil.iter_modules([f"{__path__[0]}/{stage}"])
    },
    **{stage: f"lab_utils.{stage}" for stage in ("data", "models", "train", "serve")},
}


def __getattr__(name: str) -> ModuleType:
    """`from lab_utils import evaluate` -> the module behind the short name, imported on first use."""
    if name in MODULES:
        return importlib.import_module(MODULES[name])
    raise AttributeError(f"module 'lab_utils' has no attribute {name!r}")
