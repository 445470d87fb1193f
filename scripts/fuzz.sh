#!/usr/bin/env bash
# make fuzz: every libFuzzer harness (linked with lld through fuzz/toolset.json: gold crashes on the
# sanitizer objects) for FUZZ_SECONDS (default 60) seconds; fails on a crash, leak,
# timeout or out-of-memory. See fuzz/README.md.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
seconds=${FUZZ_SECONDS:-60}
harnesses=${FUZZ_TARGETS:-"line-codec scale-file gguf tokenizer http-body chat-template"}
scratch=.build-fuzz
echo "fuzz: building kvant-fuzz with -sanitize=fuzzer,address into $scratch"
scripts/swiftw build -c release --product kvant-fuzz --scratch-path "$scratch" \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DKVANT_LIBFUZZER --toolset fuzz/toolset.json 2>&1 \
    | grep -vE '^\[[0-9]+/[0-9]+\] (Compiling|Emitting|Linking|Write|Planning|Wrapping)|ld.gold: warning: Cannot export local symbol' || true
bin="$scratch/release/kvant-fuzz"
[ -x "$bin" ] || { echo "fuzz: build failed"; exit 1; }
failed=0; passed=0
for name in $harnesses; do
    mkdir -p "$scratch/corpus/$name"
    echo "== fuzz $name (${seconds}s)"
    if KVANT_FUZZ_TARGET=$name "$bin" "$scratch/corpus/$name" "fuzz/corpus/$name" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -detect_leaks=1 \
        -artifact_prefix="$scratch/crash-$name-" -print_final_stats=1 > "$scratch/$name.log" 2>&1; then
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)' "$scratch/$name.log" | tr '\n' ' '; echo
        passed=$((passed + 1))
    else
        echo "fuzz: $name FAILED; see $scratch/$name.log:"
        grep -E 'ERROR|SUMMARY|Test unit written|==[0-9]+==' "$scratch/$name.log" | head -20
        failed=$((failed + 1))
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
