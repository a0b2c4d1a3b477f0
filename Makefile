# The lab's two entry points: `make lab` (run every notebook) and `make test` (the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= auto
NOTEBOOKS ?=
PYTEST_ARGS ?=

.PHONY: setup lab test test-fast jupyter pocket prefetch ready hooks strip clean-runs

setup:
	@bash scripts/setup_env.sh

lab: setup
	$(PY) -m lab_utils run-lab --profile $(PROFILE) $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS))

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not notebook and not slow" $(PYTEST_ARGS)

jupyter: setup
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 notebooks/

pocket: setup
	$(PY) -m lab_utils build-pocket

prefetch: setup
	$(PY) -m lab_utils prefetch --profile $(PROFILE)

ready: setup
	$(PY) -m lab_utils ready --profile $(PROFILE)

hooks:
	cp scripts/pre-commit .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit

strip: setup
	$(PY) -m lab_utils strip-notebooks notebooks/*.ipynb

clean-runs:
	rm -rf runs/
