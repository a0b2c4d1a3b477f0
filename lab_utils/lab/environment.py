"""What the setup notebook shows: versions, profiles and the memory calculator."""

from __future__ import annotations

from typing import Any

from lab_utils.core.profiles import PROFILES
from lab_utils.core.results import versions
from lab_utils.course.quiz import is_interactive
from lab_utils.models.memory import METHODS, MODEL_DIMS, ModelDims, estimate_training_memory, lora_params
from lab_utils.models.pocketbuild import PocketConfig

__all__ = ["memory_calculator", "memory_table", "model_dims", "profiles_table", "versions_table"]

CALCULATOR_SETUPS = {
    "full": ("full", "adamw"),
    "lora": ("lora", "adamw"),
    "qlora": ("qlora", "paged_adamw_8bit"),
}


def versions_table() -> Any:
    """Installed versions of the lab's stack as a DataFrame."""
    import pandas as pd

    return pd.DataFrame(sorted(versions().items()), columns=["package", "version"]).set_index("package")


def profiles_table() -> Any:
    """Every profile with its model, data, method and what it needs."""
    import pandas as pd

    rows = [
        {
            "profile": p.name,
            "base model": p.base_model,
            "data": p.dataset,
            "method": p.train.method,
            "needs GPU": p.needs_gpu,
            "min memory (GB)": p.min_memory_gb,
            "gated": p.gated,
            "about": p.description,
        }
        for p in PROFILES.values()
    ]
    return pd.DataFrame(rows).set_index("profile")


def model_dims(name: str) -> ModelDims:
    """Dimensions of a named model (llama3-8b, llama3-70b, smollm2-135m, pocket)."""
    if name == "pocket":
        c = PocketConfig()
        return ModelDims(c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_heads, c.vocab_size, True)
    if name not in MODEL_DIMS:
        raise KeyError(f"unknown model {name!r}; choose one of: pocket, {', '.join(MODEL_DIMS)}")
    return MODEL_DIMS[name]


def memory_table(
    model: str,
    precision: str = "bf16",
    micro_batch: int = 1,
    seq_len: int = 1024,
    gradient_checkpointing: bool = True,
    lora_r: int = 16,
) -> Any:
    """Estimated training memory (GB) of full / LoRA / QLoRA for one model and setting."""
    import pandas as pd

    dims = model_dims(model)
    rows = []
    for method in METHODS:
        meth, optim = CALCULATOR_SETUPS[method]
        est = estimate_training_memory(
            dims, meth, precision, optim, micro_batch, seq_len, gradient_checkpointing, lora_r
        )
        rows.append(
            {
                "method": method,
                "optimizer": optim,
                **{k.replace("_mb", " (GB)"): round(v / 1000, 2) for k, v in est.to_dict().items()},
            }
        )
    return pd.DataFrame(rows).set_index("method")


def memory_calculator(model: str = "llama3-8b", interactive: bool | None = None, **settings: Any) -> Any:
    """The memory calculator: sliders and menus when interactive, else the static table for `settings`."""
    if interactive is None:
        interactive = is_interactive()
    if not interactive:
        return memory_table(model, **settings)
    import ipywidgets as w

    w.interact(
        lambda model, precision, micro_batch, seq_len, gradient_checkpointing, lora_r: memory_table(
            model, precision, micro_batch, seq_len, gradient_checkpointing, lora_r
        ),
        model=w.Dropdown(options=["pocket", *MODEL_DIMS], value=model),
        precision=w.Dropdown(options=["bf16", "fp16", "fp32"], value=settings.get("precision", "bf16")),
        micro_batch=w.IntSlider(value=settings.get("micro_batch", 1), min=1, max=32),
        seq_len=w.IntSlider(value=settings.get("seq_len", 1024), min=128, max=8192, step=128),
        gradient_checkpointing=settings.get("gradient_checkpointing", True),
        lora_r=w.IntSlider(value=settings.get("lora_r", 16), min=1, max=256),
    )
    return None  # the widgets are displayed; returning interact's function would print it as the cell's value


def lora_share(name: str, r: int = 16) -> dict[str, Any]:
    """LoRA (all linear layers, rank r) on a named model: adapter parameters and their share of all parameters."""
    dims = model_dims(name)
    adapters = lora_params(dims, r)
    return {
        "model": name,
        "rank": r,
        "model parameters": dims.n_params(),
        "LoRA parameters": adapters,
        "trainable share (%)": round(100 * adapters / (dims.n_params() + adapters), 2),
    }


def lora_share_table(r: int = 16) -> Any:
    """The LoRA share on the pocket model and the Llama-3 models: it shrinks as the matrices widen."""
    import pandas as pd

    return pd.DataFrame(
        [lora_share(name, r) for name in ("pocket", "smollm2-135m", "llama3-8b", "llama3-70b")]
    ).set_index("model")


# Where the bytes of full fine-tuning with AdamW sit, per parameter, before activations: one table for the whole lab.
# The HF Trainer's mixed precision keeps fp32 weights and gradients, and autocast's 16-bit copy of each weight lives
# until the backward pass has used it (the transformers docs' "GPU memory usage" page counts 6 bytes of weights);
# ZeRO keeps 16-bit gradients instead of fp32 ones. `models.memory.autocast_copy_bytes` is the estimator's count.
BYTES_PER_PARAM: tuple[dict[str, Any], ...] = (
    {
        "setup": "fp32 (the pocket profile on a CPU)",
        "fp32 weights": 4,
        "16-bit weights": 0,
        "gradients": 4,
        "Adam moments": 8,
    },
    {
        "setup": "mixed precision, HF Trainer (the lab's estimator)",
        "fp32 weights": 4,
        "16-bit weights": 2,
        "gradients": 4,
        "Adam moments": 8,
    },
    {
        "setup": "mixed precision, ZeRO paper / DeepSpeed",
        "fp32 weights": 4,
        "16-bit weights": 2,
        "gradients": 2,
        "Adam moments": 8,
    },
)


def bytes_per_param_table() -> Any:
    """Bytes per parameter of full fine-tuning with AdamW, three ways of counting: 16, 18 and 16 bytes."""
    import pandas as pd

    frame = pd.DataFrame(list(BYTES_PER_PARAM)).set_index("setup")
    frame["total"] = frame.sum(axis=1)
    return frame
