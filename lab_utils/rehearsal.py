"""Rehearsal of a GPU profile on a CPU, offline, in minutes: the same code path with small stand-ins built here.

A GPU profile (llama3-8b, llama3-8b-qlora, llama3-70b-qlora) names a hub model and a hub dataset. A rehearsal swaps
them for local stand-ins that load through the very same calls (`AutoModelForCausalLM.from_pretrained(folder)`,
`datasets.load_dataset(folder, split="train")`) and keep the conventions that break runs: Llama 3's special tokens,
no pad token, BOS prepended, no chat template, GQA, Alpaca's four columns and its defects (empty outputs, over-long
rows). The weights are random: a rehearsal tests the plumbing, not what the model learns.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab_utils.paths import atomic_write_json, cache_dir, swap_in_dir

RECIPE_VERSION = "1"  # bump when a builder below changes what it writes, so cached stand-ins are rebuilt
RECORD = "standin.json"
SEED = 0
ALPACA_ID = "tatsu-lab/alpaca"
ALPACA_COLUMNS = ("instruction", "input", "output", "text")  # the hub dataset's columns, all strings, in this order
ALPACA_PARQUET = "data/train-00000-of-00001.parquet"  # where the hub repo keeps its one shard
DEFAULT_ROWS = 400
OVER_LONG_TOKENS = 1024  # the GPU profiles' max_seq_length: the planted long rows exceed it
INPUT_SHARE = 0.4  # share of rows with a non-empty `input` (real Alpaca: about 40%)
EMPTY_OUTPUT_ROWS = 3
OVER_LONG_ROWS = 2

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
# Llama 3's pre-tokenizer split (tiktoken's cl100k-style pattern: digits in groups of at most three).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
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

# Content of the Alpaca stand-in: templated, mostly verifiable (arithmetic, capitals, sorting, counting).
COUNTRIES: tuple[tuple[str, str], ...] = (
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"),
    ("Austria", "Vienna"),
    ("Poland", "Warsaw"),
    ("Hungary", "Budapest"),
    ("Greece", "Athens"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Nigeria", "Abuja"),
    ("Morocco", "Rabat"),
    ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"),
    ("Colombia", "Bogota"),
    ("Australia", "Canberra"),
)
OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "plus": lambda a, b: a + b,
    "minus": lambda a, b: a - b,
    "times": lambda a, b: a * b,
}
ANIMALS = ("cat", "dog", "fox", "horse", "owl", "rabbit", "whale", "bee", "eagle", "turtle")
ADJECTIVES = ("quick", "quiet", "small", "clever", "old", "happy", "brave", "gentle")
VERBS = ("sleeps", "runs", "waits", "sings", "plays", "hides", "rests")
PLACES = ("near the river", "in the garden", "under the tree", "on the hill", "by the sea", "in the forest")
EMPTY_OUTPUT_INSTRUCTIONS = (  # tasks a text model cannot do: where real Alpaca has its empty outputs
    "Draw a picture of a cat sitting on a chair.",
    "Record a short voice message wishing a friend a happy birthday.",
    "Upload a photo of your favourite place.",
)


@dataclass(frozen=True)
class StandinPaths:
    """The local stand-ins a rehearsal of one GPU profile uses in place of its hub model and dataset."""

    profile: str
    base_model: str  # the hub model it stands in for
    dataset_id: str  # the hub dataset it stands in for
    model: Path
    dataset: Path


# --- the dataset ----------------------------------------------------------------------------------------------------


def _sentence(rng: random.Random) -> str:
    """A short plain sentence, e.g. "The clever fox sleeps near the river." """
    return f"The {rng.choice(ADJECTIVES)} {rng.choice(ANIMALS)} {rng.choice(VERBS)} {rng.choice(PLACES)}."


def _no_input_row(rng: random.Random) -> tuple[str, str]:
    """(instruction, output) of an ordinary row without an input."""
    kind = rng.choice(("arithmetic", "arithmetic", "capital", "capital", "describe"))
    if kind == "arithmetic":
        op, a, b = rng.choice(tuple(OPERATIONS)), rng.randint(2, 20), rng.randint(2, 20)
        return f"What is {a} {op} {b}?", f"{a} {op} {b} is {OPERATIONS[op](a, b)}."
    if kind == "capital":
        country, capital = rng.choice(COUNTRIES)
        return f"What is the capital of {country}?", f"The capital of {country} is {capital}."
    animal = rng.choice(ANIMALS)
    return (
        f"Write one sentence about a {animal}.",
        f"The {rng.choice(ADJECTIVES)} {animal} {rng.choice(VERBS)} {rng.choice(PLACES)}.",
    )


def _input_row(rng: random.Random) -> tuple[str, str, str]:
    """(instruction, input, output) of an ordinary row with an input."""
    kind = rng.choice(("upper", "sort", "sum", "count", "capital"))
    if kind == "upper":
        text = _sentence(rng)
        return "Rewrite the following text in upper case.", text, text.upper()
    if kind in ("sort", "sum"):
        numbers = [rng.randint(1, 99) for _ in range(rng.randint(3, 6))]
        given = ", ".join(map(str, numbers))
        if kind == "sort":
            return "Sort these numbers from smallest to largest.", given, ", ".join(map(str, sorted(numbers))) + "."
        return "Add up the numbers below.", given, f"The sum is {sum(numbers)}."
    if kind == "count":
        text = _sentence(rng)
        return "How many words are in the sentence below?", text, f"The sentence has {len(text.split())} words."
    country, capital = rng.choice(COUNTRIES)
    return "Name the capital of the country below.", country, f"The capital of {country} is {capital}."


def _over_long_rows() -> list[tuple[str, str]]:
    """(instruction, output) of the planted over-long rows: each well over OVER_LONG_TOKENS tokens."""
    numbers = ", ".join(str(i) for i in range(1, 501)) + "."
    sentence = "The cat sat on the mat."
    return [
        ("List the numbers from 1 to 500, separated by commas.", numbers),
        (f"Repeat the sentence '{sentence}' 200 times.", " ".join([sentence] * 200)),
    ][:OVER_LONG_ROWS]


def standin_defects(n_rows: int = DEFAULT_ROWS) -> dict[str, int]:
    """How many rows of each kind the stand-in plants: what a loader must report."""
    return {
        "rows": n_rows,
        "empty_output": EMPTY_OUTPUT_ROWS,
        "over_long": OVER_LONG_ROWS,  # prompt + output > OVER_LONG_TOKENS tokens of the stand-in tokenizer
        "with_input": round(n_rows * INPUT_SHARE),
    }


def standin_rows(dataset_id: str = ALPACA_ID, n_rows: int = DEFAULT_ROWS, seed: int = SEED) -> list[dict[str, str]]:
    """The stand-in dataset's rows (the hub's four columns), with its planted defects at fixed places."""
    from lab_utils.data import format_prompt

    _check_dataset(dataset_id)
    if n_rows < 20:
        raise ValueError(f"n_rows={n_rows}: a stand-in needs at least 20 rows to hold its planted defects")
    rng = random.Random(seed)
    with_input = set(rng.sample(range(n_rows), standin_defects(n_rows)["with_input"]))
    # Defects go on rows without an input, so the share of rows with one stays exact.
    defect_rows = rng.sample(sorted(set(range(n_rows)) - with_input), EMPTY_OUTPUT_ROWS + OVER_LONG_ROWS)
    empty, long = defect_rows[:EMPTY_OUTPUT_ROWS], defect_rows[EMPTY_OUTPUT_ROWS:]
    rows = []
    for i in range(n_rows):
        if i in with_input:
            instruction, given, output = _input_row(rng)
        elif i in empty:
            instruction, given, output = EMPTY_OUTPUT_INSTRUCTIONS[empty.index(i)], "", ""
        elif i in long:
            instruction, output = _over_long_rows()[long.index(i)]
            given = ""
        else:
            instruction, output = _no_input_row(rng)
            given = ""
        text = format_prompt(instruction, given) + output  # the hub's `text`: the Alpaca prompt and the response
        rows.append({"instruction": instruction, "input": given, "output": output, "text": text})
    return rows


def _check_dataset(dataset_id: str) -> None:
    """Refuse a dataset that has no stand-in, naming those that do."""
    if dataset_id != ALPACA_ID:
        raise ValueError(f"no stand-in for dataset {dataset_id!r}: supported: {ALPACA_ID}")


def _digest(obj: Any) -> str:
    """A short content key of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def dataset_key(dataset_id: str = ALPACA_ID, n_rows: int = DEFAULT_ROWS) -> str:
    """Content key of a stand-in dataset: its rows and the recipe version."""
    return _digest({"version": RECIPE_VERSION, "dataset": dataset_id, "rows": standin_rows(dataset_id, n_rows)})


def _dataset_card(dataset_id: str) -> str:
    """README.md with the hub card's YAML header (features, data files), so `load_dataset` reads it alike."""
    features = "".join(f"  - name: {c}\n    dtype: string\n" for c in ALPACA_COLUMNS)
    return (
        "---\n"
        "dataset_info:\n"
        f"  features:\n{features}"
        "configs:\n"
        "- config_name: default\n"
        "  data_files:\n"
        "  - split: train\n"
        "    path: data/train-*\n"
        "---\n\n"
        f"# Stand-in for {dataset_id}\n\n"
        "Built by `lab_utils.rehearsal` for rehearsing a GPU profile offline: the hub dataset's columns and layout, "
        "templated rows, and its defects planted on purpose (see standin.json).\n"
    )


def build_standin_dataset(dataset_id: str, out_dir: Path, n_rows: int = DEFAULT_ROWS) -> Path:
    """Write the stand-in of `dataset_id` to `out_dir` in the hub repo's layout (parquet under data/), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = standin_rows(dataset_id, n_rows)
    out_dir = Path(out_dir)
    staged = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    (staged / ALPACA_PARQUET).parent.mkdir(parents=True)
    schema = pa.schema([(c, pa.string()) for c in ALPACA_COLUMNS])
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, staged / ALPACA_PARQUET)
    (staged / "README.md").write_text(_dataset_card(dataset_id), encoding="utf-8")
    atomic_write_json(
        staged / RECORD,
        {
            "stands_in_for": dataset_id,
            "key": dataset_key(dataset_id, n_rows),
            "recipe_version": RECIPE_VERSION,
            "seed": SEED,
            "columns": list(ALPACA_COLUMNS),
            "planted": standin_defects(n_rows),
            "over_long_tokens": OVER_LONG_TOKENS,
            "files": _file_hashes(staged),
        },
    )
    return swap_in_dir(staged, out_dir)


# --- the model ------------------------------------------------------------------------------------------------------


def _check_family(family: str) -> dict[str, Any]:
    """The family's recipe; refuse one that has none, naming those that do."""
    if family not in FAMILIES:
        raise ValueError(f"no stand-in for model family {family!r}: supported: {', '.join(FAMILIES)}")
    return FAMILIES[family]


def model_key(family: str) -> str:
    """Content key of a stand-in model: its family recipe, seed, tokenizer recipe and the text it is trained on."""
    recipe = _check_family(family)
    return _digest(
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
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    recipe = _check_family(family)
    tokenizer = train_standin_tokenizer([r["text"] for r in standin_rows(recipe["dataset"])])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **recipe["config"],
    )
    torch.manual_seed(SEED)
    dtype = getattr(torch, recipe["dtype"])
    model = LlamaForCausalLM(config).to(dtype)
    model.config.dtype = dtype  # recorded in config.json, as Llama 3's says bfloat16
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    out_dir = Path(out_dir)
    staged = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    model.save_pretrained(staged, safe_serialization=True)
    tokenizer.save_pretrained(staged)
    atomic_write_json(
        staged / RECORD,
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
            "files": _file_hashes(staged),
        },
    )
    return swap_in_dir(staged, out_dir)


def _file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder` (by relative path), the build record excepted; each made readable by all
    (some writers leave files private, and a server may run as another user)."""
    hashes = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != RECORD:
            f.chmod(0o644)
            hashes[f.relative_to(folder).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return hashes


# --- per profile, cached ----------------------------------------------------------------------------------------------


def default_root() -> Path:
    """Where stand-ins are cached: `rehearsal/` in the lab's cache ($LAB_CACHE, else .cache/ in the repository)."""
    return cache_dir() / "rehearsal"


def rehearsable_profiles() -> list[str]:
    """Names of the profiles a rehearsal has stand-ins for."""
    from lab_utils.profiles import PROFILES

    return [name for name, p in PROFILES.items() if _family_of(p.base_model) and p.dataset == ALPACA_ID]


def _family_of(base_model: str) -> str | None:
    """The stand-in family of a hub model id, or None."""
    return next((f for f, r in FAMILIES.items() if base_model.startswith(r["hub_prefix"])), None)


def _ensure(target: Path, build: Callable[[Path], Path]) -> Path:
    """`target`, built first unless a complete build is already there (one builder at a time)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / RECORD).exists():
            build(target)
    return target


def standin_paths(profile_name: str, root: Path | None = None) -> StandinPaths:
    """The stand-in model and dataset folders for a GPU profile, built once and cached by content key."""
    from lab_utils.profiles import get_profile

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


def record(path: str | Path) -> dict[str, Any]:
    """The build record (standin.json) of a stand-in model or dataset folder."""
    return json.loads((Path(path) / RECORD).read_text())


# --- a rehearsal run: the switch, the scaled-down profile, the GPU it is made for ------------------------------------

ENV = "LAB_REHEARSAL"
# The GPU each rehearsable profile is made for (a key of hardware.DESCRIBED): memory and feature decisions in a
# rehearsal (which memory-sweep rows fit, bf16 or fp16, FP8) are made for it.
TARGETS = {"llama3-8b": "rtx-4090", "llama3-8b-qlora": "t4", "llama3-70b-qlora": "dgx-spark"}


def active() -> bool:
    """True when this process runs a rehearsal (LAB_REHEARSAL=1, set by `make lab REHEARSAL=1`)."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes")


def scaled(profile: Any) -> Any:
    """The profile at rehearsal size: the same method, optimizer, batching, sequence length (so the over-long rows
    are dropped by the same rule), merge and serving choices; a few steps, a small eval split and short answers."""
    from dataclasses import replace

    from lab_utils.profiles import PROFILES

    small = profile.with_train(
        max_steps=6, eval_steps=3, save_steps=3, logging_steps=1, per_device_batch_size=2, gradient_accumulation_steps=2
    )
    return replace(
        small,
        max_eval_examples=16,
        heldout_from_dataset=8,
        max_new_tokens=24,
        cell_timeout_s=PROFILES["pocket"].cell_timeout_s,  # minutes of work: a limit that catches a hung cell
        serve=replace(profile.serve, max_model_len=2048, max_num_seqs=16, start_timeout_s=300.0),
    )


def target_hardware(profile: Any) -> Any:
    """The described GPU the profile is made for."""
    from lab_utils.hardware import DESCRIBED

    if profile.name not in TARGETS:
        raise ValueError(f"no target GPU for profile {profile.name!r}: rehearsable profiles: {', '.join(TARGETS)}")
    return DESCRIBED[TARGETS[profile.name]]


def model_standin(model_id: str, root: Path | None = None) -> Path:
    """The local stand-in for a hub model id (built once and cached)."""
    family = _family_of(model_id)
    if family is None:
        raise ValueError(
            f"a rehearsal has no stand-in for {model_id!r}: models {', '.join(r['hub_prefix'] + '*' for r in FAMILIES.values())}"
        )
    root = Path(root) if root is not None else default_root()
    return _ensure(root / f"{family}-{model_key(family)}", lambda out: build_standin_model(family, out))


def dataset_standin(dataset_id: str, root: Path | None = None) -> Path:
    """The local stand-in folder for a hub dataset id, in the hub's layout (built once and cached)."""
    _check_dataset(dataset_id)
    root = Path(root) if root is not None else default_root()
    return _ensure(root / f"alpaca-{dataset_key(dataset_id)}", lambda out: build_standin_dataset(dataset_id, out))
