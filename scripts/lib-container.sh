# Helpers to boot a throwaway Debian container with a real systemd (systemd-nspawn) and run
# commands in it. Sourced by scripts/systemd-test.sh. Facts: shared/docs/systemd-testing.md.
# Needs root, systemd-container, zstd; the rootfs comes from scripts/container-rootfs.sh.

# container_boot ROOTFS_DIR NAME [extra nspawn args…]: boots in the background, sets CT_NSPAWN_PID, CT_PID1.
container_boot() {
    local rootfs=$1 name=$2; shift 2
    systemd-nspawn --boot --register=no --keep-unit --console=read-only --quiet \
        -M "$name" -D "$rootfs" "$@" >"$rootfs.console.log" 2>&1 &
    CT_NSPAWN_PID=$!
    CT_PID1=""
    local i pid
    for i in $(seq 1 100); do
        for pid in $(pgrep -P "$CT_NSPAWN_PID" 2>/dev/null) $(pgrep -f "systemd" 2>/dev/null); do
            if grep -qE "^NSpid:\s+$pid\s+1$" /proc/$pid/status 2>/dev/null && \
               [ "$(readlink /proc/$pid/exe 2>/dev/null)" != "" ] && \
               readlink /proc/$pid/exe | grep -q systemd; then
                # the container's PID 1 must descend from our nspawn
                local p=$pid
                while [ "$p" -gt 1 ]; do
                    [ "$p" = "$CT_NSPAWN_PID" ] && { CT_PID1=$pid; break 3; }   # out of while, for pid, for i
                    p=$(awk '/^PPid:/{print $2}' /proc/$p/status 2>/dev/null || echo 1)
                done
            fi
        done
        sleep 0.1
    done
    [ -n "$CT_PID1" ] || { echo "container: PID 1 of $name not found" >&2; return 1; }
    for i in $(seq 1 100); do
        local st
        st=$(ct systemctl is-system-running --wait 2>/dev/null || true)
        case "$st" in running|degraded) return 0;; esac
        sleep 0.2
    done
    echo "container: $name did not finish booting" >&2; return 1
}

# ct CMD…: runs a command inside the container (all namespaces of its PID 1).
ct() { nsenter -t "$CT_PID1" -a "$@"; }

# container_stop: SIGTERM to nspawn until it exits; SIGKILL after 30 s.
container_stop() {
    [ -n "${CT_NSPAWN_PID:-}" ] || return 0
    local i
    for i in $(seq 1 30); do
        kill -0 "$CT_NSPAWN_PID" 2>/dev/null || { CT_NSPAWN_PID=""; return 0; }
        kill -TERM "$CT_NSPAWN_PID" 2>/dev/null || true
        sleep 1
    done
    kill -KILL "$CT_NSPAWN_PID" 2>/dev/null || true
    [ -n "${CT_PID1:-}" ] && kill -KILL "$CT_PID1" 2>/dev/null || true
    CT_NSPAWN_PID=""
}
