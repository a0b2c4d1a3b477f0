"""The GPU check (scripts/gpu_check.py, issue 19 criterion 2) on this CPU: every stage's code path at the CPU's scaled
size with its figures asserted, the runner's handling of failed, skipped, timed-out and crashed stages, and the
preparation's wheel list and trimming (no network: synthetic wheels, and real ELF files from this venv)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def script(name: str) -> Any:
    """A module of scripts/ (gpu_check, gpu_check_prep, ...)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)


def run_check(out: Path, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """scripts/gpu_check.py on the CPU: its exit, and its JSON lines by stage name."""
    cmd = [sys.executable, str(SCRIPTS / "gpu_check.py"), "--device", "cpu", "--out", str(out), *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return done, {line["name"]: line for line in lines}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Every stage at the CPU's size, in one child process (the imports paid once: CI's time budget)."""
    return run_check(tmp_path_factory.mktemp("gpu-check") / "gpu-check.jsonl", "--one-process")


def figures(cpu_run: tuple[Any, dict[str, Any]], stage: str) -> dict[str, Any]:
    """A passed stage's figures."""
    line = cpu_run[1][stage]
    assert line["status"] == "ok" and all(line["checks"].values()), line
    return line["figures"]


@pytest.mark.slow
def test_every_stage_writes_one_line_and_the_run_a_summary(cpu_run: tuple[Any, dict[str, Any]]) -> None:
    done, lines = cpu_run
    gpu_check = script("gpu_check")
    assert list(lines) == ["env", *gpu_check.STAGES]
    for name in gpu_check.STAGES:
        line = lines[name]
        assert {"name", "status", "seconds", "figures", "checks", "reason", "limit_s", "log"} <= set(line), line
        assert line["status"] in ("ok", "failed", "skipped", "timeout") and line["seconds"] >= 0
    env = lines["env"]["figures"]
    assert env["device"] == "cpu" and env["quick"] is True and env["versions"]["torch"]
    assert "stage       status" in done.stdout and "results:" in done.stdout
    bad = [n for n, line in lines.items() if line["status"] in ("failed", "timeout")]
    assert done.returncode == (1 if bad else 0), done.stdout[-2000:]


@pytest.mark.slow
def test_lora20_trains_frees_merges_and_simulates_fp8(cpu_run: tuple[Any, dict[str, Any]]) -> None:
    f = figures(cpu_run, "lora20")
    assert f["steps"] == 3 and all(math.isfinite(f[k]) for k in ("train_loss_last", "eval_loss", "eval_loss_before"))
    assert f["models_loaded"] == 2 and f["model_freed"] is True, "the trained model is gone when the merge loads (C4)"
    assert f["merge_dtype"] == "float32", "the CPU trains in fp32 and merges in fp32"
    assert f["merged_facts"]["safetensors_only"] and not f["merged_facts"]["has_quantization_config"]
    assert f["merge_check"]["greedy_agreement"] == 1.0 and f["merge_check"]["max_logit_difference"] < 1e-3
    assert f["fp8_summary"]["memory_ratio"] == pytest.approx(0.25, abs=0.01), "fp32 weights: 1 byte of 4"
    assert f["fp8_next_token_agreement"] >= 0.5 and f["fp8_model_device"] == "cpu"


@pytest.mark.slow
def test_build8b_runs_the_8b_profiles_settings_on_a_scaled_shape(cpu_run: tuple[Any, dict[str, Any]]) -> None:
    from lab_utils.core.profiles import ModelDims, get_profile

    f = figures(cpu_run, "build8b")
    big = script("gpu_check_big")
    assert f["params"] == ModelDims(**big.QUICK_SHAPE).n_params() and f["shape"]["n_kv_heads"] == 2
    real = get_profile("llama3-8b").train
    settings = f["settings"]
    assert (settings["method"], settings["bf16"], settings["gradient_checkpointing"]) == ("lora", True, True)
    assert settings["lora_r"] == real.lora_r and settings["max_seq_length"] == big.QUICK_8B_SETTINGS["max_seq_length"]
    assert f["steps"] == 3 and len(f["losses"]) == 3 and all(math.isfinite(x) for x in f["losses"])
    assert math.isfinite(f["eval_loss"]) and f["eval_batch"] == big.QUICK_8B_SETTINGS["eval_batch_size"]
    assert f["fp8_layers"] == 7 * big.QUICK_SHAPE["n_layers"], "every projection, not the LM head"
    assert f["profile_training_gb"] <= get_profile("llama3-8b").min_memory_gb


@pytest.mark.slow
def test_fullft_takes_the_labs_optimizer_and_projects_row_1(cpu_run: tuple[Any, dict[str, Any]]) -> None:
    from lab_utils.core.profiles import LLAMA3_8B
    from lab_utils.train import memsweep

    f = figures(cpu_run, "fullft")
    assert f["optimizer"] == f["lab_optim"] == "adamw_torch", "the CPU keeps AdamW (fused is for CUDA)"
    assert math.isfinite(f["lab_loss"]) and f["seq_len"] == 128 and f["micro_batch"] == memsweep.BASE.micro_batch
    row1 = memsweep.estimate(memsweep.BASE, LLAMA3_8B.dims, 128) / 1000
    assert f["estimator_8b_row1_gb"] == round(row1, 1) and 125 < row1 < 140, "the estimator's row 1 for the 8B"
    assert f["projected_8b_row1_gb"] > 0 and "foreach_peak_mb" not in f, "the foreach comparison is CUDA's"
    # Row 2 (bf16 mixed) runs on the same shape: the estimator's rise over row 1 is autocast's bf16 weight copies less
    # the activations bf16 halves; the measured rise is the GPU's figure (on a CPU, resident memory).
    from lab_utils.core.profiles import ModelDims
    from lab_utils.models.memory import autocast_copy_bytes

    assert math.isfinite(f["bf16_loss"]) and f["bf16_peak_mb"] > 0 and "bf16_estimate_error" in f
    copies = autocast_copy_bytes(ModelDims(**f["shape"]), "bf16") / 1e6  # the quick shape's
    assert f["bf16_autocast_copies_mb"] == round(copies, 1) > 0
    dims = ModelDims(**f["shape"])
    rise = memsweep.estimate(memsweep.BF16, dims, 128) - memsweep.estimate(memsweep.BASE, dims, 128)
    assert f["bf16_estimated_rise_mb"] == round(rise, 1) < copies, "the copies, less the activations bf16 halves"


@pytest.mark.slow
def test_qlora_fp16_puts_trls_bf16_adapters_back_to_fp32(cpu_run: tuple[Any, dict[str, Any]]) -> None:
    f = figures(cpu_run, "qlora_fp16")
    assert f["adapter_dtypes_from_trl"] == ["torch.bfloat16"] and f["adapter_dtypes_fixed"] == ["torch.float32"]
    assert f["cast_under_fp16"] == f["adapters"] > 0


@pytest.mark.slow
def test_w1_params_counts_a_4bit_model_as_configured(cpu_run: tuple[Any, dict[str, Any]]) -> None:
    f = figures(cpu_run, "w1_params")
    assert f["configured"] == f["dense_num_parameters"] == f["lab_count"] == f["uint8_count"]
    assert f["lab_storage"] == "torch.bfloat16" and f["params4bit"] == 7 * 4
    assert f["two_per_element_count"] < f["configured"], "the old rule (2 weights per element) undercounts W1's case"


@pytest.mark.slow
def test_c1_fork_checks_what_the_fork_server_imports_before_it_forks(cpu_run: tuple[Any, dict[str, Any]]) -> None:
    line = cpu_run[1]["c1_fork"]
    f = line["figures"]
    assert f["preloaded"] == ["torch", "transformers", "datasets", "psutil"], "the GPU's preload list"
    assert f["cuda_initialized_before_fork"] is False and f["plain_fork"].startswith("not run")
    assert set(line["checks"]) >= {"nothing the server imports loads bitsandbytes, peft or trl"}


@pytest.mark.slow
def test_c1_fork_nothing_the_fork_server_imports_loads_bitsandbytes(cpu_run: tuple[Any, dict[str, Any]]) -> None:
    line = cpu_run[1]["c1_fork"]
    assert line["figures"]["unsafe_loaded_before_fork"] == [] and line["status"] == "ok", line["reason"]


def test_the_runner_records_failed_skipped_timed_out_and_crashed_stages(tmp_path: Path) -> None:
    stages = "_ok,_fail,_skip,_sleep,_crash"
    done, lines = run_check(tmp_path / "a.jsonl", "--stages", stages, "--timeout", "_sleep=2", timeout=120)
    status = {name: line["status"] for name, line in lines.items() if name != "env"}
    assert status == {"_ok": "ok", "_fail": "failed", "_skip": "skipped", "_sleep": "timeout", "_crash": "failed"}
    assert done.returncode == 1, "a failed or timed-out stage makes the run fail"
    assert lines["_fail"]["reason"] == "checks failed: a check that fails"
    assert lines["_ok"]["figures"] == {"stage": "_ok"} and lines["_ok"]["checks"] == {"a check that passes": True}
    assert lines["_sleep"]["limit_s"] == 2 and 2 <= lines["_sleep"]["seconds"] < 15
    assert "exit code 3" in lines["_crash"]["reason"] and "crashing on purpose" in lines["_crash"]["reason"]
    assert (tmp_path / "_crash.log").exists() and "_skip" in done.stdout.split("stage       status")[1]
    # In one process (CI's quick run) under the sum of the limits: the stage running when it is reached times out, and
    # the ones after it are not run.
    limits = ["--timeout", "_ok=2", "--timeout", "_sleep=2", "--timeout", "_fail=2"]
    done, lines = run_check(tmp_path / "b.jsonl", "--one-process", "--stages", "_ok,_sleep,_fail", *limits)
    assert [lines[n]["status"] for n in ("_ok", "_sleep", "_fail")] == ["ok", "timeout", "failed"]
    assert lines["_fail"]["reason"].startswith("not run") and done.returncode == 1
    done, lines = run_check(tmp_path / "c.jsonl", "--stages", "_ok,_skip")
    assert done.returncode == 0, "skipped stages do not fail the run"


def test_prep_keeps_one_cuda_library_per_major_and_trims_pyarrow() -> None:
    prep = script("gpu_check_prep")
    cuda = ("128", "130")
    bnb = [f"libbitsandbytes_cuda{v}.so" for v in ("118", "121", "124", "126", "128", "130", "132")]
    bnb += ["libbitsandbytes_cpu.so", "libbitsandbytes_rocm64.so", "libbitsandbytes_xpu2025.so", "__init__.py"]
    kept = [n for n in bnb if not prep.dropped("bitsandbytes", f"bitsandbytes/{n}", set(bnb), cuda)]
    assert kept == ["libbitsandbytes_cuda128.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cpu.so", "__init__.py"]
    assert not prep.dropped("bitsandbytes", "bitsandbytes/libbitsandbytes_cuda132.so", set(), ("132",))
    arrow = {
        "pyarrow/libarrow.so.2600": False,
        "pyarrow/libarrow_python.so.2600": False,
        "pyarrow/libarrow_python.so": True,
        "pyarrow/libarrow_python.so.2600.1.0": True,
        "pyarrow/lib.cpython-312-x86_64-linux-gnu.so": False,
        "pyarrow/_fs.cpython-312-x86_64-linux-gnu.so": False,
        "pyarrow/_parquet.cpython-312-x86_64-linux-gnu.so": False,
        "pyarrow/libarrow_flight.so.2600": True,
        "pyarrow/_flight.cpython-312-x86_64-linux-gnu.so": True,
        "pyarrow/libarrow_s3.so.2600": True,
        "pyarrow/_s3fs.cpython-312-x86_64-linux-gnu.so": True,
        "pyarrow/include/arrow/api.h": True,
        "pyarrow/tests/test_array.py": True,
        "pyarrow/lib.pyx": True,
        "pyarrow/parquet/core.py": False,
        "pyarrow-26.0.1.dist-info/RECORD": False,
    }
    names = {p.rsplit("/", 1)[-1] for p in arrow}
    assert {p: prep.dropped("pyarrow", p, names, cuda) for p in arrow} == arrow
    assert prep.dropped("pandas", "pandas/tests/frame/test_api.py", set(), cuda)
    assert not prep.dropped("pandas", "pandas/core/frame.py", set(), cuda)
    assert not prep.dropped("trl", "trl/tests/x.py", set(), cuda), "only the named wheels are trimmed"


def test_prep_pins_each_wheel_and_reads_the_libraries_an_elf_file_needs() -> None:
    prep = script("gpu_check_prep")
    from importlib import metadata

    versions = prep.pinned_versions(prep.PURE + prep.PER_PYTHON)
    assert versions["trl"] == "1.16.0" and versions["bitsandbytes"] == "0.50.2" and versions["datasets"] == "5.2.0"
    assert versions["pyarrow"] == metadata.version("pyarrow"), "not pinned in pyproject: this venv's version"
    assert {"pyarrow", "pandas", "trl", "datasets", "bitsandbytes"} <= set(versions)
    lib = next(Path(importlib.util.find_spec("pyarrow").submodule_search_locations[0]).glob("lib.cpython-*.so"))
    needed = prep.elf_needed(lib.read_bytes())
    assert any(n.startswith("libarrow_python.so.") for n in needed) and any(
        n.startswith("libarrow.so.") for n in needed
    )
    assert prep.elf_needed(b"#!/bin/sh\n") == []


def fake_wheel(path: Path, files: dict[str, bytes]) -> Path:
    """A wheel with these files and a RECORD listing them."""
    dist_info = next(p.split("/")[0] for p in files if ".dist-info/" in p)
    record = "".join(f"{p},sha256=x,{len(d)}\n" for p, d in files.items()) + f"{dist_info}/RECORD,,\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for p, data in {**files, f"{dist_info}/RECORD": record.encode()}.items():
            z.writestr(p, data)
    return path


def test_repack_rewrites_the_record_and_refuses_to_drop_a_library_still_linked(tmp_path: Path) -> None:
    prep = script("gpu_check_prep")
    files = {f"bitsandbytes/libbitsandbytes_cuda{v}.so": b"x" * 100 for v in ("118", "128", "130")}
    files |= {"bitsandbytes/__init__.py": b"", "bitsandbytes-0.50.2.dist-info/METADATA": b"Name: bitsandbytes\n"}
    wheel = fake_wheel(tmp_path / "raw" / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl", files)
    out = tmp_path / wheel.name
    report = prep.repack(wheel, out, ("128", "130"))
    names = zipfile.ZipFile(out).namelist()
    assert report["files"] == 1 and "bitsandbytes/libbitsandbytes_cuda118.so" not in names
    record = zipfile.ZipFile(out).read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert "cuda118" not in record and "cuda128" in record and "cuda130" in record
    # A kept library that links to one the trim drops (here a real ELF file needing libarrow_python.so.N, placed where
    # pyarrow's tests go): the repack stops instead of carrying a wheel that cannot load.
    lib = next(Path(importlib.util.find_spec("pyarrow").submodule_search_locations[0]).glob("lib.cpython-*.so"))
    soname = next(n for n in prep.elf_needed(lib.read_bytes()) if n.startswith("libarrow_python.so."))
    arrow = {
        f"pyarrow/{lib.name}": lib.read_bytes(),
        f"pyarrow/tests/{soname}": b"",
        "pyarrow-1.dist-info/METADATA": b"",
    }
    broken = fake_wheel(tmp_path / "raw" / "pyarrow-1-cp311-cp311-linux_x86_64.whl", arrow)
    with pytest.raises(SystemExit, match="links to"):
        prep.repack(broken, tmp_path / broken.name, ())


def test_carried_wheels_unpack_only_where_missing_and_fitting(tmp_path: Path) -> None:
    gpu_check = script("gpu_check")
    wheels = tmp_path / "wheels"
    fake_wheel(
        wheels / "gpucheckfake-1.0-py3-none-any.whl",
        {
            "gpucheckfake/__init__.py": b"VALUE = 7\n",
            "gpucheckfake-1.0.data/purelib/gpucheckfake_extra.py": b"",
            "gpucheckfake-1.0.data/scripts/tool": b"#!/bin/sh\n",
            "gpucheckfake-1.0.dist-info/METADATA": b"Name: gpucheckfake\nVersion: 1.0\n",
        },
    )
    fake_wheel(wheels / "gpucheckold-1.0-cp27-cp27m-manylinux1_x86_64.whl", {"gpucheckold-1.0.dist-info/METADATA": b""})
    fake_wheel(wheels / "trl-1.16.0-py3-none-any.whl", {"trl-1.16.0.dist-info/METADATA": b""})
    site = tmp_path / "site-packages"
    report = gpu_check.install_carried(wheels, site)
    assert report["installed"] == ["gpucheckfake 1.0"]
    assert report["not_fitting"] == ["gpucheckold-1.0-cp27-cp27m-manylinux1_x86_64.whl"]
    assert any(p.startswith("trl ") for p in report["present"]), "an installed package is never replaced"
    assert (site / "gpucheckfake" / "__init__.py").read_text() == "VALUE = 7\n"
    assert (site / "gpucheckfake_extra.py").exists() and not (site / "tool").exists()
    assert not (site / "trl").exists()
