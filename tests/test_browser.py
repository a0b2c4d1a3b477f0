"""The interactive walkthrough in a real browser: notebook 00 in JupyterLab, driven by Debian's headless Chromium.

Papermill runs prove the notebooks compute; this proves a learner's first session works: the quiz's radio buttons and
Score button, the reveal-the-solution accordions and the memory calculator's sliders render and respond in JupyterLab,
with no "Error displaying widget" from a widget or extension version mismatch. Screenshots go to runs/browser-<time>/.

Needs /usr/bin/chromium (`scripts/setup_browser.sh` installs it as root; `make test` runs it) and the `playwright`
package (the `test` extra) to drive it; without them the test skips, or fails where LAB_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "00_setup.ipynb"
VENV_BIN = Path(sys.executable).parent
CHROMIUM = Path(os.environ.get("LAB_CHROMIUM", "/usr/bin/chromium"))
# Headless, no sandbox (root in CI) and nothing that phones home: without these Chromium keeps dialling Google's hosts.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The interactive run folder (lab_utils.core.results.run_dir() outside papermill): the test's quiz scores land there.
INTERACTIVE_RUNS = ROOT / "runs" / "interactive"
# What ipywidgets' manager shows in place of a widget it cannot render (a widget or extension version mismatch).
WIDGET_ERRORS = ("Error displaying widget", "Failed to load model class", "Click to show javascript error")
SERVER_START_S = 60
PAGE_LOAD_S = 60
RUN_ALL_S = 150
WIDGET_S = 20
SEQ_LEN_PRESSES = 8  # arrow-key presses on the seq_len slider (one step of 128 tokens each)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(420)]


def _unavailable(reason: str) -> None:
    """Skip the test for a missing browser or driver, or fail where LAB_REQUIRE_BROWSER=1 (CI installed them)."""
    if os.environ.get("LAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (LAB_REQUIRE_BROWSER=1: the browser test must run here)", pytrace=False)
    pytest.skip(reason)


@dataclass
class Lab:
    """A JupyterLab server started for the test."""

    url: str
    token: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path
    notebook_url: str = ""

    def api(self, path: str, method: str = "GET") -> Any:
        """Call the server's REST API with the token."""
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            body = response.read()
        return json.loads(body) if body else None


@dataclass
class Shots:
    """The run folder of screenshots and logs (runs/browser-<timestamp>/)."""

    folder: Path
    saved: list[Path] = field(default_factory=list)
    console: list[str] = field(default_factory=list)  # the page's console errors

    def take(self, page: Any, name: str) -> Path:
        path = self.folder / f"{len(self.saved) + 1:02d}-{name}.png"
        page.screenshot(path=str(path))
        self.saved.append(path)
        print(f"screenshot: {path}")
        return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(processes: list[psutil.Process], grace_s: float = 10) -> None:
    """Terminate the processes, then kill whatever did not exit within grace_s."""
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture
def no_leftover_processes() -> Iterator[None]:
    """Fail the test if a process it started (JupyterLab, a kernel, Chromium, Playwright's driver) outlives it."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    left = [p for p in me.children(recursive=True) if p.pid not in before]
    if left:
        names = ", ".join(f"{p.pid} {p.name()}" for p in left if p.is_running())
        _stop(left, grace_s=3)
        pytest.fail(f"processes outlived the browser test (now killed): {names}")


@pytest.fixture
def browser_tools() -> Any:
    """Playwright's sync API, once Debian's Chromium and the driver are known to be here."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing: run scripts/setup_browser.sh as root (apt-get install chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        _unavailable("the playwright package is missing: pip install -e '.[test]'")
    return sync_api


@pytest.fixture
def shots() -> Shots:
    folder = ROOT / "runs" / f"browser-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    return Shots(folder)


@pytest.fixture
def interactive_runs_kept() -> Iterator[Path]:
    """The interactive run folder, restored afterwards: the test's quiz scores and results must not replace a
    learner's own (the kernel writes to runs/interactive, as in any JupyterLab session)."""
    saved = INTERACTIVE_RUNS.parent / f".interactive-before-browser-test-{os.getpid()}"
    existed = INTERACTIVE_RUNS.exists()
    if existed:
        shutil.copytree(INTERACTIVE_RUNS, saved, dirs_exist_ok=True)
    try:
        yield INTERACTIVE_RUNS
    finally:
        shutil.rmtree(INTERACTIVE_RUNS, ignore_errors=True)
        if existed:
            shutil.move(saved, INTERACTIVE_RUNS)


def _write_settings(folder: Path) -> None:
    """JupyterLab user settings for the test: every cell attached to the page (so each can be checked), the
    notebook's kernel started without a "Select Kernel" dialog, no news or update checks, no toasts."""
    settings = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
            "windowingMode": "none",
            "autoStartDefaultKernel": True,
        },
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false",
            "checkForUpdates": False,
            "doNotDisturbMode": True,
        },
    }
    for name, values in settings.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture
def jupyter(tmp_path: Path, shots: Shots) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 (random port and token) serving a copy of notebook 00, stopped afterwards with its
    kernels. The copy sits in notebooks/ of a scratch root that links the repository's models, data and configs, so
    relative paths resolve as in the repository, which itself is never written to."""
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy2(NOTEBOOK, root / "notebooks" / NOTEBOOK.name)
    for name in ("models", "data", "configs"):
        if (ROOT / name).exists():
            (root / name).symlink_to(ROOT / name)
    _write_settings(tmp_path / "lab-settings")
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_RUN_DIR", "PAPERMILL_EXECUTION")}
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),  # the venv's kernel and widget extension still come from sys.prefix
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    port, token = _free_port(), secrets.token_hex(24)
    log = tmp_path / "jupyter.log"
    command = [
        str(VENV_BIN / "jupyter"),
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: the test waits for the kernel's connection
        *(["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    lab = Lab(f"http://127.0.0.1:{port}", token, root, process, log)
    lab.notebook_url = f"{lab.url}/lab/tree/notebooks/{NOTEBOOK.name}?token={token}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"jupyter lab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError, ValueError):
                lab.api("/api/status")
                break
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield lab
    finally:
        _stop_jupyter(lab)
        shutil.copy2(log, shots.folder / "jupyter.log")


def _stop_jupyter(lab: Lab) -> None:
    """Shut the server and its kernels down; terminate, then kill, whatever is left."""
    try:
        family = [psutil.Process(lab.process.pid), *psutil.Process(lab.process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    with contextlib.suppress(OSError, ValueError):
        for kernel in lab.api("/api/kernels"):
            lab.api(f"/api/kernels/{kernel['id']}", method="DELETE")
    with contextlib.suppress(OSError, ValueError):
        lab.api("/api/shutdown", method="POST")
    with contextlib.suppress(subprocess.TimeoutExpired):
        lab.process.wait(timeout=10)
    if lab.process.poll() is None:
        lab.process.send_signal(signal.SIGTERM)
    _stop([p for p in family if p.is_running()], grace_s=5)
    lab.process.wait(timeout=10)


@pytest.fixture
def page(browser_tools: Any, shots: Shots) -> Iterator[Any]:
    """A page in Debian's headless Chromium (a fresh profile), closed afterwards; its console errors are saved."""
    console = shots.console
    playwright = browser_tools.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}") if msg.type == "error" else None)
            page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
            yield page
        finally:
            (shots.folder / "console-errors.log").write_text("\n".join(console) + "\n")
            browser.close()
    finally:
        playwright.stop()


def _literal_start(node: ast.expr) -> str:
    """A string argument's text, or an f-string's literal text up to its first computed value ("" for neither)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in itertools.takewhile(lambda v: isinstance(v, ast.Constant), node.values))
    return ""


def _solutions(notebook: Path) -> list[tuple[str, str]]:
    """The (title, text) of each quiz.show_solution call with a literal title in the notebook: the text is the literal
    one, or a computed solution's literal opening (the rest depends on the run)."""
    found = []
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse("".join(cell["source"]))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "show_solution"
                and len(node.args) >= 2
                and isinstance(node.args[0], ast.Constant)
                and _literal_start(node.args[1]).strip()
            ):
                found.append((node.args[0].value, _literal_start(node.args[1])))
    return found


def _parameters(notebook: Path) -> dict[str, Any]:
    """The literal values assigned in the notebook's cell tagged 'parameters'."""
    cell = next(c for c in json.loads(notebook.read_text())["cells"] if "parameters" in c["metadata"].get("tags", []))
    values = {}
    for node in ast.parse("".join(cell["source"])).body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        if isinstance(target, ast.Name) and node.value is not None:
            with contextlib.suppress(ValueError):
                values[target.id] = ast.literal_eval(node.value)
    return values


def _table(locator: Any) -> dict[str, dict[str, str]]:
    """A rendered pandas table as {row label: {column: text}}."""
    rows = locator.evaluate(
        """t => Array.from(t.querySelectorAll('tr')).map(
            r => Array.from(r.querySelectorAll('th,td')).map(c => c.textContent.trim()))"""
    )
    header = rows[0]
    return {r[0]: dict(zip(header[1:], r[1:])) for r in rows[1:] if r and r[0] and len(r) == len(header)}


def _column(table: dict[str, dict[str, str]], word: str) -> str:
    columns = next(iter(table.values())).keys()
    name = next((c for c in columns if word in c), None)
    assert name, f"the calculator's table has no {word!r} column: {list(columns)}"
    return name


def _wait_until(page: Any, predicate: str, timeout_s: float, what: str, arg: Any = None) -> None:
    """Wait until the JavaScript predicate (of `arg`) holds on the page, or fail saying what did not happen in time."""
    try:
        page.wait_for_function(predicate, arg=arg, timeout=timeout_s * 1000, polling=250)
    except Exception as exc:  # playwright's TimeoutError
        raise AssertionError(f"{what} (waited {timeout_s} s)") from exc


def _wait_for_kernel(page: Any) -> None:
    """Wait until the notebook's kernel is connected and idle: Run All before that runs nothing, silently."""
    _wait_until(
        page,
        """() => {
            const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const kernel = panel && panel.sessionContext && panel.sessionContext.session
                && panel.sessionContext.session.kernel;
            return !!kernel && panel.context.isReady && kernel.connectionStatus === 'connected'
                && kernel.status === 'idle';
        }""",
        PAGE_LOAD_S,
        "notebook 00's kernel was not connected and idle",
    )


def _run_all(page: Any, expect: Any) -> None:
    """Run > Run All Cells from the menu bar; wait until every code cell has run or one failed."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    item = page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$"))
    expect(item, "the Run menu did not open with 'Run All Cells'").to_be_visible(timeout=WIDGET_S * 1000)
    item.click()
    _wait_until(
        page,
        """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'))
            .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))""",
        WIDGET_S,
        "no cell started running after Run > Run All Cells",
    )
    _wait_until(
        page,
        """() => {
            const prompts = Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'))
                .map(p => p.textContent.trim());
            if (prompts.some(p => p.includes('*'))) return false;
            const failed = Array.from(document.querySelectorAll('.jp-Notebook .jp-OutputArea-output'))
                .some(o => o.textContent.includes('Traceback'));
            return failed || prompts.every(p => /^\\[\\d+\\]:$/.test(p));
        }""",
        RUN_ALL_S,
        "Run All did not finish (every code cell numbered, or a traceback shown)",
    )


def _cell_errors(page: Any) -> list[str]:
    """Error outputs (tracebacks) of the notebook's cells, as the page shows them."""
    errors = []
    cells = page.locator(".jp-Notebook .jp-CodeCell")
    for i in range(cells.count()):
        for text in cells.nth(i).locator(".jp-OutputArea-output").all_text_contents():
            if "Traceback" in text:
                errors.append(f"code cell {i + 1}:\n{text[-2500:]}")
    return errors


def _quiz(
    page: Any, expect: Any, stage: str, questions: tuple[Any, ...], problems: list[str], bands: tuple[str, ...] = ()
) -> Any:
    """The quiz widget of `stage`, checked to render once: each question's prompt and its choices as radio buttons
    (and, with `bands`, the prediction's bands as one more group)."""
    boxes = page.locator(f".jp-Notebook .lab-quiz-{stage}")
    expect(boxes.first, f"the {stage!r} quiz widget (class lab-quiz-{stage}) did not render").to_be_visible(
        timeout=WIDGET_S * 1000
    )
    if boxes.count() != 1:
        problems.append(
            f"the {stage!r} quiz shows {boxes.count()} times: a cell ending in quiz.show_quiz(...) displays the "
            "widget and then again as the cell's value (show_quiz should return None after display())"
        )
    box = boxes.first
    box.scroll_into_view_if_needed()
    expect(box.locator("h3"), f"the {stage!r} quiz has no title").to_have_count(1)
    groups = box.locator(".widget-radio-box")
    expect(groups, f"the {stage!r} quiz shows a radio group per question").to_have_count(len(questions) + bool(bands))
    for i, q in enumerate(questions):
        expect(box, f"the {stage!r} quiz lacks question {i + 1}").to_contain_text(f"{i + 1}. {q.prompt}")
        expect(groups.nth(i).locator("label"), f"question {i + 1}'s choices").to_have_text(list(q.choices))
        expect(groups.nth(i).locator("input[type=radio]:checked"), "a choice is picked before").to_have_count(0)
    if bands:
        expect(groups.nth(len(questions)).locator("label"), "the prediction's bands").to_have_text(list(bands))
    return box


def _answer(box: Any, expect: Any, picks: list[str | None]) -> None:
    """Pick the given choice of each question (None: leave it open), then press Score."""
    groups = box.locator(".widget-radio-box")
    for i, pick in enumerate(picks):
        if pick is None:
            continue
        choice = groups.nth(i).locator("label").filter(has_text=re.compile(rf"^\s*{re.escape(pick)}\s*$"))
        expect(choice, f"question {i + 1} lacks the choice {pick!r}").to_have_count(1)
        radio = choice.locator("input[type=radio]")
        radio.check()
        expect(radio, f"{pick!r} did not stay picked").to_be_checked()
    box.locator("button", has_text=re.compile(r"^\s*Score\s*$")).click()


def _widget_state(interact: Any, expect: Any) -> dict[str, Any]:
    """The calculator's settings as its widgets show them."""

    def labelled(kind: str, label: str) -> Any:
        widget = interact.locator(f".widget-{kind}").filter(
            has=interact.page.locator(".widget-label", has_text=re.compile(rf"^{label}$"))
        )
        expect(widget, f"the calculator has no {label!r} {kind}").to_have_count(1)
        return widget

    def slider(label: str) -> int:
        value = labelled("slider", label).locator(".noUi-handle").get_attribute("aria-valuenow")
        return round(float(value or "nan"))

    checkbox = interact.locator(".widget-checkbox input[type=checkbox]")
    expect(checkbox, "the calculator has no gradient_checkpointing checkbox").to_have_count(1)
    return {
        "model": labelled("dropdown", "model").locator("select").input_value(),
        "precision": labelled("dropdown", "precision").locator("select").input_value(),
        "micro_batch": slider("micro_batch"),
        "seq_len": slider("seq_len"),
        "gradient_checkpointing": checkbox.is_checked(),
        "lora_r": slider("lora_r"),
    }


def _numbers(table: dict[str, dict[str, str]], column: str) -> dict[str, float]:
    return {row: float(values[column]) for row, values in table.items() if values.get(column)}


def test_walkthrough_notebook_runs_and_its_widgets_respond_in_jupyterlab(
    no_leftover_processes: None,
    browser_tools: Any,
    shots: Shots,
    interactive_runs_kept: Path,
    jupyter: Lab,
    page: Any,
) -> None:
    from lab_utils.course.quiz import load_scores, prediction_for, questions_for
    from lab_utils.lab.environment import memory_table

    expect = browser_tools.expect
    questions, parallels = questions_for("00", "before"), questions_for("00", "after")
    n = len(questions)
    assert n >= 2, "the test answers one question right and one wrong: notebook 00's quiz needs two or more"
    solutions = _solutions(NOTEBOOK)
    assert solutions, "notebook 00 has no quiz.show_solution(title, text) call with a literal title to reveal"
    problems: list[str] = []  # what a learner would see wrong but the test can go on past: reported at the end
    timings: dict[str, float] = {}
    start = time.monotonic()

    def lap(name: str) -> None:
        timings[name] = time.monotonic() - start - sum(timings.values())

    try:
        page.goto(jupyter.notebook_url, timeout=PAGE_LOAD_S * 1000)
        expect(page.locator(".jp-Notebook .jp-CodeCell").first, "notebook 00 did not open in JupyterLab").to_be_visible(
            timeout=PAGE_LOAD_S * 1000
        )
        _wait_for_kernel(page)
        lap("open")

        # Run > Run All Cells: every cell runs, none fails, and every widget renders.
        _run_all(page, expect)
        lap("run all")
        shots.take(page, "after-run-all")
        errors = _cell_errors(page)
        assert not errors, "cells failed in JupyterLab:\n\n" + "\n\n".join(errors)
        prompts = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").all_text_contents()
        assert all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts), f"not every cell ran: {prompts}"
        _assert_widgets_render(page, shots.console)
        outputs = " ".join(page.locator(".jp-Notebook .jp-OutputArea").all_text_contents())
        shown = re.findall(r"<function [\w.<>]+", outputs)
        if shown:
            problems.append(f"cells show a function's repr as their value: {shown} (end the cell with the widget)")
        bars = page.locator(".jp-Notebook .widget-hprogress")
        for i in range(bars.count()):  # tqdm's bars (loading the pocket model): a widget, drawn
            expect(bars.nth(i), f"progress bar {i + 1} did not render").to_be_visible()
            track = bars.nth(i).locator(".progress").bounding_box()
            assert track and track["width"] > 0, f"progress bar {i + 1} is drawn without a track"

        # The quiz before the notebook: the first question answered right, the others left open.
        box = _quiz(page, expect, "before", questions, problems, prediction_for("00").bands)
        _answer(box, expect, [questions[0].choices[questions[0].answer]] + [None] * (n - 1))
        expect(box, "the 'before' quiz showed no score after Score").to_contain_text(
            f"Score: 1 of {n}.", timeout=WIDGET_S * 1000
        )
        shots.take(page, "quiz-before-scored")

        # The memory calculator: eight steps up the seq_len slider grow the activations, nothing else.
        interact = page.locator(".jp-Notebook .widget-interact")
        expect(interact, "the memory calculator (ipywidgets interact) did not render once").to_have_count(1)
        interact.scroll_into_view_if_needed()
        table = interact.locator(".widget-output table")
        expect(table, "the memory calculator shows no table").to_have_count(1, timeout=WIDGET_S * 1000)
        state = _widget_state(interact, expect)
        asked = {k[len("calc_") :]: v for k, v in _parameters(NOTEBOOK).items() if k.startswith("calc_")}
        differ = {k: (state[k], v) for k, v in asked.items() if k in state and state[k] != v}
        if differ:
            problems.append(
                "the memory calculator does not start at the notebook's calc_* parameters (shown, asked): "
                f"{differ}: its widgets should take them as their initial values"
            )
        shown_before = _table(table)
        activations = _column(shown_before, "activations")
        weights = _column(shown_before, "weights")
        handle = interact.locator(".widget-slider", has_text="seq_len").locator(".noUi-handle")
        handle.focus()
        for _ in range(SEQ_LEN_PRESSES):
            handle.press("ArrowRight")
        wanted = min(state["seq_len"] + SEQ_LEN_PRESSES * 128, 8192)
        expect(handle, "the seq_len slider did not move with the arrow keys").to_have_attribute(
            "aria-valuenow", re.compile(rf"^{wanted}(\.0)?$"), timeout=WIDGET_S * 1000
        )
        expected = memory_table(**{**state, "seq_len": wanted})
        want_text = f"{expected[activations].iloc[0]:.2f}"
        _wait_until(
            page,
            """([col, want]) => {
                const t = document.querySelector('.jp-Notebook .widget-interact .widget-output table');
                if (!t) return false;
                const head = Array.from(t.querySelectorAll('thead tr:first-child th')).map(c => c.textContent.trim());
                const row = t.querySelector('tbody tr');
                const i = head.indexOf(col);
                return i > 0 && !!row && parseFloat(row.children[i].textContent) === parseFloat(want);
            }""",
            WIDGET_S,
            f"the calculator's table did not update to seq_len {wanted} ({activations} {want_text} on the first row)",
            arg=[activations, want_text],
        )
        shown_after = _table(table)
        grew, same = _numbers(shown_after, activations), _numbers(shown_after, weights)
        assert grew == pytest.approx(expected[activations].to_dict(), abs=0.006), "activations != the calculator's"
        assert all(grew[m] > v for m, v in _numbers(shown_before, activations).items()), "activations did not grow"
        assert same == _numbers(shown_before, weights), "the weights changed with the sequence length"
        shots.take(page, "calculator-seq-len-moved")

        # Each exercise's solution: hidden until its accordion is clicked, then shown.
        for title, text in solutions:
            header = page.locator(".jp-Notebook .jupyter-widget-Collapse-header").filter(
                has_text=f"Reveal the solution: {title}"
            )
            expect(header, f"no accordion 'Reveal the solution: {title}'").to_have_count(1)
            contents = header.locator("xpath=..").locator(".jupyter-widget-Collapse-contents")
            expect(contents, f"the solution {title!r} shows before it is asked for").to_be_hidden()
            header.click()
            expect(contents, f"clicking 'Reveal the solution: {title}' did not reveal it").to_be_visible(
                timeout=WIDGET_S * 1000
            )
            expect(contents, f"the solution {title!r} shows the wrong text").to_contain_text(text)
        shots.take(page, "solutions-revealed")

        # The parallel quiz after the notebook: all right but the last; each answer marked, beside the score before.
        box = _quiz(page, expect, "after", parallels, problems)
        last = parallels[-1]
        wrong = next(c for j, c in enumerate(last.choices) if j != last.answer)
        _answer(box, expect, [q.choices[q.answer] for q in parallels[:-1]] + [wrong])
        expect(box, "the 'after' quiz showed no score beside the first one").to_contain_text(
            f"Score: {n - 1} of {n} (before the notebook: 1 of {n}", timeout=WIDGET_S * 1000
        )
        feedback = box.locator(".widget-html-content").filter(has_text="Score:").first.text_content() or ""
        assert feedback.count("Right.") == n - 1, f"expected {n - 1} answers marked 'Right.': {feedback}"
        assert f"Not quite: {chr(65 + last.answer)}) {last.choices[last.answer]}" in feedback, feedback
        shots.take(page, "quiz-after-scored")
        saved = load_scores(interactive_runs_kept).get("00", {})
        assert {k: saved.get(k) for k in ("before", "after", "of", "predicted")} == {
            "before": 1,
            "after": n - 1,
            "of": n,
            "predicted": None,  # the prediction was left open
        }, f"quiz scores saved in {interactive_runs_kept}: {load_scores(interactive_runs_kept)}"

        _assert_widgets_render(page, shots.console)
        lap("interactions")
    except BaseException:
        with contextlib.suppress(Exception):
            shots.take(page, "failure")
        raise
    finally:
        print(f"timings (s): {', '.join(f'{k} {v:.1f}' for k, v in timings.items())}; run folder: {shots.folder}")
    assert not problems, "notebook 00 works in JupyterLab but shows:\n- " + "\n- ".join(problems)


def _assert_widgets_render(page: Any, console: list[str]) -> None:
    """No widget failed to render: no error box, no widget left as its text repr, no widget error in the console."""
    widget_errors = [line[:600] for line in console if "widget" in line.lower()]
    text = page.locator("body").text_content() or ""
    shown = [m for m in WIDGET_ERRORS if m in text]
    broken = page.locator(".jupyter-widgets-error-widget").count()
    assert not shown and not broken, (
        f"widgets failed to render ({shown or broken} error boxes): a widget or extension version mismatch? "
        "Console:\n" + "\n".join(widget_errors[:5])
    )
    outputs = " ".join(page.locator(".jp-Notebook .jp-OutputArea").all_text_contents())
    as_text = re.findall(r"\b(?:VBox|HBox|Accordion|interactive)\(children=", outputs)
    assert not as_text, f"widgets shown as text ({as_text}): is the jupyterlab_widgets extension missing?"
    assert not widget_errors, "the browser's console reports widget errors:\n" + "\n".join(widget_errors[:5])
