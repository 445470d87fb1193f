#!/usr/bin/env bash
# Installs what building and testing Kvant needs on a fresh Debian 12 machine:
# apt packages (libsystemd for sd_notify, socat, systemd tools for the container tier, haproxy for
# make test-cluster), the Python oracles used by tests (gguf, numpy, openai, prometheus_client, jinja2),
# the default model and SmolLM2-135M-Instruct (KVANT_FETCH_MODEL=gemma3 fetches only the default model).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
need=()
for p in libsystemd-dev pkg-config socat systemd systemd-container debootstrap zstd util-linux stress-ng haproxy; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: apt-get install ${need[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "setup: swift is not on PATH (Swift 6.x toolchain required)" >&2; exit 1; }
python3 -c "import gguf, numpy" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore gguf numpy
# The HTTP API tier's oracles: the official OpenAI client, the Prometheus text parser, jinja2 (chat templates as transformers renders them).
python3 -c "import openai, prometheus_client, jinja2" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore openai prometheus_client jinja2
"$here/scripts/fetch-model.sh" "${KVANT_FETCH_MODEL:-all}"
