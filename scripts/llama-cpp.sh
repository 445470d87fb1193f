#!/usr/bin/env bash
# Builds llama.cpp's own tools (the only fair speed/memory reference for `make bench`) from the source
# bundled in the pinned llama-cpp-python sdist, cached outside the repository, and prints the bin dir.
#
#   scripts/llama-cpp.sh            build if needed, print e.g. /root/.cache/kvant/llama.cpp-0.3.36/build/bin
#   scripts/llama-cpp.sh --rebuild  rebuild even if the binaries are there
#
# Layout: $KVANT_CACHE (default ~/.cache/kvant)/llama.cpp-0.3.36/{sdist,src,build}; build/kvant-stamp
# records the version, the sdist's sha256 and the flags used; the binaries are reused only if it matches.
# Targets: llama-bench llama-server llama-batched-bench llama-perplexity llama-cli llama-tokenize
# (cmake -DGGML_NATIVE=ON, Release, no curl, no tests; `nice -n 10`, 2 jobs: ~10 min on 2 cores).
#
# AMX: some of these VMs advertise AMX (amx_tile/amx_int8/amx_bf16 in /proc/cpuinfo) but fault with SIGILL
# on AMX instructions, and a -march=native build then dies in ggml's AMX kernel. Two guards:
#   1. before building, if /proc/cpuinfo lists amx_tile, a tiny C probe (request XTILEDATA, ldtilecfg,
#      tilezero, tilerelease) is compiled and run; if it does not exit cleanly AMX is turned off up front
#      (-mno-amx-tile -mno-amx-int8 -mno-amx-bf16 for C and C++; GCC's explicit -mno-* beat -march=native);
#   2. after building, a tiny llama-bench on the model (-p 16 -n 4); if it dies with SIGILL and AMX was on,
#      the build is redone with AMX off. Set LLAMA_NO_AMX=1 to force AMX off.
# Env: KVANT_CACHE, KVANT_MODEL (for the check; default models/gemma-3-270m-q4_k_m.gguf), LLAMA_NO_AMX.
set -euo pipefail
version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
targets=(llama-bench llama-server llama-batched-bench llama-perplexity llama-cli llama-tokenize)
here=$(cd "$(dirname "$0")/.." && pwd)
root=${KVANT_CACHE:-$HOME/.cache/kvant}/llama.cpp-$version
model=${KVANT_MODEL:-$here/models/gemma-3-270m-q4_k_m.gguf}
bin=$root/build/bin
stamp=$root/build/kvant-stamp
rebuild=0
[ "${1:-}" = --rebuild ] && rebuild=1
log() { echo "llama-cpp.sh: $*" >&2; }

have_all() {
    local t
    for t in "${targets[@]}"; do [ -x "$bin/$t" ] || return 1; done
    [ -f "$stamp" ] && grep -qx "version=$version" "$stamp" && grep -qx "sha256=$sha256" "$stamp"
}

if [ $rebuild = 0 ] && have_all; then echo "$bin"; exit 0; fi

# 1. Source: the sdist, checked against the pinned sha256.
mkdir -p "$root/sdist"
tarball=$root/sdist/llama_cpp_python-$version.tar.gz
if [ ! -f "$tarball" ] || ! echo "$sha256  $tarball" | sha256sum -c --status; then
    rm -f "$tarball"
    log "downloading the llama-cpp-python $version sdist"
    pip download --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$root/sdist" >&2
fi
if ! echo "$sha256  $tarball" | sha256sum -c --status; then
    log "sha256 of $tarball is $(sha256sum "$tarball" | cut -d' ' -f1), expected $sha256"; exit 1
fi
src=$root/src
if [ ! -f "$src/.kvant-unpacked-$sha256" ]; then
    rm -rf "$src"; mkdir -p "$src"
    tar xzf "$tarball" -C "$src" --strip-components=1
    touch "$src/.kvant-unpacked-$sha256"
fi
llsrc=$src/vendor/llama.cpp
[ -f "$llsrc/CMakeLists.txt" ] || { log "no vendor/llama.cpp in $src"; exit 1; }

# 2. Tools: cmake (Debian) if missing.
if ! command -v cmake >/dev/null; then
    log "installing cmake (apt)"
    apt-get install -y cmake >&2 || { apt-get update >&2 && apt-get install -y cmake >&2; }
fi

# 3. AMX up front.
amx_off=${LLAMA_NO_AMX:-0}
if [ "$amx_off" = 0 ] && grep -qw amx_tile /proc/cpuinfo; then
    probe=$(mktemp -d)
    cat >"$probe/amx.c" <<'EOF'
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
int main(void) {
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) return 2;
    uint8_t cfg[64]; memset(cfg, 0, sizeof cfg);
    cfg[0] = 1; cfg[16] = 64; cfg[48] = 16;          /* palette 1, tile 0: 16 rows x 64 bytes */
    __asm__ volatile("ldtilecfg %0" :: "m"(cfg));
    __asm__ volatile("tilezero %%tmm0" ::);
    __asm__ volatile("tilerelease" ::);
    return 0;
}
EOF
    if gcc -O1 -mamx-tile -o "$probe/amx" "$probe/amx.c" 2>/dev/null && "$probe/amx" 2>/dev/null; then
        log "AMX advertised and the probe ran: native build keeps AMX (checked again after the build)"
    else
        log "AMX advertised but the probe failed (SIGILL or no XTILEDATA permission): building with AMX off"
        amx_off=1
    fi
    rm -rf "$probe"
fi

build() {  # $1 = 0/1 (AMX off)
    local flags=() noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    [ "$1" = 1 ] && flags=("-DCMAKE_C_FLAGS=$noamx" "-DCMAKE_CXX_FLAGS=$noamx")
    rm -rf "$root/build"
    log "configuring (AMX off: $1)"
    cmake -S "$llsrc" -B "$root/build" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_BUILD_TESTS=OFF "${flags[@]}" >&2
    log "building ${targets[*]} (nice -n 10, -j2; ~10 min on 2 cores)"
    nice -n 10 cmake --build "$root/build" -j2 --target "${targets[@]}" >&2
}

check() {  # 0 = fine, 132 = SIGILL, other = other failure
    if [ ! -f "$model" ]; then log "no model at $model: skipping the run check"; return 0; fi
    local rc=0
    "$bin/llama-bench" -m "$model" -t 2 -p 16 -n 4 -r 1 -o jsonl >/dev/null 2>"$root/build/check.log" || rc=$?
    return $rc
}

build "$amx_off"
rc=0; check || rc=$?
if [ $rc = 132 ] && [ "$amx_off" = 0 ]; then
    log "llama-bench died with SIGILL on a native build: rebuilding with AMX off"
    amx_off=1
    build 1
    rc=0; check || rc=$?
fi
if [ $rc != 0 ]; then
    log "llama-bench check failed (exit $rc); see $root/build/check.log"; tail -5 "$root/build/check.log" >&2; exit 1
fi
{
    echo "version=$version"; echo "sha256=$sha256"; echo "amx_off=$amx_off"
    echo "cmake=-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$stamp"
log "done (AMX off: $amx_off)"
echo "$bin"
