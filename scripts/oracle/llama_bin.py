"""llama.cpp's own binaries (built from the llama-cpp-python 0.3.36 sdist's vendor/llama.cpp, see
docs/oracles.md / scripts/install-oracles.sh) for the golden scripts: where they are and small wrappers.

KVANT_LLAMA_CPP_BIN overrides the directory (default ~/.cache/kvant/llama.cpp-0.3.36/build/bin);
KVANT_LLAMA_CPP_SRC the llama.cpp source tree (default ~/.cache/kvant/llama.cpp-0.3.36/src/vendor/llama.cpp).
"""
import json, os, subprocess, tempfile

CACHE = os.path.expanduser("~/.cache/kvant/llama.cpp-0.3.36")
BIN = os.environ.get("KVANT_LLAMA_CPP_BIN", os.path.join(CACHE, "build", "bin"))
SRC = os.environ.get("KVANT_LLAMA_CPP_SRC", os.path.join(CACHE, "src", "vendor", "llama.cpp"))
VERSION = "llama.cpp from llama-cpp-python 0.3.36 (vendor/llama.cpp)"


def binary(name):
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        raise SystemExit(f"{path} is missing: build llama.cpp's binaries first (KVANT_LLAMA_CPP_BIN overrides the directory)")
    return path


def env():
    e = dict(os.environ)
    e["LD_LIBRARY_PATH"] = BIN + (":" + e["LD_LIBRARY_PATH"] if e.get("LD_LIBRARY_PATH") else "")
    return e


def tokenize(model, text, add_special=True, parse_special=True):
    """llama-tokenize's ids for `text` (bytes kept verbatim: read from a file with --no-escape).
    add_special=False passes --no-bos (common_tokenize's add_special is the BOS flag there);
    parse_special=False passes --no-parse-special."""
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
        path = f.name
    try:
        cmd = [binary("llama-tokenize"), "-m", model, "-f", path, "--no-escape", "--ids", "--log-disable"]
        if not add_special:
            cmd.append("--no-bos")
        if not parse_special:
            cmd.append("--no-parse-special")
        out = subprocess.run(cmd, env=env(), capture_output=True, check=True).stdout.decode()
    finally:
        os.unlink(path)
    line = [l for l in out.splitlines() if l.startswith("[")][-1]
    return json.loads(line)
