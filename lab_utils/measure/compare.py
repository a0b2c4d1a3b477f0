"""Before/after measures over many prompts: stop rate, length, template adherence, answers, ROUGE-L, BLEU, repetition."""

from __future__ import annotations

import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from lab_utils.measure.evaluate import Answer, contains_answer, exact_match, side_by_side, stop_stats

TEMPLATE_MARKERS = (
    "### Instruction",
    "### Response",
    "### Input",
    "Below is an instruction",
    "<|im_start|>",
    "<|im_end|>",
)
# An answer that runs on into a new conversational turn ("Q: ...", "User: ...") has left the template too: that is how
# a base model loops (the reference tutorial's base model opens new "<|im_start|>user" turns).
NEW_TURN = re.compile(r"(^|\n)\s*(Q|Question|User|Human|Instruction)\s*:", re.IGNORECASE)


def ask_all(
    base_url: str,
    api_key: str,
    model: str,
    prompts: list[str],
    max_tokens: int,
    workers: int = 8,
    timeout: float = 120.0,
) -> list[Answer]:
    """Send every prompt to /v1/completions (greedy), `workers` at a time; answers in prompt order."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_key}"

    def one(prompt: str) -> Answer:
        t0 = time.perf_counter()
        r = session.post(
            f"{base_url}/v1/completions",
            timeout=timeout,
            json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        )
        r.raise_for_status()
        body = r.json()
        choice = body["choices"][0]
        return Answer(
            choice["text"],
            choice["finish_reason"],
            body["usage"]["completion_tokens"],
            (time.perf_counter() - t0) * 1000,
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, prompts))


def adheres_to_template(text: str) -> bool:
    """True when the answer does not run on into a new turn or leak template markers."""
    return not any(marker.lower() in text.lower() for marker in TEMPLATE_MARKERS) and not NEW_TURN.search(text)


def repetition(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0 = none, near 1 = a loop)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (Google's rouge-score package, with stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return statistics.fmean(scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references))


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu, 0-100)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def measures(records: list[dict[str, Any]], answers: list[Answer]) -> dict[str, float]:
    """Every measure of one model over the held-out records."""
    texts = [a.text.strip() for a in answers]
    verifiable = [(t, r) for t, r in zip(texts, records) if r.get("answer")]
    # Reference sentences are compared word for word only where they are in the style the model was trained on:
    # every pocket record; on a hub-data profile the dataset's own held-out records, not the "verifiable" questions
    # (whose references, like "7 plus 5 is 12.", would be unfair to Alpaca-style answers).
    styled = [(t, r) for t, r in zip(texts, records) if r.get("kind") != "verifiable"]
    exact = [(t, r) for t, r in styled if r.get("answer")]
    return {
        **stop_stats(answers),  # the same stop rate and length as notebook 02's transformers answers
        "template_adherence": sum(adheres_to_template(t) for t in texts) / len(texts),
        "exact_match": sum(exact_match(t, r["output"]) for t, r in exact) / len(exact) if exact else float("nan"),
        "contains_answer": sum(contains_answer(t, r["answer"]) for t, r in verifiable) / max(1, len(verifiable)),
        "rouge_l": rouge_l([t for t, _ in styled], [r["output"] for _, r in styled]) if styled else float("nan"),
        "bleu": bleu([t for t, _ in styled], [r["output"] for _, r in styled]) if styled else float("nan"),
        "repetition": statistics.fmean(repetition(t) for t in texts),
        "latency_p50_ms": statistics.median(a.latency_ms for a in answers),
    }


def by_kind(records: list[dict[str, Any]], answers: list[Answer]) -> dict[str, dict[str, float]]:
    """Contains-answer rate per kind of held-out prompt (seen facts, unseen facts, skills): meaningful on the pocket
    profile, whose kinds refer to its own SFT and pretraining data (a hub-data profile has one kind, "verifiable")."""
    out: dict[str, list[bool]] = {}
    for rec, ans in zip(records, answers):
        if rec.get("answer"):
            out.setdefault(str(rec.get("kind", "all")), []).append(contains_answer(ans.text, rec["answer"]))
    return {k: {"n": len(v), "contains_answer": sum(v) / len(v)} for k, v in sorted(out.items())}


def reading(base: dict[str, float], tuned: dict[str, float]) -> str:
    """A short written reading of the measures, derived from the numbers."""
    parts = [
        f"The base model ended {base['stop_rate']:.0%} of its answers on its own and wrote "
        f"{base['mean_completion_tokens']:.0f} tokens on average; after fine-tuning {tuned['stop_rate']:.0%} "
        f"end with a stop, at {tuned['mean_completion_tokens']:.0f} tokens "
        f"({tuned['mean_completion_tokens'] / max(base['mean_completion_tokens'], 1e-9):.0%} of the base's length).",
        f"Template adherence went from {base['template_adherence']:.0%} to {tuned['template_adherence']:.0%}, "
        f"repetition from {base['repetition']:.2f} to {tuned['repetition']:.2f}.",
        (
            f"Exact-match answers: {base['exact_match']:.0%} -> {tuned['exact_match']:.0%}; the answer"
            if tuned["exact_match"] == tuned["exact_match"]  # nan where no reference is in the trained style
            else "The answer"
        )
        + f" appears somewhere in {base['contains_answer']:.0%} -> {tuned['contains_answer']:.0%} of the verifiable "
        "prompts.",
        f"ROUGE-L {base['rouge_l']:.2f} -> {tuned['rouge_l']:.2f}, BLEU {base['bleu']:.1f} -> {tuned['bleu']:.1f}.",
    ]
    if base["contains_answer"] > tuned["contains_answer"]:
        parts.append("The base model mentions the answer more often only because it writes far more text.")
    return " ".join(parts)


def plot_measures(base: dict[str, float], tuned: dict[str, float]) -> Any:
    """Bar charts of the rate measures side by side."""
    import matplotlib.pyplot as plt

    keys = ["stop_rate", "template_adherence", "exact_match", "contains_answer", "rouge_l", "repetition"]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [base[k] for k in keys], width=0.4, label="base", color="#bbbbbb")
    ax.bar([x + 0.2 for x in xs], [tuned[k] for k in keys], width=0.4, label="fine-tuned", color="#4477aa")
    ax.set_xticks(list(xs), [k.replace("_", " ") for k in keys])
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("Before and after fine-tuning (held-out prompts)")
    fig.tight_layout()
    return fig


def plot_lengths(base: list[Answer], tuned: list[Answer], limit: int) -> Any:
    """Distribution of completion lengths, with the token limit marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    bins = range(0, limit + 8, 4)
    ax.hist([a.completion_tokens for a in base], bins=bins, alpha=0.7, label="base", color="#bbbbbb")
    ax.hist([a.completion_tokens for a in tuned], bins=bins, alpha=0.8, label="fine-tuned", color="#4477aa")
    ax.axvline(limit, color="#cc3311", linestyle="--", label=f"max_tokens = {limit}")
    ax.set_xlabel("completion tokens")
    ax.set_ylabel("prompts")
    ax.legend()
    fig.tight_layout()
    return fig


def answers_table(records: list[dict[str, Any]], base: list[Answer], tuned: list[Answer], n: int = 12) -> Any:
    """A dozen prompts with the reference and both answers side by side (the same table as notebook 02's)."""
    return side_by_side(records, {"base": base, "fine-tuned": tuned}, n=n, reference=True)


def answers_to_dicts(answers: list[Answer]) -> list[dict[str, Any]]:
    """Plain-dict form of answers (for saving beside the results)."""
    return [asdict(a) for a in answers]
