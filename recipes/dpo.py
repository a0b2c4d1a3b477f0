"""Preference-tune an SFT model with TRL's DPOTrainer (a LoRA adapter; the adapter switched off is the reference), merge
it, and ask it questions.

Usage: python recipes/dpo.py --model SFT_MODEL --pairs pairs.jsonl --output-dir out [--max-steps N] [--beta B]

SFT_MODEL: the merged folder recipes/sft.py (or notebook 02) wrote. --pairs: a .jsonl file of {"instruction", "chosen",
"rejected"} records (notebook 07 writes one: dpo/pairs.jsonl), or a hub dataset id in trl-lib/ultrafeedback_binarized's
schema. Writes OUT/adapter and OUT/merged (with the Alpaca chat template), which `python recipes/serve.py OUT/merged`
serves as is.
"""

import argparse
import time
from pathlib import Path

import torch
from datasets import load_dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from trl import DPOConfig, DPOTrainer

# The lab's Alpaca prompt (lab_utils/data/alpaca.py), character for character: the SFT model was trained on it.
PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
QUESTIONS = ["First, tell me the capital of France", "Can you tell me the capital of Zanorvia?"]

cuda = torch.cuda.is_available()
p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--model", required=True, help="the SFT model: a local folder or hub id")
p.add_argument("--pairs", required=True, help="a .jsonl file of instruction/chosen/rejected records, or a hub id")
p.add_argument("--output-dir", required=True)
p.add_argument("--max-steps", type=int, default=200)
p.add_argument("--learning-rate", type=float, default=1e-3)
p.add_argument("--beta", type=float, default=0.1, help="larger: stay closer to the SFT model")
p.add_argument("--sft-weight", type=float, default=1.0, help="weight of the next-token loss on the chosen answers")
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--grad-accum", type=int, default=1)
p.add_argument("--max-length", type=int, default=128)
p.add_argument("--lora-r", type=int, default=16)
p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=cuda, help="default: on with CUDA")
p.add_argument("--ask", nargs="*", default=QUESTIONS, help="questions to ask the merged model")
p.add_argument("--seed", type=int, default=42)
args = p.parse_args()
out = Path(args.output_dir)


def last_text(turns, role):  # ultrafeedback's chosen/rejected are message lists; a local file holds strings
    if isinstance(turns, str):
        return turns
    found = [t["content"] for t in turns or [] if t.get("role") == role]
    return found[-1] if found else None


def to_pair(r):
    instruction = r.get("instruction") or r.get("prompt") or last_text(r["chosen"], "user")
    chosen, rejected = last_text(r["chosen"], "assistant"), last_text(r["rejected"], "assistant")
    ok = bool(instruction and chosen and rejected and chosen.strip() != rejected.strip())
    return {
        "prompt": PROMPT.format(instruction=instruction or ""),
        "chosen": chosen or "",
        "rejected": rejected or "",
        "ok": ok,
    }


is_file = args.pairs.endswith((".json", ".jsonl"))
data = (
    load_dataset("json", data_files=args.pairs, split="train") if is_file else load_dataset(args.pairs, split="train")
)
data = data.map(to_pair, remove_columns=data.column_names)
print(f"{sum(data['ok'])} usable pairs of {len(data)} (skipped: no text, or chosen == rejected)")
data = data.filter(lambda r: r["ok"]).remove_columns("ok")

tok = AutoTokenizer.from_pretrained(args.model)  # the SFT model's tokenizer, with its own pad token
dtype = torch.bfloat16 if args.bf16 else torch.float32
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # every linear projection
lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=targets, task_type="CAUSAL_LM")
config = DPOConfig(
    output_dir=str(out),
    beta=args.beta,
    loss_type=["sigmoid", "sft"],  # DPO's loss plus the next-token loss on the chosen answer
    loss_weights=[1.0, args.sft_weight],
    max_steps=args.max_steps,
    learning_rate=args.learning_rate,
    lr_scheduler_type="cosine",
    warmup_steps=max(1, args.max_steps // 20),
    per_device_train_batch_size=args.batch_size,
    gradient_accumulation_steps=args.grad_accum,
    max_length=args.max_length,
    precompute_ref_log_probs=True,  # the reference never changes: its log-probs once per pair, not in every step
    bf16=args.bf16,
    gradient_checkpointing=False,
    logging_steps=10,
    save_strategy="no",
    report_to="none",
    use_cpu=not cuda,
    seed=args.seed,
)
# No ref_model: with a LoRA adapter, TRL uses the same model with the adapter disabled as the reference.
trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tok, peft_config=lora)
start = time.time()
trainer.train()
logged = [e for e in trainer.state.log_history if "rewards/margins" in e]
print(
    f"trained {args.max_steps} steps in {time.time() - start:.0f} s; reward margin {logged[-1]['rewards/margins']:.2f}, "
    f"accuracy {logged[-1]['rewards/accuracies']:.2f}"
)

# Merge into the SFT model reloaded in the training dtype (never into a 4-bit model).
trainer.save_model(str(out / "adapter"))
del model, trainer
sft = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
merged = PeftModel.from_pretrained(sft, str(out / "adapter")).merge_and_unload()
merged.generation_config = GenerationConfig(
    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False
)
merged.save_pretrained(str(out / "merged"))  # safetensors
tok.save_pretrained(str(out / "merged"))  # with the SFT model's chat template, when it has one

merged = merged.to("cuda" if cuda else "cpu").eval()
for question in args.ask:
    inputs = tok(PROMPT.format(instruction=question), return_tensors="pt")  # special tokens as DPOTrainer added them
    new = merged.generate(**inputs.to(merged.device), max_new_tokens=48, do_sample=False)[
        0, inputs["input_ids"].shape[1] :
    ]
    stopped = new[-1].item() == tok.eos_token_id
    print(f"{question!r} -> {tok.decode(new, skip_special_tokens=True)!r} ({len(new)} new tokens, stopped: {stopped})")
