"""The rehearsal's stand-in datasets: Alpaca's schema (four string columns, one parquet shard in the hub's layout) and
its defects (empty outputs, over-long rows), with templated, mostly verifiable content, built here and cached by
content key, so `datasets.load_dataset(folder, split="train")` loads them through the same call as the hub id. The
stand-in models are in `models.rehearsal`, which also holds the rehearsal switch."""

from __future__ import annotations

import fcntl
import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab_utils.core.paths import atomic_write_json, cache_dir, staged
from lab_utils.core.profiles import PREFERENCE_DATASET
from lab_utils.data import pocket_data
from lab_utils.data.alpaca import format_prompt

RECIPE_VERSION = "2"  # bump when a builder below changes what it writes, so cached stand-ins are rebuilt


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


# Content of the Alpaca stand-in: templated, mostly verifiable (arithmetic, capitals, sorting, counting).
COUNTRIES: tuple[tuple[str, str], ...] = tuple(pocket_data.COUNTRIES)  # one list of countries for the whole lab


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


def digest(obj: Any) -> str:
    """A short content key of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def dataset_key(dataset_id: str = ALPACA_ID, n_rows: int = DEFAULT_ROWS) -> str:
    """Content key of a stand-in dataset: its rows and the recipe version."""
    return digest({"version": RECIPE_VERSION, "dataset": dataset_id, "rows": standin_rows(dataset_id, n_rows)})


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
        "Built by `lab_utils.models.rehearsal` for rehearsing a GPU profile offline: the hub dataset's columns and layout, "
        "templated rows, and its defects planted on purpose (see standin.json).\n"
    )


def build_standin_dataset(dataset_id: str, out_dir: Path, n_rows: int = DEFAULT_ROWS) -> Path:
    """Write the stand-in of `dataset_id` to `out_dir` in the hub repo's layout (parquet under data/), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = standin_rows(dataset_id, n_rows)
    with staged(out_dir) as folder:
        (folder / ALPACA_PARQUET).parent.mkdir(parents=True)
        schema = pa.schema([(c, pa.string()) for c in ALPACA_COLUMNS])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / ALPACA_PARQUET)
        (folder / "README.md").write_text(_dataset_card(dataset_id), encoding="utf-8")
        _record_dataset(folder, dataset_id, n_rows)
    return Path(out_dir)


def _record_dataset(folder: Path, dataset_id: str, n_rows: int) -> None:
    """Write a stand-in dataset's build record."""
    atomic_write_json(
        folder / RECORD,
        {
            "stands_in_for": dataset_id,
            "key": dataset_key(dataset_id, n_rows),
            "recipe_version": RECIPE_VERSION,
            "seed": SEED,
            "columns": list(ALPACA_COLUMNS),
            "planted": standin_defects(n_rows),
            "over_long_tokens": OVER_LONG_TOKENS,
            "files": file_hashes(folder),
        },
    )


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder` (by relative path), the build record excepted; each made readable by all
    (some writers leave files private, and a server may run as another user)."""
    hashes = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != RECORD:
            f.chmod(0o644)
            hashes[f.relative_to(folder).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return hashes


def default_root() -> Path:
    """Where stand-ins are cached: `rehearsal/` in the lab's cache ($LAB_CACHE, else .cache/ in the repository)."""
    return cache_dir() / "rehearsal"


def ensure_built(target: Path, build: Callable[[Path], Path]) -> Path:
    """`target`, built first unless a complete build is already there (one builder at a time)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / RECORD).exists():
            build(target)
    return target


def record(path: str | Path) -> dict[str, Any]:
    """The build record (standin.json) of a stand-in model or dataset folder."""
    return json.loads((Path(path) / RECORD).read_text())


def dataset_standin(dataset_id: str, root: Path | None = None) -> Path:
    """The local stand-in folder for a hub dataset id, in the hub's layout (built once and cached)."""
    _check_dataset(dataset_id)
    root = Path(root) if root is not None else default_root()
    return ensure_built(root / f"alpaca-{dataset_key(dataset_id)}", lambda out: build_standin_dataset(dataset_id, out))


def hub_source(dataset_id: str, standin: bool = False) -> str:
    """What `datasets.load_dataset` loads for a hub id: the id itself, or in a rehearsal (`standin`, from the resolved
    run configuration) the local stand-in folder in the hub's own layout."""
    return str(dataset_standin(dataset_id)) if standin else dataset_id


# ---------------------------------------------------------------------------------------------------
# The preference dataset's stand-in (notebook 07 on the GPU profiles): trl-lib/ultrafeedback_binarized's schema
# ---------------------------------------------------------------------------------------------------

PREFERENCE_ID = PREFERENCE_DATASET
PREFERENCE_ROWS = 120
PREFERENCE_DEFECTS = {"no_assistant_turn": 2, "same_answers": 2}  # rows a lenient loader must skip and name


def preference_rows(n_rows: int = PREFERENCE_ROWS, seed: int = SEED) -> list[dict[str, Any]]:
    """Rows in the hub dataset's schema (`chosen` and `rejected`: user + assistant messages, with the two scores):
    the chosen answer a full sentence, the rejected one a bare word or a wrong capital; the defects at fixed rows."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_rows):
        country, capital = COUNTRIES[i % len(COUNTRIES)]
        other = COUNTRIES[(i * 7 + 3) % len(COUNTRIES)][1]
        question = f"What is the capital of {pocket_data.country_phrase(country)}?"
        good = pocket_data.capital_fact(country, capital)
        bad = capital if rng.random() < 0.5 else pocket_data.capital_fact(country, other)
        rows.append(
            {
                "prompt": question,
                "chosen": [{"role": "user", "content": question}, {"role": "assistant", "content": good}],
                "rejected": [{"role": "user", "content": question}, {"role": "assistant", "content": bad}],
                "score_chosen": 8.0,
                "score_rejected": 3.0,
            }
        )
    for i in range(PREFERENCE_DEFECTS["no_assistant_turn"]):
        rows[5 + i]["chosen"] = rows[5 + i]["chosen"][:1]
    for i in range(PREFERENCE_DEFECTS["same_answers"]):
        rows[20 + i]["rejected"] = rows[20 + i]["chosen"]
    return rows


def build_preference_standin(out_dir: Path, n_rows: int = PREFERENCE_ROWS) -> Path:
    """Write the preference stand-in in the hub repo's layout (one parquet shard under data/), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with staged(out_dir) as folder:
        (folder / ALPACA_PARQUET).parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(preference_rows(n_rows)), folder / ALPACA_PARQUET)
        atomic_write_json(folder / RECORD, {"dataset": PREFERENCE_ID, "rows": n_rows, "planted": PREFERENCE_DEFECTS})
    return out_dir


def preference_source(dataset_id: str, standin: bool = False) -> str:
    """What `datasets.load_dataset` loads for a preference dataset id: the id, or in a rehearsal the local stand-in."""
    if not standin:
        return dataset_id
    if dataset_id != PREFERENCE_ID:
        raise ValueError(f"no stand-in for preference dataset {dataset_id!r}: supported: {PREFERENCE_ID}")
    key = digest({"version": RECIPE_VERSION, "rows": preference_rows()})
    return str(ensure_built(default_root() / f"preference-{key}", build_preference_standin))
