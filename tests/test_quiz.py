"""Quizzes: parallel questions before and after each notebook, a prediction scored against the run's figure, scored in
Jupyter, answers in a separate key, and a room's scores in one table."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab_utils.__main__ import main
from lab_utils.course import quiz, room
from lab_utils.course.quizbank import BANK, BANK_FILE, NOTEBOOK_TITLES, Prediction, load_bank, lookup
from lab_utils.lab import environment

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
QUESTIONS = [q for qz in BANK.values() for stage in quiz.STAGES for q in qz.questions(stage)]


def code_of(notebook: Path) -> str:
    """A notebook's code cells, joined."""
    return "".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")


def results_for(notebook: str, value: float) -> dict[str, Any]:
    """A results.json in which the notebook's prediction figure is `value` (its divisor, if it has one, 1)."""
    p = quiz.prediction_for(notebook)
    results: dict[str, Any] = {}
    for path, leaf in ((p.figure, value), (p.per, 1.0)):
        if path is not None:
            _put(results, path, leaf)
    assert p.value(results) == pytest.approx(value), results
    return results


def _put(node: Any, path: tuple[Any, ...], leaf: float) -> None:
    """Set `leaf` at `path`, making the dicts, lists and {key: value} list items on the way."""
    step, rest = path[0], path[1:]
    if isinstance(step, dict):
        item = next((x for x in node if all(x.get(k) == v for k, v in step.items())), None)
        if item is None:
            item = dict(step)
            node.append(item)
        _put(item, rest, leaf)
    elif not rest:
        node[step] = leaf
    else:
        _put(node.setdefault(step, [] if isinstance(rest[0], dict) else {}), rest, leaf)


def test_every_notebook_has_a_quiz_asked_before_and_after() -> None:
    assert sorted(BANK) == sorted(NOTEBOOK_TITLES) == [nb.name[:2] for nb in NOTEBOOKS]
    for nb in NOTEBOOKS:
        source, key = code_of(nb), nb.name[:2]
        for stage in quiz.STAGES:
            assert f'quiz.show_quiz("{key}", "{stage}")' in source, f"{nb.name} asks its quiz {stage} the notebook"
        assert "quiz.Question(" not in source, f"{nb.name}: questions live in lab_utils/course/quizbank.yaml"


def test_the_bank_measures_learning() -> None:
    assert all(4 <= len(qz.concepts) <= 6 for qz in BANK.values())
    prompts = Counter(q.prompt.lower() for q in QUESTIONS) + Counter(qz.predict.prompt.lower() for qz in BANK.values())
    assert max(prompts.values()) == 1, "no question asked twice"
    for q in QUESTIONS:
        assert len(set(q.choices)) == len(q.choices) >= 4, q.prompt
        right = q.choices[q.answer].lower()
        assert not re.search(rf"\b{re.escape(right)}\b", q.prompt.lower()), (
            f"the answer is in the question: {q.prompt!r}"
        )
        assert q.why and q.why != q.choices[q.answer]


def test_the_quiz_after_asks_parallel_items_not_the_same_ones() -> None:
    for key, qz in BANK.items():
        before, after = qz.questions("before"), qz.questions("after")
        assert len(before) == len(after) == len(qz.concepts)
        assert not {q.prompt for q in before} & {q.prompt for q in after}, f"{key}: a prompt is asked twice"
        for b, a in zip(before, after):
            assert b.prompt != a.prompt and b.choices != a.choices, f"{key}: {b.prompt!r} comes back unchanged"
        assert all(c.name for c in qz.concepts), f"{key}: every concept is named"


def test_the_right_answer_is_not_a_length_cue() -> None:
    """Picking the longest choice (or the shortest) must not beat chance: ties count against the bank."""
    longest = [q for q in QUESTIONS if len(q.choices[q.answer]) >= max(map(len, q.choices))]
    shortest = [q for q in QUESTIONS if len(q.choices[q.answer]) <= min(map(len, q.choices))]
    assert len(longest) <= len(QUESTIONS) / 3, f"the right answer is the longest in {len(longest)} of {len(QUESTIONS)}"
    assert len(shortest) <= len(QUESTIONS) / 3, f"the right answer is the shortest in {len(shortest)}"


def test_no_absolute_word_gives_a_wrong_choice_away() -> None:
    """Test-wise learners strike out the choice that says 'must', 'always', 'only', 'cannot' or 'never'. No item may
    carry such a word in a wrong choice while its right one has none ('weight-only' is a term, not a cue)."""
    absolute = re.compile(r"(?<!-)\b(must|always|only|cannot|never)\b", re.IGNORECASE)
    cued = [
        q.prompt[:60]
        for q in QUESTIONS
        if not absolute.search(q.choices[q.answer])
        and any(absolute.search(c) for i, c in enumerate(q.choices) if i != q.answer)
    ]
    assert not cued, cued


def test_choices_are_shuffled_per_stage_the_same_way_everywhere() -> None:
    raw = yaml.safe_load(BANK_FILE.read_text())
    for key, qz in BANK.items():
        for concept, entry in zip(qz.concepts, raw[key]["concepts"]):
            for stage in quiz.STAGES:
                q, item = getattr(concept, stage), entry[stage]
                assert q.choices[q.answer] == item["right"] and sorted(q.choices) == sorted(
                    [item["right"], *item["wrong"]]
                )
    assert load_bank()[1] == BANK, "the shuffle is seeded: loading again gives the same order (and answer key)"
    for stage in quiz.STAGES:  # right answers spread over the positions (no "always A")
        positions = Counter(q.answer for qz in BANK.values() for q in qz.questions(stage))
        assert len(positions) == 4 and max(positions.values()) <= 0.4 * sum(positions.values()), (stage, positions)


def test_every_prediction_reads_a_figure_its_notebook_records_and_its_bands_cover_every_value() -> None:
    lab_sources = "".join(p.read_text() for p in (REPO / "lab_utils").rglob("*.py"))
    for nb in NOTEBOOKS:
        p, code = quiz.prediction_for(nb.name), code_of(nb)
        for path in filter(None, (p.figure, p.per)):
            assert re.search(rf'record\(\s*"{path[0]}"', code), f"{nb.name} records under {path[0]!r}"
            assert f"{path[1]}=" in code, f"{nb.name} records {path[1]!r}"
            for step in (s for s in path if isinstance(s, dict)):
                for value in step.values():
                    where = lab_sources if isinstance(value, str) else code
                    assert (f'"{value}"' if isinstance(value, str) else str(value)) in where, (nb.name, step)
        assert p.band(p.edges[0] - 1e9) == 0 and p.band(p.edges[-1] + 1e9) == len(p.bands) - 1
        assert [p.band(e) for e in p.edges] == list(range(1, len(p.bands))), "each edge opens the next band"
        assert p.show(p.edges[0]) and p.why


def test_a_prediction_is_scored_against_the_band_that_holds_the_runs_figure(tmp_path: Path) -> None:
    p = Prediction(
        "q?",
        ("nb", "rows", {"n": 32}, "v"),
        ("nb", "rows", {"n": 1}, "v"),
        (1.5, 4.0),
        ("lo", "mid", "hi"),
        "{:.1f}x",
        "why",
    )
    results = {"nb": {"rows": [{"n": 1, "v": 100.0}, {"n": 32, "v": 400.0}]}}
    assert p.value(results) == 4.0 and p.band(4.0) == 2 and p.where() == "nb.rows[n=32].v / nb.rows[n=1].v"
    assert p.value({"nb": {"rows": [{"n": 1, "v": 0}, {"n": 32, "v": 5}]}}) is None, "no division by zero"
    assert p.value({"nb": {"rows": []}}) is None and p.value({}) is None
    assert lookup({"a": [1, 2, 3]}, ("a", -1)) == 3 and lookup({"a": [1]}, ("a", 5)) is None
    with pytest.raises(ValueError, match="2 edges need 3 bands"):
        Prediction("q?", ("x",), None, (1.0, 2.0), ("a", "b"), "{}", "why")
    # A real figure: notebook 02's stop rate, 1.0, lands in the last band ("all of them").
    (tmp_path / "results.json").write_text(json.dumps({"02_sft": {"stop_rate_finetuned": 1.0}}))
    pred = quiz.prediction_for("02")
    assert quiz.run_figure("02", tmp_path) == (1.0, len(pred.bands) - 1)
    assert quiz.run_figure("04", tmp_path) is None, "not recorded: no crash, no band"
    assert "has not recorded" in quiz.figure_line(quiz.prediction_for("04"), None)


def test_the_lora_share_in_the_quiz_is_the_estimators() -> None:
    prompt = next(q.prompt for q in QUESTIONS if "LoRA trains" in q.prompt)
    pocket = environment.lora_share("pocket")["trainable share (%)"]
    llama = environment.lora_share("llama3-8b")["trainable share (%)"]
    assert f"{pocket:.1f}%" in prompt and f"about {llama:.1f}%" in prompt
    assert pocket > 5 * llama, "the share shrinks as the matrices widen"
    assert quiz.prediction_for("00").band(pocket) == 2, "00's prediction: the pocket share is 3% to 10%"


def test_the_gigabytes_lora_saves_on_llama3_8b_are_the_estimators() -> None:
    """A figure quoted in an explanation is the estimator's, so it moves when the estimator does."""
    from lab_utils.models.memory import reference_table

    full, lora = (round(row["total_gb"]) for row in reference_table()[:2])
    why = next(q.why for q in QUESTIONS if "which memory terms shrink" in q.prompt)
    quoted = re.search(r"about (\d+) GB -> ([\d.]+)\s+GB", why)
    assert quoted, why
    assert (int(quoted[1]), round(float(quoted[2]))) == (full, lora), f"the estimator says {full} GB -> {lora} GB"


def test_bytes_per_parameter_16_to_18() -> None:
    """fp32 and ZeRO count 16 bytes; the HF Trainer's mixed precision 18 (autocast's bf16 copy of the weights, which
    the estimator counts too: its 8B row is within 0.15 of 18)."""
    from lab_utils.models.memory import reference_table

    table = environment.bytes_per_param_table()
    assert list(table["total"]) == [16, 18, 16]
    assert table.loc["mixed precision, HF Trainer (the lab's estimator)", "total"] == pytest.approx(
        reference_table()[0]["bytes_per_param"], abs=0.15
    )
    right = next(q.choices[q.answer] for q in QUESTIONS if "bytes per parameter" in q.prompt)
    assert "16" in right and "18" in right


def test_scoring_counts_right_picks() -> None:
    qs = quiz.questions_for("02", "after")
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
    first, parallel = quiz.questions_for("02", "before")[0], quiz.questions_for("02", "after")[0]
    assert before.startswith("Quiz before you start\n")
    assert first.prompt in before and parallel.prompt not in before
    assert "Answer:" not in before and first.why not in before
    assert quiz.prediction_for("02").prompt in before and "D) all of them (100%)" in before, "the bands, lettered"
    assert not (tmp_path / quiz.ANSWER_KEY_FILE).exists()
    (tmp_path / "results.json").write_text(json.dumps({"02_sft": {"stop_rate_finetuned": 0.5}}))
    quiz.show_quiz("02", "after", interactive=False, folder=tmp_path)
    quiz.show_quiz("00_setup", "after", interactive=False, folder=tmp_path)
    after = capsys.readouterr().out
    assert parallel.prompt in after and first.prompt not in after
    assert "Answer:" not in after and "answer_key.md" in after
    assert "This run recorded 50% (02_sft.stop_rate_finetuned): B) 25% to 74%." in after, "the run's figure and band"
    assert "has not recorded 00_setup.lora_share_percent.pocket yet" in after, "00 did not run here: said, no crash"
    key = (tmp_path / quiz.ANSWER_KEY_FILE).read_text()
    assert "## 00 · " in key and "## 02 · " in key and "## 01 · " not in key  # each notebook's answers kept
    for q in (quiz.questions_for("02", "before")[1], quiz.questions_for("02", "after")[1]):
        assert f"**Answer: {chr(65 + q.answer)})** {q.why}" in key
    assert (
        "**This run recorded 50% (02_sft.stop_rate_finetuned): B) 25% to 74%.**" in key
        and "Scored against** `02_sft.stop_rate_finetuned`" in key
    )


def _picks(box: object, n: int) -> list:
    """The radio groups of a quiz widget: its rows sit between the title and the Score button."""
    return [row.children[1] for row in box.children[1:-2]][: n + 1]  # type: ignore[attr-defined]


def test_interactive_quiz_scores_before_and_shows_the_gain_and_the_prediction_after(tmp_path: Path) -> None:
    before_qs, after_qs, p = (
        quiz.questions_for("03", "before"),
        quiz.questions_for("03", "after"),
        quiz.prediction_for("03"),
    )
    n = len(before_qs)
    before = quiz.quiz_widget("03", "before", tmp_path)
    radios = _picks(before, n)
    assert len(radios) == n + 1 and list(radios[-1].options) == list(p.bands), "one more group: the prediction"
    radios[0].value = before_qs[0].choices[before_qs[0].answer]  # one right, the rest unanswered
    radios[-1].value = p.bands[1]  # predicts band B
    before.children[-2].click()
    text = before.children[-1].value
    assert f"Score: 1 of {n}." in text and before_qs[0].why not in text, "before: the score only, no answers"
    (tmp_path / "results.json").write_text(json.dumps(results_for("03", 0.55)))  # band B: 40% to 69%
    after = quiz.quiz_widget("03", "after", tmp_path)
    assert len(_picks(after, n)) == n, "no prediction to make after the notebook"
    for q, radio in zip(after_qs, _picks(after, n)):
        radio.value = q.choices[q.answer]
    after.children[-2].click()
    text = after.children[-1].value
    assert f"Score: {n} of {n}</b> (before the notebook: 1 of {n}; +{n - 1})" in text
    assert text.count("Right.") == n and after_qs[0].why in text and before_qs[0].why not in text
    assert f"Your prediction: B) {p.bands[1]}: a hit. This run recorded 55%" in text
    saved = json.loads((tmp_path / quiz.SCORES_FILE).read_text())["03"]
    assert saved == {"before": 1, "after": n, "of": n, "predicted": 1, "figure": 0.55, "band": 1, "predict_hit": True}


def test_a_prediction_without_the_runs_figure_says_so(tmp_path: Path) -> None:
    after = quiz.quiz_widget("07", "after", tmp_path)  # no quiz before, no results.json
    after.children[-2].click()
    text = after.children[-1].value
    assert "Score: 0 of 5</b>" in text and "has not recorded 07_preference.scores.DPO.abstain_invented" in text
    assert "No prediction saved" in text


def test_the_docs_answer_key_is_generated_from_the_bank() -> None:
    key = (REPO / "docs" / "answer_key.md").read_text()
    assert key == quiz.answer_key_markdown() + "\n"
    assert key.count("### Before the notebook") == key.count("### After the notebook") == len(BANK)
    assert key.count("**Predict your run's number**") == len(BANK)


def _room(tmp_path: Path) -> Path:
    """A room of three learners' run folders: one full, one without the quiz after, one with its scores only."""
    room = tmp_path / "room"
    alice, bob, carol = room / "alice" / "20261203-055344", room / "bob" / "run", room / "carol"
    for folder in (alice, bob, carol):
        folder.mkdir(parents=True)
    quiz.save_score(alice, "02", "before", 2, 5, predicted=3)
    quiz.save_score(alice, "02", "after", 5, 5)
    quiz.save_score(alice, "04", "before", 1, 5, predicted=0)
    quiz.save_score(alice, "04", "after", 4, 5)
    (alice / "results.json").write_text(json.dumps({**results_for("04", 6.3), "02_sft": {"stop_rate_finetuned": 1.0}}))
    quiz.save_score(bob, "02", "before", 3, 5, predicted=None)
    quiz.save_score(carol, "02", "before", 1, 5, predicted=2)
    quiz.save_score(carol, "02", "after", 2, 5, band=2, predict_hit=True)  # scored in Jupyter; results.json gone
    (room / "latest").symlink_to(alice)  # runs/latest: the same folder twice counts once
    return room


def test_quiz_scores_gathers_a_rooms_run_folders_into_one_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _room(tmp_path)
    rows = room.room_rows([folder])
    assert list(rows) == ["alice/20261203-055344", "bob/run", "carol"]
    assert rows["alice/20261203-055344"]["02"] == {
        "before": 2,
        "after": 5,
        "gain": 3,
        "of": 5,
        "predicted": 3,
        "band": 3,
        "hit": True,
    }
    assert rows["alice/20261203-055344"]["04"]["hit"] is False, "predicted A, the run's 6.3x is C"
    assert rows["bob/run"]["02"]["gain"] is None and rows["carol"]["02"]["hit"] is True
    assert main(["quiz-scores", str(folder)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["learner", "02", "(of", "5)", "04", "(of", "5)", "predictions"]
    assert table[2].split() == ["alice/20261203-055344", "2→5", "+3", "✓", "1→4", "+3", "✗", "1", "of", "2"]
    assert table[3].split() == ["bob/run", "3→-", "-"] and table[4].split()[:3] == ["carol", "1→2", "+1"]
    assert table[-1].split() == ["room", "mean", "2→3.5", "+2", "1→4", "+3"]
    out = tmp_path / "room.csv"
    assert (
        main(["quiz-scores", str(folder / "alice" / "20261203-055344"), str(folder / "carol"), "--csv", str(out)]) == 0
    )
    lines = out.read_text().splitlines()
    assert lines[0].startswith("learner,02_before,02_after,02_gain,02_of,02_predicted,02_band,02_hit,04_before")
    assert lines[1] == "20261203-055344,2,5,3,5,D,D,True,1,4,3,5,A,C,False,1,2"
    assert main(["quiz-scores", str(tmp_path / "nobody")]) == 1, "no scores: said, and a failing exit"


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
