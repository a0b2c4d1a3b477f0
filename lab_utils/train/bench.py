"""SFT throughput: the lab's batching against a naive baseline, measured in one run on the same model and data."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from lab_utils.core.hardware import Hardware
from lab_utils.core.paths import atomic_write_json, recipe
from lab_utils.core.profiles import Profile
from lab_utils.data.alpaca import token_lengths
from lab_utils.models.loading import free, load_tokenizer, resolve_model_path
from lab_utils.train.sft import batching_kwargs, split_for_training

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


def measure(config: dict[str, Any], mode: str, steps: int, longest: int) -> dict[str, Any]:
    """Train `steps` steps in one batching mode with the recipe's trainer (`recipes/sft.py`'s `build`, from the run's
    config file); report useful (non-padding) tokens/s and the tokens the model processed (padding included), counted
    at the collator, so the padding each mode costs is a measured figure. `longest`: the data's longest example."""
    changes = dict(MODES[mode])
    if changes.get("pad_to_multiple_of") == "DATA_MAX":
        changes["pad_to_multiple_of"] = longest
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _, _ = recipe("sft").build(
            config,
            output_dir=tmp,
            max_steps=steps,
            save_strategy="no",
            eval_strategy="no",
            logging_steps=steps,
            disable_tqdm=True,
            **changes,
        )
        batches = _count_batch_tokens(trainer)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        useful = int(trainer.state.num_input_tokens_seen)
    # The data loader fetches one batch ahead (to know the last one): count only the batches the steps consumed.
    processed = sum(batches[: steps * trainer.args.gradient_accumulation_steps])
    del trainer  # collect the mode's model before the next mode loads (five loads of one model in one process)
    free()
    return {
        "mode": mode,
        "steps": steps,
        "seconds": round(seconds, 2),
        "useful_tokens": useful,
        "tokens_per_s": round(useful / seconds, 1),
        "processed_tokens": processed,
        "padding_share": round(1 - useful / processed, 3) if processed else None,
    }


def _count_batch_tokens(trainer: Any) -> list[int]:
    """Wrap the trainer's collator so each batch's `input_ids` size (padding included) is appended to the returned list."""
    sizes: list[int] = []
    collate = trainer.data_collator

    def counting(features: Any) -> Any:
        batch = collate(features)
        sizes.append(int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting
    return sizes


def example_lengths(profile: Profile, model_path: str | None = None) -> list[int]:
    """Tokens per training example (prompt + response + EOS) with the base model's tokenizer."""
    records, _, _ = split_for_training(profile)  # what training reads (hub data: bad rows skipped)
    lengths = token_lengths(records, load_tokenizer(model_path or resolve_model_path(profile)))
    return [n for n in lengths if n <= profile.train.max_seq_length]  # over-long examples are dropped in training


def longest_example(profile: Profile, model_path: str | None = None) -> int:
    """Tokens in the longest training example."""
    return max(example_lengths(profile, model_path))


def lab_mode(config: dict[str, Any]) -> str:
    """The benchmark's name for the batching the run's config file trains with."""
    sft = config["sft"]
    return "padding-free" if sft.get("padding_free") else LAB_MODE_NAMES.get(sft.get("train_sampling_strategy"), "")


def compare(config_path: str | Path, steps: int, longest: int) -> list[dict[str, Any]]:
    """Every mode, one after the other in this process, with the speed-up over the dynamic-padding baseline. A short
    unmeasured warm-up comes first, so the first mode measured does not pay for the process's first training steps."""
    import yaml

    config = yaml.safe_load(Path(config_path).read_text())
    measure(config, BASELINE, min(steps, 3), longest)
    rows = [measure(config, mode, steps, longest) for mode in MODES]
    naive = next(r["tokens_per_s"] for r in rows if r["mode"] == BASELINE)
    for row in rows:
        row["speedup_vs_naive"] = round(row["tokens_per_s"] / naive, 2)
        row["lab_default"] = row["mode"] == lab_mode(config)
    return rows


def skip_reason(profile: Profile) -> str:
    """Why the batching benchmark shows nothing for a profile ("" when it does): with one example per micro-batch
    (70B QLoRA) no batch holds padding, so every mode trains the same batches, and the model would load five times."""
    if profile.train.per_device_batch_size == 1:
        return (
            "one example per micro-batch: no batch holds padding, so the four modes would train the same batches "
            "(and load the model five times)"
        )
    return ""


def run(
    profile: Profile, config_path: str | Path, steps: int, machine: Hardware, model_path: str | None = None
) -> list[dict[str, Any]]:
    """The benchmark where it costs least. On a GPU (`machine`), in a child process (`compare_in_subprocess`): five
    trainers' GPU memory goes back to the device when it ends. On a CPU, in this process: the pocket model's trainers
    are freed between modes, and a child would first import the training stack again (about 7 s on a 2-core CPU)."""
    if reason := skip_reason(profile):
        print(f"throughput benchmark skipped: {reason}")
        return []
    longest = longest_example(profile, model_path)
    if machine.device == "cuda":
        return compare_in_subprocess(config_path, steps, longest)
    print("throughput benchmark in this process (a CPU: a child process would import the training stack again)")
    return compare(config_path, steps, longest)


def compare_in_subprocess(config_path: str | Path, steps: int, longest: int) -> list[dict[str, Any]]:
    """`compare` in a child process: its four trainers' memory is returned to the system (and the GPU) when it ends,
    so the notebook's own process keeps only what it had. The child's output streams through."""
    import json
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        answer = Path(tmp) / "rows.json"
        argv = [sys.executable, "-m", "lab_utils.train.bench", str(config_path), str(steps), str(longest), str(answer)]
        done = subprocess.run(argv, check=False)
        if done.returncode != 0 or not answer.exists():
            raise RuntimeError(f"the throughput benchmark's process failed (exit code {done.returncode}): see above")
        return list(json.loads(answer.read_text()))


def main(argv: list[str] | None = None) -> int:
    """`python -m lab_utils.train.bench CONFIG.yaml STEPS LONGEST ROWS.json`: run `compare`, write its rows."""
    import sys

    config_path, steps, longest, rows_path = (argv if argv is not None else sys.argv[1:])[:4]
    atomic_write_json(rows_path, compare(config_path, int(steps), int(longest)))
    return 0


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
    """Padded tokens / useful tokens for random batches with dynamic padding: roughly what removing padding can gain
    (not a bound: attention costs grow faster than linearly with length, fixed per-step costs do not shrink)."""
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


if __name__ == "__main__":
    raise SystemExit(main())


def padding_reading(rows: list[dict[str, Any]], bound: float | None) -> str:
    """What this run's benchmark rows say about padding, in words generated from them (none typed by hand)."""
    by = {r["mode"]: r for r in rows}
    naive, data_max = by.get(BASELINE), by.get("naive: pad to data's longest")
    lab = next((r for r in rows if r["lab_default"]), None)
    if not (naive and data_max and lab):
        return "no benchmark ran: nothing to read"
    extra = data_max["processed_tokens"] / naive["processed_tokens"]
    others = [r for r in rows if r["mode"] not in (BASELINE, data_max["mode"], lab["mode"])]
    lines = [
        f"Dynamic padding (the baseline) processed {naive['processed_tokens'] / naive['useful_tokens']:.2f}x the useful "
        f"tokens ({naive['padding_share']:.0%} padding); the padded/useful bound over many random batches is {bound}.",
        f"Padding to the data's longest processed {extra:.2f}x the baseline's tokens for the same useful ones "
        f"({data_max['padding_share']:.0%} padding) and ran at {data_max['speedup_vs_naive']:.2f}x its speed: "
        f"{'a little' if extra < 1.25 else 'much'} more work on this data.",
        f"The lab's choice here, {lab['mode']} ({lab['padding_share']:.0%} padding), ran at "
        f"{lab['speedup_vs_naive']:.2f}x the baseline"
        + "".join(f"; {r['mode']} ({r['padding_share']:.0%} padding) at {r['speedup_vs_naive']:.2f}x" for r in others)
        + ".",
    ]
    return "\n".join(lines)
