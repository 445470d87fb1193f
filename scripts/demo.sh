#!/usr/bin/env bash
# The main job in a few minutes: start kvantd on the default model with an int8 KV cache,
# generate, calibrate static scales, switch to int8_pertensor with them, generate again,
# hot-reload the scales, read the statistics, then use the OpenAI-compatible HTTP API with curl (a
# streamed chat completion on SmolLM2 when it is there, else a streamed completion on the default
# model) and scrape /metrics; stop cleanly. Run through `make demo`. HTTP_PORT (default 8000).
# `make demo MODEL=smollm2` (KVANT_MODEL=…/SmolLM2-135M-Instruct.Q4_1.gguf) does the same on the chat model: the
# prompt in its ChatML template, per-head scales (3 KV heads) and int8_pertensor_perhead.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/.build/release
model=${KVANT_MODEL:-$here/models/gemma-3-270m-q4_k_m.gguf}
run=$(mktemp -d /tmp/kvant-demo.XXXXXX)
sock=$run/kvantd.sock
http_port=${HTTP_PORT:-8000}
chat_model=${KVANT_CHAT_MODEL:-$here/models/SmolLM2-135M-Instruct.Q4_1.gguf}
export KVANT_SOCKET=$sock
ctl() { echo; printf '\033[1m$ kvantctl'; printf ' %q' "$@"; printf '\033[0m\n'; "$bin/kvantctl" "$@"; }
show() { echo; printf '\033[1m$ %s\033[0m\n' "$*"; }
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
"$bin/kvantd" --socket "$sock" --port "$http_port" --allowed-dir "$(dirname "$model")" --allowed-dir "$run" \
    --allowed-dir "$(dirname "$chat_model")" \
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

printf '\n\033[1m== the OpenAI-compatible HTTP API on 127.0.0.1:%s\033[0m\n' "$http_port"
api=http://127.0.0.1:$http_port
if [ -f "$chat_model" ] && "$bin/kvantctl" load-model "$chat_model" >/dev/null 2>"$run/chat-load.err"; then
    echo "(loaded the chat model $(basename "$chat_model"))"
    body='{"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 48, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}'
    show curl -sN "$api/v1/chat/completions" -H "'Content-Type: application/json'" -d "'$body'"
    curl -sN "$api/v1/chat/completions" -H 'Content-Type: application/json' -d "$body"
else
    [ -f "$chat_model" ] && echo "(the chat model does not load here: $(head -c 300 "$run/chat-load.err"); a completion on $(basename "$model") instead)"
    [ -f "$chat_model" ] || echo "(no chat model at $chat_model; a completion on $(basename "$model") instead)"
    body='{"prompt": "The three laws of thermodynamics are", "max_tokens": 24, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}'
    show curl -sN "$api/v1/completions" -H "'Content-Type: application/json'" -d "'$body'"
    curl -sN "$api/v1/completions" -H 'Content-Type: application/json' -d "$body"
fi
show "curl -s $api/metrics | grep -E '^kvant:(num_requests|kv_cache_usage|prompt_tokens|generation_tokens|request_success|time_to_first_token_seconds_(sum|count)|cache_config_info)'"
curl -s "$api/metrics" | grep -E '^kvant:(num_requests|kv_cache_usage|prompt_tokens|generation_tokens|request_success|time_to_first_token_seconds_(sum|count)|cache_config_info)'

echo; printf '\033[1m== stopping kvantd (SIGTERM)\033[0m\n'
kill -TERM "$daemon_pid"; rc=0; wait "$daemon_pid" || rc=$?; daemon_pid=""
echo "kvantd exited with status $rc; its log:"
sed 's/^/  /' "$run/kvantd.log" | tail -20
[ $rc -eq 0 ]
