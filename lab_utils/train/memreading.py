"""Notebook 03's reading of the memory sweep, generated from the rows that ran: what each technique changed in the
measured peak beside what the estimator predicted, and which comparisons a run without some rows cannot make; the
plot, each row's library arguments, and where the estimator puts LoRA above full fine-tuning.

Any subset of the nine configurations reads true (class mode runs 1, 3, 5, 7 and 8): a row is compared with the
nearest row it builds on that ran, and the techniques in between are named together.
"""

from __future__ import annotations

from typing import Any

from lab_utils.core.hardware import Hardware
from lab_utils.models.loading import bnb_kwargs
from lab_utils.models.memory import ModelDims
from lab_utils.train.memsweep import BASE, CONFIGS, SweepConfig, estimate, sft_args
from lab_utils.train.sft import lora_kwargs

# Each row's parent (the row it adds its technique to, as memsweep.CONFIGS builds them) and what it adds. Row 6 is
# row 4 with the paged optimizer; its parent here is row 5, so that 5 -> 6 isolates the paging.
STEPS: dict[str, tuple[str, str]] = {
    "2": ("1", "bf16 mixed precision"),
    "3": ("2", "gradient checkpointing"),
    "4": ("3", "gradient accumulation"),
    "5": ("4", "8-bit AdamW"),
    "6": ("5", "paging the 8-bit AdamW state"),
    "7": ("1", "LoRA (adapters on the frozen fp32 base)"),
    "8": ("7", "QLoRA (the frozen base in 4-bit NF4, bf16 compute, paged 8-bit AdamW)"),
    "9": ("8", "gradient checkpointing"),
}
# Differences below this share of the larger peak are the noise of a short run's measurement (a CPU's resident
# memory moves by a few percent between identical runs).
NOISE = 0.05


def number(row: dict[str, Any]) -> str:
    """A sweep row's number ("7" for "7 LoRA")."""
    return str(row["name"]).split()[0]


def ran_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rows that ran (with a measured peak), by number."""
    return {number(r): r for r in rows if r.get("ran") and r.get("peak_memory_mb")}


def _direction(before: float, after: float) -> int:
    """-1 lower, 0 within the noise, +1 higher."""
    if abs(after - before) < NOISE * max(before, after):
        return 0
    return -1 if after < before else 1


def _change(before: float, after: float, small: str = "within the noise") -> str:
    """'812 -> 790 MB (-22 MB, within the noise)', or with the percentage where it stands above the noise."""
    delta = after - before
    size = small if _direction(before, after) == 0 else f"{100 * delta / before:+.0f}%"
    return f"{before:,.0f} -> {after:,.0f} MB ({delta:+,.0f} MB, {size})"


def _verdict(measured: int, estimated: int) -> str:
    """How the measured direction compares with the estimator's."""
    if measured == estimated:
        return "neither shows a difference" if measured == 0 else "the measurement agrees with the estimator"
    if estimated < 0 <= measured:
        return (
            "the estimator's saving does not show in the measured peak (it adds every term as if all were alive at "
            "once; the peak holds only what is alive together)"
        )
    if estimated == 0:
        return "the measurement shows a difference the estimator puts below the noise"
    return "the measurement and the estimator disagree on the direction"


def path_to(ran: dict[str, dict[str, Any]], child: str) -> tuple[str | None, list[str]]:
    """The nearest ancestor of row `child` that ran (None if none did) and the techniques added on the way."""
    added, node = [], child
    while node in STEPS:
        parent, technique = STEPS[node]
        added.insert(0, technique)
        if parent in ran:
            return parent, added
        node = parent
    return None, added


def comparison(rows: list[dict[str, Any]], before: str, after: str, added: list[str] | None = None) -> str:
    """One comparison of two rows, measured beside estimated; says so when either did not run."""
    ran = ran_rows(rows)
    missing = [n for n in (before, after) if n not in ran]
    if missing:
        return f"Rows {before} -> {after}: row {', '.join(missing)} did not run here ({why_not(rows, missing[0])})."
    a, b = ran[before], ran[after]
    what = f" (+ {' + '.join(added)}{', together' if len(added) > 1 else ''})" if added else ""
    pa, pb, ea, eb = a["peak_memory_mb"], b["peak_memory_mb"], a["estimated_memory_mb"], b["estimated_memory_mb"]
    speed = ""
    if a.get("tokens_per_s") and b.get("tokens_per_s") and not (a.get("note") or b.get("note")):
        speed = f" Tokens/s {a['tokens_per_s']:,.0f} -> {b['tokens_per_s']:,.0f}."
    return (
        f"{before} -> {after}{what}: measured peak {_change(pa, pb)}; estimated {_change(ea, eb, 'too small to see')}: "
        f"{_verdict(_direction(pa, pb), _direction(ea, eb))}.{speed}"
    )


def why_not(rows: list[dict[str, Any]], n: str) -> str:
    """Why row `n` has no measurement: its skip reason, or that this run did not choose it."""
    row = next((r for r in rows if number(r) == n), None)
    if row is None:
        return "not among this run's configurations"
    return str(row.get("skipped_reason") or "no measurement")


def reading(rows: list[dict[str, Any]]) -> str:
    """The sweep's reading, one line per comparison the rows that ran allow, then what they cannot show."""
    ran = ran_rows(rows)
    numbers = [c.name.split()[0] for c in CONFIGS]
    lines = [
        f"Configurations that ran here: {', '.join(n for n in numbers if n in ran) or 'none'} (of {len(CONFIGS)}). "
        f"Differences under {NOISE:.0%} of the peak are taken as noise."
    ]
    for child in numbers:
        parent, added = path_to(ran, child) if child in ran else (None, [])
        if parent:
            lines.append("- " + comparison(rows, parent, child, added))
    if ran:
        low = min(ran.values(), key=lambda r: r["peak_memory_mb"])
        top = ran.get("1") or max(ran.values(), key=lambda r: r["peak_memory_mb"])
        lines.append(
            f"Lowest peak: {low['name']}, {low['peak_memory_mb']:,.0f} MB, "
            f"{low['peak_memory_mb'] / top['peak_memory_mb']:.0%} of {top['name']}'s."
        )
        errors = {r["name"]: 100 * (r["estimated_memory_mb"] / r["peak_memory_mb"] - 1) for r in ran.values()}
        lo, hi = min(errors, key=errors.__getitem__), max(errors, key=errors.__getitem__)
        lines.append(
            f"The estimate is {errors[lo]:+.0f}% ({lo}) to {errors[hi]:+.0f}% ({hi}) off the measured peak: allocator "
            "caches and temporary buffers that grow with the model are not in it."
        )
    absent = [n for n in numbers if n not in ran]
    if absent:
        lines.append("Not measured here: " + "; ".join(f"row {n} ({why_not(rows, n)})" for n in absent) + ".")
        alone = [f"{t} alone ({p} -> {c})" for c, (p, t) in STEPS.items() if c in absent or p in absent]
        lines.append(
            "So these comparisons cannot be made in this run: " + "; ".join(alone) + ". A line above that spans "
            "several rows shows their techniques together, not each one's share."
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]]) -> Any:
    """Measured vs estimated peak memory, and tokens/s, per configuration."""
    import matplotlib.pyplot as plt

    ran = [r for r in rows if r["ran"]]
    names = [r["name"] for r in ran]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    ys = range(len(ran))
    a.barh([y + 0.2 for y in ys], [r["peak_memory_mb"] for r in ran], height=0.4, label="measured", color="#4477aa")
    a.barh(
        [y - 0.2 for y in ys], [r["estimated_memory_mb"] for r in ran], height=0.4, label="estimated", color="#bbbbbb"
    )
    a.set_yticks(list(ys), names)
    a.invert_yaxis()
    a.set_xlabel("peak memory above idle (MB)")
    a.legend()
    b.barh(list(ys), [r["tokens_per_s"] for r in ran], color="#228833")
    b.set_xlabel("tokens/s")
    fig.suptitle("What each technique buys: memory and speed on this machine")
    fig.tight_layout()
    return fig


def lora_crossover_seq_len(dims: ModelDims, max_seq_len: int = 65536) -> int | None:
    """The sequence length (in steps of 64, at the sweep's micro-batch) at which the estimator puts LoRA (row 7) at or
    above full fine-tuning (row 1), both fp32 without checkpointing: LoRA's savings (gradients and optimizer state of
    the frozen weights) are fixed while its extra activations (the adapters' dropped-out inputs) grow with the
    tokens. None if not below `max_seq_len`."""
    full, lora = BASE, CONFIGS[6]
    for seq_len in range(64, max_seq_len + 1, 64):
        if estimate(lora, dims, seq_len) >= estimate(full, dims, seq_len):
            return seq_len
    return None


def arguments_table(configs: list[SweepConfig], steps: int, seq_len: int, hardware: Hardware, machine: Hardware) -> Any:
    """Each row as the library arguments it trains with, generated from the definitions that run (`settings` through
    `train.sft_kwargs`, `lora_kwargs`, `models.bnb_kwargs`, for the run's decision `hardware` and `machine`):
    `SFTConfig`'s values that differ from row 1, the `LoraConfig` and the `BitsAndBytesConfig`."""
    import pandas as pd

    def kwargs(config: SweepConfig) -> dict[str, Any]:
        return sft_args(config, steps, seq_len, "out", hardware, machine)

    base, rows = kwargs(BASE), []
    for config in configs:
        sft, settings = kwargs(config), config.settings(steps, seq_len)
        lora = lora_kwargs(settings)
        bnb = {
            k: str(v).replace("torch.", "")
            for k, v in bnb_kwargs(config.method, hardware).items()
            if k != "load_in_4bit"
        }
        rows.append(
            {
                "configuration": config.name,
                "SFTConfig (vs row 1)": ", ".join(f"{k}={v!r}" for k, v in sft.items() if base.get(k) != v) or "-",
                "LoraConfig": f"r={lora['r']}, lora_alpha={lora['lora_alpha']}, all linear"
                if config.method != "full"
                else "-",
                "BitsAndBytesConfig": ("load_in_4bit=True, " + ", ".join(f"{k}={v}" for k, v in bnb.items()))
                if bnb
                else "-",
            }
        )
    return pd.DataFrame(rows).set_index("configuration")
