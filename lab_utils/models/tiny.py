"""The one tiny-Llama builder: the pocket model, the rehearsal's stand-ins, the memory sweep's wide variant and the
collator view's stand-in are all seeded, randomly initialised Llamas built here from a tokenizer and a size."""

from __future__ import annotations

from typing import Any


def tiny_llama(tokenizer: Any, seed: int = 0, **config: Any) -> Any:
    """A randomly initialised `LlamaForCausalLM` (seeded) with the tokenizer's vocabulary and special token ids, sized
    by `config` (any `LlamaConfig` field: hidden_size, num_hidden_layers, ...)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if tokenizer.pad_token_id is not None:
        ids["pad_token_id"] = tokenizer.pad_token_id
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **ids, **config))
