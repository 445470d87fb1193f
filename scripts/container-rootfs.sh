#!/usr/bin/env bash
# Builds (once) and caches a minimal Debian bookworm root filesystem with systemd, for the
# systemd tier of the tests. Prints the path of the cached tarball.
# The mirror is the one apt on this machine already uses.
set -euo pipefail
cache=${KVANT_ROOTFS_CACHE:-/var/cache/kvant}
tarball=$cache/rootfs-bookworm-systemd.tar.zst
if [ -s "$tarball" ]; then echo "$tarball"; exit 0; fi
mkdir -p "$cache"
mirror=$(grep -h -m1 -E '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -1 || true)
[ -n "$mirror" ] || mirror=$(grep -h -m1 -E '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' || true)
[ -n "$mirror" ] || { echo "container-rootfs: cannot find the apt mirror in /etc/apt" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$tmp/rootfs" "$mirror" >"$tmp/log" 2>&1 \
    || { tail -20 "$tmp/log" >&2; exit 1; }
rm -f "$tmp"/rootfs/var/cache/apt/archives/*.deb
tar -C "$tmp/rootfs" -I 'zstd -T0 -3' -cf "$tarball.partial" .
mv "$tarball.partial" "$tarball"
echo "$tarball"
