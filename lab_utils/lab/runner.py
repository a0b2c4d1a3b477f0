"""Executing the lab's notebooks headlessly with papermill, into a timestamped run folder."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager

from lab_utils.core.paths import REPO_ROOT
from lab_utils.core.results import RESULTS_MIME, load_results
from lab_utils.course.report import write_report
from lab_utils.lab.runconfig import CLASS_ENV, CLASS_MODE, REHEARSAL_ENV, class_mode, resolve

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
KERNEL = "python3"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
START_TIMEOUT_S = 120
# What to lower when a notebook's cell runs past its limit (its parameters; `make lab` passes the profile's values).
TIMEOUT_HINTS = {
    "00_setup": "nothing heavy runs here: is the machine overloaded?",
    "01_alpaca_data": "rebuild_pocket=False (use the shipped pocket model), n_check",
    "02_sft": "max_steps, benchmark_steps (0 skips the benchmark), n_eval_prompts, max_new_tokens",
    "03_memory_optimizations": "steps, seq_len, configs (a subset of the nine)",
    "04_vllm_serving": "start_timeout_s, bench_max_tokens, the load-test levels, trials",
    "05_before_after": "n_prompts, max_tokens",
    "06_export": "n_prompts, requests_per_level, compare_vllm=False",
    "07_preference_tuning": "max_steps, max_new_tokens",
}


class LocalKernelManager(AsyncKernelManager):
    """A kernel manager that talks to the notebook's kernel over Unix sockets (ZeroMQ's ipc) instead of localhost TCP:
    no port for another user of the machine to reach, and no ipykernel warning on every notebook ("Kernel is running
    over TCP without encryption"). TCP where Unix sockets do not exist (Windows)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transport = "tcp" if os.name == "nt" else "ipc"


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


def _timed_out_cell(executed: Path) -> tuple[int | None, str]:
    """The index (in the executed copy) and first line of the last cell that started: the one the timeout stopped."""
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:
        return None, ""
    started = [i for i, c in enumerate(nb.cells) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    if not started:
        return None, ""
    cell = nb.cells[started[-1]]
    return started[-1], next((line for line in cell.source.splitlines() if line.strip()), "")


def _is_timeout(error: BaseException) -> bool:
    """True for nbclient's cell timeout (papermill lets it through unwrapped)."""
    return type(error).__name__ == "CellTimeoutError" or "timed out" in str(error).lower()


def execute_notebook(
    path: Path,
    run_folder: Path,
    parameters: dict[str, Any] | None = None,
    cell_timeout: int | None = None,
    start_timeout: int = START_TIMEOUT_S,
) -> NotebookRun:
    """Execute one notebook into `run_folder`, recording its results there; raise NotebookError on failure.
    `cell_timeout` (seconds) limits each cell; None: no limit."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    parameters = dict(parameters or {})
    check_parameters(path, parameters)
    run_folder.mkdir(parents=True, exist_ok=True)
    out = run_folder / path.name
    t0 = time.perf_counter()
    # Progress bars are widgets in a kernel: headless, nobody sees them and they bloat the executed copy (the runner
    # prints its own progress line per notebook), so batch runs turn them off.
    env = {
        "LAB_RUN_DIR": str(run_folder.resolve()),
        "PYTHONUNBUFFERED": "1",
        "TQDM_DISABLE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    try:
        with _env(**env):
            pm.execute_notebook(
                str(path),
                str(out),
                parameters=parameters,
                kernel_name=KERNEL,
                cwd=str(path.parent),
                start_timeout=start_timeout,
                execution_timeout=cell_timeout,
                progress_bar=False,
                report_mode=False,
                kernel_manager_class=LocalKernelManager,
            )
    except PapermillExecutionError as e:
        raise NotebookError(
            f"{path.name} failed in cell {e.exec_count} (index {e.cell_index}): {e.ename}: {e.evalue}\n"
            f"executed copy with the traceback: {out}"
        ) from e
    except Exception as e:  # kernel died, timeout, missing kernel...
        if _is_timeout(e):
            index, first = _timed_out_cell(out)
            where = f"cell {index} ({first!r})" if index is not None else "a cell"
            raise NotebookError(
                f"{path.name}: {where} ran past the {cell_timeout} s cell limit and was stopped. Lower "
                f"{TIMEOUT_HINTS.get(path.stem, 'its parameters')}, or raise the limit (run-lab --cell-timeout, "
                f"0 for none)\nexecuted copy: {out}"
            ) from e
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


def profile_cell_timeout(profile: str) -> int | None:
    """The per-cell limit `make lab` uses for a profile, as `runconfig.resolve` resolves it on this machine ("auto"
    included): None means no limit. A rehearsal of a GPU profile runs in minutes, so it gets the pocket profile's
    limit, to catch a hung cell."""
    return resolve(profile).profile.cell_timeout_s


# Class mode (`make lab QUICK=1`): runconfig.CLASS_MODE's values are passed to each notebook (so the executed copy shows
# them), and LAB_CLASS=1 is set for the kernels (so the run configuration records it).
QUICK_PARAMETERS = CLASS_MODE


def skip_reason(book: Path, profile: Any) -> str:
    """Why a notebook does not apply to a profile ("" when it does): 07 tunes 02's merged model, which a profile that
    merges nothing (70B: the adapter is served beside the base) does not have."""
    if book.name.startswith("07") and not profile.tunes_preferences:
        return f"profile {profile.name!r} merges no model in 02 (too large for a 16-bit copy), so there is none to DPO"
    return ""


def notebook_parameters(book: Path, profile: str, quick: bool = False, dataset: str = "") -> dict[str, Any]:
    """What `run_lab` passes to one notebook: the profile, class mode's changes, and your dataset where it is taken."""
    params: dict[str, Any] = {"profile": profile, **(QUICK_PARAMETERS.get(book.name[:2], {}) if quick else {})}
    if dataset and "dataset" in declared_parameters(book):
        params["dataset"] = dataset
    return params


def run_lab(
    profile: str = "auto",
    notebooks: list[str] | None = None,
    run_root: Path | None = None,
    cell_timeout: int | None = -1,
    rehearsal: bool = False,
    quick: bool = False,
    dataset: str = "",
) -> Path:
    """Run the chosen notebooks in order; stop at the first failure with the notebook, cell and error named.
    `cell_timeout`: seconds per cell; -1 takes the profile's limit; None or 0: no limit. `rehearsal`: run a GPU
    profile's flow here with stand-ins (sets LAB_REHEARSAL=1 for the notebooks' kernels). `quick`: class mode, with
    `QUICK_PARAMETERS` (said in the log). `dataset`: your own Alpaca-format file (or hub id) for every notebook that
    takes a `dataset` parameter (01 shows and validates it, 02 trains on it)."""
    if rehearsal:
        with _env(**{REHEARSAL_ENV: "1"}):
            return run_lab(profile, notebooks, run_root, cell_timeout, quick=quick, dataset=dataset)
    quick = quick or class_mode()  # LAB_CLASS=1 in the environment is class mode too
    if quick and not class_mode():
        with _env(**{CLASS_ENV: "1"}):
            return run_lab(profile, notebooks, run_root, cell_timeout, quick=quick, dataset=dataset)

    books = list_notebooks(notebooks)
    cfg = resolve(profile)  # once: every notebook gets the concrete profile name ("auto" decided here)
    if cell_timeout == -1:
        cell_timeout = cfg.profile.cell_timeout_s
    cell_timeout = cell_timeout or None
    folder = new_run_folder(run_root)
    limit = f"{cell_timeout} s per cell" if cell_timeout else "no cell time limit"
    print(
        f"lab: running {len(books)} notebook(s) on profile {cfg.name!r} ({cfg.reason}) into {folder} ({limit})",
        flush=True,
    )
    if quick:
        print(f"lab: class mode (QUICK=1, {CLASS_ENV}=1): {QUICK_PARAMETERS}", flush=True)
    for i, book in enumerate(books, start=1):
        if reason := skip_reason(book, cfg.profile):
            print(f"[{i}/{len(books)}] {book.stem}: skipped: {reason}", flush=True)
            continue
        params = notebook_parameters(book, cfg.name, quick, dataset)
        print(f"[{i}/{len(books)}] {book.stem}: running", flush=True)
        try:
            run = execute_notebook(book, folder, params, cell_timeout=cell_timeout)
        except NotebookError as e:
            print(f"[{i}/{len(books)}] {book.stem}: FAILED", flush=True)
            print(f"lab: {e}", file=sys.stderr, flush=True)
            raise
        print(f"[{i}/{len(books)}] {book.stem}: done in {run.seconds:.0f} s", flush=True)

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
