import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantExecutorBackend
import KvantTestSupport
import Logging
import Testing

/// Parallel sampling on the real model (Gemma 3 270M: 3 full-attention layers, 15 with a 512-token window):
/// `n = 3` choices share one prefill (the last chunk forks the sequence: blocks shared, copy-on-write of the
/// partial last block) and each choice gives the tokens it gives as a request of its own with its seed, greedy
/// and seeded, for fp16, int8_pertoken and int4_pertoken (whose fork copies the int8 residual ring), with prefix
/// caching on and off, on a prompt longer than the window (the window groups freed blocks before the fork).
@Suite(.serialized, .enabled(if: RealModel.path != nil, RealModel.skipReason),
       .enabled(if: RealModel.isReleaseBuild, RealModel.needsRelease))
struct ParallelSamplingRealModelTests {
    func makeEngine(_ dtype: KVCacheDType, prefixCaching: Bool, kvCacheBytes: Int = 48 << 20, maxNumSeqs: Int = 4) async throws -> Engine {
        let engine = Engine(backend: ExecutorBackend(),
                            settings: .init(kvCacheDType: dtype, kvCacheBytes: kvCacheBytes, blockSize: 16, maxModelLen: 1024,
                                            threads: 2, maxNumSeqs: maxNumSeqs, enablePrefixCaching: prefixCaching),
                            logger: Logger(label: "test"))
        _ = try await engine.loadModel(path: try #require(RealModel.path), kvCacheDType: nil, quantizationParamPath: nil,
                                       kvCacheBytes: nil, maxModelLen: nil)
        return engine
    }

    /// A prompt of more than 512 tokens (past the sliding window), not a multiple of the block size.
    static let prompt: String = {
        "Inventory log. " + (0..<70).map { "Shelf \($0) holds \($0 * 7 % 13) boxes;" }.joined(separator: " ")
    }()

    /// The choices of one request as the HTTP API makes them: seed + index.
    static func choices(temperature: Double, seed: UInt64?, maxTokens: Int = 40, n: Int = 3) -> [GenerateParams] {
        (0..<n).map { i in
            var p = GenerateParams(prompt: prompt, maxTokens: maxTokens, temperature: temperature, topP: 0.95,
                                   seed: seed.map { $0 + UInt64(i) })
            p.ignoreEOS = true
            return p
        }
    }

    /// Runs the choices of `group` concurrently, one task each (as the HTTP API does).
    static func runGroup(_ engine: Engine, _ params: [GenerateParams]) async throws -> [GenerateResult] {
        let group = ParallelSampling(choices: params)
        return try await withThrowingTaskGroup(of: (Int, GenerateResult).self) { tasks in
            for i in params.indices {
                tasks.addTask { (i, try await engine.generate(choice: i, of: group) { _ in }) }
            }
            var out = [GenerateResult?](repeating: nil, count: params.count)
            for try await (i, r) in tasks { out[i] = r }
            return out.map { $0! }
        }
    }

    func kv(_ engine: Engine, _ key: String) async throws -> Int {
        try #require(try await engine.stats().kvCache[key]?.intValue, "stats.kv_cache.\(key)")
    }

    @Test("n=3 forks equal separate requests with seed + index, prompt prefilled once",
          arguments: [KVCacheDType.fp16, .int8PerToken, .int4PerToken], [false, true])
    func forkEqualsSeparate(dtype: KVCacheDType, prefixCaching: Bool) async throws {
        let seeded = Self.choices(temperature: 0.8, seed: 7)
        let greedy = Self.choices(temperature: 0, seed: nil)
        // Reference: each choice alone, one after the other, on an engine of its own per request (so no request
        // finds another's blocks in the prefix cache).
        var alone: [[Int]] = []
        for p in seeded + greedy {
            let e = try await makeEngine(dtype, prefixCaching: prefixCaching, maxNumSeqs: 1)
            alone.append(try await e.generate(p) { _ in }.tokens)
        }

        let engine = try await makeEngine(dtype, prefixCaching: prefixCaching)
        let promptTokens = try await engine.tokenize(Self.prompt).count
        #expect(promptTokens > 512 && promptTokens % 16 != 0, "prompt of \(promptTokens) tokens")
        let before = await engine.prefillWork
        let q0 = try await kv(engine, "prefix_cache_queries")
        let s = try await Self.runGroup(engine, seeded)
        let mid = await engine.prefillWork
        // Prefilled exactly once: the prompt's tokens, in chunks of max_num_batched_tokens (64).
        #expect(mid.tokens - before.tokens == promptTokens, "\(dtype.rawValue) prefix caching \(prefixCaching)")
        #expect(mid.chunks - before.chunks == (promptTokens + 63) / 64)
        // One prefix-cache query (choice 0's), none for the forked choices.
        #expect(try await kv(engine, "prefix_cache_queries") - q0 == (prefixCaching ? promptTokens : 0))
        #expect(try await kv(engine, "prefix_cache_hits") == 0)
        let g = try await Self.runGroup(engine, greedy)
        let after = await engine.prefillWork
        // The second request of the same prompt: with prefix caching only the part after the cached whole blocks.
        let hit = prefixCaching ? (promptTokens - 1) / 16 * 16 : 0
        #expect(after.tokens - mid.tokens == promptTokens - hit)
        #expect(try await kv(engine, "prefix_cache_hits") == hit)
        for (i, r) in (s + g).enumerated() {
            #expect(r.tokens == alone[i], "\(dtype.rawValue) prefix caching \(prefixCaching) choice \(i): forked \(r.tokens) vs alone \(alone[i])")
            #expect(r.tokens.count == 40 && r.promptTokens == promptTokens)
        }
        #expect(Set(s.map(\.tokens)).count == 3, "seeded choices differ")
        #expect(await engine.figures().numPreemptions == 0)
        // Every block released (cached ones stay in the prefix cache, unreferenced).
        #expect(try await kv(engine, "num_blocks_used") == 0)
    }

    @Test("a choice cancelled before the fork is not forked; the others give their own tokens")
    func cancelOneChoice() async throws {
        let params = Self.choices(temperature: 0.8, seed: 21, maxTokens: 16)
        var alone: [[Int]] = []
        for p in params {
            let e = try await makeEngine(.int8PerToken, prefixCaching: false, maxNumSeqs: 1)
            alone.append(try await e.generate(p) { _ in }.tokens)
        }
        let engine = try await makeEngine(.int8PerToken, prefixCaching: false)
        let group = ParallelSampling(choices: params)
        let promptTokens = try await engine.tokenize(Self.prompt).count
        let cancelled = Task { try await engine.generate(choice: 1, of: group) { _ in } }
        cancelled.cancel()
        async let c0 = engine.generate(choice: 0, of: group) { _ in }
        async let c2 = engine.generate(choice: 2, of: group) { _ in }
        let (r0, r2) = try await (c0, c2)
        let r1 = try await cancelled.value
        #expect(r1.finishReason == .cancelled && r1.tokens.isEmpty)
        #expect(r0.tokens == alone[0] && r2.tokens == alone[2])
        #expect(await engine.prefillWork.tokens == promptTokens)
        #expect(try await kv(engine, "num_blocks_used") == 0)
        #expect(await engine.figures().requestsRunning == 0)
    }

    @Test("forked choices preempted on a small pool are recomputed and give their own tokens", arguments: [KVCacheDType.fp16, .int4PerToken])
    func preemptedForks(dtype: KVCacheDType) async throws {
        // A short prompt (under the window, so every layer holds every position) and long answers: four choices
        // outgrow a pool of ~400 tokens and are preempted and recomputed.
        let base = "The operators of an inference service measure memory per token, time to first token and"
        let params = (0..<4).map { i -> GenerateParams in
            var p = GenerateParams(prompt: base, maxTokens: 150, temperature: 0.9, topP: 0.95, seed: 40 + UInt64(i))
            p.ignoreEOS = true
            return p
        }
        var alone: [[Int]] = []
        let roomy = try await makeEngine(dtype, prefixCaching: true, kvCacheBytes: 64 << 20, maxNumSeqs: 1)
        for p in params { alone.append(try await roomy.generate(p) { _ in }.tokens) }
        let perToken = try await kv(roomy, "bytes_per_token_all_layers")
        // int4_pertoken: + its 8 int8 residual rings (max_num_seqs 4 + 4 kept), 1 497 600 B each on Gemma 3 270M
        // (sized for the default 64-token chunks).
        let rings = dtype == .int4PerToken ? 8 * 1_497_600 : 0
        let tight = try await makeEngine(dtype, prefixCaching: true, kvCacheBytes: perToken * 400 + rings, maxNumSeqs: 4)
        let out = try await Self.runGroup(tight, params)
        #expect(await tight.figures().numPreemptions > 0)
        for (i, r) in out.enumerated() {
            #expect(r.tokens == alone[i], "\(dtype.rawValue) choice \(i): \(r.tokens) vs \(alone[i])")
        }
        #expect(try await kv(tight, "num_blocks_used") == 0)
    }
}
