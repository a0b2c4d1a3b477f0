"""Alpaca-format instruction data: loading, validation, the prompt template and splits."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab_utils.core.paths import repo_path

REQUIRED_FIELDS = ("instruction", "output")
STRING_FIELDS = ("instruction", "input", "output")

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)

# The Alpaca prompt as a chat template, for serving: chat messages render to the exact prompt the model was trained on,
# BOS first. Alpaca is single-turn: the last user message is the instruction (earlier turns and assistant messages are
# left out). Its first sentence plays the part of a system prompt, so a system message replaces that sentence; the
# model was trained with the default sentence only, so another one is new to it.
ALPACA_SYSTEM_DEFAULT, _ALPACA_REST = PROMPT_NO_INPUT.split("\n\n", 1)
ALPACA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(instruction='', system=" + json.dumps(ALPACA_SYSTEM_DEFAULT) + ") %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% set ns.instruction = message['content'] %}{% elif message['role'] == 'system' %}"
    "{% set ns.system = message['content'] %}{% endif %}{% endfor %}"
    "{{ ns.system }}{{ " + json.dumps("\n\n" + _ALPACA_REST.split("{instruction}")[0]) + " }}{{ ns.instruction }}"
    "{{ " + json.dumps(_ALPACA_REST.split("{instruction}")[1]) + " }}"
)


class DataError(ValueError):
    """A record of an instruction dataset is unusable; the message names file, line and field."""

    def __init__(self, source: str, line: int | None, field_name: str | None, problem: str) -> None:
        self.source, self.line, self.field, self.problem = source, line, field_name, problem
        where = source + (f", line {line}" if line is not None else "")
        what = f"field {field_name!r}: " if field_name else ""
        super().__init__(f"{where}: {what}{problem}")


@dataclass
class LoadReport:
    """What loading kept and what it skipped (with the reasons)."""

    source: str
    n_read: int = 0
    n_kept: int = 0
    skipped: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # why rows were skipped -> how many

    @property
    def n_skipped(self) -> int:
        """Number of records skipped as bad."""
        return len(self.skipped)

    def skip(self, error: DataError) -> None:
        """Count one skipped record and its reason."""
        self.skipped.append(str(error))
        reason = (f"{error.field}: " if error.field else "") + re.sub(r"\(.*\)", "(...)", error.problem)
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def summary(self) -> str:
        """One line a learner reads: how many were read, kept and skipped, and why."""
        why = "; ".join(f"{n} {reason}" for reason, n in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        return f"{self.source}: read {self.n_read}, kept {self.n_kept}, skipped {self.n_skipped}" + (
            f" ({why})" if why else ""
        )


def format_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt, with or without the `input` block, ending where the response begins."""
    if input_text and input_text.strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def to_prompt_completion(record: dict[str, Any]) -> dict[str, str]:
    """An Alpaca record as the prompt/completion pair TRL trains on (EOS is added by TRL)."""
    return {"prompt": format_prompt(record["instruction"], record.get("input") or ""), "completion": record["output"]}


def _iter_jsonl(path: Path) -> Iterable[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line; a line that is not JSON yields its DataError instead,
    so the caller can stop there or skip it like any other bad record."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, DataError(str(path), lineno, None, f"not valid JSON ({e.msg})")


def _iter_json_array(path: Path) -> Iterable[tuple[int, Any]]:
    """(line where the record starts, parsed object) for each element of a top-level JSON array."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if not text[i : i + 1] == "[":
        raise DataError(str(path), text.count("\n", 0, i) + 1, None, "expected a JSON array of records (or use .jsonl)")
    i += 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text):
            raise DataError(str(path), text.count("\n") + 1, None, "not valid JSON (unterminated array)")
        if text[i] == "]":
            return
        line = text.count("\n", 0, i) + 1
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(str(path), line, None, f"not valid JSON ({e.msg})") from e
        yield line, obj


def check_record(record: Any, source: str, line: int | None, max_chars: int | None = None) -> dict[str, str]:
    """Validate one record and return it normalized (`input` defaults to ""); raise DataError if bad."""
    if not isinstance(record, dict):
        raise DataError(
            source, line, None, f"expected an object with instruction/input/output, got {type(record).__name__}"
        )
    for name in REQUIRED_FIELDS:
        if name not in record:
            raise DataError(source, line, name, "missing")
    for name in STRING_FIELDS:
        if name in record and record[name] is not None and not isinstance(record[name], str):
            raise DataError(source, line, name, f"must be a string, got {type(record[name]).__name__}")
    for name in REQUIRED_FIELDS:
        if not record[name] or not record[name].strip():
            raise DataError(source, line, name, "empty")
    out = {k: v for k, v in record.items()}
    out["input"] = record.get("input") or ""
    if max_chars is not None:
        length = len(format_prompt(out["instruction"], out["input"])) + len(out["output"])
        if length > max_chars:
            raise DataError(source, line, "output", f"example too long ({length} characters > {max_chars})")
    return out


def check_lengths(
    records: list[dict[str, Any]],
    count_tokens: Callable[[str], int],
    max_tokens: int,
    source: str = "dataset",
    skip_bad: bool = False,
    report: LoadReport | None = None,
) -> list[dict[str, Any]]:
    """Reject (or skip) examples whose prompt+response exceeds `max_tokens` tokens."""
    kept = []
    for i, rec in enumerate(records):
        n = count_tokens(format_prompt(rec["instruction"], rec.get("input", "")) + rec["output"])
        if n > max_tokens:
            err = DataError(source, rec.get("_line", i + 1), "output", f"example too long ({n} tokens > {max_tokens})")
            if not skip_bad:
                raise err
            if report is not None:
                report.skip(err)
                report.n_kept -= 1
            continue
        kept.append(rec)
    return kept


def load_records(
    source: str | Path,
    skip_bad: bool = False,
    max_chars: int | None = None,
    split: str = "train",
) -> tuple[list[dict[str, Any]], LoadReport]:
    """Load Alpaca records from a local .json/.jsonl file, a hub dataset id, or a folder in the hub's layout (a
    rehearsal's stand-in: `standin.hub_source`); validate every record."""
    path = repo_path(source)
    if path.is_file():
        rows = _iter_json_array(path) if path.suffix == ".json" else _iter_jsonl(path)
        name = str(source)
    elif path.is_dir():  # a dataset folder in the hub's layout (a downloaded copy, or a rehearsal's stand-in)
        rows = _iter_hub(str(path), split)
        name = f"dataset folder:{source}"
    elif is_hub_id(source):
        rows = _iter_hub(str(source), split)
        name = f"hub:{source}"
    else:
        raise FileNotFoundError(f"{source}: no such file (and not a hub dataset id like 'tatsu-lab/alpaca')")
    report = LoadReport(source=name)
    records = []
    for line, obj in rows:
        report.n_read += 1
        try:
            if isinstance(obj, DataError):  # a JSONL line that did not parse
                raise obj
            rec = check_record(obj, name, line, max_chars)
        except DataError as e:
            if not skip_bad:
                raise
            report.skip(e)
            continue
        rec["_line"] = line
        records.append(rec)
    report.n_kept = len(records)
    if not records:
        raise DataError(name, None, None, "no usable records")
    return records, report


def is_hub_id(source: str | Path) -> bool:
    """True for a hub dataset id like 'tatsu-lab/alpaca' (not an existing local file or folder)."""
    text = str(source)
    return "/" in text and not text.endswith((".json", ".jsonl")) and not repo_path(text).exists()


def is_curated(source: str | Path) -> bool:
    """True for a local .json/.jsonl file: the learner's own (or the lab's) data, checked strictly. Hub datasets (and
    folders in the hub's layout) are not: real Alpaca has empty outputs and over-long rows, skipped and reported."""
    return repo_path(source).is_file()


def skips_bad_rows(source: str | Path, skip_bad: bool | str | None = None) -> bool:
    """Whether loading `source` skips (and reports) bad rows: as asked (True/"yes", False/"no"), or by default
    (None/"auto") for hub data (real Alpaca has empty outputs) but not for a local file (your own data should be fixed,
    not silently thinned)."""
    if isinstance(skip_bad, str):
        choices = {"auto": None, "yes": True, "no": False}
        if skip_bad not in choices:
            raise ValueError(f"skip_bad_rows must be auto, yes or no, got {skip_bad!r}")
        skip_bad = choices[skip_bad]
    return (not is_curated(source)) if skip_bad is None else skip_bad


def _iter_hub(dataset_id: str, split: str) -> Iterable[tuple[int, Any]]:
    """Records of a hub dataset (or a folder in its layout), numbered from 1 (the 'line' in errors is the row
    number)."""
    from datasets import load_dataset

    ds = load_dataset(dataset_id, split=split)
    for i, row in enumerate(ds, start=1):
        yield i, dict(row)


def split_records(
    records: list[dict[str, Any]],
    eval_fraction: float = 0.05,
    seed: int = 42,
    min_eval: int = 1,
    max_eval: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Shuffle deterministically and split into train and eval (at most `max_eval` eval records; 0: no cap)."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = max(min_eval, round(len(records) * eval_fraction))
    n_eval = min(n_eval, max_eval) if max_eval else n_eval
    eval_idx = set(order[:n_eval])
    train = [records[i] for i in order if i not in eval_idx]
    evals = [records[i] for i in order[:n_eval]]
    return train, evals


def clean(record: dict[str, Any]) -> dict[str, Any]:
    """A record without the loader's bookkeeping keys."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def load_heldout(path: str | Path) -> list[dict[str, Any]]:
    """The held-out prompts with reference answers used for before/after comparisons."""
    records, _ = load_records(path)
    return [clean(r) for r in records]


def token_lengths(records: list[dict[str, Any]], tokenizer: Any) -> list[int]:
    """Tokens per example (prompt + response + EOS), as training sees them."""
    texts = [format_prompt(r["instruction"], r.get("input", "")) + r["output"] for r in records]
    return [len(ids) + 1 for ids in tokenizer(texts)["input_ids"]]


def length_stats(lengths: list[int]) -> dict[str, int]:
    """Median and longest example length in tokens (the median of an even count is the upper middle, as before)."""
    ordered = sorted(lengths)
    return {"median_tokens": ordered[len(ordered) // 2], "max_tokens": ordered[-1]}


def plot_token_lengths(lengths: list[int], max_length: int | None = None, title: str = "Token lengths") -> Any:
    """Histogram of example lengths, with the training max_length marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.hist(lengths, bins=40, color="#4477aa")
    if max_length:
        ax.axvline(max_length, color="#cc3311", linestyle="--", label=f"max_length = {max_length}")
        ax.legend()
    ax.set_xlabel("tokens per example (prompt + response + EOS)")
    ax.set_ylabel("examples")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def category_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many records of each `category` (records without one count as 'other')."""
    counts: dict[str, int] = {}
    for r in records:
        key = str(r.get("category") or "other")
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


# --- what the loss sees (notebook 01) ---------------------------------------------------------------------------------


def last_supervised_is_eos(batch: Any, eos_token_id: int) -> list[bool]:
    """For each row of a collated batch: is the last label that counts in the loss the EOS id?"""
    out = []
    for row in batch["labels"].tolist():
        supervised = [t for t in row if t != -100]
        out.append(bool(supervised) and supervised[-1] == eos_token_id)
    return out


def supervision_table(tokenizer: Any, batch: Any, row: int = 0) -> Any:
    """One collated example token by token: id, text, label, and whether it counts in the loss."""
    import pandas as pd

    ids = batch["input_ids"][row].tolist()
    labels = batch["labels"][row].tolist()
    rows = [
        {"position": i, "token_id": t, "token": tokenizer.decode([t]), "label": lab, "in_loss": lab != -100}
        for i, (t, lab) in enumerate(zip(ids, labels))
        if t != tokenizer.pad_token_id or lab != -100
    ]
    return pd.DataFrame(rows).set_index("position")


def lm_collated(tokenizer: Any, records: list[dict[str, Any]], pad_token: str | None = None) -> Any:
    """Records as prompt + response + EOS texts, collated by transformers' `DataCollatorForLanguageModeling` (which
    labels every pad id -100), with `pad_token` as the pad token (default: the tokenizer's own)."""
    import copy

    from transformers import DataCollatorForLanguageModeling

    tok = copy.deepcopy(tokenizer)
    tok.pad_token = pad_token or tokenizer.pad_token
    texts = [format_prompt(r["instruction"], r.get("input") or "") + r["output"] + tok.eos_token for r in records]
    return DataCollatorForLanguageModeling(tok, mlm=False)([tok(t) for t in texts])


def pad_as_eos_experiment(tokenizer: Any, records: list[dict[str, Any]]) -> dict[str, int]:
    """Exercise 2 of notebook 01, as code: collate examples (prompt + response + EOS) with `lm_collated`, once with the
    tokenizer's own pad token and once with pad set to EOS (a common shortcut when a base model has no pad token).
    That collator labels every pad id -100, so with pad == EOS it masks the EOS labels too. Returns how many EOS
    tokens are in the inputs and how many stay supervised each way."""
    out = {"examples": len(records)}
    eos = tokenizer.eos_token_id
    for key, pad in (("own_pad", tokenizer.pad_token), ("pad_is_eos", tokenizer.eos_token)):
        batch = lm_collated(tokenizer, records, pad)
        out[f"{key}_eos_in_inputs"] = int((batch["input_ids"] == eos).sum())
        out[f"{key}_eos_supervised"] = int((batch["labels"] == eos).sum())
    return out
