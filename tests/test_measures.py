"""Fast unit tests of the measuring helpers (no model downloads, no servers): answers, stop rates, FP8 rounding,
percentiles, the padding bound and the memory-sweep rows."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from lab_utils.core.profiles import get_profile
from lab_utils.measure import evaluate, fp8
from lab_utils.serve import api, loadtest
from lab_utils.train import bench, memsweep


def test_answers_are_matched_on_meaning_not_punctuation() -> None:
    assert evaluate.normalize("  The capital of France is  Paris. ") == "the capital of france is paris"
    assert evaluate.exact_match("The capital of France is Paris", "the capital of France is Paris.")
    assert not evaluate.exact_match("The capital of France is Paris. Q: next", "The capital of France is Paris.")
    assert evaluate.contains_answer("It is Paris, of course.", "Paris")
    assert not evaluate.contains_answer("Parisian food", "Paris"), "a whole word, not a prefix"


class _Tok:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)


def test_a_generation_is_cut_at_its_first_eos_and_counts_it() -> None:
    stopped = evaluate._to_generation("p", [5, 6, 2, 0, 0], eos=2, tokenizer=_Tok())
    assert (stopped.text, stopped.n_tokens, stopped.stopped) == ("5 6", 3, True)
    running = evaluate._to_generation("p", [5, 6, 7], eos=2, tokenizer=_Tok())
    assert (running.n_tokens, running.stopped) == (3, False)
    stats = evaluate.stop_stats([stopped, running])
    assert stats == {"stop_rate": 0.5, "mean_completion_tokens": 3.0}
    with pytest.raises(ValueError, match="no generations"):
        evaluate.stop_stats([])


def test_fp8_rounding_halves_bf16_weights_with_a_small_error() -> None:
    import torch

    torch.manual_seed(0)
    w = torch.randn(64, 64)
    q, scale = fp8.quantize(w)
    assert q.dtype == torch.float8_e4m3fn and float(q.float().abs().max()) <= fp8.E4M3_MAX
    back = fp8.dequantize(q, scale, torch.float32)
    assert float((back - w).norm() / w.norm()) < 0.05
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).to(torch.bfloat16)
    original = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    params_before = [p.data_ptr() for p in model.parameters()]
    with fp8.fp8_weights(model) as rows:
        assert len(rows) == 2
        assert not torch.equal(model[0].weight, original[0]), "the FP8-rounded weights, in the block"
        assert [p.data_ptr() for p in model.parameters()] == params_before, "rounded in place: no second copy"
    summary = fp8.summary(rows)
    assert 0.49 < summary["memory_ratio"] < 0.52 and 0 < summary["rel_error_mean"] < 0.05
    assert torch.equal(model[0].weight, original[0]) and torch.equal(model[2].weight, original[1]), "restored after"
    with pytest.raises(RuntimeError, match="boom"), fp8.fp8_weights(model):
        raise RuntimeError("boom")
    assert torch.equal(model[0].weight, original[0]), "restored after an error too"


def test_percentiles_interpolate_and_say_nan_when_empty() -> None:
    assert loadtest.percentile([10, 20, 30, 40], 50) == 25
    assert loadtest.percentile([10, 20, 30, 40], 100) == 40 and loadtest.percentile([7], 95) == 7
    assert math.isnan(loadtest.percentile([], 50))


def test_brief_reads_chat_completion_and_error_bodies() -> None:
    chat = {
        "model": "m",
        "choices": [{"message": {"content": "Paris."}, "finish_reason": "stop"}],
        "usage": {"completion_tokens": 3},
    }
    assert api.brief(chat) == {"model": "m", "finish_reason": "stop", "completion_tokens": 3, "content": "Paris."}
    long = {"choices": [{"text": "x" * 50, "finish_reason": "length"}]}
    assert api.brief(long, width=10)["content"] == "x" * 7 + "..."
    assert api.brief({"error": {"message": "no template"}}) == {"error": {"message": "no template"}}


def test_padding_bound_is_padded_over_useful_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    prof = get_profile("pocket").with_train(per_device_batch_size=2)
    monkeypatch.setattr(bench, "example_lengths", lambda profile, model_path=None: [10, 10, 10])
    assert bench.padding_bound(prof) == 1.0
    monkeypatch.setattr(bench, "example_lengths", lambda profile, model_path=None: [10, 30])
    assert bench.padding_bound(prof) == 1.5  # every batch is (10, 30): 60 padded / 40 useful


def test_the_padding_reading_is_generated_from_the_rows() -> None:
    """02's reading of its benchmark: every figure from the rows, so it is true on every machine."""
    row = lambda mode, processed, share, speedup, lab=False: {  # noqa: E731
        "mode": mode, "useful_tokens": 1000, "processed_tokens": processed, "padding_share": share,
        "speedup_vs_naive": speedup, "lab_default": lab,
    }  # fmt: skip
    rows = [
        row(bench.BASELINE, 1500, 0.33, 1.0),
        row("naive: pad to data's longest", 3000, 0.67, 0.5),
        row("padding-free", 1000, 0.0, 1.8, lab=True),
        row("length-grouped batches", 1050, 0.05, 1.4),
    ]
    text = bench.padding_reading(rows, 1.48)
    assert "processed 1.50x the useful tokens (33% padding)" in text
    assert "bound over many random batches is 1.48" in text
    assert "processed 2.00x the baseline's tokens" in text and "0.50x its speed: much more work" in text
    assert "padding-free (0% padding), ran at 1.80x" in text and "length-grouped batches (5% padding) at 1.40x" in text
    assert bench.padding_reading([], None) == "no benchmark ran: nothing to read"


def test_a_sweep_row_is_the_labs_training_settings() -> None:
    rows = {c.name: c for c in memsweep.CONFIGS}
    accum = rows["4 + gradient accumulation"].settings(steps=2, seq_len=128)
    assert (accum.per_device_batch_size, accum.gradient_accumulation_steps, accum.bf16) == (1, 2, True)
    assert accum.gradient_checkpointing and accum.max_seq_length == 128 and accum.max_steps == 2
    qlora = rows["8 QLoRA"].settings(2, 128)
    assert qlora.method == "qlora" and qlora.optim == "paged_adamw_8bit"
    assert (qlora.lora_r, qlora.lora_alpha) == (16, 32)
    # A new row is one line: the same settings path, estimated like the others.
    extra = replace(rows["7 LoRA"], name="10 LoRA + checkpointing", gradient_checkpointing=True)
    from lab_utils.models.memory import ModelDims

    dims = ModelDims(n_layers=4, hidden=256, intermediate=704, n_heads=4, n_kv_heads=4, vocab=2048, tie_embeddings=True)
    assert memsweep.estimate(extra, dims, 128) < memsweep.estimate(rows["7 LoRA"], dims, 128)


def _level(concurrency: int, trials: tuple[float, ...]) -> loadtest.LevelResult:
    median = sorted(trials)[(len(trials) - 1) // 2]
    return loadtest.LevelResult(concurrency, 8, 0, 512, 1.0, median, 1.0, 1.0, 1.0, 1.0, trials)


def test_the_load_tests_reading_says_what_the_spread_allows() -> None:
    """04's reading never claims growth the trials do not show, names a fall beyond the spread, and compares the
    adapter with the merged model's own spread."""
    grew = [_level(1, (100, 110, 105)), _level(16, (300, 320, 310)), _level(32, (400, 390, 420))]
    text = loadtest.reading(grew, adapter_at_16=305)
    assert "1: 105 (100-110)" in text and "grew with concurrency beyond the spread: 3.8x" in text
    assert "inside the merged model's own spread" in text and "fell" not in text
    noisy = [
        _level(1, (100, 400, 250)),
        _level(4, (620, 600, 640)),
        _level(16, (380, 400, 410)),
        _level(32, (300, 2500, 900)),
    ]
    text = loadtest.reading(noisy, adapter_at_16=440)
    assert "the spreads overlap: no growth shows" in text and "grew" not in text
    assert (
        "fell beyond the spread at 4 -> 16" in text and "outside the merged model's spread: faster in this run" in text
    )
    assert "at 32 requests the trials spanned 244% of the median" in text
    assert loadtest.LevelResult(1, 8, 0, 512, 1.0, 50.0, 1, 1, 1, 1).spread == (50.0, 50.0)
