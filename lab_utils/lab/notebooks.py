"""Keeping committed notebooks clean: nbstripout (outputs, counts, widget and run metadata out; cell ids kept)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

# The one set of nbstripout options: `make strip`, `python -m lab_utils strip-notebooks` and the pre-commit hook.
NBSTRIPOUT_ARGS = ["--keep-id", "--extra-keys", "metadata.papermill metadata.lab_results"]


def strip_notebook(path: Path) -> bool:
    """Strip a notebook in place with nbstripout; True if it changed."""
    before = Path(path).read_bytes()
    subprocess.run([sys.executable, "-m", "nbstripout", *NBSTRIPOUT_ARGS, str(path)], check=True)
    return Path(path).read_bytes() != before


def call_text(name: str, kwargs: dict[str, Any], first: str = "") -> str:
    """A call as a learner would type it, one argument a line: `call_text("LoraConfig", {"r": 16})` ->
    "LoraConfig(\\n    r=16,\\n)". Torch dtypes print as `torch.bfloat16`; `first` is a leading positional argument."""
    lines = [f"    {first},"] if first else []
    for key, value in kwargs.items():
        text = f"torch.{str(value).removeprefix('torch.')}" if type(value).__name__ == "dtype" else repr(value)
        lines.append(f"    {key}={text},")
    return f"{name}(\n" + "\n".join(lines) + "\n)"


def show_call(name: str, kwargs: dict[str, Any], first: str = "") -> None:
    """Print `call_text`: the arguments a cell spreads into a library call, so the cell shows them with their values."""
    print(call_text(name, kwargs, first))
