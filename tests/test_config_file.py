"""The run's config.yaml: sections named after the calls they feed, the libraries' own argument names, the profile's
values, a comment where the hardware decided, and data files the cells and the recipe read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab_utils.data import ALPACA_CHAT_TEMPLATE
from lab_utils.lab import config_file, runconfig


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    folder = tmp_path_factory.mktemp("run")
    cfg = runconfig.resolve("pocket")
    path, info = config_file.write_config(cfg, folder / "sft", folder)
    return path, config_file.read_config(path), info


def test_sections_feed_the_library_calls_as_they_are(written: tuple[Path, dict, dict]) -> None:
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    _, config, _ = written
    assert {"method", "model", "tokenizer", "data", "bnb", "lora", "sft", "merge"} <= set(config)
    s = runconfig.resolve("pocket").profile.train
    lora = LoraConfig(**config["lora"])
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (s.lora_r, s.lora_alpha, s.lora_dropout)
    args = SFTConfig(**config["sft"])
    assert (args.max_steps, args.learning_rate, args.per_device_train_batch_size) == (
        s.max_steps,
        s.learning_rate,
        s.per_device_batch_size,
    )
    assert args.max_length == s.max_seq_length and args.completion_only_loss is True
    assert BitsAndBytesConfig(**config["bnb"]).bnb_4bit_quant_type == "nf4"
    assert config["model"]["pretrained_model_name_or_path"].endswith("pocket-base")
    assert config["merge"]["chat_template"] == ALPACA_CHAT_TEMPLATE and config["merge"]["dtype"] == "float32"


def test_comments_mark_what_the_hardware_decided(written: tuple[Path, dict, dict]) -> None:
    path, _, _ = written
    lines = {line.split(":")[0].strip(): line for line in path.read_text().splitlines() if line.startswith("  ")}
    assert "# no CUDA GPU here" in lines["use_cpu"]
    assert "no FlashAttention-2 here" in lines["train_sampling_strategy"]
    assert "#" not in lines["learning_rate"] and "#" not in lines["r"], "the profile's own values carry no comment"


def test_the_data_files_are_the_checked_split(written: tuple[Path, dict, dict]) -> None:
    _, config, info = written
    rows = {s: Path(config["data"][f"{s}_file"]).read_text().splitlines() for s in ("train", "eval")}
    assert (len(rows["train"]), len(rows["eval"])) == (info["n_train"], info["n_eval"]) and info["n_eval"] > 0
    first = json.loads(rows["train"][0])
    assert set(first) == {"prompt", "completion"} and first["prompt"].endswith("### Response:\n")


def test_resolve_decides_the_hardware_once_a_t4_gets_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    """`resolve(hardware=<a T4>)` alone gives the file fp16 arguments (no environment variable read below it); an
    H100 gets bf16 and the fused AdamW; placement and the CPU flag follow the machine."""
    from lab_utils.core.hardware import DESCRIBED

    for name in ("LAB_REHEARSAL", "LAB_REHEARSAL_TARGET"):
        monkeypatch.delenv(name, raising=False)
    files = {"train_file": "train.jsonl", "eval_file": "eval.jsonl"}
    t4 = runconfig.resolve("llama3-8b-qlora", hardware=DESCRIBED["t4"])
    v = config_file.sections(t4, Path("out"), files, "<pad>")
    assert (v["sft"]["fp16"], v["sft"]["bf16"], v["sft"]["use_cpu"]) == (True, False, False)
    assert v["model"]["dtype"] == v["bnb"]["bnb_4bit_compute_dtype"] == v["merge"]["dtype"] == "float16"
    assert v["model"]["device_map"] == {"": 0} and v["sft"]["optim"] == "paged_adamw_8bit"
    text = config_file.render(v, config_file.decisions(t4, v), [])
    assert "fp16 mixed precision: NVIDIA T4" in text or "has no bf16" in text
    h100 = runconfig.resolve("llama3-8b", hardware=DESCRIBED["h100"])
    v = config_file.sections(h100, Path("out"), files, "<pad>")
    assert (v["sft"]["bf16"], v["sft"]["fp16"]) == (True, False) and v["model"]["dtype"] == "bfloat16"
    assert v["sft"]["optim"] == "adamw_torch_fused" and "device_map" not in v["model"]


@pytest.mark.parametrize("name", ["pocket", "smollm2-135m", "llama3-8b", "llama3-8b-qlora", "llama3-70b-qlora"])
def test_every_profiles_file_reads_back_as_written(name: str) -> None:
    """YAML reads every value back with its type (a learning rate of 5e-05 is a float, not a string)."""
    import yaml

    from lab_utils.core.hardware import DESCRIBED
    from lab_utils.core.profiles import PROFILES

    target = PROFILES[name].rehearsal_target
    cfg = runconfig.resolve(name, hardware=DESCRIBED[target] if target else None)
    values = config_file.sections(cfg, Path("out"), {"train_file": "t.jsonl", "eval_file": "e.jsonl"}, "<pad>")
    values.update(config_file.dpo_sections(cfg, cfg.profile.preference, "sft", {"train_file": "p.jsonl"}, "dpo"))
    text = config_file.render(values, config_file.decisions(cfg, values), ["a header"])
    assert yaml.safe_load(text) == values
    assert isinstance(yaml.safe_load(text)["sft"]["learning_rate"], float)
