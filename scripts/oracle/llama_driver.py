"""Builds and runs scripts/oracle/llama_logits.cpp (a small driver over llama.cpp's C API) for the golden scripts:
logits of a token sequence and greedy continuations, straight from libllama (no llama-cpp-python needed).

The driver is compiled once into ~/.cache/kvant/llama.cpp-0.3.36/kvant-driver/kvant-llama-logits (beside, not in,
the llama.cpp build) against the headers of the same source tree and build/bin/libllama.so."""
import os, subprocess, tempfile
import numpy as np
import llama_bin

HERE = os.path.dirname(os.path.abspath(__file__))


def driver():
    out_dir = os.environ.get("KVANT_LLAMA_DRIVER_DIR", os.path.join(llama_bin.CACHE, "kvant-driver"))
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "kvant-llama-logits")
    src = os.path.join(HERE, "llama_logits.cpp")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        llama_bin.binary("libllama.so")
        inc = [os.path.join(llama_bin.SRC, "include"), os.path.join(llama_bin.SRC, "ggml", "include")]
        cmd = ["c++", "-O2", "-std=c++17", src, "-o", out] + [f"-I{d}" for d in inc] + \
              [f"-L{llama_bin.BIN}", "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{llama_bin.BIN}"]
        subprocess.run(cmd, check=True)
    return out


def logits(model, tokens, ctx=0, flash=False, type_kv="f16", greedy=0, rows="all", batch=512, ubatch=512, threads=2):
    """Returns (logits [n_rows, n_vocab] float32, greedy tokens or None)."""
    with tempfile.TemporaryDirectory() as d:
        tp, op = os.path.join(d, "tokens.txt"), os.path.join(d, "out.bin")
        with open(tp, "w") as f:
            f.write(" ".join(str(int(t)) for t in tokens))
        cmd = [driver(), model, tp, op, "--ctx", str(ctx), "--flash", str(int(flash)), "--type-kv", type_kv,
               "--greedy", str(greedy), "--rows", rows, "--batch", str(batch), "--ubatch", str(ubatch),
               "--threads", str(threads)]
        subprocess.run(cmd, check=True, env=llama_bin.env())
        raw = open(op, "rb").read()
    n_rows, n_vocab = np.frombuffer(raw[:8], dtype=np.int32)
    end = 8 + 4 * int(n_rows) * int(n_vocab)
    lg = np.frombuffer(raw[8:end], dtype=np.float32).reshape(int(n_rows), int(n_vocab))
    gen = None
    if greedy:
        n = int(np.frombuffer(raw[end:end + 4], dtype=np.int32)[0])
        gen = [int(x) for x in np.frombuffer(raw[end + 4:end + 4 + 4 * n], dtype=np.int32)]
    return lg, gen


def tokenize(model, text, add_special=True, parse_special=False):
    """llama_tokenize (libllama, vocabulary only) of `text`; the tools' default for a text file is
    add_special=True, parse_special=False (common_tokenize in llama-perplexity)."""
    with tempfile.TemporaryDirectory() as d:
        tp, op = os.path.join(d, "text.txt"), os.path.join(d, "ids.txt")
        with open(tp, "wb") as f:
            f.write(text.encode("utf-8"))
        subprocess.run([driver(), model, "--tokenize", tp, op, str(int(add_special)), str(int(parse_special))],
                       check=True, env=llama_bin.env())
        return [int(x) for x in open(op).read().split()]
