#!/usr/bin/env python3
"""Dump llama.cpp's intermediate f32 tensors (by graph name, e.g. Qcur-0, kq-0, kq_soft_max-0, kqv-0, ffn_out-2,
l_out-3) for the first N tokens of the teacher-forced fixture, through llama-cpp-python's eval callback (cb_eval),
flash attention off, f16 KV, n_batch = n_ubatch = 512, 2 threads (the fixture's settings). Diagnostic tool used to
check Kvant's numerics step by step against llama.cpp (docs/architecture.md "Executor numerics").

  python3 scripts/oracle/llama_dump_tensors.py --names Qcur-0,kqv-0 --tokens 512 --out /tmp/llama_dump.npz

Tensors are saved with numpy's reversed ggml shape ([ne3, ne2, ne1, ne0]). The ggml_tensor layout below is
llama-cpp-python 0.3.36's (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10, GGML_MAX_NAME 64)."""
import argparse, ctypes, json, os
import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as L

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--names", required=True, help="comma-separated graph tensor names")
ap.add_argument("--tokens", type=int, default=2)
ap.add_argument("--model", default=os.environ.get("KVANT_MODEL", "/work/models/gemma-3-270m-q4_k_m.gguf"))
ap.add_argument("--fixture", default=os.path.join(here, "../../Tests/ExecutorTests/Fixtures/gemma3_gpl3_teacher_forced.json"))
ap.add_argument("--out", default="/tmp/llama_dump.npz")
args = ap.parse_args()
want = set(args.names.split(","))
dumps = {}


class Tensor(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int32), ("pad0", ctypes.c_int32), ("buffer", ctypes.c_void_p),
                ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int32),
                ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10),
                ("view_src", ctypes.c_void_p), ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p),
                ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


@ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p)
def callback(ptr, ask, _):
    t = Tensor.from_address(ptr)
    name = t.name.decode(errors="replace")
    if ask:
        return name in want
    if name in want and t.type == 0:  # GGML_TYPE_F32
        ne, nb = list(t.ne), list(t.nb)
        span = sum((ne[i] - 1) * nb[i] for i in range(4)) + 4
        raw = np.frombuffer(ctypes.string_at(t.data, span), dtype=np.float32)
        dumps[name] = np.lib.stride_tricks.as_strided(raw, shape=ne[::-1], strides=nb[::-1]).copy()
    return True


default_params = L.llama_context_default_params
def params_with_callback():
    p = default_params()
    p.cb_eval = callback
    p.cb_eval_user_data = None
    return p
L.llama_context_default_params = params_with_callback

tokens = json.load(open(args.fixture))["tokens"][:args.tokens]
llm = llama_cpp.Llama(model_path=args.model, n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2,
                      logits_all=True, flash_attn=False, type_k=1, type_v=1, verbose=False)
llm.eval(tokens)
np.savez(args.out, **dumps)
for k, v in sorted(dumps.items()):
    print(k, v.shape)
