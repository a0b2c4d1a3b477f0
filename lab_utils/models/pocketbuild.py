"""Building the pocket base model: its corpus and tokenizer, the tiny Llama, the pretraining loop (a fixed number of
steps with fixed seeds, never a time budget), and the build record every pocket model carries. `pocket` finds the
model the lab uses (the shipped one, or a local build made here).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab_utils.core.hardware import cpu_bf16_native, probe
from lab_utils.core.paths import REPO_ROOT, atomic_write_json
from lab_utils.core.results import versions
from lab_utils.data.alpaca import format_prompt
from lab_utils.data.pocket_data import COUNTRIES, capital_fact, make_pretraining_documents, make_sft_records
from lab_utils.models.tiny import tiny_llama

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
BUILD_INFO = "pocket_build.json"
BUILD_VERSION = "2"  # bump when the build recipe below changes, so cached models are rebuilt
SHIPPED_DIR = REPO_ROOT / "models" / "pocket-base"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class PocketConfig:
    """Size of the pocket model and of its pretraining run (steps, not seconds: no time caps)."""

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
    max_steps: int = 500  # fewer steps is a quick build: said out loud, recorded, and cached under its own key
    n_docs: int = 3000
    seed: int = 0
    threads: int = 0  # torch threads; 0 = all cores

    @property
    def head_dim(self) -> int:
        """Per-head width (64 by default)."""
        return self.hidden_size // self.num_heads

    @property
    def quick(self) -> bool:
        """True when this is a shortened build (fewer steps than the lab's recipe)."""
        return self.max_steps < PocketConfig.max_steps

    def key(self) -> str:
        """A short hash of how the model is built: every setting, the text it is built from (pretraining corpus and
        tokenizer text) and the recipe version. A change to the generated data means a new model; a refactor of the
        generator that writes the same text does not."""
        fields = {k: v for k, v in asdict(self).items() if k != "threads"}
        data = corpus_digest(self.n_docs, self.seed)
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode() + data.encode() + BUILD_VERSION.encode())
        return digest.hexdigest()[:10]


def build_texts(n_docs: int, seed: int) -> tuple[list[str], list[str]]:
    """The pretraining documents, and the instruction text the tokenizer also sees (the model is not trained on it)."""
    documents = make_pretraining_documents(n_docs=n_docs, seed=seed)
    sft_text = [format_prompt(r["instruction"], r["input"]) + r["output"] for r in make_sft_records(seed=seed)]
    return documents, sft_text


@functools.lru_cache(maxsize=8)
def corpus_digest(n_docs: int, seed: int) -> str:
    """SHA-256 of every text a build reads (documents, then the tokenizer's extra text)."""
    h = hashlib.sha256()
    for part in build_texts(n_docs, seed):
        for text in part:
            h.update(text.encode() + b"\0")
        h.update(b"\1")
    return h.hexdigest()


def is_built(path: Path) -> bool:
    """True when `path` holds a complete pocket model (its build record is written last)."""
    return (path / BUILD_INFO).exists() and (path / "config.json").exists()


def build_info(path: str | Path) -> dict[str, Any]:
    """The build record of a pocket model: recipe key, steps, loss curve, speed, machine, versions, file hashes."""
    return json.loads((Path(path) / BUILD_INFO).read_text())


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, tok.token_to_id(BOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def make_model(config: PocketConfig, tokenizer: Any) -> Any:
    """A randomly initialised Llama of the pocket size (`tiny.tiny_llama`)."""
    return tiny_llama(
        tokenizer,
        config.seed,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        rope_theta=10000.0,
    )


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


def _tqdm_disabled() -> bool:
    """True when progress bars are turned off (batch runs set TQDM_DISABLE): print progress lines instead."""
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def pretrain(model: Any, stream: Any, config: PocketConfig, progress: bool = True) -> dict[str, Any]:
    """Causal-LM pretraining on random windows of the token stream: exactly `config.max_steps` steps."""
    import torch
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.1, betas=(0.9, 0.95))
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    lines = progress and _tqdm_disabled()  # headless: a line every 10% instead of a bar
    bar = tqdm(range(config.max_steps), desc="pretraining pocket model", disable=not progress or lines)
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
        done = step + 1
        if progress and done == 5 and config.max_steps > 10:
            eta = (time.perf_counter() - start) / done * (config.max_steps - done)
            print(
                f"pocket build: about {eta / 60:.1f} more minutes for {config.max_steps} steps on this machine "
                f"(measured on the first {done})",
                file=sys.stderr,
                flush=True,
            )
        if lines and done % max(1, config.max_steps // 10) == 0:
            elapsed = time.perf_counter() - start
            print(
                f"pocket build: step {done}/{config.max_steps}, loss {losses[-1]:.3f}, {elapsed:.0f} s, "
                f"about {elapsed / done * (config.max_steps - done):.0f} s left",
                file=sys.stderr,
                flush=True,
            )
    seconds = time.perf_counter() - start
    steps = len(losses)
    tokens = steps * config.batch_size * config.seq_len
    return {
        "steps": steps,
        "seconds": round(seconds, 2),
        "losses": losses,
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "final_loss": final_loss(losses),
    }


def final_loss(losses: list[float], window: int = 20) -> float:
    """Mean of the last `window` training losses (one batch's loss is noisy)."""
    tail = losses[-window:]
    return round(sum(tail) / len(tail), 4)


def fact_prompts() -> list[tuple[str, str]]:
    """(prompt, answer) probes of what pretraining taught: "The capital of Peru is" -> "Lima", every country."""
    probes = []
    for country, capital in COUNTRIES:
        sentence = capital_fact(country, capital)
        probes.append((sentence[: sentence.rindex(" is ") + 3], capital))
    return probes


def fact_recall(path: str | Path, max_new_tokens: int = 6) -> float:
    """Share of capital-city probes whose greedy continuation names the right capital (a base-model quality check)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    probes = fact_prompts()
    hits = 0
    with torch.no_grad():
        for prompt, answer in probes:
            ids = tok(prompt, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            hits += answer in tok.decode(out[0, ids["input_ids"].shape[1] :])
    return round(hits / len(probes), 4)


def machine() -> dict[str, Any]:
    """The machine a model was built on: CPU, cores, native bf16, torch threads."""
    import torch

    hw = probe()
    native, why = cpu_bf16_native()
    return {
        "cpu": hw.name,
        "device": hw.device,
        "cores": hw.cpu_count,
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16_native": native,
        "cpu_bf16_reason": why,
    }


def compare_to_shipped(path: Path) -> dict[str, Any]:
    """How a local build differs from the shipped model: same recipe? identical weights? largest weight difference."""
    if not is_built(SHIPPED_DIR):
        return {"shipped_present": False}
    from safetensors.numpy import load_file

    mine, shipped = build_info(path), build_info(SHIPPED_DIR)
    a, b = load_file(str(path / WEIGHTS_FILE)), load_file(str(SHIPPED_DIR / WEIGHTS_FILE))
    same_shapes = a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    max_diff = max(float(abs(a[k] - b[k]).max()) for k in a) if same_shapes else None
    return {
        "shipped_present": True,
        "same_recipe": mine["key"] == shipped["key"],
        "identical_weights": mine["files"][WEIGHTS_FILE] == shipped["files"][WEIGHTS_FILE],
        "max_abs_weight_diff": max_diff,
        "final_loss": mine["pretrain"]["final_loss"],
        "shipped_final_loss": shipped["pretrain"]["final_loss"],
        "fact_recall": mine.get("fact_recall"),
        "shipped_fact_recall": shipped.get("fact_recall"),
        "shipped_built_on": shipped.get("machine", {}).get("cpu"),
    }


def build_pocket_model(out: Path, config: PocketConfig = PocketConfig(), progress: bool = True) -> dict[str, Any]:
    """Generate the corpus, train the tokenizer, pretrain the model and save everything to `out`, with its record."""
    import torch
    from transformers import GenerationConfig

    if config.quick:
        print(
            f"pocket build: QUICK BUILD of {config.max_steps} steps instead of {PocketConfig.max_steps}: "
            f"a weaker model, cached and recorded as such (key {config.key()})",
            file=sys.stderr,
            flush=True,
        )
    t0 = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    # The tokenizer sees the instruction data's text too (as a real tokenizer's corpus covers such text),
    # but the model is pretrained on the documents alone.
    documents, sft_text = build_texts(config.n_docs, config.seed)
    tokenizer = train_tokenizer(documents + sft_text, config.vocab_size)
    model = make_model(config, tokenizer)
    stream = token_stream(tokenizer, documents)
    stats = pretrain(model, stream, config, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    files = {f.name: file_sha256(f) for f in sorted(out.iterdir()) if f.is_file() and f.name != BUILD_INFO}
    info = {
        "key": config.key(),
        "quick": config.quick,
        "config": asdict(config),
        "n_params": sum(p.numel() for p in model.parameters()),
        "corpus_documents": len(documents),
        "corpus_tokens": len(stream),
        "pretrain": stats,
        "fact_recall": fact_recall(out),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "size_mb": round(sum(f.stat().st_size for f in out.iterdir()) / 2**20, 2),
        "files": files,
        "machine": machine(),
        "versions": versions(),
    }
    atomic_write_json(out / BUILD_INFO, info)  # written first so the comparison can read it
    info["compared_to_shipped"] = compare_to_shipped(out) if out.resolve() != SHIPPED_DIR.resolve() else None
    atomic_write_json(out / BUILD_INFO, info)
    return info
