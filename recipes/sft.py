"""Fine-tune a causal LM on Alpaca data with TRL's SFTTrainer (LoRA, QLoRA or full), merge it, ask it one question.

Usage: python recipes/sft.py --model MODEL --data my.jsonl --output-dir out [--method lora|qlora|full] [--max-steps N]

MODEL: a local folder or hub id; --data: a .json/.jsonl file of {"instruction", "input", "output"} records or a hub
dataset id. Writes OUT/adapter (LoRA/QLoRA) and OUT/merged, a model folder (safetensors, with the Alpaca chat template)
that transformers, vLLM or `python recipes/serve.py OUT/merged` load as is.
"""

import argparse
import time
from pathlib import Path

import torch
from datasets import load_dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GenerationConfig
from trl import SFTConfig, SFTTrainer

# The lab's Alpaca prompt (lab_utils/data/alpaca.py), character for character: a model answers best in the
# format it was trained on, so it is served with CHAT_TEMPLATE, which renders chat messages to the same text, BOS first.
PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(instruction='', system=\"Below is an instruction that describes a task. "
    'Write a response that appropriately completes the request.") %}{% for message in messages %}'
    "{% if message['role'] == 'user' %}{% set ns.instruction = message['content'] %}"
    "{% elif message['role'] == 'system' %}{% set ns.system = message['content'] %}{% endif %}{% endfor %}"
    '{{ ns.system }}{{ "\\n\\n### Instruction:\\n" }}{{ ns.instruction }}{{ "\\n\\n### Response:\\n" }}'
)
QUESTION = "First, tell me the capital of France"

cuda = torch.cuda.is_available()
p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--method", choices=["lora", "qlora", "full"], default="lora")
p.add_argument("--model", required=True, help="local folder or hub id of a causal LM")
p.add_argument("--data", required=True, help="a .json/.jsonl file of Alpaca records, or a hub dataset id")
p.add_argument("--output-dir", required=True)
p.add_argument("--max-steps", type=int, default=300)
p.add_argument("--learning-rate", type=float, default=2e-4)
p.add_argument("--warmup-ratio", type=float, default=0.03)
p.add_argument("--batch-size", type=int, default=4)
p.add_argument("--grad-accum", type=int, default=4)
p.add_argument("--max-length", type=int, default=512, help="longer examples are dropped, not truncated")
p.add_argument("--lora-r", type=int, default=16)
p.add_argument("--lora-alpha", type=int, default=32)
p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=cuda, help="default: on with CUDA")
p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=cuda)
p.add_argument("--seed", type=int, default=42)
p.add_argument("--eval-fraction", type=float, default=0.05)
args = p.parse_args()
out = Path(args.output_dir)

tok = AutoTokenizer.from_pretrained(args.model)
if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
    # pad == eos lets a collator mask EOS out of the labels: the model never learns to stop (trl#1623).
    reserved = "<|reserved_special_token_0|>"  # Llama 3 ships unused special tokens
    tok.pad_token = reserved if reserved in tok.get_vocab() else tok.unk_token or tok.eos_token

is_file = args.data.endswith((".json", ".jsonl"))
data = load_dataset("json", data_files=args.data, split="train") if is_file else load_dataset(args.data, split="train")


def to_prompt_completion(r):  # TRL appends EOS to the completion and supervises only the completion
    prompt = PROMPT_WITH_INPUT if (r.get("input") or "").strip() else PROMPT
    return {"prompt": prompt.format(**r), "completion": r["output"]}


data = data.filter(lambda r: bool(r["instruction"] and (r["output"] or "").strip()))  # no empty answers
data = data.map(to_prompt_completion, remove_columns=data.column_names)
# Drop (don't truncate) examples over --max-length tokens: truncation would cut off the answer's EOS.
data = data.filter(lambda r: len(tok(r["prompt"] + r["completion"])["input_ids"]) + 1 <= args.max_length)
split = data.train_test_split(test_size=args.eval_fraction, seed=args.seed) if args.eval_fraction else None

# Full fine-tuning keeps fp32 master weights (bf16 only in autocast); LoRA/QLoRA freeze the base, so 16-bit is enough.
dtype = torch.bfloat16 if args.bf16 and args.method != "full" else torch.float32
nf4 = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
quant = BitsAndBytesConfig(**nf4) if args.method == "qlora" else None  # QLoRA: a 4-bit base, double-quantized scales
placement = {"device_map": {"": 0}} if quant and cuda else {}  # bitsandbytes places a 4-bit model itself
model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, quantization_config=quant, **placement)
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # every linear projection
lora = dict(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM")
config = SFTConfig(
    output_dir=str(out),
    max_steps=args.max_steps,
    learning_rate=args.learning_rate,
    lr_scheduler_type="cosine",
    warmup_steps=max(1, round(args.warmup_ratio * args.max_steps)),
    per_device_train_batch_size=args.batch_size,
    gradient_accumulation_steps=args.grad_accum,
    max_length=args.max_length,
    bf16=args.bf16,  # TRL's default is True, even on a CPU without bf16 (emulated there: ~20x slower)
    gradient_checkpointing=args.gradient_checkpointing,  # TRL's default is True: saves memory, costs ~30% time
    optim="paged_adamw_8bit" if args.method == "qlora" else "adamw_torch",
    completion_only_loss=True,  # loss on the answer only, not on the prompt
    eval_strategy="steps" if split else "no",
    eval_steps=max(1, args.max_steps // 4),
    save_strategy="no",  # the adapter is saved once, below ("steps" writes OUT/checkpoint-N for long runs)
    report_to="none",
    use_cpu=not cuda,
    seed=args.seed,
)
train, evals = (split["train"], split["test"]) if split else (data, None)
adapter = None if args.method == "full" else LoraConfig(**lora)  # full: every weight trains
trainer = SFTTrainer(model, config, train_dataset=train, eval_dataset=evals, processing_class=tok, peft_config=adapter)
labels = trainer.data_collator([trainer.train_dataset[0]])["labels"][0]
assert labels[labels != -100][-1] == tok.eos_token_id, "EOS is not supervised: the model would never learn to stop"
start = time.time()
trainer.train()
print(f"trained {args.max_steps} steps in {time.time() - start:.0f} s")

# Merge: reload the base unquantized (bf16 on a GPU, fp32 when training ran in fp32), add the adapter, fold it in.
merge_dtype = torch.bfloat16 if args.bf16 else torch.float32
if args.method == "full":
    merged = trainer.model.to(merge_dtype)
else:
    trainer.save_model(str(out / "adapter"))
    del model, trainer
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=merge_dtype)
    merged = PeftModel.from_pretrained(base, str(out / "adapter")).merge_and_unload()
if hasattr(merged.config, "quantization_config"):
    del merged.config.quantization_config  # a merged model claiming quantization confuses vLLM (vllm#19050)
merged.generation_config = GenerationConfig(
    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False
)
tok.chat_template = CHAT_TEMPLATE
merged.save_pretrained(str(out / "merged"))  # safetensors
tok.save_pretrained(str(out / "merged"))
(out / "merged" / "chat_template.jinja").write_text(CHAT_TEMPLATE)

# One greedy answer, prompted through the chat template exactly as a server will.
merged = merged.to("cuda" if cuda else "cpu").eval()
text = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
inputs = tok(text, add_special_tokens=False, return_tensors="pt").to(merged.device)  # the template writes BOS itself
new = merged.generate(**inputs, max_new_tokens=64, do_sample=False)[0, inputs["input_ids"].shape[1] :]
answer = tok.decode(new, skip_special_tokens=True)
print(f"{QUESTION!r} -> {answer!r} ({len(new)} new tokens, stopped at EOS: {new[-1].item() == tok.eos_token_id})")
