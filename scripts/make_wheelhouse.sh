#!/usr/bin/env bash
# An offline room: every wheel the lab installs for this kind of machine (llama.cpp's built once) into one folder.
# On each learner's machine: `make setup WHEELHOUSE=wheelhouse` installs from it with no internet. Wheels are per
# operating system, CPU architecture and Python version: build one folder per kind of machine in the room.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${VENV:-.venv}/bin/python
OUT=${WHEELHOUSE:-wheelhouse}
EXTRA=${LAB_EXTRA:-auto}   # cpu | gpu | auto, as in setup_env.sh
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
if [ "$EXTRA" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then EXTRA=gpu; else EXTRA=cpu; fi
fi
EXTRAS="$EXTRA,test,llamacpp"  # llama.cpp too: a learner's machine may have no compiler, or no time to build it
pip_args=(--disable-pip-version-check)
if [ "$EXTRA" = cpu ] && curl -s --max-time 5 -o /dev/null "$TORCH_CPU_INDEX/"; then
  pip_args+=(--extra-index-url "$TORCH_CPU_INDEX")  # torch's CPU build (as setup_env.sh installs it)
fi
mkdir -p "$OUT"
echo "wheelhouse: collecting the wheels of the lab's [$EXTRAS] extras into $OUT (a few GB; llama.cpp builds once)"
# setuptools: the lab's own build backend, so `pip install -e .` works offline too.
CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" "$PYTHON" -m pip wheel "${pip_args[@]}" -q -w "$OUT" ".[$EXTRAS]" "setuptools>=68"
rm -f "$OUT"/lab_utils-*.whl  # the lab itself installs from the repository, not from a wheel
# Check: everything resolves from the folder alone, as it will in the room.
PIP_FIND_LINKS= PIP_INDEX_URL= PIP_EXTRA_INDEX_URL= "$PYTHON" -m pip install "${pip_args[@]}" --dry-run -q --no-index --find-links "$OUT" --ignore-installed ".[$EXTRAS]"
echo "wheelhouse: $(ls "$OUT" | wc -l) wheels, $(du -sh "$OUT" | cut -f1), in $OUT; install with: make setup WHEELHOUSE=$OUT"
