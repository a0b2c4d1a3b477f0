"""The package's shape: layered stages without import circles, every module on the README's map, small modules, and
notebooks that show the library calls they teach in short cells."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lab_utils"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")
# Modules that are data tables (the 500-line limit is for code).
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
    "03_memory_optimizations": ("memsweep.arguments_table(",),
    "04_vllm_serving": ("command_line()", "vllm_serve_line()", "OpenAI(", "chat.completions.create("),
    "05_before_after": ("OpenAI(", "completions.create("),
    "06_export": ("gguf.GGUFWriter(", "writer.add_tensor(", "llama_model_quantize(", "command_line()"),
}


def code_cells(stem: str) -> list[str]:
    nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_import_linter_keeps_the_layers_and_finds_no_circles() -> None:
    """`lint-imports` (contracts in pyproject.toml): run < data < models < train < serve < measure < lab, no cycles."""
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
    (pkg / "run" / "sneaky.py").write_text("def f():\n    from lab_utils.lab import runner\n    return runner\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    out = subprocess.run(
        [exe, "--no-cache"], cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path)}
    )
    assert out.returncode != 0 and "lab_utils.run.sneaky -> lab_utils.lab.runner" in out.stdout


def test_the_readme_maps_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [str(p.relative_to(PACKAGE)) for p in MODULES if f"`{p.relative_to(PACKAGE).as_posix()}`" not in readme]
    assert not missing, f"modules missing from the README's module map: {missing}"


def test_modules_stay_small() -> None:
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in MODULES}
    big = {name: n for name, n in sizes.items() if n > 500 and name not in DATA_TABLES}
    assert not big, f"modules over 500 lines: {big}"


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


def test_notebook_02_builds_its_arguments_from_the_one_source() -> None:
    """The values 02 spreads into LoraConfig and SFTConfig come from the builders 03 and the benchmark use too: no
    second hand-written copy of the arguments in the notebook."""
    source = "\n".join(code_cells("02_sft"))
    assert "LoraConfig(**lora_args)" in source and "lora_args = train.lora_kwargs(settings)" in source
    assert "SFTConfig(**sft_args)" in source and "sft_args = train.sft_kwargs(settings, out_dir)" in source
    assert not re.search(r"learning_rate\s*=|per_device_train_batch_size\s*=|lora_alpha\s*=", source)
    for module in ("train/memsweep.py", "train/bench.py", "train/views.py"):
        text = (PACKAGE / module).read_text()
        assert "SFTTrainer(" not in text, f"{module} builds its own trainer instead of train.make_trainer"
