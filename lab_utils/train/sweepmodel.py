"""The model notebook 03's memory sweep trains: a wider pocket variant on a CPU, and on a GPU the profile's base (at
most 8B: a larger base is swept on the 8B model of its family)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab_utils.models.memory import ModelDims, dims_for_model
from lab_utils.models.pocketbuild import PocketConfig, make_model


@dataclass(frozen=True)
class WideModel:
    """The wider pocket variant used for the sweep: big enough that the differences stand above the noise."""

    hidden_size: int = 768
    num_layers: int = 4
    num_heads: int = 12  # head_dim 64
    intermediate_size: int = 2048


def build_wide_model(out: Path, tokenizer_dir: str, wide: WideModel = WideModel(), seed: int = 0) -> Path:
    """Save a randomly initialised wide Llama (fp32 safetensors) with the pocket tokenizer; memory does not care
    whether the weights were pretrained."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = make_model(
        PocketConfig(
            hidden_size=wide.hidden_size,
            num_layers=wide.num_layers,
            num_heads=wide.num_heads,
            intermediate_size=wide.intermediate_size,
            seed=seed,
        ),
        tok,
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def model_dims(model_dir: str) -> ModelDims:
    """The sweep model's dimensions, from its config."""
    from transformers import AutoConfig

    return ModelDims.from_config(AutoConfig.from_pretrained(model_dir))


def max_positions(model_dir: str) -> int:
    """The longest sequence the sweep's model takes (its max_position_embeddings)."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(model_dir).max_position_embeddings)


# The largest model the sweep trains: nine configurations of a bigger one take hours, and most cannot fit anyway. A
# larger base (70B) is swept on the 8B model of its family: the same techniques save the same shares.
SWEEP_STAND_IN = "meta-llama/Meta-Llama-3-8B"
MAX_SWEEP_PARAMS = 8.1e9


def sweep_model(base_model: str) -> tuple[str, str | None]:
    """The hub model the sweep trains for a profile's base, and a note when it is a smaller stand-in."""
    dims = dims_for_model(base_model)
    if dims is not None and dims.n_params() > MAX_SWEEP_PARAMS:
        return SWEEP_STAND_IN, (
            f"{base_model} has {dims.n_params() / 1e9:.0f}B parameters: the sweep trains {SWEEP_STAND_IN} instead "
            "(the same techniques save the same shares; notebook 02 trains the real model)"
        )
    return base_model, None
