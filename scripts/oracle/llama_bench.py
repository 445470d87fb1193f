#!/usr/bin/env python3
"""llama.cpp's prefill and decode speed on a model, through llama-cpp-python.

Prefill: one eval() of the first N tokens of a text. Decode: then M evals of one token each
(the text's next tokens, teacher-forced, so both engines do identical work).
Prints one JSON object: {"prefill_tps":…, "decode_tps":…, …}.
"""
import argparse, json, time
import llama_cpp

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--file", default="/usr/share/common-licenses/GPL-3")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--prompt-tokens", type=int, default=512)
p.add_argument("--gen-tokens", type=int, default=128)
p.add_argument("--ctx", type=int, default=0, help="n_ctx (default: prompt+gen rounded up)")
p.add_argument("--type-k", default="f16", choices=["f16", "q8_0", "f32"])
p.add_argument("--type-v", default="f16", choices=["f16", "q8_0", "f32"])
p.add_argument("--flash-attn", action="store_true")
p.add_argument("--repeat", type=int, default=2)
a = p.parse_args()
types = {"f16": 1, "q8_0": 8, "f32": 0}
n_ctx = a.ctx or ((a.prompt_tokens + a.gen_tokens + 255) // 256 * 256)
llm = llama_cpp.Llama(model_path=a.model, n_ctx=n_ctx, n_threads=a.threads, n_threads_batch=a.threads,
                      n_batch=min(2048, a.prompt_tokens), n_ubatch=512, flash_attn=a.flash_attn,
                      type_k=types[a.type_k], type_v=types[a.type_v], verbose=False)
text = open(a.file, encoding="utf-8").read()
toks = llm.tokenize(text.encode(), add_bos=True)
while len(toks) < a.prompt_tokens + a.gen_tokens:
    toks += llm.tokenize(text.encode(), add_bos=False)
best_p, best_d = 0.0, 0.0
for _ in range(a.repeat):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(toks[: a.prompt_tokens])
    t1 = time.perf_counter()
    for i in range(a.gen_tokens):
        llm.eval([toks[a.prompt_tokens + i]])
    t2 = time.perf_counter()
    best_p = max(best_p, a.prompt_tokens / (t1 - t0))
    best_d = max(best_d, a.gen_tokens / (t2 - t1))
print(json.dumps({"engine": "llama.cpp", "version": llama_cpp.__version__, "threads": a.threads,
                  "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens, "n_ctx": n_ctx,
                  "type_k": a.type_k, "type_v": a.type_v, "flash_attn": a.flash_attn,
                  "prefill_tps": round(best_p, 2), "decode_tps": round(best_d, 2)}))
