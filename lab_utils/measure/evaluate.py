"""Greedy generation with transformers and the measures of whether a model stops and answers."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Any

from lab_utils.data.alpaca import format_prompt
from lab_utils.data.pocket_data import SEED_PROMPT
from lab_utils.models.loading import EvalLoad, free, load_for_eval

REFERENCE_QUESTION = SEED_PROMPT  # the reference tutorial's question


@dataclass(frozen=True)
class Answer:
    """One completion, from transformers `generate` or from a server: its text, why it ended ("stop": the model ended
    it with EOS or a stop string; "length": the token limit cut it), its length in tokens, and (from a server) how long
    it took. The one answer type of 02, 04, 05 and 06."""

    text: str
    finish_reason: str
    completion_tokens: int
    latency_ms: float = 0.0
    prompt: str = ""

    @property
    def stopped(self) -> bool:
        """True when the model ended the answer itself."""
        return self.finish_reason == "stop"

    @property
    def n_tokens(self) -> int:
        """Completion length in tokens (the EOS included where the engine counts it)."""
        return self.completion_tokens


def prompts_for(records: list[dict[str, Any]]) -> list[str]:
    """Alpaca prompts for held-out records."""
    return [format_prompt(r["instruction"], r.get("input") or "") for r in records]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 128,
    batch_size: int = 16,
) -> list[Answer]:
    """Greedy completions, batched with left padding; `stopped` is True when EOS came before the limit."""
    import torch

    eos = tokenizer.eos_token_id
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    out: list[Answer] = []
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


def generation_agreement(a: list[Answer], b: list[Answer]) -> float:
    """Share of prompts on which two models generated identical greedy completions (e.g. merged vs base+adapter).
    Not `fp8.agreement`, which compares argmax tokens position by position under teacher forcing."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty lists of generations, got {len(a)} and {len(b)}")
    return sum(x.text == y.text and x.n_tokens == y.n_tokens for x, y in zip(a, b)) / len(a)


def answers(
    model_path: str, prompts: list[str], max_new_tokens: int, *, load: EvalLoad, adapter_dir: str | None = None
) -> list[Answer]:
    """Load one model (or base + adapter) as `load` says (the run's `eval_load`), answer every prompt greedily, and free
    it before returning: one model in memory at a time (two 8B models at once do not fit a 24 GB GPU)."""
    model, tokenizer = load_for_eval(model_path, load, adapter_dir)
    try:
        return generate(model, tokenizer, prompts, max_new_tokens)
    finally:
        del model
        free()


def reference_answer(model_path: str, max_new_tokens: int, *, load: EvalLoad) -> Answer:
    """The seed tutorial's question, answered greedily by one model: the lab's whole story in one prompt."""
    return answers(model_path, prompts_for([{"instruction": REFERENCE_QUESTION}]), max_new_tokens, load=load)[0]


def _answers_and_last_logits(
    model_path: str, prompts: list[str], max_new_tokens: int, load: EvalLoad, adapter_dir: str | None = None
) -> tuple[list[Answer], Any, str]:
    """One load of one model: its greedy answers, its next-token logits (fp32, on the CPU) at the end of each prompt,
    and the dtype it ran in; freed before returning."""
    import torch

    model, tokenizer = load_for_eval(model_path, load, adapter_dir)
    try:
        rows = []
        with torch.no_grad():
            for prompt in prompts:
                enc = tokenizer(prompt, return_tensors="pt").to(model.device)
                rows.append(model(**enc).logits[0, -1].float().cpu())
        gens = generate(model, tokenizer, prompts, max_new_tokens)
        return gens, torch.stack(rows), str(next(model.parameters()).dtype).replace("torch.", "")
    finally:
        del model
        free()


def merge_check(
    merged_dir: str,
    base_path: str,
    adapter_dir: str,
    prompts: list[str],
    max_new_tokens: int = 32,
    *,
    load: EvalLoad,
) -> dict[str, Any]:
    """Does the merged model behave as base + adapter? Greedy agreement and the largest next-token logit difference,
    one model in memory at a time. In fp32 the merge is exact up to rounding (differences ~1e-5, agreement 1.0).
    Merged in bf16, W + BA is rounded to bf16 once, while base + adapter adds the adapter's output in the forward
    pass: logits differ by a few hundredths to tenths, and a greedy token can flip where two candidates are nearly
    tied, so agreement a little under 1.0 is expected there. In 4-bit (`load.four_bit`, the QLoRA profile on 16 GB) the
    merged weights W + BA are quantized, unlike the base's W under the adapter: expect larger differences still."""
    merged, a, dtype = _answers_and_last_logits(merged_dir, prompts, max_new_tokens, load)
    adapted, b, _ = _answers_and_last_logits(base_path, prompts, max_new_tokens, load, adapter_dir)
    return {
        "greedy_agreement": generation_agreement(merged, adapted),
        "max_logit_difference": float((a - b).abs().max()),
        "dtype": "nf4" if load.four_bit else dtype,
        "n_prompts": len(prompts),
    }


def _to_generation(prompt: str, row: list[int], eos: int, tokenizer: Any) -> Answer:
    """Cut a generated row at its first EOS (padding follows it)."""
    if eos in row:
        ids = row[: row.index(eos)]
        return Answer(tokenizer.decode(ids, skip_special_tokens=True), "stop", len(ids) + 1, prompt=prompt)
    return Answer(tokenizer.decode(row, skip_special_tokens=True), "length", len(row), prompt=prompt)


def stop_stats(generations: list[Any]) -> dict[str, float]:
    """Share of completions that ended with EOS, and their mean length in tokens: for transformers `Answer`s and
    the server's alike."""
    if not generations:
        raise ValueError("no generations to summarize")
    return {
        "stop_rate": sum(g.stopped for g in generations) / len(generations),
        "mean_completion_tokens": statistics.fmean(g.n_tokens for g in generations),
    }


def answer_stats(records: list[dict[str, Any]], generations: list[Any]) -> dict[str, float]:
    """`stop_stats` and the share of answers equal to the record's reference output (`exact_match`), for the held-out
    records in order; with their `answer` fields, also the share containing it (`contains_answer`)."""
    if len(records) != len(generations):
        raise ValueError(f"{len(records)} records but {len(generations)} generations")
    out = stop_stats(generations)
    out["exact_match"] = sum(exact_match(g.text, r["output"]) for r, g in zip(records, generations)) / len(records)
    scored = [(r, g) for r, g in zip(records, generations) if r.get("answer")]
    if scored:
        out["contains_answer"] = sum(contains_answer(g.text, r["answer"]) for r, g in scored) / len(scored)
    return out


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
    [stop]/[limit] with its length: from transformers or from a server."""
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
