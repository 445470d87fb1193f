import Executor
import Foundation
import KVCache
import KvantCore
import ModelFormats
import Testing

/// Tiny random-weight Qwen 2 (Q/K/V biases, 8 heads / 2 KV heads, tied output) and Qwen 3 (QK-norm, head_dim 32 with
/// a Q wider than hidden, 8 heads / 4 KV heads) against llama.cpp's logits (F32 weights and KV; written by
/// scripts/oracle/tiny_qwen.py).
@Suite struct TinyQwenTests {
    struct Golden {
        let path: String
        let tokens: [Int32]
        let logits: [[Float]]
    }

    static func golden(_ arch: String) throws -> Golden {
        let d = try Fixtures.json("tiny_\(arch)_logits.json")
        return Golden(path: Fixtures.dir.appendingPathComponent("tiny_\(arch).gguf").path,
                      tokens: (d["tokens"] as! [Int]).map { Int32($0) },
                      logits: (d["logits"] as! [[Double]]).map { $0.map { Float($0) } })
    }

    /// Max |Δlogit| per position within 1e-3 of that position's max |logit| (relative).
    func check(_ got: [[Float]], _ want: [[Float]], _ what: String) {
        #expect(got.count == want.count, "\(what): \(got.count) rows, expected \(want.count)")
        var worstRelative: Float = 0
        for (i, (g, w)) in zip(got, want).enumerated() {
            let scale = w.map { abs($0) }.max()!
            var worst: Float = 0
            for k in w.indices { worst = max(worst, abs(g[k] - w[k])) }
            worstRelative = max(worstRelative, worst / scale)
            #expect(worst <= 1e-3 * scale, "\(what) position \(i): max |Δlogit| \(worst), max |logit| \(scale)")
        }
        print("\(what): max |Δlogit| / max |logit| over \(got.count) positions = \(worstRelative)")
    }

    @Test func configFromMetadata() throws {
        let q2 = try Model(path: Self.golden("qwen2").path).config
        #expect(q2.architecture == .qwen2 && q2.numLayers == 2 && q2.hiddenSize == 128)
        #expect(q2.numHeads == 8 && q2.numKVHeads == 2 && q2.headDim == 16 && q2.ffnSize == 256 && q2.vocabSize == 300)
        #expect(q2.ropeNeox && q2.slidingWindow == nil && q2.ropeBase == 1_000_000)
        let q3 = try Model(path: Self.golden("qwen3").path).config
        #expect(q3.architecture == .qwen3 && q3.numHeads == 8 && q3.numKVHeads == 4 && q3.headDim == 32)
        #expect(q3.numHeads * q3.headDim == 2 * q3.hiddenSize)
        #expect(q3.ropeNeox && abs(q3.attentionScale - 1 / Float(32).squareRoot()) < 1e-7)
        let m2 = try Model(path: Self.golden("qwen2").path)
        #expect(m2.weights.layers.allSatisfy { $0.bq?.count == 128 && $0.bk?.count == 32 && $0.bv?.count == 32 && $0.qNorm == nil })
        let m3 = try Model(path: Self.golden("qwen3").path)
        #expect(m3.weights.layers.allSatisfy { $0.bq == nil && $0.qNorm?.count == 32 && $0.kNorm?.count == 32 })
        // ChatML end-of-turn ids are default stop tokens
        #expect(m2.endOfGenerationTokenIDs.contains(299) && m2.endOfGenerationTokenIDs.contains(297))
    }

    @Test(arguments: ["qwen2", "qwen3"])
    func prefillLogitsMatchLlamaCpp(arch: String) throws {
        let g = try Self.golden(arch)
        let model = try Model(path: g.path)
        let pool = try KVCachePool(spec: model.config.kvCacheSpec(dtype: .fp32), byteBudget: 4 << 20)
        let s = ForwardSession(model: model, threads: 2)
        var got: [[Float]] = []
        try s.forward(tokens: g.tokens, startPosition: 0, sequence: pool.createSequence(), pool: pool, logits: .all) { _, l in
            got.append(Array(l))
        }
        check(got, g.logits, "\(arch) prefill")
    }

    @Test(arguments: ["qwen2", "qwen3"])
    func decodeAndMicroBatchesMatchLlamaCpp(arch: String) throws {
        let g = try Self.golden(arch)
        let model = try Model(path: g.path)
        let pool = try KVCachePool(spec: model.config.kvCacheSpec(dtype: .fp32), byteBudget: 4 << 20)
        let s1 = ForwardSession(model: model, threads: 1)
        let seq1 = pool.createSequence()
        var got1: [[Float]] = []
        for (i, t) in g.tokens.enumerated() {
            got1.append(try s1.forwardLast(tokens: [t], startPosition: i, sequence: seq1, pool: pool))
        }
        check(got1, g.logits, "\(arch) decode")
        let s2 = ForwardSession(model: model, threads: 2, maxBatch: 5)
        var got2: [[Float]] = []
        try s2.forward(tokens: g.tokens, startPosition: 0, sequence: pool.createSequence(), pool: pool, logits: .all) { _, l in
            got2.append(Array(l))
        }
        check(got2, g.logits, "\(arch) micro-batches of 5")
    }

    /// Every KV dtype runs both architectures; the quantized ones (static ones with scales calibrated on other tokens)
    /// stay close to llama.cpp's F32-KV logits (top-1 of most positions unchanged), so the per-KV-head layout (GQA
    /// groups) is wired right for them too.
    @Test(arguments: ["qwen2", "qwen3"])
    func everyKVDTypeRuns(arch: String) throws {
        let g = try Self.golden(arch)
        let model = try Model(path: g.path)
        let s = ForwardSession(model: model, threads: 2)
        let wantTop1 = g.logits.map { row in row.indices.max { row[$0] < row[$1] }! }
        let calibration = Array(g.tokens.reversed()) + g.tokens.map { ($0 * 7 + 3) % 297 }
        for dtype in KVCacheDType.allCases {
            if dtype == .int4PerToken && model.config.headDim % 64 != 0 {
                // The 4-bit groups need head_dim a multiple of 64; these tiny models have 16 and 32: a clear refusal.
                #expect(throws: KvantError.self) { try model.config.kvCacheSpec(dtype: dtype).validate() }
                continue
            }
            let scales = dtype.usesStaticScales
                ? try KVCalibrator.run(session: s, tokens: calibration, perHead: dtype == .int8PerTensorPerHead).scales : nil
            let pool = try KVCachePool(spec: model.config.kvCacheSpec(dtype: dtype), byteBudget: 4 << 20, scales: scales)
            var agree = 0
            try s.forward(tokens: g.tokens, startPosition: 0, sequence: pool.createSequence(), pool: pool, logits: .all) { i, l in
                if l.indices.max(by: { l[$0] < l[$1] })! == wantTop1[i] { agree += 1 }
            }
            #expect(Double(agree) / Double(g.tokens.count) >= 0.9, "\(arch) \(dtype): top-1 agrees at \(agree)/\(g.tokens.count)")
        }
    }

    /// A Qwen 2 file missing a bias loads (llama.cpp: optional), one with a misshapen bias is refused by name.
    @Test func misshapenBiasIsNamed() throws {
        let original = try Data(contentsOf: URL(fileURLWithPath: Self.golden("qwen2").path))
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvant-qwen-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // tensor info: name, u32 n_dims, u64 dims… ; blk.1.attn_k.bias has dims [32]: make it [16]
        var bytes = [UInt8](original)
        let name = Array("blk.1.attn_k.bias".utf8)
        var at = -1
        for j in 0...(bytes.count - name.count) where bytes[j..<(j + name.count)].elementsEqual(name) { at = j; break }
        #expect(at > 0)
        let dim0 = at + name.count + 4
        #expect(bytes[at + name.count] == 1 && bytes[dim0] == 32)
        bytes[dim0] = 16
        let path = dir.appendingPathComponent("bias.gguf").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let e = #expect(throws: KvantError.self) { _ = try Model(path: path) }
        #expect(e?.message.contains("blk.1.attn_k.bias") == true && e?.message.contains("[32]") == true)
    }
}
