#!/usr/bin/env bash
# Perplexity of every kv_cache_dtype on GPL-3 (llama-perplexity's method), ctx 512 and 2048, with
# the delta against an fp32 KV cache, as a Markdown table on stdout (progress on stderr).
#
# Static int8 scales are calibrated on the BUILT-IN calibration sample (the text used for
# perplexity stays held out): per tensor and per head with the default method of `calibrate`
# (separate K and V scales), per tensor with the shared K/V scale only (a plain vLLM file), per
# tensor with plain max (amax/127, shared: the vendor guide's calibration), and the 1.0 default.
# int8_pertoken is also measured without its Hadamard rotation, int4_pertoken without its int8 residual, for comparison.
# llama.cpp's own perplexity (f16, q8_0, q4_0 and q4_1 K+V, flash attention) is added as reference rows: through
# llama-cpp-python when the module is installed, else through llama.cpp's llama-perplexity binary
# (scripts/oracle/llama_bin.py says where) when it is built (set ORACLE=0 to skip; cached in OUT).
# llama.cpp's f32 KV is not a separate row: with flash attention it measured the same as f16 to 6 digits.
#
# Environment: MODEL (GGUF path, or `gemma` / `smollm2` for the models fetch-model.sh fetches), TEXT,
# CTXS ("512 2048"), CHUNKS (max chunks per ctx; default all),
# THREADS (2), OUT (work dir, default .build/bench-accuracy/<model>), ORACLE (1).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-models/gemma-3-270m-q4_k_m.gguf}
case $MODEL in
  gemma) MODEL=models/gemma-3-270m-q4_k_m.gguf ;;
  smollm2) MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf ;;
esac
[[ -f $MODEL ]] || MODEL=/work/models/$(basename "$MODEL")
TEXT=${TEXT:-/usr/share/common-licenses/GPL-3}
CTXS=${CTXS:-"512 2048"}
CHUNKS=${CHUNKS:-}
THREADS=${THREADS:-2}
OUT=${OUT:-.build/bench-accuracy/$(basename "$MODEL" .gguf)}
ORACLE=${ORACLE:-1}
[[ -f $MODEL ]] || { echo "bench-accuracy: model not found: $MODEL (run 'make model' or 'make model-smollm2')" >&2; exit 1; }
[[ -f $TEXT ]] || { echo "bench-accuracy: text not found: $TEXT" >&2; exit 1; }
mkdir -p "$OUT"

echo "building kvant-eval (release)..." >&2
scripts/swiftw build -c release --product kvant-eval >&2
EVAL=.build/release/kvant-eval

echo "calibrating on the built-in sample..." >&2
$EVAL calibrate --model "$MODEL" --threads "$THREADS" --output "$OUT/scales_pertensor.json" > "$OUT/calib_pertensor.json"
$EVAL calibrate --model "$MODEL" --threads "$THREADS" --per-head --output "$OUT/scales_perhead.json" > "$OUT/calib_perhead.json"
$EVAL calibrate --model "$MODEL" --threads "$THREADS" --shared-kv-scale --output "$OUT/scales_pertensor_shared.json" > "$OUT/calib_pertensor_shared.json"
$EVAL calibrate --model "$MODEL" --threads "$THREADS" --method max --shared-kv-scale --output "$OUT/scales_pertensor_max.json" > "$OUT/calib_pertensor_max.json"
METHOD=$(jq -r .method "$OUT/calib_pertensor.json")

# name|kv_cache_dtype|extra kvant-eval arguments
ROWS=(
  "fp32|fp32|"
  "fp16|fp16|"
  "bf16|bf16|"
  "int8_pertoken|int8_pertoken|"
  "int8_pertoken, no Hadamard rotation|int8_pertoken|--no-kv-rotation"
  "int8_pertensor, calibrated ($METHOD, separate K/V scales)|int8_pertensor|--quantization-param-path $OUT/scales_pertensor.json"
  "int8_pertensor_perhead, calibrated per head ($METHOD, separate K/V scales)|int8_pertensor_perhead|--quantization-param-path $OUT/scales_perhead.json"
  "int8_pertensor, calibrated ($METHOD, shared K/V scale only: a plain vLLM file)|int8_pertensor|--quantization-param-path $OUT/scales_pertensor_shared.json"
  "int8_pertensor, default 1.0|int8_pertensor|--default-scales"
  "int4_pertoken (4-bit, rotated; last 4 blocks + token 0 at int8)|int4_pertoken|"
  "int4_pertoken without the int8 residual (every position 4-bit)|int4_pertoken|--int4-recent-blocks 0"
)
if [[ $METHOD != max ]]; then
  ROWS+=("int8_pertensor, calibrated (max: amax/127, shared K/V scale: the vendor guide's calibration)|int8_pertensor|--quantization-param-path $OUT/scales_pertensor_max.json")
fi
HAVE_ORACLE=0 ORACLE_SCRIPT=
if [[ $ORACLE == 1 ]] && python3 -c "import llama_cpp" 2>/dev/null; then
  HAVE_ORACLE=1 ORACLE_SCRIPT=scripts/oracle/llama_perplexity.py
elif [[ $ORACLE == 1 ]] && python3 -c "import sys; sys.path.insert(0, 'scripts/oracle'); import llama_bin, os; llama_bin.binary('llama-perplexity')" 2>/dev/null; then
  HAVE_ORACLE=1 ORACLE_SCRIPT=scripts/oracle/llama_perplexity_bin.py
fi
ORACLE_TYPES="f16 q8_0 q4_0 q4_1"

declare -A PPL
for ctx in $CTXS; do
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name dtype extra <<< "$row"
    echo "ctx $ctx: $name" >&2
    # shellcheck disable=SC2086
    r=$($EVAL perplexity --model "$MODEL" --threads "$THREADS" --file "$TEXT" --ctx "$ctx" ${CHUNKS:+--chunks $CHUNKS} \
          --kv-cache-dtype "$dtype" $extra)
    PPL["$name|$ctx"]=$(jq -r .perplexity <<< "$r")
    PPL["scored|$ctx"]=$(jq -r .scored_tokens <<< "$r")
  done
  if [[ $HAVE_ORACLE == 1 ]]; then
    for t in $ORACLE_TYPES; do
      # Cached per (model, text, kv type, ctx, chunks, oracle): the oracle does not change between Kvant runs.
      cache="$OUT/$(basename "$ORACLE_SCRIPT" .py)_$(basename "$MODEL" .gguf)_$(basename "$TEXT")_${t}_ctx${ctx}_chunks${CHUNKS:-all}.json"
      if [[ ! -s $cache ]]; then
        echo "ctx $ctx: llama.cpp $t" >&2
        python3 "$ORACLE_SCRIPT" --model "$MODEL" --file "$TEXT" --ctx "$ctx" --threads "$THREADS" \
          --type-kv $t --flash-attn ${CHUNKS:+--chunks $CHUNKS} > "$cache"
      fi
      PPL["llama.cpp $t|$ctx"]=$(jq -r .perplexity "$cache")
    done
  fi
done

delta() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{100 * (a / b - 1):+.2f} %')" "$1" "$2"; }
header="| KV cache |"; sep="|---|"
for ctx in $CTXS; do header+=" PPL ctx $ctx | Δ vs fp32 |"; sep+="---:|---:|"; done
echo
echo "$header"
echo "$sep"
for row in "${ROWS[@]}"; do
  IFS='|' read -r name dtype extra <<< "$row"
  line="| Kvant $name |"
  for ctx in $CTXS; do
    line+=" $(printf %.4f "${PPL[$name|$ctx]}") | $(delta "${PPL[$name|$ctx]}" "${PPL[fp32|$ctx]}") |"
  done
  echo "$line"
done
if [[ $HAVE_ORACLE == 1 ]]; then
  for t in $ORACLE_TYPES; do
    line="| llama.cpp $t K+V (flash attn; Δ vs llama.cpp f16) |"
    for ctx in $CTXS; do
      line+=" $(printf %.4f "${PPL[llama.cpp $t|$ctx]}") | $(delta "${PPL[llama.cpp $t|$ctx]}" "${PPL[llama.cpp f16|$ctx]}") |"
    done
    echo "$line"
  done
fi
echo
scored=(); for ctx in $CTXS; do scored+=("ctx $ctx: ${PPL[scored|$ctx]} scored tokens"); done
echo "Text $(basename "$TEXT"), model $(basename "$MODEL"), $THREADS threads, ${CHUNKS:-all} chunks ($(IFS=';'; echo "${scored[*]}" | sed 's/;/; /g'))."
echo "Calibration: built-in sample, method $METHOD (per-layer clip and saturation in $OUT/calib_*.json)."
