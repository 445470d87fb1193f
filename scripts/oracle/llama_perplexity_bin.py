#!/usr/bin/env python3
"""llama.cpp's perplexity of a text through its own `llama-perplexity` binary (scripts/oracle/llama_bin.py says where
it is), for the reference rows of scripts/bench-accuracy.sh when llama-cpp-python is not installed (never used by the
product). llama-perplexity's method: non-overlapping chunks of ctx tokens, BOS first when the vocabulary adds one, the
second half of each chunk scored.

Prints one JSON object: {"perplexity":…, "ctx":…, "chunks":…, "type_kv":…, "flash_attn":…}; exits non-zero with
llama-perplexity's last lines when it gives no final estimate.
"""
import argparse, json, os, re, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_bin

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--file", default="/usr/share/common-licenses/GPL-3")
p.add_argument("--ctx", type=int, default=512)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--type-kv", default="f16", choices=["f16", "q8_0", "q4_0", "q4_1", "f32"])
p.add_argument("--flash-attn", action="store_true")
p.add_argument("--chunks", type=int, default=0, help="at most this many chunks (0 = all)")
a = p.parse_args()
cmd = [llama_bin.binary("llama-perplexity"), "-m", a.model, "-f", a.file, "-c", str(a.ctx), "-b", str(min(a.ctx, 2048)),
       "-t", str(a.threads), "-fa", "on" if a.flash_attn else "off", "-ctk", a.type_kv, "-ctv", a.type_kv]
if a.chunks > 0:
    cmd += ["--chunks", str(a.chunks)]
t0 = time.perf_counter()
r = subprocess.run(cmd, env=llama_bin.env(), capture_output=True, text=True)
out = r.stdout + r.stderr
m = re.search(r"Final estimate: PPL = ([0-9.]+)", out)
if r.returncode != 0 or not m:
    sys.exit("llama-perplexity gave no final estimate (exit %d):\n%s" % (r.returncode, "\n".join(out.splitlines()[-15:])))
chunks = re.search(r"calculating perplexity over (\d+) chunks", out)
print(json.dumps({"engine": "llama.cpp (llama-perplexity)", "version": llama_bin.VERSION, "perplexity": float(m.group(1)),
                  "ctx": a.ctx, "chunks": int(chunks.group(1)) if chunks else None, "type_kv": a.type_kv,
                  "flash_attn": a.flash_attn, "seconds": round(time.perf_counter() - t0, 2)}))
