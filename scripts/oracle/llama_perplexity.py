#!/usr/bin/env python3
"""llama.cpp's perplexity of a text through llama-cpp-python, for the reference rows of
scripts/bench-accuracy.sh (never used by the product).

Method of llama-perplexity (tools/perplexity/perplexity.cpp, `perplexity()` without a stride): tokenize
with BOS, n_chunk = n_tokens / ctx non-overlapping chunks, the first token of each chunk replaced by BOS,
the logits of positions ctx/2 … ctx-2 score the next token, PPL = exp(mean NLL).
KV types: f16, q8_0, q4_0 or q4_1 for K and V (llama.cpp's -ctk/-ctv; a quantized V cache needs flash attention).

Prints one JSON object: {"perplexity":…, "ctx":…, "chunks":…, "scored_tokens":…, "type_kv":…, "flash_attn":…}.
"""
import argparse, json, math, time
import numpy as np
import llama_cpp

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--file", default="/usr/share/common-licenses/GPL-3")
p.add_argument("--ctx", type=int, default=512)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--type-kv", default="f16", choices=["f16", "q8_0", "q4_0", "q4_1", "f32"])
p.add_argument("--flash-attn", action="store_true")
p.add_argument("--chunks", type=int, default=0, help="at most this many chunks (0 = all)")
a = p.parse_args()
types = {"f16": 1, "q8_0": 8, "q4_0": 2, "q4_1": 3, "f32": 0}
ctx = a.ctx
llm = llama_cpp.Llama(model_path=a.model, n_ctx=ctx, n_batch=min(ctx, 2048), n_ubatch=512, n_threads=a.threads,
                      n_threads_batch=a.threads, logits_all=True, flash_attn=a.flash_attn,
                      type_k=types[a.type_kv], type_v=types[a.type_kv], verbose=False)
text = open(a.file, encoding="utf-8").read()
toks = llm.tokenize(text.encode(), add_bos=True)
n_chunk = len(toks) // ctx
if a.chunks > 0:
    n_chunk = min(n_chunk, a.chunks)
first = ctx // 2
nll, count = 0.0, 0
t0 = time.perf_counter()
for c in range(n_chunk):
    chunk = list(toks[c * ctx:(c + 1) * ctx])
    chunk[0] = llm.token_bos()
    llm.reset()
    llm.eval(chunk)
    rows = np.asarray(llm.scores[first:ctx - 1], dtype=np.float64)
    m = rows.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(rows - m).sum(axis=1)))
    targets = np.array(toks[c * ctx + first + 1:c * ctx + ctx], dtype=np.int64)
    nll -= float((rows[np.arange(len(targets)), targets] - lse).sum())
    count += len(targets)
print(json.dumps({"engine": "llama.cpp", "version": llama_cpp.__version__, "perplexity": round(math.exp(nll / count), 6),
                  "ctx": ctx, "chunks": n_chunk, "scored_tokens": count, "type_kv": a.type_kv,
                  "flash_attn": a.flash_attn, "seconds": round(time.perf_counter() - t0, 2)}))
