"""What notebooks 01 and 02 show about training, beside the code they run: the hyperparameters with a line each, the
loss curves, and TRL's own collator applied to a few records."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from lab_utils.core.hardware import DESCRIBED
from lab_utils.core.profiles import TrainSettings
from lab_utils.data.alpaca import clean, to_prompt_completion
from lab_utils.models.tiny import tiny_llama
from lab_utils.train.sft import sft_kwargs

# One line per hyperparameter, shown beside its value in notebook 02.
HYPERPARAMETER_NOTES: dict[str, str] = {
    "method": "lora: adapters on a frozen base; qlora: the same on a 4-bit NF4 base; full: every weight trains",
    "max_steps": "optimizer steps: what decides how much the model learns (not the wall clock)",
    "learning_rate": "step size; LoRA takes ~10x full fine-tuning's (1e-4 to 2e-3), since its update starts at zero",
    "per_device_batch_size": "sequences per forward/backward pass on one device (the micro-batch)",
    "eval_batch_size": "sequences per pass for the eval loss (no gradients, so it can be larger); 0: the micro-batch",
    "gradient_accumulation_steps": "micro-batches summed per optimizer step: effective batch = micro-batch x this",
    "max_seq_length": "longest example in tokens; longer ones are dropped (truncating would cut off the EOS)",
    "lora_r": "adapter rank r: B is d_out x r, A is r x d_in; trainable parameters grow linearly with r",
    "lora_alpha": "the update B.A is scaled by alpha/r: keep alpha/r fixed when you change r",
    "lora_dropout": "dropout on the adapters' input during training (regularization); off at inference",
    "warmup_ratio": "share of the steps in which the learning rate ramps up from 0 (avoids a large first update)",
    "weight_decay": "pulls trainable weights towards zero each step (AdamW's decoupled decay); 0: off",
    "bf16": "mixed precision: compute in bf16 (fp16 below compute capability 8.0), master weights in fp32",
    "gradient_checkpointing": "recompute activations in the backward pass instead of storing them: compute for memory",
    "optim": "optimizer: adamw_torch (two fp32 moments), adamw_8bit / paged_adamw_8bit (8-bit moments)",
    "logging_steps": "steps between training-loss log points (each the mean over those steps' batches)",
    "eval_steps": "steps between eval-loss measurements on the held-out split",
    "save_steps": "steps between checkpoints: what `resume=True` can restart from",
    "batching": "how batches avoid padding: padding_free (GPU), group_by_length (CPU), padded, auto",
    "seed": "fixes data order, adapter initialization and dropout: the same run twice gives the same model",
}


def hyperparameter_table(settings: TrainSettings) -> Any:
    """The run's hyperparameters, each with its value and one line on what it does."""
    import pandas as pd

    rows = [(name, value, HYPERPARAMETER_NOTES.get(name, "")) for name, value in asdict(settings).items()]
    return pd.DataFrame(rows, columns=["setting", "value", "what it does"]).set_index("setting")


def smoothed(values: list[float], window: int) -> list[float]:
    """Trailing moving average (shorter at the start), for a noisy loss curve."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot_losses(
    log_history: list[dict[str, Any]],
    title: str = "SFT loss",
    eval_loss_before: float | None = None,
    smooth_window: int = 4,
) -> Any:
    """Train loss (as logged, and its moving average over `smooth_window` log points) and eval loss against the step;
    the eval loss measured before training is drawn at step 0."""
    import matplotlib.pyplot as plt

    train_pts = [(r["step"], r["loss"]) for r in log_history if "loss" in r and "step" in r]
    eval_pts = [(r["step"], r["eval_loss"]) for r in log_history if "eval_loss" in r and "step" in r]
    if eval_loss_before is not None and not any(step == 0 for step, _ in eval_pts):
        eval_pts = [(0, eval_loss_before), *eval_pts]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if train_pts:
        steps, losses = zip(*train_pts)
        ax.plot(steps, losses, label="train loss (per log point)", color="#4477aa", alpha=0.35)
        ax.plot(
            steps, smoothed(list(losses), smooth_window), label=f"train loss, mean of {smooth_window}", color="#4477aa"
        )
    if eval_pts:
        ax.plot(*zip(*eval_pts), "o-", label="eval loss (held out)", color="#cc3311")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (completion tokens)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_learning_rate(log_history: list[dict[str, Any]], warmup_steps: int, title: str = "learning rate") -> Any:
    """The learning rate the trainer logged at each log point, with the end of the warm-up marked."""
    import matplotlib.pyplot as plt

    points = [(r["step"], r["learning_rate"]) for r in log_history if "learning_rate" in r and "step" in r]
    fig, ax = plt.subplots(figsize=(7, 2.4))
    if points:
        ax.plot(*zip(*points), "o-", color="#228833", markersize=3, label="learning rate (logged)")
    ax.axvline(warmup_steps, color="grey", linestyle="--", label=f"end of warm-up (step {warmup_steps})")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def collated_examples(tokenizer: Any, records: list[dict[str, Any]], settings: Any) -> tuple[Any, list[Any]]:
    """Run records through TRL's own SFT preprocessing and collator, configured by `sft_kwargs` from the run's
    `TrainSettings` (as notebook 02 trains); return (batch, tokenized examples).

    A tiny stand-in model with the tokenizer's vocabulary lets TRL build its pipeline without loading the real
    base model: tokenization, EOS appending and loss masking depend on the tokenizer and the config alone.
    """
    import tempfile
    from dataclasses import replace

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    stand_in = tiny_llama(
        tokenizer,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
    )
    ds = Dataset.from_list([to_prompt_completion(clean(r)) for r in records])
    # One padded batch of every record, on the CPU, in fp32: what changes is only how the view is batched.
    view = replace(
        settings, per_device_batch_size=len(records), bf16=False, gradient_checkpointing=False, batching="padded"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cpu = DESCRIBED["cpu"]  # the view runs on the CPU, whatever trains
        args = SFTConfig(**sft_kwargs(view, tmp, cpu, cpu, eval_strategy="no", save_strategy="no"))
        trainer = SFTTrainer(model=stand_in, args=args, train_dataset=ds, processing_class=tokenizer)
        examples = [trainer.train_dataset[i] for i in range(len(records))]
        batch = trainer.data_collator(examples)
    return batch, examples
