"""The before/after measures on hand-made answers."""

from __future__ import annotations

import pytest

from lab_utils.measure import compare
from lab_utils.measure.compare import Answer

RECORDS = [
    {
        "instruction": "Capital of France?",
        "output": "The capital of France is Paris.",
        "answer": "Paris",
        "kind": "seen_fact",
    },
    {"instruction": "What is 2 plus 2?", "output": "2 plus 2 is 4.", "answer": "4", "kind": "skill"},
]


def test_template_adherence_catches_new_turns_and_markers() -> None:
    assert compare.adheres_to_template("The capital of France is Paris.")
    assert not compare.adheres_to_template("Paris.\nQ: What is the capital of Peru? A: Lima.")
    assert not compare.adheres_to_template("Paris<|im_end|>\n<|im_start|>user")
    assert not compare.adheres_to_template("Paris.\n\n### Instruction:\nNow tell me")


def test_repetition_is_zero_for_fresh_text_and_high_for_loops() -> None:
    assert compare.repetition("the capital of France is Paris") == 0.0
    assert compare.repetition("a b c a b c a b c a b c") > 0.6


def test_measures_reward_short_correct_answers() -> None:
    good = [Answer("The capital of France is Paris.", "stop", 8, 50.0), Answer("2 plus 2 is 4.", "stop", 6, 40.0)]
    loop = [Answer("Q: x? A: y. " * 20, "length", 128, 300.0), Answer("14 14 14 " * 30, "length", 128, 310.0)]
    g, b = compare.measures(RECORDS, good), compare.measures(RECORDS, loop)
    assert g["stop_rate"] == 1.0 and b["stop_rate"] == 0.0
    assert g["exact_match"] == 1.0 and b["exact_match"] == 0.0
    assert b["contains_answer"] == 0.0, "'4' must not match inside '14'"
    assert g["rouge_l"] == pytest.approx(1.0) and g["bleu"] > 90 and b["rouge_l"] < 0.2
    assert g["repetition"] < b["repetition"] and g["template_adherence"] == 1.0 and b["template_adherence"] == 0.5
    assert g["latency_p50_ms"] == 45.0
    text = compare.reading(b, g)
    assert "0%" in text and "100%" in text
    assert compare.by_kind(RECORDS, good) == {
        "seen_fact": {"n": 1, "contains_answer": 1.0},
        "skill": {"n": 1, "contains_answer": 1.0},
    }


def test_one_stop_rate_and_one_table_for_both_backends() -> None:
    """transformers answers (02) and server answers (05) are measured and shown by the same code."""
    from lab_utils.measure import evaluate

    hf = [evaluate.Answer("Paris.", "stop", 3), evaluate.Answer("Q: A: Q:", "length", 8)]
    server = [compare.Answer("Paris.", "stop", 3, 10.0), compare.Answer("Q: A: Q:", "length", 8, 12.0)]
    assert evaluate.stop_stats(hf) == evaluate.stop_stats(server) == {"stop_rate": 0.5, "mean_completion_tokens": 5.5}
    records = [{"instruction": "Capital of France?", "output": "Paris.", "answer": "Paris"}] * 2
    m = compare.measures(records, server)
    assert m["stop_rate"] == 0.5 and m["mean_completion_tokens"] == 5.5
    table = compare.answers_table(records, server, server, n=2).data
    assert list(table.columns) == ["instruction", "reference", "base", "fine-tuned"]
    assert table.iloc[0]["base"].endswith("[stop, 3 tok]") and table.iloc[1]["base"].endswith("[limit, 8 tok]")
    assert evaluate.side_by_side(records, {"m": hf}, n=2).data.iloc[0]["m"] == table.iloc[0]["base"]
