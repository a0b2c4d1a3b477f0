"""lab_utils: the plumbing behind the fine-tuning lab's notebooks, in stage subpackages layered bottom to top.

`core` (paths, hardware, profiles, results) < `data` < `models` < `train` < `serve` < `measure` < `course` (quizzes,
report, headline figures, diagrams) < `lab` (the run configuration and its file, readiness, runner): a stage imports
only the stages below it (import-linter checks it in `make test`; the contract is in pyproject.toml). Notebooks and
tests import a module from its stage (`from lab_utils.measure import evaluate`), so an editor can follow every name;
`data`, `models`, `train` and `serve` re-export their main module (`from lab_utils import train`).
"""

__version__ = "0.1.0"

import logging

# On CPUs with AVX512-BF16, bitsandbytes tries to fetch a 4-bit kernel from the Hugging Face hub when it is imported,
# and warns when it cannot (offline, or no `kernels` package); its built-in kernel runs instead: noise in a classroom.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
