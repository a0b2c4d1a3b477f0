"""Measuring the behaviour preference tuning targets (notebook 07): abstaining on capitals of countries that do not
exist, naming real ones, keeping the facts and the seed's answer; and the reading written from those figures."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lab_utils.data.alpaca import format_prompt
from lab_utils.data.pocket_data import SEED_PROMPT
from lab_utils.data.preference import is_abstention
from lab_utils.measure.evaluate import contains_answer


def behaviour_rates(prompts: Sequence[Any], texts: Sequence[str]) -> dict[str, float]:
    """The behaviour's figures on these prompts: abstention on invented and on real countries, and how often a real
    country's capital is named."""

    def rate(values: Iterable[bool]) -> float:
        items = list(values)
        return round(sum(items) / len(items), 4) if items else float("nan")

    inv = [(p, t) for p, t in zip(prompts, texts, strict=True) if p.kind == "invented"]
    real = [(p, t) for p, t in zip(prompts, texts, strict=True) if p.kind == "real"]
    return {
        "abstain_invented": rate(is_abstention(t) for _, t in inv),
        # ... naming the country asked (or none): a small model may learn the sentence with a training country in it
        "abstain_invented_named": rate(is_abstention(t, p.country) for p, t in inv),
        "abstain_real": rate(is_abstention(t) for _, t in real),
        "capital_real": rate(contains_answer(t, p.answer) for p, t in real),
    }


def heldout_questions(behaviour: list[Any], facts: list[dict[str, Any]]) -> list[str]:
    """The prompts every model answers in 07, in order: the behaviour's held-out questions, the held-out facts, and
    the seed's question last (`scores` reads them back in the same order)."""
    return (
        [p.prompt for p in behaviour]
        + [format_prompt(r["instruction"], r.get("input") or "") for r in facts]
        + [format_prompt(SEED_PROMPT)]
    )


def scores(behaviour: list[Any], facts: list[dict[str, Any]], answers: list[Any]) -> dict[str, Any]:
    """One model's figures from its answers to `heldout_questions`: the behaviour's rates, contains-answer on the
    held-out facts by kind, and the seed question's answer (Paris? stopped?)."""
    n = len(behaviour)
    if len(answers) != n + len(facts) + 1:
        raise ValueError(f"{len(answers)} answers for {n + len(facts) + 1} questions: use heldout_questions' order")
    out: dict[str, Any] = behaviour_rates(behaviour, [a.text for a in answers[:n]])
    kinds: dict[str, list[bool]] = {}
    for rec, ans in zip(facts, answers[n:-1], strict=True):
        kinds.setdefault(f"contains_{rec.get('kind', 'fact')}", []).append(contains_answer(ans.text, rec["answer"]))
    out.update({k: round(sum(v) / len(v), 4) for k, v in sorted(kinds.items())})
    seed = answers[-1]
    out["seed_paris"] = contains_answer(seed.text, "Paris")
    out["seed_stopped"] = seed.finish_reason == "stop"
    out["seed_tokens"] = seed.completion_tokens
    return out


def plot_scores(
    table: dict[str, dict[str, Any]],
    keys: tuple[str, ...] = (
        "abstain_invented",
        "abstain_real",
        "capital_real",
        "contains_seen_fact",
        "contains_unseen_fact",
    ),
) -> Any:
    """Grouped bars: each figure for each model (base, SFT, DPO...)."""
    import matplotlib.pyplot as plt

    shown = [k for k in keys if all(k in v for v in table.values())]
    fig, ax = plt.subplots(figsize=(10, 3.4))
    width = 0.8 / max(1, len(table))
    for i, (name, values) in enumerate(table.items()):
        ax.bar([j + i * width for j in range(len(shown))], [values[k] for k in shown], width, label=name)
    ax.set_xticks([j + width * (len(table) - 1) / 2 for j in range(len(shown))], [k.replace("_", " ") for k in shown])
    ax.set(ylim=(0, 1.05), ylabel="rate on held-out prompts", title="base -> SFT -> DPO")
    ax.legend()
    fig.tight_layout()
    return fig


def named(scores: dict[str, Any]) -> str:
    """Whether the abstentions name the country asked, or another one: the sentence learned, or the copying too."""
    said, right = scores["abstain_invented"], scores.get("abstain_invented_named", scores["abstain_invented"])
    if not said:
        return ""
    if right >= said:
        return "Each abstention names the country asked."
    share = "None names" if right == 0 else f"Only {right:.0%} name"
    return (
        f"{share} the country asked: the others name another invented country, one from the training pairs. The "
        "model learned the sentence, not to copy a name it never saw into it."
    )


def tax(before: float, after: float) -> str:
    """What preference tuning cost on a skill it was not aimed at, said from the two figures."""
    lost = round(100 * (before - after))
    if lost > 0:
        return f"That is the alignment tax, measured: {lost} points of real capitals lost while abstention was learned."
    return "The real capitals were kept: no alignment tax on them in this run."


def reading(
    table: dict[str, dict[str, Any]],
    margin: float | None,
    reward_accuracy: float | None,
    accuracy_before: float,
    accuracy_after: float,
) -> str:
    """What the run shows, written from its figures."""
    sft, tuned = table["SFT"], table["DPO"]
    lines = [
        f"- Asked the capital of a country that does not exist, the SFT model abstained on "
        f"{sft['abstain_invented']:.0%} of the held-out names; after DPO, on {tuned['abstain_invented']:.0%}. "
        + named(tuned),
        f"- On real countries it abstained on {tuned['abstain_real']:.0%} after DPO ({sft['abstain_real']:.0%} "
        f"before) and named the capital on {tuned['capital_real']:.0%} ({sft['capital_real']:.0%} before). "
        + tax(sft["capital_real"], tuned["capital_real"]),
    ]
    if "contains_seen_fact" in tuned:
        lines.append(
            f"- Held-out facts whose questions SFT saw: contains-answer {sft['contains_seen_fact']:.0%} -> "
            f"{tuned['contains_seen_fact']:.0%}; facts only in pretraining: {sft.get('contains_unseen_fact', 0):.0%} "
            f"-> {tuned.get('contains_unseen_fact', 0):.0%}."
        )
    if margin is not None and reward_accuracy is not None:
        lines.append(
            f"- The training batches' reward margin ended at {margin:.2f} with reward accuracy {reward_accuracy:.0%}; "
            f"on the held-out pairs the reward accuracy went from {accuracy_before:.0%} (at step 0 the policy is the "
            f"reference, so every reward is 0) to {accuracy_after:.0%}. A reward says how the model moved from the "
            f"reference, not what it writes: read the greedy answers too."
        )
    seed = tuned
    lines.append(
        f"- The seed's question after DPO: {'Paris' if seed['seed_paris'] else 'not Paris'}, "
        f"{'stopped' if seed['seed_stopped'] else 'cut at the limit'} after {seed['seed_tokens']} tokens."
    )
    return "\n".join(lines)
