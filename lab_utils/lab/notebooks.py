"""Keeping committed notebooks clean: nbstripout (outputs, counts, widget and run metadata out; cell ids kept)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# The one set of nbstripout options: `make strip`, `python -m lab_utils strip-notebooks` and the pre-commit hook.
NBSTRIPOUT_ARGS = ["--keep-id", "--extra-keys", "metadata.papermill metadata.lab_results"]


def strip_notebook(path: Path) -> bool:
    """Strip a notebook in place with nbstripout; True if it changed."""
    before = Path(path).read_bytes()
    subprocess.run([sys.executable, "-m", "nbstripout", *NBSTRIPOUT_ARGS, str(path)], check=True)
    return Path(path).read_bytes() != before
