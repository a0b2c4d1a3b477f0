"""lab_utils: the plumbing behind the fine-tuning lab's notebooks, in stage subpackages layered bottom to top.

`core` (paths, hardware, profiles, results) < `data` < `models` < `train` < `serve` < `measure` < `course` (quizzes,
report, headline figures, diagrams) < `lab` (the run configuration and its file, readiness, runner): a stage imports
only the stages below it (import-linter checks it in `make test`; the contract is in pyproject.toml). Notebooks and
tests import a module from its stage (`from lab_utils.measure import evaluate`), so an editor can follow every name;
`data`, `models`, `train` and `serve` re-export their main module (`from lab_utils import train`).
"""

__version__ = "0.1.0"
