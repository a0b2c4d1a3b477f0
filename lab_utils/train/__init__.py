"""Stage `train`: supervised fine-tuning with TRL (sft, re-exported here: the argument builders 02's cells spread, the
one trainer builder, the memory meter), the batching benchmark (bench) and the memory sweep (memsweep)."""

from lab_utils.train.meter import PeakMemory  # noqa: F401 - the memory meter
from lab_utils.train.precision import adapters_for_fp16  # noqa: F401 - fp32 adapters under fp16 (T4)
from lab_utils.train.sft import *  # noqa: F403 - `from lab_utils import train` gives the training functions
from lab_utils.train.views import *  # noqa: F403 - and what 01 and 02 show beside them
