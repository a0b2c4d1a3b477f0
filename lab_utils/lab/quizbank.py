"""Every notebook's quiz (the questions are in quizbank.yaml beside this file): asked before the notebook and again
after it, so a learner sees their own gain.

Rules the tests hold the bank to: no question appears twice, no answer is given away by its question, the right
answers are spread over the positions, and each notebook has four to six questions on what it teaches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


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


BANK_FILE = Path(__file__).with_name("quizbank.yaml")  # the questions: content, edited as data


def load_bank(path: Path = BANK_FILE) -> tuple[dict[str, str], dict[str, tuple[Question, ...]]]:
    """(notebook titles, questions per notebook) from the bank file; a malformed question names its notebook."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    titles = {nb: entry["title"] for nb, entry in raw.items()}
    bank = {}
    for nb, entry in raw.items():
        try:
            bank[nb] = tuple(
                Question(q["prompt"], tuple(q["choices"]), q["answer"], q["why"]) for q in entry["questions"]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: notebook {nb}: {e}") from e
    return titles, bank


NOTEBOOK_TITLES, BANK = load_bank()
