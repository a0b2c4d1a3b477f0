"""Preference-tune an SFT model with TRL's DPOTrainer (a LoRA adapter; the adapter switched off is the reference), merge
it, and ask it questions.

Usage: python recipes/dpo.py --config runs/latest/config.yaml [--pairs my.jsonl] [--output-dir out] [--max-steps N]
       [--beta B] [--sft-weight W]

The config file is the run's (runs/<run>/config.yaml), to which notebook 07 adds its sections: `dpo_model`
(`from_pretrained`: the merged SFT model), `dpo_data` (the pairs), `dpo_lora` (`LoraConfig`) and `dpo` (`DPOConfig`),
with the libraries' own argument names. --pairs: your own .jsonl file of {"prompt" or "instruction", "chosen",
"rejected"} records; chosen and rejected may be strings or message lists, as in trl-lib/ultrafeedback_binarized.
Writes OUT/adapter and OUT/merged (with the SFT model's chat template and generation config), which
`python recipes/serve.py OUT/merged` serves as is.
"""

import argparse
import gc
import json
import shutil
import sys
from pathlib import Path

import yaml
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from trl import DPOConfig, DPOTrainer

# The lab's Alpaca prompt (lab_utils/data/alpaca.py), character for character: the SFT model was trained on it.
PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
QUESTIONS = ["First, tell me the capital of France", "Can you tell me the capital of Zanorvia?"]
SECTIONS = ("method", "bnb", "merge", "dpo_model", "dpo_data", "dpo_lora", "dpo")


def fail(message: str) -> None:
    """Stop with one line that names the file, the line or the field, and no traceback."""
    sys.exit(f"recipes/dpo.py: {message}")


def last_text(turns, role: str):
    """A message list's last text of `role` (ultrafeedback's chosen/rejected); a plain string as it is."""
    if isinstance(turns, str):
        return turns
    found = [t.get("content") for t in turns or [] if isinstance(t, dict) and t.get("role") == role]
    return found[-1] if found else None


def read_pairs(path: str) -> list[dict]:
    """A .jsonl file of pairs as prompt/chosen/rejected; a line that is not JSON stops the run, named; a pair with no
    text, or the same text twice, is counted and left out."""
    file = Path(path)
    if not file.is_file():
        fail(f"{path}: no such file")
    pairs, n = [], 0
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"{path} line {number}: not JSON ({e.msg}, column {e.colno})")
        if not isinstance(r, dict) or "chosen" not in r or "rejected" not in r:
            fail(f"{path} line {number}: a pair needs the fields 'chosen' and 'rejected'")
        n += 1
        instruction = r.get("instruction") or last_text(r["chosen"], "user")
        prompt = r.get("prompt") or (PROMPT.format(instruction=instruction) if instruction else None)
        chosen, rejected = last_text(r["chosen"], "assistant"), last_text(r["rejected"], "assistant")
        if prompt and chosen and rejected and chosen.strip() != rejected.strip():
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    print(f"{len(pairs)} usable pairs of {n} (skipped: no text, or chosen == rejected)")
    if not pairs:
        fail(f"{path}: no usable pair" + (" (the file is empty)" if not n else ""))
    return pairs


def main() -> None:
    """Parse the command line, train, save, merge and ask."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="a run's config.yaml with notebook 07's dpo sections")
    p.add_argument("--pairs", help="your own .jsonl file of pairs instead of the config's")
    p.add_argument("--output-dir", help="instead of the config's dpo.output_dir")
    p.add_argument("--max-steps", type=int, help="instead of the config's dpo.max_steps")
    p.add_argument("--beta", type=float, help="instead of the config's dpo.beta; larger: stay closer to the SFT model")
    p.add_argument(
        "--sft-weight", type=float, help="weight of the next-token loss on the chosen answers (0: plain DPO)"
    )
    p.add_argument("--ask", nargs="*", default=QUESTIONS, help="questions to ask the merged model")
    args = p.parse_args()
    try:
        config = yaml.safe_load(Path(args.config).read_text())
    except (OSError, yaml.YAMLError) as e:
        fail(f"{args.config}: cannot read it as YAML ({str(e).splitlines()[0]})")
    missing = [s for s in SECTIONS if not isinstance(config, dict) or s not in config]
    if missing:
        fail(f"{args.config}: no {', '.join(missing)} section (notebook 07 adds the dpo ones)")
    dpo = config["dpo"]
    dpo.update({k: v for k, v in (("output_dir", args.output_dir), ("max_steps", args.max_steps)) if v})
    dpo.update({"beta": args.beta} if args.beta is not None else {})
    if args.sft_weight is not None:  # DPO's sigmoid loss plus the SFT term, weighted
        dpo["loss_weights"] = [
            w if kind != "sft" else args.sft_weight for kind, w in zip(dpo["loss_type"], dpo["loss_weights"])
        ]
    out = Path(dpo["output_dir"])

    train = Dataset.from_list(read_pairs(args.pairs or config["dpo_data"]["train_file"]))
    model_path = config["dpo_model"]["pretrained_model_name_or_path"]
    tok = AutoTokenizer.from_pretrained(model_path)  # the SFT model's tokenizer, with its own pad token and template
    dpo_args = DPOConfig(**dpo)
    quant = BitsAndBytesConfig(**config["bnb"]) if config["method"] == "qlora" else None  # as SFT trained
    model = AutoModelForCausalLM.from_pretrained(**config["dpo_model"], quantization_config=quant)
    # No ref_model: with a LoRA adapter, TRL uses the same model with the adapter disabled as the reference.
    lora = LoraConfig(**config["dpo_lora"])
    trainer = DPOTrainer(model=model, args=dpo_args, train_dataset=train, processing_class=tok, peft_config=lora)
    if dpo_args.fp16:  # fp16's loss scaler needs fp32 trainable weights; TRL makes a 4-bit model's adapters bf16
        for param in (q for q in trainer.model.parameters() if q.requires_grad):
            param.data = param.data.float()
    trainer.train()
    logged = [e for e in trainer.state.log_history if "rewards/margins" in e]
    print(
        f"trained {dpo_args.max_steps} steps; reward margin {logged[-1]['rewards/margins']:.2f}, "
        f"accuracy {logged[-1]['rewards/accuracies']:.2f}"
    )

    # Save the adapter whole, then merge it into the SFT model reloaded unquantized in the merge dtype.
    for folder in ("adapter", "adapter.partial", "merged", "merged.partial"):
        shutil.rmtree(out / folder, ignore_errors=True)
    trainer.save_model(str(out / "adapter.partial"))
    (out / "adapter.partial").rename(out / "adapter")
    del model, trainer
    gc.collect()  # TRL's rebound forward keeps the trained model alive until collected
    sft = AutoModelForCausalLM.from_pretrained(model_path, dtype=config["merge"]["dtype"])
    merged = PeftModel.from_pretrained(sft, str(out / "adapter")).merge_and_unload()
    merged.save_pretrained(str(out / "merged.partial"))  # safetensors; the SFT model's generation config (EOS, greedy)
    tok.save_pretrained(str(out / "merged.partial"))  # with the SFT model's chat template
    (out / "merged.partial").rename(out / "merged")

    merged = merged.to("cpu" if config["dpo"]["use_cpu"] else "cuda").eval()
    for question in args.ask:
        inputs = tok(PROMPT.format(instruction=question), return_tensors="pt").to(merged.device)
        new = merged.generate(**inputs, max_new_tokens=48, do_sample=False)[0, inputs["input_ids"].shape[1] :]
        stopped = new[-1].item() == tok.eos_token_id
        print(
            f"{question!r} -> {tok.decode(new, skip_special_tokens=True)!r} ({len(new)} new tokens, stopped: {stopped})"
        )


if __name__ == "__main__":
    main()
