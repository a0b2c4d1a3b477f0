"""Stage `models`: loading models and tokenizers (loading, re-exported here), the pocket model the lab builds (pocket,
on the tiny-Llama builder in tiny), the rehearsal's stand-ins (rehearsal), merging (merge), reading GGUF
files (gguf_read; recipes/gguf.py writes them) and the memory estimator (memory)."""

from lab_utils.models.loading import *  # noqa: F403 - `from lab_utils import models` gives the loading functions
