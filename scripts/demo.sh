#!/usr/bin/env bash
# The main job in a few minutes: start kvantd on the default model with an int8 KV cache,
# generate, calibrate static scales, switch to int8_pertensor with them, generate again,
# hot-reload the scales, read the statistics, stop cleanly. Run through `make demo`; `make demo MODEL=smollm2`
# (KVANT_MODEL=…/SmolLM2-135M-Instruct.Q4_1.gguf) does the same on the chat model: the prompt in its ChatML
# template, per-head scales (3 KV heads) and int8_pertensor_perhead.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/.build/release
model=${KVANT_MODEL:-$here/models/gemma-3-270m-q4_k_m.gguf}
run=$(mktemp -d /tmp/kvant-demo.XXXXXX)
sock=$run/kvantd.sock
export KVANT_SOCKET=$sock
ctl() { echo; printf '\033[1m$ kvantctl'; printf ' %q' "$@"; printf '\033[0m\n'; "$bin/kvantctl" "$@"; }
daemon_pid=""
cleanup() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then kill -TERM "$daemon_pid"; wait "$daemon_pid" || true; fi
    rm -rf "$run"
}
trap cleanup EXIT
[ -f "$model" ] || { echo "demo: model not found: $model (make model / make model-smollm2)" >&2; exit 1; }

case $(basename "$model") in
    SmolLM2*)
        prompt=$'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat are the three laws of thermodynamics?<|im_end|>\n<|im_start|>assistant\n'
        static=int8_pertensor_perhead per_head=(--per-head) ;;
    *)
        prompt="The three laws of thermodynamics are"
        static=int8_pertensor per_head=() ;;
esac

printf '\033[1m== kvantd: socket %s, model directory %s\033[0m\n' "$sock" "$(dirname "$model")"
"$bin/kvantd" --socket "$sock" --allowed-dir "$(dirname "$model")" --allowed-dir "$run" \
    --kv-cache-bytes $((256 * 1024 * 1024)) --threads 2 --log-level notice 2>"$run/kvantd.log" &
daemon_pid=$!
for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$run/kvantd.log"; echo "demo: kvantd did not bind $sock" >&2; exit 1; }

ctl load-model "$model" --kv-cache-dtype int8_pertoken
ctl generate "$prompt" --max-tokens 48 --temperature 0
ctl stats
ctl calibrate --output "$run/kv_cache_scales.json" "${per_head[@]}"
echo; echo "--- $run/kv_cache_scales.json (head)"; head -c 400 "$run/kv_cache_scales.json"; echo " …"
ctl set-kv-dtype "$static" --quantization-param-path "$run/kv_cache_scales.json"
ctl generate "$prompt" --max-tokens 48 --temperature 0
ctl reload-scales
ctl stats

echo; printf '\033[1m== stopping kvantd (SIGTERM)\033[0m\n'
kill -TERM "$daemon_pid"; rc=0; wait "$daemon_pid" || rc=$?; daemon_pid=""
echo "kvantd exited with status $rc; its log:"
sed 's/^/  /' "$run/kvantd.log" | tail -20
[ $rc -eq 0 ]
