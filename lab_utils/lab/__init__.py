"""Stage `lab` (the top layer): the run configuration resolved once (runconfig), readiness checks, the runner behind
`make lab`, the report, the quizzes, what notebook 00 shows (environment), and notebook helpers (notebooks)."""
