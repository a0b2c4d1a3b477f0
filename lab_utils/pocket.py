"""The pocket base model: a tiny Llama the lab builds, tokenizes and pretrains itself on a CPU.

It stands in for Llama-3-8B when there is no GPU and no hub: same architecture family, same tokenizer
conventions (BOS/EOS, a pad token distinct from EOS), and, like any base model, it was pretrained on plain
prose only, so it continues text and has never seen the Alpaca instruction template.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab_utils.paths import atomic_write_json, cache_dir, swap_in_dir

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
BUILD_INFO = "pocket_build.json"
BUILD_VERSION = "1"  # bump when the build recipe below changes, so cached models are rebuilt


@dataclass(frozen=True)
class PocketConfig:
    """Size of the pocket model and of its pretraining run."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4  # head_dim = hidden/heads = 64: vLLM's CPU attention rejects 16
    intermediate_size: int = 704
    vocab_size: int = 2048
    max_position_embeddings: int = 512
    seq_len: int = 128
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    max_steps: int = 500
    max_seconds: float = 170.0  # hard cap on pretraining time (the budget is 3 minutes in all); 500 steps take ~150 s here
    n_docs: int = 3000
    seed: int = 0
    threads: int = 0  # torch threads; 0 = all cores

    @property
    def head_dim(self) -> int:
        """Per-head width (64 by default)."""
        return self.hidden_size // self.num_heads

    def key(self) -> str:
        """A short hash naming this configuration's cache folder."""
        fields = {k: v for k, v in asdict(self).items() if k != "threads"}
        # The corpus and the tokenizer's text come from the generator: a change there means a new model.
        generator = (Path(__file__).parent / "pocket_data.py").read_bytes()
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode() + generator + BUILD_VERSION.encode())
        return digest.hexdigest()[:10]


def model_dir(config: PocketConfig = PocketConfig()) -> Path:
    """Where the model built from `config` lives (it may not exist yet)."""
    return cache_dir() / f"pocket-{config.key()}"


def is_built(path: Path) -> bool:
    """True when `path` holds a complete pocket model (its build record is written last)."""
    return (path / BUILD_INFO).exists() and (path / "config.json").exists()


def ensure_pocket_model(config: PocketConfig = PocketConfig(), force: bool = False, progress: bool = True) -> Path:
    """Return the pocket model's folder, building it first if it is missing (or `force`)."""
    target = model_dir(config)
    with open(cache_dir() / f".pocket-{config.key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(target) and not force:
            return target
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        build_pocket_model(tmp, config, progress=progress)
        swap_in_dir(tmp, target)
    return target


def build_info(path: str | Path) -> dict[str, Any]:
    """The build record of a pocket model: timings, size, losses and versions."""
    return json.loads((Path(path) / BUILD_INFO).read_text())


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def make_model(config: PocketConfig, tokenizer: Any) -> Any:
    """A randomly initialised Llama of the pocket size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(config.seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        rope_theta=10000.0,
    )
    return LlamaForCausalLM(cfg)


def token_stream(tokenizer: Any, documents: list[str]) -> Any:
    """All documents as one token tensor: BOS doc EOS BOS doc EOS ... (as pretraining corpora are packed)."""
    import torch

    ids: list[int] = []
    for enc in tokenizer(documents, add_special_tokens=True, verbose=False)["input_ids"]:
        ids.extend(enc)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def _lr_at(step: int, config: PocketConfig) -> float:
    """Linear warm-up then cosine decay to a tenth of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def pretrain(model: Any, stream: Any, config: PocketConfig, progress: bool = True) -> dict[str, Any]:
    """Causal-LM pretraining on random windows of the token stream, within the step and time budgets."""
    import torch
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.1, betas=(0.9, 0.95))
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(config.max_steps), desc="pretraining pocket model", disable=not progress)
    step = 0
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, config)
        starts = torch.randint(0, len(stream) - config.seq_len - 1, (config.batch_size,), generator=gen)
        batch = torch.stack([stream[s : s + config.seq_len] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if time.perf_counter() - start > config.max_seconds:
            break
    seconds = time.perf_counter() - start
    steps = step + 1
    return {
        "steps": steps, "seconds": round(seconds, 2), "losses": losses,
        "tokens": steps * config.batch_size * config.seq_len,
        "tokens_per_s": round(steps * config.batch_size * config.seq_len / seconds, 1),
        "stopped_by_time": steps < config.max_steps,
    }


def build_pocket_model(out: Path, config: PocketConfig = PocketConfig(), progress: bool = True) -> dict[str, Any]:
    """Generate the corpus, train the tokenizer, pretrain the model and save everything to `out`."""
    import torch
    from transformers import GenerationConfig

    from lab_utils.data import format_prompt
    from lab_utils.pocket_data import make_pretraining_documents, make_sft_records
    from lab_utils.results import versions

    t0 = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    documents = make_pretraining_documents(n_docs=config.n_docs, seed=config.seed)
    # The tokenizer sees the instruction data's text too (as a real tokenizer's corpus covers such text),
    # but the model is pretrained on the documents alone.
    sft_text = [format_prompt(r["instruction"], r["input"]) + r["output"] for r in make_sft_records(seed=config.seed)]
    tokenizer = train_tokenizer(documents + sft_text, config.vocab_size)
    model = make_model(config, tokenizer)
    stream = token_stream(tokenizer, documents)
    stats = pretrain(model, stream, config, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {
        "config": asdict(config),
        "n_params": sum(p.numel() for p in model.parameters()),
        "corpus_documents": len(documents),
        "corpus_tokens": len(stream),
        "pretrain": stats,
        "build_seconds": round(time.perf_counter() - t0, 2),
        "size_mb": round(sum(f.stat().st_size for f in out.iterdir()) / 2**20, 2),
        "versions": versions(),
    }
    atomic_write_json(out / BUILD_INFO, info)
    return info
