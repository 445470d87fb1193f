#!/usr/bin/env bash
# Kernel A/B: the int8 matmul kernels of BASE (a git revision, default main) against the working tree's, bit-identity
# and one-thread CPU time on Gemma 3 270M's layer shapes (scripts/bench/kernels_ab.c says what it measures).
# Usage: scripts/bench/kernels-ab.sh [BASE]     Needs clang (the CKernels target's compiler flags).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
base=${1:-main}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/old"
git -C "$here" show "$base:Sources/CKernels/quants.c" > "$tmp/old/quants.c"
git -C "$here" show "$base:Sources/CKernels/quants_int8.h" > "$tmp/old/quants_int8.h"
# The base's public symbols get an old_ prefix so that both link into one program.
sed -i -e 's/\bkvant_\([a-z0-9_]*\)(/old_kvant_\1(/g' "$tmp/old/quants.c"
F=(-O3 -mavx2 -mfma -mf16c -fno-math-errno -w -I"$here/Sources/CKernels/include")
clang "${F[@]}" -I"$tmp/old" -c "$tmp/old/quants.c" -o "$tmp/old.o"
clang "${F[@]}" -I"$here/Sources/CKernels" -c "$here/Sources/CKernels/quants.c" -o "$tmp/new.o"
clang "${F[@]}" "$here/scripts/bench/kernels_ab.c" "$tmp/old.o" "$tmp/new.o" -o "$tmp/kernels_ab"
echo "base $(git -C "$here" rev-parse --short "$base") vs working tree $(git -C "$here" rev-parse --short HEAD)$(git -C "$here" diff --quiet -- Sources/CKernels || echo ' (uncommitted changes)'), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load $(cut -d' ' -f1-3 /proc/loadavg)"
"$tmp/kernels_ab"
