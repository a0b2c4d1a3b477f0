"""The lab's two diagrams, drawn to scale from a model's real shapes: LoRA's B·A beside the weight W it adapts (02),
and the KV cache's fixed-size blocks as PagedAttention allocates them (04). Each comes with the figures it draws."""

from __future__ import annotations

import math
from typing import Any

# Bytes per stored value of a KV cache (or weight) dtype, by the names vLLM's --dtype and llama.cpp use.
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8": 1}
W_COLOR, ADAPTER_COLOR, TOKEN_COLOR = "#bbbbbb", "#ee7733", "#4477aa"


def lora_facts(d_out: int, d_in: int, r: int) -> dict[str, Any]:
    """The parameter counts of one adapted matrix: W (d_out x d_in, frozen) and B (d_out x r) · A (r x d_in)."""
    w, adapter = d_out * d_in, r * (d_in + d_out)
    return {
        "d_out": d_out,
        "d_in": d_in,
        "r": r,
        "w_params": w,
        "b_params": d_out * r,
        "a_params": r * d_in,
        "adapter_params": adapter,
        "adapter_share": round(adapter / w, 4),
    }


def lora_beside_w(d_out: int, d_in: int, r: int, name: str = "q_proj", min_side: float = 0.015) -> Any:
    """W beside B and A, drawn to one scale (one unit per row or column), each labelled with its shape and parameter
    count. A rank under `min_side` of W's longest side is drawn that wide so it stays visible; the labels are exact."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    f = lora_facts(d_out, d_in, r)
    thick, gap = max(r, min_side * max(d_out, d_in)), 0.12 * max(d_out, d_in)
    b_x = d_in + gap
    a_x = b_x + thick + gap / 2
    fig, ax = plt.subplots(figsize=(8, 3.2))
    boxes = (
        ("W", 0, 0, d_in, d_out, W_COLOR, f"W: {d_out} x {d_in}\n{f['w_params']:,} frozen"),
        ("B", b_x, 0, thick, d_out, ADAPTER_COLOR, f"B: {d_out} x {r}\n{f['b_params']:,}"),
        ("A", a_x, d_out - thick, d_in, thick, ADAPTER_COLOR, f"A: {r} x {d_in}\n{f['a_params']:,}"),
    )
    for label, x, y, w, h, color, text in boxes:
        ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="black", label=label))
        ax.text(x + w / 2, y - 0.04 * d_out if label != "A" else y - 0.1 * d_out, text, ha="center", va="top")
    ax.text(d_in + gap / 2, d_out / 2, "+", ha="center", va="center", fontsize=20)
    ax.text(b_x + thick + gap / 4, d_out - thick / 2, "·", ha="center", va="center", fontsize=20)
    ax.set_xlim(-0.05 * d_in, a_x + d_in * 1.05)
    ax.set_ylim(-0.3 * d_out, d_out * 1.05)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(
        f"LoRA on {name}, r = {r}: B·A trains {f['adapter_params']:,} parameters, "
        f"{f['adapter_share']:.1%} of W's {f['w_params']:,}"
    )
    fig.tight_layout()
    return fig


def kv_block_facts(lengths: list[int], block_size: int, bytes_per_token: float) -> dict[str, Any]:
    """What PagedAttention allocates for sequences of `lengths` tokens: whole blocks of `block_size` tokens each, the
    last one partly filled; bytes per token and per block; the slots reserved but not (yet) used."""
    blocks = [math.ceil(n / block_size) for n in lengths]
    free = sum(b * block_size for b in blocks) - sum(lengths)
    return {
        "lengths": list(lengths),
        "block_size": block_size,
        "blocks": blocks,
        "bytes_per_token": bytes_per_token,
        "bytes_per_block": bytes_per_token * block_size,
        "free_slots": free,
        "free_share": round(free / max(1, sum(b * block_size for b in blocks)), 4),
    }


def kv_cache_blocks(lengths: list[int], block_size: int, bytes_per_token: float, title: str = "") -> Any:
    """Each sequence as a row of fixed-size blocks (one unit per token slot): its tokens filled, the last block's free
    slots left white; the bytes per token and per block in the title."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    f = kv_block_facts(lengths, block_size, bytes_per_token)
    width = max(f["blocks"]) * block_size
    fig, ax = plt.subplots(figsize=(9, 0.7 * len(lengths) + 1.4))
    for row, (n, n_blocks) in enumerate(zip(lengths, f["blocks"])):
        y = -row
        for b in range(n_blocks):
            x = b * block_size
            used = min(block_size, n - x)
            ax.add_patch(Rectangle((x, y), used, 0.7, facecolor=TOKEN_COLOR, alpha=0.8, label="tokens", zorder=2))
            ax.add_patch(Rectangle((x, y), block_size, 0.7, fill=False, edgecolor="black", label="block", zorder=3))
        free = n_blocks * block_size - n
        ax.text(
            width * 1.01, y + 0.35, f"{n} tokens: {n_blocks} blocks, {free} free slot{'s' * (free != 1)}", va="center"
        )
    ax.set_xlim(0, width * 1.45)
    ax.set_ylim(-len(lengths) + 0.8, 0.9)
    ax.set_yticks([-i + 0.35 for i in range(len(lengths))], [f"sequence {i + 1}" for i in range(len(lengths))])
    ax.set_xlabel("token slots")
    ax.spines[["top", "right"]].set_visible(False)
    per_block = f["bytes_per_block"]
    ax.set_title(
        title
        or f"KV cache in blocks of {block_size} tokens: {bytes_per_token:,.0f} B per token, "
        f"{per_block / 1024:,.0f} KiB per block"
    )
    fig.tight_layout()
    return fig
