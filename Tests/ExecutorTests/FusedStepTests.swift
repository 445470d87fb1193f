import Executor
import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

/// `ForwardSession.step`, one micro-batch for a scheduler step's decode rows and prefill chunks, against the two
/// kinds of pass it replaces (`decode` of the decode rows, then `forward` of each chunk) on the real model: the
/// same logits bit for bit, step after step (so the same K/V too: every later step reads them), greedy.
@Suite(.serialized, .enabled(if: Fixtures.realModelPath != nil, Fixtures.noModel))
struct FusedStepTests {
    /// GPL-3 tokens (the perplexity fixture's, tokenized by the oracle).
    static func text() throws -> [Int32] {
        let g = try Fixtures.json("gemma3_gpl3_perplexity.json")
        return (g["tokens"] as! [Int]).map { Int32($0) }
    }

    /// What one run saw: every logit row in the order the steps produced them, and each row's argmax.
    struct Trace: Equatable {
        var rows: [[UInt32]] = []
        var labels: [String] = []
    }

    /// Two running sequences (A: 700 cached positions, past the 512-token window, so its decode rows split their
    /// keys on every layer; B: 100) decode greedily while C's 600-token prompt is prefilled in chunks of 40, 37,
    /// 64, … (crossing block boundaries, then the window), and D, a preempted sequence, recomputes 130 positions
    /// whose last 30 are generated tokens (decode rows, `decodeRowsFrom`) in chunks of 50. Once its prompt is in,
    /// C decodes too. `fused`: each step is one `step` call; otherwise `decode` then `forward` per chunk.
    static func run(_ session: ForwardSession, dtype: KVCacheDType, fused: Bool) throws -> Trace {
        let text = try text()
        let m = session.model
        let spec = m.config.kvCacheSpec(dtype: dtype)
        let pool = try KVCachePool(spec: spec, byteBudget: 4000 * spec.bytesPerToken, enablePrefixCaching: false)
        var trace = Trace()
        func record(_ label: String, _ logits: UnsafeBufferPointer<Float>) -> Int32 {
            trace.rows.append(logits.map(\.bitPattern))
            trace.labels.append(label)
            var best = 0
            for i in logits.indices where logits[i] > logits[best] { best = i }
            return Int32(best)
        }
        let a = pool.createSequence(), b = pool.createSequence(), c = pool.createSequence(), d = pool.createSequence()
        var next: [SequenceID: Int32] = [:]
        var length: [SequenceID: Int] = [:]
        for (seq, range) in [(a, 0..<700), (b, 1000..<1100)] {
            try session.forward(tokens: Array(text[range]), startPosition: 0, sequence: seq, pool: pool, splitKeys: false) { _, l in
                next[seq] = record("prefill \(seq)", l)
            }
            length[seq] = range.count
        }
        let cPrompt = Array(text[2000..<2600])
        let dHistory = Array(text[3000..<3130]), dPrompt = 100
        var cDone = 0, dDone = 0
        let cSizes = [40, 37] + Array(repeating: 64, count: 8) + [11]   // 600 tokens
        var step = 0
        while cDone < cPrompt.count || dDone < dHistory.count || step < cSizes.count + 4 {
            var items: [DecodeItem] = []
            for seq in [a, b, c] where next[seq] != nil {
                items.append(DecodeItem(token: next[seq]!, position: length[seq]!, sequence: seq))
            }
            var chunks: [PrefillChunk] = []
            if cDone < cPrompt.count {
                let n = min(cSizes[step], cPrompt.count - cDone)
                let last = cDone + n == cPrompt.count
                chunks.append(PrefillChunk(tokens: Array(cPrompt[cDone..<(cDone + n)]), startPosition: cDone, sequence: c,
                                           logits: last ? .last : .range(0..<0)))
            }
            if dDone < dHistory.count {
                let n = min(50, dHistory.count - dDone)
                // Logits of every recomputed row, so the generated positions' rounding shows directly.
                chunks.append(PrefillChunk(tokens: Array(dHistory[dDone..<(dDone + n)]), startPosition: dDone, sequence: d,
                                           logits: .all, decodeRowsFrom: dPrompt))
            }
            var got: [SequenceID: Int32] = [:]
            if fused {
                try session.step(decode: items, chunks: chunks, pool: pool) { row, l in
                    switch row {
                    case .decode(let i): got[items[i].sequence] = record("step \(step) decode \(items[i].sequence)", l)
                    case .chunk(let j, let r):
                        let t = record("step \(step) chunk \(chunks[j].sequence) row \(r)", l)
                        if chunks[j].sequence == c { got[c] = t }
                    }
                }
            } else {
                try session.decode(items, pool: pool) { i, l in
                    got[items[i].sequence] = record("step \(step) decode \(items[i].sequence)", l)
                }
                for (j, ch) in chunks.enumerated() {
                    try session.forward(tokens: ch.tokens, startPosition: ch.startPosition, sequence: ch.sequence, pool: pool,
                                        logits: ch.logits, splitKeys: false, decodeRowsFrom: ch.decodeRowsFrom) { r, l in
                        let t = record("step \(step) chunk \(ch.sequence) row \(r)", l)
                        if chunks[j].sequence == c { got[c] = t }
                    }
                }
            }
            for it in items { length[it.sequence]! += 1 }
            for ch in chunks {
                if ch.sequence == c { cDone += ch.tokens.count; if cDone == cPrompt.count { length[c] = cDone } }
                if ch.sequence == d { dDone += ch.tokens.count }
            }
            for (seq, t) in got { next[seq] = t }
            step += 1
        }
        // Everything committed: each sequence's cached length is what the steps gave it.
        for seq in [a, b, c] { guard pool.computedLength(of: seq) == length[seq]! else { throw KvantError(.internal, "length of \(seq)") } }
        return trace
    }

    @Test("decode rows + prefill chunks + recompute chunks in one pass == decode, then forward per chunk, bit for bit",
          .enabled(if: Fixtures.isRelease, Fixtures.needsRelease),
          arguments: [KVCacheDType.fp16, .int8PerToken, .int4PerToken])
    func fusedEqualsSeparate(dtype: KVCacheDType) async throws {
        let (fused, separate) = try await offPool { () throws -> (Trace, Trace) in
            let m = try Model(path: Fixtures.realModelPath!)
            let s = ForwardSession(model: m, threads: 2, maxBatch: 512)
            return (try Self.run(s, dtype: dtype, fused: true), try Self.run(s, dtype: dtype, fused: false))
        }
        #expect(fused.labels == separate.labels)
        // 2 prefills, 15 steps of 2–3 decode rows, C's last chunk, D's 130 recomputed rows.
        #expect(fused.rows.count == separate.rows.count && fused.rows.count > 150, "\(fused.rows.count) rows")
        for i in 0..<min(fused.rows.count, separate.rows.count) where fused.rows[i] != separate.rows[i] {
            Issue.record("\(dtype.rawValue): \(fused.labels[i]): logits differ")
            break
        }
    }

    @Test("refused before anything runs: a sequence twice, more rows than max batch, no room in the pool; nothing reserved or committed")
    func refusals() async throws {
        let errors = try await offPool { () throws -> [KvantError?] in
            let m = try Model(path: Fixtures.realModelPath!)
            let s = ForwardSession(model: m, threads: 2, maxBatch: 64)
            let spec = m.config.kvCacheSpec(dtype: .int8PerToken)
            // Room for 64 positions of every layer: 4 blocks per group.
            let pool = try KVCachePool(spec: spec, byteBudget: 64 * spec.bytesPerToken, prefillChunk: 64, enablePrefixCaching: false)
            let a = pool.createSequence(), b = pool.createSequence()
            try s.forward(tokens: [2, 818, 5279], startPosition: 0, sequence: a, pool: pool) { _, _ in }
            func attempt(_ items: [DecodeItem], _ chunks: [PrefillChunk]) -> KvantError? {
                let before = (pool.computedLength(of: a), pool.computedLength(of: b), pool.length(of: b), pool.freeBlocks)
                do {
                    try s.step(decode: items, chunks: chunks, pool: pool) { _, _ in }
                    return nil
                } catch {
                    let after = (pool.computedLength(of: a), pool.computedLength(of: b), pool.length(of: b), pool.freeBlocks)
                    return before == after ? error as? KvantError : KvantError(.internal, "state changed: \(before) → \(after)")
                }
            }
            let row = DecodeItem(token: 563, position: 3, sequence: a)
            return [
                attempt([row], [PrefillChunk(tokens: [2, 3], startPosition: 3, sequence: a, logits: .last)]),
                attempt([row], [PrefillChunk(tokens: Array(repeating: 818, count: 64), startPosition: 0, sequence: b, logits: .last)]),
                attempt([row], [PrefillChunk(tokens: Array(repeating: 818, count: 62), startPosition: 0, sequence: b, logits: .last)]),
                attempt([row], [PrefillChunk(tokens: [], startPosition: 0, sequence: b, logits: .last)]),
            ]
        }
        #expect(errors.map { $0?.reason } == [.invalidArgument, .invalidArgument, .resourceExhausted, .invalidArgument], "\(errors)")
    }
}

/// The pool's prefill chunk bounds what one pass writes of a sequence before attending it (an int4_pertoken pool's
/// int8 residual rings hold that many positions): `forward` splits a longer input into micro-batches of that size,
/// giving the logits of a pool sized for the whole input, bit for bit; `step` refuses a longer chunk.
@Suite(.serialized, .enabled(if: Fixtures.realModelPath != nil, Fixtures.noModel))
struct PrefillChunkLimitTests {
    /// Every row's logits (bit patterns) of a 300-token forward on a fresh int4 pool with `prefillChunk`, the input
    /// given as `pieces` (consecutive forward calls).
    static func logits(_ s: ForwardSession, prefillChunk: Int, pieces: [Int]) throws -> [[UInt32]] {
        let text = try FusedStepTests.text()
        let spec = s.model.config.kvCacheSpec(dtype: .int4PerToken)
        let pool = try KVCachePool(spec: spec, byteBudget: 1200 * spec.bytesPerToken + KVCachePool.residualReserveBytes(
            spec: spec, maxNumSeqs: 1, prefillChunk: prefillChunk), prefillChunk: prefillChunk)
        let seq = pool.createSequence()
        var rows: [[UInt32]] = []
        var start = 0
        for n in pieces {
            try s.forward(tokens: Array(text[(100 + start)..<(100 + start + n)]), startPosition: start, sequence: seq, pool: pool,
                          logits: .all, splitKeys: false) { _, l in rows.append(l.map(\.bitPattern)) }
            start += n
        }
        return rows
    }

    @Test("int4_pertoken: 300 tokens in one forward on a 64-token-chunk pool == in 64-token calls == on a 512-token-chunk pool, bit for bit",
          .enabled(if: Fixtures.isRelease, Fixtures.needsRelease))
    func forwardSplitsAtThePoolsChunk() async throws {
        let (one, pieces, big) = try await offPool { () throws -> ([[UInt32]], [[UInt32]], [[UInt32]]) in
            let m = try Model(path: Fixtures.realModelPath!)
            let s = ForwardSession(model: m, threads: 2, maxBatch: 512)
            return (try Self.logits(s, prefillChunk: 64, pieces: [300]),
                    try Self.logits(s, prefillChunk: 64, pieces: [64, 64, 64, 64, 44]),
                    try Self.logits(s, prefillChunk: 512, pieces: [300]))
        }
        #expect(one.count == 300 && pieces.count == 300 && big.count == 300)
        // The first row whose logits differ (nil: none); the rows themselves are too large to print.
        func firstDifference(_ a: [[UInt32]], _ b: [[UInt32]]) -> Int? { (0..<min(a.count, b.count)).first { a[$0] != b[$0] } }
        // Without the split the 300 positions would go into a 9-block ring at once: the early rows' recent blocks
        // would be read at 4 bits and their logits would differ from the 512-token ring's (checked by disabling it).
        let d1 = firstDifference(one, big), d2 = firstDifference(pieces, big)
        #expect(d1 == nil, "a 300-token forward on the 64-token-chunk pool differs from the 512-token-chunk pool's at row \(d1 ?? -1)")
        #expect(d2 == nil, "64-token forward calls differ from one 300-token forward on the 512-token-chunk pool at row \(d2 ?? -1)")
    }

    @Test("step refuses a chunk longer than the pool's prefill chunk before anything runs, naming both")
    func stepRefusesALongerChunk() async throws {
        let (error, ran16) = try await offPool { () throws -> (KvantError?, Bool) in
            let m = try Model(path: Fixtures.realModelPath!)
            let s = ForwardSession(model: m, threads: 2, maxBatch: 512)
            let spec = m.config.kvCacheSpec(dtype: .int4PerToken)
            let pool = try KVCachePool(spec: spec, byteBudget: 256 * spec.bytesPerToken + KVCachePool.residualReserveBytes(
                spec: spec, maxNumSeqs: 1, prefillChunk: 16), prefillChunk: 16)
            let a = pool.createSequence()
            var error: KvantError?
            do {
                try s.step(decode: [], chunks: [PrefillChunk(tokens: Array(repeating: 818, count: 17), startPosition: 0, sequence: a,
                                                             logits: .last)], pool: pool) { _, _ in }
            } catch let e as KvantError { error = e }
            // 16 tokens are accepted.
            try s.step(decode: [], chunks: [PrefillChunk(tokens: Array(repeating: 818, count: 16), startPosition: 0, sequence: a,
                                                         logits: .last)], pool: pool) { _, _ in }
            return (error, pool.computedLength(of: a) == 16)
        }
        #expect(error?.reason == .invalidArgument)
        #expect(error?.message == "chunk 0 of \(SequenceID(rawValue: 0)) has 17 tokens, more than the KV cache's prefill chunk of 16 tokens (the most positions of one sequence a pass may write; the pool's int8 residual rings and admission are sized for it)")
        #expect(ran16)
    }
}
