"""The GPU check's stages (`scripts/gpu_check.py` runs each in a child process of its own): the assertions of issue 19
that only a GPU can show, each also runnable on a CPU at a scaled-down size so that CI keeps the code paths alive.

A stage is a function of a `Context`: it records its figures (`ctx.put`) and named checks (`ctx.check`), raises `Skip`
when a package it needs is missing, and any other exception fails it with the figures gathered so far kept. The two
large-model stages (build8b, fullft) are in `gpu_check_big.py`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POCKET_DATA = "data/pocket_alpaca/train.jsonl"
POCKET_HELDOUT = "data/pocket_alpaca/heldout.jsonl"


class Skip(Exception):
    """The stage cannot run here (a package is missing, or the stage needs a GPU); the message says why."""


class Context:
    """What a stage runs with (device, size, scratch folder) and what it records (figures, named checks)."""

    def __init__(self, device: str, quick: bool, work: Path) -> None:
        self.device = device
        self.cuda = device == "cuda"
        self.quick = quick
        self.work = work
        self.figures: dict[str, Any] = {}
        self.checks: dict[str, bool] = {}

    @property
    def hardware(self) -> Any:
        """This machine, probed once: what the stages' arguments are decided for (the check is its own entry point)."""
        if not hasattr(self, "_hardware"):
            from lab_utils.core.hardware import probe

            self._hardware = probe()
        return self._hardware

    def put(self, **figures: Any) -> None:
        """Record figures (JSON-able values)."""
        self.figures.update(figures)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Record how long a phase took, as the figure `<phase>_s`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.figures[f"{phase}_s"] = round(time.perf_counter() - t0, 1)

    def check(self, name: str, ok: Any) -> bool:
        """Record a named assertion; a failed one fails the stage, after the rest has run."""
        self.checks[name] = bool(ok)
        print(f"check {'ok' if ok else 'FAILED'}: {name}", flush=True)
        return bool(ok)


def require(*modules: str) -> None:
    """Import each module, or skip the stage naming what is missing (and why it would not import)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - an ImportError, or a broken native library
            missing.append(f"{name} ({type(e).__name__}: {str(e)[:160]})")
    if missing:
        raise Skip("missing: " + "; ".join(missing))


def finite(x: Any) -> bool:
    """A real, finite number."""
    return isinstance(x, (int, float)) and math.isfinite(x)


def cuda_mb(kind: str = "max_allocated") -> float:
    """torch.cuda's memory figure `kind` (max_allocated, max_reserved, allocated), in MB (10^6 bytes)."""
    import torch

    return round(getattr(torch.cuda, f"memory_{kind}" if kind == "allocated" else f"{kind}_memory")() / 1e6, 1)


def pocket_path() -> str:
    """The shipped pocket base model's folder."""
    from lab_utils.models.pocket import pocket_model_path

    return str(pocket_model_path())


def heldout_prompts(n: int) -> list[str]:
    """The first `n` of the pocket profile's held-out questions as Alpaca prompts."""
    from lab_utils.measure.evaluate import prompts_for

    records = [json.loads(line) for line in (ROOT / POCKET_HELDOUT).read_text().splitlines() if line.strip()]
    return prompts_for(records[:n])


# --- c1_fork ----------------------------------------------------------------------------------------------------------

# The fork server's preamble (train/forkserver.py `serve`), in a fresh interpreter: the modules a GPU machine's server
# imports before it forks, then what it imports unconditionally. Run on a CPU too, with the GPU's list.
PRELOAD_PROBE = """
import json, os, sys
os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # asked through NVML: the question does not initialize CUDA
import torch
from lab_utils.train import forkserver as f
gpu = torch.cuda.is_available()
preloaded = f.preload_modules(True)
f.preload(cuda=True)  # exactly what the server imports before it forks, with a GPU
import torch
print(json.dumps({"gpu_present": gpu, "preloaded": list(preloaded), "server_list_here": list(f.preload_modules(gpu)),
                  "unsafe_loaded": [m for m in f.CUDA_UNSAFE_BEFORE_FORK if m in sys.modules],
                  "cuda_initialized": torch.cuda.is_initialized()}))
"""

PLAIN_FORK = """
import json, os, torch
torch.zeros(1, device="cuda")  # CUDA is initialized in this process
read_fd, write_fd = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read_fd)
    try:
        torch.zeros(1, device="cuda")
        message = "ok"
    except Exception as e:
        message = f"{type(e).__name__}: {e}"
    os.write(write_fd, message.encode()[:2000])
    os._exit(0)
os.close(write_fd)
message = os.read(read_fd, 4000).decode()
os.waitpid(pid, 0)
print(json.dumps({"child": message}))
"""


def _python_json(code: str, timeout: float) -> dict[str, Any]:
    """Run `code` in a fresh interpreter (this one's environment) and read the JSON its last line prints."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"exit code {done.returncode}: {done.stderr.strip()[-800:]}")
    return json.loads(lines[-1])


def c1_fork(ctx: Context) -> None:
    """C1: the memory sweep's fork server must not fork a process whose CUDA is initialized. On any machine: what the
    server imports before it forks (the GPU's list), in a fresh interpreter. On CUDA also: importing bitsandbytes
    initializes CUDA (the finding's premise), a plain fork after CUDA initialization fails in the child, and the lab's
    fork server runs a sweep row on the GPU."""
    probe = _python_json(PRELOAD_PROBE, timeout=240)
    ctx.put(preloaded=probe["preloaded"], unsafe_loaded_before_fork=probe["unsafe_loaded"])
    ctx.put(cuda_initialized_before_fork=probe["cuda_initialized"], nvml_sees_gpu=probe["gpu_present"])
    ctx.check(
        "the server preloads none of bitsandbytes, peft, trl",
        not set(probe["preloaded"]) & {"bitsandbytes", "peft", "trl"},
    )
    ctx.check("nothing the server imports loads bitsandbytes, peft or trl", probe["unsafe_loaded"] == [])
    ctx.check("CUDA is not initialized before the fork", not probe["cuda_initialized"])
    if not ctx.cuda:
        ctx.put(plain_fork="not run: no CUDA here", fork_server_row="not run: no CUDA here")
        return
    ctx.check("on this GPU machine the server uses the GPU's list", probe["server_list_here"] == probe["preloaded"])
    bnb = _python_json(
        "import json, torch\ntry:\n    import bitsandbytes\n    ok = True\nexcept Exception:\n    ok = False\n"
        "print(json.dumps({'imported': ok, 'cuda_initialized': torch.cuda.is_initialized()}))",
        timeout=120,
    )
    ctx.put(bitsandbytes_import_initializes_cuda=bnb["cuda_initialized"] if bnb["imported"] else "not installed")
    plain = _python_json(PLAIN_FORK, timeout=120)["child"]
    ctx.put(plain_fork_child=plain)
    ctx.check("a plain fork after CUDA initialization fails in the child", "re-initialize CUDA" in plain)
    from lab_utils.core.hardware import probe
    from lab_utils.train import memsweep

    here = probe().to_dict()  # the GPU decides for itself
    request = {"config": "7 LoRA", "model": pocket_path(), "data": POCKET_DATA, "steps": 1, "seq_len": 64}
    request.update(hardware=here, machine=here)
    try:
        with memsweep.ForkServer(ctx.work / "forkserver.log", cuda=True) as server:
            row = server.run(request, "gpu-check row", timeout=150)
        ctx.put(fork_server_import_seconds=server.import_seconds, fork_server_row=row)
        ctx.check("the fork server's child trained a row on the GPU", row.get("cuda_max_allocated_mb", 0) > 0)
    except Exception as e:  # noqa: BLE001 - recorded as the figure and a failed check
        log = (ctx.work / "forkserver.log").read_text(errors="replace")[-1500:]
        ctx.put(fork_server_row=f"{type(e).__name__}: {str(e)[:600]}", fork_server_log_tail=log)
        ctx.check("the fork server's child trained a row on the GPU", False)


# --- lora20 -----------------------------------------------------------------------------------------------------------


def recipe_config(ctx: Context, name: str, prof: Any, target: Any = None, **sft: Any) -> tuple[Path, Any]:
    """The run's config.yaml for `prof` on this machine (precision decided for `target`, default this machine), as 02
    writes it, with some SFTConfig values changed; and the resolved run."""
    from dataclasses import replace

    import yaml

    from lab_utils.lab import config_file, runconfig

    cfg = replace(runconfig.resolve("pocket", ctx.hardware), profile=prof, target=target)
    path, _ = config_file.write_config(cfg, ctx.work / name, ctx.work / f"{name}-config")
    config = yaml.safe_load(path.read_text())
    config["sft"].update(sft)
    path.write_text(yaml.safe_dump(config))
    return path, cfg


def lora20(ctx: Context) -> None:
    """LoRA in bf16 on the pocket model through `recipes/sft.py` (what 02's cells run): GPU peak, finite losses, the
    trained model freed before the merge loads its base (C4), the merge and the merge check on CUDA, and the FP8
    simulation's next-token agreement with the tokenizer's output moved to the GPU (C8). On a CPU: 3 steps of 4
    examples in fp32 (bf16 is emulated on most CPUs, 25-50x slower) on the data's first 96 records."""
    require("trl", "datasets", "peft")
    import contextlib
    import gc
    import io
    import re
    import weakref

    from lab_utils.core.paths import recipe
    from lab_utils.core.profiles import get_profile
    from lab_utils.train.meter import PeakMemory

    steps = 3 if ctx.quick else 20
    prof = get_profile("pocket").with_train(
        method="lora", max_steps=steps, bf16=ctx.cuda, logging_steps=1, eval_steps=steps, save_steps=10 * steps
    )
    if ctx.quick:  # the first records only: the same code with a fraction of the tokenizing and evaluating
        small = ctx.work / "pocket_small.jsonl"
        small.write_text("\n".join((ROOT / POCKET_DATA).read_text().splitlines()[:96]) + "\n")
        prof = replace(prof, dataset=str(small)).with_train(per_device_batch_size=4)
    path, cfg = recipe_config(ctx, "lora20", prof, save_strategy="no", eval_strategy="no")
    sft, loaded, alive = recipe("sft"), [], []
    real = sft.AutoModelForCausalLM

    class Watched:  # every model the recipe loads (weak references), and which are alive when the next one loads
        @staticmethod
        def from_pretrained(*args: Any, **kwargs: Any) -> Any:
            alive.append([r() is not None for r in loaded])
            model = real.from_pretrained(*args, **kwargs)
            loaded.append(weakref.ref(model))
            return model

    sft.AutoModelForCausalLM, meter, printed = Watched, PeakMemory(), io.StringIO()
    gc.disable()  # freed by the recipe itself, not by a lucky automatic collection
    try:
        with ctx.timed("train"), meter, contextlib.redirect_stdout(printed):
            sft.main(["--config", str(path)])
    finally:
        gc.enable()
        sft.AutoModelForCausalLM = real
    print(printed.getvalue(), end="")
    found = re.search(r"eval loss ([\d.naninf]+) -> ([\d.naninf]+)", printed.getvalue())
    before, after = (float(x) for x in found.groups()) if found else (None, None)
    out = ctx.work / "lora20"
    logs = json.loads((out / "log_history.json").read_text())
    losses = [r["loss"] for r in logs if "loss" in r]
    freed = len(alive) == 2 and alive[1] == [False]
    ctx.put(
        steps=max(r.get("step", 0) for r in logs),
        train_loss_first=losses[0] if losses else None,
        train_loss_last=losses[-1] if losses else None,
        eval_loss_before=before,
        eval_loss=after,
        peak_memory_mb=round(meter.peak_mb(), 1),
        peak_memory_kind=meter.kind,
        models_loaded=len(loaded),
        model_freed=freed,
    )
    ctx.check(f"{steps} steps ran", ctx.figures["steps"] == steps)
    ctx.check("train and eval losses are finite", bool(losses) and all(map(finite, (losses[-1], after, before))))
    ctx.check("the trained model is freed before the merge loads the base (C4)", freed)
    if ctx.cuda:
        ctx.put(cuda_allocated_after_train_mb=cuda_mb("allocated"))
        ctx.check("the peak is CUDA's", meter.kind == "cuda_max_allocated" and meter.peak_mb() > 0)
    _merge_and_fp8(ctx, out, cfg)


def _merge_and_fp8(ctx: Context, out: Path, cfg: Any) -> None:
    """The recipe's merged folder (`out/merged`): its serving facts, the merge check (merged vs base + adapter, one
    model at a time, on the GPU where there is one), then 04's FP8 simulation on the merged model."""
    import torch
    import yaml

    from lab_utils.measure import fp8
    from lab_utils.measure.evaluate import merge_check
    from lab_utils.models.loading import free, load_for_eval
    from lab_utils.models.merge import check_merged

    base, merged, adapter_dir = pocket_path(), out / "merged", str(out / "adapter")
    dtype = yaml.safe_load((ctx.work / "lora20-config" / "config.yaml").read_text())["merge"]["dtype"]
    facts = check_merged(merged)
    ctx.put(merge_dtype=dtype, merged_facts=facts)
    ctx.check("the merged folder is servable", facts["safetensors_only"] and facts["has_chat_template"])
    ctx.check("the merged folder has no quantization config", not facts["has_quantization_config"])
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    with ctx.timed("merge_check"):
        prompts = heldout_prompts(2 if ctx.quick else 8)
        check = merge_check(str(merged), base, adapter_dir, prompts, 8 if ctx.quick else 32, load=cfg.eval_load)
    ctx.put(merge_check=check, merge_check_cuda_peak_mb=cuda_mb() if ctx.cuda else None)
    ctx.check("merged and base + adapter agree (greedy >= 0.5)", check["greedy_agreement"] >= 0.5)
    bound = 1e-3 if check["dtype"] == dtype == "float32" else 1.0  # fp32: exact up to rounding; 16-bit: rounded once
    ctx.check(f"largest next-token logit difference < {bound:g}", check["max_logit_difference"] < bound)
    if ctx.cuda:
        ctx.check("the merge check ran on the GPU in 16 bits", check["dtype"] == dtype and cuda_mb() > 0)

    model, tok = load_for_eval(str(merged), cfg.eval_load)
    texts = heldout_prompts(4) + ["The capital of France is Paris.", "Water boils at 100 degrees."]
    with ctx.timed("fp8"):
        reference = fp8.greedy_tokens(model, tok, texts)
        with fp8.fp8_weights(model) as rows:
            rounded = fp8.greedy_tokens(model, tok, texts)
        restored = fp8.greedy_tokens(model, tok, texts)
    summary = fp8.summary(rows)
    agreement = fp8.agreement(reference, rounded)
    size = next(model.parameters()).element_size()
    ctx.put(fp8_next_token_agreement=round(agreement, 4), fp8_summary=summary, fp8_model_device=str(model.device))
    ctx.put(fp8_model_dtype=str(next(model.parameters()).dtype))
    ctx.check(f"FP8 weights take 1 of the {size} bytes per weight", abs(summary["memory_ratio"] - 1 / size) < 0.02)
    ctx.check("FP8 next-token agreement >= 0.5", agreement >= 0.5)
    ctx.check("the 16-bit weights are back after the block", fp8.agreement(reference, restored) == 1.0)
    if ctx.cuda:
        ctx.check("the FP8 simulation ran on the GPU (C8)", str(model.device).startswith("cuda"))
    del model
    free()


# --- qlora_fp16 -------------------------------------------------------------------------------------------------------


def qlora_fp16(ctx: Context) -> None:
    """C3: QLoRA under fp16 mixed precision, as on a T4 (precision decided for a described T4 on this GPU): bitsandbytes'
    4-bit base, TRL's trainer, the recipe's `fp32_adapters`; a few steps with finite losses and the grad scaler working.
    Without the fix first, to show what it fixes. On a CPU: TRL's bf16 cast and the fix on the CPU's 4-bit path."""
    require("trl", "datasets", "peft", "bitsandbytes")
    import torch
    import yaml

    from lab_utils.core.hardware import DESCRIBED
    from lab_utils.core.paths import recipe
    from lab_utils.core.profiles import get_profile
    from lab_utils.models.loading import free

    steps = 2 if ctx.quick else 8
    prof = get_profile("pocket").with_train(method="qlora", max_steps=steps, bf16=True, logging_steps=1)
    overrides = {"save_strategy": "no", "eval_strategy": "no", "disable_tqdm": True}
    sft = recipe("sft")
    if not ctx.cuda:
        path, _ = recipe_config(ctx, "qlora", prof, **overrides)
        trainer, _, _ = sft.build(yaml.safe_load(path.read_text()))
        adapters = [p for p in trainer.model.parameters() if p.requires_grad]
        frozen = [p.dtype for p in trainer.model.parameters() if not p.requires_grad]
        ctx.put(adapters=len(adapters), adapter_dtypes_from_trl=sorted({str(p.dtype) for p in adapters}))
        ctx.check("TRL casts the 4-bit model's adapters to bf16", {p.dtype for p in adapters} == {torch.bfloat16})
        ctx.check("not fp16 here: the adapters are left as TRL made them", not trainer.args.fp16)
        cast = sft.fp32_adapters(trainer.model)
        ctx.put(cast_under_fp16=cast, adapter_dtypes_fixed=sorted({str(p.dtype) for p in adapters}))
        ctx.check(
            "under fp16 every adapter is fp32", cast == len(adapters) and {p.dtype for p in adapters} == {torch.float32}
        )
        ctx.check(
            "the frozen base is untouched",
            [p.dtype for p in trainer.model.parameters() if not p.requires_grad] == frozen,
        )
        ctx.put(trained="not here: the fp16 loss scaler, what C3 is about, runs on CUDA only")
        return

    # As on a T4: fp16 autocast, fp16 4-bit compute and storage (decided for the described T4, run on this GPU).
    path, _ = recipe_config(ctx, "qlora", prof, target=DESCRIBED["t4"], **overrides)
    config = yaml.safe_load(path.read_text())
    fix = sft.fp32_adapters
    sft.fp32_adapters = lambda model: 0  # without the fix: TRL's adapters as it made them
    try:
        trainer, _, _ = sft.build(config, max_steps=1)
        ctx.put(
            without_fix_adapter_dtypes=sorted({str(p.dtype) for p in trainer.model.parameters() if p.requires_grad})
        )
        try:
            trainer.train()
            ctx.put(without_fix="trained")
        except Exception as e:  # noqa: BLE001 - the crash C3 describes, recorded
            ctx.put(without_fix=f"{type(e).__name__}: {str(e)[:300]}")
        del trainer
        free()
    finally:
        sft.fp32_adapters = fix
    trainer, _, _ = sft.build(config)
    adapters = [p for p in trainer.model.parameters() if p.requires_grad]
    ctx.put(
        fp16=trainer.args.fp16,
        bf16=trainer.args.bf16,
        optim=str(getattr(trainer.args.optim, "value", trainer.args.optim)),
    )
    ctx.put(adapter_dtypes=sorted({str(p.dtype) for p in adapters}), adapters=len(adapters))
    ctx.check("training runs in fp16 mixed precision", trainer.args.fp16 and not trainer.args.bf16)
    ctx.check("the adapters are fp32 (fp32_adapters)", {p.dtype for p in adapters} == {torch.float32})
    ctx.check("the base is 4-bit", any(p.__class__.__name__ == "Params4bit" for p in trainer.model.parameters()))
    trainer.train()
    logs = trainer.state.log_history
    losses = [r["loss"] for r in logs if "loss" in r]
    norms = [r["grad_norm"] for r in logs if "grad_norm" in r]
    scaler = getattr(trainer.accelerator, "scaler", None)
    scale = float(scaler.get_scale()) if scaler is not None else None
    ctx.put(steps=trainer.state.global_step, losses=losses, grad_norms=norms, grad_scale=scale, peak_mb=cuda_mb())
    ctx.check(f"{steps} steps ran", trainer.state.global_step == steps)
    ctx.check("the losses are finite", bool(losses) and all(finite(x) for x in losses))
    ctx.check("the grad scaler is on and its scale finite", scale is not None and finite(scale) and scale > 0)
    ctx.check("at least one step had a finite gradient norm", any(finite(x) for x in norms))
    del trainer
    free()


# --- w1_params --------------------------------------------------------------------------------------------------------


def w1_params(ctx: Context) -> None:
    """W1: QLoRA's parameter count (`count_params`) is the configured model's, whatever `bnb_4bit_quant_storage`
    packs the 4-bit weights in: the lab's own load (the config's `bnb` section, 16-bit storage) and uint8 storage."""
    require("bitsandbytes")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    from lab_utils.core.hardware import compute_dtype
    from lab_utils.core.profiles import ModelDims
    from lab_utils.models.loading import bnb_kwargs, load_kwargs
    from lab_utils.train.sft import count_params

    path = pocket_path()
    configured = ModelDims.from_config(AutoConfig.from_pretrained(path)).n_params()
    dense = AutoModelForCausalLM.from_pretrained(path).num_parameters()
    bnb = BitsAndBytesConfig(**bnb_kwargs("qlora", ctx.hardware))
    lab = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=bnb, **load_kwargs("qlora", True, ctx.hardware, ctx.cuda)
    )
    storage = str(lab.config.quantization_config.bnb_4bit_quant_storage)
    four = [p for p in lab.parameters() if p.__class__.__name__ == "Params4bit"]
    old_rule = sum(p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1) for p in lab.parameters())
    compute = getattr(torch, compute_dtype(ctx.hardware))
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=torch.uint8
    )
    placement = {"device_map": {"": 0}} if ctx.cuda else {}
    packed = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=compute, **placement)
    ctx.put(
        configured=configured,
        dense_num_parameters=dense,
        lab_storage=storage,
        lab_count=count_params(lab)[1],
        uint8_count=count_params(packed)[1],
        two_per_element_count=old_rule,
        params4bit=len(four),
        params4bit_device=str(four[0].device) if four else None,
    )
    ctx.check("the configured count is the dense model's", configured == dense)
    ctx.check("the lab's 4-bit load stores 16-bit elements", storage.endswith(("bfloat16", "float16")))
    ctx.check("count_params == configured, 16-bit storage", count_params(lab)[1] == configured)
    ctx.check("count_params == configured, uint8 storage", count_params(packed)[1] == configured)
    if ctx.cuda:
        ctx.check("the 4-bit weights are on the GPU", bool(four) and four[0].device.type == "cuda")


STAGE_FUNCTIONS = {"c1_fork": c1_fork, "lora20": lora20, "qlora_fp16": qlora_fp16, "w1_params": w1_params}


def stage_function(name: str) -> Any:
    """The function of stage `name` (the large-model stages live in gpu_check_big)."""
    if name in STAGE_FUNCTIONS:
        return STAGE_FUNCTIONS[name]
    import gpu_check_big

    return gpu_check_big.STAGE_FUNCTIONS[name]


def child_environment() -> None:
    """Make the lab importable from the repository root in this child (its own tree, not an installed copy)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
