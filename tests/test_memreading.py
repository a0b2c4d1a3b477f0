"""Notebook 03's reading, generated from made-up sweep rows: the full set, class mode's subset, and skipped rows."""

from __future__ import annotations

from typing import Any

from lab_utils.train import memreading, memsweep

# Made-up peaks and estimates (MB) by row number, shaped like a pocket sweep on a CPU.
PEAKS = {"1": 640, "2": 665, "3": 630, "4": 660, "5": 495, "6": 505, "7": 380, "8": 225, "9": 172}
ESTIMATES = {"1": 539, "2": 511, "3": 491, "4": 485, "5": 305, "6": 305, "7": 223, "8": 73, "9": 43}


def rows(numbers: str, skipped: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Sweep rows for the configurations `numbers` ("1,3,5"), as memsweep.sweep returns them; `skipped`: reasons."""
    skipped = skipped or {}
    out = []
    for config in memsweep.select_configs(numbers):
        n = config.name.split()[0]
        ran = n not in skipped
        out.append(
            {
                "name": config.name,
                "ran": ran,
                "skipped_reason": skipped.get(n),
                "peak_memory_mb": PEAKS[n] if ran else None,
                "estimated_memory_mb": ESTIMATES[n],
                "tokens_per_s": 400.0 if ran else None,
                "note": None,
            }
        )
    return out


def test_every_configuration_has_a_parent_it_differs_from() -> None:
    """The reading's steps cover rows 2-9, each from a row whose configuration differs from its own."""
    by_number = {c.name.split()[0]: c for c in memsweep.CONFIGS}
    assert set(memreading.STEPS) == set(by_number) - {"1"}
    for child, (parent, _) in memreading.STEPS.items():
        assert by_number[child] != by_number[parent] and int(parent) < int(child)


def test_the_full_sweep_compares_each_technique_alone() -> None:
    text = memreading.reading(rows(""))
    assert text.startswith("Configurations that ran here: 1, 2, 3, 4, 5, 6, 7, 8, 9 (of 9).")
    for before, after in [("1", "2"), ("2", "3"), ("3", "4"), ("4", "5"), ("5", "6"), ("1", "7"), ("7", "8")]:
        assert f"- {before} -> {after} (+ " in text, (before, after)
    # The numbers are the rows': row 4 -> 5 drops 165 MB, above the noise; 1 -> 2 is within it.
    assert "- 4 -> 5 (+ 8-bit AdamW): measured peak 660 -> 495 MB (-165 MB, -25%)" in text
    assert "- 1 -> 2 (+ bf16 mixed precision): measured peak 640 -> 665 MB (+25 MB, within the noise)" in text
    assert "the estimator's saving does not show in the measured peak" in text  # rows 1 -> 2: estimated -5%
    assert "Lowest peak: 9 QLoRA + gradient checkpointing, 172 MB, 27% of 1 baseline: full fp32's." in text
    assert "cannot be made" not in text and "Not measured here" not in text


def test_class_mode_reads_only_the_rows_that_ran_and_says_what_it_cannot_compare() -> None:
    text = memreading.reading(rows("1,3,5,7,8"))
    assert text.startswith("Configurations that ran here: 1, 3, 5, 7, 8 (of 9).")
    # Rows 2 and 4 did not run: 3 is compared with 1 and 5 with 3, naming the techniques together.
    assert "- 1 -> 3 (+ bf16 mixed precision + gradient checkpointing, together)" in text
    assert "- 3 -> 5 (+ gradient accumulation + 8-bit AdamW, together)" in text
    assert "- 1 -> 7 (+ LoRA" in text and "- 7 -> 8 (+ QLoRA" in text
    for absent in ("2", "4", "6", "9"):
        assert f"row {absent} (not among this run's configurations)" in text
        assert f"-> {absent} (+" not in text
    assert "gradient checkpointing alone (2 -> 3)" in text and "bf16 mixed precision alone (1 -> 2)" in text
    assert "QLoRA (the frozen base in 4-bit NF4, bf16 compute, paged 8-bit AdamW) alone" not in text  # 7 -> 8 ran


def test_a_skipped_row_is_named_with_its_reason_and_left_out_of_the_comparisons() -> None:
    no_bnb = {n: "bitsandbytes is not installed" for n in ("5", "6", "8", "9")}
    sweep = rows("", no_bnb)
    text = memreading.reading(sweep)
    assert "row 8 (bitsandbytes is not installed)" in text and "-> 8 (+" not in text and "-> 9 (+" not in text
    assert (
        memreading.comparison(sweep, "7", "8") == "Rows 7 -> 8: row 8 did not run here (bitsandbytes is not installed)."
    )
    assert "Lowest peak: 7 LoRA" in text


def test_nothing_or_one_row_ran() -> None:
    assert memreading.reading(rows("1,7", {"1": "no memory", "7": "no memory"})).startswith(
        "Configurations that ran here: none (of 9)."
    )
    text = memreading.reading(rows("7"))
    assert " -> " not in text.split("Not measured")[0].split("Lowest")[0] and "Lowest peak: 7 LoRA" in text
