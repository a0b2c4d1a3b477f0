"""Supervised fine-tuning with TRL's SFTTrainer and PEFT: LoRA, QLoRA or full, on Alpaca-format data."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab_utils.core.features import flash_attention_usable
from lab_utils.core.hardware import Hardware, compute_dtype
from lab_utils.core.paths import atomic_write_json
from lab_utils.core.profiles import Profile, TrainSettings
from lab_utils.core.results import versions
from lab_utils.data.alpaca import (
    check_lengths,
    clean,
    load_records,
    skips_bad_rows,
    split_records,
    to_prompt_completion,
)
from lab_utils.data.standin import hub_source
from lab_utils.models.loading import load_kwargs
from lab_utils.models.memory import LORA_TARGET_SETS
from lab_utils.train.meter import PeakMemory
from lab_utils.train.precision import mixed_precision, trained_precision

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
    precision: str = ""  # the mixed precision it trained in: bf16 | fp16 | fp32
    trainable_dtypes: list[str] = field(default_factory=list)  # fp16 autocast needs fp32 trainable weights
    data: dict[str, Any] = field(default_factory=dict)  # what loading read, kept, skipped and why
    log_history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (without the full log history)."""
        return {k: v for k, v in asdict(self).items() if k != "log_history"}


def lora_kwargs(settings: TrainSettings) -> dict[str, Any]:
    """`LoraConfig` arguments: rank, alpha and dropout from the profile, every linear projection adapted."""
    tuned = {"r": settings.lora_r, "lora_alpha": settings.lora_alpha, "lora_dropout": settings.lora_dropout}
    return {**tuned, "target_modules": list(LORA_TARGETS), "bias": "none", "task_type": "CAUSAL_LM"}


def optimizer_for(method: str, optim: str, cuda: bool) -> str:
    """transformers' `optim`: QLoRA's AdamW becomes paged 8-bit AdamW; on CUDA, `adamw_torch` becomes the fused kernel.
    torch's CUDA default, foreach, allocates temporary fp32 copies of the state each step (32 GB for a full 8B), which
    the estimator does not count (issue 19, C2: H200 rows 1-4 ran out of memory); the CPU's AdamW stays."""
    if method == "qlora" and optim == "adamw_torch":
        return "paged_adamw_8bit"
    if optim == "adamw_torch" and cuda:
        return "adamw_torch_fused"
    return optim


def sft_kwargs(
    settings: TrainSettings,
    output_dir: str | Path,
    hardware: Hardware,
    machine: Hardware,
    **overrides: Any,
) -> dict[str, Any]:
    """`SFTConfig` arguments from the profile's settings, every default TRL changes set explicitly: the one source of
    02's config file, 03's sweep, the batching benchmark and 01's view of the collator. `hardware` decides precision (a
    rehearsal's target GPU), `machine` (the one it runs on) the device, optimizer kernel and batching."""
    cuda = machine.device == "cuda"
    optim = optimizer_for(settings.method, settings.optim, cuda)
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
        **mixed_precision(settings, hardware),
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
        use_cpu=not cuda,
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
    )
    kwargs.update(batching_kwargs(resolve_batching(settings.batching, machine)))
    kwargs.update(overrides)
    return kwargs


def model_kwargs(settings: TrainSettings, hardware: Hardware, machine: Hardware) -> dict[str, Any]:
    """`from_pretrained` arguments for the base model to train (besides QLoRA's `BitsAndBytesConfig`): its dtype (for
    `hardware`), a 4-bit model's placement per rank, and FlashAttention-2 where padding-free batches use it
    (`machine`)."""
    cuda = machine.device == "cuda"
    return load_kwargs(settings.method, settings.bf16, hardware, cuda, attention_for(settings, machine))


def attention_for(settings: TrainSettings, machine: Hardware) -> str | None:
    """FlashAttention-2 for padding-free batches on a GPU with flash_attn installed; None (the default) otherwise."""
    padding_free = resolve_batching(settings.batching, machine) == "padding_free"
    return "flash_attention_2" if padding_free and flash_attention_usable(machine) else None


BATCHING_MODES = ("padding_free", "group_by_length", "padded")


def resolve_batching(batching: str, machine: Hardware) -> str:
    """The batching mode for "auto": padding-free with FlashAttention on a GPU, length-grouped batches otherwise."""
    if batching != "auto":
        if batching not in BATCHING_MODES:
            raise ValueError(f"batching must be auto or one of {BATCHING_MODES}, got {batching!r}")
        return batching
    return "padding_free" if flash_attention_usable(machine) else "group_by_length"


def batching_kwargs(mode: str) -> dict[str, Any]:
    """SFTConfig arguments for a batching mode (no packing: examples stay whole)."""
    if mode == "padding_free":
        # Without packing, padding-free does not truncate: the data is checked against max_length beforehand.
        return {"padding_free": True, "packing": False, "max_length": None}
    strategy = "group_by_length" if mode == "group_by_length" else "random"
    return {"padding_free": False, "packing": False, "train_sampling_strategy": strategy}


def split_for_training(
    profile: Profile, skip_bad: bool | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    """The profile's data, validated and split into train and eval records (the eval split capped at
    `max_eval_examples`) before any length check, so the held-out records do not depend on the tokenizer (notebook 05
    scores answers on some of them). Returns (train, eval, load report)."""
    skip = skips_bad_rows(profile.dataset, skip_bad)
    records, report = load_records(hub_source(profile.dataset, profile.rehearsal), skip_bad=skip)
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


def count_params(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts. A 4-bit weight is counted by the shape it quantized (its quant_state), or
    else by its storage: two 4-bit weights per byte, so four per element when `bnb_4bit_quant_storage` is 16-bit."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            state = getattr(p, "quant_state", None)
            n = math.prod(state.shape) if state is not None else p.numel() * p.element_size() * 2
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete checkpoint folder in `output_dir`, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    path = Path(output_dir)
    return get_last_checkpoint(str(path)) if path.is_dir() else None


def prepare_output_dir(output_dir: str | Path, resume: bool, save_steps: int) -> str | None:
    """Make `output_dir`; with `resume`, the newest checkpoint to continue from (None, said aloud, when there is none);
    without, old checkpoints are removed so that a fresh run cannot pick them up."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resume_from = last_checkpoint(output_dir) if resume else None
    if resume and resume_from is None:
        print(
            f"resume=True, but {output_dir} holds no checkpoint yet (one is written every {save_steps} steps): "
            "starting at step 0"
        )
    if not resume:
        for old in output_dir.glob("checkpoint-*"):
            shutil.rmtree(old)
    return resume_from


def record_config(trainer: Any, profile: Profile, info: dict[str, Any]) -> None:
    """Write what the run trains with (profile, data report, the SFTConfig, versions) beside its checkpoints."""
    if trainer.is_world_process_zero():
        atomic_write_json(
            Path(trainer.args.output_dir) / CONFIG_FILE,
            {
                "profile": profile.to_dict(),
                "data": {k: v for k, v in info.items() if k != "model_path"},
                "sft_config": trainer.args.to_dict(),
                "versions": versions(),
                "world_size": trainer.args.world_size,
                "distributed_type": str(getattr(trainer.accelerator.distributed_type, "value", "NO")),
                "fsdp_version": fsdp_version(trainer),
            },
        )


def summarize(
    trainer: Any,
    profile: Profile,
    meter: PeakMemory,
    seconds: float,
    eval_before: float | None,
    resume_from: str | None,
    info: dict[str, Any],
    tokens_before: int = 0,
) -> TrainResult:
    """What a finished run measured (the eval loss after training is measured here), written beside the adapter."""
    eval_loss = trainer.evaluate().get("eval_loss")
    output_dir = Path(trainer.args.output_dir)
    logs = [r for r in trainer.state.log_history if "loss" in r]
    tokens = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0) - tokens_before
    trainable, total = count_params(trainer.model)
    result = TrainResult(
        output_dir=str(output_dir),
        adapter_dir=str(output_dir / "adapter"),
        method=profile.train.method,
        steps=trainer.state.global_step,
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
        **trained_precision(trainer),
        data={k: v for k, v in info.items() if k != "model_path"},
        log_history=list(trainer.state.log_history),
    )
    if trainer.is_world_process_zero():
        atomic_write_json(output_dir / METRICS_FILE, {**result.to_dict(), "log_history": result.log_history})
    return result


def fsdp_version(trainer: Any) -> int | None:
    """1 or 2 when the trainer shards with FSDP, else None."""
    return getattr(trainer.accelerator.state.fsdp_plugin, "fsdp_version", 1) if trainer.is_fsdp_enabled else None


def tokens_seen_at(checkpoint: str | None) -> int:
    """Tokens the trainer had seen at a checkpoint (0 for a fresh start): this run's count starts there."""
    if not checkpoint:
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return int(state.get("num_input_tokens_seen", 0) or 0)


def merge_dtype(settings: TrainSettings, hardware: Hardware) -> str:
    """Precision to merge in: the 16-bit compute dtype when training ran in mixed precision or QLoRA (never 4-bit);
    fp32 for an fp32 run."""
    return compute_dtype(hardware) if settings.bf16 or settings.method == "qlora" else "float32"
