import Executor
import Foundation
import KvantCore
import Testing

/// The sampler features the OpenAI API adds: presence/frequency penalties over the output, suppressed
/// tokens (`ignore_eos`) and raw logprobs.
@Suite struct SamplerOpenAITests {
    let logits: [Float] = [2.0, 1.0, 0.5, -1.0]

    @Test func presenceAndFrequencyPenaltiesCountOnlyTheOutput() throws {
        // history: prompt [0, 0] then output [1, 1, 2]: token 0 is only in the prompt → no penalty.
        let s = try Sampler(SamplingParameters(temperature: 1, presencePenalty: 0.5, frequencyPenalty: 0.25))
        let c = logits.withUnsafeBufferPointer { s.candidates(logits: $0, history: [0, 0, 1, 1, 2], outputStart: 2) }
        // Adjusted logits: 0 → 2.0, 1 → 1.0 − 0.5 − 0.5 = 0.0, 2 → 0.5 − 0.5 − 0.25 = −0.25, 3 → −1.0.
        let adjusted: [Double] = [2.0, 0.0, -0.25, -1.0]
        let z = adjusted.map { exp($0) }.reduce(0, +)
        #expect(c.map(\.token) == [0, 1, 2, 3])
        for (token, p) in c { #expect(abs(p - exp(adjusted[Int(token)]) / z) < 1e-6) }
        // With the whole history as output, token 0 is penalized too and falls below nothing else: 2 − 0.5 − 0.5 = 1.0.
        let all = logits.withUnsafeBufferPointer { s.candidates(logits: $0, history: [0, 0, 1, 1, 2], outputStart: 0) }
        #expect(abs(all.first { $0.token == 0 }!.p - exp(1.0) / (exp(1.0) + exp(0.0) + exp(-0.25) + exp(-1.0))) < 1e-6)
    }

    @Test func suppressedTokensAreNeverSampled() throws {
        var s = try Sampler(SamplingParameters(temperature: 0, suppressedTokens: [0]))
        #expect(s.sample(logits: logits, history: []) == 1)
        var t = try Sampler(SamplingParameters(temperature: 1, seed: 3, suppressedTokens: [0, 1]))
        for _ in 0..<50 { #expect(![0, 1].contains(t.sample(logits: logits, history: []))) }
    }

    @Test func penaltiesOutOfRangeAreRejected() {
        #expect(throws: KvantError.self) { try Sampler(SamplingParameters(presencePenalty: 2.5)) }
        #expect(throws: KvantError.self) { try Sampler(SamplingParameters(frequencyPenalty: -3)) }
    }

    @Test func logprobsAreTheRawLogSoftmax() {
        let z = logits.map { exp(Double($0)) }.reduce(0, +)
        let (chosen, top) = logits.withUnsafeBufferPointer { Sampler.logprobs(logits: $0, chosen: 2, top: 3) }
        #expect(abs(chosen - (0.5 - log(z))) < 1e-9)
        #expect(top.map(\.token) == [0, 1, 2])
        for (token, lp) in top { #expect(abs(lp - (Double(logits[Int(token)]) - log(z))) < 1e-9) }
        // Ties: the lower id first; top 0 gives no alternatives.
        let tied: [Float] = [1, 3, 3, 0]
        #expect(tied.withUnsafeBufferPointer { Sampler.logprobs(logits: $0, chosen: 0, top: 2) }.top.map(\.token) == [1, 2])
        #expect(tied.withUnsafeBufferPointer { Sampler.logprobs(logits: $0, chosen: 0, top: 0) }.top.isEmpty)
    }
}
