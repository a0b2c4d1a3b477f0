"""The run's settings in one file a learner reads: `runs/<run>/config.yaml`.

Its sections are named after the calls they feed, with the libraries' own argument names: `model` (`from_pretrained`),
`tokenizer`, `data` (`load_dataset("json", ...)`), `bnb` (`BitsAndBytesConfig`), `lora` (`LoraConfig`), `sft`
(`SFTConfig`) and `merge`; notebook 07 adds `dpo_model`, `dpo_data`, `dpo_lora` and `dpo` (`DPOConfig`). Notebooks 02
and 07's lesson cells and `recipes/sft.py --config` and `recipes/dpo.py --config` read it; a value the hardware
decided carries a comment saying so. Written from the resolved `RunConfig`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lab_utils.core.paths import atomic_write_text
from lab_utils.core.profiles import PreferenceSettings
from lab_utils.core.results import run_dir
from lab_utils.data.alpaca import ALPACA_CHAT_TEMPLATE
from lab_utils.lab.runconfig import RunConfig
from lab_utils.models.loading import bnb_kwargs, load_tokenizer
from lab_utils.train.dpo import dpo_kwargs, dpo_lora_kwargs
from lab_utils.train.sft import (
    load_splits,
    lora_kwargs,
    merge_dtype,
    model_kwargs,
    resolve_batching,
    sft_kwargs,
)

CONFIG_NAME = "config.yaml"
SECTIONS = ("model", "tokenizer", "data", "bnb", "lora", "sft", "merge")
DPO_SECTIONS = ("dpo_model", "dpo_data", "dpo_lora", "dpo")


def plain(value: Any) -> Any:
    """A value as YAML can hold it: torch dtypes by name (`from_pretrained` and `BitsAndBytesConfig` take the name)."""
    if type(value).__name__ == "dtype":
        return str(value).removeprefix("torch.")
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def sections(cfg: RunConfig, output_dir: Path, data_files: dict[str, str], pad_token: str) -> dict[str, Any]:
    """Every section of the file, from the resolved run configuration."""
    s, prof, hw, machine = cfg.profile.train, cfg.profile, cfg.decision_hardware, cfg.hardware
    return {
        "profile": prof.name,
        "method": s.method,
        "model": plain({"pretrained_model_name_or_path": cfg.base_model_path(), **model_kwargs(s, hw, machine)}),
        "tokenizer": {"pad_token": pad_token},
        "data": {**data_files, "source": prof.dataset, "max_length": s.max_seq_length},
        "bnb": plain(bnb_kwargs("qlora", hw)),
        "lora": lora_kwargs(s),  # unused when the method is full: every weight trains
        "sft": plain(sft_kwargs(s, output_dir, hw, machine)),
        "merge": {
            "merge": prof.merge_for_serving,
            "dtype": merge_dtype(s, hw),
            "chat_template": ALPACA_CHAT_TEMPLATE,
        },
    }


def decisions(cfg: RunConfig, values: dict[str, Any]) -> dict[tuple[str, str], str]:
    """A comment for each value the hardware decided, keyed by (section, argument)."""
    hw, s = cfg.decision_hardware, cfg.profile.train
    where = f"{hw.name}" + (f" (rehearsed on {cfg.hardware.name})" if cfg.rehearsal else "")
    sft = values["sft"]
    precision = "fp16" if sft.get("fp16") else "bf16" if sft.get("bf16") else "fp32"
    notes = {
        ("sft", "use_cpu"): "no CUDA GPU here" if sft.get("use_cpu") else "a CUDA GPU",
        ("bnb", "bnb_4bit_compute_dtype"): f"the 16-bit dtype {where} computes in",
        ("bnb", "bnb_4bit_quant_storage"): "stored like the other weights, so FSDP and ZeRO-3 can shard them",
    }
    if s.bf16:  # mixed precision: bf16, or fp16 where the GPU has no bf16
        why = f"{where} has no bf16 (compute capability under 8.0)" if precision == "fp16" else f"{where} has bf16"
        notes[("sft", "bf16")] = notes[("sft", "fp16")] = f"{precision} mixed precision: {why}"
        notes[("merge", "dtype")] = f"the 16-bit dtype {where} computes in"
    if s.method == "full":
        notes[("model", "dtype")] = "fp32 master weights: mixed precision computes in 16 bits, the weights stay fp32"
    elif s.bf16:
        notes[("model", "dtype")] = f"the frozen base in the 16-bit dtype {where} computes in"
    mode = resolve_batching(s.batching, cfg.hardware)
    for key in ("padding_free", "train_sampling_strategy"):
        notes[("sft", key)] = f"{mode}: " + (
            "FlashAttention-2 on this GPU" if mode == "padding_free" else "no FlashAttention-2 here"
        )
    if sft.get("optim") != s.optim:
        notes[("sft", "optim")] = f"the profile's {s.optim}, as this method and hardware run it"
    for (section, key), note in list(notes.items()):  # DPO trains on the same hardware with the same decisions
        if section in ("sft", "model") and "dpo" in values:
            notes[("dpo" if section == "sft" else "dpo_model", key)] = note
    if "device_map" in values["model"]:
        notes[("model", "device_map")] = "a 4-bit model is placed on this process's GPU"
    if "attn_implementation" in values["model"]:
        notes[("model", "attn_implementation")] = "padding-free batches need FlashAttention-2"
    return notes


def flow(value: Any) -> str:
    """One value as a YAML flow value that reads back as written (JSON is YAML, but for floats like 5e-05, which YAML
    1.1 reads as a string without the decimal point)."""
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # JSON is YAML: one line, every character kept


def render(values: dict[str, Any], notes: dict[tuple[str, str], str], header: list[str]) -> str:
    """The file's text: one line per argument (YAML flow values), with its comment where the hardware decided it."""
    lines = [f"# {line}" for line in header]
    for name, value in values.items():
        if not isinstance(value, dict):
            lines.append(f"{name}: {flow(value)}")
            continue
        lines.append(f"{name}:")
        for key, item in value.items():
            text = f"  {key}: {flow(item)}"
            note = notes.get((name, key))
            lines.append(f"{text}  # {note}" if note else text)
    return "\n".join(lines) + "\n"


def write_config(
    cfg: RunConfig, output_dir: str | Path, folder: str | Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """Check and split the run's data by 01's rules into `folder/data/{train,eval}.jsonl` (prompt/completion pairs),
    then write `folder/config.yaml` (folder: the run folder). Returns the file's path and what loading the data kept,
    skipped and why."""
    folder = Path(folder) if folder else run_dir()
    tokenizer = load_tokenizer(cfg.base_model_path())
    train_ds, eval_ds, info = load_splits(cfg.profile, tokenizer)
    files = {}
    for split, ds in (("train", train_ds), ("eval", eval_ds)):
        path = folder / "data" / f"{split}.jsonl"
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ds))
        files[f"{split}_file"] = str(path.resolve())
    values = sections(cfg, Path(output_dir).resolve(), files, tokenizer.pad_token)
    header = [
        f"Run settings: profile {cfg.name}, {cfg.method}, on {cfg.hardware.name}"
        + (f", rehearsing {cfg.decision_hardware.name}" if cfg.rehearsal else "")
        + ".",
        "Sections name the calls they feed: model -> from_pretrained, bnb -> BitsAndBytesConfig (QLoRA),",
        "lora -> LoraConfig, sft -> SFTConfig. Read by notebook 02 and by `python recipes/sft.py --config <this file>`.",
    ]
    path = atomic_write_text(folder / CONFIG_NAME, render(values, decisions(cfg, values), header))
    return path, info


def dpo_sections(
    cfg: RunConfig, pref: PreferenceSettings, sft_dir: str | Path, pairs: dict[str, str], output_dir: str | Path
) -> dict[str, Any]:
    """Notebook 07's sections: the SFT model loaded as 02 loaded its base, the pairs files, the new adapter, DPOConfig."""
    s, hw, machine = cfg.profile.train, cfg.decision_hardware, cfg.hardware
    return {
        "dpo_model": plain({"pretrained_model_name_or_path": str(sft_dir), **model_kwargs(s, hw, machine)}),
        "dpo_data": pairs,
        "dpo_lora": dpo_lora_kwargs(pref),
        "dpo": plain(dpo_kwargs(pref, s, Path(output_dir).resolve(), hw, machine)),
    }


def add_dpo(cfg: RunConfig, dpo: dict[str, Any], folder: str | Path | None = None) -> Path:
    """Add (or replace) 07's sections in the run's config.yaml, writing the whole file first where 02 did not run in this
    run folder."""
    folder = Path(folder) if folder else run_dir()
    path = folder / CONFIG_NAME
    if not path.exists():
        write_config(cfg, folder / "sft", folder)
    text = path.read_text()
    kept = text[: text.index("\ndpo_model:") + 1] if "\ndpo_model:" in text else text
    values = {**read_config(path), **dpo}
    notes = decisions(cfg, values)
    return atomic_write_text(path, kept + render(dpo, notes, []))


def read_config(path: str | Path) -> dict[str, Any]:
    """The file as the cells and the recipe read it."""
    return yaml.safe_load(Path(path).read_text())
