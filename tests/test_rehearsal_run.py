"""A rehearsal of each GPU profile on this CPU (LAB_REHEARSAL=1): the profile's own notebook flow with stand-ins of its
model and data, at test size. It asserts the profile's decisions (skip rules, memory decisions for its GPU, merge or
serve-beside-the-base), not what a random stand-in answers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from lab_utils.core.paths import REPO_ROOT
from lab_utils.core.profiles import PREFERENCE_DATASET, get_profile
from lab_utils.core.results import load_results
from lab_utils.data.standin import standin_defects
from lab_utils.lab.runner import execute_notebook

pytestmark = [pytest.mark.notebook, pytest.mark.slow, pytest.mark.rehearsal, pytest.mark.server]

SMALL = {  # test size: the flow and the decisions, not the figures
    "02_sft": {"benchmark_steps": 2, "n_merge_check": 2, "n_prompts": 8},
    "03_memory_optimizations": {"steps": 1},
    "04_vllm_serving": {"concurrency_levels": [1, 4], "requests_per_level": 4, "bench_max_tokens": 16, "trials": 1},
    "05_before_after": {"workers": 4, "n_prompts": 8},
    "06_export": {"n_prompts": 4, "requests_per_level": 2, "compare_vllm": False},
    "07_preference_tuning": {"n_invented": 8, "n_real": 4, "max_new_tokens": 16},
}


def make_lab_flow(profile: str) -> list[str]:
    """The notebooks `make lab PROFILE=... REHEARSAL=1` runs for the profile, in order (any notebook added later too):
    issue 19, R1 found 06 left out of the rehearsals, which had their own lists."""
    from lab_utils.lab.runner import list_notebooks, skip_reason
    from lab_utils.models.rehearsal import scaled

    prof = scaled(get_profile(profile))
    return [book.stem for book in list_notebooks() if not skip_reason(book, prof)]


def rehearse(profile: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run the profile's flow as `make lab PROFILE=... REHEARSAL=1` does; return what the notebooks recorded."""
    monkeypatch.setenv("LAB_REHEARSAL", "1")
    monkeypatch.setenv("LAB_REHEARSAL_TARGET", "")  # resolve() sets it; restored (removed) after the test
    for name in make_lab_flow(profile):
        params = {"profile": profile, **SMALL.get(name, {})}
        execute_notebook(REPO_ROOT / "notebooks" / f"{name}.ipynb", folder, params, cell_timeout=900)
    return load_results(folder)


def test_rehearsal_llama3_8b(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = rehearse("llama3-8b", tmp_path / "run", monkeypatch)
    defects = standin_defects()
    # 01: the hub schema loads; empty outputs are skipped and reported, over-long rows counted.
    assert r["01_alpaca_data"]["skipped_reasons"] == {"output: empty": defects["empty_output"]}
    assert r["01_alpaca_data"]["n_over_max_length"] == defects["over_long"]
    assert r["01_alpaca_data"]["eos_supervised"] is True
    # 02: training dropped both kinds of bad rows, by the stated rule; merged and checked one model at a time.
    sft = r["02_sft"]
    assert sft["data"]["n_skipped"] == defects["empty_output"] + defects["over_long"]
    assert sft["run_config"]["rehearsal"] is True and sft["run_config"]["target"]["name"] == "NVIDIA GeForce RTX 4090"
    assert sft["merged_dir"] and sft["merge_check"]["n_prompts"] == 2
    assert sft["precision"] == "bf16", "an RTX 4090 trains in bf16 (a T4 in fp16: the QLoRA rehearsal)"
    # Merged in bf16 (the profile trains in bf16): W + BA rounded once, so logits differ a little and near-ties flip.
    assert sft["merge_check"]["max_logit_difference"] < 1.0 and 0 <= sft["merge_greedy_agreement"] <= 1
    assert 0 <= sft["stop_rate_base"] <= 1 and sft["sft_benchmark"]
    # 03: decided for the 24 GB GPU with the real 8B model's dimensions: full fine-tuning skipped, QLoRA trained.
    rows = {c["name"]: c for c in r["03_memory_optimizations"]["configs"]}
    assert "GB free on NVIDIA GeForce RTX 4090" in rows["1 baseline: full fp32"]["skipped_reason"]
    assert rows["8 QLoRA"]["ran"] and rows["8 QLoRA"]["peak_memory_mb"] > 0
    # 04 and 05: the merged model served with its training template, 127.0.0.1, servers stopped.
    serving = r["04_vllm_serving"]
    assert serving["served_merged"] is True and serving["server_bound_host"] == "127.0.0.1"
    assert not any(serving["servers_running_after"])
    assert serving["openai_client_finish_reason"] in ("stop", "length")
    tuned = r["05_before_after"]["finetuned"]
    assert math.isnan(tuned["exact_match"]) and 0 <= tuned["rouge_l"] <= 1 and 0 <= tuned["contains_answer"] <= 1
    # 06: Llama 3's tokenizer exported as llama.cpp's "llama-bpe", every file served by llama.cpp with the template.
    export = r["06_export"]
    assert {f["pre_tokenizer"] for f in export["gguf_files"].values()} == {"llama-bpe"}
    assert set(export["gguf_files"]) == {"f16", "q8_0", "q4_0", "q4_K_M"}
    assert export["gguf_template_matches_training"] is True and export["modelfile_template_matches_training"] is True
    assert all(a["status"] == 200 for a in export["seed_answers"].values())
    assert_preference_flow(r["07_preference"], sft)


def assert_preference_flow(pref: dict[str, Any], sft: dict[str, Any]) -> None:
    """07 on a GPU profile: the hub preference data (its stand-in) mixed in with its defective rows skipped and
    counted, DPO trained from 02's merged model, merged and served; the figures are a random stand-in's."""
    assert pref["sft_dir"] == sft["merged_dir"] and Path(pref["dpo_dir"], "config.json").exists()
    assert pref["hub_dataset"] == PREFERENCE_DATASET and pref["n_hub_pairs"] == 24
    assert pref["dpo_settings"]["max_steps"] == 4 and len(pref["curves"]["rewards/margins"]) >= 1
    assert pref["engine"] == "vllm" and 0 <= pref["served"]["abstain_invented"] <= 1


def test_rehearsal_llama3_8b_qlora(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = rehearse("llama3-8b-qlora", tmp_path / "run", monkeypatch)
    sft = r["02_sft"]
    assert sft["method"] == "qlora" and sft["merge_check"]["dtype"] == "nf4"  # evaluated in 4-bit, as trained
    # W3: decided for a T4, 02 trains in fp16 autocast on this CPU, its adapters fp32 (C3's fix, in a real run).
    assert sft["precision"] == "fp16" and sft["trainable_dtypes"] == ["float32"]
    assert all(math.isfinite(sft[k]) for k in ("train_loss_first", "train_loss_last", "eval_loss"))
    assert_preference_flow(r["07_preference"], sft)
    assert r["07_preference"]["dpo_settings"]["per_device_batch_size"] == 2
    rows = {c["name"]: c for c in r["03_memory_optimizations"]["configs"]}
    # Decided for a T4 (16 GB, no native bf16): what does not fit is skipped, the QLoRA rows run, in fp16 there.
    assert "GB free on Tesla T4" in rows["2 + bf16 mixed precision"]["skipped_reason"]
    assert "GB free on Tesla T4" in rows["7 LoRA"]["skipped_reason"]
    assert rows["8 QLoRA"]["ran"] and "fp16 on Tesla T4" in rows["8 QLoRA"]["note"]
    # 04-06 serve and export the model merged from QLoRA (bf16, from the 4-bit base's dequantized weights).
    assert r["06_export"]["exported_from"] == sft["merged_dir"] and r["06_export"]["gguf_files"]
    assert not any(r["04_vllm_serving"]["servers_running_after"]) and r["05_before_after"]["n_prompts"] > 0


def test_rehearsal_llama3_70b_qlora(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = rehearse("llama3-70b-qlora", tmp_path / "run", monkeypatch)
    sft = r["02_sft"]
    # 70B: nothing merged (a bf16 copy does not fit 128 GB), no transformers-side evaluation, said so.
    assert sft["merged_dir"] == "" and sft["merge_check"] == {} and sft["stop_rate_base"] is None
    assert "not merged" in sft["serving_plan"] and Path(sft["adapter_dir"], "chat_template.jinja").exists()
    # 03 sweeps the 8B sibling, decided for the DGX Spark.
    assert r["03_memory_optimizations"]["sweep_model"] == "meta-llama/Meta-Llama-3-8B"
    # 04/05: the base served with the adapter beside it, under the fine-tuned model's name.
    serving = r["04_vllm_serving"]
    assert serving["served_merged"] is False and serving["served_finetuned"] == sft["base_model"]
    assert serving["hf_sequential_tokens_per_s"] is None and serving["fp8_greedy_agreement"] is None
    assert not any(serving["servers_running_after"])
    assert r["05_before_after"]["n_prompts"] > 0
    # 06: no merged model, so no GGUF file; said, and the notebook ends cleanly. 07 is skipped by make lab (no model).
    export = r["06_export"]
    assert export["exported_from"] is None and export["gguf_files"] == {} and export["engines"] == {}
    assert list(r) == make_lab_flow("llama3-70b-qlora") and "07_preference" not in r
