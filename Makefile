# The lab's two entry points: `make lab` (run every notebook) and `make test` (the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= auto
NOTEBOOKS ?=
PYTEST_ARGS ?=
POCKET ?=
CELL_TIMEOUT ?=
REHEARSAL ?=
QUICK ?=
DATASET ?=
LLAMACPP ?=
WHEELHOUSE ?=
GPU_CHECK_PYTHON ?= 3.12
GPU_CHECK_CUDA ?= 128,130

.PHONY: setup wheelhouse gpu-check-prep lab test test-fast test-rebuild test-rehearsal jupyter pocket prefetch ready hooks strip clean-runs

# LLAMACPP=1 also installs llama.cpp (notebook 06; 04 and 05 without vLLM): a build from source, 8-11 min on 2 cores.
# WHEELHOUSE=wheelhouse installs from a wheel folder with no internet (an offline room: `make wheelhouse` makes it).
setup:
	@LAB_LLAMACPP=$(LLAMACPP) LAB_WHEELHOUSE=$(WHEELHOUSE) bash scripts/setup_env.sh

# An offline room: every wheel the lab installs here (llama.cpp's built once) into wheelhouse/, checked to resolve alone.
wheelhouse:
	@LAB_LLAMACPP=$(LLAMACPP) bash scripts/setup_env.sh
	@WHEELHOUSE=$(or $(WHEELHOUSE),wheelhouse) bash scripts/make_wheelhouse.sh

# The GPU check's wheels (scripts/gpu_check.py), for a lent GPU machine without TRL, datasets or bitsandbytes: into
# .gpu-check/wheels (carry .gpu-check there), trimmed under 64 MiB, for Python $(GPU_CHECK_PYTHON) and bitsandbytes'
# CUDA libraries $(GPU_CHECK_CUDA) (12.8 and 13.0) only.
gpu-check-prep:
	$(PY) scripts/gpu_check_prep.py --python $(GPU_CHECK_PYTHON) --cuda $(GPU_CHECK_CUDA)

# POCKET=local runs the lab on the pocket base model rebuilt here (`make pocket`) instead of the shipped one.
# DATASET=my_data.jsonl trains on your own Alpaca-format file (01 validates it, 02 trains on it).
# QUICK=1 is class mode: the same story in less time (runner.QUICK_PARAMETERS).
# REHEARSAL=1 runs a GPU profile's whole flow on this machine with small stand-ins (make lab PROFILE=llama3-8b REHEARSAL=1).
lab: setup
	$(if $(POCKET),LAB_POCKET=$(POCKET)) $(PY) -m lab_utils run-lab --profile $(PROFILE) \
		$(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS)) $(if $(CELL_TIMEOUT),--cell-timeout $(CELL_TIMEOUT)) \
		$(if $(REHEARSAL),--rehearsal) $(if $(QUICK),--quick) \
		$(if $(DATASET),--dataset $(DATASET))

# The tests cover llama.cpp too (GGUF export, notebooks 04-06 on llama.cpp): `make test` installs it (a build, once).
test:
	@LAB_LLAMACPP=1 bash scripts/setup_env.sh
	@bash scripts/setup_browser.sh
	@$(PY) -m pip install -q --upgrade --no-deps --target .deepspeed -r tests/deepspeed-requirements.txt  # the ZeRO-3 test's
	$(PY) -m pytest -m "not rebuild" $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not notebook and not slow" $(PYTEST_ARGS)

# Rehearse the GPU profiles' notebook flows on this CPU with stand-ins (part of `make test` too).
test-rehearsal: setup
	$(PY) -m pytest -m rehearsal $(PYTEST_ARGS)

# Rebuild the pocket base model from scratch and check it reaches the shipped model's quality (3-8 minutes).
test-rebuild: setup
	$(PY) -m pytest -m rebuild $(PYTEST_ARGS)

jupyter: setup
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 notebooks/

# Rebuild the pocket base model from scratch on this machine (the lab ships one; this shows yours matches it).
pocket: setup
	$(PY) -m lab_utils build-pocket

prefetch: setup
	$(PY) -m lab_utils prefetch --profile $(PROFILE)

ready: setup
	$(PY) -m lab_utils ready --profile $(PROFILE)

# Git hooks through the pre-commit framework (.pre-commit-config.yaml): nbstripout and ruff before each commit.
hooks: setup
	$(VENV)/bin/pre-commit install

strip: setup
	$(PY) -m lab_utils strip-notebooks notebooks/*.ipynb

clean-runs:
	rm -rf runs/
