"""The GPU profiles' code paths, checked on a CPU: hub data with Alpaca's defects, memory decisions for the target
GPU, one model at a time, the 70B serving plan, precision rules. Each test fails on the code before its fix."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from lab_utils import data
from lab_utils.core import profiles
from lab_utils.core.hardware import DESCRIBED
from lab_utils.core.paths import REPO_ROOT as REPO
from lab_utils.core.profiles import PROFILES
from lab_utils.data import standin
from lab_utils.models import memory, rehearsal
from lab_utils.train import memsweep, sweepmodel

GPU_PROFILES = ["llama3-8b", "llama3-8b-qlora", "llama3-70b-qlora"]


@pytest.fixture
def rehearsing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAB_REHEARSAL", "1")
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))


def test_hub_data_with_empty_outputs_and_long_rows_is_skipped_and_reported(rehearsing: None) -> None:
    """Real Alpaca has empty outputs and rows over 1,024 tokens: loading the hub id skips and counts them."""
    from lab_utils.models.loading import load_tokenizer, resolve_hub_model
    from lab_utils.train.sft import load_splits

    prof = replace(PROFILES["llama3-8b"], rehearsal=True)  # as the resolved configuration of a rehearsal passes it down
    tok = load_tokenizer(resolve_hub_model(prof.base_model, standin=prof.rehearsal))
    train_ds, eval_ds, info = load_splits(prof, tok)
    defects = standin.standin_defects()
    assert info["n_read"] == defects["rows"]
    assert info["n_skipped"] == defects["empty_output"] + defects["over_long"]
    assert info["skipped_reasons"] == {
        "output: empty": defects["empty_output"],
        "output: example too long (...)": defects["over_long"],
    }
    assert len(train_ds) + len(eval_ds) == defects["rows"] - info["n_skipped"]
    assert "dropped (not truncated)" in info["skip_rule"] and "1024 tokens" in info["skip_rule"]


def test_a_local_file_still_stops_at_its_first_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps({"instruction": "c", "output": ""})
    )
    with pytest.raises(data.DataError, match="line 2: field 'output': empty"):
        data.load_records(path, skip_bad=data.skips_bad_rows(path))


def test_eval_split_is_capped() -> None:
    records = [{"instruction": str(i), "output": "x"} for i in range(20_000)]
    _, evals = data.split_records(records, 0.05, seed=1, max_eval=500)
    assert len(evals) == 500
    assert all(p.max_eval_examples <= 500 for p in PROFILES.values())


@pytest.mark.parametrize("name", GPU_PROFILES)
def test_min_memory_covers_the_estimated_peak_of_every_phase(name: str) -> None:
    prof = PROFILES[name]
    peaks = memory.profile_peak_gb(prof)
    assert prof.min_memory_gb >= max(peaks.values())
    assert prof.min_memory_gb <= 1.25 * max(peaks.values())  # a claim, not a blanket "buy more"
    assert profiles.choose_profile(DESCRIBED["t4"])[0] == "llama3-8b-qlora"  # a 16 GB card runs the QLoRA profile


def test_qlora_profile_evaluates_in_4bit_and_70b_does_not_merge() -> None:
    assert PROFILES["llama3-8b-qlora"].evaluates_in_4bit and not PROFILES["llama3-8b"].evaluates_in_4bit
    assert not PROFILES["pocket"].evaluates_in_4bit
    assert PROFILES["llama3-70b-qlora"].merge_for_serving is False
    assert all(PROFILES[n].merge_for_serving for n in ("pocket", "llama3-8b", "llama3-8b-qlora"))


def test_sweep_skips_what_does_not_fit_the_target_gpu_and_sweeps_at_most_8b() -> None:
    swept, why = sweepmodel.sweep_model("meta-llama/Meta-Llama-3-70B")
    assert swept == "meta-llama/Meta-Llama-3-8B" and "70B" in why
    assert sweepmodel.sweep_model("meta-llama/Meta-Llama-3-8B") == ("meta-llama/Meta-Llama-3-8B", None)
    dims = memory.dims_for_model(swept)
    gpu = DESCRIBED["rtx-4090"]
    budget = memsweep.memory_budget_mb(gpu)
    decisions = {
        c.name: memsweep.skip_reason(c, gpu, memsweep.estimate(c, dims, 128), budget) for c in memsweep.CONFIGS
    }
    assert (
        decisions["1 baseline: full fp32"]
        and "GB free on NVIDIA GeForce RTX 4090" in decisions["1 baseline: full fp32"]
    )
    assert decisions["8 QLoRA"] is None and decisions["9 QLoRA + gradient checkpointing"] is None
    # On the DGX Spark's 128 GB, 8B full fine-tuning in fp32 (about 16 bytes per parameter) still does not fit.
    spark = DESCRIBED["dgx-spark"]
    full = memsweep.CONFIGS[0]
    assert memsweep.skip_reason(full, spark, memsweep.estimate(full, dims, 128), memsweep.memory_budget_mb(spark))


def test_full_fine_tuning_keeps_fp32_master_weights() -> None:
    from lab_utils.models.loading import load_dtype

    h100 = DESCRIBED["h100"]
    assert load_dtype("full", True, h100) == "float32"  # bf16 only in autocast
    assert load_dtype("lora", True, h100) == "bfloat16" and load_dtype("lora", False, h100) == "float32"
    assert load_dtype("lora", True, DESCRIBED["t4"]) == "float16"


def test_rehearsal_scales_the_profile_and_decides_for_its_gpu(rehearsing: None) -> None:
    from lab_utils.lab.runconfig import resolve

    cfg = resolve("llama3-70b-qlora", DESCRIBED["cpu"])
    assert cfg.rehearsal and cfg.decision_hardware.name == "NVIDIA GB10"
    assert cfg.profile.train.max_steps < 20 and cfg.profile.train.max_seq_length == 1024
    assert cfg.profile.train.method == "qlora" and cfg.profile.merge_for_serving is False
    assert Path(cfg.base_model_path(), "standin.json").exists()
    assert resolve("pocket", DESCRIBED["cpu"]).rehearsal is False  # the pocket profile has nothing to stand in for
    assert set(rehearsal.TARGETS) == set(rehearsal.rehearsable_profiles()) == set(GPU_PROFILES)


def test_heldout_of_a_hub_profile_scores_dataset_records_and_verifiable_questions(rehearsing: None) -> None:
    from lab_utils.lab.runconfig import resolve
    from lab_utils.measure import compare

    cfg = resolve("llama3-8b", DESCRIBED["cpu"])
    held = cfg.heldout()
    kinds = {r["kind"] for r in held}
    assert kinds == {"verifiable", "dataset"}
    assert held[0]["instruction"] == "First, tell me the capital of France"
    answers = [
        compare.Answer(text=r["output"], finish_reason="stop", completion_tokens=5, latency_ms=1.0) for r in held
    ]
    m = compare.measures(held, answers)
    # ROUGE-L is computed on the dataset records only (their own references): perfect here; exact match has no
    # reference in the trained style, so it is not a number.
    assert m["rouge_l"] == pytest.approx(1.0) and m["contains_answer"] == 1.0 and m["exact_match"] != m["exact_match"]


def test_bf16_rows_run_in_fp16_on_a_gpu_without_native_bf16() -> None:
    """A T4 trains the bf16 rows in fp16 (train.mixed_precision): they are not skipped, and the table says so."""
    t4, dims = DESCRIBED["t4"], memory.dims_for_model("meta-llama/Meta-Llama-3-8B")
    qlora = memsweep.QLORA
    assert memsweep.skip_reason(qlora, t4, memsweep.estimate(qlora, dims, 128), memsweep.memory_budget_mb(t4)) is None
    assert "fp16 on Tesla T4" in memsweep.precision_note(qlora, t4)
    assert memsweep.precision_note(qlora, DESCRIBED["h100"]) is None
    assert memsweep.precision_note(memsweep.BASE, t4) is None  # an fp32 row is fp32 everywhere


def test_a_rehearsal_gets_a_cell_limit_the_real_gpu_run_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from lab_utils.lab.runner import profile_cell_timeout

    assert profile_cell_timeout("llama3-8b") is None  # a real training cell runs for hours
    monkeypatch.setenv("LAB_REHEARSAL", "1")
    assert profile_cell_timeout("llama3-8b") == PROFILES["pocket"].cell_timeout_s


def test_the_smoke_scripts_fp8_step_runs(tmp_path: Path) -> None:
    """C8: the GPU smoke script's FP8 step, cut out of scripts/gpu_smoke.sh and run on this CPU as written (only the
    device changed): it passed a dict-returning function as the tokenizer, which failed at its only GPU step."""
    import re
    import subprocess
    import sys

    script = (REPO / "scripts" / "gpu_smoke.sh").read_text()
    step = re.search(r'step fp8_sim \d+ "\$PY" - <<\'EOF\'\n(.*?)\nEOF\n', script, re.S)
    assert step, "the fp8_sim step is in the smoke script"
    code = step.group(1).replace('.to("cuda")', '.to("cpu")')
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "OUT": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads((tmp_path / "fp8_sim.json").read_text())
    assert out["next_token_agreement"] > 0.5 and 0.45 < out["summary"]["memory_ratio"] < 0.55


def test_adamw_on_cuda_is_the_fused_kernel() -> None:
    """Issue 19, C2: on CUDA, torch's foreach AdamW allocates temporary fp32 copies of the state at each step (32 GB
    more for a full 8B on an H200); the fused kernel updates in place. The CPU keeps its one-tensor-at-a-time AdamW."""
    from lab_utils import train
    from lab_utils.core.profiles import PROFILES
    from lab_utils.models import memory

    assert train.optimizer_for("full", "adamw_torch", cuda=False) == "adamw_torch"  # a CPU
    assert train.optimizer_for("full", "adamw_torch", cuda=True) == "adamw_torch_fused"
    assert train.optimizer_for("lora", "adamw_torch", cuda=True) == "adamw_torch_fused"
    assert train.optimizer_for("qlora", "adamw_torch", cuda=True) == "paged_adamw_8bit"
    assert train.optimizer_for("lora", "adamw_bnb_8bit", cuda=True) == "adamw_bnb_8bit"
    prof, h100 = PROFILES["llama3-8b"], DESCRIBED["h100"]
    assert train.sft_kwargs(prof.train, "/tmp/x", h100, h100)["optim"] == "adamw_torch_fused"
    fused = memory.estimate_for_settings(prof.model.dims, replace(prof.train, optim="adamw_torch_fused"))
    assert fused == memory.estimate_for_settings(prof.model.dims, prof.train), "the same state, counted the same"


def test_qlora_profiles_load_transformers_models_in_4bit_in_every_notebook() -> None:
    """Issue 19, C6: on a T4, 04 and 06 loaded the merged 8B in 16 bits (16 GB on a ~15 GB GPU). Every notebook call
    that loads a model for transformers passes the run's `eval_load` (NF4 where the profile `evaluates_in_4bit`), and
    04's FP8 simulation (which
    rounds 16-bit weights) is skipped for a 4-bit model."""
    calls = {"04_vllm_serving": "models.load_for_eval(", "06_export": "enginecmp.hf_answers("}
    for name, call in calls.items():
        cells = json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())["cells"]
        lines = [ln for c in cells for ln in "".join(c["source"]).splitlines() if call in ln]
        assert lines and all("cfg.eval_load" in ln or "load=load" in ln for ln in lines), (name, lines)
    src = (REPO / "notebooks" / "04_vllm_serving.ipynb").read_text()
    assert "if trained.merged and not prof.evaluates_in_4bit:" in src


def test_the_engine_comparisons_reference_runs_in_4bit(tmp_path: Path) -> None:
    """06's transformers reference, loaded in NF4 as a QLoRA profile evaluates (bitsandbytes' CPU path here)."""
    from lab_utils.measure import enginecmp
    from lab_utils.models.loading import EvalLoad

    prompts = [data.format_prompt("First, tell me the capital of France")]
    answers, speed, _ = enginecmp.hf_answers(
        str(REPO / "models" / "pocket-base"), prompts, 4, 4, n_bench=1, load=EvalLoad("cpu", "float32", True)
    )
    assert len(answers) == 1 and answers[0].n_tokens > 0 and speed > 0


def test_a_rehearsal_decides_precision_for_its_target_gpu(rehearsing: None) -> None:
    """W3: in a T4 rehearsal, 02 and 07 train in fp16 autocast and load and merge in float16 on this CPU, as the T4
    would; an RTX 4090 rehearsal stays bf16. Decided by `resolve` alone, from the hardware it is given: nothing below
    it reads the environment again."""
    from lab_utils.lab import config_file
    from lab_utils.lab.runconfig import resolve
    from lab_utils.train.precision import mixed_precision

    t4 = resolve("llama3-8b-qlora", DESCRIBED["cpu"])
    assert t4.decision_hardware.name == "Tesla T4"
    assert mixed_precision(t4.profile.train, t4.decision_hardware) == {"bf16": False, "fp16": True}
    assert t4.eval_load.four_bit and t4.eval_load.compute_dtype == "float16" and t4.eval_load.device == "cpu"
    values = config_file.sections(t4, Path("out"), {"train_file": "t", "eval_file": "e"}, "<pad>")
    assert values["sft"]["fp16"] is True and values["merge"]["dtype"] == "float16"
    spark = resolve("llama3-8b", DESCRIBED["cpu"])
    assert mixed_precision(spark.profile.train, spark.decision_hardware) == {"bf16": True, "fp16": False}
    assert resolve("pocket", DESCRIBED["cpu"]).target is None, "pocket is never rehearsed: this machine decides"


def test_evaluation_loads_as_the_run_decided_and_says_so() -> None:
    """Issue 30, W-6: 06's transformers row named its weights "fp32" on a GPU too. The run's `eval_load` decides the
    device and dtype once (fp32 on a CPU, the GPU's 16-bit dtype, NF4 for a QLoRA profile), and the row's label reads
    it."""
    from lab_utils.models.loading import eval_load

    cpu, h100, t4 = DESCRIBED["cpu"], DESCRIBED["h100"], DESCRIBED["t4"]
    assert (eval_load(cpu, cpu).device, eval_load(cpu, cpu).precision) == ("cpu", "fp32")
    assert (eval_load(h100, h100).device, eval_load(h100, h100).precision) == ("cuda", "bf16")
    assert eval_load(t4, t4).precision == "fp16" and eval_load(t4, t4, four_bit=True).precision == "nf4"
    assert eval_load(cpu, t4, four_bit=True).compute_dtype == "float16", "a T4 rehearsal's NF4 computes in fp16"
