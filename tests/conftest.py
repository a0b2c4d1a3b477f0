"""Shared fixtures: one lab run folder per test session, notebooks executed on demand and in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lab_utils.core.results import load_results
from lab_utils.lab.runner import NOTEBOOK_DIR, execute_notebook

# Test-size parameters per notebook (the pocket profile is the default on a CPU).
TEST_PARAMETERS: dict[str, dict[str, Any]] = {
    "00_setup": {"profile": "pocket"},
    "01_alpaca_data": {"profile": "pocket"},
    "02_sft": {"profile": "pocket"},
    "03_memory_optimizations": {"profile": "pocket"},
    "04_vllm_serving": {"profile": "pocket"},
    "05_before_after": {"profile": "pocket"},
    "06_export": {"profile": "pocket", "n_prompts": 24, "requests_per_level": 8},
    "07_preference_tuning": {"profile": "pocket"},
}
# Where a notebook records under another key than its file name.
RESULT_KEYS = {"07_preference_tuning": "07_preference"}
# Tight limits for the test size (make lab takes its limit from the profile): a hung cell fails the test quickly.
CELL_TIMEOUT_S = 600
# Notebooks that run alone in a run folder of their own, after the full run that holds 02's artifacts: the way an
# instructor re-runs one chapter (`make lab NOTEBOOKS="04"`), so each such dependency is tested on every run.
SUBSET_RUNS = ("03_memory_optimizations", "04_vllm_serving", "05_before_after", "07_preference_tuning")


class LabRun:
    """Executes the lab's notebooks, each at most once, prerequisites first: 00-02 into one run folder, and each of
    SUBSET_RUNS alone into a later sibling folder, where it must find what 02 recorded in the earlier run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / "20260101-000000"  # the full run
        self.done: dict[str, Any] = {}

    def folder_of(self, name: str) -> Path:
        """The run folder notebook `name` executes into."""
        return self.root / f"20260101-0001{SUBSET_RUNS.index(name):02d}" if name in SUBSET_RUNS else self.folder

    def run(self, name: str) -> dict[str, Any]:
        """Execute notebook `name` (once) and return its recorded results."""
        if name not in self.done:
            for earlier in sorted(TEST_PARAMETERS):
                if earlier < name and earlier not in self.done and _needed(earlier, name):
                    self.run(earlier)
            params = TEST_PARAMETERS.get(name, {})
            self.done[name] = execute_notebook(
                NOTEBOOK_DIR / f"{name}.ipynb", self.folder_of(name), params, cell_timeout=CELL_TIMEOUT_S
            )
        return load_results(self.folder_of(name))[RESULT_KEYS.get(name, name)]

    def run_variant(self, name: str, label: str, **params: Any) -> dict[str, Any]:
        """Execute notebook `name` again with other parameters (e.g. engine="llamacpp"), alone in a run folder of its
        own after the full run, and return its recorded results."""
        self.run("02_sft")
        folder = self.root / f"20260101-0002{label}"
        if not (folder / "results.json").exists():
            merged = {**TEST_PARAMETERS.get(name, {}), **params}
            execute_notebook(NOTEBOOK_DIR / f"{name}.ipynb", folder, merged, cell_timeout=CELL_TIMEOUT_S)
        return load_results(folder)[RESULT_KEYS.get(name, name)]

    def output_text(self, name: str) -> str:
        """Everything notebook `name` printed (stream outputs of its executed copy)."""
        import json

        executed = json.loads((self.folder_of(name) / f"{name}.ipynb").read_text())
        return "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))


def _needed(earlier: str, name: str) -> bool:
    """Whether notebook `name` needs `earlier` to have run first (the SFT artifacts feed serving and comparison;
    the subset runs come after the full run)."""
    return (earlier == "02_sft" and name > "02_sft") or (name in SUBSET_RUNS and earlier < "03")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a machine with a CUDA GPU, skip the tests that assert CPU-only behaviour, so the suite stays honest there."""
    cpu_only = [item for item in items if item.get_closest_marker("cpu_only")]
    if not cpu_only:
        return
    import torch

    if torch.cuda.is_available():
        skip = pytest.mark.skip(reason="asserts CPU-only behaviour; this machine has a CUDA GPU")
        for item in cpu_only:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> LabRun:
    """The session's lab run folder."""
    return LabRun(tmp_path_factory.mktemp("lab-run"))


@pytest.fixture(scope="session")
def pocket_model() -> str:
    """The pocket base model's folder (the one the repository ships)."""
    from lab_utils.models.pocket import pocket_model_path

    return str(pocket_model_path(progress=False))
