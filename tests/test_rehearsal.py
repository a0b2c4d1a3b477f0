"""Rehearsal stand-ins: a tiny Llama in Llama 3's conventions and an Alpaca look-alike with Alpaca's defects."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lab_utils.data import standin
from lab_utils.data.alpaca import DataError, _iter_hub, check_lengths, check_record, format_prompt, load_records
from lab_utils.models import rehearsal


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One stand-in model and dataset, built for the whole module."""
    root = tmp_path_factory.mktemp("standins")
    return {
        "model": rehearsal.build_standin_model("llama3", root / "model"),
        "dataset": standin.build_standin_dataset(standin.ALPACA_ID, root / "dataset"),
    }


def _hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`, by relative path."""
    return {
        f.relative_to(folder).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def test_tokenizer_has_llama3_special_tokens_no_pad_and_no_template(built: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built["model"])
    assert 1000 <= len(tok) <= 2000
    assert tok.bos_token == "<|begin_of_text|>" and tok.eos_token == "<|end_of_text|>"
    assert tok.pad_token is None and tok.chat_template is None  # a base model, as Meta-Llama-3-8B
    # Every Llama 3 special token, after the learned vocabulary, in Llama 3's order, and special (skipped in decoding).
    ids = tok.convert_tokens_to_ids(list(rehearsal.SPECIAL_TOKENS))
    assert ids == list(range(len(tok) - len(rehearsal.SPECIAL_TOKENS), len(tok)))
    for name in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|reserved_special_token_9|>"):
        assert name in rehearsal.SPECIAL_TOKENS
        assert tok.decode(tok(f"a{name}b", add_special_tokens=False)["input_ids"], skip_special_tokens=True) == "ab"
    # Llama 3's split: digits in groups of at most three.
    assert tok.tokenize("12345", add_special_tokens=False) == ["123", "45"]


def test_the_labs_tokenizer_loader_picks_the_reserved_pad_and_bos_is_prepended(built: dict[str, Path]) -> None:
    from lab_utils.models.loading import load_tokenizer

    tok = load_tokenizer(str(built["model"]))
    assert tok.pad_token == rehearsal.RESERVED_0 and tok.pad_token_id != tok.eos_token_id
    ids = tok("hi")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    text = "What is the capital of Peru?\nThe capital of Peru is Lima."
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_model_has_llama3_conventions_and_generates(built: dict[str, Path]) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(built["model"])
    tok = AutoTokenizer.from_pretrained(built["model"])
    assert cfg.model_type == "llama" and cfg.architectures == ["LlamaForCausalLM"]
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (128, 2, 256)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 64)  # GQA, head_dim 64
    theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    assert theta == 500000.0 and cfg.max_position_embeddings == 2048 and cfg.tie_word_embeddings is False
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.vocab_size) == (tok.bos_token_id, tok.eos_token_id, len(tok))
    assert (built["model"] / "model.safetensors").exists() and not list(built["model"].glob("*.bin"))
    assert not list(built["model"].parent.glob("*.partial"))
    model = AutoModelForCausalLM.from_pretrained(built["model"], dtype=torch.float32).eval()
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert next(AutoModelForCausalLM.from_pretrained(built["model"]).parameters()).dtype == torch.bfloat16
    inputs = tok("What is 7 plus 5?", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5
    record = standin.record(built["model"])
    assert record["stands_in_for"] == "meta-llama/Meta-Llama-3-*" and record["seed"] == standin.SEED
    assert record["key"] == rehearsal.model_key("llama3") and record["files"] == {
        k: v for k, v in _hashes(built["model"]).items() if k != standin.RECORD
    }


def test_dataset_loads_with_the_hub_datasets_columns(built: dict[str, Path]) -> None:
    from datasets import Value, load_dataset

    ds = load_dataset(str(built["dataset"]), split="train")
    assert ds.column_names == ["instruction", "input", "output", "text"]
    assert all(ds.features[c] == Value("string") for c in ds.column_names)
    assert (built["dataset"] / "data" / "train-00000-of-00001.parquet").exists()
    rows = list(ds)
    assert rows == standin.standin_rows() and len(rows) == standin.DEFAULT_ROWS
    # `text` is the whole Alpaca prompt plus the response, as on the hub.
    assert all(r["text"] == format_prompt(r["instruction"], r["input"]) + r["output"] for r in rows)
    assert "### Input:\n" in next(r["text"] for r in rows if r["input"])


def test_planted_defects_are_there_as_counted(built: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built["model"])
    planted = standin.standin_defects()
    rows = standin.standin_rows()
    lengths = [len(tok(r["text"])["input_ids"]) for r in rows]
    assert sum(not r["output"] for r in rows) == planted["empty_output"] == 3
    assert sum(n > standin.OVER_LONG_TOKENS for n in lengths) == planted["over_long"] == 2
    assert max(n for n in lengths if n <= standin.OVER_LONG_TOKENS) < 200  # the rest are short
    assert sum(bool(r["input"]) for r in rows) == planted["with_input"] == 160  # 40%, as in Alpaca
    # Verifiable content, and right: sums and capitals.
    capitals = dict(standin.COUNTRIES)
    sums = [r for r in rows if r["instruction"].startswith("What is ") and " plus " in r["instruction"]]
    asked = [r for r in rows if r["instruction"].startswith("What is the capital of ")]
    assert len(sums) > 10 and len(asked) > 10
    for r in sums:
        a, b = (int(x) for x in r["instruction"].removeprefix("What is ").removesuffix("?").split(" plus "))
        assert r["output"] == f"{a} plus {b} is {a + b}."
    for r in asked:
        country = r["instruction"].removeprefix("What is the capital of ").removesuffix("?")
        assert r["output"] == f"The capital of {country} is {capitals[country]}."


def test_the_hub_loading_path_reads_the_folder_and_finds_the_defects(built: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    rows = list(_iter_hub(str(built["dataset"]), "train"))
    assert [line for line, _ in rows] == list(range(1, standin.DEFAULT_ROWS + 1))
    kept, errors = [], []
    for line, obj in rows:
        try:
            kept.append(check_record(obj, "stand-in", line))
        except DataError as e:
            errors.append(e)
    assert [e.field for e in errors] == ["output"] * standin.EMPTY_OUTPUT_ROWS
    tok = AutoTokenizer.from_pretrained(built["model"])
    short = check_lengths(kept, lambda t: len(tok(t)["input_ids"]), standin.OVER_LONG_TOKENS, skip_bad=True)
    assert len(kept) - len(short) == standin.OVER_LONG_ROWS
    # load_records routes an existing folder to the same hub loader.
    records, report = load_records(str(built["dataset"]), skip_bad=True)
    assert (report.n_read, report.n_skipped, len(records)) == (400, 3, 397)


def test_builds_are_deterministic(built: dict[str, Path], tmp_path: Path) -> None:
    again_model = rehearsal.build_standin_model("llama3", tmp_path / "model")
    again_data = standin.build_standin_dataset(standin.ALPACA_ID, tmp_path / "dataset")
    assert _hashes(again_model) == _hashes(built["model"])
    assert _hashes(again_data) == _hashes(built["dataset"])


def test_standin_paths_builds_once_then_reads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = rehearsal.standin_paths("llama3-8b", root=tmp_path)
    assert paths.model == tmp_path / f"llama3-{rehearsal.model_key('llama3')}"
    assert paths.dataset == tmp_path / f"alpaca-{standin.dataset_key()}"
    assert (paths.base_model, paths.dataset_id) == ("meta-llama/Meta-Llama-3-8B", "tatsu-lab/alpaca")
    stamp = (paths.model / standin.RECORD).stat().st_mtime_ns

    def refuse(*args: object) -> Path:
        raise AssertionError("rebuilt a cached stand-in")

    monkeypatch.setattr(rehearsal, "build_standin_model", refuse)
    monkeypatch.setattr(standin, "build_standin_dataset", refuse)
    for name in ("llama3-8b", "llama3-8b-qlora", "llama3-70b-qlora"):  # 8B and 70B share the one stand-in
        again = rehearsal.standin_paths(name, root=tmp_path)
        assert (again.model, again.dataset) == (paths.model, paths.dataset)
    assert (paths.model / standin.RECORD).stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        [paths.model.name, paths.dataset.name]
    )


def test_default_cache_is_under_lab_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    assert standin.default_root() == tmp_path / "rehearsal"


def test_what_has_no_stand_in_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="family 'mistral'.*supported: llama3"):
        rehearsal.build_standin_model("mistral", tmp_path / "m")
    with pytest.raises(ValueError, match="dataset 'yahma/alpaca-cleaned'.*supported: tatsu-lab/alpaca"):
        standin.build_standin_dataset("yahma/alpaca-cleaned", tmp_path / "d")
    with pytest.raises(
        ValueError, match="'pocket'.*rehearsable profiles: llama3-8b, llama3-8b-qlora, llama3-70b-qlora"
    ):
        rehearsal.standin_paths("pocket", root=tmp_path)
    assert not list(tmp_path.iterdir())
