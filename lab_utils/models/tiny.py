"""The one tiny-Llama builder: the pocket model, the rehearsal's stand-ins, the memory sweep's wide variant and the
collator view's stand-in are all seeded, randomly initialised Llamas built here from a tokenizer and a size."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_llama(tokenizer: Any, seed: int = 0, dtype: str | None = None, **config: Any) -> Any:
    """A randomly initialised `LlamaForCausalLM` (seeded) with the tokenizer's special token ids, sized by `config` (any
    `LlamaConfig` field: hidden_size, num_hidden_layers, ...; `vocab_size` defaults to the tokenizer's). With `dtype`,
    built in that dtype with no fp32 copy first, on the device of the caller's `with torch.device(...)` (the GPU
    check's random 8B-shaped models)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if tokenizer.pad_token_id is not None:
        ids["pad_token_id"] = tokenizer.pad_token_id
    llama = LlamaConfig(**{"vocab_size": len(tokenizer), **ids, **config})
    if dtype is None:
        return LlamaForCausalLM(llama)
    return AutoModelForCausalLM.from_config(llama, dtype=getattr(torch, dtype))


def save_probe_model(model_dir: str | Path, out_dir: str | Path) -> Path:
    """A 1-layer, 32-wide Llama with `model_dir`'s tokenizer, saved in `out_dir`: trained like any model, its memory
    above the estimator's (tiny) total is what training costs on this machine beyond the estimated terms."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    model = tiny_llama(tok, num_key_value_heads=2, max_position_embeddings=4096, **shape)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return Path(out_dir)
