#!/usr/bin/env python3
"""Writes a tiny random-weight LLaMA GGUF (F32 weights; 2 layers, hidden 128, 8 heads, 4 KV heads (GQA),
head_dim 16, FFN 256, vocab 300 with an SPM-style vocabulary so llama.cpp loads it) with gguf.GGUFWriter.

Usage: python3 scripts/oracle/tiny_llama.py [out.gguf]   (default Tests/ExecutorTests/Fixtures/tiny_llama.gguf)
"""
import os, sys
import numpy as np
import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "Tests/ExecutorTests/Fixtures/tiny_llama.gguf")

L, H, NH, NKV, HD, F, V = 2, 128, 8, 4, 16, 256, 300
rng = np.random.default_rng(20261130)

w = gguf.GGUFWriter(OUT, "llama")
w.add_name("kvant-tiny-llama")
w.add_block_count(L)
w.add_context_length(256)
w.add_embedding_length(H)
w.add_feed_forward_length(F)
w.add_head_count(NH)
w.add_head_count_kv(NKV)
w.add_rope_dimension_count(HD)
w.add_rope_freq_base(10000.0)
w.add_layer_norm_rms_eps(1e-5)
w.add_file_type(0)

tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
tokens += [f"▁w{i}" for i in range(V - len(tokens))]
types = [2, 3, 3] + [6] * 256 + [1] * (V - 259)
w.add_tokenizer_model("llama")
w.add_token_list(tokens)
w.add_token_scores([0.0] * 259 + [-float(i) for i in range(V - 259)])
w.add_token_types(types)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)
w.add_add_bos_token(True)
w.add_add_eos_token(False)


def mat(rows, cols, scale):
    return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)


w.add_tensor("token_embd.weight", mat(V, H, 1.0))
w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(H)).astype(np.float32))
w.add_tensor("output.weight", mat(V, H, 1 / np.sqrt(H)))
for l in range(L):
    p = f"blk.{l}."
    w.add_tensor(p + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(H)).astype(np.float32))
    w.add_tensor(p + "attn_q.weight", mat(NH * HD, H, 1 / np.sqrt(H)))
    w.add_tensor(p + "attn_k.weight", mat(NKV * HD, H, 1 / np.sqrt(H)))
    w.add_tensor(p + "attn_v.weight", mat(NKV * HD, H, 1 / np.sqrt(H)))
    w.add_tensor(p + "attn_output.weight", mat(H, NH * HD, 1 / np.sqrt(NH * HD)))
    w.add_tensor(p + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(H)).astype(np.float32))
    w.add_tensor(p + "ffn_gate.weight", mat(F, H, 1 / np.sqrt(H)))
    w.add_tensor(p + "ffn_up.weight", mat(F, H, 1 / np.sqrt(H)))
    w.add_tensor(p + "ffn_down.weight", mat(H, F, 1 / np.sqrt(F)))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print(OUT, os.path.getsize(OUT))
