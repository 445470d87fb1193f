#!/usr/bin/env bash
# make install: kvantd and kvantctl into PREFIX/bin, the systemd units, the default config
# into /etc/kvant/kvantd.toml (kept if present), a `kvant` system user and group, and
# /var/lib/kvant/models for model files.
#   usage: scripts/install.sh [--uninstall] PREFIX   (env KVANT_BIN: directory of the built binaries,
#          default .build/release; UNITDIR: default /etc/systemd/system)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
uninstall=0
if [ "${1:-}" = "--uninstall" ]; then uninstall=1; shift; fi
prefix=${1:-/usr/local}
unitdir=${UNITDIR:-/etc/systemd/system}
if [ $uninstall = 1 ]; then
    systemctl disable --now kvantd.socket kvantd.service 2>/dev/null || true
    rm -f "$prefix/bin/kvantd" "$prefix/bin/kvantctl" "$unitdir/kvantd.service" "$unitdir/kvantd.socket"
    echo "uninstalled (kept /etc/kvant, /var/lib/kvant and the kvant user)"; exit 0
fi
bin=${KVANT_BIN:-$here/.build/release}
for b in kvantd kvantctl; do [ -x "$bin/$b" ] || { echo "install: $bin/$b missing; run make build" >&2; exit 1; }; done
getent group kvant >/dev/null || groupadd --system kvant
getent passwd kvant >/dev/null || useradd --system --gid kvant --home-dir /var/lib/kvant --shell /usr/sbin/nologin kvant
install -d "$prefix/bin" "$unitdir" /etc/kvant
install -m 0755 "$bin/kvantd" "$bin/kvantctl" "$prefix/bin/"
# The units name /usr/bin/kvantd; point them at PREFIX/bin.
for u in kvantd.service kvantd.socket; do
    sed "s#/usr/bin/kvant#$prefix/bin/kvant#g" "$here/systemd/$u" > "$unitdir/$u"
done
[ -f /etc/kvant/kvantd.toml ] || install -m 0644 "$here/config/kvantd.toml" /etc/kvant/kvantd.toml
# The state directories (not recursively: models may be read-only mounts or shared files).
for d in /var/lib/kvant /var/lib/kvant/models /var/lib/kvant/scales; do
    [ -d "$d" ] || install -d -m 0755 "$d"
    chown kvant:kvant "$d"
done
command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
echo "installed: $prefix/bin/kvantd, $prefix/bin/kvantctl, $unitdir/kvantd.{service,socket}, /etc/kvant/kvantd.toml"
echo "next: put a model under /var/lib/kvant/models, set 'model' in /etc/kvant/kvantd.toml, then: systemctl enable --now kvantd"
