"""Quizzes that measure learning, and revealable exercise solutions (a room's scores in one table: `room`).

Each notebook asks its quiz twice (`lab_utils.course.quizbank`): before its first section, and after its summary in a
parallel form (the same ideas with other numbers or another case). Before, the learner also predicts one figure the
notebook will record (a band); after, that prediction is scored against the figure in the run's results.json.

In Jupyter the learner picks answers and presses "Score": before, only the score is shown (and saved with the
prediction); after, each answer is marked with its reason, beside the score before, the gain, and the run's figure with
the prediction's outcome. Under papermill (and in a plain interpreter) the questions print without answers, the quiz
after the notebook prints the run's figure and its band, and the answers go to an answer key in the run folder
(`answer_key.md`), a separate file for the instructor. `python -m lab_utils answer-key` writes the whole key;
`python -m lab_utils quiz-scores` gathers the scores saved in a room's run folders into one table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lab_utils.core.paths import atomic_write_json, atomic_write_text
from lab_utils.core.results import load_results, run_dir
from lab_utils.course.quizbank import BANK, NOTEBOOK_TITLES, STAGES, Prediction, Question, Quiz, Stage

SCORES_FILE = "quiz_scores.json"
ANSWER_KEY_FILE = "answer_key.md"
PREDICT_TITLE = "Predict your run's number"


def is_interactive() -> bool:
    """True in a live Jupyter session, False under papermill or a plain interpreter."""
    if os.environ.get("LAB_RUN_DIR") or os.environ.get("PAPERMILL_EXECUTION"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def quiz_for(notebook: str) -> Quiz:
    """The notebook's quiz (`notebook` is its number, "02", or its name, "02_sft")."""
    key = notebook[:2]
    if key not in BANK:
        raise KeyError(f"no quiz for notebook {notebook!r}; quizzes exist for {', '.join(sorted(BANK))}")
    return BANK[key]


def questions_for(notebook: str, stage: Stage = "before") -> tuple[Question, ...]:
    """The questions a notebook asks at a stage: before it, or their parallels after it."""
    return quiz_for(notebook).questions(stage)


def prediction_for(notebook: str) -> Prediction:
    """The notebook's "predict your run's number" item."""
    return quiz_for(notebook).predict


def title_for(stage: Stage) -> str:
    """The quiz's heading for a stage."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    return "Quiz before you start" if stage == "before" else "Quiz again, on the same ideas: what did you learn?"


def letter(index: int) -> str:
    """A choice's letter: 0 -> A."""
    return chr(65 + index)


def score(questions: tuple[Question, ...] | list[Question], picks: list[int | None]) -> int:
    """How many picks (choice indexes; None: unanswered) are right."""
    if len(picks) != len(questions):
        raise ValueError(f"{len(picks)} answers for {len(questions)} questions")
    return sum(p == q.answer for q, p in zip(questions, picks))


def render_text(questions: tuple[Question, ...] | list[Question], title: str = "Quiz", answers: bool = False) -> str:
    """The quiz as text: each question and its lettered choices; with `answers`, the answer and the reason too."""
    lines = [title, "=" * len(title)]
    for i, q in enumerate(questions, start=1):
        lines.append(f"{i}. {q.prompt}")
        lines.extend(f"   {letter(j)}) {c}" for j, c in enumerate(q.choices))
        if answers:
            lines.append(f"   Answer: {letter(q.answer)}) {q.choices[q.answer]} - {q.why}")
        lines.append("")
    return "\n".join(lines)


def render_prediction(p: Prediction) -> str:
    """The prediction item as text: its prompt and its lettered bands."""
    lines = [f"{PREDICT_TITLE}: {p.prompt}"]
    lines.extend(f"   {letter(j)}) {band}" for j, band in enumerate(p.bands))
    return "\n".join(lines) + "\n"


def run_figure(notebook: str, folder: Path) -> tuple[float, int] | None:
    """The figure the run in `folder` recorded for the notebook's prediction, and its band (None: not recorded)."""
    try:
        value = prediction_for(notebook).value(load_results(folder))
    except ValueError:  # an unreadable results.json: treated as not recorded
        return None
    return None if value is None else (value, prediction_for(notebook).band(value))


def figure_line(p: Prediction, figure: tuple[float, int] | None) -> str:
    """The run's figure and its band, or why there is none yet."""
    if figure is None:
        return (
            f"This run has not recorded {p.where()} yet (the notebook's Record cell writes it; a subset run may "
            "skip it): the prediction is scored once it has."
        )
    value, band = figure
    return f"This run recorded {p.show(value)} ({p.where()}): {letter(band)}) {p.bands[band]}."


def prediction_feedback(p: Prediction, figure: tuple[float, int] | None, entry: dict[str, Any]) -> str:
    """After the notebook: the run's figure, and whether the prediction saved before it was a hit."""
    line = figure_line(p, figure)
    if "predicted" not in entry:
        return f"{line} (No prediction saved: the quiz before the notebook was not scored.)"
    picked = entry["predicted"]
    if picked is None:
        return f"{line} (You made no prediction before the notebook.)"
    mine = f"Your prediction: {letter(picked)}) {p.bands[picked]}"
    if figure is None:
        return f"{mine}. {line}"
    return f"{mine}: {'a hit' if picked == figure[1] else 'a miss'}. {line} {p.why}"


def _key_items(questions: tuple[Question, ...], names: list[str]) -> list[str]:
    """A stage's questions for the answer key: choices, the answer and the reason."""
    lines = []
    for i, (q, name) in enumerate(zip(questions, names), start=1):
        lines.append(f"{i}. {q.prompt} _({name})_")
        lines.extend(f"   - {letter(j)}) {c}" for j, c in enumerate(q.choices))
        lines.append(f"   - **Answer: {letter(q.answer)})** {q.why}")
    return lines


def answer_key_markdown(notebooks: list[str] | None = None, folder: Path | None = None) -> str:
    """The instructor's answer key: every notebook's questions before and after with the answers and reasons, and its
    prediction's bands (with `folder`, a run folder, also the figure that run recorded and its band)."""
    parts = [
        "# Answer key",
        "",
        "Each notebook asks its quiz before it and again after it in a parallel form (the same ideas, other numbers or",
        "cases), so the gain measures understanding; the quiz before also asks a prediction of one figure the run",
        "records, scored after the notebook against the band that holds it.",
        "Generated by `python -m lab_utils answer-key` from `lab_utils/course/quizbank.yaml`: edit the bank, not this file.",
        "",
    ]
    for key in notebooks or sorted(BANK):
        quiz = BANK[key]
        names = [c.name for c in quiz.concepts]
        p = quiz.predict
        parts += [f"## {key} · {NOTEBOOK_TITLES[key]}", "", "### Before the notebook", ""]
        parts += _key_items(quiz.questions("before"), names)
        parts += ["", f"**{PREDICT_TITLE}** (asked before, scored after): {p.prompt}"]
        parts.extend(f"   - {letter(j)}) {band}" for j, band in enumerate(p.bands))
        parts.append(
            f"   - **Scored against** `{p.where()}` in the run's results.json: the band that holds it. {p.why}"
        )
        if folder is not None:
            parts.append(f"   - **{figure_line(p, run_figure(key, folder))}**")
        parts += ["", "### After the notebook", ""]
        parts += _key_items(quiz.questions("after"), names)
        parts.append("")
    return "\n".join(parts)


def write_answer_key(folder: Path, notebook: str) -> Path:
    """Add a notebook's answers (and its run's figure) to the answer key in `folder` (written atomically; other
    notebooks' answers kept)."""
    path = folder / ANSWER_KEY_FILE
    done = {key for key in BANK if path.exists() and f"## {key} · " in path.read_text()}
    atomic_write_text(path, answer_key_markdown(sorted(done | {notebook[:2]}), folder=folder))
    return path


def load_scores(folder: Path) -> dict[str, dict[str, Any]]:
    """Scores saved in `folder`: {notebook: {"before": n, "after": n, "of": total, "predicted": band or None, ...}}."""
    path = folder / SCORES_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def save_score(folder: Path, notebook: str, stage: Stage, right: int, total: int, **extra: Any) -> dict[str, Any]:
    """Save a stage's score, with `extra` fields (the prediction), atomically; return the notebook's entry so far."""
    scores = load_scores(folder)
    entry = {**scores.get(notebook[:2], {}), stage: right, "of": total, **extra}
    scores[notebook[:2]] = entry
    atomic_write_json(folder / SCORES_FILE, scores)
    return entry


def feedback_html(
    questions: tuple[Question, ...], picks: list[int | None], stage: Stage, entry: dict[str, Any], prediction: str = ""
) -> str:
    """What the learner sees after pressing "Score": the score, and after the notebook each answer with its reason,
    the gain and the prediction's outcome."""
    right, total = score(questions, picks), len(questions)
    if stage == "before":
        saved = ", with your prediction" if entry.get("predicted") is not None else ""
        return (
            f"<b>Score: {right} of {total}.</b> Saved{saved}: after the summary, questions on the same ideas come "
            "back with the answers, beside the figure this run records."
        )
    lines = [f"<b>Score: {right} of {total}</b>"]
    if "before" in entry:
        gain = right - entry["before"]
        lines[0] += f" (before the notebook: {entry['before']} of {total}; {'+' if gain >= 0 else ''}{gain})"
    for i, (q, pick) in enumerate(zip(questions, picks), start=1):
        mark = "Right." if pick == q.answer else f"Not quite: {letter(q.answer)}) {q.choices[q.answer]}."
        lines.append(f"{i}. <b>{mark}</b> {q.why}")
    if prediction:
        lines.append(f"<b>{PREDICT_TITLE}.</b> {prediction}")
    return "<br>".join(lines)


def show_quiz(notebook: str, stage: Stage, interactive: bool | None = None, folder: Path | None = None) -> None:
    """A notebook's quiz at a stage: radio buttons and a Score button in Jupyter, else the questions printed without
    answers (after the notebook, with the run's figure), the answers going to the run folder's answer key. Returns
    nothing, so Jupyter does not show the quiz twice."""
    folder = folder or run_dir()
    if interactive is None:
        interactive = is_interactive()
    if not interactive:
        quiz = quiz_for(notebook)
        print(render_text(quiz.questions(stage), title_for(stage)))
        if stage == "before":
            print(render_prediction(quiz.predict))
            key = folder / ANSWER_KEY_FILE
        else:
            figure = figure_line(quiz.predict, run_figure(notebook, folder))
            print(f"{PREDICT_TITLE} (asked before the notebook): {figure}")
            key = write_answer_key(folder, notebook)
        print(f"(Answers: in the instructor's answer key, {key}; in Jupyter this quiz scores itself.)")
        return
    from IPython.display import display

    display(quiz_widget(notebook, stage, folder))


def quiz_widget(notebook: str, stage: Stage, folder: Path) -> Any:
    """The interactive quiz: one radio group per question (before the notebook, one more for the prediction), a Score
    button, and the feedback it writes (scores saved in `folder`)."""
    import ipywidgets as w

    quiz = quiz_for(notebook)
    questions, p = quiz.questions(stage), quiz.predict
    radios = [w.RadioButtons(options=list(q.choices), value=None, layout=w.Layout(width="auto")) for q in questions]
    rows = [w.VBox([w.HTML(f"<b>{i}. {q.prompt}</b>"), r]) for i, (q, r) in enumerate(zip(questions, radios), 1)]
    predict = w.RadioButtons(options=list(p.bands), value=None, layout=w.Layout(width="auto"))
    if stage == "before":  # the prediction is made before the notebook and scored after it
        rows.append(w.VBox([w.HTML(f"<b>{PREDICT_TITLE}:</b> {p.prompt}"), predict]))
    feedback = w.HTML()
    button = w.Button(description="Score", button_style="primary")

    def on_score(_: object) -> None:
        picks = [None if r.value is None else list(q.choices).index(r.value) for q, r in zip(questions, radios)]
        right, total = score(questions, picks), len(questions)
        if stage == "before":
            predicted = None if predict.value is None else list(p.bands).index(predict.value)
            entry = save_score(folder, notebook, stage, right, total, predicted=predicted)
            feedback.value = feedback_html(questions, picks, stage, entry)
            return
        figure = run_figure(notebook, folder)
        earlier = load_scores(folder).get(notebook[:2], {})
        hit = None if figure is None or earlier.get("predicted") is None else earlier["predicted"] == figure[1]
        outcome = {"figure": figure[0], "band": figure[1], "predict_hit": hit} if figure else {}
        entry = save_score(folder, notebook, stage, right, total, **outcome)
        feedback.value = feedback_html(questions, picks, stage, entry, prediction_feedback(p, figure, entry))

    button.on_click(on_score)
    box = w.VBox([w.HTML(f"<h3>{title_for(stage)}</h3>"), *rows, button, feedback])
    box.add_class(f"lab-quiz-{stage}")
    return box


def show_solution(title: str, solution: str, interactive: bool | None = None) -> None:
    """An exercise's solution: behind a 'reveal' toggle when interactive, printed under papermill."""
    if interactive is None:
        interactive = is_interactive()
    if not interactive:
        print(f"Solution - {title}:\n{solution}")
        return
    import ipywidgets as w
    from IPython.display import display

    out = w.Output()
    with out:
        print(solution)
    acc = w.Accordion(children=[out], titles=(f"Reveal the solution: {title}",))
    acc.selected_index = None
    display(acc)
