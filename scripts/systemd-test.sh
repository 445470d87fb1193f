#!/usr/bin/env bash
# The real-systemd tier: boots a throwaway Debian bookworm container (systemd-nspawn, systemd 252)
# and runs kvantd as the Type=notify service of systemd/kvantd.service + kvantd.socket on the real
# model, with kv_cache_dtype int8_pertensor and a scale file. Prints one TAP line per check
# ("ok N - …" / "not ok N - …" followed by "# " diagnostics: systemctl status, journal).
#   usage: scripts/systemd-test.sh            (root; called by scripts/test.sh and `make test-systemd`)
#   env:   KVANT_MODEL (default models/gemma-3-270m-q4_k_m.gguf), KVANT_BIN (default .build/release),
#          KVANT_ROOTFS_CACHE (where scripts/container-rootfs.sh caches the rootfs tarball),
#          KVANT_KEEP=1 keeps the unpacked rootfs and the console log for inspection.
# Nothing on the host changes except a temporary directory under /var/tmp (removed on exit,
# also on failure and Ctrl-C). Facts behind it: docs/systemd.md ("Testing").
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
# shellcheck source=lib-container.sh
. "$here/scripts/lib-container.sh"

bin=${KVANT_BIN:-$here/.build/release}
model=${KVANT_MODEL:-$here/models/gemma-3-270m-q4_k_m.gguf}
watchdog_sec=2
scales=/var/lib/kvant/scales/kv_cache_scales.json
ct_model=/var/lib/kvant/models/$(basename "$model")
ct_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

skip() { echo "1..0 # SKIP systemd tier: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (systemd-nspawn)"
for c in systemd-nspawn nsenter zstd python3; do
    command -v "$c" >/dev/null || skip "$c missing (scripts/setup.sh installs systemd-container, zstd, util-linux)"
done
[ -f "$model" ] || skip "model $model missing (make model, or set KVANT_MODEL)"
if [ ! -x "$bin/kvantd" ] || [ ! -x "$bin/kvantctl" ]; then
    echo "# building kvantd and kvantctl (release)"
    scripts/swiftw build -c release >/dev/null || { echo "not ok 1 - build kvantd, kvantctl"; exit 1; }
fi
tarball=$(scripts/container-rootfs.sh) || { echo "not ok 1 - container rootfs (scripts/container-rootfs.sh)"; exit 1; }
# The binaries' Swift runtime (RUNPATH /opt/swift/usr/lib/swift/linux): bound read-only at the same path.
swiftlib=$(ldd "$bin/kvantd" | awk '/libswiftCore\.so/ {print $3}')
swiftlib=${swiftlib%/*}

t0=$(date +%s.%N)
work=$(mktemp -d /var/tmp/kvant-systemd-test.XXXXXX)
root=$work/rootfs
name=kvant-sysd-$$
cleanup() {
    trap - EXIT INT TERM
    container_stop
    if [ "${KVANT_KEEP:-0}" = 1 ]; then echo "# kept $work"; else rm -rf --one-file-system "$work"; fi
}
trap cleanup EXIT
trap 'echo "# interrupted"; exit 130' INT TERM

n=0; failures=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
# not_ok WHAT [extra diagnostics…]: the line, then the unit's status and journal as comments.
not_ok() {
    n=$((n + 1)); failures=$((failures + 1))
    echo "not ok $n - $1"; shift
    local line
    for line in "$@"; do echo "# $line"; done
    if [ -n "${CT_PID1:-}" ]; then
        cx systemctl status kvantd.service kvantd.socket --no-pager -l -n 0 2>&1 | sed 's/^/#   /'
        cx journalctl -u kvantd -n 50 --no-pager 2>&1 | sed 's/^/#   /'
    fi
}
# check WHAT COMMAND…: ok when COMMAND succeeds; its output goes into the diagnostics otherwise.
check() {
    local what=$1 out; shift
    if out=$("$@" 2>&1); then ok "$what"; else not_ok "$what" "$(printf '%s' "$out" | tail -15)"; fi
}
# cx CMD…: run in the container with a clean environment (root).
cx() { ct env -i PATH=$ct_path LANG=C.UTF-8 "$@"; }
prop() { cx systemctl show -p "$2" --value "$1"; }
# ctl ARGS…: kvantctl over /run/kvant/kvantd.sock inside the container, at most 60 s.
ctl() { cx timeout 60 kvantctl "$@"; }
# json EXPR: evaluates a Python expression over the JSON on stdin (bound to `d`) and prints it.
json() { python3 -c 'import json,sys; d=json.load(sys.stdin); v=eval(sys.argv[1]); print("" if v is None else v)' "$1"; }
# wait_until SECONDS COMMAND…: polls every 0.2 s.
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
wait_until() {
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}
is_active() { [ "$(prop "$1" ActiveState)" = active ]; }
status_has() { prop kvantd.service StatusText | grep -q -- "$1"; }
epoch_is_not() { [ "$(ctl stats --json | json 'd["kv_cache"]["scale_epoch"]')" != "$1" ]; }

# ---------------------------------------------------------------- the container
mkdir -p "$root"
tar -C "$root" -I zstd -xf "$tarball"
chroot "$root" groupadd --system kvant
chroot "$root" useradd --system --gid kvant --home-dir /var/lib/kvant --shell /usr/sbin/nologin kvant
chroot "$root" useradd --no-create-home --groups kvant alice   # an unprivileged member of socket_group
chroot "$root" useradd --no-create-home bob                    # and a user outside it
install -m 0755 "$bin/kvantd" "$bin/kvantctl" "$root/usr/bin/"
install -m 0644 systemd/kvantd.service systemd/kvantd.socket "$root/etc/systemd/system/"
mkdir -p "$root/etc/systemd/system/kvantd.service.d"
printf '[Service]\nWatchdogSec=%s\n' "$watchdog_sec" > "$root/etc/systemd/system/kvantd.service.d/10-test-watchdog.conf"
install -d -o 0 -g 0 -m 0755 "$root/var/lib/kvant"
install -d -m 0755 "$root/var/lib/kvant/models"
touch "$root$ct_model"                                   # mount point of the model (bound read-only)
install -d -m 0750 "$root/var/lib/kvant/scales"
chroot "$root" chown kvant:kvant /var/lib/kvant /var/lib/kvant/scales
# The shipped config, with the start-up model, int8_pertensor and its scale file switched on
# (and no HTTP listener: the container shares the host's network, where port 8000 may be taken).
install -d "$root/etc/kvant"
sed -e "s|^# model = .*|model = \"$ct_model\"|" \
    -e 's|^kv_cache_dtype = .*|kv_cache_dtype = "int8_pertensor"|' \
    -e "s|^# quantization_param_path = .*|quantization_param_path = \"$scales\"|" \
    -e 's|^kv_cache_bytes = .*|kv_cache_bytes = 67108864|' \
    -e 's|^threads = .*|threads = 2|' \
    -e 's|^shutdown_timeout_seconds = .*|shutdown_timeout_seconds = 2|' \
    -e 's|^http_port = .*|http_port = 0|' \
    config/kvantd.toml > "$root/etc/kvant/kvantd.toml"
# Scale files (vLLM kv_cache_scales.json): a uniform one to start with, a broken one (negative scale).
scale_file() {  # scale_file LAYER3_SCALE
    python3 - "$1" <<'PY'
import json, sys
layers = {str(l): (float(sys.argv[1]) if l == 3 else 0.05) for l in range(18)}
print(json.dumps({"model_type": "gemma3", "kv_cache": {"dtype": "int8", "scaling_factor": {"0": layers}}}))
PY
}
scale_file 0.05 > "$root$scales"
scale_file -0.5 > "$root/var/lib/kvant/scales/broken.json"
chroot "$root" chown kvant:kvant "$scales" /var/lib/kvant/scales/broken.json
# `make install` runs from the checkout, bound read-only at /opt/kvant-src, with the binaries at /opt/kvant-bin.
boot_args=(--bind-ro="$swiftlib:$swiftlib" --bind-ro="$model:$ct_model" --bind-ro="$here:/opt/kvant-src"
           --bind-ro="$(realpath "$bin"):/opt/kvant-bin")

if container_boot "$root" "$name" "${boot_args[@]}"; then
    ok "container boots systemd $(cx systemctl --version | awk 'NR==1 {print $2}') ($(elapsed "$t0") s since unpacking)"
else
    not_ok "container boots" "$(tail -20 "$root.console.log" 2>/dev/null)"
    echo "1..$n"; exit 1
fi
missing=$(cx ldd /usr/bin/kvantd 2>&1 | grep 'not found' || true)
if [ -z "$missing" ]; then ok "kvantd resolves every shared library in the container"; else not_ok "kvantd resolves every shared library" "$missing"; fi

# ---------------------------------------------------------------- start: Type=notify, READY=1 after the model loads
cx systemctl daemon-reload
ts=$(date +%s.%N)
if cx timeout 120 systemctl start kvantd.service && is_active kvantd.service; then
    started=1
    ok "systemctl start kvantd: active ($(elapsed "$ts") s, READY=1; status: $(prop kvantd.service StatusText))"
else
    started=0
    not_ok "systemctl start kvantd: active" "ActiveState=$(prop kvantd.service ActiveState) Result=$(prop kvantd.service Result)"
fi
main_pid=$(prop kvantd.service MainPID)

# ---------------------------------------------------------------- stats over the socket: model loaded, scales, epoch
stats=$(ctl stats --json 2>&1)
epoch1=$(printf '%s' "$stats" | json 'd["kv_cache"]["scale_epoch"]' 2>/dev/null)
sha1=$(printf '%s' "$stats" | json 'd["kv_cache"]["scale_sha256"]' 2>/dev/null)
want_sha1=$(cx sha256sum "$scales" | awk '{print $1}')
got=$(printf '%s' "$stats" | json '"%s %s %s" % (d["model"]["architecture"], d["model"]["kv_cache_dtype"], d["kv_cache"]["scale_path"])' 2>/dev/null)
if [ "$got" = "gemma3 int8_pertensor $scales" ] && [ -n "$epoch1" ] && [ "$sha1" = "$want_sha1" ]; then
    ok "kvantctl stats over /run/kvant/kvantd.sock right after start: gemma3 loaded, int8_pertensor, scale epoch $epoch1, sha256 ${sha1:0:12} = the file's"
else
    not_ok "kvantctl stats right after start: model loaded with the scale file" "got: $got epoch=$epoch1 sha256=$sha1 (file: $want_sha1)" "$(printf '%s' "$stats" | head -c 1500)"
fi

# ---------------------------------------------------------------- generate inside the sandbox (int8_pertensor KV cache)
out=$(ctl generate "The capital of France is" --max-tokens 8 --temperature 0 --json 2>&1)
got=$(printf '%s' "$out" | json '"%d %s" % (d["completion_tokens"], d["finish_reason"])' 2>/dev/null)
if [ "$got" = "8 length" ] && [ -n "$(printf '%s' "$out" | json 'd["text"].strip()')" ]; then
    ok "kvantctl generate under the unit's sandbox: 8 tokens ($(printf '%s' "$out" | json 'repr(d["text"])'))"
else
    not_ok "kvantctl generate under the unit's sandbox" "$(printf '%s' "$out" | tail -c 800)"
fi

# ---------------------------------------------------------------- reload with a new calibrated scale file
cal_out=$(ctl calibrate --output /var/lib/kvant/scales/calibrated.json --num-tokens 128 --json 2>&1)
if [ $? -eq 0 ]; then
    cx sh -c "cat /var/lib/kvant/scales/calibrated.json > $scales"
    want_sha2=$(cx sha256sum "$scales" | awk '{print $1}')
    cx systemctl reload kvantd.service
    if wait_until 30 epoch_is_not "$epoch1" && wait_until 30 is_active kvantd.service; then
        stats=$(ctl stats --json)
        epoch2=$(printf '%s' "$stats" | json 'd["kv_cache"]["scale_epoch"]')
        sha2=$(printf '%s' "$stats" | json 'd["kv_cache"]["scale_sha256"]')
        if [ "$sha2" = "$want_sha2" ] && [ "$epoch2" -gt "$epoch1" ] && [ "$sha2" != "$sha1" ] && status_has "reloaded scales epoch $epoch2"; then
            ok "systemctl reload kvantd with a calibrated scale file: active, epoch $epoch1 -> $epoch2, sha256 ${sha2:0:12}, STATUS says so"
        else
            not_ok "reload: new epoch and sha256" "epoch $epoch1 -> $epoch2, sha256 $sha2 (file $want_sha2)" "StatusText: $(prop kvantd.service StatusText)"
        fi
    else
        not_ok "systemctl reload kvantd: new epoch, active again" "ActiveState=$(prop kvantd.service ActiveState)" "StatusText: $(prop kvantd.service StatusText)"
    fi
else
    epoch2=$epoch1; sha2=$sha1
    not_ok "kvantctl calibrate inside the container (for the reload check)" "$(printf '%s' "$cal_out" | tail -5)"
fi

# ---------------------------------------------------------------- reload with a broken scale file: old scales stay
cx sh -c "cat /var/lib/kvant/scales/broken.json > $scales"
cx systemctl reload kvantd.service
if wait_until 30 status_has "reload failed" && wait_until 30 is_active kvantd.service; then
    stats=$(ctl stats --json)
    epoch3=$(printf '%s' "$stats" | json 'd["kv_cache"]["scale_epoch"]')
    sha3=$(printf '%s' "$stats" | json 'd["kv_cache"]["scale_sha256"]')
    health=$(ctl health --json | json 'd["status"]')
    status_line=$(cx systemctl status kvantd.service --no-pager -n 0 | grep -m1 'Status:')
    # logged at priority err (<3> prefix on stderr)
    journal=$(cx journalctl -u kvantd.service --no-pager -n 30 -o cat -p err | grep -m1 'reload failed')
    if [ "$epoch3" = "$epoch2" ] && [ "$sha3" = "$sha2" ] && [ "$health" = degraded ] \
       && printf '%s' "$status_line" | grep -q 'reload failed, serving with previous scales' \
       && [ "$(printf '%s' "$status_line" | grep -o 'layer 3: scale -0.5' | wc -l)" = 1 ] && [ -n "$journal" ] \
       && [ "$(prop kvantd.service MainPID)" = "$main_pid" ]; then
        ok "reload with a negative scale: still active, epoch $epoch3 and sha256 unchanged, health degraded, systemctl status and the journal (priority err) say why"
        echo "#   $status_line"
    else
        not_ok "reload with a broken scale file keeps the old scales" "epoch $epoch2 -> $epoch3, sha256 ${sha2:0:12} -> ${sha3:0:12}, health $health" \
            "status: $status_line" "journal: $journal"
    fi
else
    not_ok "reload with a broken scale file: failure in STATUS, still active" "ActiveState=$(prop kvantd.service ActiveState)" "StatusText: $(prop kvantd.service StatusText)"
fi
# ---------------------------------------------------------------- watchdog: WatchdogSec=2 does not kill a healthy daemon
w1=$(prop kvantd.service WatchdogTimestampMonotonic)
sleep $((2 * watchdog_sec + 1))
w2=$(prop kvantd.service WatchdogTimestampMonotonic)
if is_active kvantd.service && [ "$(prop kvantd.service MainPID)" = "$main_pid" ] && [ "$(prop kvantd.service NRestarts)" = 0 ] \
   && [ "${w2:-0}" -gt "${w1:-0}" ] && status_has "reload failed, serving with previous scales"; then
    ok "watchdog: WatchdogSec=${watchdog_sec}s, still active with the same MainPID after $((2 * watchdog_sec + 1)) s, WATCHDOG=1 received; the failed reload is still in STATUS"
else
    not_ok "watchdog: healthy daemon survives 2 periods of WatchdogSec=${watchdog_sec}s" \
        "MainPID $main_pid -> $(prop kvantd.service MainPID), NRestarts=$(prop kvantd.service NRestarts), WatchdogTimestampMonotonic $w1 -> $w2" \
        "StatusText: $(prop kvantd.service StatusText)"
fi

# ---------------------------------------------------------------- a valid file again: reload recovers
cx sh -c "cat /var/lib/kvant/scales/calibrated.json > $scales"
cx systemctl reload kvantd.service
epoch3=${epoch3:-$epoch2}
if wait_until 30 epoch_is_not "$epoch3" && wait_until 30 is_active kvantd.service \
   && [ "$(ctl health --json | json 'd["status"]')" = ok ] && ! status_has "reload failed"; then
    ok "reload with the calibrated file again: epoch $(ctl stats --json | json 'd["kv_cache"]["scale_epoch"]'), health ok, STATUS clear of the failure"
else
    not_ok "reload after a failed one recovers" "health: $(ctl health --json 2>&1)" "StatusText: $(prop kvantd.service StatusText)"
fi

# ---------------------------------------------------------------- watchdog: a hung daemon is killed and restarted
# SIGSTOP freezes every thread, so WATCHDOG=1 stops; systemd kills it after WatchdogSec (Result=watchdog)
# and Restart=on-failure brings it back (RestartSec=2), loading the model and scales again.
cx sh -c "kill -STOP $main_pid"
if wait_until 20 sh -c "[ \"\$(nsenter -t $CT_PID1 -a systemctl show -p NRestarts --value kvantd.service)\" = 1 ]" \
   && wait_until 30 is_active kvantd.service; then
    new_pid=$(prop kvantd.service MainPID)
    if [ "$new_pid" != "$main_pid" ] && cx journalctl -u kvantd.service --no-pager -o cat | grep -q 'Watchdog timeout' \
       && [ "$(ctl stats --json | json 'd["kv_cache"]["scale_sha256"]')" = "$sha2" ]; then
        ok "watchdog: a frozen kvantd (SIGSTOP) is killed after WatchdogSec=${watchdog_sec}s and restarted (MainPID $main_pid -> $new_pid) with the model and the calibrated scales"
    else
        not_ok "watchdog: a frozen kvantd is killed and restarted" "MainPID $main_pid -> $new_pid"
    fi
    main_pid=$new_pid
else
    not_ok "watchdog: a frozen kvantd (SIGSTOP) is killed with Result=watchdog and restarted" \
        "NRestarts=$(prop kvantd.service NRestarts) ActiveState=$(prop kvantd.service ActiveState)"
    cx sh -c "kill -CONT $main_pid" 2>/dev/null
fi

# ---------------------------------------------------------------- stop during a generate: drained, exit 0, Result=success
cx sh -c 'timeout 60 kvantctl generate "Once upon a time" --max-tokens 4000 --temperature 0 --json > /root/gen.json 2>&1 &'
running() { [ "$(ctl stats --json | json 'd["engine"]["requests_running"]')" = 1 ]; }
wait_until 20 running
ts=$(date +%s.%N)
cx timeout 90 systemctl stop kvantd.service 2>/dev/null   # (warns that kvantd.socket can still activate it)
stop_s=$(elapsed "$ts")
wait_until 10 cx grep -q finish_reason /root/gen.json
gen=$(cx cat /root/gen.json 2>&1)
gen_got=$(printf '%s' "$gen" | json '"%s %d" % (d["finish_reason"], d["completion_tokens"] > 0)' 2>/dev/null)
state="$(prop kvantd.service ActiveState) $(prop kvantd.service Result) $(prop kvantd.service ExecMainCode) $(prop kvantd.service ExecMainStatus)"
if [ "$state" = "inactive success 1 0" ] && [ "$gen_got" = "cancelled 1" ] && is_active kvantd.socket && cx test -S /run/kvant/kvantd.sock; then
    ok "systemctl stop kvantd during a generate: the request is cancelled after shutdown_timeout_seconds=2 with a reply (finish_reason cancelled, $(printf '%s' "$gen" | json 'd["completion_tokens"]') tokens), inactive, Result=success, exit status 0 ($stop_s s); kvantd.socket keeps listening"
else
    not_ok "systemctl stop kvantd during a generate: reply, inactive, Result=success, ExecMainStatus=0" \
        "ActiveState Result ExecMainCode ExecMainStatus: $state; stop took $stop_s s" "generate: $(printf '%s' "$gen" | tail -c 600)" \
        "kvantd.socket: $(prop kvantd.socket ActiveState)"
fi

# ---------------------------------------------------------------- socket activation: an unprivileged client starts the service
# As after a fresh boot: only kvantd.socket runs and /run/kvant is what the socket unit made of it.
cx systemctl stop kvantd.socket
cx rm -rf /run/kvant
cx systemctl start kvantd.socket
out=$(cx timeout 120 setpriv --reuid=alice --regid=alice --init-groups env -i PATH=$ct_path kvantctl stats --json 2>&1)
if [ "$(printf '%s' "$out" | json 'd["model"]["path"]' 2>/dev/null)" = "$ct_model" ] \
   && is_active kvantd.service && [ "$(prop kvantd.service TriggeredBy)" = kvantd.socket ]; then
    ok "socket activation: with only kvantd.socket started, the first kvantctl call of a socket_group member (not root) starts kvantd and is answered with the model loaded"
else
    not_ok "socket activation: kvantctl stats as alice (group kvant) starts kvantd and sees the model" "kvantctl: $out" \
        "$(cx ls -ld /run/kvant /run/kvant/kvantd.sock 2>&1)"
fi

out=$(cx setpriv --reuid=bob --regid=bob --init-groups env -i PATH=$ct_path kvantctl health 2>&1); rc=$?
if [ $rc = 7 ] && printf '%s' "$out" | grep -q 'permission_denied'; then
    ok "a user outside socket_group cannot connect: kvantctl exits 7 (permission_denied)"
else
    not_ok "a user outside socket_group cannot connect" "exit $rc: $out"
fi

# ---------------------------------------------------------------- stop both units: socket file removed
cx timeout 90 systemctl stop kvantd.socket kvantd.service
state="$(prop kvantd.service ActiveState) $(prop kvantd.service Result) $(prop kvantd.service ExecMainStatus) $(prop kvantd.socket ActiveState)"
if [ "$state" = "inactive success 0 inactive" ] && ! cx test -e /run/kvant/kvantd.sock; then
    ok "systemctl stop kvantd.socket kvantd: both inactive, Result=success, status 0, /run/kvant/kvantd.sock removed"
else
    not_ok "stop both units: socket file removed" "service/socket: $state" "$(cx ls -l /run/kvant 2>&1)"
fi

# ---------------------------------------------------------------- make install (scripts/install.sh) + systemctl enable --now
cx rm -f /usr/bin/kvantd /usr/bin/kvantctl /etc/systemd/system/kvantd.service /etc/systemd/system/kvantd.socket
cx systemctl daemon-reload
out=$(cx timeout 60 env KVANT_BIN=/opt/kvant-bin /opt/kvant-src/scripts/install.sh /usr/local 2>&1)
if [ $? -eq 0 ] && cx timeout 120 systemctl enable --now kvantd.service >/dev/null 2>&1 && is_active kvantd.service \
   && is_active kvantd.socket && [ "$(prop kvantd.service ExecMainPID)" != 0 ] \
   && [ "$(cx readlink -f /proc/"$(prop kvantd.service MainPID)"/exe)" = /usr/local/bin/kvantd ] \
   && [ "$(prop kvantd.service UnitFileState)" = enabled ] && [ "$(prop kvantd.socket UnitFileState)" = enabled ] \
   && [ "$(ctl health --json | json 'd["status"]')" = ok ]; then
    ok "make install PREFIX=/usr/local, systemctl enable --now kvantd: both units enabled, /usr/local/bin/kvantd active and healthy"
else
    not_ok "make install PREFIX=/usr/local + systemctl enable --now kvantd" "$out" \
        "ExecStart: $(prop kvantd.service ExecStart)"
fi
out=$(cx timeout 90 /opt/kvant-src/scripts/install.sh --uninstall /usr/local 2>&1)
if [ $? -eq 0 ] && ! is_active kvantd.service && ! cx test -e /usr/local/bin/kvantd \
   && ! cx test -e /etc/systemd/system/kvantd.service && cx test -f /etc/kvant/kvantd.toml; then
    ok "make uninstall: service stopped, binaries and units removed, /etc/kvant kept"
else
    not_ok "make uninstall" "$out"
fi

echo "1..$n"
echo "# systemd tier: $((n - failures)) of $n passed in $(elapsed "$t0") s"
[ "$failures" -eq 0 ]
