import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantExecutorBackend
import KvantTestSupport
import Logging
import Testing

/// Preemption on the real model (Gemma 3 270M): four concurrent requests on a pool too small to hold them all
/// as they grow are preempted and recomputed, and every one gives the tokens it gives undisturbed (alone, on a
/// pool that never runs out), greedy and seeded.
@Suite(.serialized, .enabled(if: RealModel.path != nil, RealModel.skipReason),
       .enabled(if: RealModel.isReleaseBuild, RealModel.needsRelease))
struct PreemptionRealModelTests {
    func makeEngine(_ dtype: KVCacheDType, kvCacheBytes: Int, maxNumSeqs: Int) async throws -> Engine {
        let engine = Engine(backend: ExecutorBackend(),
                            settings: .init(kvCacheDType: dtype, kvCacheBytes: kvCacheBytes, blockSize: 16, maxModelLen: 1024,
                                            threads: 2, maxNumSeqs: maxNumSeqs),
                            logger: Logger(label: "test"))
        _ = try await engine.loadModel(path: try #require(RealModel.path), kvCacheDType: nil, quantizationParamPath: nil,
                                       kvCacheBytes: nil, maxModelLen: nil)
        return engine
    }

    /// Two greedy and two seeded requests (a shared start, so recomputes also meet prefix-cache hits).
    static let requests: [GenerateParams] = {
        let base = "The operators of an inference service measure memory per token, time to first token and"
        var out: [GenerateParams] = []
        for (i, tail) in [" the accuracy of", " the cost of", " how fast", " why"].enumerated() {
            var p = GenerateParams(prompt: base + tail, maxTokens: 150, temperature: i % 2 == 0 ? 0 : 0.9, topP: 0.95,
                                   seed: i % 2 == 0 ? nil : UInt64(17 + i))
            p.ignoreEOS = true
            out.append(p)
        }
        return out
    }()

    @Test("preempted and recomputed requests give the tokens of undisturbed ones, greedy and seeded",
          arguments: [KVCacheDType.int8PerToken, .fp16])
    func preemptedEqualsUndisturbed(dtype: KVCacheDType) async throws {
        // Undisturbed: one at a time on a pool that holds them all.
        let roomy = try await makeEngine(dtype, kvCacheBytes: 64 << 20, maxNumSeqs: 1)
        var alone: [GenerateResult] = []
        for p in Self.requests { alone.append(try await roomy.generate(p) { _ in }) }
        #expect(try await roomy.stats().engine.numPreemptions == 0)

        // A pool of about 2.2 requests' worth of blocks (each grows to ~170 tokens, every layer while under the
        // 512-token window), all four at once: they run out of blocks as they grow.
        let probe = try await makeEngine(dtype, kvCacheBytes: 64 << 20, maxNumSeqs: 1)
        let perToken = try #require(try await probe.stats().kvCache["bytes_per_token_all_layers"]?.intValue)
        let tight = try await makeEngine(dtype, kvCacheBytes: perToken * 400, maxNumSeqs: 4)
        let capacity = try #require(try await tight.stats().kvCache["capacity_tokens"]?.intValue)
        #expect(capacity >= 200 && capacity < 4 * 170, "capacity \(capacity) tokens")
        let together = try await withThrowingTaskGroup(of: (Int, GenerateResult).self) { group in
            for (i, p) in Self.requests.enumerated() {
                group.addTask { (i, try await tight.generate(p) { _ in }) }
            }
            var all = [GenerateResult?](repeating: nil, count: Self.requests.count)
            for try await (i, r) in group { all[i] = r }
            return all.map { $0! }
        }
        let stats = try await tight.stats()
        #expect(stats.engine.numPreemptions > 0, "no preemption: the test did not exercise it")
        #expect(stats.engine.requestsFailed == 0)
        for (i, (a, t)) in zip(alone, together).enumerated() {
            #expect(a.tokens.count == 150 && t.tokens.count == 150)
            #expect(t.tokens == a.tokens, "\(dtype.rawValue) request \(i): preempted \(t.tokens) vs undisturbed \(a.tokens)")
            #expect(t.text == a.text)
        }
        #expect(stats.kvCache["num_blocks_used"]?.intValue == 0)
    }

    @Test("past 512 keys (split-K decode rows, the sliding window full): preempted requests still give the undisturbed tokens")
    func preemptedBeyondWindowEqualsUndisturbed() async throws {
        let text = try String(contentsOfFile: "/usr/share/common-licenses/GPL-3", encoding: .utf8)
        // Three different ~300-token passages (no shared prefix: each holds its own blocks), 250 tokens generated
        // each: decode passes 512 keys, and each sequence grows by ~200 tokens of every layer before its window
        // layers start to give blocks back, so the three outgrow the pool that admitted their prompts.
        let chars = Array(text)
        let requests: [GenerateParams] = [" Summary:", " In short,", " The point is"].enumerated().map { i, tail in
            let passage = String(chars[(i * 3000)..<(i * 3000 + 1300)])
            var p = GenerateParams(prompt: passage + tail, maxTokens: 250, temperature: i == 1 ? 0.9 : 0, topP: 0.95,
                                   seed: i == 1 ? 5 : nil)
            p.ignoreEOS = true
            return p
        }
        let roomy = try await makeEngine(.int8PerToken, kvCacheBytes: 64 << 20, maxNumSeqs: 1)
        var alone: [GenerateResult] = []
        for p in requests { alone.append(try await roomy.generate(p) { _ in }) }
        #expect(alone.allSatisfy { $0.promptTokens + 250 > 530 }, "prompts \(alone.map(\.promptTokens)): decode must pass 512 keys")
        let perToken = try #require(try await roomy.stats().kvCache["bytes_per_token_all_layers"]?.intValue)
        // Room for the three prompts at once, not for the three sequences at 512 tokens.
        let tight = try await makeEngine(.int8PerToken, kvCacheBytes: perToken * 1000, maxNumSeqs: 3)
        let together = try await withThrowingTaskGroup(of: (Int, GenerateResult).self) { group in
            for (i, p) in requests.enumerated() { group.addTask { (i, try await tight.generate(p) { _ in }) } }
            var all = [GenerateResult?](repeating: nil, count: requests.count)
            for try await (i, r) in group { all[i] = r }
            return all.map { $0! }
        }
        let stats = try await tight.stats()
        #expect(stats.engine.numPreemptions > 0, "no preemption: the test did not exercise it")
        for (i, (a, t)) in zip(alone, together).enumerated() {
            #expect(t.tokens == a.tokens, "request \(i): preempted \(t.tokens) vs undisturbed \(a.tokens)")
        }
    }
}
