"""Executing the lab's notebooks headlessly with papermill, into a timestamped run folder."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from lab_utils.paths import REPO_ROOT
from lab_utils.results import RESULTS_MIME, load_results

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
KERNEL = "python3"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
START_TIMEOUT_S = 120
CELL_TIMEOUT_S = 900


class NotebookError(RuntimeError):
    """A notebook could not run; the message names the notebook, the cell and the error."""


class UnknownParameterError(NotebookError):
    """A parameter was passed that the notebook's `parameters` cell does not declare."""


@dataclass
class NotebookRun:
    """The outcome of one executed notebook."""

    name: str
    output: Path
    seconds: float
    results: dict[str, Any]


def list_notebooks(selection: list[str] | None = None) -> list[Path]:
    """The lab's notebooks in order; `selection` keeps those whose name starts with one of its prefixes."""
    books = sorted(p for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not selection:
        return books
    chosen = [p for p in books if any(p.name.startswith(s) or p.stem == s for s in selection)]
    missing = [s for s in selection if not any(p.name.startswith(s) or p.stem == s for p in books)]
    if missing:
        raise NotebookError(f"no notebook matches {missing}; have: {[p.stem for p in books]}")
    return chosen


def declared_parameters(path: Path) -> dict[str, Any]:
    """The parameters a notebook declares in its cell tagged `parameters`."""
    import papermill as pm

    return pm.inspect_notebook(str(path))


def check_parameters(path: Path, parameters: dict[str, Any]) -> None:
    """Fail (papermill only warns) when a parameter is not declared by the notebook."""
    declared = declared_parameters(path)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise UnknownParameterError(
            f"{path.name}: unknown parameter(s) {unknown}; the notebook declares {sorted(declared)}"
        )


@contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the kernel papermill starts, restoring them afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute_notebook(
    path: Path, run_folder: Path, parameters: dict[str, Any] | None = None,
    cell_timeout: int = CELL_TIMEOUT_S, start_timeout: int = START_TIMEOUT_S,
) -> NotebookRun:
    """Execute one notebook into `run_folder`, recording its results there; raise NotebookError on failure."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    parameters = dict(parameters or {})
    check_parameters(path, parameters)
    run_folder.mkdir(parents=True, exist_ok=True)
    out = run_folder / path.name
    t0 = time.perf_counter()
    # Progress bars are widgets in a kernel: headless, nobody sees them and they bloat the executed copy (the runner
    # prints its own progress line per notebook), so batch runs turn them off.
    env = {"LAB_RUN_DIR": str(run_folder.resolve()), "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    try:
        with _env(**env):
            pm.execute_notebook(
                str(path), str(out), parameters=parameters, kernel_name=KERNEL, cwd=str(path.parent),
                start_timeout=start_timeout, execution_timeout=cell_timeout, progress_bar=False,
                report_mode=False,
            )
    except PapermillExecutionError as e:
        raise NotebookError(
            f"{path.name} failed in cell {e.exec_count} (index {e.cell_index}): {e.ename}: {e.evalue}\n"
            f"executed copy with the traceback: {out}"
        ) from e
    except Exception as e:  # kernel died, timeout, missing kernel...
        raise NotebookError(f"{path.name} could not run: {type(e).__name__}: {e}\nexecuted copy: {out}") from e
    seconds = time.perf_counter() - t0
    results = _store_results_in_metadata(out, path.stem, seconds)
    return NotebookRun(name=path.stem, output=out, seconds=seconds, results=results)


def _store_results_in_metadata(executed: Path, name: str, seconds: float) -> dict[str, Any]:
    """Copy the values a notebook recorded into the executed notebook's metadata."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    recorded: dict[str, Any] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if RESULTS_MIME in data:
                for section in data[RESULTS_MIME].values():
                    recorded.update(section)
        # Progress-bar widgets some libraries still draw: their state is dead weight in a headless copy.
        if cell.get("outputs"):
            cell.outputs = [o for o in cell.outputs if WIDGET_MIME not in o.get("data", {})]
    nb.metadata.pop("widgets", None)
    nb.metadata["lab_results"] = {"notebook": name, "seconds": round(seconds, 1), "results": recorded}
    nbformat.write(nb, executed)
    return recorded


def new_run_folder(root: Path | None = None) -> Path:
    """A fresh runs/<timestamp>/ folder, with runs/latest pointing at it."""
    root = root or REPO_ROOT / "runs"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = root / stamp
    n = 1
    while folder.exists():
        n += 1
        folder = root / f"{stamp}-{n}"
    folder.mkdir(parents=True)
    latest = root / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(folder.name)
    return folder


def run_lab(
    profile: str = "auto", notebooks: list[str] | None = None, run_root: Path | None = None,
    extra_parameters: dict[str, dict[str, Any]] | None = None, cell_timeout: int = CELL_TIMEOUT_S,
) -> Path:
    """Run the chosen notebooks in order; stop at the first failure with the notebook, cell and error named."""
    books = list_notebooks(notebooks)
    folder = new_run_folder(run_root)
    print(f"lab: running {len(books)} notebook(s) on profile {profile!r} into {folder}", flush=True)
    for i, book in enumerate(books, start=1):
        params = {"profile": profile, **(extra_parameters or {}).get(book.stem, {})}
        print(f"[{i}/{len(books)}] {book.stem}: running", flush=True)
        try:
            run = execute_notebook(book, folder, params, cell_timeout=cell_timeout)
        except NotebookError as e:
            print(f"[{i}/{len(books)}] {book.stem}: FAILED", flush=True)
            print(f"lab: {e}", file=sys.stderr, flush=True)
            raise
        print(f"[{i}/{len(books)}] {book.stem}: done in {run.seconds:.0f} s", flush=True)
    from lab_utils.report import write_report

    html_path, md_path = write_report(folder)
    print(summarize(folder), flush=True)
    print(f"\nReport: {html_path} (and {md_path.name}); executed notebooks and figures in {folder}", flush=True)
    return folder


def summarize(folder: Path) -> str:
    """A short text summary of a run's recorded results."""
    results = load_results(folder)
    lines = [f"\nResults in {folder / 'results.json'}:"]
    for book, values in results.items():
        shown = {k: v for k, v in values.items() if k != "versions" and not isinstance(v, (list, dict))}
        lines.append(f"  {book}: " + ", ".join(f"{k}={_short(v)}" for k, v in shown.items()))
    return "\n".join(lines)


def _short(value: Any) -> str:
    """Compact rendering of a recorded value."""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."
