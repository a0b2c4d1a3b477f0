"""SFT on the pocket model through the recipe (`recipes/sft.py`): EOS supervised in a collated batch, padding-free is
exact, resume, the trained model freed before the merge, the merge, QLoRA and full, DDP, FSDP2, ZeRO-3."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lab_utils import data, train
from lab_utils.core.hardware import DESCRIBED, probe
from lab_utils.core.paths import REPO_ROOT, recipe
from lab_utils.core.profiles import get_profile
from lab_utils.lab import config_file, runconfig
from lab_utils.models import merge

pytestmark = pytest.mark.slow
POCKET = get_profile("pocket")


HERE = probe()


@pytest.fixture(scope="module")
def pocket_config(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The pocket run's config.yaml, as 02 writes it, and what writing it read from the data."""
    folder = tmp_path_factory.mktemp("pocket-config")
    return config_file.write_config(runconfig.resolve("pocket"), folder / "sft", folder)


def config_for(path: Path, tmp_path: Path, **sft: Any) -> Path:
    """A copy of a config file with some of its SFTConfig values changed, no merge unless asked."""
    config = yaml.safe_load(path.read_text())
    config["merge"]["merge"] = sft.pop("merge", False)
    config["sft"].update(output_dir=str(tmp_path / "run"), **sft)
    out = tmp_path / "config.yaml"
    out.write_text(yaml.safe_dump(config))
    return out


@pytest.mark.cpu_only
def test_sft_kwargs_turn_trl_defaults_off_explicitly(tmp_path: Path) -> None:
    from trl import SFTConfig

    cfg = SFTConfig(**train.sft_kwargs(POCKET.train, tmp_path, HERE, HERE))
    assert cfg.bf16 is False and cfg.gradient_checkpointing is False  # TRL defaults both to True
    assert cfg.completion_only_loss is True and cfg.report_to == []
    # On a CPU the lab batches by length (measured faster than padding-free there); on a GPU with FlashAttention it
    # goes padding-free.
    assert train.resolve_batching("auto", HERE) == "group_by_length"
    assert cfg.train_sampling_strategy == "group_by_length" and cfg.padding_free is False
    pf = SFTConfig(**train.sft_kwargs(POCKET.with_train(batching="padding_free").train, tmp_path, HERE, HERE))
    assert pf.padding_free is True and pf.max_length is None
    with pytest.raises(ValueError, match="batching must be"):
        train.resolve_batching("magic", HERE)
    qlora = SFTConfig(**train.sft_kwargs(POCKET.with_train(method="qlora").train, tmp_path, HERE, HERE))
    assert qlora.optim == "paged_adamw_8bit"


def test_the_recipes_collated_batch_supervises_eos_not_prompt(pocket_config: tuple[Path, dict[str, Any]]) -> None:
    path, info = pocket_config
    trainer, tok, _ = recipe("sft").build(yaml.safe_load(path.read_text()))
    assert tok.pad_token_id != tok.eos_token_id
    examples = [trainer.train_dataset[i] for i in range(8)]
    batch = trainer.data_collator(examples)
    assert batch["labels"].shape[0] == 8
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        supervised = [t for t in labels if t != -100]
        assert supervised[-1] == tok.eos_token_id, "the last supervised label must be EOS"
        prompt_len = next(i for i, t in enumerate(labels) if t != -100)
        assert tok.decode(ids[:prompt_len]).rstrip().endswith("### Response:"), (
            "everything up to the response is masked"
        )
        assert all(t == -100 for t, i in zip(labels, ids) if i == tok.pad_token_id), "padding is never supervised"
    assert info["n_train"] + info["n_eval"] >= 2000
    # Padding-free batches give the same loss as padded ones (position ids tell the examples apart).
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = examples[:6]
    flat = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(examples)
    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=False)(examples)
    model = trainer.model.eval()
    with torch.no_grad():
        flat_loss = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"], labels=flat["labels"]).loss
        padded_loss = model(**{k: padded[k] for k in ("input_ids", "attention_mask", "labels")}).loss
    assert flat_loss.item() == pytest.approx(padded_loss.item(), rel=1e-4)


class _Interrupt(Exception):
    pass


def test_an_interrupted_recipe_resumes_to_the_same_step(
    pocket_config: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            if state.global_step == 7:
                raise _Interrupt("simulated crash")

    path = config_for(pocket_config[0], tmp_path, max_steps=12, save_steps=4, eval_steps=12, logging_steps=2)
    sft, run = recipe("sft"), tmp_path / "run"
    trainer, _, _ = sft.build(yaml.safe_load(path.read_text()))
    trainer.add_callback(StopAt())
    with pytest.raises(_Interrupt):
        trainer.train()
    del trainer
    assert not (run / "adapter").exists(), "a crashed run leaves no adapter that looks whole"
    assert train.last_checkpoint(run).endswith("checkpoint-4")
    sft.main(["--config", str(path), "--resume"])
    line = capsys.readouterr().out
    assert "step 12 of 12" in line and "resumed from checkpoint-4" in line, line
    assert (run / "adapter" / "adapter_model.safetensors").exists() and not list(run.glob("*.partial"))
    steps = [r["step"] for r in json.loads((run / "log_history.json").read_text()) if "loss" in r]
    assert steps[-1] == 12 and len(steps) == len(set(steps)), "the resumed history ends at 12, no step twice"


def test_the_recipes_merge_has_template_eos_and_no_quantization(
    pocket_config: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The merged folder vLLM serves. (That the trained model is freed before the merge loads the base, issue 19's C4,
    is checked on the recipe by the GPU check's lora20 stage, whose CPU run is in tests/test_gpu_check.py.)"""
    path = config_for(pocket_config[0], tmp_path, max_steps=3, save_steps=100, eval_steps=100, merge=True)
    recipe("sft").main(["--config", str(path)])
    out = tmp_path / "run" / "merged"
    facts = merge.check_merged(out)
    assert facts["safetensors_only"] is True and facts["has_quantization_config"] is False
    assert facts["has_chat_template"] is True
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert facts["generation_eos_token_id"] == tok.eos_token_id
    messages = [{"role": "user", "content": "First, tell me the capital of France"}]
    training_prompt = data.format_prompt("First, tell me the capital of France")
    assert tok.apply_chat_template(messages, tokenize=False) == tok.bos_token + training_prompt
    assert tok.apply_chat_template(messages, tokenize=True, return_dict=False) == tok(training_prompt)["input_ids"]
    # The tutorial's system message takes the place of the preamble's first sentence (said in notebooks 01 and 04).
    system = [{"role": "system", "content": "You are a helpful assistant."}, *messages]
    expected = training_prompt.replace(data.ALPACA_SYSTEM_DEFAULT, "You are a helpful assistant.")
    assert tok.apply_chat_template(system, tokenize=False) == tok.bos_token + expected
    assert not list((tmp_path / "run").glob("*.partial")), "no temporary folders left behind"


TWO_CPU_PROCESSES = {"num_processes": 2, "mixed_precision": "no", "use_cpu": True}
RECIPE = REPO_ROOT / "recipes" / "sft.py"


@pytest.fixture(scope="module")
def launch_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pocket run's config.yaml for the launches: checkpoints every 2 steps, a loss at every step, no merge."""
    import yaml

    from lab_utils.lab import config_file, runconfig

    folder = tmp_path_factory.mktemp("launch-config")
    path, _ = config_file.write_config(runconfig.resolve("pocket"), folder / "sft", folder)
    config = yaml.safe_load(path.read_text())
    config["sft"].update(save_steps=2, logging_steps=1, eval_steps=100)
    config["merge"]["merge"] = False
    path.write_text(yaml.safe_dump(config))
    return path


def launch_on_two_cpu_processes(
    config_file: str, launch_config: Path, tmp_path: Path, overrides: dict[str, Any] = TWO_CPU_PROCESSES, **env: str
) -> Any:
    """A shipped accelerate config (a multi-GPU one made to run on 2 CPU processes: gloo, fp32), and a function that
    runs `recipes/sft.py --config` under it and returns what it printed. Each launch takes a free port: a port the
    last run used may still be in TIME_WAIT, and the rendezvous then waits."""
    import socket

    import yaml

    config = yaml.safe_load((REPO_ROOT / "configs/accelerate" / config_file).read_text())
    config.update(overrides)
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}

    def launch(steps: int, *extra: str) -> str:
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            config["main_process_port"] = free.getsockname()[1]
        (tmp_path / config_file).write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / config_file)]
        cmd += [str(RECIPE), "--config", str(launch_config), "--max-steps", str(steps)]
        proc = subprocess.run([*cmd, "--output-dir", str(tmp_path / "run"), *extra], cwd=REPO_ROOT, env=run_env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    return launch


def reported(stdout: str) -> dict[str, Any]:
    """The recipe's line about the run: steps, processes, how they were distributed, trainable parameters, eval loss."""
    import re

    m = re.search(
        r"step (\d+) of (\d+) on (\d+) process\(es\) \((\w+)\)(, resumed from ([\w-]+))?; ([\d,]+) trainable "
        r"parameters; eval loss (.+) -> ([\d.naninf]+)",
        stdout,
    )
    assert m, stdout[-2000:]
    return {
        "steps": int(m.group(1)),
        "world_size": int(m.group(3)),
        "distributed_type": m.group(4),
        "resumed_from": m.group(6),
        "trainable_params": int(m.group(7).replace(",", "")),
        "eval_loss_before": None if m.group(8).startswith("not measured") else float(m.group(8)),
        "eval_loss": float(m.group(9)),
    }


def test_two_processes_with_accelerate(launch_config: Path, tmp_path: Path) -> None:
    """`cpu_2proc.yaml` as shipped: plain data parallelism on 2 CPU processes (gloo), through the recipe."""
    first = reported(launch_on_two_cpu_processes("cpu_2proc.yaml", launch_config, tmp_path, overrides={})(4))
    assert first["world_size"] == 2 and first["steps"] == 4 and first["distributed_type"] == "MULTI_CPU"
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()


def whole_adapter_params(run: Path) -> int:
    """Parameters in the saved adapter file."""
    from safetensors import safe_open

    with safe_open(str(run / "adapter" / "adapter_model.safetensors"), "pt") as f:
        return sum(f.get_tensor(k).numel() for k in f.keys())


def test_fsdp2_trains_saves_whole_and_resumes_on_two_cpu_processes(launch_config: Path, tmp_path: Path) -> None:
    """The shipped FSDP config (`fsdp_multi_gpu.yaml`: FSDP2, FULL_STATE_DICT) on 2 CPU processes, with the test-only
    shim `tests/fsdp_cpu` that lets accelerate shard on a CPU: LoRA trains sharded, every rank joins the save and the
    adapter is whole, and a second run resumes from the sharded checkpoint. The first CPU run found that FSDP2 cannot
    evaluate before training (transformers#39961): the recipe skips that evaluation under FSDP2."""
    config = (REPO_ROOT / "configs/accelerate/fsdp_multi_gpu.yaml").read_text()
    assert "fsdp_version: 2" in config and "fsdp_state_dict_type: FULL_STATE_DICT" in config
    shim = os.pathsep.join([str(REPO_ROOT / "tests/fsdp_cpu"), os.environ.get("PYTHONPATH", "")])
    launch = launch_on_two_cpu_processes(
        "fsdp_multi_gpu.yaml", launch_config, tmp_path, LAB_FSDP_ON_CPU="1", PYTHONPATH=shim
    )
    printed, run = launch(2), tmp_path / "run"
    assert printed.count("tests/fsdp_cpu: FSDP on a 2-process CPU run") == 2, "both ranks shard"
    first = reported(printed)
    assert (first["world_size"], first["distributed_type"], first["steps"]) == (2, "FSDP", 2)
    assert first["eval_loss_before"] is None and math.isfinite(first["eval_loss"])
    assert whole_adapter_params(run) == first["trainable_params"] > 0, "FULL_STATE_DICT: the whole adapter"
    assert (run / "checkpoint-2" / "pytorch_model_fsdp.bin").exists(), "the checkpoint is FSDP's sharded one"
    resumed = reported(launch(4, "--resume"))
    assert resumed["steps"] == 4 and resumed["resumed_from"] == "checkpoint-2"
    losses = [r["loss"] for r in json.loads((run / "log_history.json").read_text()) if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), "the resumed run's history holds all 4 steps"


def test_deepspeed_zero3_trains_and_saves_whole_on_two_cpu_processes(launch_config: Path, tmp_path: Path) -> None:
    """The shipped ZeRO-3 config (`deepspeed_zero3_qlora.yaml`) on 2 CPU processes (DeepSpeed's CPU accelerator and
    gloo, no shim; DeepSpeed from .deepspeed/, outside the lab's environment), through the recipe. LoRA trains with
    parameters, gradients and optimizer state sharded; every rank joins the save and the adapter is whole; the
    checkpoint is DeepSpeed's. Its first run found two crashes: the config's fixed gradient_accumulation_steps (16)
    stopped every profile with another value, and evaluating before training left the trainer without its DeepSpeed
    engine (skipped under DeepSpeed, as under FSDP2)."""
    beside = REPO_ROOT / ".deepspeed"  # `make test` installs DeepSpeed there, outside the lab's environment
    if not (beside / "deepspeed").is_dir():
        missing = "DeepSpeed is not in .deepspeed/: `make test` installs it (tests/deepspeed-requirements.txt)"
        if os.environ.get("LAB_REQUIRE_DEEPSPEED") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    path = os.pathsep.join([str(beside), os.environ.get("PYTHONPATH", "")])
    launch = launch_on_two_cpu_processes("deepspeed_zero3_qlora.yaml", launch_config, tmp_path, PYTHONPATH=path)
    first, run = reported(launch(2)), tmp_path / "run"
    assert (first["world_size"], first["distributed_type"], first["steps"]) == (2, "DEEPSPEED", 2)
    args = torch.load(run / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert args.gradient_accumulation_steps == POCKET.train.gradient_accumulation_steps
    assert first["eval_loss_before"] is None and math.isfinite(first["eval_loss"])
    assert whole_adapter_params(run) == first["trainable_params"] > 0, "ZeRO-3 gathers the whole adapter"
    assert (run / "checkpoint-2" / "global_step2").is_dir(), "the checkpoint is DeepSpeed's sharded one"


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_other_methods_train_and_merge(method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM

    written, _ = config_file.write_config(runconfig.resolve("pocket", method=method), tmp_path / "sft", tmp_path)
    path = config_for(written, tmp_path, max_steps=3, save_steps=100, eval_steps=100, logging_steps=1, merge=True)
    recipe("sft").main(["--config", str(path)])
    printed = capsys.readouterr().out
    trainable = int(re.search(r"([\d,]+) trainable parameters", printed).group(1).replace(",", ""))
    total = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "merged")).num_parameters()
    assert "step 3 of 3" in printed
    if method == "full":
        assert trainable == total
    else:  # QLoRA: the adapters train, the 4-bit base is frozen
        assert trainable < 0.2 * total
        merged_in = yaml.safe_load(written.read_text())["merge"]["dtype"]
        assert merged_in == "bfloat16", "QLoRA merges into a 16-bit base, never a 4-bit one"
    facts = merge.check_merged(tmp_path / "run" / "merged")
    assert facts["has_quantization_config"] is False and facts["safetensors_only"] and facts["has_chat_template"]


def test_qlora_adapters_are_fp32_under_fp16(pocket_config: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """Issue 19, C3: TRL casts a 4-bit model's adapters to bf16 (seen here, on the CPU's 4-bit path); under fp16 mixed
    precision (a T4) the recipe puts them back to fp32, which fp16's loss scaler needs."""
    written, _ = config_file.write_config(runconfig.resolve("pocket", method="qlora"), tmp_path / "sft", tmp_path)
    sft = recipe("sft")
    config = yaml.safe_load(config_for(written, tmp_path, max_steps=1, eval_strategy="no").read_text())
    trainer, _, _ = sft.build(config)
    adapters = [p for p in trainer.model.parameters() if p.requires_grad]
    assert adapters and {p.dtype for p in adapters} == {torch.bfloat16}, "TRL's cast, which the fix undoes on fp16"
    frozen_before = [p.dtype for p in trainer.model.parameters() if not p.requires_grad]
    assert sft.fp32_adapters(trainer.model) == len(adapters)
    assert {p.dtype for p in adapters} == {torch.float32}
    assert [p.dtype for p in trainer.model.parameters() if not p.requires_grad] == frozen_before, "base untouched"


@pytest.mark.parametrize("storage", ["uint8", "bfloat16"])
def test_a_4bit_models_parameter_count_is_the_configured_one(storage: str, tmp_path: Path) -> None:
    """QLoRA's total: every weight once, whatever `bnb_4bit_quant_storage` packs them in (W1: a 16-bit storage holds
    four 4-bit weights per element, not two)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

    from lab_utils.train.sft import count_params

    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=256,
    )
    model = AutoModelForCausalLM.from_config(config)
    expected = model.num_parameters()
    model.save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_quant_storage=getattr(torch, storage),
    )
    four_bit = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quant, dtype=torch.bfloat16)
    assert any(p.__class__.__name__ == "Params4bit" for p in four_bit.parameters())
    assert count_params(four_bit)[1] == expected


def test_the_batching_benchmark_is_skipped_where_no_batch_holds_padding(capsys: pytest.CaptureFixture[str]) -> None:
    from lab_utils.train import bench

    seventy = get_profile("llama3-70b-qlora")
    assert seventy.train.per_device_batch_size == 1
    assert bench.run(seventy, "/no/such/config.yaml", 12, HERE, model_path="/no/such/model") == [], "nothing runs"
    assert "no batch holds padding" in capsys.readouterr().out
    assert bench.skip_reason(get_profile("pocket")) == bench.skip_reason(get_profile("llama3-8b")) == ""


def test_the_batching_benchmark_runs_in_a_child_on_a_gpu_and_in_process_on_a_cpu(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a CPU a child process would spend ~7 s importing the training stack again; on a GPU the child gives the five
    trainers' memory back to the device."""
    from lab_utils.train import bench

    calls: list[str] = []
    monkeypatch.setattr(bench, "compare", lambda *a, **k: calls.append("here") or [{"mode": "x"}])
    monkeypatch.setattr(bench, "compare_in_subprocess", lambda *a, **k: calls.append("child") or [{"mode": "y"}])
    monkeypatch.setattr(bench, "longest_example", lambda *a, **k: 100)
    pocket = get_profile("pocket")
    assert bench.run(pocket, "c.yaml", 3, DESCRIBED["cpu"]) == [{"mode": "x"}] and calls == ["here"]
    assert "in this process" in capsys.readouterr().out
    assert bench.run(get_profile("llama3-70b-qlora"), "c.yaml", 3, DESCRIBED["h100"]) == [] and calls == ["here"]
    assert bench.run(get_profile("llama3-8b"), "c.yaml", 3, DESCRIBED["h100"]) == [{"mode": "y"}]
    assert calls == ["here", "child"]
