"""Every notebook's quiz (the items are in quizbank.yaml beside this file): the ideas it teaches, asked before the
notebook and again after it in a parallel form (the same idea with other numbers or another case), and one "predict
your run's number" item, asked before and scored after against the figure the run records in results.json.

Rules the tests hold the bank to: four to six ideas per notebook, each with a before and an after item whose prompts
differ; no prompt asked twice; no answer given away by its question; the right answer the longest choice in at most a
third of the items; right answers spread over the positions once shuffled; prediction bands that cover every value.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

Stage = Literal["before", "after"]
STAGES: tuple[Stage, ...] = ("before", "after")
# One step into results.json: a key, a list index, or {key: value} (the first list item that has that value).
PathStep = str | int | dict[str, Any]


@dataclass(frozen=True)
class Question:
    """A multiple-choice question with its answer and the reason."""

    prompt: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    why: str

    def __post_init__(self) -> None:
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(
                f"answer index {self.answer} out of range for {len(self.choices)} choices: {self.prompt!r}"
            )


@dataclass(frozen=True)
class Concept:
    """One idea a notebook teaches: the item asked before the notebook and its parallel asked after it."""

    name: str
    before: Question
    after: Question


def lookup(results: Any, path: tuple[PathStep, ...]) -> Any:
    """The value at `path` in a run's results (None where any step is missing)."""
    node = results
    for step in path:
        if isinstance(step, dict):
            items = node if isinstance(node, list) else []
            node = next((x for x in items if isinstance(x, dict) and all(x.get(k) == v for k, v in step.items())), None)
        elif isinstance(step, int):
            node = node[step] if isinstance(node, list) and -len(node) <= step < len(node) else None
        else:
            node = node.get(step) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def path_text(path: tuple[PathStep, ...]) -> str:
    """A path as one line of text, e.g. 04_vllm_serving.throughput[concurrency=32].tokens_per_s."""
    parts = []
    for step in path:
        if isinstance(step, dict):
            parts.append("[" + ",".join(f"{k}={v}" for k, v in step.items()) + "]")
        elif isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            parts.append(("." if parts else "") + step)
    return "".join(parts)


def _number(value: Any) -> float | None:
    """A finite number as float; None for anything else (missing, text, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Prediction:
    """ "Predict your run's number": bands of a figure the notebook records in results.json."""

    prompt: str
    figure: tuple[PathStep, ...]  # where the figure is in results.json
    per: tuple[PathStep, ...] | None  # with it, the figure is figure / per
    edges: tuple[float, ...]  # rising boundaries between the bands
    bands: tuple[str, ...]  # one label per band: len(edges) + 1
    fmt: str  # str.format pattern for the figure
    why: str

    def __post_init__(self) -> None:
        if not self.figure:
            raise ValueError(f"a prediction needs a figure path: {self.prompt!r}")
        if len(self.bands) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} bands, not {len(self.bands)}")
        if list(self.edges) != sorted(set(self.edges)):
            raise ValueError(f"band edges must rise: {self.edges}")

    def value(self, results: dict[str, Any]) -> float | None:
        """The figure in a run's results (a ratio with `per`); None when the run has not recorded it."""
        top = _number(lookup(results, self.figure))
        if top is None or self.per is None:
            return top
        bottom = _number(lookup(results, self.per))
        return top / bottom if bottom else None

    def band(self, value: float) -> int:
        """The index of the band that holds `value` (band i: from edges[i-1] up to, not including, edges[i])."""
        return bisect.bisect_right(self.edges, value)

    def where(self) -> str:
        """Where the figure comes from, as text."""
        return path_text(self.figure) + (f" / {path_text(self.per)}" if self.per else "")

    def show(self, value: float) -> str:
        """The figure as the bank formats it."""
        return self.fmt.format(value)


@dataclass(frozen=True)
class Quiz:
    """A notebook's quiz: its ideas (each asked before and after) and its prediction."""

    title: str
    concepts: tuple[Concept, ...]
    predict: Prediction

    def questions(self, stage: Stage) -> tuple[Question, ...]:
        """The items asked at a stage, in the bank's order."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
        return tuple(getattr(c, stage) for c in self.concepts)


def shuffled(notebook: str, stage: Stage, raw: dict[str, Any]) -> Question:
    """A bank item (right, wrong) as a Question whose choices are shuffled with a seed of notebook, stage and prompt."""
    prompt, right, wrong = raw["prompt"], raw["right"], list(raw["wrong"])
    if not isinstance(right, str) or not all(isinstance(w, str) for w in wrong):
        raise ValueError(f"answers must be text (quote numbers in the YAML): {prompt!r}")
    choices = [right, *wrong]
    random.Random(f"{notebook}|{stage}|{prompt}").shuffle(choices)  # a str seed hashes the same on every machine
    return Question(prompt, tuple(choices), choices.index(right), raw["why"])


def _path(raw: list[Any]) -> tuple[PathStep, ...]:
    """A figure path from the YAML (a list of keys, indexes and {key: value} steps)."""
    if not isinstance(raw, list):
        raise ValueError(f"a figure path is a list of steps, not {raw!r}")
    return tuple(step if isinstance(step, int | dict) else str(step) for step in raw)


def _prediction(raw: dict[str, Any]) -> Prediction:
    """The notebook's prediction item from the YAML."""
    return Prediction(
        prompt=raw["prompt"],
        figure=_path(raw["figure"]),
        per=_path(raw["per"]) if raw.get("per") else None,
        edges=tuple(float(e) for e in raw["edges"]),
        bands=tuple(str(b) for b in raw["bands"]),
        fmt=raw.get("format", "{:g}"),
        why=raw["why"],
    )


BANK_FILE = Path(__file__).with_name("quizbank.yaml")  # the items: content, edited as data


def load_bank(path: Path = BANK_FILE) -> tuple[dict[str, str], dict[str, Quiz]]:
    """(notebook titles, quiz per notebook) from the bank file; a malformed entry names its notebook."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    titles = {nb: entry["title"] for nb, entry in raw.items()}
    bank = {}
    for nb, entry in raw.items():
        try:
            concepts = tuple(
                Concept(c["concept"], shuffled(nb, "before", c["before"]), shuffled(nb, "after", c["after"]))
                for c in entry["concepts"]
            )
            bank[nb] = Quiz(entry["title"], concepts, _prediction(entry["predict"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: notebook {nb}: {e}") from e
    return titles, bank


NOTEBOOK_TITLES, BANK = load_bank()
