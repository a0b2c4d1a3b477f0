"""Export a merged Llama folder (safetensors, tokenizer, chat template) to GGUF files for llama.cpp and Ollama.

Usage: python recipes/gguf.py OUT/merged [--types f16 q8_0 q4_K_M] [--out-dir DIR]

The folder is what recipes/sft.py writes to OUT/merged. f32, f16 and q8_0 are written with the `gguf` package (the
library llama.cpp's own converter is built on); q4_0 and q4_K_M (Ollama's default) come from the f16 file through
llama.cpp's own quantizer, where llama-cpp-python is installed. Each file is written to FILE.partial, then renamed.
Serve one with `python recipes/serve.py OUT/gguf/merged-q8_0.gguf --engine llamacpp`.

Not llama.cpp's `convert_hf_to_gguf.py`: it refuses tokenizers it does not know by hash ("BPE pre-tokenizer was not
recognized"). This export checks the tokenizer's form instead, and writes the tensors as that converter does.
"""

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors import safe_open

# gguf warns about the tokenizer's sequence-pair template, which a causal LM never uses ("Unknown separator token").
logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
FT, Q8_0 = gguf.LlamaFileType, gguf.GGMLQuantizationType.Q8_0
FILE_TYPES = {"f32": FT.ALL_F32, "f16": FT.MOSTLY_F16, "q8_0": FT.MOSTLY_Q8_0}
# The 4-bit types llama.cpp's quantizer writes, by llama-cpp-python's constant: 06 makes each, so a new type is one entry.
QUANTIZED_TYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}

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


class GGUFExportError(ValueError):
    """A model folder the exporter cannot write as GGUF, with the reason."""


def pre_tokenizer_name(pre: dict[str, Any]) -> str | None:
    """llama.cpp's name for a tokenizer.json `pre_tokenizer` of a form the export supports, else None."""
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"
    steps = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(steps) == 2:
        split, byte_level = steps
        split_ok = split.get("type") == "Split" and (split.get("pattern") or {}).get("Regex") == LLAMA3_SPLIT
        split_ok = split_ok and str(split.get("behavior", "")).lower() == "isolated" and not split.get("invert")
        bytes_ok = byte_level.get("type") == "ByteLevel" and not byte_level.get("use_regex", True)
        if split_ok and bytes_ok and not byte_level.get("add_prefix_space"):
            return "llama-bpe"
    return None


def check_tokenizer(model_dir: Path) -> tuple[dict[str, Any], str]:
    """The tokenizer.json and llama.cpp's name for its split (GPT-2's or Llama 3's), else an error naming what differs."""
    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise GGUFExportError(f"{path}: no tokenizer.json (a fast tokenizer is needed to export the vocabulary)")
    tok = json.loads(path.read_text())
    model, pre, problems = tok.get("model", {}), tok.get("pre_tokenizer") or {}, []
    if model.get("type") != "BPE":
        problems.append(f"model type {model.get('type')!r} (BPE needed)")
    if model.get("byte_fallback"):
        problems.append("byte_fallback BPE (a Llama-2-form tokenizer: use llama.cpp's convert_hf_to_gguf.py)")
    name = pre_tokenizer_name(pre)
    if name is None:
        forms = "; ".join(f"{k}: {v}" for k, v in PRE_TOKENIZERS.items())
        problems.append(f"pre-tokenizer {json.dumps(pre)[:300]} is none of the forms the export declares ({forms})")
    if problems:
        raise GGUFExportError(f"{path}: cannot declare a llama.cpp pre-tokenizer: {'; '.join(problems)}")
    return tok, str(name)


def read_config(model_dir: Path, file_type: str) -> dict[str, Any]:
    """The folder's config.json, checked: a Llama, and a file type the exporter writes."""
    if file_type not in FILE_TYPES:
        raise GGUFExportError(f"file_type {file_type!r}: choose one of {tuple(FILE_TYPES)}")
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise GGUFExportError(f"{model_dir}/config.json: model_type {cfg.get('model_type')!r}, not llama")
    return cfg


def add_metadata(writer: gguf.GGUFWriter, model_dir: str | Path, file_type: str) -> None:
    """The header's key-value metadata: the architecture's sizes, RoPE and norm settings, the file type, the tokenizer
    (vocabulary, merges, token types; its pre-tokenizer checked first), BOS/EOS/pad ids and the chat template."""
    model_dir = Path(model_dir)
    cfg, (tok, pre_name) = read_config(model_dir, file_type), check_tokenizer(model_dir)
    n_head, hidden = int(cfg["num_attention_heads"]), int(cfg["hidden_size"])
    writer.add_name(model_dir.name)
    writer.add_context_length(int(cfg["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(cfg.get("num_key_value_heads") or n_head))
    writer.add_rope_dimension_count(int(cfg.get("head_dim") or hidden // n_head))
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    rope = cfg.get("rope_parameters") or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    writer.add_vocab_size(int(cfg["vocab_size"]))
    writer.add_file_type(FILE_TYPES[file_type])
    # The vocabulary in id order, the added (special) tokens as control tokens; the merges as "a b" strings.
    special = {a["id"]: a["content"] for a in tok.get("added_tokens", [])}
    by_id = {**{i: t for t, i in tok["model"]["vocab"].items()}, **special}
    missing = [i for i in range(max(by_id) + 1) if i not in by_id]
    if missing:
        raise GGUFExportError(f"token ids {missing[:5]} have no token: the vocabulary has holes")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_name)  # llama.cpp's name for the split: "gpt-2" (pocket) or "llama-bpe" (Llama 3)
    writer.add_token_list([by_id[i] for i in range(len(by_id))])
    control, normal = int(gguf.TokenType.CONTROL), int(gguf.TokenType.NORMAL)
    writer.add_token_types([control if i in special else normal for i in range(len(by_id))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    gguf.SpecialVocab(model_dir, load_merges=False).add_to_gguf(writer)  # BOS/EOS/pad ids, add_bos, chat template


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for the Q and K projections (its rotary embedding pairs dimensions differently from HF's)."""
    halves = weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
    return halves.swapaxes(1, 2).reshape(weights.shape)


def tensors_for(model_dir: str | Path, file_type: str) -> Iterator[tuple[str, np.ndarray, Any]]:
    """Every weight as (llama.cpp's name, data, raw dtype for `add_tensor`), read one at a time as float32 through torch
    (numpy has no bfloat16): Q and K rows permuted, norms kept f32, the rest in `file_type` (q8_0 by gguf's quantizer)."""
    model_dir = Path(model_dir)
    cfg = read_config(model_dir, file_type)
    n_head = int(cfg["num_attention_heads"])
    heads = {"q_proj.weight": n_head, "k_proj.weight": int(cfg.get("num_key_value_heads") or n_head)}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(cfg["num_hidden_layers"]))  # llama.cpp's tensor map
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise GGUFExportError(f"{model_dir}: no .safetensors files")
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for hf_name in sorted(f.keys()):  # noqa: SIM118 (safe_open has keys(), not iteration)
                name = names.get_name(hf_name, try_suffixes=(".weight",))
                if name is None:
                    raise GGUFExportError(f"tensor {hf_name!r} is not part of a Llama model the exporter knows")
                data = f.get_tensor(hf_name).float().numpy()
                suffix = ".".join(hf_name.split(".")[-2:])
                data = permute_qk(data, heads[suffix]) if suffix in heads else data
                if data.ndim == 1 or file_type == "f32":
                    yield name, data, None  # norms stay f32 in every file type, as llama.cpp's converter keeps them
                elif file_type == "f16":
                    yield name, data.astype(np.float16), None
                else:
                    yield name, gguf.quants.quantize(data, Q8_0), Q8_0


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """FILE.partial to write, renamed to FILE when the block completes: a crash never leaves half a file."""
    tmp = Path(f"{path}.partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export(model_dir: str | Path, out_path: str | Path, file_type: str = "f16") -> Path:
    """Write `model_dir` as one GGUF file of `file_type` (f32, f16 or q8_0): the writer calls notebook 06 shows."""
    with staged(Path(out_path)) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")  # a GGUF file: key-value metadata, then the tensors
        add_metadata(writer, model_dir, file_type)
        for name, data, raw_dtype in tensors_for(model_dir, file_type):
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out_path)


def check_quantized(status: int, source: str | Path) -> None:
    """Raise with the file's name when llama.cpp's quantizer returned an error status."""
    if status != 0:
        raise GGUFExportError(f"llama.cpp could not quantize {source} (status {status})")


def quantize(f16_path: str | Path, out_path: str | Path, file_type: str = "q4_0") -> Path | None:
    """Q4_0 or Q4_K_M from an f16 file with llama.cpp's own quantizer; None without llama-cpp-python."""
    if file_type not in QUANTIZED_TYPES:
        raise GGUFExportError(f"file_type {file_type!r}: llama.cpp's quantizer makes {tuple(QUANTIZED_TYPES)} here")
    try:
        import llama_cpp  # optional: a build from source (pip install llama-cpp-python)
    except ImportError:
        return None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTIZED_TYPES[file_type])
    with staged(Path(out_path)) as tmp:
        check_quantized(llama_cpp.llama_model_quantize(str(f16_path).encode(), str(tmp).encode(), params), f16_path)
    return Path(out_path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", help="a merged Llama folder (safetensors, tokenizer.json, config.json)")
    p.add_argument("--types", nargs="+", default=["f16", "q8_0"], choices=[*FILE_TYPES, *QUANTIZED_TYPES])
    p.add_argument("--out-dir", default="", help="default: a gguf folder beside the model folder")
    args = p.parse_args(argv)
    model_dir = Path(args.model_dir)
    out = Path(args.out_dir) if args.out_dir else model_dir.parent / "gguf"
    if not (model_dir / "config.json").is_file():
        sys.exit(f"recipes/gguf.py: {model_dir}: no config.json (give the merged model folder)")
    path = {ft: out / f"{model_dir.name}-{ft}.gguf" for ft in [*FILE_TYPES, *QUANTIZED_TYPES]}
    try:
        written = {ft: export(model_dir, path[ft], ft) for ft in args.types if ft in FILE_TYPES}
        for ft in (t for t in args.types if t in QUANTIZED_TYPES):
            f16 = written.get("f16") or export(model_dir, path["f16"], "f16")
            written[ft] = quantize(f16, path[ft], ft) or sys.exit(f"recipes/gguf.py: {ft} needs llama-cpp-python")
    except GGUFExportError as err:
        sys.exit(f"recipes/gguf.py: {err}")
    print("\n".join(f"{ft}: {file} ({file.stat().st_size / 1e6:,.1f} MB)" for ft, file in written.items()))


if __name__ == "__main__":
    main()
