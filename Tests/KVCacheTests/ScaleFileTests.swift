import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

@Suite("kv_cache_scales.json: loading, validation, TP merge, encoding")
struct ScaleFileTests {
    static func file(modelType: String? = "gemma3", dtype: String = "float8_e4m3fn", ranks: [String: [String: String]]) -> String {
        let mt = modelType.map { "\"\($0)\"" } ?? "null"
        let sf = ranks.map { r, layers in "\"\(r)\": {" + layers.map { "\"\($0)\": \($1)" }.joined(separator: ", ") + "}" }
        return "{\"model_type\": \(mt), \"kv_cache\": {\"dtype\": \"\(dtype)\", \"scaling_factor\": {\(sf.joined(separator: ", "))}}}"
    }
    /// A valid 3-layer per-tensor file with the given `k_scaling_factor` / `v_scaling_factor` objects (nil = absent).
    static func withKV(k: String?, v: String?) -> String {
        var extra = ""
        if let k { extra += ", \"k_scaling_factor\": \(k)" }
        if let v { extra += ", \"v_scaling_factor\": \(v)" }
        return "{\"model_type\": \"gemma3\", \"kv_cache\": {\"dtype\": \"int8\", \"scaling_factor\": {\"0\": {\"0\": 0.5, \"1\": 0.5, \"2\": 0.5}}\(extra)}}"
    }
    static func layers(_ values: [String]) -> [String: String] {
        Dictionary(uniqueKeysWithValues: values.enumerated().map { ("\($0)", $1) })
    }

    @Test("SHA-256 test vectors (FIPS 180-4)")
    func sha256Vectors() {
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hex([UInt8]()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(SHA256.hex([UInt8](repeating: 0x61, count: 1000)) == "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
    }

    @Test("a valid per-tensor file loads; dtype string recorded; sha256 of the bytes")
    func validPerTensor() throws {
        let dir = tempDir()
        let text = Self.file(dtype: "float8_e4m3fn", ranks: ["0": Self.layers(["0.02", "0.5", "1e-3"])])
        let path = writeFile(dir, "s.json", text)
        let s = try KVScales.load(path: path, expectedModelType: "gemma3", numLayers: 3, numKVHeads: 1)
        #expect(s.granularity == .perTensor)
        #expect(s.values == [0.02, 0.5, 0.001])
        #expect(s.fileDType == "float8_e4m3fn")
        #expect(s.modelType == "gemma3")
        #expect(s.warnings.isEmpty)
        #expect(s.tpSize == 1)
        #expect(s.path == path)
        #expect(s.sha256 == SHA256.hex(Array(text.utf8)))
    }

    @Test("model_type null is accepted with a warning; a mismatch throws")
    func modelTypePolicy() throws {
        let dir = tempDir()
        let nullPath = writeFile(dir, "null.json", Self.file(modelType: nil, ranks: ["0": Self.layers(["0.1"])]))
        let s = try KVScales.load(path: nullPath, expectedModelType: "gemma3", numLayers: 1, numKVHeads: 1)
        #expect(s.modelType == nil)
        #expect(s.warnings.count == 1)
        #expect(s.warnings.first?.contains("model_type is null") == true)
        #expect(s.warnings.first?.contains(nullPath) == true)
        let llama = writeFile(dir, "llama.json", Self.file(modelType: "llama", ranks: ["0": Self.layers(["0.1"])]))
        let e = kvantError { _ = try KVScales.load(path: llama, expectedModelType: "gemma3", numLayers: 1, numKVHeads: 1) }
        #expect(e?.reason == .invalidArgument)
        #expect(e?.message.contains(llama) == true)
        #expect(e?.message.contains("'llama'") == true && e?.message.contains("'gemma3'") == true)
        // Any dtype string is accepted and recorded.
        let odd = writeFile(dir, "odd.json", Self.file(dtype: "int8", ranks: ["0": Self.layers(["0.1"])]))
        #expect(try KVScales.load(path: odd, expectedModelType: "gemma3", numLayers: 1, numKVHeads: 1).fileDType == "int8")
    }

    /// Strings read from the file (model_type, TP rank and layer keys, duplicate keys, keys on a type
    /// error's path) reach the message through `quotedName`: escaped, cut after 48 characters, the
    /// full length named — never a control character or 200 bytes of the file.
    @Test("names read from a scale file are quoted escaped and cut after 48 characters", arguments: [
        #"{"model_type": "gemma3\u0001\u001b[31m"# + String(repeating: "A", count: 200) + #"", "kv_cache": {"dtype": "int8", "scaling_factor": {"0": {"0": 0.1}}}}"#,
        #"{"model_type": "gemma3", "kv_cache": {"dtype": "int8", "scaling_factor": {"0": {"3\u001b[31m"# + String(repeating: "A", count: 200) + #"": 0.1}}}}"#,
        #"{"model_type": "gemma3", "kv_cache": {"dtype": "int8", "scaling_factor": {"\u001b[31m"# + String(repeating: "A", count: 200) + #"": {"0": 0.1}}}}"#,
        #"{"model_type": "gemma3", "kv_cache": {"dtype": "int8", "scaling_factor": {"0": {"0": 0.1}}, "\u001b[31m"# + String(repeating: "A", count: 200) + #"": 1, "\u001b[31m"# + String(repeating: "A", count: 200) + #"": 2}}"#,
        #"{"model_type": "gemma3", "kv_cache": {"dtype": "int8", "scaling_factor": {"0": {"\u001b[31m"# + String(repeating: "A", count: 200) + #"": "x"}}}}"#,
    ])
    func hostileNamesAreQuoted(text: String) {
        let e = kvantError { _ = try KVScales.decode(data: Data(text.utf8), source: "scale file 's.json'", expectedModelType: "gemma3", numLayers: 1, numKVHeads: 1) }
        let m = e?.message ?? ""
        #expect(e?.reason == .invalidArgument)
        #expect(!m.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }, "raw control character in: \(m)")
        #expect(!m.contains(String(repeating: "A", count: 49)), "uncut name in: \(m)")
        #expect(m.contains("\\u{1b}[31m"), "escaped ESC in: \(m)")
        #expect(m.contains("…' ("), "cut marker in: \(m)")
    }

    struct BadCase: Sendable, CustomStringConvertible {
        var name: String
        var text: String?            // nil = the file does not exist
        var tpSize: Int? = nil
        var reason: ErrorReason = .invalidArgument
        var mustContain: [String]
        var description: String { name }
    }

    static let badCases: [BadCase] = [
        .init(name: "missing file", text: nil, reason: .notFound, mustContain: ["no such file"]),
        .init(name: "bad JSON", text: "{\"model_type\": \"gemma3\", \"kv_cache\": {", mustContain: ["not valid JSON"]),
        .init(name: "missing layer", text: file(ranks: ["0": ["0": "0.1", "2": "0.1"]]),
              mustContain: ["rank 0", "layer 1 missing", "0..<3"]),
        .init(name: "extra layer", text: file(ranks: ["0": layers(["0.1", "0.1", "0.1", "0.1"])]),
              mustContain: ["rank 0", "layer 3 out of range", "0..<3"]),
        .init(name: "non-integer layer key", text: file(ranks: ["0": ["0": "0.1", "1": "0.1", "two": "0.1"]]),
              mustContain: ["rank 0", "layer key 'two'", "not an integer"]),
        .init(name: "non-integer rank key (old rank0 example)", text: file(ranks: ["rank0": layers(["0.1", "0.1", "0.1"])]),
              mustContain: ["TP rank key 'rank0'", "not a non-negative integer"]),
        .init(name: "missing rank", text: file(ranks: ["0": layers(["0.1", "0.1", "0.1"]), "2": layers(["0.1", "0.1", "0.1"])]),
              mustContain: ["TP rank 1 missing", "0..<2"]),
        .init(name: "rank count differs from tp_size", text: file(ranks: ["0": layers(["0.1", "0.1", "0.1"])]), tpSize: 2,
              mustContain: ["TP rank 1 missing", "tp_size 2"]),
        .init(name: "zero scale", text: file(ranks: ["0": layers(["0.1", "0", "0.1"])]),
              mustContain: ["rank 0 layer 1", "finite positive"]),
        .init(name: "negative scale", text: file(ranks: ["0": layers(["0.1", "0.1", "-0.5"])]),
              mustContain: ["rank 0 layer 2", "-0.5", "finite positive"]),
        .init(name: "overflowing scale (inf as float)", text: file(ranks: ["0": layers(["1e39", "0.1", "0.1"])]),
              mustContain: ["rank 0 layer 0", "finite positive"]),
        .init(name: "string scale", text: file(ranks: ["0": layers(["\"0.1\"", "0.1", "0.1"])]),
              mustContain: ["rank 0, layer 0", "expected a scale"]),
        .init(name: "wrong per-head list length", text: file(ranks: ["0": layers(["[0.1, 0.2]", "[0.1, 0.2]", "[0.1]"])]),
              mustContain: ["rank 0 layer 2", "1 entries", "expected 2"]),
        .init(name: "mixed scalar and list", text: file(ranks: ["0": layers(["[0.1, 0.2]", "0.3", "[0.1, 0.2]"])]),
              mustContain: ["rank 0 layer 1", "same form"]),
        .init(name: "missing kv_cache", text: "{\"model_type\": \"gemma3\"}", mustContain: ["missing key 'kv_cache'"]),
        .init(name: "scaling_factor errors name the field", text: file(ranks: ["0": layers(["0.1", "0.1", "-3"])]),
              mustContain: ["kv_cache.scaling_factor: rank 0 layer 2", "-3"]),
        .init(name: "scale beyond fp32 is reported as written", text: file(ranks: ["0": layers(["0.1", "1e39", "0.1"])]),
              mustContain: ["rank 0 layer 1", "1e+39 overflows fp32"]),
        .init(name: "scale below fp32 is reported as written", text: file(ranks: ["0": layers(["0.1", "1e-50", "0.1"])]),
              mustContain: ["rank 0 layer 1", "1e-50 underflows fp32 to 0"]),
        .init(name: "NaN literal: not JSON, with the parser's position", text: file(ranks: ["0": layers(["0.1", "NaN", "0.1"])]),
              mustContain: ["not valid JSON (", "NaN and Infinity are not JSON numbers"]),
        .init(name: "a list where the TP ranks belong", text: "{\"model_type\": \"gemma3\", \"kv_cache\": {\"dtype\": \"int8\", \"scaling_factor\": [1, 2, 3]}}",
              mustContain: ["at kv_cache.scaling_factor: expected an object ({\"<tp_rank>\""]),
        .init(name: "empty per-head list in layer 0", text: file(ranks: ["0": layers(["[]", "0.1", "0.1"])]),
              mustContain: ["rank 0 layer 0: empty per-head list"]),
        .init(name: "mixed forms name the layer that set the form", text: file(ranks: ["0": layers(["[0.1, 0.2]", "0.3", "[0.1, 0.2]"])]),
              mustContain: ["rank 0 layer 1: a single scale, but rank 0 layer 0 has a per-head list"]),
        .init(name: "k_scaling_factor without v_scaling_factor", text: withKV(k: "{\"0\": {\"0\": 0.1, \"1\": 0.1, \"2\": 0.1}}", v: nil),
              mustContain: ["k_scaling_factor is given without kv_cache.v_scaling_factor", "both"]),
        .init(name: "v_scaling_factor without k_scaling_factor", text: withKV(k: nil, v: "{\"0\": {\"0\": 0.1, \"1\": 0.1, \"2\": 0.1}}"),
              mustContain: ["v_scaling_factor is given without kv_cache.k_scaling_factor"]),
        .init(name: "k_scaling_factor missing a layer", text: withKV(k: "{\"0\": {\"0\": 0.1, \"2\": 0.1}}", v: "{\"0\": {\"0\": 0.1, \"1\": 0.1, \"2\": 0.1}}"),
              mustContain: ["kv_cache.k_scaling_factor: rank 0: layer 1 missing"]),
        .init(name: "negative V scale", text: withKV(k: "{\"0\": {\"0\": 0.1, \"1\": 0.1, \"2\": 0.1}}", v: "{\"0\": {\"0\": 0.1, \"1\": -2, \"2\": 0.1}}"),
              mustContain: ["kv_cache.v_scaling_factor: rank 0 layer 1", "-2", "finite positive"]),
        .init(name: "k_scaling_factor with another TP size", text: withKV(k: "{\"0\": {\"0\": 0.1, \"1\": 0.1, \"2\": 0.1}, \"1\": {\"0\": 0.1, \"1\": 0.1, \"2\": 0.1}}", v: "{\"0\": {\"0\": 0.1, \"1\": 0.1, \"2\": 0.1}}"),
              mustContain: ["kv_cache.k_scaling_factor: unexpected TP rank 1", "tp_size 1"]),
        .init(name: "per-head K/V lists beside per-layer scaling_factor", text: withKV(k: "{\"0\": {\"0\": [0.1, 0.1], \"1\": [0.1, 0.1], \"2\": [0.1, 0.1]}}", v: "{\"0\": {\"0\": [0.1, 0.1], \"1\": [0.1, 0.1], \"2\": [0.1, 0.1]}}"),
              mustContain: ["kv_cache.k_scaling_factor has per-head lists", "same form"]),
    ]

    @Test("every broken file throws a KvantError naming the file, rank, layer and expectation", arguments: badCases)
    func brokenFiles(c: BadCase) {
        let dir = tempDir()
        let path = c.text.map { writeFile(dir, "scales.json", $0) } ?? dir + "/absent.json"
        let e = kvantError { _ = try KVScales.load(path: path, expectedModelType: "gemma3", numLayers: 3, numKVHeads: 2, tpSize: c.tpSize) }
        #expect(e != nil, "\(c.name) must throw")
        #expect(e?.reason == c.reason)
        #expect(e?.message.contains(path) == true, "message names the file: \(e?.message ?? "-")")
        for s in c.mustContain { #expect(e?.message.contains(s) == true, "'\(s)' in: \(e?.message ?? "-")") }
    }

    @Test("TP=2 per-head file: heads split over ranks in order, merged by concatenation")
    func tpPerHead() throws {
        let dir = tempDir()
        let text = Self.file(ranks: ["0": Self.layers(["[0.1, 0.2]", "[0.5, 0.6]"]), "1": Self.layers(["[0.3, 0.4]", "[0.7, 0.8]"])])
        let path = writeFile(dir, "tp2.json", text)
        let s = try KVScales.load(path: path, expectedModelType: "gemma3", numLayers: 2, numKVHeads: 4)
        #expect(s.granularity == .perHead && s.tpSize == 2)
        #expect(s.layerScales(0) == [0.1, 0.2, 0.3, 0.4])
        #expect(s.layerScales(1) == [0.5, 0.6, 0.7, 0.8])
        // Encoding with the same TP size reproduces the split; loading that gives the same scales.
        let data = try s.encode(modelType: "gemma3", tpSize: 2, perHead: true)
        let back = try KVScales.load(path: writeFile(dir, "re.json", String(decoding: data, as: UTF8.self)),
                                     expectedModelType: "gemma3", numLayers: 2, numKVHeads: 4)
        #expect(back.values == s.values)
        #expect(back.tpSize == 2)
        // A TP=4 encoding has one head per rank and still merges to the same scales.
        let tp4 = try s.encode(modelType: nil, tpSize: 4, perHead: true)
        let json = try JSONSerialization.jsonObject(with: tp4) as! [String: Any]
        let sf = (json["kv_cache"] as! [String: Any])["scaling_factor"] as! [String: [String: [Double]]]
        #expect(sf.keys.sorted() == ["0", "1", "2", "3"])
        #expect(sf["2"]!["1"]! == [Double(Float(0.7))])
        let back4 = try KVScales.load(path: writeFile(dir, "tp4.json", String(decoding: tp4, as: UTF8.self)),
                                      expectedModelType: "gemma3", numLayers: 2, numKVHeads: 4)
        #expect(back4.values == s.values && back4.warnings.count == 1)
    }

    @Test("per-tensor TP ranks merge by max; encode gives every rank the same value")
    func tpPerTensor() throws {
        let dir = tempDir()
        let text = Self.file(ranks: ["0": Self.layers(["0.1", "0.9"]), "1": Self.layers(["0.3", "0.2"])])
        let s = try KVScales.load(path: writeFile(dir, "t.json", text), expectedModelType: "gemma3", numLayers: 2, numKVHeads: 1)
        #expect(s.values == [0.3, 0.9])
        let data = try s.encode(modelType: "gemma3", tpSize: 3, perHead: false)
        let json = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        #expect(json["model_type"] as? String == "gemma3")
        let kv = json["kv_cache"] as! [String: Any]
        #expect(kv["dtype"] as? String == "int8")
        let sf = kv["scaling_factor"] as! [String: [String: Double]]
        for r in ["0", "1", "2"] { #expect(sf[r]!.mapValues { Float($0) } == ["0": 0.3, "1": 0.9]) }
        let back = try KVScales.load(path: writeFile(dir, "re.json", String(decoding: data, as: UTF8.self)),
                                     expectedModelType: "gemma3", numLayers: 2, numKVHeads: 1)
        #expect(back.values == s.values && back.tpSize == 3)
        // Per-head scales encoded per-tensor reduce by max over heads.
        let ph = try KVScales(perHead: [[0.1, 0.4], [0.2, 0.05]])
        let red = try KVScales.load(path: writeFile(dir, "red.json", String(decoding: try ph.encode(modelType: "gemma3", tpSize: 1, perHead: false), as: UTF8.self)),
                                    expectedModelType: "gemma3", numLayers: 2, numKVHeads: 2)
        #expect(red.values == [0.4, 0.2])
        #expect(kvantError { _ = try s.encode(modelType: nil, tpSize: 1, perHead: true) }?.reason == .invalidArgument)
        #expect(kvantError { _ = try ph.encode(modelType: nil, tpSize: 0, perHead: true) }?.reason == .invalidArgument)
    }

    @Test("encode → load round trip is exact for per-head scales with awkward values")
    func roundTripExact() throws {
        var rng = SplitMix64(seed: 3)
        let rows = (0..<5).map { _ in (0..<2).map { _ in abs(rng.unit()) * 0.37 + 1e-6 } }
        let s = try KVScales(perHead: rows)
        let dir = tempDir()
        let path = writeFile(dir, "x.json", String(decoding: try s.encode(modelType: "llama", tpSize: 2, perHead: true), as: UTF8.self))
        let back = try KVScales.load(path: path, expectedModelType: "llama", numLayers: 5, numKVHeads: 2, tpSize: 2)
        #expect(back.values == s.values)
    }

    @Test("separate K/V scales (Kvant extension): load, merge over TP ranks, encode with and without, round trip")
    func separateKV() throws {
        let dir = tempDir()
        let text = Self.withKV(k: "{\"0\": {\"0\": 0.01, \"1\": 0.02, \"2\": 0.03}}", v: "{\"0\": {\"0\": 0.4, \"1\": 0.5, \"2\": 0.25}}")
        let s = try KVScales.load(path: writeFile(dir, "kv.json", text), expectedModelType: "gemma3", numLayers: 3, numKVHeads: 2)
        #expect(s.hasSeparateKV && s.values == [0.5, 0.5, 0.5])
        #expect(s.keyValues == [0.01, 0.02, 0.03] && s.valueValues == [0.4, 0.5, 0.25])
        #expect(s.keyScale(layer: 1, head: 1) == 0.02 && s.valueScale(layer: 2, head: 0) == 0.25 && s.scale(layer: 2, head: 0) == 0.5)
        // A vLLM file (no extension): K and V use scaling_factor.
        let plain = try KVScales.load(path: writeFile(dir, "plain.json", Self.withKV(k: nil, v: nil)), expectedModelType: "gemma3", numLayers: 3, numKVHeads: 2)
        #expect(!plain.hasSeparateKV && plain.keyValues == plain.values && plain.valueValues == plain.values)
        let dropped = s.sharedOnly
        #expect(!dropped.hasSeparateKV && dropped.values == plain.values && dropped.keyValues == plain.values && dropped.valueValues == plain.values)

        // Encoding: per-head with TP 2 splits K and V lists like scaling_factor; loading merges them back.
        let ph = try KVScales(perHead: [[0.5, 0.6], [0.7, 0.8]])
            .withSeparateKV(key: try KVScales(perHead: [[0.01, 0.02], [0.03, 0.04]]), value: try KVScales(perHead: [[0.1, 0.2], [0.3, 0.4]]))
        let data = try ph.encode(modelType: "gemma3", tpSize: 2, perHead: true)
        let json = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        let kv = json["kv_cache"] as! [String: Any]
        #expect((kv["k_scaling_factor"] as! [String: [String: [Double]]])["1"]!["0"]! == [Double(Float(0.02))])
        #expect((kv["v_scaling_factor"] as! [String: [String: [Double]]])["0"]!["1"]! == [Double(Float(0.3))])
        #expect((kv["scaling_factor"] as! [String: [String: [Double]]])["1"]!["1"]! == [Double(Float(0.8))])
        let back = try KVScales.load(path: writeFile(dir, "ph.json", String(decoding: data, as: UTF8.self)),
                                     expectedModelType: "gemma3", numLayers: 2, numKVHeads: 2, tpSize: 2)
        #expect(back.hasSeparateKV && back.values == ph.values && back.keyValues == ph.keyValues && back.valueValues == ph.valueValues)
        // separateKV: false writes a plain vLLM file.
        let vllm = try ph.encode(modelType: "gemma3", tpSize: 1, perHead: false, separateKV: false)
        let vj = (try JSONSerialization.jsonObject(with: vllm) as! [String: Any])["kv_cache"] as! [String: Any]
        #expect(vj["k_scaling_factor"] == nil && vj["v_scaling_factor"] == nil)
        #expect((vj["scaling_factor"] as! [String: [String: Double]])["0"]!["1"]! == Double(Float(0.8)))
        // Per-tensor K/V scales from several TP ranks merge by max, like scaling_factor.
        let tp2 = "{\"model_type\": \"gemma3\", \"kv_cache\": {\"dtype\": \"int8\", \"scaling_factor\": {\"0\": {\"0\": 0.5}, \"1\": {\"0\": 0.5}}, "
            + "\"k_scaling_factor\": {\"0\": {\"0\": 0.01}, \"1\": {\"0\": 0.03}}, \"v_scaling_factor\": {\"0\": {\"0\": 0.2}, \"1\": {\"0\": 0.1}}}}"
        let m = try KVScales.load(path: writeFile(dir, "tp2.json", tp2), expectedModelType: "gemma3", numLayers: 1, numKVHeads: 1)
        #expect(m.keyValues == [0.03] && m.valueValues == [0.2])
        // Mismatched forms are refused when combining in code too.
        #expect(kvantError { _ = try KVScales(perTensor: [0.1]).withSeparateKV(key: try KVScales(perTensor: [0.1, 0.2]), value: try KVScales(perTensor: [0.1])) }?.reason == .invalidArgument)
    }
}
