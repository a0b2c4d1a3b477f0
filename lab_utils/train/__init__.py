"""Stage `train`: supervised fine-tuning with TRL (sft, re-exported here: the argument builders that write the run's
config file, what a run records, the memory meter; the trainer itself is built by 02's cells and `recipes/sft.py`),
the batching benchmark (bench) and the memory sweep (memsweep)."""

from lab_utils.train.meter import PeakMemory  # noqa: F401 - the memory meter
from lab_utils.train.sft import *  # noqa: F403 - `from lab_utils import train` gives the training functions
from lab_utils.train.views import *  # noqa: F403 - and what 01 and 02 show beside them
