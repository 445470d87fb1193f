#!/usr/bin/env bash
# Runs every test tier and ends with one summary line "kvant: N passed, N failed, N skipped".
#   1. swift test -c release: unit tests, the in-process daemon, and the real-model tests
#      (model: $KVANT_MODEL, default models/gemma-3-270m-q4_k_m.gguf; fetched by `make setup`).
#   2. the HTTP API tier: the official `openai` Python client and prometheus_client's parser against a
#      real kvantd on the real model (scripts/http_api_test.py; skipped with the reason when the
#      Python packages or the model are missing).
#   3. the systemd tier: a Debian container booted with systemd-nspawn runs kvantd as a
#      Type=notify service (scripts/systemd-test.sh).
#   4. the cluster tier: HAProxy (deploy/haproxy/haproxy.cfg) in front of 3 kvantd, rolling restart and
#      SIGKILL under 8 streaming clients (scripts/test_cluster.py; skipped with the reason without haproxy).
# Compute-heavy tests need a release build (debug Swift is 10-100x slower in kernels).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export KVANT_MODEL=${KVANT_MODEL:-$here/models/gemma-3-270m-q4_k_m.gguf}
[ -f "$KVANT_MODEL" ] || echo "test: tier 'real model' will be skipped: $KVANT_MODEL is missing (run: make model)"
log=$(mktemp)
passed=0; failed=0; skipped=0

echo "== tier 1+2+3: unit, in-process daemon, real model (swift test -c release)"
scripts/swiftw build -c release --build-tests 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\] (Compiling|Emitting|Linking|Write|Planning|Wrapping)' 
# KVANT_BUSY_CORE=1 (CI sets it): run the suite while another process keeps one core busy, the way a
# shared server runs it. Every test must pass so: none asserts speed, and they wait on events, not sleeps.
busy_pid=""
if [ "${KVANT_BUSY_CORE:-0}" = 1 ]; then
    if command -v stress-ng >/dev/null; then
        stress-ng --cpu 1 --timeout 7200 --quiet & busy_pid=$!
    else
        ( while :; do :; done ) & busy_pid=$!
    fi
    echo "test: one core kept busy by pid $busy_pid while the suite runs (KVANT_BUSY_CORE=1)"
fi
# Two runs: the daemon and HTTP tests (fake backend and socket clients, which wait on events) first, then the
# compute-heavy targets (kernels, KV cache, executor, real model). In one process the heavy suites' threads
# would compete with the daemon tests' actors and event loops for the same 2 cores, on top of the busy core.
daemon_targets='KvantDaemonTests|KvantHTTPTests'
for part in daemon compute; do
    if [ "$part" = daemon ]; then selection=(--filter "$daemon_targets"); else selection=(--skip "$daemon_targets"); fi
    echo "== tier 1+2+3, $part tests"
    scripts/swiftw test -c release --skip-build "${selection[@]}" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    # Swift Testing summary: "✔ Test run with N tests in M suites passed" or "✘ Test run with N tests ... failed after ... with K issues"
    n=$(grep -Eo 'Test run with [0-9]+ tests?' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
    nf=$(grep -E '^✘ Test ' "$log" | grep -v '^✘ Test run' | grep -c 'failed after' || true)
    ns=$(grep -Ec '^➜ Test .* skipped' "$log" || true)
    if [ "$rc" -ne 0 ] && [ "$nf" -eq 0 ]; then nf=1; fi
    passed=$((passed + n - nf - ns)); failed=$((failed + nf)); skipped=$((skipped + ns))
done
if [ -n "$busy_pid" ]; then kill "$busy_pid" 2>/dev/null; wait "$busy_pid" 2>/dev/null; fi

echo "== tier 4: HTTP API with the official openai client on the real model (scripts/http_api_test.py)"
scripts/swiftw build -c release --product kvantd 2>&1 | grep -E 'error|warning: unre' || true
python3 scripts/http_api_test.py --kvantd .build/release/kvantd --model "$KVANT_MODEL" \
    --chat-model "${KVANT_CHAT_MODEL:-$here/models/SmolLM2-135M-Instruct.Q4_1.gguf}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
p=$(grep -E '^ok ' "$log" | grep -vc '# SKIP' || true); f=$(grep -Ec '^not ok ' "$log" || true)
s=$(grep -Ec '^(ok .*# SKIP|1\.\.0 # SKIP)' "$log" || true)
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))

echo "== tier 5: systemd container"
if [ "$(id -u)" != 0 ]; then
    echo "test: tier 'systemd' skipped: needs root (systemd-nspawn)"; skipped=$((skipped + 1))
elif ! command -v systemd-nspawn >/dev/null; then
    echo "test: tier 'systemd' skipped: systemd-nspawn missing (apt-get install systemd-container)"; skipped=$((skipped + 1))
else
    scripts/systemd-test.sh 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    p=$(grep -Ec '^ok ' "$log" || true); f=$(grep -Ec '^not ok ' "$log" || true)
    s=$(grep -Ec '^1\.\.0 # SKIP' "$log" || true)   # e.g. the model is missing
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
fi
echo "== tier 6: several daemons behind HAProxy (scripts/test_cluster.py)"
python3 scripts/test_cluster.py --kvantd .build/release/kvantd --model "$KVANT_MODEL" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
p=$(grep -E '^ok ' "$log" | grep -vc '# SKIP' || true); f=$(grep -Ec '^not ok ' "$log" || true)
s=$(grep -Ec '^(ok .*# SKIP|1\.\.0 # SKIP)' "$log" || true)
if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
rm -f "$log"
echo "kvant: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
