#!/usr/bin/env python3
"""Writes Tests/KernelsTests/Fixtures/dequant_goldens.json: raw GGUF weight blocks and the floats python `gguf`
(gguf.quants.dequantize, an implementation independent of Kvant) decodes them to.

Rows of F32/Q5_0/Q4_K/Q6_K/Q8_0 come from the real model (/work/models/gemma-3-270m-q4_k_m.gguf). F16, BF16,
Q4_0, Q4_1, Q5_1 rows are quantized with gguf.quants.quantize from seeded random data; Q5_K (no numpy quantizer in
gguf) gets seeded random block bytes with sane fp16 d/dmin. Those are written to a small GGUF with gguf.GGUFWriter and
read back with GGUFReader so the bytes are exactly what a GGUF file holds.

Usage: python3 scripts/oracle/kernels_goldens.py [model.gguf]
"""
import base64, json, os, sys, tempfile
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = sys.argv[1] if len(sys.argv) > 1 else "/work/models/gemma-3-270m-q4_k_m.gguf"
OUT = os.path.join(ROOT, "Tests/KernelsTests/Fixtures/dequant_goldens.json")


def entry(name, qtype, raw_rows):
    """raw_rows: uint8 array [rows, row_bytes]."""
    raw_rows = np.ascontiguousarray(raw_rows).view(np.uint8)
    deq = dequantize(raw_rows, qtype).astype(np.float32)
    return {
        "source": name,
        "type": qtype.name,
        "typeId": int(qtype),
        "rows": int(deq.shape[0]),
        "cols": int(deq.shape[1]),
        "bytes": base64.b64encode(raw_rows.tobytes()).decode(),
        "expected": [float(v) for v in deq.reshape(-1)],
    }


def raw_of(tensor, rows):
    data = np.asarray(tensor.data)
    if tensor.tensor_type in (T.F32,):
        data = data.reshape(-1, int(tensor.shape[0]))
    return np.ascontiguousarray(data[rows]).view(np.uint8).reshape(len(rows), -1)


entries = []
reader = gguf.GGUFReader(MODEL)
by_name = {t.name: t for t in reader.tensors}
for name, rows in [
    ("output_norm.weight", [0]),
    ("blk.0.attn_q.weight", [0, 517]),        # Q5_0, rows of 640
    ("blk.3.attn_output.weight", [1, 300]),   # Q4_K, rows of 1024
    ("blk.0.ffn_down.weight", [7, 639]),      # Q6_K, rows of 2048
    ("token_embd.weight", [2, 9259]),         # Q8_0, rows of 640
    ("blk.0.attn_v.weight", [5]),             # Q8_0
]:
    t = by_name[name]
    if name == "output_norm.weight":
        raw = np.asarray(t.data).astype(np.float32).view(np.uint8).reshape(1, -1)
    else:
        raw = raw_of(t, rows)
    entries.append(entry(f"{os.path.basename(MODEL)}:{name} rows {rows}", t.tensor_type, raw))

# Synthetic types through GGUFWriter.
rng = np.random.default_rng(1234)
cols = 512
synth = {}
for qt in (T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_1, T.Q5_0, T.Q8_0):
    x = (rng.standard_normal((3, cols)) * rng.uniform(0.01, 2.0, (3, 1))).astype(np.float32)
    if qt == T.F16:
        synth[qt] = x.astype(np.float16)
    else:
        synth[qt] = quantize(x, qt)
# Q5_K: random blocks, fp16 d and dmin in a sane range.
nblk = 3 * cols // 256
blk = rng.integers(0, 256, size=(nblk, 176), dtype=np.uint8)
dd = (rng.uniform(0.001, 0.05, size=(nblk, 2))).astype(np.float16).view(np.uint8).reshape(nblk, 4)
blk[:, 0:4] = dd
synth[T.Q5_K] = blk.reshape(3, -1)

path = os.path.join(tempfile.mkdtemp(), "synth.gguf")
w = gguf.GGUFWriter(path, "llama")
for qt, arr in synth.items():
    if qt == T.F16:
        w.add_tensor(f"w_{qt.name}", arr)
    else:
        w.add_tensor(f"w_{qt.name}", arr, raw_shape=arr.shape, raw_dtype=qt)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
r2 = gguf.GGUFReader(path)
for t in r2.tensors:
    raw = np.ascontiguousarray(np.asarray(t.data)).view(np.uint8).reshape(3, -1)
    entries.append(entry(f"GGUFWriter synthetic {t.name}", t.tensor_type, raw))

with open(OUT, "w") as f:
    json.dump({"generator": "scripts/oracle/kernels_goldens.py", "gguf_version": getattr(gguf, "__version__", "?"),
               "entries": entries}, f)
print(OUT, os.path.getsize(OUT), [e["type"] for e in entries])
