"""Stage `lab` (the top layer), the orchestration: the run configuration resolved once (runconfig) and its file
(config_file), readiness checks, the runner behind `make lab`, what notebook 00 shows (environment), and keeping
notebooks clean (notebooks)."""
