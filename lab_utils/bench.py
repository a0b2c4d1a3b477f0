"""SFT throughput: the lab's batching against a naive baseline, measured in one run on the same model and data."""

from __future__ import annotations

import tempfile
import time
from typing import Any

from lab_utils.profiles import Profile
from lab_utils.train import batching_kwargs, build_trainer, resolve_batching

# mode -> SFTConfig changes, measured on the same model, data, batch size and steps.
MODES: dict[str, dict[str, Any]] = {
    # What a plain collator does: random batches, each padded to its longest example (dynamic padding).
    "naive: pad to batch's longest": batching_kwargs("padded"),
    # What many tutorials do: pad every example to the longest sequence of the data set (static shapes).
    "naive: pad to data's longest": {**batching_kwargs("padded"), "pad_to_multiple_of": "DATA_MAX"},
    # Padding-free: examples concatenated and told apart by position ids (FlashAttention's varlen path on a GPU).
    "padding-free": batching_kwargs("padding_free"),
    # Length-grouped: batches of similar lengths, so dynamic padding has little to pad.
    "length-grouped batches": batching_kwargs("group_by_length"),
}
BASELINE = "naive: pad to batch's longest"
LAB_MODE_NAMES = {"padding_free": "padding-free", "group_by_length": "length-grouped batches"}


def measure(profile: Profile, mode: str, steps: int, model_path: str | None = None) -> dict[str, Any]:
    """Train `steps` steps in one batching mode; report useful (non-padding) tokens/s and padded share."""
    changes = dict(MODES[mode])
    if changes.get("pad_to_multiple_of") == "DATA_MAX":
        changes["pad_to_multiple_of"] = longest_example(profile, model_path)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = build_trainer(
            profile.with_train(max_steps=steps),
            tmp,
            model_path=model_path,
            save_strategy="no",
            eval_strategy="no",
            logging_steps=steps,
            disable_tqdm=True,
            **changes,
        )
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        useful = int(trainer.state.num_input_tokens_seen)
    return {
        "mode": mode,
        "steps": steps,
        "seconds": round(seconds, 2),
        "useful_tokens": useful,
        "tokens_per_s": round(useful / seconds, 1),
    }


def example_lengths(profile: Profile, model_path: str | None = None) -> list[int]:
    """Tokens per training example (prompt + response + EOS) with the base model's tokenizer."""
    from lab_utils.data import load_records, token_lengths
    from lab_utils.models import load_tokenizer, resolve_model_path

    records, _ = load_records(profile.dataset)
    return token_lengths(records, load_tokenizer(model_path or resolve_model_path(profile)))


def longest_example(profile: Profile, model_path: str | None = None) -> int:
    """Tokens in the longest training example."""
    return max(example_lengths(profile, model_path))


def compare(profile: Profile, steps: int = 20, model_path: str | None = None) -> list[dict[str, Any]]:
    """Every mode, one after the other in this process, with the speed-up over the dynamic-padding baseline. A short
    unmeasured warm-up comes first, so the first mode measured does not pay for the process's first training steps."""
    measure(profile, BASELINE, min(steps, 3), model_path)
    rows = [measure(profile, mode, steps, model_path) for mode in MODES]
    naive = next(r["tokens_per_s"] for r in rows if r["mode"] == BASELINE)
    lab = LAB_MODE_NAMES.get(resolve_batching(profile.train.batching))
    for row in rows:
        row["speedup_vs_naive"] = round(row["tokens_per_s"] / naive, 2)
        row["lab_default"] = row["mode"] == lab
    return rows


def plot(rows: list[dict[str, Any]], title: str = "SFT throughput (useful tokens/s)") -> Any:
    """Bar chart of useful tokens/s per batching mode, labelled with the speed-up."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.8))
    names = [r["mode"] for r in rows]
    values = [r["tokens_per_s"] for r in rows]
    bars = ax.barh(names, values, color=["#4477aa" if r.get("lab_default") else "#bbbbbb" for r in rows])
    for bar, r in zip(bars, rows):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {r['speedup_vs_naive']:.2f}x", va="center")
    ax.set_xlabel("non-padding tokens per second (blue: the lab's choice on this hardware)")
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def padding_bound(profile: Profile, model_path: str | None = None, trials: int = 200, seed: int = 0) -> float:
    """Padded tokens / useful tokens for random batches with dynamic padding: the most padding-free can gain."""
    import random

    lengths = example_lengths(profile, model_path)
    rng = random.Random(seed)
    size = profile.train.per_device_batch_size
    padded = useful = 0
    for _ in range(trials):
        batch = rng.sample(lengths, size)
        padded += max(batch) * size
        useful += sum(batch)
    return round(padded / useful, 3)
