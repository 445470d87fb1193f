#!/usr/bin/env python3
"""Layer-0 post-RoPE K and V of Gemma 3 270M recomputed with numpy from the GGUF (gguf + llama-cpp-python for
the tokenizer only) over the first 1024 GPL-3 tokens; prints the per-token crest factor and the relative int8
quantization error with one scale (amax/127) per (token, head) = 256 values, per 64, per 32 values (llama.cpp q8_0
blocks), and per 256 after a normalized 256-point Hadamard rotation of each row (Kvant's int8_pertoken). Supports the int8_pertoken analysis in docs/kv-cache.md. Usage: python3 scripts/oracle/kv_int8_granularity.py"""
import numpy as np, gguf, llama_cpp
import os
M=os.environ.get("MODEL", "models/gemma-3-270m-q4_k_m.gguf")
r=gguf.GGUFReader(M)
T={t.name:t for t in r.tensors}
def deq(name):
    t=T[name]; a=gguf.quants.dequantize(t.data, t.tensor_type)
    return a.reshape([int(x) for x in reversed(t.shape)]) if a.ndim==1 else a
llm=llama_cpp.Llama(model_path=M, vocab_only=True, verbose=False)
toks=llm.tokenize(open("/usr/share/common-licenses/GPL-3","rb").read(), add_bos=True)[:1024]
E=deq("token_embd.weight"); print("embd", E.shape)
x=E[toks].astype(np.float64)*np.sqrt(640)
def rms(x,w,eps=1e-6): return x/np.sqrt((x*x).mean(-1,keepdims=True)+eps)*w
h=rms(x,deq("blk.0.attn_norm.weight"))
Wk=deq("blk.0.attn_k.weight"); Wv=deq("blk.0.attn_v.weight"); print("Wk",Wk.shape)
k=h@Wk.T; v=h@Wv.T
k=rms(k,deq("blk.0.attn_k_norm.weight"))
# neox rope base 1e4
d=256; pos=np.arange(len(toks))[:,None]; inv=1e4**(-np.arange(0,d,2)/d); ang=pos*inv[None,:]
c,s=np.cos(ang),np.sin(ang); k1,k2=k[:,:d//2],k[:,d//2:]
k=np.concatenate([k1*c-k2*s,k1*s+k2*c],-1)
def err(x,g):
    xs=x.reshape(x.shape[0],-1,g); sc=np.abs(xs).max(-1,keepdims=True)/127; sc[sc==0]=1
    q=np.clip(np.round(xs/sc),-127,127)*sc
    return ((q-xs)**2).sum()/(xs**2).sum()
for n,t in (("K",k),("V",v)):
    print(n, "amax", np.abs(t).max().round(2), "rms", np.sqrt((t**2).mean()).round(3),
          "per-token crest (median amax/rms)", np.median(np.abs(t).max(1)/np.sqrt((t**2).mean(1))).round(2),
          "rel MSE g256 %.2e g32 %.2e" % (err(t,256), err(t,32)))
def hadamard(n):
    h = np.array([[1.0]])
    while h.shape[0] < n: h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)
H = hadamard(256)
for n,t in (("K",k),("V",v)):
    tr = t @ H
    print(n, "rotated per-token crest %.2f" % np.median(np.abs(tr).max(1)/np.sqrt((tr**2).mean(1))),
          "rel MSE g64 %.2e, rotated g256 %.2e" % (err(t,64), err(tr,256)))
