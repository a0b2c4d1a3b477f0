"""Short quizzes and revealable exercise solutions: widgets in Jupyter, plain text under papermill."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    """A multiple-choice question with its answer and the reason."""

    prompt: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    why: str

    def __post_init__(self) -> None:
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(
                f"answer index {self.answer} out of range for {len(self.choices)} choices: {self.prompt!r}"
            )


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


def render_text(questions: list[Question], title: str = "Quiz") -> str:
    """The quiz as text: each question, its lettered choices, and the answer with the reason."""
    lines = [title, "=" * len(title)]
    for i, q in enumerate(questions, start=1):
        lines.append(f"{i}. {q.prompt}")
        lines.extend(f"   {chr(65 + j)}) {c}" for j, c in enumerate(q.choices))
        lines.append(f"   Answer: {chr(65 + q.answer)}) {q.choices[q.answer]} - {q.why}")
        lines.append("")
    return "\n".join(lines)


def show_quiz(questions: list[Question], title: str = "Quiz", interactive: bool | None = None) -> None:
    """Show a quiz: radio buttons and a check button when interactive, else printed with the answers."""
    if interactive is None:
        interactive = is_interactive()
    if not interactive:
        print(render_text(questions, title))
        return
    import ipywidgets as w
    from IPython.display import display

    boxes = []
    for i, q in enumerate(questions, start=1):
        radio = w.RadioButtons(options=list(q.choices), value=None, layout=w.Layout(width="auto"))
        feedback = w.HTML()
        button = w.Button(description="Check")

        def check(_: object, q: Question = q, radio: w.RadioButtons = radio, feedback: w.HTML = feedback) -> None:
            ok = radio.value == q.choices[q.answer]
            feedback.value = ("<b>Right.</b> " if ok else "<b>Not quite.</b> ") + q.why

        button.on_click(check)
        boxes.append(w.VBox([w.HTML(f"<b>{i}. {q.prompt}</b>"), radio, w.HBox([button, feedback])]))
    display(w.VBox([w.HTML(f"<h3>{title}</h3>"), *boxes]))


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
