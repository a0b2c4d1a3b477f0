"""Quizzes: the same questions before and after each notebook, scored in Jupyter, answers in a separate key."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from lab_utils import environment, quiz
from lab_utils.lab.quizbank import BANK, NOTEBOOK_TITLES

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_notebook_has_a_quiz_asked_before_and_after() -> None:
    assert sorted(BANK) == sorted(NOTEBOOK_TITLES) == [nb.name[:2] for nb in NOTEBOOKS]
    for nb in NOTEBOOKS:
        source = "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        key = nb.name[:2]
        for stage in quiz.STAGES:
            assert f'quiz.show_quiz("{key}", "{stage}")' in source, f"{nb.name} asks its quiz {stage} the notebook"
        assert "quiz.Question(" not in source, f"{nb.name}: questions live in lab_utils/lab/quizbank.yaml"


def test_the_bank_measures_learning() -> None:
    questions = [q for qs in BANK.values() for q in qs]
    assert all(4 <= len(qs) <= 6 for qs in BANK.values())
    prompts = Counter(q.prompt.lower() for q in questions)
    assert max(prompts.values()) == 1, "no question asked twice"
    for q in questions:
        assert len(set(q.choices)) == len(q.choices) >= 4, q.prompt
        right = q.choices[q.answer].lower()
        assert not re.search(rf"\b{re.escape(right)}\b", q.prompt.lower()), (
            f"the answer is in the question: {q.prompt!r}"
        )
        assert q.why and q.why != q.choices[q.answer]
    # Right answers spread over the positions (no "always B").
    positions = Counter(q.answer for q in questions)
    assert len(positions) == 4 and max(positions.values()) <= 0.4 * len(questions)


def test_the_lora_share_in_the_quiz_is_the_estimators() -> None:
    prompt = next(q.prompt for q in BANK["02"] if "LoRA trains" in q.prompt)
    pocket = environment.lora_share("pocket")["trainable share (%)"]
    llama = environment.lora_share("llama3-8b")["trainable share (%)"]
    assert f"{pocket:.1f}%" in prompt and f"about {llama:.1f}%" in prompt
    assert pocket > 5 * llama, "the share shrinks as the matrices widen"


def test_bytes_per_parameter_add_up_to_16_every_way() -> None:
    table = environment.bytes_per_param_table()
    assert list(table["total"]) == [16, 16, 16]
    assert "16" in next(q.choices[q.answer] for q in BANK["00"] if "bytes per parameter" in q.prompt)


def test_scoring_counts_right_picks() -> None:
    qs = BANK["02"]
    picks: list[int | None] = [q.answer for q in qs]
    assert quiz.score(qs, picks) == len(qs)
    picks[0] = None
    picks[1] = (qs[1].answer + 1) % len(qs[1].choices)
    assert quiz.score(qs, picks) == len(qs) - 2
    with pytest.raises(ValueError, match="2 answers for 5 questions"):
        quiz.score(qs, [0, 1])


def test_under_papermill_questions_print_without_answers_and_go_to_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quiz.show_quiz("02", "before", interactive=False, folder=tmp_path)
    before = capsys.readouterr().out
    assert before.startswith("Quiz before you start\n")
    assert BANK["02"][0].prompt in before and "Answer:" not in before and BANK["02"][0].why not in before
    assert not (tmp_path / quiz.ANSWER_KEY_FILE).exists()
    quiz.show_quiz("02", "after", interactive=False, folder=tmp_path)
    quiz.show_quiz("00_setup", "after", interactive=False, folder=tmp_path)
    after = capsys.readouterr().out
    assert "Answer:" not in after and "answer_key.md" in after
    key = (tmp_path / quiz.ANSWER_KEY_FILE).read_text()
    assert "## 00 · " in key and "## 02 · " in key and "## 01 · " not in key  # each notebook's answers kept
    q = BANK["02"][1]
    assert f"**Answer: {chr(65 + q.answer)})** {q.why}" in key


def test_interactive_quiz_scores_before_and_shows_the_gain_after(tmp_path: Path) -> None:
    qs = BANK["03"]
    before = quiz.quiz_widget("03", "before", tmp_path)
    radios = [child.children[1] for child in before.children[1:-2]]
    radios[0].value = qs[0].choices[qs[0].answer]  # one right, the rest unanswered
    before.children[-2].click()
    text = before.children[-1].value
    assert f"Score: 1 of {len(qs)}" in text and qs[0].why not in text, "before: the score only, no answers"
    after = quiz.quiz_widget("03", "after", tmp_path)
    for q, radio in zip(qs, [child.children[1] for child in after.children[1:-2]]):
        radio.value = q.choices[q.answer]
    after.children[-2].click()
    text = after.children[-1].value
    assert f"Score: {len(qs)} of {len(qs)}</b> (before the notebook: 1 of {len(qs)}; +{len(qs) - 1})" in text
    assert text.count("Right.") == len(qs) and qs[0].why in text
    assert json.loads((tmp_path / quiz.SCORES_FILE).read_text())["03"] == {"before": 1, "after": len(qs), "of": len(qs)}


def test_the_docs_answer_key_is_generated_from_the_bank() -> None:
    assert (REPO / "docs" / "answer_key.md").read_text() == quiz.answer_key_markdown() + "\n"


def test_under_papermill_the_quiz_is_not_interactive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_RUN_DIR", "/tmp/x")
    assert quiz.is_interactive() is False
    monkeypatch.delenv("LAB_RUN_DIR")
    assert quiz.is_interactive() is False  # a plain interpreter is not a Jupyter session either


def test_solution_prints_under_papermill(capsys: pytest.CaptureFixture[str]) -> None:
    quiz.show_solution("rank", "doubles", interactive=False)
    assert capsys.readouterr().out == "Solution - rank:\ndoubles\n"


def test_bad_answer_index_and_unknown_notebook_are_rejected() -> None:
    with pytest.raises(ValueError, match="answer index 5 out of range"):
        quiz.Question("q", ("a", "b"), 5, "why")
    with pytest.raises(KeyError, match=re.escape("no quiz for notebook '09'")):
        quiz.questions_for("09")
