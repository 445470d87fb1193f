#!/usr/bin/env bash
# KV-cache capacity per dtype as the daemon reports it (`kvantctl stats --json`: capacity_tokens, the int4
# residual rings), for each model and kv_cache_bytes given; max_num_seqs and max_num_batched_tokens are the
# daemon's defaults (16, 64) unless MAX_NUM_SEQS / MAX_NUM_BATCHED_TOKENS are set. Only loads the model and reads
# `stats`: nothing is generated, so a busy machine gives the same figures.
#
#   scripts/bench/kv_capacity.sh [model.gguf ...]
#   BUDGETS="268435456 67108864" DTYPES="int4_pertoken int8_pertoken" scripts/bench/kv_capacity.sh models/*.gguf
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.build/release}
BUDGETS=${BUDGETS:-"268435456 67108864"}
DTYPES=${DTYPES:-"int4_pertoken int8_pertoken"}
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(models/gemma-3-270m-q4_k_m.gguf models/SmolLM2-135M-Instruct.Q4_1.gguf)
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
pid=
printf '| model | kv_cache_bytes | kv_cache_dtype | residual_bytes_per_sequence | residual_rings | residual_bytes | block_pool_bytes | capacity_tokens |\n'
printf '|---|---|---|---|---|---|---|---|\n'
for model in "${MODELS[@]}"; do
  real=$(realpath "$model")
  for budget in $BUDGETS; do
    for dtype in $DTYPES; do
      cat > "$dir/kvantd.toml" <<EOF
socket = "$dir/kvantd.sock"
allowed_dirs = ["$(dirname "$real")"]
kv_cache_bytes = $budget
max_num_seqs = ${MAX_NUM_SEQS:-16}
max_num_batched_tokens = ${MAX_NUM_BATCHED_TOKENS:-64}
http_port = 0
log_level = "error"
EOF
      "$BIN/kvantd" --config "$dir/kvantd.toml" --no-http >"$dir/log" 2>&1 &
      pid=$!
      for _ in $(seq 1 300); do [ -S "$dir/kvantd.sock" ] && break; sleep 0.1; done
      if out=$("$BIN/kvantctl" load-model --socket "$dir/kvantd.sock" --kv-cache-dtype "$dtype" "$real" 2>&1) \
         && stats=$("$BIN/kvantctl" stats --socket "$dir/kvantd.sock" --json); then
        python3 - "$stats" "$(basename "$model")" "$budget" "$dtype" <<'EOF'
import json, sys
s = json.loads(sys.argv[1])
kv = s.get("kv_cache", s)
f = lambda k: "{:,}".format(kv[k]).replace(",", " ") if isinstance(kv.get(k), int) else "–"
print(f"| {sys.argv[2]} | {int(sys.argv[3]) >> 20} MiB | {sys.argv[4]} | {f('residual_bytes_per_sequence')} | "
      f"{f('residual_rings')} | {f('residual_bytes')} | {f('block_pool_bytes')} | {f('capacity_tokens')} |")
EOF
      else
        printf '| %s | %s MiB | %s | refused: %s |||||\n' "$(basename "$model")" $((budget >> 20)) "$dtype" "$(echo "$out" | tr '\n' ' ' | cut -c1-160)"
      fi
      kill "$pid"; wait "$pid" 2>/dev/null || true; rm -f "$dir/kvantd.sock"
    done
  done
done
