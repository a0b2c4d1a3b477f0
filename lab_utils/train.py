"""Supervised fine-tuning with TRL's SFTTrainer and PEFT: LoRA, QLoRA or full, on Alpaca-format data."""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab_utils.data import check_lengths, clean, load_records, skips_bad_rows, split_records, to_prompt_completion
from lab_utils.memory import LORA_TARGET_SETS
from lab_utils.models import load_model, load_tokenizer, resolve_model_path
from lab_utils.paths import atomic_write_json, swap_in_dir
from lab_utils.profiles import Profile, TrainSettings
from lab_utils.results import versions

LORA_TARGETS = list(LORA_TARGET_SETS["all-linear"])  # every linear projection; the estimator counts the same set
CONFIG_FILE = "lab_train_config.json"
METRICS_FILE = "lab_train_metrics.json"


@dataclass
class TrainResult:
    """What a training run produced and measured."""

    output_dir: str
    adapter_dir: str
    method: str
    steps: int
    train_loss_first: float
    train_loss_last: float
    eval_loss: float | None
    eval_loss_before: float | None
    train_tokens_per_s: float
    train_seconds: float
    peak_memory_mb: float
    peak_memory_kind: str
    peak_memory_above_idle_mb: float  # comparable with notebook 03's table
    trainable_params: int
    total_params: int
    resumed_from: str | None
    data: dict[str, Any] = field(default_factory=dict)  # what loading read, kept, skipped and why
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (without the full log history)."""
        return {k: v for k, v in asdict(self).items() if k != "log_history"}


def lora_config(settings: TrainSettings) -> Any:
    """The PEFT LoRA configuration: rank, alpha and dropout from the profile, all linear projections."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=LORA_TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
    )


def sft_config(settings: TrainSettings, output_dir: str | Path, **overrides: Any) -> Any:
    """TRL's SFTConfig from the profile's settings (every default TRL changes is set explicitly)."""
    from trl import SFTConfig

    optim = settings.optim
    if settings.method == "qlora" and optim == "adamw_torch":
        optim = "paged_adamw_8bit"
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.per_device_batch_size,
        per_device_eval_batch_size=settings.eval_batch_size or settings.per_device_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.max_seq_length,
        warmup_steps=max(1, round(settings.warmup_ratio * settings.max_steps)),
        lr_scheduler_type="cosine",
        weight_decay=settings.weight_decay,
        **mixed_precision(settings),
        gradient_checkpointing=settings.gradient_checkpointing,
        optim=optim,
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        eval_strategy="steps",
        eval_steps=settings.eval_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        completion_only_loss=True,
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
        use_cpu=not _cuda_available(),
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
    )
    kwargs.update(batching_kwargs(resolve_batching(settings.batching)))
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def mixed_precision(settings: TrainSettings) -> dict[str, bool]:
    """SFTConfig's precision flags: the profile's bf16 becomes fp16 autocast on a GPU below compute capability 8.0
    (bf16 is emulated there), with the loss scaling fp16 needs; fp32 when the profile turns bf16 off."""
    from lab_utils.models import half_dtype

    if not settings.bf16:
        return {"bf16": False, "fp16": False}
    fp16 = half_dtype() == "float16"
    return {"bf16": not fp16, "fp16": fp16}


BATCHING_MODES = ("padding_free", "group_by_length", "padded")


def resolve_batching(batching: str) -> str:
    """The batching mode for "auto": padding-free with FlashAttention on a GPU, length-grouped batches otherwise."""
    if batching != "auto":
        if batching not in BATCHING_MODES:
            raise ValueError(f"batching must be auto or one of {BATCHING_MODES}, got {batching!r}")
        return batching
    return "padding_free" if _flash_attn_usable() else "group_by_length"


def _flash_attn_usable() -> bool:
    """A GPU that runs FlashAttention-2 and a flash_attn package that imports: what padding-free batches are made for."""
    if not _cuda_available():
        return False
    from lab_utils.hardware import flash_attention_usable, probe

    return flash_attention_usable(probe())


def batching_kwargs(mode: str) -> dict[str, Any]:
    """SFTConfig arguments for a batching mode (no packing: examples stay whole)."""
    if mode == "padding_free":
        # Without packing, padding-free does not truncate: the data is checked against max_length beforehand.
        return {"padding_free": True, "packing": False, "max_length": None}
    strategy = "group_by_length" if mode == "group_by_length" else "random"
    return {"padding_free": False, "packing": False, "train_sampling_strategy": strategy}


def _cuda_available() -> bool:
    """True when torch sees a CUDA device."""
    import torch

    return torch.cuda.is_available()


def split_for_training(
    profile: Profile, skip_bad: bool | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    """The profile's data, validated and split into train and eval records (the eval split capped at
    `max_eval_examples`) before any length check, so the held-out records do not depend on the tokenizer (notebook 05
    scores answers on some of them). Returns (train, eval, load report)."""
    skip = skips_bad_rows(profile.dataset, skip_bad)
    records, report = load_records(profile.dataset, skip_bad=skip)
    train, evals = split_records(
        records, profile.eval_fraction, seed=profile.train.seed, max_eval=profile.max_eval_examples
    )
    return train, evals, report


def load_splits(profile: Profile, tokenizer: Any, skip_bad: bool | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Train and eval datasets in prompt/completion form, by one stated rule: invalid records (an empty output, a
    missing field) and examples longer than max_seq_length tokens (prompt + response + EOS) are dropped, not truncated
    (truncation would cut off the response and its EOS, and teach the model not to stop). Hub data: skipped and
    reported with counts per reason; a local file: the first one stops with its line (`data.skips_bad_rows`)."""
    from datasets import Dataset

    skip = skips_bad_rows(profile.dataset, skip_bad)
    train, evals, report = split_for_training(profile, skip)
    count = lambda s: len(tokenizer(s)["input_ids"]) + 1  # noqa: E731 - prompt + response + EOS
    limit = profile.train.max_seq_length
    train = check_lengths(train, count, limit, source=report.source, skip_bad=skip, report=report)
    evals = check_lengths(evals, count, limit, source=report.source, skip_bad=skip, report=report)
    to_ds = lambda rows: Dataset.from_list([to_prompt_completion(clean(r)) for r in rows])  # noqa: E731
    info = {
        "n_read": report.n_read,
        "n_skipped": report.n_skipped,
        "skipped_reasons": dict(report.reasons),
        "skip_rule": f"dropped (not truncated): invalid records and examples over {limit} tokens",
        "load_summary": report.summary(),
        "n_train": len(train),
        "n_eval": len(evals),
    }
    if report.n_skipped:
        print(report.summary())
    return to_ds(train), to_ds(evals), info


def build_trainer(
    profile: Profile,
    output_dir: str | Path,
    model_path: str | None = None,
    skip_bad: bool | None = None,
    **config_overrides: Any,
) -> tuple[Any, dict[str, Any]]:
    """An SFTTrainer for the profile (model, tokenizer, data, LoRA/QLoRA/full), ready to train."""
    from trl import SFTTrainer

    settings = profile.train
    model_path = model_path or resolve_model_path(profile)
    tokenizer = load_tokenizer(model_path)
    # Padding-free batches are made for FlashAttention's variable-length kernels (on a GPU with flash_attn installed).
    attn = (
        "flash_attention_2" if resolve_batching(settings.batching) == "padding_free" and _flash_attn_usable() else None
    )
    # The config first: it sets up the distributed state (DeepSpeed ZeRO-3, FSDP, the local rank) the model loads into.
    args = sft_config(settings, output_dir, **config_overrides)
    model = load_model(model_path, settings.method, settings.bf16, attn)
    train_ds, eval_ds, info = load_splits(profile, tokenizer, skip_bad=skip_bad)
    peft_config = None if settings.method == "full" else lora_config(settings)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    info["model_path"] = model_path
    return trainer, info


def count_params(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as stored elements x 2."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


class PeakMemory:
    """One memory meter for notebook 02 and the memory sweep (03). The idle baseline is this process's resident memory
    when the meter is made (make it before the model loads); inside `with meter:` a thread samples the resident
    memory. `above_idle_mb()` is what the run added (what 03 tabulates); `peak_mb()` is the CUDA allocator's peak on a
    GPU, else the process's peak resident memory."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil
        import torch

        self.cuda = torch.cuda.is_available()
        self.interval = interval
        self._proc = psutil.Process()
        self.baseline = self._proc.memory_info().rss
        self.peak_rss = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    @property
    def kind(self) -> str:
        """Which figure `peak_mb` reports."""
        return "cuda_max_allocated" if self.cuda else "process_peak_rss"

    def peak_mb(self) -> float:
        """The CUDA allocator's peak on a GPU, else the process's peak resident memory, in MB (10^6 bytes)."""
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / 1e6
        return self.peak_rss / 1e6

    def above_idle_mb(self) -> float:
        """Peak resident memory above the idle baseline, in MB."""
        return (self.peak_rss - self.baseline) / 1e6


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete checkpoint folder in `output_dir`, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    path = Path(output_dir)
    return get_last_checkpoint(str(path)) if path.is_dir() else None


def train(
    profile: Profile,
    output_dir: str | Path,
    resume: bool = False,
    skip_bad: bool | None = None,
    model_path: str | None = None,
    callbacks: list[Any] | None = None,
    **config_overrides: Any,
) -> TrainResult:
    """Fine-tune the profile's base model; save the adapter (or full model) atomically under output_dir/adapter."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resume_from = last_checkpoint(output_dir) if resume else None
    if resume and resume_from is None:
        print(
            f"resume=True, but {output_dir} holds no checkpoint yet (one is written every {profile.train.save_steps} "
            "steps): starting at step 0"
        )
    if not resume:
        for old in output_dir.glob("checkpoint-*"):
            shutil.rmtree(old)
    meter = PeakMemory()  # idle baseline before the model loads, as in the memory sweep
    trainer, info = build_trainer(profile, output_dir, model_path, skip_bad, **config_overrides)
    for callback in callbacks or []:
        trainer.add_callback(callback)
    trainable, total = count_params(trainer.model)
    main = trainer.is_world_process_zero()
    if main:
        atomic_write_json(
            output_dir / CONFIG_FILE,
            {
                "profile": profile.to_dict(),
                "data": info,
                "sft_config": trainer.args.to_dict(),
                "versions": versions(),
                "world_size": trainer.args.world_size,
            },
        )
    # The eval loss before any training: the reference the final eval loss is judged against (per-batch train losses
    # vary with the batch's composition, more so with length-grouped batches).
    eval_before = None if resume_from else trainer.evaluate().get("eval_loss")
    tokens_before = _tokens_seen_at(resume_from)
    t0 = time.perf_counter()
    with meter:
        out = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - t0
    eval_loss = trainer.evaluate().get("eval_loss")
    adapter_dir = output_dir / "adapter"
    save_atomically(trainer, adapter_dir)
    logs = [r for r in trainer.state.log_history if "loss" in r]
    tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0) - tokens_before
    result = TrainResult(
        output_dir=str(output_dir),
        adapter_dir=str(adapter_dir),
        method=profile.train.method,
        steps=out.global_step,
        train_loss_first=float(logs[0]["loss"]) if logs else float("nan"),
        train_loss_last=float(logs[-1]["loss"]) if logs else float("nan"),
        eval_loss=float(eval_loss) if eval_loss is not None else None,
        eval_loss_before=float(eval_before) if eval_before is not None else None,
        train_tokens_per_s=round(tokens / max(seconds, 1e-9), 1),
        train_seconds=round(seconds, 2),
        peak_memory_mb=round(meter.peak_mb(), 1),
        peak_memory_kind=meter.kind,
        peak_memory_above_idle_mb=round(meter.above_idle_mb(), 1),
        trainable_params=trainable,
        total_params=total,
        resumed_from=resume_from,
        data={k: v for k, v in info.items() if k != "model_path"},
        log_history=list(trainer.state.log_history),
    )
    if main:
        atomic_write_json(output_dir / METRICS_FILE, {**result.to_dict(), "log_history": result.log_history})
    return result


def _tokens_seen_at(checkpoint: str | None) -> int:
    """Tokens the trainer had seen at a checkpoint (0 for a fresh start): this run's count starts there."""
    if not checkpoint:
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return int(state.get("num_input_tokens_seen", 0) or 0)


def save_atomically(trainer: Any, target: Path) -> Path:
    """Save the trained adapter (or model) and tokenizer to `target` via a temporary folder and a rename. Every rank
    calls it: under DeepSpeed ZeRO-3 and FSDP the weights are gathered from all ranks (a save on rank 0 alone hangs
    or writes nothing); the main process alone writes, and renames."""
    tmp = target.with_name(target.name + ".partial")
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if main:
        trainer.processing_class.save_pretrained(str(tmp))
        swap_in_dir(tmp, target)
    trainer.accelerator.wait_for_everyone()
    return target


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


def merge_dtype(settings: TrainSettings) -> str:
    """Precision to merge in: the 16-bit compute dtype when training ran in mixed precision or QLoRA (never 4-bit);
    fp32 for an fp32 run."""
    from lab_utils.models import half_dtype

    return half_dtype() if settings.bf16 or settings.method == "qlora" else "float32"
