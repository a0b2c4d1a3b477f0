"""The GPU check's two large-model stages (run by `scripts/gpu_check.py`, each in a child process): a random Llama of
Llama-3-8B's shape trained at the llama3-8b profile's settings (build8b: the 24 GB claim and the FP8 simulation's
peak, C5), and one full-fine-tuning step of a ~1.5B fp32 Llama projected to row 1 of the 8B memory sweep (fullft,
C2). Both build their model directly on the device from random weights: nothing is downloaded. On a CPU (`--quick`)
they run the same code on a scaled-down shape."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gpu_check_stages import POCKET_DATA, Context, cuda_mb, finite, pocket_path, require

# Llama-3.2-1B's shape with untied embeddings: 1.50B parameters, 6 GB in fp32 (24 GB of weights, gradients and AdamW
# state), a fifth of the 8B's 128 GB.
FULLFT_SHAPE = {"n_layers": 16, "hidden": 2048, "intermediate": 8192, "n_heads": 32, "n_kv_heads": 8, "vocab": 128256}
# The CPU's stand-ins: the same code on shapes a 2-core CPU trains in seconds (8B's 4:1 query-to-KV head ratio kept).
QUICK_SHAPE = {"n_layers": 2, "hidden": 64, "intermediate": 224, "n_heads": 8, "n_kv_heads": 2, "vocab": 4096}
QUICK_8B_SETTINGS = {
    "per_device_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "max_seq_length": 64,
    "eval_batch_size": 4,
}
SWEEP_SEQ_LEN = 128  # notebook 03's default seq_len: row 1 of the 8B sweep is projected at it
GB = 1e9


def random_llama(dims: Any, tokenizer: Any, dtype: str, device: str) -> Any:
    """A randomly initialised Llama of shape `dims` (`run.profiles.ModelDims`), built directly on `device` in `dtype`
    by the lab's one tiny-Llama builder, with the tokenizer's special token ids (inside the larger vocabulary)."""
    import torch

    from lab_utils.models.tiny import tiny_llama

    shape = {
        "vocab_size": dims.vocab,
        "hidden_size": dims.hidden,
        "intermediate_size": dims.intermediate,
        "num_hidden_layers": dims.n_layers,
        "num_attention_heads": dims.n_heads,
        "num_key_value_heads": dims.n_kv_heads,
        "tie_word_embeddings": dims.tie_embeddings,
    }
    with torch.device(device):
        return tiny_llama(tokenizer, dtype=dtype, max_position_embeddings=8192, rope_theta=500000.0, **shape)


def sft_trainer(
    ctx: Context, settings: Any, model: Any, tok: Any, train: Any, out: str, evals: Any = None, **args: Any
) -> Any:
    """TRL's SFTTrainer as the recipe builds it, on a model built in memory: the settings' `SFTConfig` arguments for
    this machine (`train.sft_kwargs`, with `args`), LoRA's `LoraConfig` unless the method is full."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from lab_utils.train.sft import lora_kwargs, sft_kwargs

    config = SFTConfig(**sft_kwargs(settings, out, ctx.hardware, ctx.hardware, **args))
    adapter = None if settings.method == "full" else LoraConfig(**lora_kwargs(settings))
    return SFTTrainer(
        model=model, args=config, train_dataset=train, eval_dataset=evals, processing_class=tok, peft_config=adapter
    )


def pocket_dataset(n: int) -> Any:
    """The first `n` pocket records as TRL's prompt/completion rows (each batch is then padded to the full length)."""
    from datasets import Dataset

    from lab_utils.data.alpaca import clean, load_records, to_prompt_completion

    records, _ = load_records(POCKET_DATA)
    return Dataset.from_list([to_prompt_completion(clean(r)) for r in records[:n]])


def _fp8_peak(ctx: Context, model: Any, tokenizer: Any) -> None:
    """04's FP8 simulation on the model as it stands, with its peak: the weights are rounded in place, so the peak
    stays near the weights' own size (a deep copy, the C5 finding, would double it)."""
    import torch

    from lab_utils.measure import fp8

    texts = ["The capital of France is Paris.", "Water boils at 100 degrees Celsius at sea level."]
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    with ctx.timed("fp8"):
        reference = fp8.greedy_tokens(model, tokenizer, texts)
        with fp8.fp8_weights(model) as rows:
            rounded = fp8.greedy_tokens(model, tokenizer, texts)
    ctx.put(weights_mb=round(weights_mb, 1))
    ctx.put(fp8_layers=len(rows), fp8_next_token_agreement=round(fp8.agreement(reference, rounded), 4))
    if ctx.cuda:
        peak = cuda_mb()
        ctx.put(fp8_peak_mb=peak, fp8_peak_above_weights_mb=round(peak - weights_mb, 1))
        ctx.check("the FP8 simulation holds no second copy of the weights (C5)", peak - weights_mb < 0.25 * weights_mb)


def build8b(ctx: Context) -> None:
    """A random Llama-3-8B-shaped model built on the GPU, trained as the llama3-8b profile trains (LoRA on a bf16
    base, its sequence length, micro-batch, accumulation and gradient checkpointing, through 02's trainer builder) for
    3 optimizer steps with every batch padded to the full length (the worst case), then one evaluation batch at the
    profile's eval batch size. Each peak plus the lab's 1 GB CUDA allowance must stay within the 24 GB the README
    gives for this profile; the FP8 simulation's peak is measured first."""
    require("trl", "datasets", "peft")
    import torch

    from lab_utils.core.profiles import ModelDims, get_profile
    from lab_utils.models.loading import free, load_dtype, load_tokenizer
    from lab_utils.models.memory import CUDA_OVERHEAD_GB, estimate_for_settings, profile_peak_gb
    from lab_utils.train.meter import PeakMemory

    prof = get_profile("llama3-8b")
    dims = ModelDims(**QUICK_SHAPE) if ctx.quick else prof.model.dims
    settings = replace(prof.train, max_steps=3, batching="padded", **(QUICK_8B_SETTINGS if ctx.quick else {}))
    tok = load_tokenizer(pocket_path())
    with ctx.timed("build"):
        model = random_llama(dims, tok, load_dtype(settings.method, settings.bf16, ctx.hardware), ctx.device)
    n_params = sum(p.numel() for p in model.parameters())
    ctx.put(shape=dims.__dict__, params=n_params)
    ctx.put(
        settings={
            k: getattr(settings, k)
            for k in (
                "method",
                "bf16",
                "max_seq_length",
                "per_device_batch_size",
                "gradient_accumulation_steps",
                "eval_batch_size",
                "gradient_checkpointing",
                "lora_r",
            )
        }
    )
    ctx.check("the model has the configured parameter count", n_params == dims.n_params())
    _fp8_peak(ctx, model, tok)

    per_step = settings.per_device_batch_size * settings.gradient_accumulation_steps
    train_ds = pocket_dataset(per_step * settings.max_steps)
    eval_ds = pocket_dataset(settings.eval_batch_size)
    overrides = {"save_strategy": "no", "eval_strategy": "no", "logging_steps": 1, "disable_tqdm": True}
    out, pad = str(ctx.work / "build8b"), settings.max_seq_length
    trainer = sft_trainer(ctx, settings, model, tok, train_ds, out, eval_ds, pad_to_multiple_of=pad, **overrides)
    meter = PeakMemory()
    with ctx.timed("train"), meter:
        trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    ctx.put(steps=trainer.state.global_step, losses=losses)
    ctx.put(train_peak_mb=round(meter.peak_mb(), 1), peak_kind=meter.kind)
    if ctx.cuda:
        ctx.put(train_peak_reserved_mb=cuda_mb("max_reserved"))
        torch.cuda.reset_peak_memory_stats()
    metrics = trainer.evaluate()
    ctx.put(eval_loss=metrics.get("eval_loss"), eval_batch=settings.eval_batch_size)
    estimate = estimate_for_settings(dims, settings).total_mb
    ctx.put(estimate_mb=round(estimate, 1), profile_training_gb=profile_peak_gb(prof)["training"])
    ctx.check("3 optimizer steps ran", trainer.state.global_step == 3)
    ctx.check("the losses are finite", bool(losses) and all(finite(x) for x in losses))
    ctx.check("the eval loss is finite", finite(metrics.get("eval_loss")))
    if ctx.cuda:
        eval_peak = cuda_mb()
        card = prof.min_memory_gb
        ctx.put(eval_peak_mb=eval_peak, eval_peak_reserved_mb=cuda_mb("max_reserved"), card_gb=card)
        ctx.put(estimate_error=round(estimate / meter.peak_mb() - 1, 3))
        ctx.check(
            f"training peak + {CUDA_OVERHEAD_GB:.0f} GB <= {card:.0f} GB",
            meter.peak_mb() / 1000 + CUDA_OVERHEAD_GB <= card,
        )
        ctx.check(
            f"evaluation peak + {CUDA_OVERHEAD_GB:.0f} GB <= {card:.0f} GB", eval_peak / 1000 + CUDA_OVERHEAD_GB <= card
        )
    del trainer, model
    free()


def fullft(ctx: Context) -> None:
    """C2: one full-fine-tuning step of a random ~1.5B fp32 Llama built on the GPU, as row 1 of the memory sweep
    trains (`memsweep.BASE`: fp32, micro-batch 2, padded to notebook 03's 128 tokens, optimizer state allocated before
    the step) with the lab's optimizer choice (`optimizer_for`: fused AdamW on CUDA). Its peak, projected to Llama-3-8B
    by parameter count, is compared with the estimator's row 1 for the 8B and with this GPU's memory. On CUDA torch's
    default (foreach) AdamW runs the same step too, for the difference C2 is about, and row 2 (bf16 mixed precision):
    whether autocast's bf16 weight copies, which the estimator counts, are alive at the CUDA peak."""
    require("trl", "datasets")
    import torch

    from lab_utils.core.profiles import LLAMA3_8B, ModelDims
    from lab_utils.models.loading import free, load_tokenizer
    from lab_utils.models.memory import autocast_copy_bytes, estimate_for_settings
    from lab_utils.train import memsweep
    from lab_utils.train.meter import PeakMemory
    from lab_utils.train.optstate import state_allocator
    from lab_utils.train.sft import optimizer_for

    dims = ModelDims(**(QUICK_SHAPE if ctx.quick else FULLFT_SHAPE))
    seq_len = SWEEP_SEQ_LEN
    settings = memsweep.BASE.settings(1, seq_len)
    tok = load_tokenizer(pocket_path())
    n_params = dims.n_params()
    data = pocket_dataset(memsweep.EFFECTIVE_BATCH)

    def step(label: str, settings: Any = settings, **optim: str) -> float:
        """One measured step on a fresh model: nothing of an earlier run's state is carried over."""
        model = random_llama(dims, tok, "float32", ctx.device)
        ctx.check(f"{label}: the model has the configured parameter count", model.num_parameters() == n_params)
        measure = {**memsweep.MEASURE_OVERRIDES, **optim}
        trainer = sft_trainer(
            ctx, settings, model, tok, data, str(ctx.work / label), pad_to_multiple_of=seq_len, **measure
        )
        trainer.add_callback(state_allocator())
        args = trainer.args
        meter = PeakMemory()
        with ctx.timed(f"{label}_step"), meter:
            trainer.train()
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        optim_name = str(getattr(args.optim, "value", args.optim))
        ctx.put(**{f"{label}_optim": optim_name, f"{label}_loss": losses[-1] if losses else None})
        ctx.put(peak_kind=meter.kind)  # on a CPU the process's resident memory: not comparable with the estimate
        del trainer, model
        free()
        return meter.peak_mb()

    chosen = optimizer_for(settings.method, settings.optim, ctx.cuda)
    copies = autocast_copy_bytes(dims, "bf16")
    peak = step("lab")
    estimate = estimate_for_settings(dims, settings).total_mb
    estimate_8b = estimate_for_settings(LLAMA3_8B.dims, settings).total_mb
    ratio = LLAMA3_8B.dims.n_params() / n_params
    ctx.put(shape=dims.__dict__, params=n_params, seq_len=seq_len, micro_batch=settings.per_device_batch_size)
    ctx.put(optimizer=chosen, peak_mb=round(peak, 1), bytes_per_param=round(peak * 1e6 / n_params, 2))
    ctx.put(estimate_mb=round(estimate, 1), estimate_error=round(estimate / peak - 1, 3))
    ctx.put(projected_8b_row1_gb=round(peak * ratio / 1000, 1), estimator_8b_row1_gb=round(estimate_8b / 1000, 1))
    ctx.put(projected_8b_by_estimate_error_gb=round(estimate_8b * peak / estimate / 1000, 1))
    ctx.check("the optimizer is the lab's choice", ctx.figures["lab_optim"] == chosen)
    ctx.check("the step's loss is finite", finite(ctx.figures["lab_loss"]))
    # Row 2 (bf16 mixed precision): the estimator counts autocast's bf16 copy of each matmul weight, which autograd
    # keeps for the backward pass (measured on the CPU). Whether that copy is still alive at the CUDA peak (where the
    # fp32 gradients may have replaced it) is this figure: the measured rise over row 1 against the estimated one.
    mixed = memsweep.BF16.settings(1, seq_len)
    bf16 = step("bf16", mixed)
    estimate_bf16 = estimate_for_settings(dims, mixed).total_mb
    ctx.put(bf16_peak_mb=round(bf16, 1), bf16_bytes_per_param=round(bf16 * 1e6 / n_params, 2))
    ctx.put(bf16_estimate_error=round(estimate_bf16 / bf16 - 1, 3), bf16_rise_over_row1_mb=round(bf16 - peak, 1))
    ctx.put(bf16_estimated_rise_mb=round(estimate_bf16 - estimate, 1), bf16_autocast_copies_mb=round(copies / 1e6, 1))
    if not ctx.cuda:
        return
    free_mb, total = (x / 1e6 for x in torch.cuda.mem_get_info())  # what the sweep compares its estimates with
    ctx.put(gpu_total_gb=round(total / 1000, 1), gpu_free_gb=round(free_mb / 1000, 1))
    ctx.check("on CUDA the lab's AdamW is the fused kernel", chosen == "adamw_torch_fused")
    ctx.check("fused AdamW's peak stays under 18 bytes per parameter", peak * 1e6 / n_params < 18)
    ctx.check("the estimate is within 25% of the measured peak", abs(estimate / peak - 1) <= 0.25)
    ctx.check("row 2's estimate is within 25% of its measured peak", abs(estimate_bf16 / bf16 - 1) <= 0.25)
    if free_mb > estimate_8b:  # a GPU on which the sweep runs row 1 (it skips it where the estimate is over)
        ctx.check("row 1 of the 8B sweep, projected, fits this GPU's free memory", peak * ratio < free_mb)
    foreach = step("foreach", optim="adamw_torch")
    ctx.put(foreach_peak_mb=round(foreach, 1), foreach_bytes_per_param=round(foreach * 1e6 / n_params, 2))
    ctx.put(foreach_projected_8b_row1_gb=round(foreach * ratio / 1000, 1))


STAGE_FUNCTIONS = {"build8b": build8b, "fullft": fullft}
