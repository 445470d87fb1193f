import Executor
import Foundation
import KVCache
import KvantCore
import ModelFormats
import KvantTestSupport
import Testing

/// A tiny random-weight LLaMA (GQA: 8 heads, 4 KV heads) against llama.cpp's logits (F32 weights and KV).
@Suite struct TinyLlamaTests {
    func expectedLogits() throws -> (tokens: [Int32], logits: [[Float]]) {
        let d = try Fixtures.json("tiny_llama_logits.json")
        let toks = (d["tokens"] as! [Int]).map { Int32($0) }
        let logits = (d["logits"] as! [[Double]]).map { $0.map { Float($0) } }
        return (toks, logits)
    }

    func makePool(_ model: Model, dtype: KVCacheDType = .fp32) throws -> KVCachePool {
        try KVCachePool(spec: model.config.kvCacheSpec(dtype: dtype), byteBudget: 4 << 20)
    }

    func check(_ got: [[Float]], _ want: [[Float]]) {
        #expect(got.count == want.count)
        for (i, (g, w)) in zip(got, want).enumerated() {
            let scale = w.map { abs($0) }.max()!
            var worst: Float = 0
            for k in w.indices { worst = max(worst, abs(g[k] - w[k])) }
            #expect(worst <= 1e-3 * scale, "position \(i): max |Δlogit| \(worst), max |logit| \(scale)")
        }
    }

    @Test func configFromMetadata() throws {
        let m = try Model(path: Fixtures.tinyLlamaPath)
        let c = m.config
        #expect(c.architecture == .llama)
        #expect(c.numLayers == 2 && c.hiddenSize == 128 && c.numHeads == 8 && c.numKVHeads == 4 && c.headDim == 16)
        #expect(c.ffnSize == 256 && c.vocabSize == 300 && c.ropeNeox == false && c.slidingWindow == nil)
        #expect(m.bosTokenID == 1 && m.eosTokenID == 2)
    }

    @Test func prefillLogitsMatchLlamaCpp() throws {
        let (tokens, want) = try expectedLogits()
        let model = try Model(path: Fixtures.tinyLlamaPath)
        let pool = try makePool(model)
        let s = ForwardSession(model: model, threads: 2)
        let seq = pool.createSequence()
        var got: [[Float]] = []
        try s.forward(tokens: tokens, startPosition: 0, sequence: seq, pool: pool, logits: .all) { _, l in got.append(Array(l)) }
        check(got, want)
    }

    @Test func decodeOneTokenAtATimeAndMicroBatchesMatchToo() throws {
        let (tokens, want) = try expectedLogits()
        let model = try Model(path: Fixtures.tinyLlamaPath)
        let pool = try makePool(model)
        // Decode path: one token per forward.
        let s1 = ForwardSession(model: model, threads: 1)
        let seq1 = pool.createSequence()
        var got1: [[Float]] = []
        for (i, t) in tokens.enumerated() {
            got1.append(try s1.forwardLast(tokens: [t], startPosition: i, sequence: seq1, pool: pool))
        }
        check(got1, want)
        // Prefill split into micro-batches of 5 tokens.
        let s2 = ForwardSession(model: model, threads: 2, maxBatch: 5)
        let seq2 = pool.createSequence()
        var got2: [[Float]] = []
        try s2.forward(tokens: tokens, startPosition: 0, sequence: seq2, pool: pool, logits: .all) { _, l in got2.append(Array(l)) }
        check(got2, want)
    }

    /// An error thrown by the logits callback is rethrown after all micro-batches ran, so the cache stays complete:
    /// decoding the last token again from the cached prefix gives llama.cpp's logits.
    @Test func callbackErrorLeavesTheCacheComplete() throws {
        struct Stop: Error {}
        let (tokens, want) = try expectedLogits()
        let model = try Model(path: Fixtures.tinyLlamaPath)
        let pool = try makePool(model)
        let s = ForwardSession(model: model, threads: 2, maxBatch: 5)
        let seq = pool.createSequence()
        let prefix = Array(tokens.dropLast())
        #expect(throws: Stop.self) {
            try s.forward(tokens: prefix, startPosition: 0, sequence: seq, pool: pool, logits: .all) { _, _ in throw Stop() }
        }
        #expect(pool.length(of: seq) == prefix.count)
        let last = try s.forwardLast(tokens: [tokens.last!], startPosition: prefix.count, sequence: seq, pool: pool)
        check([last], [want.last!])
    }

    @Test func badInputsThrow() throws {
        let model = try Model(path: Fixtures.tinyLlamaPath)
        let pool = try makePool(model)
        let s = ForwardSession(model: model, threads: 1)
        let seq = pool.createSequence()
        #expect(throws: KvantError.self) { try s.forwardLast(tokens: [1, 300], startPosition: 0, sequence: seq, pool: pool) }
        #expect(throws: KvantError.self) { try s.forwardLast(tokens: [1, -1], startPosition: 0, sequence: seq, pool: pool) }
        #expect(throws: KvantError.self) { try s.forwardLast(tokens: [1], startPosition: 5, sequence: seq, pool: pool) }
        // A pool whose spec does not match the model.
        let wrong = try KVCachePool(spec: KVCacheSpec(numLayers: 3, numKVHeads: 4, headDim: 16, dtype: .fp32), byteBudget: 1 << 20)
        let seq2 = wrong.createSequence()
        #expect(throws: KvantError.self) { try s.forwardLast(tokens: [1], startPosition: 0, sequence: seq2, pool: wrong) }
    }

    @Test func missingOrMisshapenTensorIsNamed() throws {
        let original = try Data(contentsOf: URL(fileURLWithPath: Fixtures.tinyLlamaPath))
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvant-exec-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // Rename blk.1.ffn_up.weight (same length) so it is missing.
        var bytes = [UInt8](original)
        let from = Array("blk.1.ffn_up.weight".utf8), to = Array("blk.1.ffn_XX.weight".utf8)
        var hits = 0
        var i = 0
        while i + from.count <= bytes.count {
            if bytes[i..<(i + from.count)].elementsEqual(from) {
                bytes.replaceSubrange(i..<(i + from.count), with: to); hits += 1; i += from.count
            } else { i += 1 }
        }
        #expect(hits == 1)
        let path = dir.appendingPathComponent("broken.gguf").path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        do {
            _ = try Model(path: path)
            Issue.record("expected a missing-tensor error")
        } catch let e as KvantError {
            #expect(e.reason == .invalidArgument)   // a missing tensor: a bad file (issue 11)
            #expect(e.message.contains("blk.1.ffn_up.weight"))
        }
        // Shrink dims[1] of blk.0.attn_q.weight (tensor info: name, u32 n_dims, u64 dims…) from 128 to 64 rows.
        var bytes2 = [UInt8](original)
        let name = Array("blk.0.attn_q.weight".utf8)
        var at = -1
        for j in 0...(bytes2.count - name.count) where bytes2[j..<(j + name.count)].elementsEqual(name) { at = j; break }
        #expect(at > 0)
        let dim1 = at + name.count + 4 + 8
        #expect(bytes2[dim1] == 128 && bytes2[at + name.count] == 2)
        bytes2[dim1] = 64
        let path2 = dir.appendingPathComponent("misshapen.gguf").path
        try Data(bytes2).write(to: URL(fileURLWithPath: path2))
        do {
            _ = try Model(path: path2)
            Issue.record("expected a shape error")
        } catch let e as KvantError {
            #expect(e.reason == .invalidArgument)
            #expect(e.message.contains("blk.0.attn_q.weight") && e.message.contains("[128, 128]"))
        }
    }
}

/// Batched decode of several sequences equals decoding each alone.
@Suite struct BatchedDecodeTests {
    @Test func batchedDecodeMatchesSingleSequenceDecode() throws {
        let model = try Model(path: Fixtures.tinyLlamaPath)
        let pool = try KVCachePool(spec: model.config.kvCacheSpec(dtype: .fp32), byteBudget: 4 << 20)
        let s = ForwardSession(model: model, threads: 2)
        let prompts: [[Int32]] = [[1, 10, 11, 12], [1, 200, 201], [1, 50, 60, 70, 80, 90, 100]]
        let next: [Int32] = [13, 202, 110]
        // Reference: each sequence alone.
        var want: [[Float]] = []
        for (p, n) in zip(prompts, next) {
            let seq = pool.createSequence()
            _ = try s.forwardLast(tokens: p, startPosition: 0, sequence: seq, pool: pool)
            want.append(try s.forwardLast(tokens: [n], startPosition: p.count, sequence: seq, pool: pool))
        }
        // Batched: prefill each, then one decode step for all three.
        var seqs: [SequenceID] = []
        for p in prompts {
            let seq = pool.createSequence()
            _ = try s.forwardLast(tokens: p, startPosition: 0, sequence: seq, pool: pool)
            seqs.append(seq)
        }
        let items = (0..<3).map { DecodeItem(token: next[$0], position: prompts[$0].count, sequence: seqs[$0]) }
        var got = [[Float]](repeating: [], count: 3)
        try s.decode(items, pool: pool) { i, l in got[i] = Array(l) }
        for i in 0..<3 {
            let scale = want[i].map { abs($0) }.max()!
            let worst = zip(got[i], want[i]).map { abs($0 - $1) }.max()!
            #expect(worst <= 1e-4 * scale, "row \(i): max |Δ| \(worst)")
        }
        #expect(seqs.map { pool.length(of: $0) } == prompts.map { $0.count + 1 })
        // A position beyond the next one and a repeated sequence are rejected (positions up to the
        // sequence's length are allowed: admission control reserves prompt + max_tokens ahead).
        let beyond = pool.length(of: seqs[0]) + 1
        let e = #expect(throws: KvantError.self) {
            try s.decode([DecodeItem(token: 5, position: beyond, sequence: seqs[0])], pool: pool) { _, _ in }
        }
        #expect(e?.message.contains("position \(beyond) is beyond the next position") == true)
        // A position reserved ahead decodes in place and does not grow the sequence.
        let lengthBefore = pool.length(of: seqs[2])
        #expect(pool.reserve(seqs[2], newLength: lengthBefore + 3) == .ok)
        var rows = 0
        try s.decode([DecodeItem(token: 5, position: lengthBefore, sequence: seqs[2])], pool: pool) { _, _ in rows += 1 }
        #expect(rows == 1 && pool.length(of: seqs[2]) == lengthBefore + 3)
        let again = DecodeItem(token: 5, position: pool.length(of: seqs[1]), sequence: seqs[1])
        #expect(throws: KvantError.self) { try s.decode([again, again], pool: pool) { _, _ in } }
    }
}
