import Foundation
import Testing
import KvantCore
import ModelFormats

private struct WriterReference: Decodable {
    struct Tensor: Decodable { let name: String; let type_id: UInt32; let dims: [Int]; let offset: Int; let byte_count: Int; let element_count: Int; let fnv1a64: String }
    let version: Int; let alignment: Int; let data_offset: Int; let size: Int
    let metadata_keys: [String]; let tensors: [Tensor]; let f32_values: [Float]
}

/// A file written by python gguf's GGUFWriter (scripts/oracle/gguf_writer_fixture.py).
@Suite struct GGUFWriterFixtureTests {
    let file: GGUFFile
    private let ref: WriterReference

    init() throws {
        file = try GGUFFile(path: TestFiles.fixture("gguf_writer_all_types.gguf"))
        let data = try Data(contentsOf: URL(fileURLWithPath: TestFiles.fixture("gguf_writer_all_types.json")))
        ref = try JSONDecoder().decode(WriterReference.self, from: data)
    }

    @Test func headerAndLayout() {
        #expect(file.version == 3)
        #expect(file.alignment == 64 && ref.alignment == 64)
        #expect(file.dataOffset == ref.data_offset)
        #expect(file.fileSize == ref.size)
        #expect(file.metadataKeys == ref.metadata_keys)
    }

    @Test func everyScalarType() throws {
        let m = file.metadata
        #expect(m["general.architecture"] == .string("testarch"))
        #expect(m["general.alignment"] == .uint32(64))
        #expect(m["t.uint8"] == .uint8(255))
        #expect(m["t.int8"] == .int8(-128))
        #expect(m["t.uint16"] == .uint16(65535))
        #expect(m["t.int16"] == .int16(-32768))
        #expect(m["t.uint32"] == .uint32(4_294_967_295))
        #expect(m["t.int32"] == .int32(-2_147_483_648))
        #expect(m["t.float32"] == .float32(3.25))
        #expect(m["t.bool_true"] == .bool(true))
        #expect(m["t.bool_false"] == .bool(false))
        #expect(m["t.string"] == .string("héllo 世界 🤖 \t\n"))
        #expect(m["t.string_empty"] == .string(""))
        #expect(m["t.uint64"] == .uint64(UInt64.max))
        #expect(m["t.int64"] == .int64(Int64.min))
        #expect(m["t.float64"] == .float64(-1.5e300))
        #expect(try file.uint("t.uint32") == 4_294_967_295)
        #expect(try file.int("t.int8") == -128)
        #expect(kvantError { _ = try file.uint("t.int8") }?.message.contains("'t.int8' is negative") == true)
        // UINT64.max does not fit an Int: a clear type error, not a trap
        #expect(kvantError { _ = try file.uint("t.uint64") }?.reason == .invalidArgument)
        #expect(try file.float("t.float64") == Float(-1.5e300))
        #expect(try file.string("t.string_empty") == "")
    }

    @Test func everyArrayType() throws {
        let m = file.metadata
        #expect(m["t.arr_uint8"] == .array([.uint8(0), .uint8(1), .uint8(255)]))
        #expect(m["t.arr_int8"] == .array([.int8(-1), .int8(2), .int8(-3)]))
        #expect(m["t.arr_uint16"] == .array([.uint16(1), .uint16(65535)]))
        #expect(m["t.arr_int16"] == .array([.int16(-2), .int16(300)]))
        #expect(m["t.arr_uint32"] == .array([.uint32(7), .uint32(8), .uint32(9)]))
        #expect(m["t.arr_int32"] == .array([.int32(-7), .int32(0), .int32(2_147_483_647)]))
        #expect(m["t.arr_float32"] == .array([.float32(0.5), .float32(-2.0), .float32(1e-3)]))
        #expect(m["t.arr_bool"] == .array([.bool(true), .bool(false), .bool(true)]))
        #expect(m["t.arr_string"] == .array([.string("a"), .string(""), .string("ß▁<0x0A>")]))
        #expect(m["t.arr_uint64"] == .array([.uint64(1 << 63), .uint64(1)]))
        #expect(m["t.arr_int64"] == .array([.int64(-(1 << 62)), .int64(5)]))
        #expect(m["t.arr_float64"] == .array([.float64(0.1), .float64(-0.25)]))
        #expect(try file.intArray("t.arr_int16") == [-2, 300])
        #expect(try file.floatArray("t.arr_float64") == [Float(0.1), -0.25])
        #expect(try file.stringArray("t.arr_string") == ["a", "", "ß▁<0x0A>"])
    }

    @Test func nestedArrays() {
        let m = file.metadata
        #expect(m["t.nested_int32"] == .array([.array([.int32(1), .int32(2)]), .array([.int32(3)]),
                                               .array([.int32(4), .int32(5), .int32(6)])]))
        #expect(m["t.nested_string"] == .array([.array([.string("x"), .string("y")]), .array([.string("z")])]))
        #expect(m["t.nested3"] == .array([.array([.array([.float32(1)]), .array([.float32(2), .float32(3)])]),
                                          .array([.array([.float32(4)])])]))
        #expect(kvantError { _ = try file.stringArray("t.nested_string") }?.message.contains("'t.nested_string'[0] has type ARRAY") == true)
    }

    @Test func tensorsMatchPythonReader() throws {
        #expect(file.tensors.count == ref.tensors.count && ref.tensors.count == 5)
        for (t, r) in zip(file.tensors, ref.tensors) {
            #expect(t.name == r.name)
            #expect(t.type.rawValue == r.type_id)
            #expect(t.dims == r.dims)
            #expect(t.offset == r.offset)
            #expect(t.offset % 64 == 0)
            #expect(t.byteCount == r.byte_count)
            #expect(t.elementCount == r.element_count)
            #expect(String(fnv1a64(file.data(of: t))) == r.fnv1a64, "\(t.name)")
        }
        let f32 = try #require(file.tensor(named: "tensor.f32"))
        #expect(f32.dims == [3, 5])
        let values = file.data(of: f32).withMemoryRebound(to: Float.self) { Array($0) }
        #expect(values == ref.f32_values)
        #expect(file.tensor(named: "tensor.q8_0")?.type == .q8_0)
        #expect(file.tensor(named: "tensor.q8_0")?.dims == [64, 2])
        #expect(file.tensor(named: "tensor.i32")?.type == .i32)
    }
}

/// GGUF version 2 (same layout as v3 for little-endian files), written by hand.
@Suite struct GGUFVersion2Tests {
    @Test func version2FileParses() throws {
        var w = GGUFBytes()
        w.header(version: 2, tensors: 2, kvs: 4)
        w.kvString("general.architecture", "llama")
        w.kvU32("llama.block_count", 2)
        w.str("tokenizer.ggml.scores"); w.u32(9); w.u32(6); w.u64(2); w.f32(-1.5); w.f32(0.25)
        w.str("x.f64"); w.u32(12); w.f64(2.5)
        w.tensorInfo("token_embd.weight", dims: [32, 2], type: 8, offset: 0)        // Q8_0: 2 blocks = 68 bytes
        w.tensorInfo("output_norm.weight", dims: [4], type: 0, offset: 96)          // F32 at the next 32-aligned offset
        w.pad(to: 32)
        let start = w.bytes.count
        w.bytes += [UInt8](repeating: 0xAB, count: 68)
        w.pad(to: 32)
        for v: Float in [1, 2, 3, 4] { w.f32(v) }
        let path = TestFiles.write(w.bytes, name: "v2.gguf")
        let f = try GGUFFile(path: path)
        #expect(f.version == 2)
        #expect(f.dataOffset == start)
        #expect(try f.string("general.architecture") == "llama")
        #expect(try f.uint("llama.block_count") == 2)
        #expect(try f.floatArray("tokenizer.ggml.scores") == [-1.5, 0.25])
        #expect(try f.float("x.f64") == 2.5)
        let e = try #require(f.tensor(named: "token_embd.weight"))
        #expect(e.type == .q8_0 && e.byteCount == 68 && e.elementCount == 64 && e.offset == start)
        #expect(f.data(of: e).allSatisfy { $0 == 0xAB })
        let n = try #require(f.tensor(named: "output_norm.weight"))
        #expect(n.offset == start + 96)
        #expect(f.data(of: n).withMemoryRebound(to: Float.self) { Array($0) } == [1, 2, 3, 4])
    }
}
