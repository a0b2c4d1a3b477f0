"""The two diagrams draw the shapes they are given, to scale, and label them with the true counts."""

from __future__ import annotations

import math

import matplotlib
import pytest

matplotlib.use("Agg")

from lab_utils.course import diagrams  # noqa: E402
from lab_utils.models import memory  # noqa: E402


def patches(fig, label: str) -> list:
    return [p for p in fig.axes[0].patches if p.get_label() == label]


def texts(fig) -> str:
    ax = fig.axes[0]
    return "\n".join([t.get_text() for t in ax.texts] + [ax.get_title()])


def test_lora_draws_w_b_and_a_to_one_scale_with_their_parameter_counts() -> None:
    fig = diagrams.lora_beside_w(704, 256, 16, name="up_proj")  # the pocket model's up_proj, r = 16
    (w,), (b,), (a,) = patches(fig, "W"), patches(fig, "B"), patches(fig, "A")
    assert (w.get_width(), w.get_height()) == (256, 704)  # W is d_out x d_in: d_in across, d_out down
    assert (b.get_width(), b.get_height()) == (16, 704) and (a.get_width(), a.get_height()) == (256, 16)
    assert b.get_height() / w.get_height() == 1 and a.get_width() / w.get_width() == 1 and b.get_width() / 16 == 1
    text = texts(fig)
    assert "180,224 frozen" in text and "11,264" in text and "4,096" in text  # 704*256; 704*16; 16*256
    assert "15,360 parameters" in text and "8.5%" in text  # r*(d_in + d_out) of W's 180,224
    assert diagrams.lora_facts(704, 256, 16)["adapter_params"] == memory.lora_params(
        memory.ModelDims(1, 256, 704, 4, 4, 10), 16, "up_proj"
    ), "one formula: the diagram counts what the memory estimator counts"


def test_lora_keeps_a_tiny_rank_visible_but_labels_its_true_size() -> None:
    fig = diagrams.lora_beside_w(4096, 4096, 16)  # Llama-3-8B's q_proj: r is 0.4% of a side
    (b,) = patches(fig, "B")
    assert b.get_width() == pytest.approx(0.015 * 4096) and "B: 4096 x 16" in texts(fig)


def test_kv_cache_rows_of_blocks_with_the_last_one_partly_filled() -> None:
    lengths, block = [41, 58, 64, 90], 16
    fig = diagrams.kv_cache_blocks(lengths, block, bytes_per_token=4096)
    blocks, tokens = patches(fig, "block"), patches(fig, "tokens")
    assert len(blocks) == sum(math.ceil(n / block) for n in lengths) == 3 + 4 + 4 + 6
    assert all(p.get_width() == block for p in blocks)
    assert sum(p.get_width() for p in tokens) == sum(lengths), "every token drawn once, in the blocks of its row"
    assert sorted({p.get_width() for p in tokens}) == [9, 10, 16]  # last blocks: 41 -> 9, 58 -> 10, 90 -> 10
    text = texts(fig)
    assert "4,096 B per token" in text and "64 KiB per block" in text and "41 tokens: 3 blocks, 7 free slots" in text
    facts = diagrams.kv_block_facts(lengths, block, 4096)
    assert facts["blocks"] == [3, 4, 4, 6] and facts["free_slots"] == 7 + 6 + 0 + 6
    assert facts["bytes_per_block"] == 65536 and facts["free_share"] == round(19 / 272, 4)


def test_kv_bytes_per_token_is_two_tensors_per_layer_per_kv_head() -> None:
    # The pocket model served in bf16: 2 x 4 layers x 4 KV heads x 64 x 2 bytes; Llama-3-8B: 128 KiB per token.
    assert memory.kv_bytes_per_token(4, 4, 64, diagrams.DTYPE_BYTES["bfloat16"]) == 4096
    assert memory.kv_cache_bytes_per_token(memory.MODEL_DIMS["llama3-8b"]) == memory.kv_bytes_per_token(32, 8, 128)
    assert memory.kv_bytes_per_token(32, 8, 128, diagrams.DTYPE_BYTES["fp8"]) == 64 * 1024


def test_the_servers_logs_state_the_kv_cache_the_formula_predicts() -> None:
    """What 04 compares with the diagram's bytes per token: the KV cache each engine's log says it allocated."""
    from lab_utils.serve import engines

    vllm_cpu = (
        "INFO Explicitly set (1.0/12.34) GiB for KV cache on node 0.\nINFO CPU KV cache size: 262,144 tokens, ..."
    )
    vllm_gpu = "INFO Available KV cache memory: 12.34 GiB\nINFO GPU KV cache size: 101,056 tokens"
    llamacpp = "llama_kv_cache: size =    2.00 MiB (   512 cells,   4 layers,  1/1 seqs), K (f16):    1.00 MiB"
    assert engines.ENGINES["vllm"].kv_cache_log(vllm_cpu) == {"tokens": 262144, "gib": 1.0}
    assert engines.ENGINES["vllm"].kv_cache_log(vllm_gpu) == {"tokens": 101056, "gib": 12.34}
    assert engines.ENGINES["llamacpp"].kv_cache_log(llamacpp) == {"gib": 2 / 1024, "tokens": 512}
    per_token = memory.kv_bytes_per_token(4, 4, 64, 2)  # the pocket model, 16-bit KV cache
    assert 1.0 * 2**30 // per_token == 262144 and (2 / 1024) * 2**30 // per_token == 512
    assert engines.ENGINES["vllm"].kv_cache_log("no such line") == {}
