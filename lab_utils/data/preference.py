"""Preference data for notebook 07: the behaviour DPO teaches, the prompts that test it, and the pairs it trains on.

The behaviour: asked the capital of a country that does not exist, answer "I do not know the capital of X." instead
of inventing one, and keep naming the capitals of real countries. A program checks it (`is_abstention`,
`contains_answer`), so a rate can be measured before and after.

The pairs are built from the lab's own data and the SFT model's own answers:
- an invented country: chosen = the abstention, rejected = what the SFT model said;
- a real country: chosen = the capital sentence, rejected = the abstention (so abstaining everywhere is not rewarded).
Held-out countries (invented and real) never appear in a training pair.

GPU profiles also load a real preference dataset from the hub (`trl-lib/ultrafeedback_binarized`): its
conversational chosen/rejected lists become Alpaca prompt + response pairs (`hub_pairs`), malformed rows skipped and
counted.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab_utils.core.paths import atomic_write_text
from lab_utils.data.alpaca import format_prompt
from lab_utils.data.pocket_data import (
    CAPITAL_TEMPLATES,
    COUNTRIES,
    HELDOUT_CAPITAL_TEMPLATES,
    SFT_COUNTRIES,
    capital_fact,
    country_phrase,
)
from lab_utils.data.standin import preference_source

# Syllables that make names which read like countries but are none (checked against COUNTRIES below).
_ONSETS = ("Bal", "Dor", "Fel", "Gar", "Kel", "Lur", "Mor", "Nav", "Pel", "Quen", "Ros", "Sel", "Tav", "Vor", "Zan")
_MIDDLES = ("a", "e", "i", "o", "u", "ar", "en", "il", "or", "un")
_ENDINGS = ("dia", "land", "stan", "via", "nia", "ria", "mark", "esh", "gor", "tia")
ABSTAIN_TEMPLATE = "I do not know the capital of {c}."
_ABSTAIN_RE = re.compile(r"\bi (do not|don't) know\b", re.IGNORECASE)


def invented_countries(n: int = 120, seed: int = 7) -> list[str]:
    """`n` distinct names made of random syllables, none of them a real country's name or a part of one."""
    rng = random.Random(seed)
    real = " ".join(name.lower() for name, _ in COUNTRIES)
    names: list[str] = []
    while len(names) < n:
        name = rng.choice(_ONSETS) + rng.choice(_MIDDLES) + rng.choice(_ENDINGS)
        if name not in names and name.lower() not in real:
            names.append(name)
    return names


def abstention(country: str) -> str:
    """The answer DPO should prefer for a country that does not exist."""
    return ABSTAIN_TEMPLATE.format(c=country)


def is_abstention(text: str, country: str = "") -> bool:
    """True when an answer says it does not know. Given the country asked about, an answer that says it does not know
    the capital of another country is not an abstention on this one ("I do not know the capital of Baloo." to a
    question on Lurimark)."""
    found = _ABSTAIN_RE.search(text)
    if not found or not country:
        return bool(found)
    named = re.match(r"\s+(?:what\s+)?(?:the\s+)?capital\s+of\s+([^.,;!?\n]+)", text[found.end() :], re.IGNORECASE)
    return named is None or named[1].strip().lower() == country.strip().lower()


@dataclass(frozen=True)
class BehaviourPrompt:
    """One question of the behaviour: the capital of an invented or a real country."""

    instruction: str
    kind: str  # "invented" or "real"
    country: str
    answer: str  # the capital ("" for an invented country)

    @property
    def prompt(self) -> str:
        """The Alpaca prompt the SFT model was trained on."""
        return format_prompt(self.instruction)

    def to_record(self) -> dict[str, Any]:
        """The held-out record form the lab's evaluation reads (instruction, answer, kind)."""
        return {
            "instruction": self.instruction,
            "input": "",
            "answer": self.answer or None,
            "kind": self.kind,
            "output": capital_fact(self.country, self.answer) if self.answer else abstention(self.country),
        }


@dataclass
class BehaviourSplit:
    """The behaviour's prompts: those pairs are built from, and the held-out ones that measure it."""

    train: list[BehaviourPrompt] = field(default_factory=list)
    heldout: list[BehaviourPrompt] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many prompts of each kind in each split."""
        out: dict[str, int] = {}
        for split, items in (("train", self.train), ("heldout", self.heldout)):
            for p in items:
                out[f"{split}_{p.kind}"] = out.get(f"{split}_{p.kind}", 0) + 1
        return out


# The phrasings of the pocket data's capital questions, those SFT trained on and those it never saw alike: what is held
# out here is the countries, not the wording.
QUESTION_TEMPLATES = tuple(t for t, inp in CAPITAL_TEMPLATES + HELDOUT_CAPITAL_TEMPLATES if not inp)


def behaviour_split(
    n_invented: int = 120,
    heldout_invented: int = 0,
    n_real: int = 0,
    real_train_fraction: float = 0.75,
    real_repeats: int = 2,
    seed: int = 7,
) -> BehaviourSplit:
    """Invented names (`heldout_invented` of them held out; 0: a quarter) and the SFT data's real countries (`n_real`
    of them, 0: all; a fraction for training, the rest held out), each asked with a phrasing picked by a seeded random
    generator; a real training country is asked `real_repeats` times (other phrasings), so that keeping the facts
    weighs as much as abstaining."""
    heldout_invented = heldout_invented or max(1, n_invented // 4)
    if not 0 < heldout_invented < n_invented:
        raise ValueError(f"heldout_invented={heldout_invented} must be between 0 and n_invented={n_invented}")
    rng = random.Random(seed)
    invented = invented_countries(n_invented, seed)
    real = [c for c in SFT_COUNTRIES if c[0] != "France"]  # France is the seed's question: never a pair
    rng.shuffle(real)
    real = real[:n_real] if n_real else real
    n_real_train = round(len(real) * real_train_fraction)

    def ask(country: str, capital: str, templates: Sequence[str]) -> BehaviourPrompt:
        text = rng.choice(templates).format(c=country_phrase(country))
        return BehaviourPrompt(text, "real" if capital else "invented", country, capital)

    split = BehaviourSplit()
    split.train = [ask(c, "", QUESTION_TEMPLATES) for c in invented[heldout_invented:]]
    split.train += [ask(c, k, QUESTION_TEMPLATES) for c, k in real[:n_real_train] for _ in range(real_repeats)]
    split.heldout = [ask(c, "", QUESTION_TEMPLATES) for c in invented[:heldout_invented]]
    split.heldout += [ask(c, k, QUESTION_TEMPLATES) for c, k in real[n_real_train:]]
    return split


def make_pairs(prompts: Sequence[BehaviourPrompt], sft_answers: Sequence[str]) -> tuple[list[dict[str, str]], int]:
    """Preference pairs (prompt, chosen, rejected, kind) from the prompts and the SFT model's answers to them, and how
    many were left out: an invented country the SFT model already abstained on has nothing to correct."""
    if len(prompts) != len(sft_answers):
        raise ValueError(f"{len(prompts)} prompts but {len(sft_answers)} SFT answers: they must pair up")
    pairs, skipped = [], 0
    for p, said in zip(prompts, sft_answers, strict=True):
        if p.kind == "invented":
            if is_abstention(said) or not said.strip():
                skipped += 1
                continue
            chosen, rejected = abstention(p.country), said.strip()
        else:
            chosen, rejected = capital_fact(p.country, p.answer), abstention(p.country)
        pairs.append(
            {"prompt": p.prompt, "chosen": chosen, "rejected": rejected, "kind": p.kind, "instruction": p.instruction}
        )
    return pairs, skipped


# ---------------------------------------------------------------------------------------------------
# A real preference dataset from the hub (GPU profiles)
# ---------------------------------------------------------------------------------------------------


def _text_of(turns: Any, role: str) -> str | None:
    """The content of the last turn with `role` in a conversational list, or None."""
    if isinstance(turns, str):
        return turns
    if not isinstance(turns, list):
        return None
    found = [t.get("content") for t in turns if isinstance(t, dict) and t.get("role") == role]
    return found[-1] if found and isinstance(found[-1], str) else None


def hub_pairs(rows: Iterable[dict[str, Any]], source: str, limit: int = 0) -> tuple[list[dict[str, str]], list[str]]:
    """Alpaca-prompt pairs from a preference dataset in the hub's schema (ultrafeedback_binarized: `chosen` and
    `rejected` as message lists whose user turn is the prompt; or plain `prompt`/`chosen`/`rejected` strings). Rows
    that lack a prompt or an answer, or whose two answers are equal, are skipped; each skip is named."""
    pairs: list[dict[str, str]] = []
    skips: list[str] = []
    for i, row in enumerate(rows):
        if limit and len(pairs) >= limit:
            break
        prompt = row.get("prompt") if isinstance(row.get("prompt"), str) else _text_of(row.get("chosen"), "user")
        chosen = _text_of(row.get("chosen"), "assistant")
        rejected = _text_of(row.get("rejected"), "assistant")
        if not prompt or not chosen or not rejected:
            skips.append(f"{source} row {i}: no prompt, chosen or rejected text")
        elif chosen.strip() == rejected.strip():
            skips.append(f"{source} row {i}: chosen and rejected are the same text")
        else:
            pairs.append(
                {
                    "prompt": format_prompt(prompt.strip()),
                    "chosen": chosen.strip(),
                    "rejected": rejected.strip(),
                    "kind": "hub",
                    "instruction": prompt.strip(),
                }
            )
    return pairs, skips


def load_hub_pairs(pref: Any, rehearsal: bool = False) -> tuple[list[dict[str, str]], list[str]]:
    """The profile's hub preference dataset (`pref.dataset`, its first `pref.dataset_rows` usable rows) as pairs, and
    the skipped rows named; nothing when the profile names none. A rehearsal loads the local stand-in instead."""
    if not pref.dataset:
        return [], []
    from datasets import load_dataset

    rows = load_dataset(preference_source(pref.dataset, rehearsal), split="train")
    return hub_pairs(rows, pref.dataset, limit=pref.dataset_rows)


def write_pairs(path: str | Path, pairs: Sequence[dict[str, str]]) -> Path:
    """The pairs as JSONL records of prompt, instruction, chosen and rejected (what 07 and recipes/dpo.py read), atomically."""
    import json

    keep = ("prompt", "instruction", "chosen", "rejected")
    return atomic_write_text(path, "".join(json.dumps({k: p[k] for k in keep}) + "\n" for p in pairs))
