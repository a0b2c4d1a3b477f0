"""Quizzes and solutions render as text under papermill (widgets only in a live Jupyter session)."""

from __future__ import annotations

import pytest

from lab_utils import quiz

QUESTIONS = [
    quiz.Question("2 + 2?", ("3", "4"), 1, "arithmetic"),
    quiz.Question("Sky?", ("blue", "green"), 0, "physics"),
]


def test_text_rendering_lists_choices_and_answers(capsys: pytest.CaptureFixture[str]) -> None:
    quiz.show_quiz(QUESTIONS, title="Warm-up quiz", interactive=False)
    text = capsys.readouterr().out
    assert text.strip() == quiz.render_text(QUESTIONS, "Warm-up quiz").strip()
    assert text.startswith("Warm-up quiz\n============")
    assert "1. 2 + 2?\n   A) 3\n   B) 4\n   Answer: B) 4 - arithmetic" in text
    assert "   Answer: A) blue - physics" in text


def test_under_papermill_the_quiz_is_not_interactive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_RUN_DIR", "/tmp/x")
    assert quiz.is_interactive() is False
    monkeypatch.delenv("LAB_RUN_DIR")
    assert quiz.is_interactive() is False  # a plain interpreter is not a Jupyter session either


def test_solution_prints_under_papermill(capsys: pytest.CaptureFixture[str]) -> None:
    quiz.show_solution("rank", "doubles", interactive=False)
    assert capsys.readouterr().out == "Solution - rank:\ndoubles\n"


def test_bad_answer_index_is_rejected() -> None:
    with pytest.raises(ValueError, match="answer index 5 out of range"):
        quiz.Question("q", ("a", "b"), 5, "why")
