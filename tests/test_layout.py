"""The package's shape: layered stages without import circles, every module on the README's map, small modules, and
notebooks that show the library calls they teach in short cells."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lab_utils"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")
# Modules that are data tables (the 400-line limit is for code).
DATA_TABLES = {"data/pocket_data.py"}
# The library calls each notebook's lesson is about: they must stand in its code cells, not behind a helper.
LESSON_CALLS: dict[str, tuple[str, ...]] = {
    "02_sft": (
        "AutoTokenizer.from_pretrained(",
        "AutoModelForCausalLM.from_pretrained(",
        "BitsAndBytesConfig(",
        "LoraConfig(",
        "SFTConfig(",
        "SFTTrainer(",
        "trainer.train(",
        "trainer.save_model(",
        "merge_and_unload()",
        ".save_pretrained(",
    ),
    "03_memory_optimizations": ("memreading.arguments_table(",),
    "04_vllm_serving": ("command_line()", "vllm_serve_line()", "OpenAI(", "chat.completions.create("),
    "05_before_after": ("OpenAI(", "completions.create("),
    "06_export": ("gguf.GGUFWriter(", "writer.add_tensor(", "llama_model_quantize(", "command_line()"),
}


def code_cells(stem: str) -> list[str]:
    nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_import_linter_keeps_the_layers_and_finds_no_circles() -> None:
    """`lint-imports` (contracts in pyproject.toml): core < data < models < train < serve < measure < course < lab, and
    no cycles."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is in the [test] extra"
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "2 kept, 0 broken" in out.stdout


def test_a_deferred_import_cannot_hide_a_layer_violation(tmp_path: Path) -> None:
    """import-linter reads imports inside functions too: a lower stage reaching up is caught."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    pkg = tmp_path / "lab_utils"
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "core" / "sneaky.py").write_text("def f():\n    from lab_utils.lab import runner\n    return runner\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    out = subprocess.run(
        [exe, "--no-cache"], cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path)}
    )
    assert out.returncode != 0 and "lab_utils.core.sneaky -> lab_utils.lab.runner" in out.stdout


def test_the_readme_maps_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [str(p.relative_to(PACKAGE)) for p in MODULES if f"`{p.relative_to(PACKAGE).as_posix()}`" not in readme]
    assert not missing, f"modules missing from the README's module map: {missing}"


def test_modules_stay_small() -> None:
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in MODULES}
    big = {name: n for name, n in sizes.items() if n > 400 and name not in DATA_TABLES}
    assert not big, f"modules over 400 lines: {big}"


# Hardware is decided once, by `runconfig.resolve` (issue 28, criterion 4). Below it nothing probes the machine, reads
# the rehearsal switch or decides on CUDA; these are the places that may, each for a reason that is not a decision.
HARDWARE_QUESTIONS = re.compile(r"\bprobe\(\)|LAB_REHEARSAL|cuda\.is_available\(\)")
ALLOWED_QUESTIONS = {
    "lab_utils/core/hardware.py": "probe() itself: what it asks is the probing",
    "lab_utils/lab/runconfig.py": "resolve: probes once and reads the rehearsal switch, for every decision below it",
    "lab_utils/lab/runner.py": "sets the rehearsal switch for the notebooks' kernels (above resolve)",
    "lab_utils/train/meter.py": "measures: reads CUDA's peak where there is CUDA, else the process's memory",
    "lab_utils/train/memsweep.py": "measures: the free memory of the GPU the sweep runs on",
    "lab_utils/models/loading.py": "cleans up: free() returns cached CUDA memory where there is CUDA",
    "lab_utils/models/pocketbuild.py": "measures: records the machine a pocket model was built on",
}


def test_hardware_is_decided_in_one_place() -> None:
    """Below `resolve`, `lab_utils` and the recipes neither probe, nor read LAB_REHEARSAL*, nor decide on
    `torch.cuda.is_available()`: the resolved hardware is passed down (and written into the run's config file). The
    places that only measure or clean up are listed, with their reasons."""
    found: dict[str, list[str]] = {}
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "recipes").glob("*.py")]):
        name = path.relative_to(ROOT).as_posix()
        hits = [ln.strip() for ln in path.read_text().splitlines() if HARDWARE_QUESTIONS.search(ln)]
        if hits and name not in ALLOWED_QUESTIONS:
            found[name] = hits
    assert not found, f"hardware questions below resolve: {found}"
    for name in ALLOWED_QUESTIONS:  # the list stays true: each allowed place still asks
        assert HARDWARE_QUESTIONS.search((ROOT / name).read_text()), f"{name} no longer asks: drop it from the list"


@pytest.mark.parametrize("stem", sorted(LESSON_CALLS))
def test_notebooks_show_the_calls_they_teach(stem: str) -> None:
    source = "\n".join(code_cells(stem))
    missing = [call for call in LESSON_CALLS[stem] if call not in source]
    assert not missing, f"{stem}: the lesson's calls are not in its cells: {missing}"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_code_cells_stay_short(path: Path) -> None:
    long = {
        i: len(c.strip().splitlines()) for i, c in enumerate(code_cells(path.stem)) if len(c.strip().splitlines()) > 15
    }
    assert not long, f"{path.stem}: code cells over 15 lines (split them, with prose between): {long}"


def lesson_cells(stem: str) -> list[str]:
    """The code cells tagged `lesson`: the library code a learner copies out."""
    nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
    tagged = [c for c in nb["cells"] if "lesson" in c["metadata"].get("tags", [])]
    return ["".join(c["source"]) for c in tagged]


# What 02's lesson cells take from the cells around them (a copy of them defines these first).
LESSON_INPUTS = {"02_sft": {"config_path", "resume_from"}, "07_preference_tuning": {"config_path"}}


def test_notebook_02_spreads_the_config_files_sections() -> None:
    """02's lesson cells build each library object from the section of the run's config.yaml named after it, import
    nothing from the lab, and hand-write no hyperparameter."""
    lessons = lesson_cells("02_sft")
    source = "\n".join(lessons)
    for call in ('LoraConfig(**config["lora"])', 'SFTConfig(**config["sft"])', 'BitsAndBytesConfig(**config["bnb"])',
                 'from_pretrained(**config["model"]', 'yaml.safe_load('):  # fmt: skip
        assert call in source, call
    assert "lab_utils" not in source and not re.search(r"\b(train|models|merge|runconfig|cfg|prof|settings)\.", source)
    assert not re.search(r"learning_rate\s*=|per_device_train_batch_size\s*=|lora_alpha\s*=|\br\s*=\s*\d", source)
    assert all(call in source for call in LESSON_CALLS["02_sft"]), "every call 02 teaches stands in a lesson cell"
    for module in ("train/memsweep.py", "train/bench.py"):  # they train with the recipe's code, not a copy of it
        assert 'recipe("sft").build(' in (PACKAGE / module).read_text(), module
    builders = [p.relative_to(PACKAGE).as_posix() for p in MODULES if "SFTTrainer(" in p.read_text()]
    assert builders == ["train/views.py"], "only 01's collator view builds a trainer (it trains nothing)"
    for name in ("show_call", "recipe_command", "sft_args", "lora_args"):
        assert name not in "\n".join(code_cells("02_sft")), f"02 still uses {name}"


def test_notebook_07_spreads_the_config_files_dpo_sections() -> None:
    """07's lesson cells build DPOConfig, the SFT model and the adapter from the file's dpo sections, and import nothing
    from the lab."""
    source = "\n".join(lesson_cells("07_preference_tuning"))
    for call in ('DPOConfig(**config["dpo"])', 'from_pretrained(**config["dpo_model"]', 'LoraConfig(**config["dpo_lora"])',
                 "DPOTrainer(", "trainer.train()", "trainer.save_model(", "merge_and_unload()", ".save_pretrained("):  # fmt: skip
        assert call in source, call
    assert "lab_utils" not in source and not re.search(r"\b(train|dpo|models|merge|cfg|prof|pref)\.", source)
    assert not re.search(r"beta\s*=|learning_rate\s*=|lora_alpha\s*=", source)
    assert "recipe_command" not in "\n".join(code_cells("07_preference_tuning"))


@pytest.mark.slow
@pytest.mark.notebook
def test_02s_lesson_cells_run_outside_the_lab(lab_run, tmp_path_factory: pytest.TempPathFactory) -> None:
    """02's lesson cells and the run's config.yaml, copied into an empty folder outside the repository, run with the
    lab's Python and `lab_utils` off the path: they train, save and merge on pocket (10 steps here)."""
    import yaml

    lab_run.run("02_sft")
    folder = tmp_path_factory.mktemp("outside")
    assert ROOT not in folder.parents
    config = yaml.safe_load((lab_run.folder / "config.yaml").read_text())
    config["sft"].update(output_dir=str(folder / "out"), max_steps=10, eval_steps=5, save_steps=5)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    preamble = f"""import sys
class NoLab:  # the lab's package is off the path: a cell that needs it fails here
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "lab_utils":
            raise ImportError("lab_utils is off the path")
sys.meta_path.insert(0, NoLab())
sys.path = [p for p in sys.path if p.rstrip("/") != {str(ROOT)!r}]
config_path, resume_from = "config.yaml", None
"""
    (folder / "lesson.py").write_text(preamble + "\n\n".join(lesson_cells("02_sft")) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LAB_RUN_DIR")}
    out = subprocess.run(
        [sys.executable, "lesson.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    print(f"\n02's {len(lesson_cells('02_sft'))} lesson cells, outside the lab:\n" + out.stdout[-1500:])
    assert "10 steps at learning rate" in out.stdout and "merged in float32: LlamaForCausalLM" in out.stdout
    assert (folder / "out" / "adapter" / "adapter_model.safetensors").exists()
    merged = folder / "out" / "merged"
    assert list(merged.glob("*.safetensors")) and (merged / "chat_template.jinja").exists()
    assert not list((folder / "out").glob("*.partial"))
