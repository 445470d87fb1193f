#!/usr/bin/env python3
"""Oracle for ModelFormatsTests: writes a small GGUF v3 file with gguf.GGUFWriter holding every
metadata value type (edge values), nested arrays and a few tensors (F32, F16, Q8_0, I8, I32) with a
custom alignment of 64, then reads it back with gguf.GGUFReader and records what python `gguf` sees
(tensor names, types, dims, absolute offsets, byte counts, FNV-1a-64 of the data).

Writes Tests/ModelFormatsTests/Fixtures/gguf_writer_all_types.gguf and gguf_writer_all_types.json.
"""
import json, os
import numpy as np
import gguf
from gguf import GGUFWriter, GGUFReader, GGUFValueType as T

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "..", "Tests", "ModelFormatsTests", "Fixtures")


def fnv1a64(data: bytes) -> int:
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    path = os.path.join(FIX, "gguf_writer_all_types.gguf")
    w = GGUFWriter(path, arch="testarch")
    w.add_custom_alignment(64)
    kv = w.add_key_value
    kv("t.uint8", 255, T.UINT8)
    kv("t.int8", -128, T.INT8)
    kv("t.uint16", 65535, T.UINT16)
    kv("t.int16", -32768, T.INT16)
    kv("t.uint32", 4294967295, T.UINT32)
    kv("t.int32", -2147483648, T.INT32)
    kv("t.float32", 3.25, T.FLOAT32)
    kv("t.bool_true", True, T.BOOL)
    kv("t.bool_false", False, T.BOOL)
    kv("t.string", "héllo 世界 🤖 \t\n", T.STRING)
    kv("t.string_empty", "", T.STRING)
    kv("t.uint64", 2**64 - 1, T.UINT64)
    kv("t.int64", -2**63, T.INT64)
    kv("t.float64", -1.5e300, T.FLOAT64)
    kv("t.arr_uint8", [0, 1, 255], T.ARRAY, T.UINT8)
    kv("t.arr_int8", [-1, 2, -3], T.ARRAY, T.INT8)
    kv("t.arr_uint16", [1, 65535], T.ARRAY, T.UINT16)
    kv("t.arr_int16", [-2, 300], T.ARRAY, T.INT16)
    kv("t.arr_uint32", [7, 8, 9], T.ARRAY, T.UINT32)
    kv("t.arr_int32", [-7, 0, 2147483647], T.ARRAY, T.INT32)
    kv("t.arr_float32", [0.5, -2.0, 1e-3], T.ARRAY, T.FLOAT32)
    kv("t.arr_bool", [True, False, True], T.ARRAY, T.BOOL)
    kv("t.arr_string", ["a", "", "ß▁<0x0A>"], T.ARRAY, T.STRING)
    kv("t.arr_uint64", [2**63, 1], T.ARRAY, T.UINT64)
    kv("t.arr_int64", [-2**62, 5], T.ARRAY, T.INT64)
    kv("t.arr_float64", [0.1, -0.25], T.ARRAY, T.FLOAT64)
    kv("t.nested_int32", [[1, 2], [3], [4, 5, 6]], T.ARRAY, T.ARRAY)
    kv("t.nested_string", [["x", "y"], ["z"]], T.ARRAY, T.ARRAY)
    kv("t.nested3", [[[1.0], [2.0, 3.0]], [[4.0]]], T.ARRAY, T.ARRAY)

    rng = np.random.default_rng(7)
    a = rng.standard_normal((5, 3)).astype(np.float32)            # numpy shape (5, 3) -> ggml dims [3, 5]
    w.add_tensor("tensor.f32", a)
    b = rng.standard_normal((2, 8)).astype(np.float16)
    w.add_tensor("tensor.f16", b)
    c = rng.standard_normal((2, 64)).astype(np.float32)
    cq = gguf.quants.quantize(c, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("tensor.q8_0", cq, raw_shape=cq.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    d = np.arange(-5, 5, dtype=np.int8)
    w.add_tensor("tensor.i8", d)
    e = np.array([[1, -2], [3, 2**31 - 1]], dtype=np.int32)
    w.add_tensor("tensor.i32", e)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    r = GGUFReader(path)
    out = {
        "version": int(r.fields["GGUF.version"].parts[-1][0]),
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "size": os.path.getsize(path),
        "metadata_keys": [k for k in r.fields if not k.startswith("GGUF.")],
        "tensors": [{
            "name": t.name,
            "type_id": int(t.tensor_type),
            "dims": [int(x) for x in t.shape.tolist()],
            "offset": int(t.data_offset),
            "byte_count": int(t.n_bytes),
            "element_count": int(t.n_elements),
            "fnv1a64": str(fnv1a64(bytes(np.memmap(path, mode="r", dtype=np.uint8)[int(t.data_offset):int(t.data_offset) + int(t.n_bytes)]))),
        } for t in r.tensors],
        "f32_values": [float(x) for x in a.reshape(-1)],
        "dequantized_q8_0_first": [float(x) for x in gguf.quants.dequantize(cq, gguf.GGMLQuantizationType.Q8_0).reshape(-1)[:4]],
    }
    with open(os.path.join(FIX, "gguf_writer_all_types.json"), "w") as fh:
        json.dump(out, fh, indent=1)
    print("wrote", path, out["size"], "bytes")


if __name__ == "__main__":
    main()
