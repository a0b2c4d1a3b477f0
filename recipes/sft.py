"""Fine-tune a causal LM with TRL's SFTTrainer (LoRA, QLoRA or full) from a run's config file, ask it, merge it.

Usage: python recipes/sft.py --config runs/latest/config.yaml [--data my.jsonl] [--output-dir out] [--max-steps N]

The config file is the one notebook 02 writes: its sections feed `from_pretrained` (model), `BitsAndBytesConfig` (bnb),
`LoraConfig` (lora) and `SFTConfig` (sft) with the libraries' own argument names. --data: your own .json/.jsonl of
Alpaca records or {"prompt", "completion"} pairs, 5% held out. Writes OUT/adapter, OUT/log_history.json and OUT/merged
(safetensors and the chat template: transformers, vLLM and recipes/serve.py load it). Runs under `accelerate launch`.
"""

import argparse
import gc
import json
import os
import shutil
import sys
from pathlib import Path

import yaml
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GenerationConfig
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer

# The lab's Alpaca prompt (lab_utils/data/alpaca.py), character for character: a model answers best in the format it
# was trained on, so the merged model is served with the config's chat template, which renders chat messages to it.
PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
QUESTION = "First, tell me the capital of France"
SECTIONS = ("method", "model", "tokenizer", "data", "bnb", "lora", "sft", "merge")


def fail(message: str) -> None:
    """Stop with one line that names the file, the line or the field, and no traceback."""
    sys.exit(f"recipes/sft.py: {message}")


def read_pairs(path: str) -> list[dict]:
    """A .jsonl file (or a .json array) as prompt/completion pairs; the first bad record stops the run, named."""
    file = Path(path)
    if not file.is_file():
        fail(f"{path}: no such file")
    rows, where = [], "line"
    if file.suffix == ".json":
        try:
            rows, where = list(enumerate(json.loads(file.read_text(encoding="utf-8")), start=1)), "record"
        except json.JSONDecodeError as e:
            fail(f"{path} line {e.lineno}: not JSON ({e.msg})")
    else:
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                rows += [(n, json.loads(line))] if line.strip() else []
            except json.JSONDecodeError as e:
                fail(f"{path} line {n}: not JSON ({e.msg}, column {e.colno})")
    pairs = []
    for n, r in rows:
        fields = ("prompt", "completion") if isinstance(r, dict) and "prompt" in r else ("instruction", "output")
        for field in fields:
            if not isinstance(r, dict) or not isinstance(r.get(field), str) or not r[field].strip():
                fail(f"{path} {where} {n}: field '{field}' is missing or empty")
        if "prompt" in r:
            pairs.append({"prompt": r["prompt"], "completion": r["completion"]})
        else:  # an Alpaca record, in the lab's prompt
            template = PROMPT_WITH_INPUT if str(r.get("input") or "").strip() else PROMPT
            pairs.append({"prompt": template.format(**{"input": "", **r}), "completion": r["output"]})
    if not pairs:
        fail(f"{path}: no records (the file is empty)")
    return pairs


def load_data(data: dict, tok, seed: int) -> tuple[Dataset, Dataset]:
    """Train and eval pairs; examples over max_length tokens are dropped, not truncated (that would cut off the EOS)."""
    fits = lambda p: len(tok(p["prompt"] + p["completion"])["input_ids"]) + 1 <= data["max_length"]  # noqa: E731
    train = [p for p in read_pairs(data["train_file"]) if fits(p)]
    evals = [p for p in read_pairs(data["eval_file"]) if fits(p)] if data.get("eval_file") else None
    if not train:
        fail(f"{data['train_file']}: no example fits max_length {data['max_length']} tokens")
    if evals is None:  # your own file: hold 5% out
        split = Dataset.from_list(train).train_test_split(test_size=0.05, seed=seed)
        return split["train"], split["test"]
    return Dataset.from_list(train), Dataset.from_list(evals)


def fp32_adapters(model) -> int:
    """fp16's loss scaler cannot unscale bf16 gradients, and TRL makes a 4-bit model's adapters bf16: QLoRA on a T4
    crashed at its first step (pytorch#127176). fp32 trainable weights, PEFT's own default, fix it."""
    for param in (trainable := [q for q in model.parameters() if q.requires_grad]):
        param.data = param.data.float()
    return len(trainable)


def build(config: dict, name: str = "the config", **changes) -> tuple[SFTTrainer, AutoTokenizer, Dataset]:
    """The tokenizer, the data, the SFTConfig (with `changes`), the model and the SFTTrainer, from the config."""
    tok = AutoTokenizer.from_pretrained(config["model"]["pretrained_model_name_or_path"])
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.pad_token = config["tokenizer"]["pad_token"]  # pad == EOS would mask EOS out of the labels (trl#1623)
    train, evals = load_data(config["data"], tok, config["sft"].get("seed", 42))
    try:  # the config first: it sets up the distributed state (FSDP, ZeRO-3, the local rank) the model loads into
        args = SFTConfig(**{**config["sft"], **changes})
    except (TypeError, ValueError) as e:
        fail(f"{name}: section sft: {e}")
    quant = BitsAndBytesConfig(**config["bnb"]) if config["method"] == "qlora" else None  # QLoRA: a 4-bit NF4 base
    model = AutoModelForCausalLM.from_pretrained(**config["model"], quantization_config=quant)
    lora = LoraConfig(**config["lora"]) if config["method"] != "full" else None  # full: every weight trains
    trainer = SFTTrainer(model, args, train_dataset=train, eval_dataset=evals, processing_class=tok, peft_config=lora)
    if args.fp16:  # a T4's QLoRA
        fp32_adapters(trainer.model)
    labels = trainer.data_collator([trainer.train_dataset[0]])["labels"][0]
    if labels[labels != -100][-1] != tok.eos_token_id:
        fail("EOS is not supervised: the model would never learn to stop")
    return trainer, tok, train


def ask(model, tok) -> None:
    """One greedy answer to the seed question, prompted through the chat template exactly as a server will."""
    text = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    inputs = tok(text, add_special_tokens=False, return_tensors="pt").to(model.device)  # the template writes BOS
    new = model.eval().generate(**inputs, max_new_tokens=64, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    answer = tok.decode(new, skip_special_tokens=True)
    print(f"{QUESTION!r} -> {answer!r} ({len(new)} new tokens, stopped at EOS: {new[-1].item() == tok.eos_token_id})")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, train, save, merge and ask."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="a run's config.yaml (notebook 02 writes runs/<run>/config.yaml)")
    p.add_argument("--data", help="your own .json/.jsonl file instead of the config's data")
    p.add_argument("--output-dir", help="instead of the config's sft.output_dir")
    p.add_argument("--max-steps", type=int, help="instead of the config's sft.max_steps")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output folder")
    args = p.parse_args(argv)
    try:
        config = yaml.safe_load(Path(args.config).read_text())
    except (OSError, yaml.YAMLError) as e:
        fail(f"{args.config}: cannot read it as YAML ({str(e).splitlines()[0]})")
    missing = [s for s in SECTIONS if not isinstance(config, dict) or s not in config]
    if missing:
        fail(f"{args.config}: no {', '.join(missing)} section (notebook 02 writes a complete one)")
    config["sft"].update({k: v for k, v in (("output_dir", args.output_dir), ("max_steps", args.max_steps)) if v})
    if args.data:
        config["data"].update(train_file=args.data, eval_file=None)
    if "device_map" in config["model"]:  # a 4-bit model on this process's GPU; FSDP and ZeRO-3 place it themselves
        sharded = "true" in (os.environ.get("ACCELERATE_USE_FSDP"), os.environ.get("ACCELERATE_USE_DEEPSPEED"))
        config["model"]["device_map"] = None if sharded else {"": int(os.environ.get("LOCAL_RANK", "0"))}
    out = Path(config["sft"]["output_dir"])
    trainer, tok, train = build(config, args.config)
    # FSDP2 and ZeRO-3 cannot evaluate a model before training prepares it (transformers#39961): skip that one eval.
    before = None if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled else trainer.evaluate()["eval_loss"]
    resume = get_last_checkpoint(str(out)) if args.resume and out.is_dir() else None
    trainer.train(resume_from_checkpoint=resume)
    after = trainer.evaluate()["eval_loss"]
    is_main = trainer.is_world_process_zero()
    if is_main:
        shown = "not measured (sharded)" if before is None else f"{before:.4f}"
        how = trainer.accelerator.distributed_type.value  # NO, MULTI_CPU or MULTI_GPU (DDP), FSDP, DEEPSPEED
        trainable = sum(getattr(q, "ds_numel", q.numel()) for q in trainer.model.parameters() if q.requires_grad)
        steps, world = f"{trainer.state.global_step} of {trainer.args.max_steps}", trainer.args.world_size
        resumed = f", resumed from {Path(resume).name}" if resume else ""
        print(
            f"{len(train)} examples; step {steps} on {world} process(es) ({how}){resumed}; {trainable:,} trainable "
            f"parameters; eval loss {shown} -> {after:.4f}"
        )
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    tok.chat_template = config["merge"]["chat_template"]  # chat messages rendered to the training prompt, BOS first
    if is_main and trainer.args.world_size == 1:  # the trained model answers where it trained (a shard cannot alone)
        ask(trainer.model, tok)

    # Save the adapter whole, then rename it into place: every rank saves (FSDP and ZeRO-3 gather the weights).
    partial = out / "adapter.partial"
    if is_main:
        shutil.rmtree(partial, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(partial))
    trainer.accelerator.wait_for_everyone()
    if not is_main:
        return
    tok.save_pretrained(str(partial))
    shutil.rmtree(out / "adapter", ignore_errors=True)
    partial.rename(out / "adapter")
    del trainer
    gc.collect()  # TRL's rebound forward keeps the trained model alive until collected: free it before the merge loads
    if not config["merge"]["merge"]:
        print(f"adapter in {out / 'adapter'}; not merged: serve it beside the base (vLLM --enable-lora)")
        return

    # Merge: the base unquantized in the merge dtype (16-bit after mixed precision or QLoRA, fp32 after an fp32 run).
    dtype, name = config["merge"]["dtype"], config["model"]["pretrained_model_name_or_path"]
    if config["method"] != "full":
        base = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        merged = PeftModel.from_pretrained(base, str(out / "adapter")).merge_and_unload()
    else:  # full fine-tuning saved the whole model
        merged = AutoModelForCausalLM.from_pretrained(str(out / "adapter"), dtype=dtype)
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config  # a merged model claiming quantization confuses vLLM (vllm#19050)
    merged.config.eos_token_id, merged.config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    merged.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False
    )
    shutil.rmtree(out / "merged.partial", ignore_errors=True)
    merged.save_pretrained(str(out / "merged.partial"))  # safetensors
    tok.save_pretrained(str(out / "merged.partial"))  # tokenizer files and chat_template.jinja
    shutil.rmtree(out / "merged", ignore_errors=True)
    (out / "merged.partial").rename(out / "merged")


if __name__ == "__main__":
    main()
