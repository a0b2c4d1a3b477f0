"""Tests of the synthetic pocket Alpaca data: schema, determinism, splits and correctness."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lab_utils.data import pocket_data as pd  # noqa: E402

DATA_DIR = REPO_ROOT / "data" / "pocket_alpaca"
SCHEMA = ("instruction", "input", "output", "category")
ARITHMETIC = re.compile(r"^(\d+) (plus|minus|times) (\d+) is (\d+)\.$")
CONVERSION = re.compile(r"^(\d+) (\w+) is (\d+) (\w+)\.$")
CAPITAL = re.compile(r"^The capital of (?:the )?(.+) is (.+)\.$")


@pytest.fixture(scope="module")
def train() -> list[dict[str, str]]:
    """The training records."""
    return pd.make_sft_records()


@pytest.fixture(scope="module")
def heldout() -> list[dict[str, str | None]]:
    """The held-out records."""
    return pd.make_heldout()


@pytest.fixture(scope="module")
def documents() -> list[str]:
    """The default pretraining corpus."""
    return pd.make_pretraining_documents()


def _pairs(records: list) -> set[tuple[str, str]]:
    """The (instruction, input) pairs of some records."""
    return {(r["instruction"], r["input"]) for r in records}


def test_countries_and_split() -> None:
    """Enough unique countries, split ~65/35 without overlap, with France and Peru pinned."""
    names = [c for c, _ in pd.COUNTRIES]
    assert len(names) >= 120 and len(set(names)) == len(names)
    assert len({k for _, k in pd.COUNTRIES}) == len(names)
    assert sorted(pd.SFT_COUNTRIES + pd.PRETRAIN_ONLY_COUNTRIES) == sorted(pd.COUNTRIES)
    assert not set(pd.SFT_COUNTRIES) & set(pd.PRETRAIN_ONLY_COUNTRIES)
    assert 0.6 < len(pd.SFT_COUNTRIES) / len(pd.COUNTRIES) < 0.7
    assert ("France", "Paris") in pd.SFT_COUNTRIES
    assert ("Peru", "Lima") in pd.PRETRAIN_ONLY_COUNTRIES


def test_words() -> None:
    """About 150 unique lowercase words of 3 to 8 letters."""
    assert len(pd.WORDS) >= 140 and len(set(pd.WORDS)) == len(pd.WORDS)
    assert all(w.isalpha() and w.islower() and 3 <= len(w) <= 8 for w in pd.WORDS)


def test_train_schema(train: list[dict[str, str]]) -> None:
    """At least 2000 records, each with the Alpaca fields plus category, all strings."""
    assert len(train) >= 2000
    for r in train:
        assert tuple(r) == SCHEMA
        assert all(isinstance(r[k], str) for k in SCHEMA)
        assert r["instruction"] and r["output"] and r["category"]


def test_train_categories(train: list[dict[str, str]]) -> None:
    """Every category is present, with at least 40 general instructions."""
    counts = Counter(r["category"] for r in train)
    assert set(counts) == {"capital", "arithmetic", "conversion", "word", "sort", "general"}
    assert counts["general"] >= 40


def test_train_outputs_are_short_sentences(train: list[dict[str, str]]) -> None:
    """Outputs are one short sentence with final punctuation and no template markers."""
    for r in train:
        assert r["output"][-1] in ".!?", r
        assert len(r["output"].split()) <= 25, r
        for text in r.values():
            assert not any(bad in text for bad in pd.FORBIDDEN), r


def test_no_duplicate_pairs(train: list[dict[str, str]]) -> None:
    """No (instruction, input) pair occurs twice in training."""
    assert len(_pairs(train)) == len(train)


def test_deterministic() -> None:
    """The same seed gives the same data; another seed gives other data."""
    assert pd.make_sft_records(0) == pd.make_sft_records(0)
    assert pd.make_heldout(0) == pd.make_heldout(0)
    assert pd.make_pretraining_documents(50, 0) == pd.make_pretraining_documents(50, 0)
    assert pd.make_sft_records(0) != pd.make_sft_records(1)


def test_heldout_first_is_seed_prompt(heldout: list[dict[str, str | None]]) -> None:
    """The first held-out record is the seed prompt about France."""
    assert heldout[0] == {
        "instruction": pd.SEED_PROMPT,
        "input": "",
        "output": "The capital of France is Paris.",
        "category": "capital",
        "answer": "Paris",
        "kind": "seen_fact",
    }


def test_heldout_shape(heldout: list[dict[str, str | None]]) -> None:
    """80-120 records of the four kinds; answers appear in the reference outputs."""
    assert 80 <= len(heldout) <= 120
    kinds = Counter(r["kind"] for r in heldout)
    assert set(kinds) == {"seen_fact", "unseen_fact", "skill", "general"}
    assert kinds["seen_fact"] >= 20 and kinds["unseen_fact"] >= 20 and kinds["skill"] >= 20
    assert len(_pairs(heldout)) == len(heldout)
    for r in heldout:
        assert tuple(r) == (*SCHEMA, "answer", "kind")
        assert (r["answer"] is None) == (r["kind"] == "general")
        if r["answer"] is not None:
            assert r["answer"] in r["output"], r


def test_heldout_not_in_train(train: list[dict[str, str]], heldout: list[dict[str, str | None]]) -> None:
    """No held-out (instruction, input) pair occurs in training."""
    assert not _pairs(heldout) & _pairs(train)


def test_heldout_capital_kinds(heldout: list[dict[str, str | None]]) -> None:
    """Seen facts are about SFT countries in new phrasings; unseen facts about pretraining-only ones."""
    sft = dict(pd.SFT_COUNTRIES)
    pre = dict(pd.PRETRAIN_ONLY_COUNTRIES)
    train_instructions = {t[0] for t in pd.CAPITAL_TEMPLATES}
    for r in heldout:
        if r["category"] != "capital":
            continue
        country, capital = CAPITAL.match(r["output"]).groups()
        table = sft if r["kind"] == "seen_fact" else pre
        assert table[country] == capital == r["answer"]
        if r["kind"] == "seen_fact" and r["instruction"] != pd.SEED_PROMPT:
            generic = r["instruction"].replace(pd.country_phrase(country), "{c}")
            assert generic not in train_instructions


def test_heldout_skills_use_new_operands(train: list[dict[str, str]], heldout: list[dict[str, str | None]]) -> None:
    """Held-out skill outputs (the facts asked about) never occur in training."""
    train_outputs = {r["output"] for r in train}
    skills = [r for r in heldout if r["kind"] == "skill"]
    assert len(skills) >= 20
    assert not {r["output"] for r in skills} & train_outputs


def test_no_pretrain_only_capital_in_train(train: list[dict[str, str]]) -> None:
    """Training asks only about SFT countries' capitals, and never names a pretraining-only capital."""
    sft = dict(pd.SFT_COUNTRIES)
    for r in train:
        if r["category"] == "capital":
            country, capital = CAPITAL.match(r["output"]).groups()
            assert sft.get(country) == capital, r
    pre_capitals = [k for _, k in pd.PRETRAIN_ONLY_COUNTRIES]
    text = "\n".join(" ".join(r.values()) for r in train)
    for capital in pre_capitals:
        assert not re.search(rf"\b{re.escape(capital)}\b", text), capital


def test_arithmetic_is_correct(train: list[dict[str, str]], heldout: list[dict[str, str | None]]) -> None:
    """Every arithmetic output recomputes, and its operands are the ones asked about."""
    records = [r for r in train + heldout if r["category"] == "arithmetic"]
    assert len(records) >= 500
    for r in records:
        a, op, b, result = ARITHMETIC.match(r["output"]).groups()
        assert int(result) == {"plus": int(a) + int(b), "minus": int(a) - int(b), "times": int(a) * int(b)}[op]
        assert 0 <= int(a) <= 20 and 0 <= int(b) <= 20 and int(result) >= 0
        assert re.findall(r"\d+", r["instruction"] + " " + r["input"]) in ([a, b], [b, a])


def test_conversions_are_correct(train: list[dict[str, str]]) -> None:
    """Every conversion output recomputes with the right factor."""
    factors = {(src, dst): f for s, ss, _, dst, f in pd.UNITS for src in (s, ss)}
    records = [r for r in train if r["category"] == "conversion"]
    assert len(records) >= 200
    for r in records:
        value, src, result, dst = CONVERSION.match(r["output"]).groups()
        assert int(result) == int(value) * factors[(src, dst)], r
        assert value in r["instruction"] + r["input"]


def test_word_and_sort_spot_checks() -> None:
    """Word and sort facts say the right thing."""
    assert pd.word_fact("reverse", "cat") == "The word cat spelled backwards is tac."
    assert pd.word_fact("upper", "river") == "The word river in capital letters is RIVER."
    assert pd.word_fact("count", "apple") == "The word apple has 5 letters."
    assert pd.sort_fact((5, 2, 9)) == "The numbers 5, 2 and 9 in ascending order are 2, 5, 9."
    assert pd.conversion_fact(0, 3) == "3 kilometers is 3000 meters."
    assert pd.conversion_fact(1, 1) == "1 hour is 60 minutes."


def test_documents(documents: list[str]) -> None:
    """3000 documents, about a quarter FAQ pages, none with template markers or end-of-text text."""
    assert len(documents) == 3000
    assert all(d.strip() for d in documents)
    faq = sum(d.count("\nQ: ") >= 10 for d in documents) / len(documents)
    assert 0.15 < faq < 0.35
    for d in documents:
        assert not any(bad in d for bad in pd.FORBIDDEN)
        assert "<|" not in d and "</s>" not in d and "endoftext" not in d.lower()


def test_every_country_in_documents(documents: list[str]) -> None:
    """Every country's capital is stated many times, in the canonical phrasing among others."""
    text = "\n".join(documents)
    for country, capital in pd.COUNTRIES:
        phrase = pd.country_phrase(country)
        assert f"The capital of {phrase} is {capital}." in text, country
        assert text.count(f"{capital} is the capital of {phrase}") >= 1, country
        assert text.count(f" {phrase}") >= 20, country


def test_committed_files_match_generator(tmp_path: Path) -> None:
    """data/pocket_alpaca/*.jsonl are exactly what the generator writes now."""
    counts = pd.write_dataset(tmp_path)
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (DATA_DIR / name).read_bytes() == (tmp_path / name).read_bytes(), f"regenerate {name}"
    lines = (DATA_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == counts["train"] and json.loads(lines[0])
    assert (DATA_DIR / "train.jsonl").stat().st_size < 1_000_000


def test_main_writes_files(tmp_path: Path) -> None:
    """The command line writes both files to --out."""
    assert pd.main(["--out", str(tmp_path / "out"), "--seed", "3"]) == 0
    assert (tmp_path / "out" / "train.jsonl").exists() and (tmp_path / "out" / "heldout.jsonl").exists()
