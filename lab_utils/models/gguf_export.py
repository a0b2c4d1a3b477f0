"""Export a merged Llama folder (safetensors, tokenizer, chat template) to GGUF for llama.cpp, and read GGUF files back.

Route: a small writer on the `gguf` package (the library llama.cpp's own converter is built on), not llama.cpp's
`convert_hf_to_gguf.py`. That converter ships only inside the llama-cpp-python source distribution, and it refuses the
lab's byte-level BPE tokenizer ("BPE pre-tokenizer was not recognized": its hash check knows hub tokenizers only). The
pocket tokenizer splits text with the same ByteLevel regex as GPT-2, so its GGUF declares the "gpt-2" pre-tokenizer;
Llama 3's (and its rehearsal stand-in's) splits with its own regex first, which llama.cpp calls "llama-bpe". The
writer checks which of the two forms a tokenizer has and refuses any other with the reason. The tensors are those the
official converter writes (the same names, the same Q/K row order, Q8_0 from the same quantizer), and the chat template
and the special tokens come from the folder (gguf's SpecialVocab). Tensors are read one at a time through torch
(numpy has no bfloat16, the dtype GPU merges are saved in).
4-bit files (Q4_0, and Q4_K_M: Ollama's default) are made from the f16 one with llama.cpp's own quantizer, where
llama-cpp-python is installed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab_utils.core.paths import staged

FILE_TYPES = ("f32", "f16", "q8_0")

# Hugging Face Llama tensor names -> GGUF names (llama.cpp's tensor map for the Llama architecture).
_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


class GGUFExportError(ValueError):
    """A model folder the exporter cannot write as GGUF, with the reason."""


def gguf_name(hf_name: str) -> str:
    """The GGUF tensor name of a Hugging Face Llama tensor."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    parts = hf_name.split(".")
    if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers":
        rest = ".".join(parts[3:])
        if rest in _LAYER_NAMES:
            return f"blk.{parts[2]}.{_LAYER_NAMES[rest]}"
    raise GGUFExportError(f"tensor {hf_name!r} is not part of a Llama model the exporter knows")


def permute_qk(weights: Any, n_head: int) -> Any:
    """llama.cpp's row order for the Q and K projections (its rotary embedding pairs dimensions differently from HF's)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


# Llama 3's pre-tokenizer: a Split on tiktoken's cl100k-style pattern (digits in groups of at most three), then
# byte-level mapping without GPT-2's own regex. llama.cpp knows it as "llama-bpe" (src/llama-vocab.cpp).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
    "gpt-2": "ByteLevel with GPT-2's regex and no prefix space (the pocket model's)",
    "llama-bpe": "Llama 3's: Split on its regex, then ByteLevel without a regex",
}


def pre_tokenizer_name(pre: dict[str, Any]) -> str | None:
    """llama.cpp's name for a tokenizer.json `pre_tokenizer` of a form the export supports, else None."""
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"
    steps = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(steps) == 2:
        split, byte_level = steps
        if (
            split.get("type") == "Split"
            and (split.get("pattern") or {}).get("Regex") == LLAMA3_SPLIT
            and str(split.get("behavior", "")).lower() == "isolated"
            and not split.get("invert")
            and byte_level.get("type") == "ByteLevel"
            and not byte_level.get("use_regex", True)
            and not byte_level.get("add_prefix_space")
        ):
            return "llama-bpe"
    return None


def check_tokenizer(model_dir: Path) -> tuple[dict[str, Any], str]:
    """The tokenizer.json and llama.cpp's name for its pre-tokenizer, if it is a form the export supports (byte-level
    BPE split as GPT-2 or as Llama 3); otherwise GGUFExportError naming what differs."""
    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise GGUFExportError(f"{path}: no tokenizer.json (a fast tokenizer is needed to export the vocabulary)")
    tok = json.loads(path.read_text())
    model, pre = tok.get("model", {}), tok.get("pre_tokenizer") or {}
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"model type {model.get('type')!r} (BPE needed)")
    if model.get("byte_fallback"):
        problems.append("byte_fallback BPE (a Llama-2-form tokenizer: use llama.cpp's convert_hf_to_gguf.py)")
    name = pre_tokenizer_name(pre)
    if name is None:
        forms = "; ".join(f"{k}: {v}" for k, v in PRE_TOKENIZERS.items())
        problems.append(f"pre-tokenizer {json.dumps(pre)[:300]} is none of the forms the export declares ({forms})")
    if problems:
        raise GGUFExportError(
            f"{path}: cannot declare a llama.cpp pre-tokenizer for this tokenizer: " + "; ".join(problems)
        )
    return tok, str(name)


def _vocab(tok: dict[str, Any]) -> tuple[list[str], list[int], list[str]]:
    """Tokens in id order, their types (normal or control), and the merges as "a b" strings."""
    import gguf

    by_id = {i: t for t, i in tok["model"]["vocab"].items()}
    special = {a["id"]: a["content"] for a in tok.get("added_tokens", [])}
    by_id.update(special)
    n = max(by_id) + 1
    missing = [i for i in range(n) if i not in by_id]
    if missing:
        raise GGUFExportError(f"token ids {missing[:5]} have no token: the vocabulary has holes")
    tokens = [by_id[i] for i in range(n)]
    types = [int(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL) for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    return tokens, types, merges


def export(model_dir: str | Path, out_path: str | Path, file_type: str = "f16") -> Path:
    """Write `model_dir` (a merged Llama folder) as one GGUF file of `file_type` (f32, f16 or q8_0), by a staged write:
    the writer calls notebook 06 shows, in one function."""
    import gguf

    with staged(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        add_metadata(writer, model_dir, file_type)
        for name, data, raw_dtype in tensors_for(model_dir, file_type):
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out_path)


def _config(model_dir: Path, file_type: str) -> dict[str, Any]:
    """The folder's config.json, checked: a Llama, and a file type the exporter writes."""
    if file_type not in FILE_TYPES:
        raise GGUFExportError(f"file_type {file_type!r}: choose one of {FILE_TYPES}")
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise GGUFExportError(
            f"{model_dir}/config.json: model_type {cfg.get('model_type')!r}; the exporter writes llama"
        )
    return cfg


def add_metadata(writer: Any, model_dir: str | Path, file_type: str) -> None:
    """The GGUF header's key-value metadata: the architecture's sizes, RoPE and norm settings, the file type, the
    tokenizer (vocabulary, merges, token types, its pre-tokenizer checked first) and, from the folder's tokenizer
    files, BOS/EOS/pad ids and the chat template."""
    import gguf

    model_dir = Path(model_dir)
    cfg = _config(model_dir, file_type)
    tok, pre_name = check_tokenizer(model_dir)
    n_head, n_kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer.add_name(model_dir.name)
    writer.add_context_length(int(cfg["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(int(cfg.get("head_dim") or hidden // n_head))
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    rope = cfg.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    writer.add_vocab_size(int(cfg["vocab_size"]))
    writer.add_file_type(ftype[file_type])
    tokens, types, merges = _vocab(tok)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_name)  # llama.cpp's name for the split: "gpt-2" (pocket) or "llama-bpe" (Llama 3)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    gguf.SpecialVocab(model_dir, load_merges=False).add_to_gguf(writer)  # BOS/EOS/pad ids, add_bos, chat template


def tensors_for(model_dir: str | Path, file_type: str) -> Iterator[tuple[str, Any, Any]]:
    """Every weight as (llama.cpp's name, data, raw dtype for `add_tensor`): Q and K rows permuted to llama.cpp's RoPE
    layout, norms kept f32, the rest in `file_type` (f32, f16, or q8_0 blocks quantized by the `gguf` package)."""
    import gguf
    import numpy as np

    model_dir = Path(model_dir)
    cfg = _config(model_dir, file_type)
    n_head, n_kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    tensors = _tensors(model_dir)
    for hf_name in sorted(tensors):
        data = tensors[hf_name]()
        if hf_name.endswith("q_proj.weight"):
            data = permute_qk(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_qk(data, n_kv)
        name = gguf_name(hf_name)
        if data.ndim == 1 or file_type == "f32":
            yield name, data, None  # norms stay f32 in every file type, as llama.cpp's converter keeps them
        elif file_type == "f16":
            yield name, data.astype(np.float16), None
        else:
            q = gguf.GGMLQuantizationType.Q8_0
            yield name, gguf.quants.quantize(data, q), q


def _tensors(model_dir: Path) -> dict[str, Any]:
    """Every tensor of the folder's safetensors, by name, as a function that loads it as float32 numpy when called."""
    from safetensors import safe_open

    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise GGUFExportError(f"{model_dir}: no .safetensors files")
    out: dict[str, Any] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                out[name] = lambda shard=shard, name=name: _load(shard, name)
    return out


def _load(shard: Path, name: str) -> Any:
    """One tensor as float32 numpy."""
    from safetensors import safe_open

    with safe_open(str(shard), framework="pt") as f:
        return f.get_tensor(name).float().numpy()


# The 4-bit file types llama.cpp's quantizer writes for the lab, by llama-cpp-python's constant name: notebook 06
# makes each one, so a new type is one entry here.
QUANTIZED_TYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
K_SUPER_BLOCK = 256  # weights per k-quant super-block: a k-quant tensor's rows must be a multiple of it


def quantize_4bit(f16_path: str | Path, out_path: str | Path, file_type: str = "q4_0") -> Path | None:
    """Q4_0 or Q4_K_M from an f16 GGUF with llama.cpp's own quantizer (through llama-cpp-python); None if it is not
    installed."""
    if file_type not in QUANTIZED_TYPES:
        raise GGUFExportError(f"file_type {file_type!r}: llama.cpp's quantizer makes {tuple(QUANTIZED_TYPES)} here")
    try:
        import llama_cpp
    except ImportError:
        return None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZED_TYPES[file_type])
    with staged(out_path) as tmp:
        status = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(tmp).encode(), params)
        check_quantized(status, f16_path)
    return Path(out_path)


def check_quantized(status: int, source: str | Path) -> None:
    """Raise with the file's name when llama.cpp's quantizer returned an error status."""
    if status != 0:
        raise GGUFExportError(f"llama.cpp could not quantize {source} (status {status})")


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
