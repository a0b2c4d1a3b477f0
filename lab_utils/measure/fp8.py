"""What FP8 does to a model, simulated in torch: per-tensor e4m3 weights, their error and the greedy agreement.

This is a weight-only simulation (weights are quantized to float8 e4m3 with one scale per tensor, then dequantized
for the matmul). A GPU of compute capability >= 8.9 runs real FP8 (weights and activations) in vLLM instead.
"""

from __future__ import annotations

import copy
from typing import Any

E4M3_MAX = 448.0  # largest finite float8_e4m3fn value


def quantize(weight: Any) -> tuple[Any, Any]:
    """Per-tensor FP8 (e4m3) quantization: (float8 tensor, fp32 scale) with weight ~= q * scale."""
    import torch

    w = weight.detach().float()
    scale = w.abs().max().clamp(min=1e-12) / E4M3_MAX
    return (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


def dequantize(q: Any, scale: Any, dtype: Any) -> Any:
    """Back to `dtype` for the matmul."""
    return (q.float() * scale).to(dtype)


def simulate(model: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A copy of `model` whose linear layers (not the embeddings or LM head) carry FP8-rounded weights, and a per-layer report."""
    import torch

    sim = copy.deepcopy(model)
    rows = []
    for name, module in sim.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        w = module.weight.data
        q, scale = quantize(w)
        deq = dequantize(q, scale, w.dtype)
        rel = ((deq.float() - w.float()).norm() / w.float().norm().clamp(min=1e-12)).item()
        rows.append(
            {
                "layer": name,
                "params": w.numel(),
                "bytes_before": w.numel() * w.element_size(),
                "bytes_fp8": q.numel() * q.element_size() + 4,
                "rel_error": rel,
            }
        )
        module.weight.data = deq
    return sim, rows


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Weight memory of the quantized layers before and after, and the parameter-weighted mean relative error."""
    before = sum(r["bytes_before"] for r in rows)
    after = sum(r["bytes_fp8"] for r in rows)
    params = sum(r["params"] for r in rows)
    return {
        "linear_weight_mb_before": before / 1e6,
        "linear_weight_mb_fp8": after / 1e6,
        "memory_ratio": after / before,
        "rel_error_mean": sum(r["rel_error"] * r["params"] for r in rows) / params,
        "rel_error_max": max(r["rel_error"] for r in rows),
    }


def next_token_agreement(reference: Any, candidate: Any, tokenizer: Any, texts: list[str]) -> float:
    """Share of positions (teacher-forced over `texts`) where both models' argmax next token is the same."""
    import torch

    agree = total = 0
    for text in texts:
        # On the models' device: `models.load_for_eval` puts them on the GPU where there is one.
        enc = tokenizer(text, return_tensors="pt").to(reference.device)
        with torch.no_grad():
            a = reference(**enc).logits.argmax(-1)
            b = candidate(**enc).logits.argmax(-1)
        agree += int((a == b).sum())
        total += a.numel()
    return agree / total
