"""Notebook 06's engine comparison: the same held-out prompts and settings through transformers `generate`, vLLM and
llama.cpp (one row per GGUF file), with the answers checked against transformers' greedy ones and the speed, size and
memory of each, measured in one run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab_utils.measure.compare import Answer, ask_all, measures
from lab_utils.measure.evaluate import generate
from lab_utils.models.loading import EvalLoad, free, load_for_eval
from lab_utils.serve.loadtest import hf_sequential_tokens_per_s, throughput_sweep


@dataclass
class EngineRow:
    """One engine (and file) over the held-out prompts."""

    engine: str
    file: str
    size_mb: float
    resident_mb: float | None
    agreement_with_hf: float
    stop_rate: float
    contains_answer: float
    tokens_per_s_c1: float | None
    tokens_per_s_c8: float | None
    ttft_p50_ms: float | None
    start_s: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, recorded with the run."""
        return asdict(self)


def folder_size_mb(path: str | Path) -> float:
    """Size of a model: a file's, or a folder's weight files (safetensors)."""
    path = Path(path)
    if path.is_file():
        return round(path.stat().st_size / 1e6, 2)
    return round(sum(p.stat().st_size for p in path.glob("*.safetensors")) / 1e6, 2)


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (a server and its workers), in MB."""
    import psutil

    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return round(total / 1e6, 1)


def agreement(answers: list[Answer], reference: list[Any]) -> float:
    """Share of prompts whose answer text equals the reference engine's (transformers greedy), spaces trimmed. Not
    `evaluate.generation_agreement`, which also requires equal token counts: engines count differently (vLLM and
    transformers include the EOS token, llama.cpp's server does not), so across engines only the text compares."""
    same = sum(a.text.strip() == r.text.strip() for a, r in zip(answers, reference))
    return round(same / max(1, len(reference)), 3)


def hf_answers(
    model_dir: str,
    prompts: list[str],
    max_tokens: int,
    bench_max_tokens: int,
    n_bench: int = 8,
    *,
    load: EvalLoad,
) -> tuple[list[Answer], float, float]:
    """transformers greedy answers (the reference), its tokens/s one prompt at a time forced to `bench_max_tokens` (as
    the servers' load test), and the memory the model added (MB): the process's resident memory on a CPU, the GPU's
    allocated memory on a GPU (where the host's hardly moves). Loaded as `load` says: NF4 where a QLoRA profile
    evaluates so (its 16-bit 8B does not fit the 16 GB GPU it is for: issue 19, C6)."""
    import time

    import psutil
    import torch

    def used() -> int:
        return torch.cuda.memory_allocated() if load.device == "cuda" else psutil.Process().memory_info().rss

    before = used()
    model, tokenizer = load_for_eval(model_dir, load)
    resident = round((used() - before) / 1e6, 1)
    try:
        out = []
        for prompt in prompts:
            t0 = time.perf_counter()
            g = generate(model, tokenizer, [prompt], max_tokens)[0]
            out.append(Answer(g.text, g.finish_reason, g.n_tokens, (time.perf_counter() - t0) * 1000))
        speed = hf_sequential_tokens_per_s(model, tokenizer, prompts[:n_bench], bench_max_tokens)
        return out, speed, resident
    finally:
        del model
        free()


def served_row(
    engine: str,
    file: str,
    server: Any,
    served_name: str,
    records: list[dict[str, Any]],
    prompts: list[str],
    reference: list[Answer],
    max_tokens: int,
    bench_max_tokens: int,
    requests_per_level: int,
    no_stop: dict[str, Any] | None,
    size_mb: float,
) -> tuple[EngineRow, list[Answer]]:
    """Ask a running server every prompt (greedy), then measure it at concurrency 1 and 8: one table row."""
    answers = ask_all(server.base_url, server.api_key, served_name, prompts, max_tokens)
    m = measures(records, answers)
    levels = throughput_sweep(
        server.base_url,
        server.api_key,
        served_name,
        prompts,
        [1, 8],
        bench_max_tokens,
        requests_per_level,
        no_stop=no_stop,
    )
    row = EngineRow(
        engine=engine,
        file=file,
        size_mb=size_mb,
        resident_mb=process_tree_rss_mb(server.process.pid),
        agreement_with_hf=agreement(answers, reference),
        stop_rate=round(m["stop_rate"], 3),
        contains_answer=round(m["contains_answer"], 3),
        tokens_per_s_c1=levels[0].tokens_per_s,
        tokens_per_s_c8=levels[1].tokens_per_s,
        ttft_p50_ms=levels[0].ttft_p50_ms,
        start_s=server.start_seconds,
    )
    return row, answers


def reading(rows: list[EngineRow]) -> str:
    """Which engine to pick when, written from the measured rows."""
    served = [r for r in rows if r.tokens_per_s_c8 is not None]
    if not served:
        return "No served engine was measured."
    c1 = max(served, key=lambda r: r.tokens_per_s_c1 or 0)
    c8 = max(served, key=lambda r: r.tokens_per_s_c8 or 0)
    small = min(served, key=lambda r: r.size_mb)
    faithful = [r for r in served if r.agreement_with_hf >= 0.9]
    lines = [
        f"One user at a time: {c1.engine} ({c1.file}) was fastest, {c1.tokens_per_s_c1:,.0f} tokens/s.",
        f"Eight users at once: {c8.engine} ({c8.file}) was fastest, {c8.tokens_per_s_c8:,.0f} tokens/s "
        f"({c8.tokens_per_s_c8 / c8.tokens_per_s_c1:.1f}x its own single-user speed).",
        "From one user to eight: "
        + ", ".join(
            f"{r.engine} {r.file} {r.tokens_per_s_c8 / r.tokens_per_s_c1:.1f}x" for r in served if r.tokens_per_s_c1
        )
        + " (batching many requests pays when the model's arithmetic dominates a step; llama-cpp-python's server runs"
        " one request at a time).",
        f"Smallest: {small.engine} ({small.file}), {small.size_mb:,.1f} MB, answers equal to transformers' on "
        f"{small.agreement_with_hf:.0%} of the prompts, stop rate {small.stop_rate:.0%}.",
    ]
    if faithful:
        lines.append(
            "Equal to transformers' greedy answers on at least 90% of the prompts: "
            + ", ".join(f"{r.engine} {r.file} ({r.agreement_with_hf:.0%})" for r in faithful)
            + "."
        )
    return " ".join(lines)


def plot(rows: list[EngineRow], title: str = "Engines on the same prompts") -> Any:
    """Tokens/s at concurrency 1 and 8 per engine and file, with agreement with transformers in the labels."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = [f"{r.engine}\n{r.file}" for r in rows]
    x = range(len(rows))
    ax.bar(
        [i - 0.2 for i in x], [r.tokens_per_s_c1 or 0 for r in rows], width=0.4, label="concurrency 1", color="#4477aa"
    )
    ax.bar(
        [i + 0.2 for i in x], [r.tokens_per_s_c8 or 0 for r in rows], width=0.4, label="concurrency 8", color="#ee7733"
    )
    for i, r in zip(x, rows):
        ax.text(
            i,
            max(r.tokens_per_s_c1 or 0, r.tokens_per_s_c8 or 0),
            f"{r.agreement_with_hf:.0%} = HF",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_ylabel("output tokens/s")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig
