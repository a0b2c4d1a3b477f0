"""A room's quiz scores in one table: `python -m lab_utils quiz-scores` gathers what each learner's run folder saved
(`quiz.SCORES_FILE`): scores before and after each notebook, the gain, and how the predictions came out."""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any

from lab_utils.course.quiz import SCORES_FILE, letter, load_scores, run_figure
from lab_utils.course.quizbank import BANK


def score_folders(paths: list[Path]) -> dict[str, Path]:
    """The run folders holding quiz scores, by label: each path that holds quiz_scores.json, and every folder under a
    path that does (labelled by its place under that path); a folder reached twice (runs/latest) counts once."""
    found: dict[str, Path] = {}
    seen: set[Path] = set()
    for root in paths:
        root = Path(root)
        hits = [root / SCORES_FILE] if (root / SCORES_FILE).is_file() else sorted(root.rglob(SCORES_FILE))
        for hit in hits:
            folder = hit.parent
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            label = folder.name if folder == root else folder.relative_to(root).as_posix()
            found[label if label not in found else f"{root.name}/{label}"] = folder
    return found


def learner_row(folder: Path) -> dict[str, dict[str, Any]]:
    """A run folder's scores per notebook: before, after, gain, of, the predicted band, the run's band and the hit."""
    row = {}
    for key, entry in sorted(load_scores(folder).items()):
        if key not in BANK:
            continue
        before, after = entry.get("before"), entry.get("after")
        figure = run_figure(key, folder)
        band = figure[1] if figure else entry.get("band")
        predicted = entry.get("predicted")
        hit = None if predicted is None or band is None else predicted == band
        row[key] = {
            "before": before,
            "after": after,
            "gain": after - before if before is not None and after is not None else None,
            "of": entry.get("of"),
            "predicted": predicted,
            "band": band,
            "hit": hit,
        }
    return row


def room_rows(paths: list[Path]) -> dict[str, dict[str, dict[str, Any]]]:
    """Every learner folder under `paths` with its scores per notebook."""
    return {label: learner_row(folder) for label, folder in score_folders(paths).items()}


def _cell(scores: dict[str, Any] | None) -> str:
    """One notebook's scores as a table cell: before -> after (gain), and the prediction's hit."""
    if not scores:
        return ""
    gain = "" if scores["gain"] is None else f" {scores['gain']:+g}"
    hit = {True: " ✓", False: " ✗", None: ""}[scores["hit"]]
    return f"{_num(scores['before'])}→{_num(scores['after'])}{gain}{hit}"


def _num(value: float | None) -> str:
    """A score for the table ("-" when missing)."""
    return "-" if value is None else f"{value:g}"


def _predictions(row: dict[str, dict[str, Any]]) -> str:
    """A learner's predictions: hits of those scored."""
    scored = [s["hit"] for s in row.values() if s["hit"] is not None]
    return f"{sum(scored)} of {len(scored)}" if scored else "-"


def room_table(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The room's scores as a text table: a row per learner folder, a column per notebook (before→after gain, ✓/✗
    for the prediction), the predictions' hits, and the room's mean."""
    notebooks = sorted({key for row in rows.values() for key in row})
    header = ["learner", *[f"{key} (of {_of(rows, key)})" for key in notebooks], "predictions"]
    table = [[label, *[_cell(row.get(key)) for key in notebooks], _predictions(row)] for label, row in rows.items()]
    means = {key: {k: _mean(rows, key, k) for k in ("before", "after", "gain")} for key in notebooks}
    table.append(["room mean", *[_cell({**means[key], "hit": None}) for key in notebooks], ""])
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *table]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _of(rows: dict[str, dict[str, dict[str, Any]]], key: str) -> str:
    """How many questions a notebook's quiz had, as the saved scores say."""
    counts = {row[key]["of"] for row in rows.values() if key in row and row[key]["of"] is not None}
    return "/".join(str(n) for n in sorted(counts)) or "?"


def _mean(rows: dict[str, dict[str, dict[str, Any]]], key: str, field: str) -> float | None:
    """The room's mean of one notebook's field, over the learners who have it."""
    values = [row[key][field] for row in rows.values() if key in row and row[key][field] is not None]
    return round(statistics.fmean(values), 1) if values else None


def room_csv(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The room's scores as CSV: per notebook before, after, gain, of, predicted, band and hit columns."""
    notebooks = sorted({key for row in rows.values() for key in row})
    fields = ("before", "after", "gain", "of", "predicted", "band", "hit")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["learner", *[f"{key}_{f}" for key in notebooks for f in fields], "predictions_hit", "predictions"])
    for label, row in rows.items():
        cells = [_csv_value(f, row.get(key, {}).get(f)) for key in notebooks for f in fields]
        scored = [s["hit"] for s in row.values() if s["hit"] is not None]
        writer.writerow([label, *cells, sum(scored), len(scored)])
    return out.getvalue()


def _csv_value(field: str, value: Any) -> Any:
    """A CSV cell: bands as their letters, missing values empty."""
    if value is None:
        return ""
    return letter(value) if field in ("predicted", "band") else value
