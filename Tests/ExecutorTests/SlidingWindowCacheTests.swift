import Executor
import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

/// The KV cache of Gemma 3's sliding-window layers keeps only their window (the model's spec gives each
/// layer's window). Attention already applied the window, so the results must not change at all: the
/// same logits, bit for bit, as a cache that keeps every block of every layer.
@Suite(.serialized, .enabled(if: Fixtures.realModelPath != nil, Fixtures.noModel))
struct SlidingWindowCacheTests {
    @Test("the model's spec: 15 layers with a 512-token window, 3 full; capacity follows")
    func spec() throws {
        let m = try Model(path: Fixtures.realModelPath!)
        let spec = m.config.kvCacheSpec(dtype: .int8PerToken)
        #expect(spec.layerWindows.count == 18)
        #expect((0..<18).filter { spec.window(layer: $0) == nil } == [5, 11, 17])
        #expect((0..<18).allSatisfy { spec.window(layer: $0) == nil || spec.window(layer: $0) == 512 })
        #expect(spec.fullAttentionBytesPerToken == 1560)
    }

    @Test("prefill across several micro-batches and decode: logits identical to a cache without window freeing, bit for bit",
          .enabled(if: Fixtures.isRelease, Fixtures.needsRelease), arguments: [KVCacheDType.fp16, .int8PerToken])
    func sameLogits(dtype: KVCacheDType) async throws {
        let g = try Fixtures.json("gemma3_gpl3_perplexity.json")
        let tokens = Array((g["tokens"] as! [Int]).prefix(1300).map { Int32($0) })
        let (windowedLogits, plainLogits, held) = try await offPool { () throws -> ([[Float]], [[Float]], (Int, Int)) in
            let m = try Model(path: Fixtures.realModelPath!)
            let s = ForwardSession(model: m, threads: 2, maxBatch: 256)
            let windowedSpec = m.config.kvCacheSpec(dtype: dtype)
            var plainSpec = windowedSpec
            plainSpec.layerWindows = []
            func run(_ spec: KVCacheSpec) throws -> ([[Float]], (Int, Int)) {
                let pool = try KVCachePool(spec: spec, byteBudget: 1400 * spec.bytesPerToken)
                let seq = pool.createSequence()
                var out: [[Float]] = []
                // Prefill 1200 tokens in micro-batches of 256 (logits of every 97th row), then decode 100 tokens.
                try s.forward(tokens: Array(tokens[0..<1200]), startPosition: 0, sequence: seq, pool: pool, logits: .all) { i, l in
                    if i % 97 == 0 || i == 1199 { out.append(Array(l)) }
                }
                for p in 1200..<1300 {
                    try s.decode([DecodeItem(token: tokens[p], position: p, sequence: seq)], pool: pool) { _, l in out.append(Array(l)) }
                }
                return (out, (pool.numBlocks - pool.freeBlocks, pool.blocksNeeded(forLength: 1301)))
            }
            let (w, held) = try run(windowedSpec)
            let (p, _) = try run(plainSpec)
            return (w, p, held)
        }
        #expect(windowedLogits.count == plainLogits.count && windowedLogits.count == 14 + 100)
        for i in windowedLogits.indices {
            #expect(windowedLogits[i] == plainLogits[i], "row \(i)")
        }
        // 1300 tokens: 82 blocks of the full group; each windowed group ≤ 33.
        #expect(held.0 <= held.1 && held.1 == 82 + 5 * 33, "blocks held \(held.0), bound \(held.1)")
    }

    @Test("perplexity on GPL-3 at ctx 2048 unchanged to the last digit", .enabled(if: Fixtures.isRelease, Fixtures.needsRelease))
    func samePerplexity() async throws {
        let g = try Fixtures.json("gemma3_gpl3_perplexity.json")
        let tokens = (g["tokens"] as! [Int]).map { Int32($0) }
        let (windowed, plain) = try await offPool { () throws -> (Double, Double) in
            let m = try Model(path: Fixtures.realModelPath!)
            let s = ForwardSession(model: m, threads: 2)
            func ppl(_ spec: KVCacheSpec) throws -> Double {
                let pool = try KVCachePool(spec: spec, byteBudget: 2100 * spec.bytesPerToken)
                return try PerplexityEvaluator.run(session: s, pool: pool, tokens: tokens, ctx: 2048).perplexity
            }
            var plain = m.config.kvCacheSpec(dtype: .int8PerToken)
            plain.layerWindows = []
            return (try ppl(m.config.kvCacheSpec(dtype: .int8PerToken)), try ppl(plain))
        }
        print("GPL-3 ctx 2048 (3 chunks), int8_pertoken: windowed cache \(windowed), every block kept \(plain)")
        #expect(windowed == plain)
    }
}
