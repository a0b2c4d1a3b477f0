"""The lab report and the run comparison, on recorded results written by hand into temporary run folders."""

from __future__ import annotations

import json
from pathlib import Path

from lab_utils.course import headline, report


def make_run(folder: Path, loss: float, tps: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(
        json.dumps(
            {
                "00_setup": {"profile": "pocket", "device": "cpu", "device_name": "AMD", "versions": {"trl": "1.16.0"}},
                "02_sft": {
                    "train_loss_last": loss,
                    "method": "lora",
                    "sft_benchmark": [{"mode": "lab", "tokens_per_s": tps}],
                },
            }
        )
    )
    (folder / "figures").mkdir()
    (folder / "figures" / "02_loss.png").write_bytes(b"\x89PNG")
    (folder / "02_sft.ipynb").write_text("{}")
    return folder


def test_report_lists_figures_plots_links_and_versions(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r1", 0.9, 3000.0)
    html_path, md_path = report.write_report(run)
    md = md_path.read_text()
    assert "Profile **pocket** on **cpu**" in md
    assert "| train_loss_last | 0.9 |" in md and "| sft_benchmark.mode=lab.tokens_per_s | 3000 |" in md
    assert "![02_loss](figures/02_loss.png)" in md and "[executed notebook](02_sft.ipynb)" in md
    assert "| trl | 1.16.0 |" in md
    page = html_path.read_text()
    assert "<img src='figures/02_loss.png'" in page and "href='02_sft.ipynb'" in page


def test_compare_runs_gives_ratios(tmp_path: Path) -> None:
    a = make_run(tmp_path / "cpu", 1.0, 1000.0)
    b = make_run(tmp_path / "gpu", 0.8, 50000.0)
    rows = {r["figure"]: r for r in report.compare_runs(a, b)}
    assert rows["02_sft.sft_benchmark.mode=lab.tokens_per_s"]["b/a"] == 50.0
    assert rows["02_sft.train_loss_last"]["b/a"] == 0.8
    assert "02_sft.method" not in rows  # equal non-numeric values are left out
    assert "50" in report.compare_runs_text(a, b)


LOOP = "Q: What is the capital of the United States? A: Washington.\nQ: What is the capital of the United States?"
PARIS = "The capital of France is Paris."


def answer(content: str, finish: str, tokens: int) -> dict[str, object]:
    """A server reply as api.brief records it."""
    return {"model": "m", "finish_reason": finish, "completion_tokens": tokens, "content": content}


def full_results() -> dict[str, dict[str, object]]:
    """A full pocket run's results.json, trimmed to the fields the headline reads (values as a real run recorded)."""
    gguf = {
        ft: {"file": f"finetuned-{ft}.gguf", "size_mb": mb}
        for ft, mb in (("f16", 7.54), ("q8_0", 4.04), ("q4_0", 2.31))
    }
    return {
        "00_setup": {
            "profile": "pocket",
            "device": "cpu",
            "device_name": "AMD EPYC",
            "story": {
                "question": "First, tell me the capital of France",
                "text": LOOP,
                "n_tokens": 48,
                "finish_reason": "length",
                "max_new_tokens": 48,
            },  # fmt: skip
            "versions": {"trl": "1.16.0"},
        },
        "01_alpaca_data": {
            "n_train": 2147,
            "n_eval": 113,
            "n_skipped": 0,
            "median_tokens": 49,
            "max_tokens": 95,
            "eos_supervised": True,
        },  # fmt: skip
        "02_sft": {
            "method": "lora",
            "steps": 100,
            "eval_loss_before": 2.4511618614196777,
            "eval_loss": 1.4615659713745117,
            "stop_rate_base": 0.0,
            "stop_rate_finetuned": 1.0,
            "exact_match_base": 0.0,
            "exact_match_finetuned": 0.3695652173913043,
            "n_eval_prompts": 92,
            "max_new_tokens": 128,
            "reference_base": {"text": LOOP, "n_tokens": 128, "stopped": False},
            "reference_finetuned": {"text": PARIS, "n_tokens": 8, "stopped": True},
        },
        "03_memory_optimizations": {
            "configs": [
                {"name": "1 baseline: full fp32", "ran": True, "peak_memory_mb": 644.2},
                {"name": "4 + gradient accumulation", "ran": False, "peak_memory_mb": None},
                {"name": "9 QLoRA + gradient checkpointing", "ran": True, "peak_memory_mb": 178.7},
            ]
        },
        "04_vllm_serving": {
            "engine": "vllm",
            "base_completion": answer(LOOP, "length", 128),
            "chat_finetuned": answer(PARIS, "stop", 8),
            "openai_client_finish_reason": "stop",
            "throughput": [{"concurrency": c, "tokens_per_s": t} for c, t in ((1, 496.5), (4, 944.9), (32, 3142.9))],
        },
        "05_before_after": {
            "engine": "vllm",
            "n_prompts": 92,
            "max_tokens": 128,
            "base": {"stop_rate": 0.0, "exact_match": 0.0, "contains_answer": 0.0},
            "finetuned": {"stop_rate": 1.0, "exact_match": 0.425, "contains_answer": 0.4625},
            "by_kind": {
                "base": {"seen_fact": {"n": 25, "contains_answer": 0.0}, "skill": {"n": 30, "contains_answer": 0.0}},
                "finetuned": {
                    "seen_fact": {"n": 25, "contains_answer": 0.68},
                    "skill": {"n": 30, "contains_answer": 0.1},
                },
            },
            "reference_base_completion": answer(LOOP, "length", 128),
            "reference_finetuned_chat": answer(PARIS, "stop", 9),
        },
        "06_export": {
            "gguf_files": gguf,
            "seed_answers": {ft: {"status": 200, **answer(PARIS, "stop", 7)} for ft in gguf},
            "engines": {f"llama.cpp gguf {ft}": {"contains_answer": 0.7} for ft in gguf},
        },
        "07_preference": {
            "engine": "vllm",
            "scores": {
                "base": {"abstain_invented": 0.0, "seed_paris": False, "seed_stopped": False, "seed_tokens": 48},
                "SFT": {"abstain_invented": 0.0, "abstain_real": 0.0, "capital_real": 0.7917, "seed_tokens": 8},
                "DPO": {
                    "abstain_invented": 0.9667,
                    "abstain_real": 0.0,
                    "capital_real": 0.7083,
                    "seed_paris": True,
                    "seed_stopped": True,
                    "seed_tokens": 8,
                },  # fmt: skip
            },
            "served": {"abstain_invented": 0.9667},
        },
    }


def write_run(folder: Path, results: dict[str, dict[str, object]], plots: tuple[str, ...] = ()) -> Path:
    """A run folder holding results.json and the named plots."""
    (folder / "figures").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    for name in plots:
        (folder / "figures" / name).write_bytes(b"\x89PNG")
    return folder


def test_report_html_tells_the_story_first_then_folds_the_records(tmp_path: Path) -> None:
    """Seed answers (the seed's own figures, then the run's), the headline table, the plots, then folded records."""
    run = write_run(tmp_path / "full", full_results(), ("02_loss.png", "04_throughput.png"))
    (run / "07_preference_tuning.ipynb").write_text("{}")
    page = report.write_report(run)[0].read_text()
    order = [
        "First, tell me the capital of France",
        "500 tokens, finish_reason &#x27;length&#x27;",  # the seed's own figures: base loops to max_tokens
        "11 tokens, finish_reason &#x27;stop&#x27;",
        "02 · transformers generate",
        "128 tokens, finish_reason &#x27;length&#x27;: cut at the limit of 128",  # this run's base, cut
        "8 tokens, finish_reason &#x27;stop&#x27;: stopped",  # this run's fine-tuned model, stopped
        "04 · vllm",
        "9 tokens",  # 05's chat answer
        "06 · llama.cpp, GGUF q4_0 (2.31 MB)",
        "<h2 id='headline'>",
        "eval loss 2.451 → 1.462 (perplexity 11.6 → 4.31); stop rate 0% → 100%; exact match 0% → 37%",
        "644 MB (1 baseline: full fp32) → lowest 179 MB (9 QLoRA + gradient checkpointing), 3.6x less; 2 of 3",
        "496.5 tokens/s at c1 → 3,143 at c32 (6.3x)",
        "exact match 0% → 42%; contains answer 0% → 46% (seen_fact 0% → 68%, skill 0% → 10%)",
        "smallest GGUF that still answers: q4_0, 2.31 MB",
        "SFT 0% → DPO 97%",
        "<h2 id='plots'>",
        "<img src='figures/02_loss.png'",
        "<img src='figures/04_throughput.png'",
        "<h2 id='records'>",
        "<details><summary>00_setup</summary>",
        "<details><summary>07_preference · <a href='07_preference_tuning.ipynb'>",
    ]
    positions = [page.find(text) for text in order]
    missing = [text for text, pos in zip(order, positions) if pos < 0]
    assert not missing, f"not in the report: {missing}"
    assert positions == sorted(positions), [t for t, p, q in zip(order[1:], positions[1:], positions) if p < q]
    assert page.count("<details>") == 9, "one fold per notebook, and one for the versions"
    assert "<|im" not in page and "Paris&lt;|im_end|&gt;" in page, "answers are escaped"


def test_headline_says_not_run_for_a_subset_run_and_compare_runs_shows_both(tmp_path: Path) -> None:
    """A run of 04 alone: every other line says "not run"; compare-runs gives each run's headline in its own column."""
    full = full_results()
    subset = write_run(tmp_path / "subset", {"04_vllm_serving": {**full["04_vllm_serving"], "throughput": [
        {"concurrency": 1, "tokens_per_s": 176.9}, {"concurrency": 8, "tokens_per_s": 1200.0}]}})  # fmt: skip
    rows = headline.headline(json.loads((subset / "results.json").read_text()))
    assert [r.notebook for r in rows] == list(headline.NOTEBOOKS)
    assert [r.figures for r in rows if r.notebook != "04_vllm_serving"] == [headline.NOT_RUN] * 7
    assert "176.9 tokens/s at c1 → 1,200 at c8" in rows[4].figures  # no c32 measured: the highest level
    page = report.report_html(subset)
    assert page.index("not run") < page.index("<h2 id='records'>") and "(no plots)" in page
    text = report.compare_runs_text(write_run(tmp_path / "full", full), subset)
    head = text[: text.index("Every recorded figure")]
    line = next(li for li in head.splitlines() if li.startswith("04_vllm_serving"))
    assert line.index("496.5 tokens/s") < line.index("176.9 tokens/s")
    assert next(li for li in head.splitlines() if li.startswith("02_sft")).rstrip().endswith("not run")


def test_smallest_gguf_that_still_answers() -> None:
    """The smallest file whose seed answer names Paris and stops; without seed answers, the best contains-answer."""
    r06 = full_results()["06_export"]
    r06["seed_answers"]["q4_0"] = answer("The capital of France is Lyon.", "stop", 8)
    assert headline.smallest_answering_gguf(r06)[0] == "q8_0"
    r06["seed_answers"]["q8_0"] = answer(PARIS + " " + PARIS, "length", 500)
    assert headline.smallest_answering_gguf(r06)[0] == "f16"
    del r06["seed_answers"]
    r06["engines"]["llama.cpp gguf q4_0"]["contains_answer"] = 0.5
    assert headline.smallest_answering_gguf(r06)[0] == "q8_0"  # 0.7 like f16, and smaller
    assert headline.smallest_answering_gguf({}) is None
