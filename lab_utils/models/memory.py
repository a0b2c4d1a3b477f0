"""How much memory fine-tuning a Llama takes: a simple, explainable estimate.

Memory during training is four things. All sizes are decimal (1 MB = 1e6 bytes, 1 GB = 1e9 bytes).

1. Weights (bytes per parameter of the base model):
   - full fine-tuning: 4 B/param. In fp32 the weights are fp32. "bf16"/"fp16" for full fine-tuning means mixed
     precision as the HF Trainer does it: fp32 master weights (4 B/param) plus the half-precision copy of each matmul
     weight (the linear layers and the LM head, 2 B each) that autocast makes in the forward pass. It is not transient:
     autograd keeps each copy for the backward pass (with gradient checkpointing, autocast's cache keeps them all until
     the forward pass ends). So mixed precision costs about 6 B/param of weights, as the transformers docs count it
     ("GPU memory usage"), and saves only activation memory.
   - LoRA: the frozen base is stored in the given precision (4 B fp32, 2 B bf16/fp16) plus the trainable LoRA
     parameters in fp32 (4 B each).
   - QLoRA: the linear layers (q, k, v, o, gate, up, down) are 4-bit NF4 = 0.5 B/param, plus about 0.127 bits/param of
     quantization constants with double quantization (an 8-bit scale per 64 weights, and an fp32 scale per 256 of
     those). Embeddings, norms and lm_head stay in the given precision (2 B in bf16). Plus LoRA parameters in fp32.
2. Gradients: 4 B per trainable parameter (all of them for full fine-tuning, only the adapters for (Q)LoRA).
3. Optimizer state per trainable parameter: AdamW keeps two fp32 moments = 8 B; 8-bit AdamW (adamw_8bit,
   paged_adamw_8bit) keeps them in 8 bits = 2 B; SGD (no momentum) = 0 B.
   So full fine-tuning with AdamW costs 4 + 4 + 8 = 16 B/param before activations in fp32 (128 GB for an 8B model),
   and about 18 in mixed precision (144 GB).
4. Activations, saved in the forward pass for the backward pass, in the precision's value size (4 B fp32, 2 B
   bf16/fp16), per token and per decoder layer:
   - about 10*hidden + 3*intermediate values (the layer input, the two norm outputs, q, k, v, the attention output,
     the MLP input, gate, up and their product), plus
   - n_heads*seq_len attention probabilities (eager attention materializes the seq x seq matrix per head; fused
     SDPA/FlashAttention kernels do not, pass attention="sdpa" to leave them out).
   Times micro_batch*seq_len tokens. With gradient checkpointing only each layer's input (hidden values per token) is
   kept, plus one layer's full activations while it is recomputed in the backward pass.
   Plus the LM head's loss buffers: TRL 1.16 never materializes the (tokens, vocab) logits; its fused LM head
   (`fused_lm_head=True`, trl/kernels/chunked_logprob.py) scores tiles of at most 4,096 tokens x 32,768 vocabulary
   entries, counted in fp32 twice (the forward tile and the backward one). (Q)LoRA still needs the activations of the
   frozen base to backpropagate into the adapters, so the
   same formula applies, plus the dropped-out copy of each adapted projection's input that PEFT keeps (6*hidden +
   intermediate values per token and layer); the adapters' own small r-sized activations are left out.

It leaves out the CUDA context (~0.5-1 GB), allocator fragmentation and temporary buffers: measured peaks are higher.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lab_utils.core.profiles import PROFILES, ModelDims

MB = 1e6
GB = 1e9
NF4_BYTES = 0.5  # 4 bits per weight
NF4_CONSTANT_BITS = 8 / 64 + 32 / (64 * 256)  # double quantization: ~0.127 bits/param
VALUE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPTIMIZER_BYTES = {"adamw": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2, "sgd": 0}
METHODS = ("full", "lora", "qlora")
LORA_TARGET_SETS = {
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


# The estimator's shape of a model (`ModelDims`) and each profile's model facts live on the profiles (`run.profiles`).
MODEL_DIMS: dict[str, ModelDims] = {p.model.name: p.model.dims for p in PROFILES.values() if p.model and p.model.dims}


def dims_for_model(model_id: str) -> ModelDims | None:
    """The dimensions of a hub model one of the profiles names, or None."""
    return next((p.model.dims for p in PROFILES.values() if p.base_model == model_id and p.model), None)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated training memory, in MB, by what it is for."""

    weights_mb: float
    gradients_mb: float
    optimizer_mb: float
    activations_mb: float

    @property
    def total_mb(self) -> float:
        """Sum of the four parts."""
        return self.weights_mb + self.gradients_mb + self.optimizer_mb + self.activations_mb

    def to_dict(self) -> dict[str, float]:
        """The four parts and the total, in MB."""
        return {**asdict(self), "total_mb": self.total_mb}


def lora_params(dims: ModelDims, r: int, targets: str = "all-linear") -> int:
    """Trainable LoRA parameters: r*(in+out) per targeted projection per layer.

    targets: "all-linear", "attention", "mlp" or comma-separated module names such as "q_proj,v_proj".
    """
    names = LORA_TARGET_SETS.get(targets) or tuple(t.strip() for t in targets.split(","))
    shapes = dims.projection_shapes()
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}; choose from {list(shapes)} or {list(LORA_TARGET_SETS)}")
    return dims.n_layers * sum(r * (shapes[n][0] + shapes[n][1]) for n in names)


def trainable_params(dims: ModelDims, method: str, lora_r: int = 16) -> int:
    """Parameters that get gradients: all for full fine-tuning, the adapters for (Q)LoRA."""
    return dims.n_params() if method == "full" else lora_params(dims, lora_r)


def matmul_params(dims: ModelDims) -> int:
    """Parameters autocast casts to 16 bits for the matmuls: the linear layers and the LM head (embedding lookups and
    norms stay in fp32)."""
    return dims.linear_params() + dims.vocab * dims.hidden


def autocast_copy_bytes(dims: ModelDims, precision: str) -> float:
    """Bytes of the half-precision weight copies mixed-precision full fine-tuning keeps for the backward pass (rule 1);
    0 in fp32."""
    return 0.0 if precision == "fp32" else float(VALUE_BYTES[precision] * matmul_params(dims))


def weight_bytes(dims: ModelDims, method: str, precision: str, lora_r: int = 16) -> float:
    """Bytes of model weights (see rule 1 in the module docstring)."""
    if method == "full":
        return 4.0 * dims.n_params() + autocast_copy_bytes(dims, precision)
    adapters = 4.0 * lora_params(dims, lora_r)
    if method == "lora":
        return VALUE_BYTES[precision] * dims.n_params() + adapters
    quantized = (NF4_BYTES + NF4_CONSTANT_BITS / 8) * dims.linear_params()
    unquantized = VALUE_BYTES[precision] * (dims.n_params() - dims.linear_params())
    return quantized + unquantized + adapters


def gradient_bytes(trainable: int) -> float:
    """Bytes of fp32 gradients for the trainable parameters."""
    return 4.0 * trainable


def optimizer_bytes(trainable: int, optimizer: str) -> float:
    """Bytes of optimizer state for the trainable parameters."""
    return float(OPTIMIZER_BYTES[optimizer] * trainable)


def layer_activation_values(dims: ModelDims, seq_len: int, attention: str = "eager", lora: bool = False) -> int:
    """Values one decoder layer saves per token: ~10*hidden + 3*intermediate (+ n_heads*seq_len attention probs,
    + the dropped-out inputs LoRA saves for each adapted projection)."""
    values = 10 * dims.hidden + 3 * dims.intermediate
    if lora:
        # PEFT applies the adapter's dropout to the input of each of the 7 projections separately and keeps the
        # result for the backward pass: q, k, v, o, gate, up read hidden-sized inputs, down an intermediate-sized one.
        values += 6 * dims.hidden + dims.intermediate
    return values + (dims.n_heads * seq_len if attention == "eager" else 0)


LOSS_TILE_TOKENS, LOSS_TILE_VOCAB = 4096, 32768  # TRL 1.16's TOKEN_CHUNK_SIZE and _CHUNKED_LOGPROB_CHUNK_SIZE


def logits_bytes(dims: ModelDims, micro_batch: int, seq_len: int) -> float:
    """The loss's logit tiles: TRL's fused LM head computes log-probs tile by tile, never the full (tokens, vocab)
    logits (issue 19, W2: counting those in fp32 put 4.2 GB into llama3-8b's 24 GB); two fp32 tiles of at most
    4,096 tokens x 32,768 entries. A small vocabulary (the pocket model's) fits one tile: the full logits, as before."""
    tokens = min(micro_batch * seq_len, LOSS_TILE_TOKENS)
    return 2.0 * tokens * min(dims.vocab, LOSS_TILE_VOCAB) * 4


def activation_bytes(
    dims: ModelDims,
    precision: str,
    micro_batch: int,
    seq_len: int,
    gradient_checkpointing: bool,
    attention: str = "eager",
    lora: bool = False,
) -> float:
    """Bytes of saved activations across all layers, plus the logits (see rule 4 in the module docstring)."""
    tokens = micro_batch * seq_len
    one_layer = layer_activation_values(dims, seq_len, attention, lora) * tokens * VALUE_BYTES[precision]
    if gradient_checkpointing:
        layers = dims.n_layers * dims.hidden * tokens * VALUE_BYTES[precision] + one_layer
    else:
        layers = dims.n_layers * one_layer
    return layers + logits_bytes(dims, micro_batch, seq_len)


def _check(method: str, precision: str, optimizer: str, attention: str) -> None:
    """Raise ValueError on an unknown method, precision, optimizer or attention kind."""
    for value, allowed in (
        (method, METHODS),
        (precision, tuple(VALUE_BYTES)),
        (optimizer, tuple(OPTIMIZER_BYTES)),
        (attention, ("eager", "sdpa")),
    ):
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {allowed}")


def estimate_training_memory(
    dims: ModelDims,
    method: str = "full",
    precision: str = "fp32",
    optimizer: str = "adamw",
    micro_batch: int = 1,
    seq_len: int = 512,
    gradient_checkpointing: bool = False,
    lora_r: int = 16,
    attention: str = "eager",
) -> MemoryEstimate:
    """Estimate peak training memory for one configuration (rules in the module docstring)."""
    _check(method, precision, optimizer, attention)
    trainable = trainable_params(dims, method, lora_r)
    return MemoryEstimate(
        weights_mb=weight_bytes(dims, method, precision, lora_r) / MB,
        gradients_mb=gradient_bytes(trainable) / MB,
        optimizer_mb=optimizer_bytes(trainable, optimizer) / MB,
        activations_mb=activation_bytes(
            dims, precision, micro_batch, seq_len, gradient_checkpointing, attention, lora=method != "full"
        )
        / MB,
    )


# transformers' `optim` names -> the estimator's optimizer names.
OPTIM_NAMES = {
    "adamw_torch": "adamw",
    "adamw_torch_fused": "adamw",  # the same state; updated in place, with no temporary copies
    "adamw_bnb_8bit": "adamw_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "sgd": "sgd",
}


def estimate_for_settings(dims: ModelDims, settings: Any, attention: str = "sdpa") -> MemoryEstimate:
    """The estimate for the lab's own `TrainSettings` (method, precision, optimizer, micro-batch, length, checkpointing,
    LoRA rank): the same object notebook 02 and the memory sweep train with."""
    optim = settings.optim
    if settings.method == "qlora" and optim == "adamw_torch":
        optim = "paged_adamw_8bit"  # as train.sft_kwargs does for QLoRA
    if optim not in OPTIM_NAMES:
        raise ValueError(f"the estimator knows the optimizers {sorted(OPTIM_NAMES)}, not {optim!r}")
    return estimate_training_memory(
        dims,
        settings.method,
        "bf16" if settings.bf16 else "fp32",
        OPTIM_NAMES[optim],
        settings.per_device_batch_size,
        settings.max_seq_length,
        settings.gradient_checkpointing,
        settings.lora_r,
        attention=attention,
    )


REFERENCE_SETUPS: tuple[tuple[str, str, str, str], ...] = (
    ("full (bf16 mixed, fp32 master + AdamW)", "full", "bf16", "adamw"),
    ("LoRA r=16 (bf16 base, AdamW)", "lora", "bf16", "adamw"),
    ("QLoRA r=16 (NF4 base, paged 8-bit AdamW)", "qlora", "bf16", "paged_adamw_8bit"),
)


def _reference_row(model: str, label: str, method: str, precision: str, optimizer: str) -> dict[str, Any]:
    """One row of the reference table, in GB, at seq 1024, batch 1, with gradient checkpointing."""
    dims = MODEL_DIMS[model]
    est = estimate_training_memory(dims, method, precision, optimizer, 1, 1024, True)
    states_mb = est.weights_mb + est.gradients_mb + est.optimizer_mb
    return {
        "model": model,
        "setup": label,
        "params_b": round(dims.n_params() / 1e9, 2),
        "trainable_m": round(trainable_params(dims, method) / 1e6, 1),
        "weights_gb": round(est.weights_mb * MB / GB, 1),
        "gradients_gb": round(est.gradients_mb * MB / GB, 1),
        "optimizer_gb": round(est.optimizer_mb * MB / GB, 1),
        "activations_gb": round(est.activations_mb * MB / GB, 1),
        "total_gb": round(est.total_mb * MB / GB, 1),
        "bytes_per_param": round(states_mb * MB / dims.n_params(), 2),
    }


def reference_table() -> list[dict[str, Any]]:
    """Llama-3-8B/70B x (full, LoRA, QLoRA), seq 1024, batch 1, checkpointing; bytes/param leaves out activations."""
    return [_reference_row(model, *setup) for model in ("llama3-8b", "llama3-70b") for setup in REFERENCE_SETUPS]


CUDA_OVERHEAD_GB = 1.0  # CUDA context, cuBLAS workspaces and allocator slack on top of the tensors


def estimate_for_preference(dims: ModelDims, train: Any, pref: Any, attention: str = "sdpa") -> MemoryEstimate:
    """DPO in notebook 07: a LoRA adapter on the merged SFT model (in 4-bit NF4 where the profile trains QLoRA), so
    weights, gradients and optimizer state are LoRA's; each step runs the chosen and the rejected answers together
    (twice the micro-batch) at `max_length`. The reference is the same model with the adapter switched off: no second
    copy of the weights, and its forward pass runs without gradients, so it saves no activations. A full-model DPO
    would hold a second full copy as the reference (2 B/param more in bf16)."""
    return estimate_training_memory(
        dims,
        "qlora" if train.method == "qlora" else "lora",
        "bf16" if train.bf16 else "fp32",
        "paged_adamw_8bit" if train.method == "qlora" else OPTIM_NAMES.get(train.optim, "adamw"),
        2 * pref.per_device_batch_size,
        pref.max_length,
        train.gradient_checkpointing,
        pref.lora_r,
        attention=attention,
    )


def profile_peak_gb(profile: Any) -> dict[str, float]:
    """A GPU profile's estimated peak device memory per phase, in GB: training (the estimator, with the profile's
    settings) and serving (vLLM's weights: FP8 where the profile quantizes, else 16-bit, plus 10% for activations and
    the CUDA graphs, inside the `gpu_memory_utilization` share vLLM may use). The transformers-side evaluation holds one
    16-bit model at a time (02 frees each before the next), and the throughput benchmark runs in its own process."""
    dims = dims_for_model(profile.base_model)
    if dims is None:
        raise KeyError(f"no dimensions known for {profile.base_model!r}: give its profile a `model` (core/profiles.py)")
    train = estimate_for_settings(dims, profile.train).total_mb / 1000
    serve_bytes = 1.0 if profile.serve.quantization == "auto" else 2.0
    # vLLM may use only gpu_memory_utilization of the device, and the weights must fit inside that share.
    serve = 1.1 * serve_bytes * dims.n_params() / GB / profile.serve.gpu_memory_utilization
    eval_bytes = NF4_BYTES + NF4_CONSTANT_BITS / 8 if profile.evaluates_in_4bit else 2.0
    evaluate = eval_bytes * dims.linear_params() / GB + 2.0 * (dims.n_params() - dims.linear_params()) / GB
    evaluate = evaluate if profile.merge_for_serving else 0.0
    preference = estimate_for_preference(dims, profile.train, profile.preference).total_mb / 1000
    return {
        "training": round(train + CUDA_OVERHEAD_GB, 1),
        "preference_tuning": round(preference + CUDA_OVERHEAD_GB, 1) if profile.tunes_preferences else 0.0,
        "serving": round(serve + CUDA_OVERHEAD_GB, 1),
        "transformers_eval": round(evaluate + CUDA_OVERHEAD_GB, 1) if evaluate else 0.0,
    }


def kv_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, value_bytes: float = 2.0) -> float:
    """Keys and values of one token across all layers: 2 x layers x KV heads x head_dim x bytes (bf16: 2; FP8 KV: 1)."""
    return 2 * n_layers * n_kv_heads * head_dim * value_bytes


def kv_cache_bytes_per_token(dims: ModelDims, value_bytes: float = 2.0) -> float:
    """`kv_bytes_per_token` of a model's `ModelDims`."""
    return kv_bytes_per_token(dims.n_layers, dims.n_kv_heads, dims.head_dim, value_bytes)


def served_weight_bytes(dims: ModelDims, weights: str) -> float:
    """Bytes of the weights vLLM serves: bf16 everywhere, or FP8 in the linear layers only (vLLM's FP8 quantizes the
    Linear layers; the embeddings, the LM head and the norms stay 16-bit)."""
    if weights == "bf16":
        return 2.0 * dims.n_params()
    return 1.0 * dims.linear_params() + 2.0 * (dims.n_params() - dims.linear_params())


def kv_cache_table(
    model: str = "llama3-8b",
    gpu_gb: tuple[float, ...] = (24.0, 80.0),
    utilization: float = 0.8,
    max_model_len: int = 4096,
) -> list[dict[str, Any]]:
    """What vLLM's KV cache can hold on a GPU: its share (`--gpu-memory-utilization`) minus the weights (bf16, or FP8
    linear layers beside 16-bit embeddings and LM head),
    divided by the bytes one token's keys and values take (bf16 or FP8 KV cache). Leaves out activations and the CUDA
    graphs' memory, so real figures are somewhat lower."""
    dims = MODEL_DIMS[model]
    rows = []
    for gb in gpu_gb:
        for weights in ("bf16", "fp8"):
            for kv, kv_bytes in (("bf16", 2.0), ("fp8", 1.0)):
                free = gb * GB * utilization - served_weight_bytes(dims, weights)
                per_token = kv_cache_bytes_per_token(dims, kv_bytes)
                tokens = max(0, int(free // per_token))
                rows.append(
                    {
                        "GPU (GB)": gb,
                        "weights": weights,
                        "KV cache": kv,
                        "KV per token (KB)": round(per_token / 1e3, 1),
                        "KV cache (GB)": round(max(free, 0) / GB, 1),
                        "tokens it holds": tokens,
                        f"sequences of {max_model_len}": tokens // max_model_len,
                    }
                )
    return rows
