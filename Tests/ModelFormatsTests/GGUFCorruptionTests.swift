import Foundation
import KvantTestSupport
import Testing
import KvantCore
import ModelFormats

/// A small valid file built by hand; each knob lets a test corrupt one field.
private struct Spec {
    var magic = "GGUF"
    var version: UInt32 = 3
    var tensorCountOverride: UInt64? = nil
    var kvCountOverride: UInt64? = nil
    var alignment: UInt32? = nil
    var nameLengthOverride: UInt64? = nil     // length field of the general.name string
    var arrayCountOverride: UInt64? = nil     // count field of the test.array
    var tensorBType: UInt32 = 8               // Q8_0
    var tensorBOffset: UInt64? = nil
    var tensorBDims: [UInt64] = [32]
    var tensorBName = "blk.3.attn_q.weight"
    var boolByte: UInt8 = 1
    var truncateDataBy = 0

    func bytes() -> [UInt8] {
        var w = GGUFBytes()
        let align = max(1, Int(alignment ?? 32))
        var kvs: [(inout GGUFBytes) -> Void] = []
        if let a = alignment { kvs.append { $0.kvU32("general.alignment", a) } }
        kvs.append { w in
            w.str("general.name"); w.u32(8)
            if let n = nameLengthOverride { w.u64(n); w.bytes += Array("tiny".utf8) } else { w.str("tiny") }
        }
        kvs.append { w in
            w.str("test.array"); w.u32(9); w.u32(4)
            w.u64(arrayCountOverride ?? 3); w.u32(7); w.u32(8); w.u32(9)
        }
        kvs.append { w in w.str("test.flag"); w.u32(7); w.u8(boolByte) }
        w.bytes += Array(magic.utf8)
        w.u32(version)
        w.u64(tensorCountOverride ?? 2)
        w.u64(kvCountOverride ?? UInt64(kvs.count))
        for kv in kvs { kv(&w) }
        // tensor a: F32 [4, 2] at 0 (32 bytes); tensor b at the next aligned offset
        w.tensorInfo("a", dims: [4, 2], type: 0, offset: 0)
        let bOffset = tensorBOffset ?? UInt64((32 + align - 1) / align * align)
        w.tensorInfo(tensorBName, dims: tensorBDims, type: tensorBType, offset: bOffset)
        w.pad(to: align)
        let dataStart = w.bytes.count
        for i in 0..<8 { w.f32(Float(i) + 0.5) }
        w.pad(to: align)
        let bBytes = (GGMLType(rawValue: tensorBType)?.bytesPerBlock ?? 34) * 1
        w.bytes += (0..<bBytes).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        _ = dataStart
        if truncateDataBy > 0 { w.bytes.removeLast(truncateDataBy) }
        return w.bytes
    }
}

private func open(_ spec: Spec, _ name: String) throws -> GGUFFile {
    try GGUFFile(path: TestFiles.write(spec.bytes(), name: name))
}

private func openReturningPath(_ spec: Spec, _ name: String) -> (String, KvantError?) {
    let path = TestFiles.write(spec.bytes(), name: name)
    return (path, kvantError { _ = try GGUFFile(path: path) })
}

/// The KvantError thrown opening `spec`; requires one with reason .invalidArgument naming the file.
private func failure(_ spec: Spec, _ name: String) -> String {
    let (path, e) = openReturningPath(spec, name)
    #expect(e != nil, "\(name): expected a KvantError")
    #expect(e?.reason == .invalidArgument)
    #expect(e?.message.hasPrefix(path + ": ") == true, "\(e?.message ?? "")")
    return e?.message ?? ""
}

@Suite struct GGUFCorruptionTests {
    @Test func validHandWrittenFileParses() throws {
        let f = try open(Spec(), "valid.gguf")
        #expect(f.version == 3)
        #expect(f.alignment == 32)
        #expect(f.metadata["general.name"] == .string("tiny"))
        #expect(f.metadata["test.array"] == .array([.uint32(7), .uint32(8), .uint32(9)]))
        #expect(try f.intArray("test.array") == [7, 8, 9])
        #expect(try f.bool("test.flag"))
        #expect(f.tensors.map(\.name) == ["a", "blk.3.attn_q.weight"])
        let a = try #require(f.tensor(named: "a"))
        #expect(a.dims == [4, 2] && a.type == .f32 && a.byteCount == 32 && a.elementCount == 8)
        #expect(a.offset == f.dataOffset && f.dataOffset % 32 == 0)
        let floats = f.data(of: a).withMemoryRebound(to: Float.self) { Array($0) }
        #expect(floats == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5])
        let b = try #require(f.tensor(named: "blk.3.attn_q.weight"))
        #expect(b.type == .q8_0 && b.byteCount == 34 && b.offset == f.dataOffset + 32)
        #expect(Array(f.data(of: b).prefix(3)) == [0, 7, 14])
    }

    @Test func missingFileIsNotFound() {
        let e = kvantError { _ = try GGUFFile(path: TestFiles.dir + "/does-not-exist.gguf") }
        #expect(e?.reason == .notFound)
        #expect(e?.message.contains("does-not-exist.gguf") == true)
    }

    @Test func everyTruncationIsAClearError() {
        let full = Spec().bytes()
        for n in 0..<full.count {
            let name = "trunc.gguf"
            let e = kvantError { _ = try GGUFFile(path: TestFiles.write(Array(full.prefix(n)), name: name)) }
            #expect(e?.reason == .invalidArgument, "prefix \(n)")
            let m = e?.message ?? ""
            if !(m.contains("truncated") || m.contains("past the end of the file") || m.contains("remain in the file")) { Issue.record("prefix \(n): \(m)") }
        }
        let empty = kvantError { _ = try GGUFFile(path: TestFiles.write([], name: "empty.gguf")) }
        #expect(empty?.message.contains("empty") == true)
    }

    @Test func wrongMagic() {
        var s = Spec(); s.magic = "GGML"
        #expect(failure(s, "magic.gguf").contains("wrong magic"))
    }

    @Test func unknownVersions() {
        for v: UInt32 in [0, 1, 4, 0xFFFF_FFFF] {
            var s = Spec(); s.version = v
            #expect(failure(s, "version.gguf").contains("unknown GGUF version \(v)"))
        }
    }

    @Test func bigEndianFileIsNamed() {
        var s = Spec(); s.version = UInt32(3).byteSwapped
        #expect(failure(s, "be.gguf").contains("big-endian GGUF (version 3 with swapped bytes) is not supported"))
    }

    @Test func unknownTensorType() {
        var s = Spec(); s.tensorBType = 99
        #expect(failure(s, "type.gguf").contains("tensor 'blk.3.attn_q.weight': unknown tensor type 99"))
    }

    @Test func offsetPastEndOfFile() {
        var s = Spec(); s.tensorBOffset = 1 << 40
        let m = failure(s, "offset.gguf")
        #expect(m.contains("tensor 'blk.3.attn_q.weight': data offset 1099511627776"))
        #expect(m.contains("past the end of the file"))
    }

    @Test func dataEndsPastEndOfFile() {
        var s = Spec(); s.truncateDataBy = 1
        let m = failure(s, "short-data.gguf")
        let size = Spec().bytes().count - 1
        #expect(m.contains("tensor 'blk.3.attn_q.weight': data [") && m.contains("ends past the end of the file (\(size) bytes)"), "\(m)")
        var big = Spec(); big.tensorBDims = [32, 1 << 20]
        #expect(failure(big, "big.gguf").contains("ends past the end of the file"))
        var huge = Spec(); huge.tensorBDims = [1 << 40, 1 << 40]
        #expect(failure(huge, "huge.gguf").contains("element count overflows"))
    }

    @Test func tensorNotAligned() {
        var s = Spec(); s.tensorBOffset = 40
        #expect(failure(s, "unaligned.gguf").contains("tensor 'blk.3.attn_q.weight': data offset 40 is not aligned to 32 bytes"))
    }

    @Test func overlappingTensorData() {
        var s = Spec(); s.tensorBOffset = 0; s.tensorBType = 0; s.tensorBDims = [4]   // F32 [4] at 0 overlaps 'a'
        #expect(failure(s, "overlap.gguf").contains("overlaps tensor"))
    }

    @Test func rowNotWholeBlocks() {
        var s = Spec(); s.tensorBDims = [33]
        #expect(failure(s, "rows.gguf").contains("not a multiple of the Q8_0 block size 32"))
    }

    @Test func absurdCounts() {
        var t = Spec(); t.tensorCountOverride = 1 << 60
        #expect(failure(t, "tensors.gguf").contains("tensor count 1152921504606846976 is impossible"))
        var k = Spec(); k.kvCountOverride = 1 << 60
        #expect(failure(k, "kvs.gguf").contains("metadata KV count 1152921504606846976 is impossible"))
        var s = Spec(); s.nameLengthOverride = 1 << 62
        #expect(failure(s, "string.gguf").contains("metadata 'general.name': string length 4611686018427387904"))
        var a = Spec(); a.arrayCountOverride = 1 << 61
        #expect(failure(a, "array.gguf").contains("metadata 'test.array': array count 2305843009213693952"))
        var m = Spec(); m.arrayCountOverride = UInt64.max
        #expect(failure(m, "array-max.gguf").contains("array count 18446744073709551615"))
    }

    @Test func alignmentMustBeAPowerOfTwo() throws {
        for bad: UInt32 in [0, 3, 48] {
            var s = Spec(); s.alignment = bad
            #expect(failure(s, "align.gguf").contains("'general.alignment' = \(bad) is not a power of two"))
        }
        var ok = Spec(); ok.alignment = 64
        let f = try open(ok, "align64.gguf")
        #expect(f.alignment == 64 && f.dataOffset % 64 == 0)
        #expect(f.tensor(named: "blk.3.attn_q.weight")?.offset == f.dataOffset + 64)
    }

    @Test func otherMalformedFields() {
        var b = Spec(); b.boolByte = 2
        #expect(failure(b, "bool.gguf").contains("metadata 'test.flag': BOOL value 2"))
        var d = Spec(); d.tensorBName = "a"
        #expect(failure(d, "dup.gguf").contains("tensor 'a' appears twice"))
        var n = Spec(); n.tensorBDims = [32, 1, 1, 1, 1]
        #expect(failure(n, "ndims.gguf").contains("n_dims 5 exceeds the maximum of 4"))
    }

    @Test func unknownValueTypeAndDeepNesting() {
        var w = GGUFBytes()
        w.header(tensors: 0, kvs: 1)
        w.str("x"); w.u32(13); w.u32(0)
        let e = kvantError { _ = try GGUFFile(path: TestFiles.write(w.bytes, name: "vtype.gguf")) }
        #expect(e?.message.contains("metadata 'x': unknown metadata value type 13") == true)

        var deep = GGUFBytes()
        deep.header(tensors: 0, kvs: 1)
        deep.str("deep"); deep.u32(9)
        for _ in 0..<100 { deep.u32(9); deep.u64(1) }
        deep.u32(4); deep.u64(1); deep.u32(5)
        let e2 = kvantError { _ = try GGUFFile(path: TestFiles.write(deep.bytes, name: "deep.gguf")) }
        #expect(e2?.message.contains("nested deeper than") == true)
    }

    @Test func arrayCountLimit() {
        var w = GGUFBytes()
        w.header(tensors: 0, kvs: 1)
        w.str("big"); w.u32(9); w.u32(0); w.u64(UInt64(GGUFFile.maxArrayCount) + 1)
        w.bytes += [UInt8](repeating: 0, count: GGUFFile.maxArrayCount + 1)
        let e = kvantError { _ = try GGUFFile(path: TestFiles.write(w.bytes, name: "bigarray.gguf")) }
        #expect(e?.message.contains("metadata 'big': array count 16777217 exceeds the limit of 16777216 elements") == true)
    }

    /// Random byte corruption: every outcome is either a parsed file or a KvantError, never a crash.
    @Test func randomCorruptionNeverCrashes() {
        let full = Spec().bytes()
        var rng = SplitMix64(seed: 42)
        var failures = 0
        for i in 0..<2000 {
            var b = full
            for _ in 0..<(1 + Int(rng.next() % 4)) {
                b[Int(rng.next() % UInt64(b.count))] = UInt8(truncatingIfNeeded: rng.next())
            }
            do {
                let f = try GGUFFile(path: TestFiles.write(b, name: "fuzz.gguf"))
                for t in f.tensors { #expect(t.offset + t.byteCount <= f.fileSize, "case \(i)") }
            } catch is KvantError {
                failures += 1
            } catch {
                Issue.record("case \(i): non-KvantError \(error)")
            }
        }
        #expect(failures > 100)
    }
}

/// Issue 11: a corrupted length field must never turn file bytes into an error message.
@Suite struct GGUFErrorSizeTests {
    private func error(_ bytes: [UInt8], _ name: String) -> KvantError? {
        do { _ = try GGUFFile(path: TestFiles.write(bytes, name: name)); return nil } catch let e as KvantError { return e } catch { return nil }
    }

    @Test("a key length corrupted to 2^26 + 21 inside a large file: an error naming the field and the offset, not the bytes")
    func corruptedKeyLength() throws {
        // A large string value (2^26 + 100 bytes) makes the corrupted key length fit inside the file, as in
        // the real model, where the old reader read 64 MiB of the file as the key and quoted it.
        var w = GGUFBytes()
        w.header(tensors: 0, kvs: 2)
        let keyLengthOffset = w.bytes.count
        w.str("tokenizer.ggml.model"); w.u32(8); w.str("llama")
        w.str("big.value"); w.u32(8)
        w.u64(UInt64(1 << 26) + 100)
        w.bytes += [UInt8](repeating: UInt8(ascii: "A"), count: (1 << 26) + 100)
        var bytes = w.bytes
        withUnsafeBytes(of: (UInt64(1 << 26) + 21).littleEndian) { for (i, b) in $0.enumerated() { bytes[keyLengthOffset + i] = b } }
        let e = try #require(error(bytes, "keylen.gguf"))
        #expect(e.reason == .invalidArgument)
        #expect(e.message.count < 300, "\(e.message.prefix(400))")
        #expect(e.message.contains("metadata KV #0 key: length 67108885 at offset \(keyLengthOffset) exceeds the limit of 65535 bytes"), "\(e.message)")
    }

    @Test("a tensor name read from garbage is quoted escaped and cut, never raw")
    func garbledTensorName() throws {
        var w = GGUFBytes()
        w.header(tensors: 1, kvs: 0)
        // The name's length (60) runs over the tensor info's binary fields: those bytes become the "name".
        w.u64(60); w.bytes += Array("blk.0.attn_q.weight".utf8)
        w.u32(1); w.u64(4); w.u32(0xFFFF_FFFF); w.u64(0)
        w.bytes += [UInt8](repeating: 0x07, count: 64)
        let e = try #require(error(w.bytes, "name.gguf"))
        #expect(e.message.count < 300)
        #expect(!e.message.unicodeScalars.contains { $0.value < 0x20 }, "\(e.message)")
        #expect(e.message.contains("tensor 'blk.0.attn_q.weight\\u{1}\\u{0}"), "\(e.message)")
        #expect(e.message.contains("…' ("), "\(e.message)")
    }

    @Test("quoting: escapes, caps at 48 characters with the length")
    func quoting() throws {
        var w = GGUFBytes()
        w.header(tensors: 0, kvs: 2)
        let key = "k\u{1}'" + String(repeating: "z", count: 80)
        w.kvU32(key, 1); w.kvU32(key, 2)   // the same key twice: the error quotes it
        let e = try #require(error(w.bytes, "dup.gguf"))
        #expect(e.message.contains("metadata key 'k\\u{1}\\'" + String(repeating: "z", count: 40) + "…' (83 bytes) appears twice"), "\(e.message)")
    }
}

