#!/usr/bin/env python3
"""Executor goldens for SmolLM2-135M-Instruct (Q4_1) from llama.cpp (libllama through scripts/oracle/llama_logits.cpp,
and llama-perplexity when built), written to Tests/ExecutorTests/Fixtures/:

- smollm2_gpl3_teacher_forced.json: the first 1 024 tokens of GPL-3 (llama.cpp's tokenizer; SmolLM2 adds no BOS);
  for each position i < 1023 llama.cpp's top-1 token and the log-prob of the actual next token, f16 KV, flash
  attention off; the same with flash attention on (the oracle's own noise floor) and their agreement.
- smollm2_gpl3_perplexity.json: llama-perplexity's method at ctx 512 (non-overlapping chunks, BOS in front only when
  the model adds one, positions ctx/2 … ctx-2 score the next token), f16 KV, flash attention off, computed from the
  driver's logits; llama-perplexity's own figure beside it when the binary exists; the tokens.
- smollm2_greedy.json: greedy continuations (8 tokens) of three prompts and of three chat conversations rendered
  with the model's ChatML template by jinja2 as transformers' apply_chat_template does (trim_blocks, lstrip_blocks,
  add_generation_prompt), token by token (f16 KV, flash off), with the top-1/top-2 logit margin per step, the top-1 of
  the same tokens evaluated as one batch, and the greedy tokens with flash attention on.

Usage: python3 scripts/oracle/smollm2_goldens.py [model.gguf] [teacher] [ppl] [greedy]
"""
import json, math, os, re, subprocess, sys
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_bin, llama_driver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "Tests/ExecutorTests/Fixtures")
args = sys.argv[1:]
MODEL = args.pop(0) if args and args[0].endswith(".gguf") else os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf")
TEXT = "/usr/share/common-licenses/GPL-3"
what = set(args) or {"teacher", "ppl", "greedy"}
meta = {"oracle": llama_bin.VERSION + ": libllama via scripts/oracle/llama_logits.cpp", "generator": "scripts/oracle/smollm2_goldens.py",
        "model": os.path.basename(MODEL)}


def log_softmax(rows):
    rows = rows.astype(np.float64)
    m = rows.max(axis=1, keepdims=True)
    return rows - m - np.log(np.exp(rows - m).sum(axis=1, keepdims=True))


def write(name, obj):
    path = os.path.join(FIX, name)
    with open(path, "w") as f:
        json.dump(obj, f)
    print(path, os.path.getsize(path), flush=True)


text = open(TEXT, encoding="utf-8").read()
toks = llama_driver.tokenize(MODEL, text, add_special=True, parse_special=False)

if "teacher" in what:
    N = 1024
    t = toks[:N]
    runs = {}
    for flash in (False, True):
        lg, _ = llama_driver.logits(MODEL, t, ctx=N, flash=flash, type_kv="f16")
        lp = log_softmax(lg[:N - 1])
        runs[flash] = ([int(x) for x in lg[:N - 1].argmax(axis=1)],
                       [float(lp[i, t[i + 1]]) for i in range(N - 1)])
    agree = sum(a == b for a, b in zip(runs[False][0], runs[True][0])) / (N - 1)
    dlp = float(np.mean(np.abs(np.array(runs[False][1]) - np.array(runs[True][1]))))
    print(f"teacher-forced: llama.cpp flash on vs off top-1 agreement {agree:.4f}, mean |Δ log p| {dlp:.4f}")
    write("smollm2_gpl3_teacher_forced.json", dict(meta, text=TEXT, kv_type="f16", tokens=t,
          top1=runs[False][0], logprob=runs[False][1], top1_flash_attn=runs[True][0], logprob_flash_attn=runs[True][1],
          top1_agreement_flash_vs_noflash=agree, mean_abs_dlogprob_flash_vs_noflash=dlp))

if "ppl" in what:
    ctx = 512
    n_chunk = len(toks) // ctx
    first = ctx // 2
    nll, count, running = 0.0, 0, []
    for c in range(n_chunk):
        chunk = toks[c * ctx:(c + 1) * ctx]     # SmolLM2 adds no BOS: the chunk stays as it is
        lg, _ = llama_driver.logits(MODEL, chunk, ctx=ctx, flash=False, type_kv="f16")
        lp = log_softmax(lg[first:ctx - 1])
        nll -= float(sum(lp[j, toks[c * ctx + first + j + 1]] for j in range(ctx - 1 - first)))
        count += ctx - 1 - first
        running.append(math.exp(nll / count))
    ppl = math.exp(nll / count)
    out = dict(meta, text=TEXT, ctx=ctx, kv_type="f16", flash_attn=False, n_chunk=n_chunk, count=count, nll=nll,
               perplexity=ppl, running_ppl=running, tokens=toks)
    try:
        r = subprocess.run([llama_bin.binary("llama-perplexity"), "-m", MODEL, "-f", TEXT, "-c", str(ctx), "-t", "2",
                            "-fa", "off", "-ctk", "f16", "-ctv", "f16"], env=llama_bin.env(), capture_output=True, text=True)
        m = re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr)
        if m:
            out["llama_perplexity_binary"] = float(m.group(1))
    except SystemExit as e:
        print(e)
    print(f"perplexity ctx {ctx}: {ppl:.4f} over {n_chunk} chunks ({count} tokens); llama-perplexity: {out.get('llama_perplexity_binary')}")
    write("smollm2_gpl3_perplexity.json", out)

if "greedy" in what:
    import gguf, jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from datetime import datetime
    r = gguf.GGUFReader(MODEL)
    f = r.fields["tokenizer.chat_template"]
    template = bytes(f.parts[f.data[0]]).decode("utf-8")

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    tpl = env.from_string(template)
    prompts = [("The capital of France is", None), ("def fibonacci(n):\n", None),
               ("Once upon a time, in a small village,", None)]
    chats = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "You are a concise assistant."},
         {"role": "user", "content": "Name three primary colors."}],
        [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help you today?"},
         {"role": "user", "content": "Write a haiku about the sea."}],
    ]
    for c in chats:
        prompts.append((tpl.render(messages=c, add_generation_prompt=True, bos_token="<|im_start|>", eos_token="<|im_end|>"), c))
    out = []
    for p, conv in prompts:
        # a plain prompt as llama.cpp's tools tokenize it; a rendered chat with its special tokens parsed
        ptoks = llama_driver.tokenize(MODEL, p, add_special=True, parse_special=conv is not None)
        lg, gen = llama_driver.logits(MODEL, ptoks, ctx=len(ptoks) + 16, flash=False, type_kv="f16", greedy=8, rows="last")
        margins = []
        for row in lg:
            top2 = np.argsort(-row)[:2]
            margins.append(float(row[top2[0]] - row[top2[1]]))
        blg, _ = llama_driver.logits(MODEL, ptoks + gen, ctx=len(ptoks) + 16, flash=False, type_kv="f16")
        batched = [int(blg[len(ptoks) - 1 + i].argmax()) for i in range(8)]
        _, gen_fa = llama_driver.logits(MODEL, ptoks, ctx=len(ptoks) + 16, flash=True, type_kv="f16", greedy=8, rows="last")
        out.append({"prompt": p, "chat": conv, "prompt_tokens": ptoks, "greedy": gen, "top1_margin": margins,
                    "top1_batched": batched, "greedy_flash_attn": gen_fa})
        print(repr(p[-40:]), gen, [round(m, 3) for m in margins], "batched", batched, "flash", gen_fa, flush=True)
    write("smollm2_greedy.json", dict(meta, kv_type="f16", flash_attn=False,
          template="tokenizer.chat_template rendered by jinja2 (trim_blocks, lstrip_blocks, add_generation_prompt)",
          continuations=out))
