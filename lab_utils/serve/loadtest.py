"""Measuring a server under concurrent load: tokens/s, time to first token, latency (requests in `api`)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class LevelResult:
    """Measurements at one concurrency level."""

    concurrency: int
    requests: int
    errors: int
    output_tokens: int
    seconds: float
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    tokens_per_s_trials: tuple[float, ...] = ()  # every trial's tokens/s; tokens_per_s is their median

    @property
    def spread(self) -> tuple[float, float]:
        """The lowest and the highest tokens/s of the trials (the one figure where there was one trial)."""
        trials = self.tokens_per_s_trials or (self.tokens_per_s,)
        return min(trials), max(trials)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form."""
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


async def _one_request(
    client: Any, url: str, headers: dict[str, str], payload: dict[str, Any]
) -> tuple[float, float, int]:
    """Stream one completion: (time to first token, total latency, output tokens)."""
    t0 = time.perf_counter()
    ttft = None
    tokens = text_chunks = 0
    async with client.stream("POST", url, headers=headers, json=payload) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                text_chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - t0
    # vLLM reports usage in the stream; llama.cpp's server streams one chunk per token and no usage.
    return (ttft if ttft is not None else latency), latency, tokens or text_chunks


async def _run_level(
    base_url: str,
    api_key: str,
    model: str,
    prompts: list[str],
    concurrency: int,
    n_requests: int,
    max_tokens: int,
    timeout: float,
    no_stop: dict[str, Any] | None = None,
) -> LevelResult:
    """Send n_requests with at most `concurrency` in flight; every request is bounded by `timeout`."""
    import httpx

    url = f"{base_url}/v1/completions"
    headers = {"Authorization": f"Bearer {api_key}"}
    sem = asyncio.Semaphore(concurrency)
    results: list[tuple[float, float, int]] = []
    errors = 0

    async def worker(i: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        payload = {
            "model": model,
            "prompt": prompts[i % len(prompts)],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            **(no_stop if no_stop is not None else {"ignore_eos": True}),
        }
        async with sem:
            try:
                results.append(await asyncio.wait_for(_one_request(client, url, headers, payload), timeout))
            except (httpx.HTTPError, asyncio.TimeoutError, json.JSONDecodeError):
                errors += 1

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i, client) for i in range(n_requests)))
        seconds = time.perf_counter() - t0
    ttfts = [r[0] * 1000 for r in results]
    lats = [r[1] * 1000 for r in results]
    tokens = sum(r[2] for r in results)
    return LevelResult(
        concurrency=concurrency,
        requests=n_requests,
        errors=errors,
        output_tokens=tokens,
        seconds=round(seconds, 2),
        tokens_per_s=round(tokens / seconds, 1),
        ttft_p50_ms=round(percentile(ttfts, 50), 1),
        ttft_p95_ms=round(percentile(ttfts, 95), 1),
        latency_p50_ms=round(percentile(lats, 50), 1),
        latency_p95_ms=round(percentile(lats, 95), 1),
    )


def throughput_sweep(
    base_url: str,
    api_key: str,
    model: str,
    prompts: list[str],
    levels: list[int],
    max_tokens: int = 64,
    requests_per_level: int = 0,
    timeout: float = 120.0,
    no_stop: dict[str, Any] | None = None,
    trials: int = 1,
) -> list[LevelResult]:
    """Measure each concurrency level, after one untimed warm-up request (fixed output length, so levels compare).
    With `trials` > 1 the levels run round after round (so a slow minute of a shared machine hits every level alike),
    and each level reports the trial of median tokens/s with every trial's figure beside it. Requests per trial:
    `requests_per_level`, else max(2 x level, 8) for one trial and max(level, 8) for several. `no_stop`: the request
    fields that keep the engine from stopping at EOS (default vLLM's `ignore_eos`; llama.cpp's takes a logit bias)."""
    # One untimed request first: the engine's first request pays one-off costs (allocations, kernel selection) that
    # would otherwise land in the first level's TTFT.
    _run_sync(_run_level(base_url, api_key, model, prompts, 1, 1, max_tokens, timeout, no_stop))
    runs: dict[int, list[LevelResult]] = {level: [] for level in levels}
    for _ in range(trials):
        for level in levels:
            n = requests_per_level or max((2 if trials == 1 else 1) * level, 8)
            runs[level].append(
                _run_sync(_run_level(base_url, api_key, model, prompts, level, n, max_tokens, timeout, no_stop))
            )
    out = []
    for level in levels:
        ranked = sorted(runs[level], key=lambda r: r.tokens_per_s)
        median = ranked[(len(ranked) - 1) // 2]
        median.tokens_per_s_trials = tuple(r.tokens_per_s for r in runs[level])
        out.append(median)
    return out


def reading(levels: list[LevelResult], adapter_at_16: float | None = None) -> str:
    """What the load test shows, written from its figures and their spread: whether tokens/s grew with concurrency
    beyond the noise, where it fell, how far one trial can be off, and whether the adapter differs from the merged
    model by more than the merged model's own spread."""
    if not levels:
        return "No load test ran."
    n = max(len(lv.tokens_per_s_trials) or 1 for lv in levels)
    shown = ", ".join(
        f"{lv.concurrency}: {lv.tokens_per_s:,.0f} ({lv.spread[0]:,.0f}-{lv.spread[1]:,.0f})" for lv in levels
    )
    lines = [f"- Tokens/s by concurrency, the median of {n} trial(s) (lowest-highest): {shown}."]
    first, last = levels[0], levels[-1]
    if last.spread[0] > first.spread[1]:
        lines.append(
            f"- It grew with concurrency beyond the spread: {last.tokens_per_s / first.tokens_per_s:.1f}x at "
            f"{last.concurrency} requests against 1. Batching shares each step's work among the running requests."
        )
    elif last.spread[1] < first.spread[0]:
        lines.append(f"- It fell from {first.concurrency} to {last.concurrency} requests, beyond the spread.")
    else:
        lines.append(f"- From {first.concurrency} to {last.concurrency} requests the spreads overlap: no growth shows.")
    falls = [(a, b) for a, b in zip(levels, levels[1:]) if b.spread[1] < a.spread[0]]
    if falls:
        where = "; ".join(f"{a.concurrency} -> {b.concurrency}" for a, b in falls)
        lines.append(
            f"- It fell beyond the spread at {where}: on a small shared CPU the server, the clients and the OS compete "
            "for the same cores, so more requests can mean less work done."
        )
    if n > 1:
        worst = max(levels, key=lambda lv: (lv.spread[1] - lv.spread[0]) / lv.tokens_per_s)
        off = (worst.spread[1] - worst.spread[0]) / worst.tokens_per_s
        lines.append(
            f"- One trial can be off: at {worst.concurrency} requests the trials spanned {off:.0%} of the median. "
            "Read a difference smaller than the spread as noise."
        )
    at16 = next((lv for lv in levels if lv.concurrency == 16), None)
    if adapter_at_16 and at16:
        ratio = adapter_at_16 / at16.tokens_per_s
        if at16.spread[0] <= adapter_at_16 <= at16.spread[1]:
            verdict = (
                "inside the merged model's own spread: this run cannot tell them apart (its low-rank matmuls cost "
            )
            verdict += "less than the noise here)"
        else:
            verdict = f"outside the merged model's spread: {'faster' if ratio > 1 else 'slower'} in this run"
        lines.append(
            f"- At 16 requests the adapter (--enable-lora) served {adapter_at_16:,.0f} tokens/s (its median), "
            f"{ratio:.2f}x the merged model's: {verdict}."
        )
    return "\n".join(lines)


def _run_sync(coro: Any) -> Any:
    """Run a coroutine to completion, also from inside Jupyter's already running event loop (in a worker thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def hf_sequential_tokens_per_s(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 64) -> float:
    """transformers `generate`, one prompt at a time, forced to `max_new_tokens` (as the benchmark's requests)."""
    import torch

    model.eval()
    tokens = 0
    t0 = time.perf_counter()
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt").to(model.device)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        tokens += out.shape[1] - enc["input_ids"].shape[1]
    return round(tokens / (time.perf_counter() - t0), 1)


def kv_cache_usage(base_url: str) -> dict[str, float]:
    """KV-cache figures scraped from /metrics: usage now, prefix-cache hits, and the cache's size in tokens."""
    import requests

    text = requests.get(f"{base_url}/metrics", timeout=10).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in (
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",
            "vllm:prefix_cache_hits_total",
            "vllm:prefix_cache_queries_total",
        ):
            found[name] = float(line.rsplit(" ", 1)[1])
        elif name == "vllm:cache_config_info":
            for key in ("kv_cache_size_tokens", "kv_cache_max_concurrency", "num_gpu_blocks", "block_size"):
                match = re.search(rf'{key}="([0-9.]+)"', line)
                if match:
                    found[f"cache_config.{key}"] = float(match.group(1))
    return found


def plot_throughput(levels: list[LevelResult], hf_tokens_per_s: float | None = None, title: str = "") -> Any:
    """Output tokens/s (the median, with the trials' spread) and TTFT against concurrency, with HF sequential
    generate as a reference line."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    xs, mid = [lv.concurrency for lv in levels], [lv.tokens_per_s for lv in levels]
    below, above = [m - lv.spread[0] for m, lv in zip(mid, levels)], [lv.spread[1] - m for m, lv in zip(mid, levels)]
    a.errorbar(
        xs, mid, yerr=[below, above], fmt="o-", capsize=4, color="#4477aa", label="vLLM (median, lowest-highest)"
    )
    if hf_tokens_per_s:
        a.axhline(hf_tokens_per_s, color="#cc3311", linestyle="--", label="HF generate, sequential")
    a.set_xscale("log", base=2)
    a.set_xlabel("concurrent requests")
    a.set_ylabel("output tokens/s")
    a.legend()
    b.plot(xs, [lv.ttft_p50_ms for lv in levels], "o-", label="TTFT p50")
    b.plot(xs, [lv.ttft_p95_ms for lv in levels], "o--", label="TTFT p95")
    b.set_xscale("log", base=2)
    b.set_xlabel("concurrent requests")
    b.set_ylabel("ms")
    b.legend()
    fig.suptitle(title or "vLLM under load")
    fig.tight_layout()
    return fig
