"""Preference tuning with TRL's `DPOTrainer` (notebook 07, recipes/dpo.py): the arguments from the profile (written to the
run's config.yaml), and what its logs say (reward margins and accuracies over the steps)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from lab_utils.core.hardware import Hardware
from lab_utils.core.profiles import PreferenceSettings, Profile, TrainSettings
from lab_utils.train.sft import LORA_TARGETS, mixed_precision, optimizer_for


def dpo_lora_kwargs(pref: PreferenceSettings) -> dict[str, Any]:
    """`LoraConfig` arguments of the DPO adapter (a new adapter on the merged SFT model)."""
    return {
        "r": pref.lora_r,
        "lora_alpha": pref.lora_alpha,
        "lora_dropout": pref.lora_dropout,
        "target_modules": list(LORA_TARGETS),
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }


def dpo_kwargs(
    pref: PreferenceSettings,
    train: TrainSettings,
    output_dir: str | Path,
    hardware: Hardware,
    machine: Hardware,
    **overrides: Any,
) -> dict[str, Any]:
    """`DPOConfig` arguments: β, the loss, the learning rate and the lengths from the profile's preference settings;
    the precision and gradient checkpointing from its SFT settings (the same hardware decisions as 02: `hardware`
    decides precision, `machine` the device)."""
    cuda = machine.device == "cuda"
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        beta=pref.beta,
        loss_type=list(pref.loss_type),
        loss_weights=list(pref.loss_weights),
        learning_rate=pref.learning_rate,
        max_steps=pref.max_steps,
        per_device_train_batch_size=pref.per_device_batch_size,
        per_device_eval_batch_size=pref.per_device_batch_size,
        gradient_accumulation_steps=pref.gradient_accumulation_steps,
        max_length=pref.max_length,
        precompute_ref_log_probs=pref.precompute_ref,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, pref.max_steps // 20),
        **mixed_precision(train, hardware),
        gradient_checkpointing=train.gradient_checkpointing,
        optim=optimizer_for(train.method, train.optim, cuda),
        logging_steps=pref.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=pref.save_steps,
        save_total_limit=1,
        report_to="none",
        seed=train.seed,
        data_seed=train.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
        use_cpu=not cuda,
    )
    kwargs.update(overrides)
    return kwargs


DPO_CURVES = ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "loss")


def dpo_curves(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """The logged training values over the steps: reward margin, accuracy, chosen and rejected rewards, loss."""
    curves: dict[str, list[tuple[int, float]]] = {k: [] for k in DPO_CURVES}
    for entry in log_history:
        if "eval_loss" in entry or "train_runtime" in entry:
            continue
        for key in DPO_CURVES:
            if key in entry:
                curves[key].append((int(entry["step"]), float(entry[key])))
    return curves


def final_value(curve: list[tuple[int, float]], last: int = 3) -> float | None:
    """The mean of a curve's last `last` logged values (one logging interval is noisy), or None when empty."""
    tail = [v for _, v in curve[-last:]]
    return round(sum(tail) / len(tail), 4) if tail else None


def plot_dpo(curves: dict[str, list[tuple[int, float]]], title: str) -> Any:
    """Reward margin and accuracy (left), chosen and rejected rewards (right), over the steps."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for key, color in (("rewards/margins", "tab:purple"), ("rewards/accuracies", "tab:green")):
        if curves.get(key):
            steps, values = zip(*curves[key], strict=True)
            left.plot(steps, values, marker=".", color=color, label=key.split("/")[1])
    left.set(xlabel="step", title="reward margin and accuracy (training batches)")
    left.axhline(0, color="grey", lw=0.5)
    left.legend()
    for key, color in (("rewards/chosen", "tab:blue"), ("rewards/rejected", "tab:red")):
        if curves.get(key):
            steps, values = zip(*curves[key], strict=True)
            right.plot(steps, values, marker=".", color=color, label=key.split("/")[1])
    right.set(xlabel="step", title="implicit rewards: β·log(π/π_ref)")
    right.axhline(0, color="grey", lw=0.5)
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def settings_for(profile: Profile, max_steps: int = 0, beta: float = 0, learning_rate: float = 0) -> PreferenceSettings:
    """The profile's preference settings with a notebook's overrides (0 keeps the profile's value)."""
    changes = {k: v for k, v in {"max_steps": max_steps, "beta": beta, "learning_rate": learning_rate}.items() if v}
    return replace(profile.preference, **changes)


def heldout_rewards(metrics: dict[str, float]) -> dict[str, float]:
    """The reward accuracy and margin `trainer.evaluate()` reports on the held-out pairs (TRL prefixes them eval_)."""
    return {k: round(float(metrics[f"eval_rewards/{k}"]), 4) for k in ("accuracies", "margins")}


def train_runtime(log_history: list[dict[str, Any]]) -> float | None:
    """The seconds `trainer.train()` reported (its last train_runtime entry; evaluations log after it)."""
    return next((round(float(e["train_runtime"]), 1) for e in reversed(log_history) if "train_runtime" in e), None)
