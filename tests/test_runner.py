"""The notebook runner: strict parameters, failures that name the cell, results copied into metadata."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from lab_utils.core.results import load_results
from lab_utils.lab import runner
from lab_utils.lab.notebooks import strip_notebook


def make_notebook(path: Path, body: str) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [new_code_cell("x = 1  # a number", metadata={"tags": ["parameters"]}), new_code_cell(body)]
    nbformat.write(nb, path)
    return path


def test_unknown_parameter_fails_before_running(tmp_path: Path) -> None:
    book = make_notebook(tmp_path / "99_t.ipynb", "y = x")
    with pytest.raises(runner.UnknownParameterError, match=r"99_t.ipynb: unknown parameter\(s\) \['typo'\]"):
        runner.execute_notebook(book, tmp_path / "run", {"typo": 3})
    assert not (tmp_path / "run" / "99_t.ipynb").exists()


@pytest.mark.slow
def test_records_results_and_metadata(tmp_path: Path) -> None:
    book = make_notebook(
        tmp_path / "98_t.ipynb", "from lab_utils.core.results import record\nrecord('98_t', doubled=x * 2)"
    )
    run = runner.execute_notebook(book, tmp_path / "run", {"x": 21}, cell_timeout=120)
    assert run.results["doubled"] == 42
    assert load_results(tmp_path / "run")["98_t"]["doubled"] == 42
    meta = json.loads((tmp_path / "run" / "98_t.ipynb").read_text())["metadata"]["lab_results"]
    assert meta["results"]["doubled"] == 42 and meta["seconds"] > 0
    assert "transformers" in load_results(tmp_path / "run")["98_t"]["versions"]


@pytest.mark.slow
def test_failure_names_notebook_cell_and_error(tmp_path: Path) -> None:
    book = make_notebook(tmp_path / "97_t.ipynb", "raise ValueError('boom ' + str(x))")
    with pytest.raises(runner.NotebookError) as err:
        runner.execute_notebook(book, tmp_path / "run", {"x": 5}, cell_timeout=120)
    text = str(err.value)
    assert "97_t.ipynb failed in cell" in text and "ValueError: boom 5" in text
    assert (tmp_path / "run" / "97_t.ipynb").exists(), "the executed copy with the traceback is kept"


@pytest.mark.slow
def test_cell_timeout_names_the_cell_and_what_to_lower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    book = make_notebook(tmp_path / "96_t.ipynb", "import time\ntime.sleep(60)  # the slow cell")
    monkeypatch.setitem(runner.TIMEOUT_HINTS, "96_t", "x (the knob)")
    with pytest.raises(runner.NotebookError) as err:
        runner.execute_notebook(book, tmp_path / "run", {}, cell_timeout=3)
    text = str(err.value)
    assert "96_t.ipynb: cell 1 ('import time') ran past the 3 s cell limit" in text
    assert "Lower x (the knob)" in text and "--cell-timeout" in text


def test_make_lab_takes_its_cell_limit_from_the_profile() -> None:
    from lab_utils.core.profiles import PROFILES

    assert runner.profile_cell_timeout("pocket") == PROFILES["pocket"].cell_timeout_s == 1800
    for name in ("llama3-8b", "llama3-8b-qlora", "llama3-70b-qlora"):
        assert runner.profile_cell_timeout(name) is None, f"{name}: a training cell runs for hours"
    assert set(runner.TIMEOUT_HINTS) == {p.stem for p in runner.list_notebooks()}


def test_notebook_selection_and_run_folder(tmp_path: Path) -> None:
    names = [p.stem for p in runner.list_notebooks()]
    assert names == sorted(names) and names[0] == "00_setup"
    assert [p.stem for p in runner.list_notebooks(["01"])] == ["01_alpaca_data"]
    with pytest.raises(runner.NotebookError, match="no notebook matches"):
        runner.list_notebooks(["42"])
    first = runner.new_run_folder(tmp_path)
    second = runner.new_run_folder(tmp_path)
    assert first != second and (tmp_path / "latest").resolve() == second.resolve()


def test_strip_removes_outputs(tmp_path: Path) -> None:
    nb = new_notebook()
    cell = new_code_cell("1 + 1")
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    cell.execution_count = 1
    nb.cells = [cell]
    nb.metadata["widgets"] = {"state": {}}
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert strip_notebook(path) is True
    again = nbformat.read(path, as_version=4)
    assert again.cells[0].outputs == [] and again.cells[0].execution_count is None and "widgets" not in again.metadata
    assert strip_notebook(path) is False


@pytest.mark.slow
@pytest.mark.notebook
def test_subset_runner_runs_only_the_chosen_notebook_and_writes_the_report(tmp_path: Path) -> None:
    folder = runner.run_lab(profile="pocket", notebooks=["00"], run_root=tmp_path)
    assert sorted(p.name for p in folder.glob("*.ipynb")) == ["00_setup.ipynb"]
    results = load_results(folder)
    assert list(results) == ["00_setup"] and results["00_setup"]["profile"] == "pocket"
    assert (folder / "report.html").exists() and "00_setup" in (folder / "report.md").read_text()
    executed = json.loads((folder / "00_setup.ipynb").read_text())
    outputs = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert "Quiz before you start" in outputs and "Answer:" not in outputs, "questions and choices, no answers"
    assert "**Answer: B)**" in (folder / "answer_key.md").read_text(), "the answers go to the instructor's key"


@pytest.mark.slow
def test_executed_copy_keeps_no_widget_state(tmp_path: Path) -> None:
    book = make_notebook(
        tmp_path / "94_t.ipynb",
        "from tqdm.auto import tqdm\nimport ipywidgets\ndisplay(ipywidgets.IntProgress(value=x))\nprint('ok')",
    )
    runner.execute_notebook(book, tmp_path / "run", {"x": 3}, cell_timeout=120)
    executed = json.loads((tmp_path / "run" / "94_t.ipynb").read_text())
    assert "widgets" not in executed["metadata"]
    outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
    assert outputs and not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_a_subset_run_finds_results_in_the_newest_earlier_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import time

    from lab_utils.core.paths import atomic_write_json
    from lab_utils.core.results import find_result

    merged_old, merged_new = tmp_path / "merged-old", tmp_path / "merged-new"
    merged_old.mkdir(), merged_new.mkdir()
    older, newer, gone, current = (tmp_path / n for n in ("20260101-1", "20260102-1", "20260103-1", "20260104-1"))
    atomic_write_json(older / "results.json", {"02_sft": {"merged_dir": str(merged_old)}})
    atomic_write_json(newer / "results.json", {"02_sft": {"merged_dir": str(merged_new)}})
    atomic_write_json(gone / "results.json", {"02_sft": {"merged_dir": str(tmp_path / "deleted")}})
    for i, folder in enumerate((older, newer, gone)):
        os.utime(folder / "results.json", (time.time() - 100 + i, time.time() - 100 + i))
    current.mkdir()
    monkeypatch.setenv("LAB_RUN_DIR", str(current))
    import lab_utils.core.results

    monkeypatch.setattr(lab_utils.core.results, "REPO_ROOT", tmp_path / "repo")  # this checkout's runs/ stay out of it
    # The newest run whose recorded folder still exists wins, and the notebook says which run it came from.
    assert find_result("02_sft", "merged_dir") == str(merged_new)
    assert f"merged_dir from 02_sft in the earlier run {newer}" in capsys.readouterr().out
    atomic_write_json(current / "results.json", {"02_sft": {"merged_dir": str(merged_old)}})
    assert find_result("02_sft", "merged_dir") == str(merged_old)  # this run's own result comes first
    with pytest.raises(LookupError, match="no 'adapter_dir' recorded by 02_sft"):
        find_result("02_sft", "adapter_dir")


def test_class_mode_parameters_are_declared_by_their_notebooks() -> None:
    from lab_utils.lab.runner import QUICK_PARAMETERS, check_parameters

    for prefix, params in QUICK_PARAMETERS.items():
        (notebook,) = (Path(__file__).resolve().parents[1] / "notebooks").glob(f"{prefix}_*.ipynb")
        check_parameters(notebook, params)  # raises on a parameter the notebook does not declare
    assert QUICK_PARAMETERS["02"]["max_steps"] == 100, "the class run trains a fixed number of steps too"


def test_your_own_dataset_goes_to_the_notebooks_that_take_one() -> None:
    from lab_utils.lab.runner import notebook_parameters

    books = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    given = {b.name[:2]: notebook_parameters(b, "pocket", quick=True, dataset="mine.jsonl") for b in books}
    assert {k for k, p in given.items() if p.get("dataset") == "mine.jsonl"} == {"01", "02"}
    assert given["03"]["configs"] == "1,3,5,7,8" and given["00"] == {"profile": "pocket"}
    assert notebook_parameters(books[2], "auto") == {"profile": "auto"}


def test_notebook_kernels_talk_over_unix_sockets_not_localhost_tcp() -> None:
    """No kernel port on localhost for another user to reach, and no ipykernel warning on every notebook."""
    import os

    from lab_utils.lab.runner import LocalKernelManager

    assert LocalKernelManager().transport == ("tcp" if os.name == "nt" else "ipc")
