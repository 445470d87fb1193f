import Executor
import Foundation
import KvantCore
import KvantTestSupport
import Testing

@Suite struct SamplerTests {
    /// Logits of a known distribution p = [0.5, 0.25, 0.125, 0.0625, 0.0625].
    let probs: [Double] = [0.5, 0.25, 0.125, 0.0625, 0.0625]
    var logits: [Float] { probs.map { Float(log($0)) } }

    func candidates(_ p: SamplingParameters, _ l: [Float], history: [Int32] = []) throws -> [(token: Int32, p: Double)] {
        let s = try Sampler(p)
        return l.withUnsafeBufferPointer { s.candidates(logits: $0, history: history) }
    }

    @Test func greedyIsArgmax() throws {
        var s = try Sampler(.greedy)
        #expect(s.sample(logits: [0.1, 3, -2, 2.9], history: []) == 1)
    }

    @Test func topKKeepsKMostLikely() throws {
        let c = try candidates(SamplingParameters(temperature: 1, topK: 2), logits)
        #expect(c.map(\.token) == [0, 1])
        #expect(abs(c[0].p - 2.0 / 3) < 1e-6 && abs(c[1].p - 1.0 / 3) < 1e-6)
    }

    @Test func topPKeepsSmallestSetReachingP() throws {
        // 0.5 + 0.25 = 0.75 ≥ 0.7 → two tokens; 0.8 needs three.
        #expect(try candidates(SamplingParameters(temperature: 1, topP: 0.7), logits).map(\.token) == [0, 1])
        let c = try candidates(SamplingParameters(temperature: 1, topP: 0.8), logits)
        #expect(c.map(\.token) == [0, 1, 2])
        #expect(abs(c[2].p - 0.125 / 0.875) < 1e-6)
    }

    @Test func minPDropsTokensBelowFractionOfMax() throws {
        // min_p 0.2 → threshold 0.1: keeps 0.5, 0.25, 0.125.
        #expect(try candidates(SamplingParameters(temperature: 1, minP: 0.2), logits).map(\.token) == [0, 1, 2])
        #expect(try candidates(SamplingParameters(temperature: 1, minP: 0.6), logits).map(\.token) == [0])
    }

    @Test func temperatureSharpensAfterFilters() throws {
        let c = try candidates(SamplingParameters(temperature: 0.5), logits)
        // p_i^(1/T) normalized: squares.
        let z = probs.map { $0 * $0 }.reduce(0, +)
        for (t, p) in c { #expect(abs(p - probs[Int(t)] * probs[Int(t)] / z) < 1e-6) }
    }

    @Test func repetitionPenaltyDividesPositiveAndMultipliesNegativeLogits() throws {
        let l: [Float] = [2, 1.9, -1]
        // Token 0 penalized: 2/1.5 = 1.33 < 1.9 → greedy picks 1.
        var s = try Sampler(SamplingParameters(repetitionPenalty: 1.5))
        #expect(s.sample(logits: l, history: [0]) == 1)
        #expect(s.sample(logits: l, history: []) == 0)
        let c = try candidates(SamplingParameters(temperature: 1, repetitionPenalty: 2), [0, -1], history: [1])
        // logits 0 and -2 → p = [1, e^-2] / z
        #expect(abs(c[1].p - exp(-2.0) / (1 + exp(-2.0))) < 1e-6)
    }

    @Test func sameSeedSameTokensAndFrequenciesFollowTheDistribution() throws {
        let p = SamplingParameters(temperature: 1, seed: 42)
        var a = try Sampler(p), b = try Sampler(p)
        let ra = (0..<200).map { _ in a.sample(logits: logits, history: []) }
        let rb = (0..<200).map { _ in b.sample(logits: logits, history: []) }
        #expect(ra == rb)
        var c = try Sampler(SamplingParameters(temperature: 1, seed: 43))
        let rc = (0..<200).map { _ in c.sample(logits: logits, history: []) }
        #expect(ra != rc)
        var s = try Sampler(SamplingParameters(temperature: 1, seed: 7))
        var counts = [Int](repeating: 0, count: 5)
        let n = 20_000
        for _ in 0..<n { counts[Int(s.sample(logits: logits, history: []))] += 1 }
        for i in 0..<5 {
            let f = Double(counts[i]) / Double(n)
            #expect(abs(f - probs[i]) < 0.015, "token \(i): frequency \(f) vs p \(probs[i])")
        }
    }

    @Test func invalidParametersThrow() {
        #expect(throws: KvantError.self) { try Sampler(SamplingParameters(temperature: -1)) }
        #expect(throws: KvantError.self) { try Sampler(SamplingParameters(topP: 0)) }
        #expect(throws: KvantError.self) { try Sampler(SamplingParameters(minP: 1.5)) }
        #expect(throws: KvantError.self) { try Sampler(SamplingParameters(topK: -3)) }
        #expect(throws: KvantError.self) { try Sampler(SamplingParameters(repetitionPenalty: 0)) }
    }
}
