#!/bin/sh
# Runs `systemd-analyze verify` on kvantd.service and kvantd.socket.
# verify checks that ExecStart's binary exists; when /usr/bin/kvantd is not installed, the
# check runs in a private mount namespace where an overlay on /usr/bin adds the built binary
# (needs root; nothing on the host changes).
#   usage: systemd/verify.sh [path/to/kvantd]   (default .build/debug/kvantd)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
units="$here/kvantd.service $here/kvantd.socket"
if [ -x /usr/bin/kvantd ]; then
    exec systemd-analyze verify $units
fi
binary=$(realpath "${1:-$here/../.build/debug/kvantd}")
[ -x "$binary" ] || { echo "verify.sh: $binary not built (swift build --product kvantd)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/upper" "$tmp/work"
cp "$binary" "$tmp/upper/kvantd"
unshare -m sh -c "mount --make-rprivate / && \
  mount -t overlay overlay -o lowerdir=/usr/bin,upperdir=$tmp/upper,workdir=$tmp/work /usr/bin && \
  systemd-analyze verify $units"
