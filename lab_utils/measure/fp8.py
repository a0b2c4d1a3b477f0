"""What FP8 does to a model, simulated in torch: per-tensor e4m3 weights, their error and the greedy agreement.

This is a weight-only simulation (weights are quantized to float8 e4m3 with one scale per tensor, then dequantized
for the matmul). A GPU of compute capability >= 8.9 runs real FP8 (weights and activations) in vLLM instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def fp8_weights(model: Any) -> Iterator[list[dict[str, Any]]]:
    """Inside the `with` block, the model's linear layers (not the embeddings or LM head) carry FP8-rounded weights;
    yields a per-layer report. Rounded in place: the 16-bit originals wait in host memory and come back when the block
    ends, even after an error. No second copy of the model on the GPU (a deep copy of a bf16 8B is another 16 GB, more
    than a 24 GB card has left: issue 19, C5)."""
    import torch

    originals: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    linears = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")
    ]
    try:
        for name, module in linears:
            w = module.weight.data
            originals[name] = w.to("cpu", copy=True)
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
            w.copy_(deq)
            del q, deq
        yield rows
    finally:
        for name, module in linears:
            if name in originals:
                module.weight.data.copy_(originals[name].to(module.weight.device))


def greedy_tokens(model: Any, tokenizer: Any, texts: list[str]) -> list[Any]:
    """The model's argmax next token at every position of each text (teacher-forced), on the CPU."""
    import torch

    out = []
    for text in texts:
        # On the model's device: `models.load_for_eval` puts it on the GPU where there is one.
        enc = tokenizer(text, return_tensors="pt").to(model.device)
        with torch.no_grad():
            out.append(model(**enc).logits.argmax(-1).cpu())
    return out


def agreement(reference: list[Any], candidate: list[Any]) -> float:
    """Share of positions where two `greedy_tokens` results pick the same token."""
    agree = sum(int((a == b).sum()) for a, b in zip(reference, candidate))
    return agree / sum(a.numel() for a in reference)


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
