import Foundation
import Testing
import KvantCore
import ModelFormats

/// The oracle fixture written by scripts/oracle/gguf_model_fixture.py (python `gguf`'s GGUFReader).
private struct ModelReference: Decodable {
    struct Tensor: Decodable { let name: String; let type: String; let type_id: UInt32; let dims: [Int]; let offset: Int; let byte_count: Int; let element_count: Int }
    struct Checksum: Decodable { let name: String; let prefix_bytes: Int; let fnv1a64: String }
    struct Meta: Decodable {
        let key: String; let type: String
        let element_type: String?; let count: Int?; let fnv1a64_strings: String?
        let value: JSONScalar?; let first: [JSONScalar]?
    }
    let file: String; let size: Int; let version: Int; let alignment: Int; let data_offset: Int; let tensor_count: Int
    let tensors: [Tensor]; let checksums: [Checksum]; let metadata: [Meta]
}

private enum JSONScalar: Decodable, Equatable {
    case int(Int), double(Double), string(String), bool(Bool)
    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else { self = .string(try c.decode(String.self)) }
    }
}

private func matches(_ v: GGUFValue, _ s: JSONScalar) -> Bool {
    switch (v, s) {
    case (.bool(let a), .bool(let b)): return a == b
    case (.string(let a), .string(let b)): return a == b
    case (_, .int(let b)):
        if let a = v.intValue { return a == b }
        if let f = v.doubleValue { return f == Double(b) }
        return false
    case (_, .double(let b)): return v.floatValue.map { $0 == Float(b) } ?? false
    default: return false
    }
}

@Suite(.enabled(if: TestFiles.realModelPath != nil, TestFiles.skipReason))
struct GGUFRealModelTests {
    private func load() throws -> (GGUFFile, ModelReference)? {
        guard let path = TestFiles.realModel() else { return nil }
        let data = try Data(contentsOf: URL(fileURLWithPath: TestFiles.fixture("gguf_model_reference.json")))
        let ref = try JSONDecoder().decode(ModelReference.self, from: data)
        return (try GGUFFile(path: path), ref)
    }

    @Test func headerAndTensorsMatchPythonGGUF() throws {
        guard let (f, ref) = try load() else { return }
        #expect(f.fileSize == ref.size)
        #expect(f.version == ref.version)
        #expect(f.alignment == ref.alignment)
        #expect(f.dataOffset == ref.data_offset)
        #expect(f.tensors.count == ref.tensor_count)
        #expect(f.tensors.count == 236)
        for (t, r) in zip(f.tensors, ref.tensors) {
            #expect(t.name == r.name)
            #expect(t.type.rawValue == r.type_id)
            #expect(t.type.description == r.type)
            #expect(t.dims == r.dims, "\(t.name)")
            #expect(t.offset == r.offset, "\(t.name)")
            #expect(t.byteCount == r.byte_count, "\(t.name)")
            #expect(t.elementCount == r.element_count, "\(t.name)")
            #expect(f.tensor(named: r.name) == t)
        }
        #expect(f.tensor(named: "no.such.tensor") == nil)
        let embd = try #require(f.tensor(named: "token_embd.weight"))
        #expect(embd.type == .q8_0)
        #expect(embd.dims == [640, 262144])
        #expect(Set(f.tensors.map(\.type)) == [.f32, .q5_0, .q4_K, .q8_0, .q6_K])
    }

    @Test func tensorDataChecksumsMatchPythonGGUF() throws {
        guard let (f, ref) = try load() else { return }
        #expect(ref.checksums.count == 6)
        for c in ref.checksums {
            let t = try #require(f.tensor(named: c.name))
            let d = f.data(of: t)
            #expect(d.count == t.byteCount)
            #expect(String(fnv1a64(d.prefix(c.prefix_bytes))) == c.fnv1a64, "\(c.name)")
        }
    }

    @Test func metadataMatchesPythonGGUF() throws {
        guard let (f, ref) = try load() else { return }
        #expect(f.metadataKeys == ref.metadata.map(\.key))
        for m in ref.metadata {
            let v = try #require(f.metadata[m.key], "\(m.key)")
            #expect(v.typeName == m.type, "\(m.key)")
            if let s = m.value { #expect(matches(v, s), "\(m.key): \(v) vs \(s)") }
            if let count = m.count {
                let a = try #require(v.arrayValue)
                #expect(a.count == count, "\(m.key)")
                #expect(a.first?.typeName == m.element_type, "\(m.key)")
                for (x, y) in zip(a, m.first ?? []) { #expect(matches(x, y), "\(m.key)") }
                if let h = m.fnv1a64_strings {
                    var blob: [UInt8] = []
                    for s in try f.stringArray(m.key) { blob += Array(s.utf8); blob.append(10) }
                    #expect(String(fnv1a64(blob)) == h, "\(m.key)")
                }
            }
        }
        #expect(try f.string("general.architecture") == "gemma3")
        #expect(try f.uint("gemma3.block_count") == 18)
        #expect(try f.uint("gemma3.attention.head_count_kv") == 1)
        #expect(try f.float("gemma3.rope.freq_base") == 1_000_000)
        #expect(try f.bool("tokenizer.ggml.add_bos_token") == true)
        #expect(try f.stringArray("tokenizer.ggml.tokens").count == 262144)
        #expect(try f.floatArray("tokenizer.ggml.scores").count == 262144)
        #expect(try f.intArray("tokenizer.ggml.token_type").prefix(6) == [3, 3, 3, 3, 3, 4])
    }

    @Test func typedAccessorErrorsNameTheKey() throws {
        guard let (f, _) = try load() else { return }
        let missing = kvantError { _ = try f.uint("gemma3.nope") }
        #expect(missing?.reason == .invalidArgument)   // a required key missing: a bad file, not a missing one
        #expect(missing?.message.contains("'gemma3.nope'") == true)
        let wrong = kvantError { _ = try f.string("gemma3.block_count") }
        #expect(wrong?.reason == .invalidArgument)
        #expect(wrong?.message.contains("'gemma3.block_count' has type UINT32, expected STRING") == true)
        let wrongArray = kvantError { _ = try f.floatArray("tokenizer.ggml.tokens") }
        #expect(wrongArray?.message.contains("'tokenizer.ggml.tokens'[0] has type STRING") == true)
    }
}
