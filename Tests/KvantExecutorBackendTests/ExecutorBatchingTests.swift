import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantExecutorBackend
import KvantTestSupport
import Logging
import Testing

/// Continuous batching in the engine (`DecodeBatcher` + `ExecutorModel.decodeBatch`) on the real model:
/// concurrent sequences decode together in one pass over the weights and get exactly the tokens
/// they get alone (every kernel computes each row independently).
@Suite(.serialized, .enabled(if: RealModel.path != nil, RealModel.skipReason))
struct ExecutorBatchingTests {
    func makeEngine(_ dtype: KVCacheDType) async throws -> Engine {
        let engine = Engine(backend: ExecutorBackend(),
                            settings: .init(kvCacheDType: dtype, kvCacheBytes: 32 << 20, blockSize: 16,
                                            maxModelLen: 512, threads: 2, maxNumSeqs: 4),
                            logger: Logger(label: "test"))
        _ = try await engine.loadModel(path: try #require(RealModel.path), kvCacheDType: nil, quantizationParamPath: nil,
                                       kvCacheBytes: nil, maxModelLen: nil)
        return engine
    }

    static let prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
                          "The GNU General Public License is"]

    @Test("4 concurrent greedy and seeded generates: same tokens as each alone, decoded in batches", arguments: [KVCacheDType.fp16, .int8PerToken])
    func batchedEqualsAlone(dtype: KVCacheDType) async throws {
        let engine = try await makeEngine(dtype)
        func params(_ i: Int) -> GenerateParams {
            // Two greedy, two sampled with a seed (the sampler state is per sequence).
            i % 2 == 0 ? GenerateParams(prompt: Self.prompts[i], maxTokens: 16, temperature: 0)
                       : GenerateParams(prompt: Self.prompts[i], maxTokens: 16, temperature: 0.9, topP: 0.95, seed: UInt64(40 + i))
        }
        var alone: [GenerateResult] = []
        for i in 0..<4 { alone.append(try await engine.generate(params(i)) { _ in }) }
        #expect(await engine.figures().decodeBatchMean == 1)   // one at a time: every decode step had one row
        let batched = try await makeEngine(dtype)   // fresh figures
        let together = try await withThrowingTaskGroup(of: (Int, GenerateResult).self) { group in
            for i in 0..<4 { group.addTask { (i, try await batched.generate(params(i)) { _ in }) } }
            var out = [GenerateResult?](repeating: nil, count: 4)
            for try await (i, r) in group { out[i] = r }
            return out.map { $0! }
        }
        for i in 0..<4 {
            #expect(together[i].tokens == alone[i].tokens, "prompt \(i): batched \(together[i].tokens) vs alone \(alone[i].tokens)")
            #expect(together[i].text == alone[i].text)
            #expect(together[i].finishReason == alone[i].finishReason)
        }
        // 4 sequences of 16 tokens; prefills interleave and sequences end at different times. How full the passes
        // get depends on thread scheduling (measured 1.46–3.9: 1.46 with a core kept busy and the 4 prefills
        // faster than the decode steps), so no threshold on it beyond what this test needs: that the tokens above
        // came out of shared passes (one at a time gives exactly 1).
        let figures = await batched.figures()
        #expect(figures.decodeBatchMean > 1, "mean decode batch \(figures.decodeBatchMean)")
        #expect(figures.requestsFailed == 0 && figures.requestsServed == 4)
        #expect(try await batched.stats().kvCache["num_blocks_used"] == .int(0))
    }
}
