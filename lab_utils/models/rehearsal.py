"""Rehearsal of a GPU profile on a CPU, offline, in minutes: the same code path with small stand-ins built here.

A GPU profile (llama3-8b, llama3-8b-qlora, llama3-70b-qlora) names a hub model and a hub dataset. A rehearsal swaps
them for local stand-ins that load through the very same calls (`AutoModelForCausalLM.from_pretrained(folder)`,
`datasets.load_dataset(folder, split="train")`) and keep the conventions that break runs: Llama 3's special tokens,
no pad token, BOS prepended, no chat template, GQA, Alpaca's four columns and its defects (empty outputs, over-long
rows). The weights are random: a rehearsal tests the plumbing, not what the model learns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_utils.core.hardware import DESCRIBED
from lab_utils.core.paths import atomic_write_json, recipe, staged
from lab_utils.core.profiles import PROFILES, get_profile
from lab_utils.data.standin import (
    ALPACA_ID,
    RECIPE_VERSION,
    RECORD,
    SEED,
    dataset_key,
    dataset_standin,
    default_root,
    digest,
    ensure_built,
    file_hashes,
    standin_rows,
)
from lab_utils.models.tiny import tiny_llama

# Llama 3's special tokens, in the order of their ids there (128000 ...): reserved tokens 0-3 sit before the header
# tokens, 4 between them and <|eot_id|>, the rest after.
BOS, EOS, RESERVED_0 = "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>"
SPECIAL_TOKENS = (
    BOS,
    EOS,
    *(f"<|reserved_special_token_{i}|>" for i in range(4)),
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|reserved_special_token_4|>",
    "<|eot_id|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(5, 10)),
)
# Llama 3's pre-tokenizer split (tiktoken's cl100k-style pattern), one definition with the GGUF export's check.
LLAMA3_SPLIT = recipe("gguf").LLAMA3_SPLIT
VOCAB_SIZE = 1536  # the BPE trainer's target, byte alphabet included; the special tokens come on top

# What each family's stand-in looks like: Llama 3's architecture choices at a tiny size.
FAMILIES: dict[str, dict[str, Any]] = {
    "llama3": {
        "hub_prefix": "meta-llama/Meta-Llama-3",
        "dataset": ALPACA_ID,  # the text its tokenizer is trained on
        "config": {
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,  # grouped-query attention, as Llama 3
            "head_dim": 64,  # vLLM's CPU attention rejects head_dim 16
            "intermediate_size": 256,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
        },
        "dtype": "bfloat16",  # as Llama 3's weights are published
    },
}


@dataclass(frozen=True)
class StandinPaths:
    """The local stand-ins a rehearsal of one GPU profile uses in place of its hub model and dataset."""

    profile: str
    base_model: str  # the hub model it stands in for
    dataset_id: str  # the hub dataset it stands in for
    model: Path
    dataset: Path


# --- the dataset ----------------------------------------------------------------------------------------------------


# --- the model ------------------------------------------------------------------------------------------------------


def _check_family(family: str) -> dict[str, Any]:
    """The family's recipe; refuse one that has none, naming those that do."""
    if family not in FAMILIES:
        raise ValueError(f"no stand-in for model family {family!r}: supported: {', '.join(FAMILIES)}")
    return FAMILIES[family]


def model_key(family: str) -> str:
    """Content key of a stand-in model: its family recipe, seed, tokenizer recipe and the text it is trained on."""
    recipe = _check_family(family)
    return digest(
        {
            "version": RECIPE_VERSION,
            "family": family,
            "recipe": recipe,
            "seed": SEED,
            "vocab_size": VOCAB_SIZE,
            "special_tokens": SPECIAL_TOKENS,
            "split": LLAMA3_SPLIT,
            "dataset": dataset_key(recipe["dataset"]),
        }
    )


def train_standin_tokenizer(texts: list[str]) -> Any:
    """A byte-level BPE in Llama 3's conventions: its split pattern and special tokens, BOS prepended, no pad."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # after the learned vocabulary, as in Llama 3
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS}:0 $A:0",
                pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                special_tokens=[(BOS, tok.token_to_id(BOS))],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, clean_up_tokenization_spaces=True
    )


def build_standin_model(family: str, out_dir: Path) -> Path:
    """Write a tiny, seeded, random Llama of `family` with its tokenizer to `out_dir` (safetensors), atomically."""
    import torch
    from transformers import GenerationConfig

    recipe = _check_family(family)
    tokenizer = train_standin_tokenizer([r["text"] for r in standin_rows(recipe["dataset"])])
    dtype = getattr(torch, recipe["dtype"])
    model = tiny_llama(tokenizer, SEED, **recipe["config"]).to(dtype)
    model.config.dtype = dtype  # recorded in config.json, as Llama 3's says bfloat16
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with staged(out_dir) as folder:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        _record_model(folder, family, recipe, tokenizer, model)
    return Path(out_dir)


def _record_model(folder: Path, family: str, recipe: dict[str, Any], tokenizer: Any, model: Any) -> None:
    """Write a stand-in model's build record (what it stands in for, its recipe, its files' hashes)."""
    atomic_write_json(
        folder / RECORD,
        {
            "stands_in_for": f"{recipe['hub_prefix']}-*",
            "family": family,
            "key": model_key(family),
            "recipe_version": RECIPE_VERSION,
            "seed": SEED,
            "config": recipe["config"],
            "dtype": recipe["dtype"],
            "vocab_size": len(tokenizer),
            "special_tokens": list(SPECIAL_TOKENS),
            "tokenizer_trained_on": f"stand-in {recipe['dataset']} (key {dataset_key(recipe['dataset'])})",
            "n_params": sum(p.numel() for p in model.parameters()),
            "files": file_hashes(folder),
        },
    )


# --- per profile, cached ----------------------------------------------------------------------------------------------


def rehearsable_profiles() -> list[str]:
    """Names of the profiles a rehearsal has stand-ins for."""
    return [name for name, p in PROFILES.items() if _family_of(p.base_model) and p.dataset == ALPACA_ID]


def _family_of(base_model: str) -> str | None:
    """The stand-in family of a hub model id, or None."""
    return next((f for f, r in FAMILIES.items() if base_model.startswith(r["hub_prefix"])), None)


def standin_paths(profile_name: str, root: Path | None = None) -> StandinPaths:
    """The stand-in model and dataset folders for a GPU profile, built once and cached by content key."""
    profile = get_profile(profile_name)
    family = _family_of(profile.base_model)
    if family is None or profile.dataset != ALPACA_ID:
        raise ValueError(
            f"profile {profile_name!r} (model {profile.base_model!r}, data {profile.dataset!r}) has no stand-ins: "
            f"rehearsable profiles: {', '.join(rehearsable_profiles())} (models "
            f"{', '.join(r['hub_prefix'] + '*' for r in FAMILIES.values())}, data {ALPACA_ID})"
        )
    model = model_standin(profile.base_model, root)
    dataset = dataset_standin(profile.dataset, root)
    return StandinPaths(profile_name, profile.base_model, profile.dataset, model, dataset)


# --- a rehearsal run: the scaled-down profile and the GPU it is made for (the switch is read by `runconfig.resolve`) ---

# The GPU each rehearsable profile is made for (a key of hardware.DESCRIBED): memory and feature decisions in a
# rehearsal (which memory-sweep rows fit, bf16 or fp16, FP8) are made for it.
TARGETS = {name: p.rehearsal_target for name, p in PROFILES.items() if p.rehearsal_target}


def scaled(profile: Any) -> Any:
    """The profile at rehearsal size: the same method, optimizer, batching, sequence length (so the over-long rows
    are dropped by the same rule), merge and serving choices; a few steps, a small eval split and short answers."""
    from dataclasses import replace

    small = profile.with_train(
        max_steps=6, eval_steps=3, save_steps=3, logging_steps=1, per_device_batch_size=2, gradient_accumulation_steps=2
    )
    return replace(
        small,
        max_eval_examples=16,
        heldout_from_dataset=8,
        max_new_tokens=24,
        rehearsal=True,
        preference=replace(
            profile.preference,
            max_steps=4,
            per_device_batch_size=2,
            gradient_accumulation_steps=1,
            dataset_rows=24,
            logging_steps=1,
            save_steps=4,
        ),
        cell_timeout_s=PROFILES["pocket"].cell_timeout_s,  # minutes of work: a limit that catches a hung cell
        serve=replace(profile.serve, max_model_len=2048, max_num_seqs=16, start_timeout_s=300.0),
    )


def target_hardware(profile: Any) -> Any:
    """The described GPU the profile is made for."""
    if not profile.rehearsal_target:
        raise ValueError(f"no target GPU for profile {profile.name!r}: rehearsable profiles: {', '.join(TARGETS)}")
    return DESCRIBED[profile.rehearsal_target]


def model_standin(model_id: str, root: Path | None = None) -> Path:
    """The local stand-in for a hub model id (built once and cached)."""
    family = _family_of(model_id)
    if family is None:
        raise ValueError(
            f"a rehearsal has no stand-in for {model_id!r}: models {', '.join(r['hub_prefix'] + '*' for r in FAMILIES.values())}"
        )
    root = Path(root) if root is not None else default_root()
    return ensure_built(root / f"{family}-{model_key(family)}", lambda out: build_standin_model(family, out))
