"""Shared fixtures: one lab run folder per test session, notebooks executed on demand and in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lab_utils.results import load_results
from lab_utils.runner import NOTEBOOK_DIR, execute_notebook

# Test-size parameters per notebook (the pocket profile is the default on a CPU).
TEST_PARAMETERS: dict[str, dict[str, Any]] = {
    "00_setup": {"profile": "pocket"},
    "01_alpaca_data": {"profile": "pocket"},
    "02_sft": {"profile": "pocket"},
    "03_memory_optimizations": {"profile": "pocket"},
    "04_vllm_serving": {"profile": "pocket"},
    "05_before_after": {"profile": "pocket"},
}
CELL_TIMEOUT_S = 900


class LabRun:
    """Executes the lab's notebooks into one run folder, each at most once, prerequisites first."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.done: dict[str, Any] = {}

    def run(self, name: str, **overrides: Any) -> dict[str, Any]:
        """Execute notebook `name` (once) and return its recorded results."""
        if name not in self.done:
            for earlier in sorted(TEST_PARAMETERS):
                if earlier < name and earlier not in self.done and _needed(earlier, name):
                    self.run(earlier)
            params = {**TEST_PARAMETERS.get(name, {}), **overrides}
            self.done[name] = execute_notebook(NOTEBOOK_DIR / f"{name}.ipynb", self.folder, params,
                                               cell_timeout=CELL_TIMEOUT_S)
        return load_results(self.folder)[name]


def _needed(earlier: str, name: str) -> bool:
    """Whether notebook `name` needs `earlier` to have run (the SFT artifacts feed serving and comparison)."""
    return earlier == "02_sft" and name > "02_sft"


@pytest.fixture(scope="session")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> LabRun:
    """The session's lab run folder."""
    return LabRun(tmp_path_factory.mktemp("lab-run"))


@pytest.fixture(scope="session")
def pocket_model() -> str:
    """The pocket base model's folder (built once, cached under .cache/)."""
    from lab_utils.pocket import ensure_pocket_model

    return str(ensure_pocket_model(progress=False))
