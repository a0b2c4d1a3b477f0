"""Loading and validating Alpaca-format data: every bad-input case names its file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab_utils import data, train

GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi."}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_loads_jsonl_and_defaults_input(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, {"instruction": "Add.", "output": "3"}])
    records, report = data.load_records(path)
    assert [r["input"] for r in records] == ["", ""]
    assert (report.n_read, report.n_kept, report.n_skipped) == (2, 2, 0)


def test_loads_json_array_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c", "output": ""}\n]\n')
    with pytest.raises(data.DataError) as err:
        data.load_records(path)
    assert (err.value.line, err.value.field) == (3, "output")
    assert "d.json, line 3: field 'output': empty" in str(err.value)


@pytest.mark.parametrize(
    "bad, field, problem",
    [
        ("{not json", None, "not valid JSON"),
        ({"input": "", "output": "x"}, "instruction", "missing"),
        ({"instruction": "x", "input": ""}, "output", "missing"),
        ({"instruction": "x", "output": 3}, "output", "must be a string, got int"),
        ({"instruction": ["x"], "output": "y"}, "instruction", "must be a string, got list"),
        ({"instruction": "x", "input": 5, "output": "y"}, "input", "must be a string"),
        ({"instruction": "x", "output": "   "}, "output", "empty"),
        (["not", "an", "object"], None, "expected an object"),
    ],
)
def test_bad_record_names_file_line_field(tmp_path: Path, bad: object, field: str | None, problem: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, bad])
    with pytest.raises(data.DataError) as err:
        data.load_records(path)
    assert err.value.line == 2
    assert err.value.field == field
    assert problem in str(err.value)
    assert str(path) in str(err.value)


def test_skip_bad_rows_reports_how_many(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl", [GOOD, {"instruction": "x"}, "{oops", GOOD, {"instruction": "", "output": "y"}]
    )
    with pytest.raises(data.DataError, match="line 2"):  # strict mode stops at the first bad record
        data.load_records(path)
    records, report = data.load_records(path, skip_bad=True)
    assert len(records) == 2 and report.n_read == 5 and report.n_skipped == 3
    assert "line 2" in report.skipped[0] and "line 5" in report.skipped[2]
    # A line that is not JSON is skipped and reported like any other bad record, with its line number.
    assert "line 3: not valid JSON" in report.skipped[1] and str(path) in report.skipped[1]
    assert [r["_line"] for r in records] == [1, 4]


def test_overlong_example_is_rejected_or_skipped(tmp_path: Path) -> None:
    long = {"instruction": "x", "output": "word " * 300}
    path = write_jsonl(tmp_path / "long.jsonl", [GOOD, long])
    records, report = data.load_records(path)
    count = lambda s: len(s.split())  # noqa: E731 - a whitespace "tokenizer" is enough to test the rule
    with pytest.raises(data.DataError, match=r"line 2: field 'output': example too long \(\d+ tokens > 100\)"):
        data.check_lengths(records, count, 100, source=str(path))
    kept = data.check_lengths(records, count, 100, source=str(path), skip_bad=True, report=report)
    assert len(kept) == 1 and report.n_skipped == 1
    with pytest.raises(data.DataError, match="example too long"):
        data.load_records(path, max_chars=500)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        data.load_records(tmp_path / "nope.jsonl")


def test_empty_file_has_no_usable_records(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(data.DataError, match="no usable records"):
        data.load_records(path)


def test_template_with_and_without_input() -> None:
    assert data.format_prompt("Do X.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nDo X.\n\n### Response:\n"
    )
    with_input = data.format_prompt("Sort.", "3, 1")
    assert "paired with an input" in with_input and "### Input:\n3, 1\n\n### Response:\n" in with_input
    assert data.format_prompt("Do X.", "   ") == data.format_prompt("Do X.")
    assert data.to_prompt_completion({"instruction": "Do X.", "input": "", "output": "Done."}) == {
        "prompt": data.format_prompt("Do X."),
        "completion": "Done.",
    }


def test_split_is_deterministic_and_disjoint() -> None:
    records = [{"instruction": str(i), "input": "", "output": "o"} for i in range(100)]
    a_train, a_eval = data.split_records(records, 0.1, seed=1)
    b_train, b_eval = data.split_records(records, 0.1, seed=1)
    assert a_eval == b_eval and len(a_eval) == 10 and len(a_train) == 90
    assert not {r["instruction"] for r in a_eval} & {r["instruction"] for r in a_train}
    with pytest.raises(ValueError):
        data.split_records(records, 1.5)


def test_pocket_dataset_loads_cleanly() -> None:
    records, report = data.load_records("data/pocket_alpaca/train.jsonl")
    assert report.n_skipped == 0 and len(records) >= 2000
    heldout = data.load_heldout("data/pocket_alpaca/heldout.jsonl")
    assert heldout[0]["instruction"] == "First, tell me the capital of France"


def test_the_collation_view_is_built_like_training_and_supervises_eos(pocket_model: str) -> None:
    """Notebook 01's view goes through train.sft_kwargs and TRL's collator: the response and EOS count, the prompt not."""
    from lab_utils.core.profiles import get_profile
    from lab_utils.models.loading import load_tokenizer

    tok = load_tokenizer(pocket_model)
    records = [{"instruction": "Name the capital of Peru.", "input": "", "output": "The capital of Peru is Lima."}] * 3
    batch, examples = train.collated_examples(tok, records, get_profile("pocket").train)
    assert len(examples) == 3 and all(data.last_supervised_is_eos(batch, tok.eos_token_id))
    view = data.supervision_table(tok, batch, row=0)
    supervised = "".join(view.loc[view["in_loss"], "token"])
    assert supervised.strip() == "The capital of Peru is Lima." + tok.eos_token
    assert "Instruction" not in supervised and not view["in_loss"].iloc[0]


def test_the_chat_template_renders_the_training_prompt_and_says_what_a_system_message_does() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained("models/pocket-base")
    render = lambda messages: tok.apply_chat_template(messages, chat_template=data.ALPACA_CHAT_TEMPLATE, tokenize=False)  # noqa: E731
    user = {"role": "user", "content": "Name a primary color."}
    assert render([user]) == tok.bos_token + data.format_prompt("Name a primary color.")
    # A system message takes the place of the Alpaca preamble's sentence (not silently dropped)...
    pirate = render([{"role": "system", "content": "Answer like a pirate."}, user])
    assert pirate == tok.bos_token + data.format_prompt("Name a primary color.").replace(
        data.ALPACA_SYSTEM_DEFAULT, "Answer like a pirate."
    )
    # ... and Alpaca is single-turn: the last user message is the instruction.
    earlier = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."}, user]
    assert render(earlier) == render([user])
