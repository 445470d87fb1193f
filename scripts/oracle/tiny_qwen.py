#!/usr/bin/env python3
"""Writes tiny random-weight Qwen 2 and Qwen 3 GGUFs (F32 weights) with gguf.GGUFWriter and records llama.cpp's
logits for a token sequence through each (F32 KV, flash attention off; scripts/oracle/llama_logits.cpp over libllama).

- tiny_qwen2.gguf: 2 layers, hidden 128, 8 heads, 2 KV heads (GQA 4:1), head_dim 16, FFN 256, Q/K/V biases,
  rope base 1e6, output tied to the embedding (no output.weight).
- tiny_qwen3.gguf: 2 layers, hidden 128, 8 heads, 4 KV heads (GQA 2:1), head_dim 32 (key_length: Q is 256 wide,
  wider than hidden), QK-norm weights, no biases, rope base 1e6, separate output.weight.
Both: vocabulary of 300 tokens (GPT-2 byte-level BPE, pre-tokenizer qwen2, <|endoftext|>/<|im_start|>/<|im_end|>).

Writes Tests/ExecutorTests/Fixtures/tiny_qwen{2,3}.gguf and tiny_qwen{2,3}_logits.json.
Usage: python3 scripts/oracle/tiny_qwen.py
"""
import json, os, sys
import numpy as np
import gguf
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_bin, llama_driver

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "Tests/ExecutorTests/Fixtures")
V = 300


def bytes_to_unicode():
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def vocab():
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    merges = []
    pairs = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s"),
             ("r", "e"), ("a", "t"), ("e", "n"), ("Ġ", "w"), ("o", "r"), ("i", "s"), ("e", "s"), ("Ġ", "o"),
             ("a", "n"), ("l", "l"), ("Ġ", "c"), ("Ġ", "b"), ("i", "t"), ("Ġ", "f"), ("o", "u"), ("Ġ", "p"),
             ("Ġ", "m"), ("a", "r"), ("e", "d"), ("Ġ", "d"), ("in", "g"), ("Ġ", "h"), ("Ġ", "i"), ("Ġ", "n"),
             ("a", "l"), ("l", "e"), ("s", "t"), ("i", "c"), ("Ġ", "l"), ("o", "m"), ("Ġ", "is"), ("Ġa", "n")]
    for a, b in pairs:
        merges.append(f"{a} {b}")
        tokens.append(a + b)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    while len(tokens) < V - len(specials):
        tokens.append(f"<|extra_{len(tokens)}|>")
    tokens += specials
    types = [1] * (V - len(specials)) + [3] * len(specials)
    for i in range(256 + len(pairs), V - len(specials)):
        types[i] = 4
    return tokens, types, merges


def write(path, arch, L, H, NH, NKV, HD, F, seed):
    rng = np.random.default_rng(seed)

    def mat(rows, cols, scale):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def norm(n):
        return (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"kvant-tiny-{arch}")
    w.add_block_count(L)
    w.add_context_length(256)
    w.add_embedding_length(H)
    w.add_feed_forward_length(F)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    if HD * NH != H:
        w.add_key_length(HD)
        w.add_value_length(HD)
    w.add_rope_dimension_count(HD)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(0)
    tokens, types, merges = vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_tensor("token_embd.weight", mat(V, H, 1.0))
    w.add_tensor("output_norm.weight", norm(H))
    if arch == "qwen3":
        w.add_tensor("output.weight", mat(V, H, 1 / np.sqrt(H)))
    for l in range(L):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", norm(H))
        w.add_tensor(p + "attn_q.weight", mat(NH * HD, H, 1 / np.sqrt(H)))
        w.add_tensor(p + "attn_k.weight", mat(NKV * HD, H, 1 / np.sqrt(H)))
        w.add_tensor(p + "attn_v.weight", mat(NKV * HD, H, 1 / np.sqrt(H)))
        if arch == "qwen2":
            w.add_tensor(p + "attn_q.bias", (0.5 * rng.standard_normal(NH * HD)).astype(np.float32))
            w.add_tensor(p + "attn_k.bias", (0.5 * rng.standard_normal(NKV * HD)).astype(np.float32))
            w.add_tensor(p + "attn_v.bias", (0.5 * rng.standard_normal(NKV * HD)).astype(np.float32))
        else:
            w.add_tensor(p + "attn_q_norm.weight", norm(HD))
            w.add_tensor(p + "attn_k_norm.weight", norm(HD))
        w.add_tensor(p + "attn_output.weight", mat(H, NH * HD, 1 / np.sqrt(NH * HD)))
        w.add_tensor(p + "ffn_norm.weight", norm(H))
        w.add_tensor(p + "ffn_gate.weight", mat(F, H, 1 / np.sqrt(H)))
        w.add_tensor(p + "ffn_up.weight", mat(F, H, 1 / np.sqrt(H)))
        w.add_tensor(p + "ffn_down.weight", mat(H, F, 1 / np.sqrt(F)))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    print(path, os.path.getsize(path))


for arch, cfg, seed in [("qwen2", (2, 128, 8, 2, 16, 256), 20261201), ("qwen3", (2, 128, 8, 4, 32, 256), 20261202)]:
    path = os.path.join(FIX, f"tiny_{arch}.gguf")
    write(path, arch, *cfg, seed)
    rng = np.random.default_rng(seed + 7)
    toks = [int(x) for x in rng.integers(0, V, size=32)]
    lg, _ = llama_driver.logits(path, toks, ctx=64, type_kv="f32")
    out = os.path.join(FIX, f"tiny_{arch}_logits.json")
    L, H, NH, NKV, HD, F = cfg
    with open(out, "w") as f:
        json.dump({"oracle": llama_bin.VERSION + " via scripts/oracle/llama_logits.cpp (libllama), F32 KV, flash attention off",
                   "generator": "scripts/oracle/tiny_qwen.py", "model": os.path.basename(path),
                   "config": {"layers": L, "hidden": H, "heads": NH, "kv_heads": NKV, "head_dim": HD, "ffn": F, "vocab": V},
                   "tokens": toks, "logits": [[float("%.9g" % v) for v in row] for row in lg]}, f)
    print(out, os.path.getsize(out))
