#!/usr/bin/env bash
# The x16 weight repack against ggml's layout: one thread's CPU time per product on Gemma 3 270M's shapes
# (scripts/bench/x16_ab.c says what it measures). Usage: scripts/bench/x16-ab.sh     Needs clang.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
F=(-O3 -mavx2 -mfma -mf16c -fno-math-errno -w -I"$here/Sources/CKernels/include")
clang "${F[@]}" -c "$here/Sources/CKernels/quants.c" -o "$tmp/quants.o"
clang "${F[@]}" -c "$here/Sources/CKernels/q0x16.c" -o "$tmp/q0x16.o"
clang "${F[@]}" "$here/scripts/bench/x16_ab.c" "$tmp/quants.o" "$tmp/q0x16.o" -o "$tmp/x16_ab"
echo "commit $(git -C "$here" rev-parse --short HEAD), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
"$tmp/x16_ab"
