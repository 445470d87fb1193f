#!/usr/bin/env python3
"""Oracle for ModelFormatsTests: reads a GGUF model with python `gguf` (gguf.GGUFReader) and writes
Tests/ModelFormatsTests/Fixtures/gguf_model_reference.json with: version, alignment, data offset,
tensor count, every tensor's name/type/dims/absolute offset/byte count, FNV-1a-64 checksums of a few
tensors' data, and the metadata (scalars in full; arrays as type, length, first items, FNV-1a-64 of
their string/number rendering).

Usage: scripts/oracle/gguf_model_fixture.py [model.gguf] (default $KVANT_MODEL or
/work/models/gemma-3-270m-q4_k_m.gguf)
"""
import json, os, sys
import numpy as np
import gguf
from gguf import GGUFReader, GGUFValueType

FNV_OFFSET = 0xcbf29ce484222325
FNV_PRIME = 0x100000001b3


def fnv1a64(data: bytes) -> int:
    # vectorised enough for a few MB: plain loop over bytes in chunks
    h = FNV_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def field_value(reader, f):
    t = f.types[0]
    if t == GGUFValueType.ARRAY:
        return [field_part(f, i) for i in f.data]
    return field_part(f, f.data[0])


def field_part(f, idx):
    part = f.parts[idx]
    t = f.types[-1]
    if t == GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    v = part.tolist()
    return v[0] if len(v) == 1 else v


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("KVANT_MODEL", "/work/models/gemma-3-270m-q4_k_m.gguf")
    r = GGUFReader(path)
    out = {"file": os.path.basename(path), "size": os.path.getsize(path)}
    ver = r.fields["GGUF.version"].parts[-1].tolist()[0]
    out["version"] = int(ver)
    out["alignment"] = int(r.alignment)
    out["data_offset"] = int(r.data_offset)
    out["tensor_count"] = len(r.tensors)
    tensors = []
    for t in r.tensors:
        tensors.append({
            "name": t.name,
            "type": gguf.GGMLQuantizationType(t.tensor_type).name,
            "type_id": int(t.tensor_type),
            "dims": [int(x) for x in t.shape.tolist()],  # ne0 first
            "offset": int(t.data_offset),
            "byte_count": int(t.n_bytes),
            "element_count": int(t.n_elements),
        })
    out["tensors"] = tensors
    # checksums of the raw data of a few small tensors (and the first 64 KiB of a large one)
    mm = np.memmap(path, mode="r", dtype=np.uint8)
    sums = []
    picks = [t for t in r.tensors if t.n_bytes <= 64 * 1024][:4]
    picks += [t for t in r.tensors if t.n_bytes > 64 * 1024][:2]
    for t in picks:
        n = min(int(t.n_bytes), 64 * 1024)
        data = bytes(mm[int(t.data_offset):int(t.data_offset) + n])
        sums.append({"name": t.name, "prefix_bytes": n, "fnv1a64": str(fnv1a64(data))})
    out["checksums"] = sums

    meta = []
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        t = f.types[0]
        entry = {"key": name, "type": t.name}
        if t == GGUFValueType.ARRAY:
            et = f.types[-1]
            vals = field_value(r, f)
            entry["element_type"] = et.name
            entry["count"] = len(vals)
            entry["first"] = vals[:8]
            # FNV over "v\n" renderings, for strings the UTF-8 text itself
            if et == GGUFValueType.STRING:
                blob = b"".join(bytes(f.parts[i]) + b"\n" for i in f.data)
                entry["fnv1a64_strings"] = str(fnv1a64(blob))
        else:
            v = field_value(r, f)
            if t in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
                v = float(v)
            entry["value"] = v
        meta.append(entry)
    out["metadata"] = meta
    dst = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "ModelFormatsTests", "Fixtures", "gguf_model_reference.json")
    with open(dst, "w") as fh:
        json.dump(out, fh, indent=1, ensure_ascii=False)
    print("wrote", os.path.normpath(dst), len(tensors), "tensors", len(meta), "metadata keys")


if __name__ == "__main__":
    main()
