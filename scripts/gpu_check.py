#!/usr/bin/env python3
"""The GPU check (issue 19, criterion 2): the assertions only a GPU can show, made for the first GPU machine the project
is lent (one NVIDIA GPU with torch, transformers, peft and accelerate; no TRL, datasets, bitsandbytes or vLLM; no
internet; at most 64 MiB carried besides the tree; about 8 minutes). It has not run on a GPU yet.

Prepare here (with internet): `make gpu-check-prep` puts the wheels the machine lacks in `.gpu-check/wheels/` (TRL,
datasets and their small dependencies, pyarrow and pandas trimmed, bitsandbytes with only the CUDA 12.8 and 13.0
libraries; `scripts/gpu_check_prep.py`). On the GPU machine, from the repository root, carrying `.gpu-check`:

    python scripts/gpu_check.py --out $OUT/gpu-check.jsonl

The wheels whose package the machine lacks and whose tags fit its Python are unpacked into a temporary folder put on
the children's PYTHONPATH (the installed torch and transformers are never touched). Each stage then runs in a child
process of its own (`--stage NAME`) under a time limit, writes one JSON line (name, status ok/failed/skipped/timeout,
seconds, figures, checks, reason) and its log beside the output; a failed stage does not stop the others, and the exit
code is non-zero if any failed or timed out. The first line, `env`, records the machine and what was unpacked.

Stages, with their planned time on an H200 and [their limit] in seconds (the limits sum to 480 s, 8 minutes):
  c1_fork     ~35 [75]   C1: what the fork server imports before it forks (a fresh interpreter); importing
                         bitsandbytes initializes CUDA; a plain fork after CUDA init fails in the child; the lab's
                         fork server trains a sweep row on the GPU
  lora20      ~40 [90]   20 bf16 LoRA steps on pocket through recipes/sft.py: CUDA peak, finite losses, the trained model
                         freed before the merge (C4), merge check on CUDA, FP8 next-token agreement (C8)
  build8b     ~50 [120]  a random Llama-3-8B-shaped model built on the GPU at llama3-8b's settings: the FP8
                         simulation's peak (C5), 3 steps and one eval batch of 16, each peak + 1 GB within 24 GB
  fullft      ~40 [90]   one full fine-tuning step of a random 1.5B fp32 Llama as sweep row 1 trains it (fused AdamW),
                         projected to row 1 of the 8B sweep; torch's foreach AdamW beside it (C2); row 2
                         (bf16 mixed): are autocast's bf16 weight copies alive at the CUDA peak?
  qlora_fp16  ~30 [75]   QLoRA in fp16 as on a T4: without the fix (TRL's bf16 adapters), then 8 steps with
                         the recipe's fp32_adapters: fp32 adapters, finite losses, the grad scaler (C3)
  w1_params   ~10 [30]   count_params of a 4-bit pocket model, 16-bit and uint8 storage, against its config (W1)
With the unpacking (~10 s) about 4 minutes planned, 8 at most. The device run, with the `run` tool carrying
[".gpu-check"] and a timeout_s of 560:
    PY=$(command -v python3 || command -v python); $PY scripts/gpu_check.py --out $OUT/gpu-check.jsonl

On a CPU (`--device cpu`, which implies `--quick`), every stage runs the same code at a scaled-down size and the
CUDA-only checks are left out; tests/test_gpu_check.py runs it in CI with `--one-process` (every stage in one child
process, the imports paid once: about 30 s on 2 cores instead of 90).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".gpu-check" / "wheels"


@dataclass(frozen=True)
class StagePlan:
    """A stage's time limits (seconds) on a GPU and on a CPU, and what it shows."""

    gpu_s: int
    cpu_s: int
    shows: str


STAGES: dict[str, StagePlan] = {
    "c1_fork": StagePlan(75, 150, "fork server vs a plain fork after CUDA init (C1)"),
    "lora20": StagePlan(90, 180, "bf16 LoRA on pocket: peak, freed model, merge check, FP8 (C4, C8)"),
    "build8b": StagePlan(120, 150, "8B-shaped LoRA at llama3-8b's settings: 24 GB, FP8 peak (C5)"),
    "fullft": StagePlan(90, 150, "full fine-tuning step, 1.5B fp32, projected to 8B row 1 (C2)"),
    "qlora_fp16": StagePlan(75, 150, "QLoRA in fp16: fp32 adapters, grad scaler (C3)"),
    "w1_params": StagePlan(30, 120, "4-bit parameter count, 16-bit and uint8 storage (W1)"),
}
# The runner's own test stages (tests/test_gpu_check.py): never run unless named.
SELFTEST = {"_ok", "_fail", "_skip", "_sleep", "_crash"}


def install_carried(wheels: Path, target: Path) -> dict[str, list[str]]:
    """Unpack into `target` each carried wheel whose distribution is not installed here and whose tags fit this
    Python (a wheel is a zip: its files go to the target as pip --target puts them; no dependency resolution, no
    installed package changed). Returns what was installed, already present, and did not fit."""
    from importlib import metadata

    report: dict[str, list[str]] = {"installed": [], "present": [], "not_fitting": []}
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename

        supported = set(sys_tags())
    except ImportError:  # packaging comes with transformers; without it, trust the prep's --python
        supported = None
    for wheel in sorted(wheels.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        tags = None
        if supported is not None:
            parsed = parse_wheel_filename(wheel.name)
            name, version, tags = str(parsed[0]), str(parsed[1]), parsed[3]
        try:
            report["present"].append(f"{name} {metadata.version(name)}")
            continue
        except metadata.PackageNotFoundError:
            pass
        if tags is not None and not tags & supported:
            report["not_fitting"].append(wheel.name)
            continue
        unpack_wheel(wheel, target)
        report["installed"].append(f"{name} {version}")
    return report


def unpack_wheel(wheel: Path, target: Path) -> None:
    """A wheel's files into `target`: the package and its dist-info; `*.data/purelib|platlib` at the top too, other
    `.data` parts (scripts, headers) left out."""
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            dest = target.joinpath(*parts)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)


def environment(device: str, quick: bool, wheels: Path, carried: dict[str, Any]) -> dict[str, Any]:
    """The `env` line: the machine, the versions that matter, and what the carried wheels added."""
    import platform
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    names = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes", "pyarrow", "pandas")
    info: dict[str, Any] = {"python": platform.python_version(), "device": device, "quick": quick}
    info["versions"] = {n: version(n) for n in names}
    info["torch_cuda"] = torch_cuda_version()
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        smi = subprocess.run(query, capture_output=True, text=True, timeout=30)
        info["gpus"] = [line.strip() for line in smi.stdout.splitlines() if line.strip()]
    manifest = wheels.parent / "manifest.json"
    if manifest.exists():
        prep = json.loads(manifest.read_text())
        info["prepared_for"] = {k: prep.get(k) for k in ("python", "cuda", "total_mib")}
    return info | {"carried": carried}


def torch_cuda_version() -> str | None:
    """The CUDA version torch was built for (`torch.version.cuda`), read from its version file: no torch import."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("torch")
    version = Path(spec.origin).with_name("version.py") if spec and spec.origin else None
    found = (
        re.search(r"^cuda\b[^=]*=\s*['\"]([\w.]+)['\"]", version.read_text(), re.M)
        if version and version.exists()
        else None
    )
    return found.group(1) if found else None


def child_env(device: str, site: Path | None) -> dict[str, str]:
    """The stages' environment: the tree (and the unpacked wheels) importable, offline, no GPU when asked for none."""
    paths = [str(ROOT), *([str(site)] if site else []), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1"}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env |= {"TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1", "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_stages(names: list[str], args: argparse.Namespace, env: dict[str, str], out: Path, work: Path) -> list[dict]:
    """Stages in one child process under the sum of their time limits (one stage per child, except with
    `--one-process`); a JSON line per stage: its result, or failed/timeout with the end of the log."""
    limits = {n: args.timeouts.get(n, plan_of(n).gpu_s if args.device == "cuda" else plan_of(n).cpu_s) for n in names}
    limit = sum(limits.values())
    log_path = out / (f"{names[0]}.log" if len(names) == 1 else "stages.log")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", ",".join(names), "--device", args.device]
    cmd += ["--work", str(work)] + (["--quick"] if args.quick else [])
    for name in names:
        print(f"== {name} (limit {limits[name]} s): {plan_of(name).shows}", flush=True)
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            code = None
            stop_group(proc)
    seconds = round(time.monotonic() - t0, 1)
    lines, missing = [], 0
    for name in names:
        result = work / f"{name}.result.json"
        line: dict[str, Any] = {"name": name, "status": "failed", "seconds": 0.0, "figures": {}, "checks": {}}
        if result.exists():
            line |= json.loads(result.read_text()) | ({"seconds": seconds} if len(names) == 1 else {})
        elif code is None and not missing:
            spent = seconds - sum(done["seconds"] for done in lines)  # the time its earlier stages did not take
            reason = f"over its {limit} s limit" if len(names) == 1 else f"the shared process went over {limit} s here"
            line |= {"status": "timeout", "seconds": round(spent, 1), "reason": reason}
        elif code is None:
            line["reason"] = "not run: the process timed out in an earlier stage"
        else:
            line |= {"seconds": seconds, "reason": f"exit code {code} without a result: {tail(log_path)}"}
        missing += not result.exists()
        line |= {"limit_s": limits[name], "log": log_path.name}
        reason = f": {line.get('reason')}" if line["status"] != "ok" else ""
        print(f"   {name}: {line['status']} in {line['seconds']} s{reason}", flush=True)
        lines.append(line)
    return lines


def plan_of(name: str) -> StagePlan:
    """A stage's plan (the self-test stages get 30 s)."""
    return STAGES.get(name, StagePlan(30, 30, "runner self-test"))


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """Stop a timed-out stage and everything it started (its own process group: the fork server, the children)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def tail(path: Path, n: int = 6) -> str:
    """The last lines of a log, on one line."""
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(line.strip() for line in lines[-n:])[-900:]


def headline(line: dict[str, Any]) -> str:
    """A stage's key figures, or its reason when it did not pass."""
    if line["status"] != "ok":
        return str(line.get("reason", ""))[:110]
    f = line["figures"]
    keys = {
        "c1_fork": ("unsafe_loaded_before_fork", "plain_fork_child"),
        "lora20": ("train_loss_last", "peak_memory_mb", "model_freed", "fp8_next_token_agreement"),
        "build8b": ("params", "train_peak_mb", "eval_peak_mb", "fp8_peak_above_weights_mb"),
        "fullft": ("peak_kind", "bytes_per_param", "projected_8b_row1_gb", "estimator_8b_row1_gb"),
        "qlora_fp16": ("adapter_dtypes", "grad_scale", "cast_under_fp16"),
        "w1_params": ("configured", "lab_count", "uint8_count"),
    }.get(line["name"], tuple(f)[:3])
    return ", ".join(f"{k}={str(f[k])[:40]}" for k in keys if k in f)[:110]


def summary_table(lines: list[dict[str, Any]]) -> str:
    """The readable table printed at the end."""
    rows = [f"{'stage':<11} {'status':<8} {'seconds':>7} {'limit':>5} {'checks':>6}  figures / reason"]
    for line in lines:
        checks = line.get("checks", {})
        passed = f"{sum(checks.values())}/{len(checks)}" if checks else "-"
        row = f"{line['name']:<11} {line['status']:<8} {line['seconds']:>7} {line.get('limit_s', '-'):>5} {passed:>6}"
        rows.append(f"{row}  {headline(line)}")
    return "\n".join(rows)


def run_child(args: argparse.Namespace) -> int:
    """`--stage NAME[,NAME...]`: run the stages here in turn, writing each one's result (always, even when it
    failed) to `<work>/<name>.result.json`."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import traceback

    from gpu_check_stages import Context, Skip, child_environment, stage_function

    child_environment()
    for name in args.stage.split(","):
        print(f"===== {name}", flush=True)
        ctx = Context(args.device, args.quick, Path(args.work) / name)
        ctx.work.mkdir(parents=True, exist_ok=True)
        status, reason = "ok", ""
        t0 = time.perf_counter()
        try:
            if name in SELFTEST:
                selftest(name, ctx, Skip)
            else:
                stage_function(name)(ctx)
            failed = [check for check, ok in ctx.checks.items() if not ok]
            if failed:
                status, reason = "failed", "checks failed: " + "; ".join(failed)
        except Skip as e:
            status, reason = "skipped", str(e)
        except BaseException as e:  # noqa: BLE001 - recorded in the stage's line, with its figures so far
            traceback.print_exc()
            status, reason = "failed", f"{type(e).__name__}: {str(e)[:600]}"
        result = {"name": name, "status": status, "seconds": round(time.perf_counter() - t0, 1)}
        result |= {"figures": ctx.figures, "checks": ctx.checks, "reason": reason}
        (Path(args.work) / f"{name}.result.json").write_text(json.dumps(result, default=str))
    return 0


def selftest(name: str, ctx: Any, skip: type[Exception]) -> None:
    """The runner's test stages: ok, a failed check, a skip, a stage over its limit, a crash without a result."""
    ctx.put(stage=name)
    if name == "_fail":
        ctx.check("a check that fails", False)
    elif name == "_skip":
        raise skip("missing: nothing, a self-test")
    elif name == "_sleep":
        time.sleep(600)
    elif name == "_crash":
        print("crashing on purpose", flush=True)
        os._exit(3)
    else:
        ctx.check("a check that passes", True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--quick", action="store_true", help="scaled-down shapes and few steps (implied on a CPU)")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run, in order")
    parser.add_argument("--out", help="the JSON lines file (default runs/gpu-check-<date>/gpu-check.jsonl)")
    parser.add_argument("--timeout", action="append", default=[], metavar="STAGE=S", help="another limit for a stage")
    parser.add_argument("--wheels", default=str(WHEELS), help="the carried wheels (make gpu-check-prep)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder (models, merged, logs)")
    parser.add_argument(
        "--one-process", action="store_true", help="a CPU's quick run: every stage in one child (imports paid once)"
    )
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.timeouts = {k: int(v) for k, v in (t.split("=", 1) for t in args.timeout)}
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the stages and write their lines; the exit code is 1 if any stage failed or timed out."""
    args = parse_args(argv)
    if args.stage:
        return run_child(args)
    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [n for n in names if n not in STAGES and n not in SELFTEST]
    if unknown:
        print(f"unknown stages {unknown}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if args.device == "auto":
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.quick = args.quick or args.device == "cpu"
    if args.one_process and args.device == "cuda":
        print("--one-process is for a CPU: on a GPU each stage starts from a fresh CUDA context", file=sys.stderr)
        return 2
    out = Path(args.out or ROOT / "runs" / f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}" / "gpu-check.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    site = work / "site-packages"  # the name dill (datasets fingerprints) looks for to pickle modules by reference
    carried = install_carried(Path(args.wheels), site) if Path(args.wheels).is_dir() else {"wheels": "none carried"}
    env_line = {
        "name": "env",
        "status": "ok",
        "seconds": 0.0,
        "figures": environment(args.device, args.quick, Path(args.wheels), carried),
    }
    print(json.dumps(env_line["figures"], indent=1), flush=True)
    if carried.get("not_fitting"):
        print(f"carried wheels that do not fit this Python: {carried['not_fitting']}", flush=True)
    env = child_env(args.device, site if site.exists() else None)
    lines = [env_line]
    try:
        with open(out, "w") as f:
            f.write(json.dumps(env_line, default=str) + "\n")
            for group in [names] if args.one_process else [[n] for n in names]:
                for line in run_stages(group, args, env, out.parent, work):
                    f.write(json.dumps(line, default=str) + "\n")
                    f.flush()
                    lines.append(line)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + summary_table(lines[1:]))
    bad = [line["name"] for line in lines if line["status"] in ("failed", "timeout")]
    print(f"\nresults: {out}; " + (f"not passed: {', '.join(bad)}" if bad else "every stage that ran passed"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
