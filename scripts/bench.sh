#!/usr/bin/env bash
# make bench: prefill and decode tokens/s of Kvant's executor next to llama.cpp's
# (llama-cpp-python, same GGUF file, same threads, same prompt), as ratios, in a Markdown table.
#   1. short context: 512 prompt tokens, then 128 decode steps;
#   2. long context: 3968 prompt tokens, then 64 decode steps at ~4 096 tokens of context,
#      for every KV dtype (int8 reads half the bytes of fp16 in attention).
# llama.cpp runs with flash attention (its fastest setting, and required for its q8_0 V cache).
# Benchmark on a quiet machine: llama.cpp busy-waits its threads and collapses under contention.
# Env: KVANT_MODEL, THREADS (2), REPEATS (3).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
model=${KVANT_MODEL:-$here/models/gemma-3-270m-q4_k_m.gguf}
threads=${THREADS:-2}
repeats=${REPEATS:-3}
text=/usr/share/common-licenses/GPL-3
eval_bin=.build/release/kvant-eval
[ -x "$eval_bin" ] || scripts/swiftw build -c release --product kvant-eval
scripts/install-oracles.sh >/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
scales=$tmp/kv_cache_scales.json
$eval_bin calibrate --model "$model" --output "$scales" >/dev/null 2>&1 || scales=""

field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
kvant() {  # dtype prompt gen context
    local extra=()
    case $1 in int8_pertensor*) [ -n "$scales" ] && extra=(--quantization-param-path "$scales");; esac
    $eval_bin bench --model "$model" --threads "$threads" --kv-cache-dtype "$1" --prompt-tokens "$2" \
        --gen-tokens "$3" --context "$4" --file "$text" --repeats "$repeats" "${extra[@]}" 2>/dev/null | tail -1
}
llama() {  # type_k/v prompt gen flash
    python3 scripts/oracle/llama_bench.py --model "$model" --threads "$threads" --type-k "$1" --type-v "$1" \
        --prompt-tokens "$2" --gen-tokens "$3" --repeat "$repeats" $4 2>/dev/null | tail -1
}
ratio() { python3 -c "print(f'{$1/$2:.2f}×')"; }

echo "Kvant vs llama.cpp $(python3 -c 'import llama_cpp; print(llama_cpp.__version__)'), $(basename "$model"), $threads threads, $(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
echo
echo "| context | Kvant KV | llama.cpp KV | Kvant prefill tok/s | llama.cpp prefill tok/s | ratio | Kvant decode tok/s | llama.cpp decode tok/s | ratio |"
echo "|---|---|---|---|---|---|---|---|---|"
row() {  # label kvant_dtype llama_type prompt gen ctx flash
    local k l kp kd lp ld
    k=$(kvant "$2" "$4" "$5" "$6"); l=$(llama "$3" "$4" "$5" "$7")
    kp=$(echo "$k" | field prefill_tps); kd=$(echo "$k" | field decode_tps)
    lp=$(echo "$l" | field prefill_tps); ld=$(echo "$l" | field decode_tps)
    echo "| $1 | $2 | $3${7:+ (flash attn)} | $kp | $lp | $(ratio "$kp" "$lp") | $kd | $ld | $(ratio "$kd" "$ld") |"
}
row "512 + 128" fp16 f16 512 128 1024 --flash-attn
row "512 + 128" int8_pertoken q8_0 512 128 1024 --flash-attn
row "3968 + 64" fp16 f16 3968 64 4096 --flash-attn
for d in int8_pertoken int8_pertensor; do row "3968 + 64" "$d" q8_0 3968 64 4096 --flash-attn; done
for d in bf16 fp32; do row "3968 + 64" "$d" f16 3968 64 4096 --flash-attn; done

echo
echo "KV-cache memory and peak RSS at 32 768 tokens of capacity (scripts/bench-memory.sh):"
echo
scripts/bench-memory.sh
