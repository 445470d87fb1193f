#!/usr/bin/env bash
# make bench: Kvant's prefill and decode speed next to llama.cpp's OWN binaries (llama-bench,
# llama-batched-bench; never the Python binding, whose per-token overhead made llama.cpp look ~1.4× slower),
# same GGUF, same threads, runs alternating Kvant / llama.cpp, medians, min–max and ratios, the load average
# and the CPU model, as a Markdown table on stdout and in a results file. What is measured and how:
# scripts/bench/bench.py (its docstring).
#
# llama.cpp's tools come from scripts/llama-cpp.sh (built once from the pinned llama-cpp-python 0.3.36 sdist,
# ~10 min, cached in ~/.cache/kvant). llama.cpp busy-waits its threads and collapses under contention, so
# benchmark on a quiet machine; the table records the load average of every case.
# Env: KVANT_MODEL, THREADS (2), RUNS (5), GEN (128 decode steps), ONLY (case-name substrings, or =NAME for one exact case, e.g. "pp512,=tg128,tg128 @"),
#      RESULTS (default .build/bench/bench-<UTC time>.md), SKIP_HTTP=1 (no HTTP-path table: scripts/bench_http.py).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
model=${KVANT_MODEL:-$here/models/gemma-3-270m-q4_k_m.gguf}
[ -f "$model" ] || scripts/fetch-model.sh
python3 -c "import gguf, numpy" 2>/dev/null || python3 -m pip install --quiet --root-user-action=ignore gguf numpy
llama_bin=$(scripts/llama-cpp.sh)
scripts/swiftw build -c release --product kvant-eval >&2
scripts/swiftw build -c release --product kvantd >&2
mkdir -p .build/bench
results=${RESULTS:-.build/bench/bench-$(date -u +%Y%m%dT%H%M%SZ).md}
python3 scripts/bench/bench.py --model "$model" --kvant-eval .build/release/kvant-eval --llama-bin "$llama_bin" \
    --threads "${THREADS:-2}" --runs "${RUNS:-5}" --gen "${GEN:-128}" --only "${ONLY:-}" --out "$results"
# The HTTP path: aggregate tokens/s and TTFT at 1/4/8/16 concurrent streaming clients, kvantd's OpenAI API
# next to llama.cpp's llama-server (same model, threads, KV type), and the HTTP layer's per-token overhead.
[ "${SKIP_HTTP:-0}" = 1 ] || python3 scripts/bench_http.py --model "$model" --threads "${THREADS:-2}" \
    --llama-server "$llama_bin/llama-server" | tee -a "$results"
# KV-cache memory and peak RSS at 32 768 tokens of capacity, Kvant next to llama-server (scripts/bench-memory.sh).
echo | tee -a "$results"
echo "KV-cache memory and peak RSS at 32 768 tokens of capacity (scripts/bench-memory.sh):" | tee -a "$results"
LLAMA_BIN="$llama_bin" scripts/bench-memory.sh | tee -a "$results"
