"""Supervised fine-tuning with TRL's SFTTrainer and PEFT: LoRA, QLoRA or full, on Alpaca-format data."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab_utils.data.alpaca import (
    check_lengths,
    clean,
    load_records,
    skips_bad_rows,
    split_records,
    to_prompt_completion,
)
from lab_utils.data.standin import hub_source
from lab_utils.models.loading import free, half_dtype, load_kwargs, load_model, load_tokenizer, resolve_model_path
from lab_utils.models.memory import LORA_TARGET_SETS
from lab_utils.run.hardware import Hardware, flash_attention_usable, probe
from lab_utils.run.paths import atomic_write_json, staged
from lab_utils.run.profiles import Profile, TrainSettings
from lab_utils.run.results import versions
from lab_utils.train.meter import PeakMemory
from lab_utils.train.precision import adapters_for_fp16, mixed_precision, trained_precision

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


def optimizer_for(method: str, optim: str, cuda: bool | None = None) -> str:
    """transformers' `optim`: QLoRA's AdamW becomes paged 8-bit AdamW; on CUDA, `adamw_torch` becomes the fused kernel.
    torch's CUDA default, foreach, allocates temporary fp32 copies of the state each step (32 GB for a full 8B), which
    the estimator does not count (issue 19, C2: H200 rows 1-4 ran out of memory); the CPU's AdamW stays."""
    if method == "qlora" and optim == "adamw_torch":
        return "paged_adamw_8bit"
    if optim == "adamw_torch" and (_cuda_available() if cuda is None else cuda):
        return "adamw_torch_fused"
    return optim


def sft_kwargs(
    settings: TrainSettings,
    output_dir: str | Path,
    hardware: Hardware | None = None,
    machine: Hardware | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """`SFTConfig` arguments from the profile's settings, every default TRL changes set explicitly: the one source of
    02's config file, 03's sweep, the batching benchmark and 01's view of the collator. `hardware` decides precision (a
    rehearsal's target GPU), `machine` the device, optimizer kernel and batching (None: this process finds out)."""
    cuda = machine.device == "cuda" if machine else None
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
        use_cpu=not (_cuda_available() if cuda is None else cuda),
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
    )
    kwargs.update(batching_kwargs(resolve_batching(settings.batching, machine)))
    kwargs.update(overrides)
    return kwargs


def sft_config(settings: TrainSettings, output_dir: str | Path, **overrides: Any) -> Any:
    """TRL's `SFTConfig` from `sft_kwargs`."""
    from trl import SFTConfig

    return SFTConfig(**sft_kwargs(settings, output_dir, **overrides))


def model_kwargs(
    settings: TrainSettings, hardware: Hardware | None = None, machine: Hardware | None = None
) -> dict[str, Any]:
    """`from_pretrained` arguments for the base model to train (besides QLoRA's `BitsAndBytesConfig`): its dtype (for
    `hardware`), a 4-bit model's placement per rank, and FlashAttention-2 where padding-free batches use it (`machine`)."""
    cuda = machine.device == "cuda" if machine else None
    return load_kwargs(settings.method, settings.bf16, attention_for(settings, machine), hardware, cuda)


def attention_for(settings: TrainSettings, machine: Hardware | None = None) -> str | None:
    """FlashAttention-2 for padding-free batches on a GPU with flash_attn installed; None (the default) otherwise."""
    padding_free = resolve_batching(settings.batching, machine) == "padding_free"
    return "flash_attention_2" if padding_free and _flash_attn_usable(machine) else None


def make_trainer(
    settings: TrainSettings,
    model: Any,
    tokenizer: Any,
    args: Any,
    train_dataset: Any,
    eval_dataset: Any = None,
    callbacks: list[Any] | None = None,
) -> Any:
    """TRL's `SFTTrainer` as notebook 02's cells build it (`args` an `SFTConfig(**sft_kwargs(...))` made before the model
    loaded, `LoraConfig(**lora_kwargs)`): the one trainer builder of the batching benchmark, the memory sweep, 01's
    collator view and the command line."""
    from peft import LoraConfig
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=None if settings.method == "full" else LoraConfig(**lora_kwargs(settings)),
        callbacks=callbacks,
    )
    adapters_for_fp16(trainer)
    return trainer


BATCHING_MODES = ("padding_free", "group_by_length", "padded")


def resolve_batching(batching: str, machine: Hardware | None = None) -> str:
    """The batching mode for "auto": padding-free with FlashAttention on a GPU, length-grouped batches otherwise."""
    if batching != "auto":
        if batching not in BATCHING_MODES:
            raise ValueError(f"batching must be auto or one of {BATCHING_MODES}, got {batching!r}")
        return batching
    return "padding_free" if _flash_attn_usable(machine) else "group_by_length"


def _flash_attn_usable(machine: Hardware | None = None) -> bool:
    """A GPU that runs FlashAttention-2 and a flash_attn package that imports: what padding-free batches are made for."""
    if machine is not None:
        return flash_attention_usable(machine)
    if not _cuda_available():
        return False
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


def build_trainer(
    profile: Profile,
    output_dir: str | Path,
    model_path: str | None = None,
    skip_bad: bool | None = None,
    **config_overrides: Any,
) -> tuple[Any, dict[str, Any]]:
    """An SFTTrainer for the profile (model, tokenizer, data, LoRA/QLoRA/full), ready to train: notebook 02's cells,
    in one call, for the benchmark and the command line."""
    model_path = model_path or resolve_model_path(profile)
    tokenizer = load_tokenizer(model_path)
    # The config first: it sets up the distributed state (DeepSpeed ZeRO-3, FSDP, the local rank) the model loads into.
    args = sft_config(profile.train, output_dir, **config_overrides)
    model = load_model(model_path, profile.train.method, profile.train.bf16, attention_for(profile.train))
    train_ds, eval_ds, info = load_splits(profile, tokenizer, skip_bad=skip_bad)
    info["model_path"] = model_path
    return make_trainer(profile.train, model, tokenizer, args, train_ds, eval_ds), info


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


def train(
    profile: Profile,
    output_dir: str | Path,
    resume: bool = False,
    skip_bad: bool | None = None,
    model_path: str | None = None,
    callbacks: list[Any] | None = None,
    **config_overrides: Any,
) -> TrainResult:
    """Notebook 02's training cells in one call (the command line's `train`): fine-tune the profile's base model and
    save the adapter (or full model) atomically under output_dir/adapter."""
    resume_from = prepare_output_dir(output_dir, resume, profile.train.save_steps)
    meter = PeakMemory()  # idle baseline before the model loads, as in the memory sweep
    trainer, info = build_trainer(profile, output_dir, model_path, skip_bad, **config_overrides)
    for callback in callbacks or []:
        trainer.add_callback(callback)
    record_config(trainer, profile, info)
    eval_before = None if resume_from else loss_before_training(trainer)
    tokens_before = tokens_seen_at(resume_from)  # read now: training may rotate that checkpoint away
    t0 = time.perf_counter()
    with meter:
        trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - t0
    result = summarize(trainer, profile, meter, seconds, eval_before, resume_from, info, tokens_before)
    save_atomically(trainer, Path(output_dir) / "adapter")
    del trainer
    free()  # TRL keeps a reference to the model through its rebound forward: collect it now
    return result


def fsdp_version(trainer: Any) -> int | None:
    """1 or 2 when the trainer shards with FSDP, else None."""
    return getattr(trainer.accelerator.state.fsdp_plugin, "fsdp_version", 1) if trainer.is_fsdp_enabled else None


def loss_before_training(trainer: Any) -> float | None:
    """The eval loss before any training (the final one is judged against it); None under FSDP2, which cannot evaluate
    a model not yet prepared with its optimizer (transformers#39961), and DeepSpeed, whose engine is then missing in
    training (both found by the 2-process CPU tests)."""
    return None if fsdp_version(trainer) == 2 or trainer.is_deepspeed_enabled else trainer.evaluate().get("eval_loss")


def tokens_seen_at(checkpoint: str | None) -> int:
    """Tokens the trainer had seen at a checkpoint (0 for a fresh start): this run's count starts there."""
    if not checkpoint:
        return 0
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return int(state.get("num_input_tokens_seen", 0) or 0)


def save_atomically(trainer: Any, target: Path) -> Path:
    """Save the trained adapter (or model) and tokenizer to `target` via a temporary folder and a rename. Every rank
    calls it: under DeepSpeed ZeRO-3 and FSDP the weights are gathered from all ranks (a save on rank 0 alone hangs
    or writes nothing); the main process alone stages the folder (`staged`) and renames it into place."""
    if not trainer.is_world_process_zero():
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(target.with_name(target.name + ".partial")))  # the main process's staged folder
        trainer.accelerator.wait_for_everyone()
        return target
    with staged(target) as tmp:
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(tmp))
        trainer.accelerator.wait_for_everyone()
        trainer.processing_class.save_pretrained(str(tmp))
    return target


def merge_dtype(settings: TrainSettings, hardware: Hardware | None = None) -> str:
    """Precision to merge in: the 16-bit compute dtype when training ran in mixed precision or QLoRA (never 4-bit);
    fp32 for an fp32 run."""
    return half_dtype(hardware) if settings.bf16 or settings.method == "qlora" else "float32"
