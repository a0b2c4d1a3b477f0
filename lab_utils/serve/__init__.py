"""Stage `serve`: OpenAI-compatible servers (process: one lifecycle; vllm, re-exported here; llamacpp), the engine
objects that pick between them (engines), requests (api) and load tests (loadtest)."""

from lab_utils.serve.vllm import *  # noqa: F403 - `from lab_utils import serve` gives the vLLM server functions
