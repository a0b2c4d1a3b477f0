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
) -> list[LevelResult]:
    """Measure each concurrency level in turn, after one untimed warm-up request (fixed output length, so levels
    compare). `no_stop`: the request fields that keep the engine from stopping at EOS (default vLLM's `ignore_eos`;
    llama.cpp's server takes a logit bias)."""
    # One untimed request first: the engine's first request pays one-off costs (allocations, kernel selection) that
    # would otherwise land in the first level's TTFT.
    _run_sync(_run_level(base_url, api_key, model, prompts, 1, 1, max_tokens, timeout, no_stop))
    out = []
    for level in levels:
        n = requests_per_level or max(2 * level, 8)
        out.append(_run_sync(_run_level(base_url, api_key, model, prompts, level, n, max_tokens, timeout, no_stop)))
    return out


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


def plot_throughput(levels: list[dict[str, Any]], hf_tokens_per_s: float | None = None, title: str = "") -> Any:
    """Output tokens/s and TTFT against concurrency, with HF sequential generate as a reference line."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    xs = [r["concurrency"] for r in levels]
    a.plot(xs, [r["tokens_per_s"] for r in levels], "o-", color="#4477aa", label="vLLM")
    if hf_tokens_per_s:
        a.axhline(hf_tokens_per_s, color="#cc3311", linestyle="--", label="HF generate, sequential")
    a.set_xscale("log", base=2)
    a.set_xlabel("concurrent requests")
    a.set_ylabel("output tokens/s")
    a.legend()
    b.plot(xs, [r["ttft_p50_ms"] for r in levels], "o-", label="TTFT p50")
    b.plot(xs, [r["ttft_p95_ms"] for r in levels], "o--", label="TTFT p95")
    b.set_xscale("log", base=2)
    b.set_xlabel("concurrent requests")
    b.set_ylabel("ms")
    b.legend()
    fig.suptitle(title or "vLLM under load")
    fig.tight_layout()
    return fig
