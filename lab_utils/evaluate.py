"""Greedy generation with transformers and the measures of whether a model stops and answers."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Any

from lab_utils.data import format_prompt
from lab_utils.pocket_data import SEED_PROMPT as REFERENCE_QUESTION


@dataclass(frozen=True)
class Generation:
    """One completion: its text, its length in tokens, and whether it ended with EOS."""

    prompt: str
    text: str
    n_tokens: int
    stopped: bool

    @property
    def finish_reason(self) -> str:
        """ "stop" or "length", as the OpenAI API says it (`compare.Answer.finish_reason`)."""
        return "stop" if self.stopped else "length"


def prompts_for(records: list[dict[str, Any]]) -> list[str]:
    """Alpaca prompts for held-out records."""
    return [format_prompt(r["instruction"], r.get("input") or "") for r in records]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 128,
    batch_size: int = 16,
) -> list[Generation]:
    """Greedy completions, batched with left padding; `stopped` is True when EOS came before the limit."""
    import torch

    eos = tokenizer.eos_token_id
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    out: list[Generation] = []
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with torch.no_grad():
                seqs = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=tokenizer.pad_token_id,
                )
            for prompt, row in zip(chunk, seqs[:, enc["input_ids"].shape[1] :].tolist()):
                out.append(_to_generation(prompt, row, eos, tokenizer))
    finally:
        tokenizer.padding_side = old_side
    return out


def ask(model: Any, tokenizer: Any, question: str = REFERENCE_QUESTION, max_new_tokens: int = 128) -> Generation:
    """One greedy answer to an instruction in the Alpaca template: the reference tutorial's question by default."""
    return generate(model, tokenizer, [format_prompt(question)], max_new_tokens)[0]


def generation_agreement(
    model_a: Any, model_b: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 32
) -> float:
    """Share of prompts on which two models generate identical greedy completions (e.g. merged vs base+adapter).
    Not `fp8.next_token_agreement`, which compares argmax tokens position by position under teacher forcing."""
    a = generate(model_a, tokenizer, prompts, max_new_tokens)
    b = generate(model_b, tokenizer, prompts, max_new_tokens)
    return sum(x.text == y.text and x.n_tokens == y.n_tokens for x, y in zip(a, b)) / len(prompts)


def _to_generation(prompt: str, row: list[int], eos: int, tokenizer: Any) -> Generation:
    """Cut a generated row at its first EOS (padding follows it)."""
    if eos in row:
        ids = row[: row.index(eos)]
        return Generation(prompt, tokenizer.decode(ids, skip_special_tokens=True), len(ids) + 1, True)
    return Generation(prompt, tokenizer.decode(row, skip_special_tokens=True), len(row), False)


def stop_stats(generations: list[Any]) -> dict[str, float]:
    """Share of completions that ended with EOS, and their mean length in tokens: for transformers `Generation`s and
    the server's `compare.Answer`s alike (both have `stopped` and `n_tokens`)."""
    if not generations:
        raise ValueError("no generations to summarize")
    return {
        "stop_rate": sum(g.stopped for g in generations) / len(generations),
        "mean_completion_tokens": statistics.fmean(g.n_tokens for g in generations),
    }


def normalize(text: str) -> str:
    """Lower-case, strip punctuation at the ends and collapse spaces (for exact match)."""
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .!?\"'")


def contains_answer(text: str, answer: str) -> bool:
    """True when `answer` appears in `text` as whole words (so "4" does not match "14")."""
    pattern = r"(?<![\w])" + re.escape(answer.lower()) + r"(?![\w])"
    return re.search(pattern, text.lower()) is not None


def exact_match(text: str, reference: str) -> bool:
    """True when the completion equals the reference sentence after normalization."""
    return normalize(text) == normalize(reference)


def side_by_side(
    records: list[dict[str, Any]], columns: dict[str, list[Any]], n: int = 12, width: int = 70, reference: bool = False
) -> Any:
    """A table of the first `n` prompts (and their reference answers) with each model's completion, wrapped and marked
    [stop]/[limit] with its length: transformers `Generation`s or the server's `compare.Answer`s."""
    import textwrap

    import pandas as pd

    rows = []
    for i, rec in enumerate(records[:n]):
        row = {
            "instruction": textwrap.fill(rec["instruction"] + (f" | {rec['input']}" if rec.get("input") else ""), 40)
        }
        if reference:
            row["reference"] = textwrap.fill(rec["output"], 36)
        for name, gens in columns.items():
            g = gens[i]
            text = g.text.strip() if len(g.text.strip()) <= 240 else g.text.strip()[:237] + "..."
            mark = f" [{'stop' if g.stopped else 'limit'}, {g.n_tokens} tok]"
            row[name] = textwrap.fill(text.replace("\n", " / "), width) + mark
        rows.append(row)
    return pd.DataFrame(rows).style.set_properties(**{"white-space": "pre-wrap", "text-align": "left"})
