"""A measured memory sweep: identical short SFT jobs under each optimization, each in a fresh process.

The processes come from a fork server: one Python process imports torch, transformers, TRL, PEFT and bitsandbytes
once, before any model exists, then forks a child per configuration. Each child starts from the same idle state,
measures its own baseline after the fork and exits when done, so one run's memory cannot leak into the next, and
the imports (about 11 s on a slow CPU) are paid once instead of nine times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lab_utils.core.hardware import Hardware, compute_dtype
from lab_utils.core.paths import recipe
from lab_utils.core.profiles import TrainSettings
from lab_utils.data.alpaca import clean, load_records, skips_bad_rows, to_prompt_completion
from lab_utils.models.loading import bnb_kwargs, distinct_pad_token, load_kwargs
from lab_utils.models.memory import ModelDims, estimate_for_settings
from lab_utils.models.tiny import save_probe_model
from lab_utils.train.forkserver import ForkServer, SweepWorkerError, serve  # noqa: F401
from lab_utils.train.meter import PeakMemory
from lab_utils.train.optstate import state_allocator
from lab_utils.train.sft import lora_kwargs, sft_kwargs
from lab_utils.train.sweepmodel import model_dims


@dataclass(frozen=True)
class SweepConfig:
    """One row of the sweep: how the same job is trained."""

    name: str
    method: str = "full"  # full | lora | qlora
    precision: str = "fp32"  # fp32 | bf16 (mixed precision)
    gradient_checkpointing: bool = False
    micro_batch: int = 2
    grad_accum: int = 1
    optimizer: str = "adamw"  # adamw | adamw_8bit | paged_adamw_8bit

    def optim_name(self) -> str:
        """The transformers `optim` value."""
        return {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}[
            self.optimizer
        ]

    def settings(self, steps: int, seq_len: int, base: TrainSettings = TrainSettings()) -> TrainSettings:
        """The lab's training settings for this row (LoRA rank, alpha and targets from `base`): the sweep trains
        through the same `train.sft_kwargs` as notebook 02, so a new row is one line in CONFIGS."""
        return replace(
            base,
            method=self.method,
            max_steps=steps,
            learning_rate=1e-4,
            per_device_batch_size=self.micro_batch,
            gradient_accumulation_steps=self.grad_accum,
            max_seq_length=seq_len,
            bf16=self.precision == "bf16",
            gradient_checkpointing=self.gradient_checkpointing,
            optim=self.optim_name(),
            batching="padded",
            seed=0,
        )


# What a measurement run changes on top of the training settings: every batch padded to the full length (so each
# row holds the same tokens), no checkpoints, no evaluation, a log line per step, padding counted as tokens.
MEASURE_OVERRIDES: dict[str, Any] = {
    "save_strategy": "no",
    "eval_strategy": "no",
    "logging_steps": 1,
    "disable_tqdm": True,
    "include_num_input_tokens_seen": "all",
    "warmup_steps": 0,
}


# Few tokens per step, as in real fine-tuning (an 8B model at batch 1 x 1024 tokens holds more in weights and optimizer
# state than in activations): with many tokens per step, activations dominate and LoRA's extra ones can outweigh what
# it saves on a model this small.
EFFECTIVE_BATCH = 2
# Each row adds one technique to the row it names (the "+" rows build up, as in the notebook's story); a new row is one
# line here: it is trained through train.sft_kwargs and estimated like every other.
BASE = SweepConfig("1 baseline: full fp32")
BF16 = replace(BASE, name="2 + bf16 mixed precision", precision="bf16")
CHECKPOINTING = replace(BF16, name="3 + gradient checkpointing", gradient_checkpointing=True)
ACCUMULATION = replace(CHECKPOINTING, name="4 + gradient accumulation", micro_batch=1, grad_accum=EFFECTIVE_BATCH)
QLORA = replace(BASE, name="8 QLoRA", method="qlora", precision="bf16", optimizer="paged_adamw_8bit")
CONFIGS: list[SweepConfig] = [
    BASE,
    BF16,
    CHECKPOINTING,
    ACCUMULATION,
    replace(ACCUMULATION, name="5 + 8-bit AdamW", optimizer="adamw_8bit"),
    replace(ACCUMULATION, name="6 + paged 8-bit AdamW", optimizer="paged_adamw_8bit"),
    replace(BASE, name="7 LoRA", method="lora"),
    QLORA,
    replace(QLORA, name="9 QLoRA + gradient checkpointing", gradient_checkpointing=True),
]


def skip_reason(
    config: SweepConfig, hw: Any, estimate_mb: float | None = None, budget_mb: float | None = None
) -> str | None:
    """Why `hw` cannot run the configuration (None when it can): a missing package, or an estimate above the memory
    it has free (so full fine-tuning of an 8B model is skipped on a 24 GB GPU instead of crashing). A GPU without
    native bf16 runs the bf16 rows in fp16 (`train.mixed_precision`), so they are not skipped (see `precision_note`)."""
    if config.method == "qlora" or "8bit" in config.optimizer:
        if not hw.bitsandbytes_version:
            return "bitsandbytes is not installed (4-bit weights and 8-bit optimizers need it)"
    if estimate_mb is not None and budget_mb is not None and estimate_mb > budget_mb:
        return f"estimated {estimate_mb / 1000:,.1f} GB > {budget_mb / 1000:,.1f} GB free on {hw.name}"
    return None


def memory_budget_mb(hw: Any) -> float:
    """Memory a configuration may use on `hw`, in MB: what the CUDA device has free when `hw` is this machine's GPU;
    the described memory otherwise (a rehearsal decides for its target GPU); on a CPU, the RAM available now."""
    if hw.device == "cuda":
        import torch

        if torch.cuda.is_available() and torch.cuda.get_device_name(0) == hw.name:
            return torch.cuda.mem_get_info(0)[0] / 1e6
        return hw.memory_gb * 1000
    import psutil

    return psutil.virtual_memory().available / 1e6


def precision_note(config: SweepConfig, hw: Any) -> str | None:
    """Where the bf16 rows run in fp16 instead: a GPU below compute capability 8.0 (T4, V100)."""
    if uses_bf16(config) and compute_dtype(hw) == "float16":
        return f"runs in fp16 on {hw.name} (no native bf16): the same bytes per value"
    return None


def uses_bf16(config: SweepConfig) -> bool:
    """True when the configuration computes in bf16 (mixed precision, or QLoRA's bf16 compute dtype)."""
    return config.precision == "bf16" or config.method == "qlora"


def steps_for(config: SweepConfig, hw: Any, steps: int) -> tuple[int, str | None]:
    """Optimizer steps to run for `config` here, and the note that explains a reduction.

    On a CPU without native bf16 (no AVX512_BF16/AMX), bf16 matmuls are emulated about 25-50x slower than fp32, so the
    bf16 configurations run one step (the same data per step as every other row). One step shows the same peak as
    two, because the optimizer state is allocated before the first step (see `run_config`); only tokens/s is low."""
    if uses_bf16(config) and hw.device == "cpu" and not getattr(hw, "bf16_native", True) and steps > 1:
        return 1, (
            "bf16 is emulated on this CPU (no AVX512_BF16/AMX): 1 step instead of "
            f"{steps}, and tokens/s is far below fp32's; the peak memory is measured the same way"
        )
    return steps, None


def estimate(config: SweepConfig, dims: ModelDims, seq_len: int) -> float:
    """The estimator's total for this configuration, in MB (from the same TrainSettings the run trains with)."""
    return estimate_for_settings(dims, config.settings(1, seq_len)).total_mb


def select_configs(numbers: str) -> list[SweepConfig]:
    """Configurations by their numbers, e.g. "1,7" (rows 1 and 7); empty: all of them."""
    if not numbers.strip():
        return list(CONFIGS)
    by_number = {c.name.split()[0]: c for c in CONFIGS}
    wanted = [n.strip() for n in numbers.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_number]
    if unknown:
        raise ValueError(f"configs={numbers!r}: no configuration {', '.join(unknown)}; choose from 1-{len(CONFIGS)}")
    return [by_number[n] for n in wanted]


def sft_args(
    config: SweepConfig, steps: int, seq_len: int, output_dir: str, hardware: Hardware, machine: Hardware
) -> dict[str, Any]:
    """The `SFTConfig` arguments a row trains with: its settings, every sequence padded to `seq_len`."""
    settings = config.settings(steps, seq_len)
    return sft_kwargs(settings, output_dir, hardware, machine, pad_to_multiple_of=seq_len, **MEASURE_OVERRIDES)


def run_config(
    config: SweepConfig, model_dir: str, data_path: str, steps: int, seq_len: int, hardware: Hardware, machine: Hardware
) -> dict[str, Any]:
    """Train `steps` optimizer steps under `config` in this process; measure peak RSS above the idle baseline.
    Precision is decided for `hardware` (a rehearsal's target), the device for `machine`."""
    import tempfile

    import torch
    from transformers import AutoTokenizer

    records, _ = load_records(data_path, skip_bad=skips_bad_rows(data_path))  # hub data: bad rows skipped
    n = steps * EFFECTIVE_BATCH  # the same first examples for every configuration: step k sees the same data
    meter = PeakMemory()  # the idle baseline: after the fork, before the model loads
    settings = config.settings(steps, seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"
        data.write_text("".join(json.dumps(to_prompt_completion(clean(r))) + "\n" for r in records[:n]))
        # The recipe's sections for this row: fp32 weights (bf16 rows are mixed precision over fp32 masters), QLoRA's
        # NF4 weights computing in the 16-bit dtype; trained by the recipe's own trainer builder.
        load = load_kwargs(config.method, config.method == "qlora", hardware, machine.device == "cuda")
        pad = distinct_pad_token(AutoTokenizer.from_pretrained(model_dir))
        sections = {
            "method": config.method,
            "model": {"pretrained_model_name_or_path": model_dir, **load},
            "tokenizer": {"pad_token": pad},
            "data": {"train_file": str(data), "eval_file": str(data), "max_length": seq_len},
            "bnb": bnb_kwargs("qlora", hardware),
            "lora": lora_kwargs(settings),
            "sft": sft_args(config, steps, seq_len, tmp, hardware, machine),
        }
        trainer, _, _ = recipe("sft").build(sections)
        trainer.add_callback(state_allocator())
        model = trainer.model
        t0 = time.perf_counter()
        with meter:
            trainer.train()
        seconds = time.perf_counter() - t0
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    rss_peak_mb = round(meter.above_idle_mb(), 1)
    result = {
        "peak_memory_mb": rss_peak_mb,  # on a GPU replaced below by the CUDA allocator's peak
        "rss_peak_mb": rss_peak_mb,  # the process's resident memory: what counts on unified-memory machines too
        "baseline_rss_mb": round(meter.baseline / 1e6, 1),
        "tokens_per_s": round(trainer.state.num_input_tokens_seen / seconds, 1),
        "loss_last": round(float(losses[-1]), 4) if losses else None,
        "seconds": round(seconds, 2),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if meter.cuda:
        result["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 1e6, 1)
        result["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 1e6, 1)
        result["peak_memory_mb"] = result["cuda_max_allocated_mb"]
    return result


def _run_request(request: dict[str, Any]) -> dict[str, Any]:
    """The fork server's child: one configuration of the sweep, as `sweep` requested it."""
    config = next(c for c in CONFIGS if c.name == request["config"])
    hardware, machine = Hardware.from_dict(request["hardware"]), Hardware.from_dict(request["machine"])
    return run_config(
        config, request["model"], request["data"], request["steps"], request["seq_len"], hardware, machine
    )


def fixed_overhead_mb(
    server: ForkServer, model_dir: str, data_path: str, steps: int, seq_len: int, timeout: float, on: dict[str, Any]
) -> float:
    """What training costs on this machine beyond the estimator's terms (autograd, the trainer, allocator slack): the
    baseline row trained on a 1-layer, 32-wide model with the same tokenizer and data, its peak minus its estimate
    (0 where that run fails: the estimate is then the estimator's terms alone)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        probe_dir = str(save_probe_model(model_dir, tmp))
        request = {"config": BASE.name, "model": probe_dir, "data": data_path, "steps": steps, "seq_len": seq_len, **on}
        try:
            measured = server.run(request, "fixed-overhead probe", timeout=timeout)["peak_memory_mb"]
        except SweepWorkerError:
            return 0.0
        return round(max(0.0, measured - estimate(BASE, model_dims(probe_dir), seq_len)), 1)


def sweep(
    model_dir: str,
    data_path: str,
    hw: Any,
    steps: int = 2,
    seq_len: int = 256,
    configs: list[SweepConfig] | None = None,
    progress: bool = True,
    log_dir: str | Path | None = None,
    timeout: float = 900.0,
    target: Any | None = None,
    target_dims: ModelDims | None = None,
) -> list[dict[str, Any]]:
    """Every configuration in turn, each in a fresh child of one fork server: measured (or skipped, with the
    reason) beside the estimate, with a progress line as each starts and ends. Whether a configuration fits is
    decided for `target` (default `hw`) with `target_dims` (default the swept model's): a rehearsal decides for the
    profile's GPU and real model while it trains a stand-in here."""
    import tempfile

    dims = model_dims(model_dir)
    target = target or hw
    budget = memory_budget_mb(target)
    chosen = configs or CONFIGS
    log = Path(log_dir or tempfile.mkdtemp()) / "memsweep-worker.log"
    rows = []
    t0 = time.perf_counter()
    with ForkServer(log, hw.device == "cuda") as server:
        say = print if progress else (lambda *a, **k: None)
        say(
            f"memory sweep: training stack imported once in {server.import_seconds} s; {len(chosen)} configurations",
            flush=True,
        )
        on = {"hardware": target.to_dict(), "machine": hw.to_dict()}  # what the children decide for
        overhead = fixed_overhead_mb(server, model_dir, data_path, steps, seq_len, timeout, on)
        say(
            f"memory sweep: this machine's fixed training overhead, measured on a tiny model: {overhead:.0f} MB",
            flush=True,
        )
        for i, config in enumerate(chosen, start=1):
            analytic = estimate(config, dims, seq_len)
            row: dict[str, Any] = {
                "name": config.name,
                **asdict(config),
                "analytic_estimate_mb": round(analytic, 1),
                "estimate_overhead_mb": overhead,
                "estimated_memory_mb": round(analytic + overhead, 1),
            }
            decided = estimate(config, target_dims or dims, seq_len)
            row["target_estimate_mb"] = round(decided, 1)
            reason = skip_reason(config, hw) or skip_reason(config, target, decided, budget)
            n_steps, note = steps_for(config, hw, steps)
            note = "; ".join(n for n in (note, precision_note(config, target)) if n) or None
            row.update({"ran": reason is None, "skipped_reason": reason, "steps": n_steps, "note": note})
            if reason is not None:
                say(f"[{i}/{len(chosen)}] {config.name}: skipped ({reason})", flush=True)
                row.update({"peak_memory_mb": None, "tokens_per_s": None, "loss_last": None})
                rows.append(row)
                continue
            say(
                f"[{i}/{len(chosen)}] {config.name}: running {n_steps} step(s)" + (f" - {note}" if note else ""),
                flush=True,
            )
            request = {
                "config": config.name,
                "model": model_dir,
                "data": data_path,
                "steps": n_steps,
                "seq_len": seq_len,
                **on,
            }
            try:
                row.update(server.run(request, config.name, timeout=timeout))
            except SweepWorkerError as e:  # one failed row (out of memory, a kernel missing) does not stop the sweep
                first = str(e).splitlines()[0]
                say(f"[{i}/{len(chosen)}] {config.name}: FAILED ({first})", flush=True)
                row.update(
                    {
                        "ran": False,
                        "skipped_reason": f"failed: {first}",
                        "peak_memory_mb": None,
                        "tokens_per_s": None,
                        "loss_last": None,
                    }
                )
                rows.append(row)
                continue
            row["estimate_error"] = round(row["estimated_memory_mb"] / row["peak_memory_mb"] - 1, 3)
            say(
                f"[{i}/{len(chosen)}] {config.name}: done in {row['seconds']:.1f} s, peak {row['peak_memory_mb']:.0f} MB "
                f"(estimate {row['estimated_memory_mb']:.0f}), {row['tokens_per_s']:.0f} tokens/s "
                f"[{time.perf_counter() - t0:.0f} s so far]",
                flush=True,
            )
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """The fork server's entry point (`python -m lab_utils.train.memsweep --serve`, started by `sweep`)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help="run as the sweep's fork server (reads requests on stdin)")
    parser.add_argument("--cuda", action="store_true", help="the machine has a CUDA GPU (preload for it)")
    args = parser.parse_args(argv)
    if not args.serve:
        parser.error("--serve is the only mode: the sweep itself runs from notebook 03 (`memsweep.sweep`)")
    return serve(_run_request, args.cuda)


if __name__ == "__main__":
    sys.exit(main())
