"""A measured memory sweep: identical short SFT jobs under each optimization, each in a fresh process.

Run one configuration by hand: `python -m lab_utils.memsweep --model DIR --config "7 LoRA" --steps 2`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lab_utils.memory import ModelDims, estimate_training_memory


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
        return {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}[self.optimizer]


# Few tokens per step, as in real fine-tuning (an 8B model at batch 1 x 1024 tokens holds more in weights and optimizer
# state than in activations): with many tokens per step, activations dominate and LoRA's extra ones can outweigh what
# it saves on a model this small.
EFFECTIVE_BATCH = 2
BASE = SweepConfig("1 baseline: full fp32")
CONFIGS: list[SweepConfig] = [
    BASE,
    replace(BASE, name="2 + bf16 mixed precision", precision="bf16"),
    replace(BASE, name="3 + gradient checkpointing", precision="bf16", gradient_checkpointing=True),
    replace(BASE, name="4 + gradient accumulation", precision="bf16", gradient_checkpointing=True, micro_batch=1,
            grad_accum=EFFECTIVE_BATCH),
    replace(BASE, name="5 + 8-bit AdamW", precision="bf16", gradient_checkpointing=True, micro_batch=1,
            grad_accum=EFFECTIVE_BATCH, optimizer="adamw_8bit"),
    replace(BASE, name="6 + paged 8-bit AdamW", precision="bf16", gradient_checkpointing=True, micro_batch=1,
            grad_accum=EFFECTIVE_BATCH, optimizer="paged_adamw_8bit"),
    replace(BASE, name="7 LoRA", method="lora"),
    replace(BASE, name="8 QLoRA", method="qlora", precision="bf16", optimizer="paged_adamw_8bit"),
    replace(BASE, name="9 QLoRA + gradient checkpointing", method="qlora", precision="bf16",
            optimizer="paged_adamw_8bit", gradient_checkpointing=True),
]


@dataclass(frozen=True)
class WideModel:
    """The wider pocket variant used for the sweep: big enough that the differences stand above the noise."""

    hidden_size: int = 768
    num_layers: int = 6
    num_heads: int = 12  # head_dim 64
    intermediate_size: int = 2048


def build_wide_model(out: Path, tokenizer_dir: str, wide: WideModel = WideModel(), seed: int = 0) -> Path:
    """Save a randomly initialised wide Llama (fp32 safetensors) with the pocket tokenizer; memory does not care
    whether the weights were pretrained."""
    from transformers import AutoTokenizer

    from lab_utils.pocket import PocketConfig, make_model

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = make_model(PocketConfig(hidden_size=wide.hidden_size, num_layers=wide.num_layers, num_heads=wide.num_heads,
                                    intermediate_size=wide.intermediate_size, seed=seed), tok)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def model_params(model_dir: str) -> int:
    """Parameter count of the sweep's model, from its config."""
    from transformers import AutoConfig

    return ModelDims.from_config(AutoConfig.from_pretrained(model_dir)).n_params()


def skip_reason(config: SweepConfig, hw: Any) -> str | None:
    """Why this hardware cannot run the configuration (None when it can)."""
    if config.method == "qlora" or "8bit" in config.optimizer:
        if not hw.bitsandbytes_version:
            return "bitsandbytes is not installed (4-bit weights and 8-bit optimizers need it)"
    if config.precision == "bf16" and not hw.bf16_supported:
        return f"{hw.name} has no bf16 support"
    return None


def estimate(config: SweepConfig, dims: ModelDims, seq_len: int, lora_r: int = 16) -> float:
    """The estimator's total for this configuration, in MB."""
    return estimate_training_memory(
        dims, config.method, config.precision, config.optimizer, config.micro_batch, seq_len,
        config.gradient_checkpointing, lora_r, attention="sdpa",
    ).total_mb


class _RssSampler:
    """Samples this process's resident memory in a thread; `peak` is the highest value seen (bytes)."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_config(config: SweepConfig, model_dir: str, data_path: str, steps: int, seq_len: int) -> dict[str, Any]:
    """Train `steps` optimizer steps under `config` in this process; measure peak RSS above the idle baseline."""
    import tempfile

    import psutil
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from lab_utils.data import clean, load_records, to_prompt_completion
    from lab_utils.train import load_model, lora_config
    from lab_utils.profiles import TrainSettings

    tok = AutoTokenizer.from_pretrained(model_dir)
    records, _ = load_records(data_path)
    n = steps * EFFECTIVE_BATCH
    ds = Dataset.from_list([to_prompt_completion(clean(r)) for r in records[:n]])
    baseline = psutil.Process().memory_info().rss
    # fp32 weights (bf16 runs are mixed precision over fp32 masters); QLoRA: NF4 weights, bf16 compute.
    model = load_model(model_dir, config.method, bf16=config.method == "qlora")
    peft = None if config.method == "full" else lora_config(TrainSettings(lora_r=16, lora_alpha=32))
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=config.micro_batch,
            gradient_accumulation_steps=config.grad_accum, learning_rate=1e-4, bf16=config.precision == "bf16",
            gradient_checkpointing=config.gradient_checkpointing, optim=config.optim_name(), max_length=seq_len,
            pad_to_multiple_of=seq_len, report_to="none", save_strategy="no", eval_strategy="no", logging_steps=1,
            disable_tqdm=True, use_cpu=not torch.cuda.is_available(), seed=0, dataloader_num_workers=0,
            include_num_input_tokens_seen="all",
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with _RssSampler() as sampler:
            trainer.train()
        seconds = time.perf_counter() - t0
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    rss_peak_mb = round((sampler.peak - baseline) / 1e6, 1)
    result = {
        "peak_memory_mb": rss_peak_mb,  # on a GPU replaced below by the CUDA allocator's peak
        "rss_peak_mb": rss_peak_mb,  # the process's resident memory: what counts on unified-memory machines too
        "baseline_rss_mb": round(baseline / 1e6, 1),
        "tokens_per_s": round(trainer.state.num_input_tokens_seen / seconds, 1),
        "loss_last": round(float(losses[-1]), 4) if losses else None,
        "seconds": round(seconds, 2),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if cuda:
        result["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 1e6, 1)
        result["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 1e6, 1)
        result["peak_memory_mb"] = result["cuda_max_allocated_mb"]
    return result


def run_in_fresh_process(config: SweepConfig, model_dir: str, data_path: str, steps: int, seq_len: int,
                         timeout: float = 600.0) -> dict[str, Any]:
    """Run one configuration in a new Python process (so one run's peak cannot leak into the next)."""
    cmd = [sys.executable, "-m", "lab_utils.memsweep", "--model", model_dir, "--data", data_path,
           "--config", config.name, "--steps", str(steps), "--seq-len", str(seq_len)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "TQDM_DISABLE": "1"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-12:])
        raise RuntimeError(f"memory sweep run {config.name!r} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def sweep(model_dir: str, data_path: str, hw: Any, steps: int = 2, seq_len: int = 256,
          configs: list[SweepConfig] | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Every configuration in turn: measured (or skipped, with the reason) beside the estimate."""
    from tqdm.auto import tqdm
    from transformers import AutoConfig

    dims = ModelDims.from_config(AutoConfig.from_pretrained(model_dir))
    rows = []
    for config in tqdm(configs or CONFIGS, desc="memory sweep", disable=not progress):
        row: dict[str, Any] = {"name": config.name, **asdict(config), "estimated_memory_mb": round(estimate(config, dims, seq_len), 1)}
        reason = skip_reason(config, hw)
        row.update({"ran": reason is None, "skipped_reason": reason})
        if reason is None:
            row.update(run_in_fresh_process(config, model_dir, data_path, steps, seq_len))
        else:
            row.update({"peak_memory_mb": None, "tokens_per_s": None, "loss_last": None})
        rows.append(row)
    return rows


def plot(rows: list[dict[str, Any]]) -> Any:
    """Measured vs estimated peak memory, and tokens/s, per configuration."""
    import matplotlib.pyplot as plt

    ran = [r for r in rows if r["ran"]]
    names = [r["name"] for r in ran]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    ys = range(len(ran))
    a.barh([y + 0.2 for y in ys], [r["peak_memory_mb"] for r in ran], height=0.4, label="measured", color="#4477aa")
    a.barh([y - 0.2 for y in ys], [r["estimated_memory_mb"] for r in ran], height=0.4, label="estimated", color="#bbbbbb")
    a.set_yticks(list(ys), names)
    a.invert_yaxis()
    a.set_xlabel("peak memory above idle (MB)")
    a.legend()
    b.barh(list(ys), [r["tokens_per_s"] for r in ran], color="#228833")
    b.set_xlabel("tokens/s")
    fig.suptitle("What each technique buys: memory and speed on this machine")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: run one configuration and print its measurements as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", required=True, choices=[c.name for c in CONFIGS])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args(argv)
    config = next(c for c in CONFIGS if c.name == args.config)
    print(json.dumps(run_config(config, args.model, args.data, args.steps, args.seq_len)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
