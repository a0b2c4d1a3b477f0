"""Read GGUF files back: what a file holds (sizes, tensor types, template, special ids), which tensors a k-quant
left in another type, and how llama.cpp renders its chat template. Writing them is `recipes/gguf.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab_utils.core.paths import recipe

K_SUPER_BLOCK = 256  # weights per k-quant super-block: a k-quant tensor's rows must be a multiple of it


def describe(path: str | Path) -> dict[str, Any]:
    """What a GGUF file holds: size, tensor types (count per type), the chat template, BOS/EOS ids and the
    pre-tokenizer, read with the `gguf` package's reader."""
    from collections import Counter

    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        if f is None:
            return None
        value = f.parts[f.data[0]]
        if f.types and f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(value).decode("utf-8")
        return value.tolist()[0] if hasattr(value, "tolist") else value

    types = Counter(t.tensor_type.name for t in reader.tensors)
    return {
        "file": Path(path).name,
        "size_mb": round(Path(path).stat().st_size / 1e6, 2),
        "file_type": field("general.file_type"),
        "tensors": len(reader.tensors),
        "tensor_types": dict(sorted(types.items())),
        "pre_tokenizer": field("tokenizer.ggml.pre"),
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
        "chat_template": field("tokenizer.chat_template"),
    }


def k_quant_fallbacks(path: str | Path) -> dict[str, str]:
    """In a k-quant file (q4_K_M): the tensors whose rows are not a multiple of a 256-weight super-block, which
    llama.cpp therefore wrote in another type (its log says "falling back to ..."), with that type, by name."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {
        t.name: t.tensor_type.name
        for t in reader.tensors
        if len(t.shape) > 1 and int(t.shape[0]) % K_SUPER_BLOCK and not t.tensor_type.name.endswith("_K")
    }


def render_template(template: str, messages: list[dict[str, str]], bos: str, eos: str) -> str:
    """Render a chat template the way llama-cpp-python's server does (sandboxed Jinja, generation prompt on)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=True)


def rounding_error(path: str | Path, model_dir: str | Path) -> dict[str, Any]:
    """What a GGUF file's number format did to the weights: each tensor read back, dequantized with the `gguf` package's
    own dequantizer, against the same tensor of `model_dir` in fp32, in the file's layout (`recipes/gguf.py`'s
    `tensors_for`, one tensor at a time: an 8B model is never held whole). The relative error ||file - fp32|| / ||fp32||
    of each tensor, then their mean, the worst tensor, and the bits the file spends per weight."""
    import gguf
    import numpy as np

    in_file = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}  # memory-mapped: read as each is compared
    errors, weights = {}, 0
    for name, want, _ in recipe("gguf").tensors_for(model_dir, "f32"):
        t = in_file[name]
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
        errors[name] = float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30))
        weights += want.size
    worst = max(errors, key=errors.__getitem__)
    return {
        "bits_per_weight": round(8 * Path(path).stat().st_size / weights, 2),
        "mean_rel_error": float(np.mean(list(errors.values()))),
        "worst_rel_error": errors[worst],
        "worst_tensor": worst,
    }
