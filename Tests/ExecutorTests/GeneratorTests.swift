import Executor
import Foundation
import KVCache
import KvantTestSupport
import Testing

/// The generation loop on the tiny model, with a stand-in detokenizer (token id → "<id>").
@Suite struct GeneratorTests {
    let detok: ([Int32]) -> String = { $0.map { "<\($0)>" }.joined() }

    func setup() throws -> (ForwardSession, KVCachePool) {
        let model = try Model(path: Fixtures.tinyLlamaPath)
        let pool = try KVCachePool(spec: model.config.kvCacheSpec(dtype: .fp32), byteBudget: 4 << 20)
        return (ForwardSession(model: model, threads: 1), pool)
    }

    @Test func maxTokensStopStringsEosAndCancellation() throws {
        let (s, pool) = try setup()
        let prompt: [Int32] = [1, 40, 41, 42]
        let g0 = try Generator(session: s, pool: pool, sequence: pool.createSequence(), sampling: .greedy,
                               maxTokens: 8, stopTokenIDs: [], detokenize: detok)
        var streamed = ""
        let r0 = try g0.run(prompt: prompt, onToken: { _, piece in streamed += piece })
        #expect(r0.finishReason == .length && r0.tokens.count == 8)
        #expect(streamed == detok(r0.tokens) && r0.text == streamed)

        // Greedy is deterministic: the same run on a new sequence gives the same tokens.
        let g1 = try Generator(session: s, pool: pool, sequence: pool.createSequence(), sampling: .greedy,
                               maxTokens: 8, stopTokenIDs: [], detokenize: detok)
        #expect(try g1.run(prompt: prompt).tokens == r0.tokens)

        // Stop string = the text of the 4th token: output is cut before it, never streamed.
        let stop = "<\(r0.tokens[3])>"
        let expectedText = detok(Array(r0.tokens[0..<3]))
        let g2 = try Generator(session: s, pool: pool, sequence: pool.createSequence(), sampling: .greedy,
                               maxTokens: 8, stopStrings: [stop], stopTokenIDs: [], detokenize: detok)
        var streamed2 = ""
        let r2 = try g2.run(prompt: prompt, onToken: { _, piece in streamed2 += piece })
        if !expectedText.contains(stop) {
            #expect(r2.finishReason == .stop)
            #expect(r2.text == expectedText && streamed2 == expectedText)
        }

        // EOS: the 2nd generated token declared end-of-generation.
        let g3 = try Generator(session: s, pool: pool, sequence: pool.createSequence(), sampling: .greedy,
                               maxTokens: 8, stopTokenIDs: [r0.tokens[1]], detokenize: detok)
        let r3 = try g3.run(prompt: prompt)
        if r0.tokens[0] != r0.tokens[1] {
            #expect(r3.finishReason == .eos && r3.tokens == [r0.tokens[0]])
        }

        // Cancellation checked before each step.
        var calls = 0
        let g4 = try Generator(session: s, pool: pool, sequence: pool.createSequence(), sampling: .greedy,
                               maxTokens: 8, stopTokenIDs: [], detokenize: detok)
        let r4 = try g4.run(prompt: prompt, isCancelled: { calls += 1; return calls > 3 })
        #expect(r4.finishReason == .cancelled && r4.tokens == Array(r0.tokens[0..<3]))
    }

    @Test func seededSamplingIsReproducible() throws {
        let (s, pool) = try setup()
        let p = SamplingParameters(temperature: 1.0, topK: 50, topP: 0.95, seed: 1234)
        let a = try Generator(session: s, pool: pool, sequence: pool.createSequence(), sampling: p, maxTokens: 12,
                              stopTokenIDs: [], detokenize: detok).run(prompt: [1, 7, 8])
        let b = try Generator(session: s, pool: pool, sequence: pool.createSequence(), sampling: p, maxTokens: 12,
                              stopTokenIDs: [], detokenize: detok).run(prompt: [1, 7, 8])
        #expect(a.tokens == b.tokens && a.tokens.count == 12)
    }
}
