#!/usr/bin/env bash
# Installs the independent oracles used to regenerate golden fixtures and for `make bench`:
# gguf, numpy and llama-cpp-python (which compiles llama.cpp from source: ~10 minutes on 2 cores).
# Never needed by `make test`: its goldens are committed fixtures.
set -euo pipefail
python3 -c "import gguf, numpy" 2>/dev/null || python3 -m pip install --quiet --root-user-action=ignore gguf numpy
if ! python3 -c "import llama_cpp" 2>/dev/null; then
    apt-get install -y -qq cmake >/dev/null 2>&1 || true
    # Some virtual machines advertise AMX but fault on it (SIGILL): build with AMX off.
    CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'" \
        python3 -m pip install --root-user-action=ignore llama-cpp-python
fi
python3 -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
