#!/usr/bin/env python3
"""Executor goldens from llama.cpp (through llama-cpp-python), written to Tests/ExecutorTests/Fixtures/:

- gemma3_gpl3_teacher_forced.json: the first 1 024 tokens of GPL-3 (llama.cpp's tokenizer, BOS first); for each
  position i < 1023 llama.cpp's top-1 token and the log-prob of the actual next token, flash attention off and
  f16 KV; the same with flash attention on (the oracle's own noise floor).
- gemma3_gpl3_perplexity.json: llama-perplexity's method at ctx 512 (tools/perplexity/perplexity.cpp: tokenize with
  BOS, n_chunk = n_tokens / ctx non-overlapping chunks, first token of each chunk replaced by BOS, the logits of
  positions ctx/2 … ctx-2 score the next token), f16 KV, flash attention off; also the tokens.
- gemma3_greedy.json: greedy continuations (8 tokens) of three prompts, token by token, with llama.cpp's top-1/top-2
  logit margin per step and the top-1 of the same tokens evaluated as one batch (near-ties flip between the two).
- tiny_llama_logits.json: all logits of a token sequence through tiny_llama.gguf (scripts/oracle/tiny_llama.py),
  F32 weights, F32 KV.

Usage: python3 scripts/oracle/llama_goldens.py [model.gguf]
"""
import json, math, os, sys, time
import numpy as np
import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "Tests/ExecutorTests/Fixtures")
MODEL = sys.argv[1] if len(sys.argv) > 1 else "/work/models/gemma-3-270m-q4_k_m.gguf"
TEXT = "/usr/share/common-licenses/GPL-3"
F16, F32 = 1, 0
meta = {"oracle": "llama.cpp via llama-cpp-python " + llama_cpp.__version__, "generator": "scripts/oracle/llama_goldens.py",
        "model": os.path.basename(MODEL)}


def log_softmax_at(logits, k):
    m = float(np.max(logits))
    return float(logits[k] - m - math.log(float(np.sum(np.exp(logits.astype(np.float64) - m)))))


def load(n_ctx, flash, type_kv=F16, model=MODEL):
    return llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2,
                           logits_all=True, flash_attn=flash, type_k=type_kv, type_v=type_kv, verbose=False)


def write(name, obj):
    path = os.path.join(FIX, name)
    with open(path, "w") as f:
        json.dump(obj, f)
    print(path, os.path.getsize(path), flush=True)


text = open(TEXT, encoding="utf-8").read()
what = set(sys.argv[2:]) or {"teacher", "ppl", "greedy", "tiny"}

if "teacher" in what:
    N = 1024
    runs = {}
    for flash in (False, True):
        llm = load(N, flash)
        toks = llm.tokenize(text.encode(), add_bos=True)[:N]
        llm.reset()
        llm.eval(toks)
        top1, lp = [], []
        for i in range(N - 1):
            row = np.array(llm.scores[i], dtype=np.float32)
            top1.append(int(np.argmax(row)))
            lp.append(log_softmax_at(row, toks[i + 1]))
        runs[flash] = (toks, top1, lp)
        del llm
    toks = runs[False][0]
    agree = sum(a == b for a, b in zip(runs[False][1], runs[True][1])) / (N - 1)
    write("gemma3_gpl3_teacher_forced.json", dict(meta, text=TEXT, kv_type="f16", tokens=toks,
          top1=runs[False][1], logprob=runs[False][2], top1_flash_attn=runs[True][1], logprob_flash_attn=runs[True][2],
          top1_agreement_flash_vs_noflash=agree))

if "ppl" in what:
    ctx = 512
    llm = load(ctx, False)
    toks = llm.tokenize(text.encode(), add_bos=True)
    n_chunk = len(toks) // ctx
    first = ctx // 2
    nll, count, per_chunk = 0.0, 0, []
    for c in range(n_chunk):
        chunk = list(toks[c * ctx:(c + 1) * ctx])
        chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        for j in range(first, ctx - 1):
            nll -= log_softmax_at(np.array(llm.scores[j], dtype=np.float32), toks[c * ctx + j + 1])
            count += 1
        per_chunk.append(math.exp(nll / count))
    write("gemma3_gpl3_perplexity.json", dict(meta, text=TEXT, ctx=ctx, kv_type="f16", flash_attn=False,
          n_chunk=n_chunk, count=count, nll=nll, perplexity=math.exp(nll / count), running_ppl=per_chunk, tokens=toks))

if "greedy" in what:
    prompts = ["The capital of France is", "def fibonacci(n):\n", "Once upon a time, in a small village,"]
    out = []
    llm = load(256, False)
    for p in prompts:
        ptoks = llm.tokenize(p.encode(), add_bos=True)
        llm.reset()
        llm.eval(ptoks)
        gen, margin = [], []
        for _ in range(8):
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            top2 = np.argsort(-row)[:2]
            t = int(top2[0])
            gen.append(t)
            margin.append(float(row[top2[0]] - row[top2[1]]))
            llm.eval([t])
        # Near-ties: the same continuation evaluated as one batch (prompt + generated) can pick another top-1.
        llm.reset()
        llm.eval(ptoks + gen)
        batched = [int(np.argmax(np.array(llm.scores[len(ptoks) - 1 + i], dtype=np.float32))) for i in range(8)]
        out.append({"prompt": p, "prompt_tokens": ptoks, "greedy": gen, "top1_margin": margin, "top1_batched": batched,
                    "text": llm.detokenize(gen).decode("utf-8", "replace")})
    write("gemma3_greedy.json", dict(meta, kv_type="f16", flash_attn=False, continuations=out))

if "tiny" in what:
    path = os.path.join(FIX, "tiny_llama.gguf")
    llm = load(64, False, F32, path)
    rng = np.random.default_rng(7)
    toks = [1] + [int(x) for x in rng.integers(3, 300, size=23)]
    llm.reset()
    llm.eval(toks)
    logits = [[float(v) for v in llm.scores[i]] for i in range(len(toks))]
    write("tiny_llama_logits.json", dict(meta, model="tiny_llama.gguf", kv_type="f32", tokens=toks, logits=logits))
