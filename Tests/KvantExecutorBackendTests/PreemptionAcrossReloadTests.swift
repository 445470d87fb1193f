import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantExecutorBackend
import KvantTestSupport
import Testing

/// `reload-scales` between a preemption and its recompute (static int8, Gemma 3 270M): the recompute writes the
/// preempted sequence's earlier blocks under the scale epoch they had, so its tokens equal those of an undisturbed
/// sequence whose blocks kept their epoch across the same reload (vLLM V1's promise for recompute preemption: the
/// client only sees a delay). Driven step by step through the scheduler's calls (`reserveDecode`, `preempt`,
/// `readmit`, `recompute`) on a pool too small for two sequences: no timing involved.
@Suite(.serialized, .enabled(if: RealModel.path != nil, RealModel.skipReason),
       .enabled(if: RealModel.isReleaseBuild, RealModel.needsRelease))
struct PreemptionAcrossReloadTests {
    /// A vLLM scale file with one scale for every layer.
    func scaleFile(_ scale: Double, name: String) throws -> String {
        try uniformScaleFile(scale, name: name, tag: "preempt-reload")
    }

    /// int8_pertensor on `scales`; `kvCacheBytes` small enough that the filler and the sequence do not both fit.
    func load(scales: String, kvCacheBytes: Int, prefixCaching: Bool) throws -> any LoadedModel {
        try ExecutorBackend().loadModel(
            ModelLoadRequest(path: try #require(RealModel.path), kvCacheDType: .int8PerTensor, quantizationParamPath: scales,
                             kvCacheBytes: kvCacheBytes, blockSize: 16, maxModelLen: 1024, threads: 2,
                             enablePrefixCaching: prefixCaching, maxNumSeqs: 4),
            progress: { _ in })
    }

    struct Stats: Encodable {
        let value: any Encodable
        func encode(to encoder: Encoder) throws { try value.encode(to: encoder) }
    }

    func kvStats(_ model: any LoadedModel) throws -> JSONValue { try JSONValue(encoding: Stats(value: model.kvCacheStats())) }

    func liveEpochs(_ model: any LoadedModel) throws -> [Int] {
        guard case .array(let values)? = try kvStats(model)["live_epochs"] else { return [] }
        return values.compactMap(\.intValue)
    }

    /// Prefills the whole prompt (chunks of 64).
    func prefill(_ s: any GenerationSequence) throws -> GeneratedToken {
        s.attachCachedPrefix()
        while true { if let first = try s.prefill(maxTokens: 64) { return first } }
    }

    /// One decode step as the scheduler runs it: reserve the next position's block first.
    func decode(_ s: any GenerationSequence) throws -> GeneratedToken? {
        guard s.reserveDecode() else { return nil }
        return try s.decode()
    }

    static let prompt = "The operators of an inference service measure memory per token, time to first token and"
    static let filler = String(repeating: "A block of text that only takes room in the cache. ", count: 6)

    /// Tokens of `sampling` after `prompt`: `before` tokens under scales `a`, the reload to `b`, then `after` more.
    /// `preempt`: a filler sequence holds most of the pool, so the sequence runs out of blocks within `before`
    /// tokens and is preempted there (the reload happens while it holds no blocks), then the filler ends, the
    /// sequence is readmitted and recomputed, and decodes on. Returns the tokens and where the reload happened.
    func run(sampling: SamplingConfig, scales a: String, _ b: String, kvCacheBytes: Int, prefixCaching: Bool,
             preemptAt: Int?) throws -> (tokens: [Int], reloadAt: Int, recomputed: Int, promptTokens: Int) {
        let model = try load(scales: a, kvCacheBytes: kvCacheBytes, prefixCaching: prefixCaching)
        let promptIDs = try model.tokenize(Self.prompt)
        var filler: (any GenerationSequence)?
        if preemptAt == nil {
            let f = try model.makeSequence(prompt: try model.tokenize(Self.filler), maxTokens: 1, sampling: SamplingConfig(temperature: 0))
            _ = try prefill(f)
            filler = f
        }
        let s = try model.makeSequence(prompt: promptIDs, maxTokens: 130, sampling: sampling)
        defer { s.release() }
        var tokens = [try prefill(s).token]
        var recomputed = 0
        // Before the reload: until the pool runs out (preempting run) or `preemptAt` tokens (undisturbed run).
        while preemptAt.map({ tokens.count < $0 }) ?? true {
            guard let t = try decode(s) else { break }
            tokens.append(t.token)
            #expect(tokens.count < 300, "the pool never ran out")
            if tokens.count >= 300 { break }
        }
        let reloadAt = tokens.count
        if let f = filler {
            // Out of blocks: the scheduler preempts the most recently admitted sequence (this one), whose blocks
            // are freed; the reload comes while it waits for its recompute.
            s.preempt()
            f.release()
            filler = nil
            _ = try model.installScales(path: b)
            // The preempted sequence keeps epoch 1 alive (no block holds it any more).
            #expect(try liveEpochs(model) == [1, 2])
            #expect(s.readmit())
            s.attachCachedPrefix()   // with prefix caching: its own freed blocks, looked up under their epoch 1
            recomputed = s.recomputeRemaining
            while s.recomputeRemaining > 0 { try s.recompute(maxTokens: 64) }
            // Its earlier blocks are epoch 1's again (a recompute under epoch 2 would leave only [2]).
            #expect(try liveEpochs(model) == [1, 2])
        } else {
            _ = try model.installScales(path: b)
        }
        while tokens.count < reloadAt + 30 {
            let t = try #require(try decode(s), "no block for an undisturbed decode")
            tokens.append(t.token)
        }
        s.release()
        // Nothing keeps epoch 1 once the sequence ended.
        #expect(try liveEpochs(model) == [2])
        #expect(try kvStats(model)["num_blocks_used"]?.intValue == 0)
        return (tokens, reloadAt, recomputed, promptIDs.count)
    }

    @Test("reload-scales between a preemption and its recompute: the tokens of an undisturbed run with the same reload",
          arguments: [false, true])
    func reloadBetweenPreemptionAndRecompute(prefixCaching: Bool) throws {
        // Epoch 1 and epoch 2 scales that give different continuations (checked below).
        let a = try scaleFile(0.5, name: "a.json"), b = try scaleFile(0.35, name: "b.json")
        // About 160 tokens of every layer: the filler (~70 tokens) and the sequence cannot both grow to 160.
        let perToken = try #require(try kvStats(try load(scales: a, kvCacheBytes: 8 << 20, prefixCaching: false))["bytes_per_token_all_layers"]?.intValue)
        let bytes = perToken * 160
        for sampling in [SamplingConfig(temperature: 0), SamplingConfig(temperature: 0.8, topP: 0.95, seed: 29)] {
            var ignoring = sampling
            ignoring.ignoreEOS = true
            let preempted = try run(sampling: ignoring, scales: a, b, kvCacheBytes: bytes, prefixCaching: prefixCaching, preemptAt: nil)
            #expect(preempted.reloadAt > 20, "preempted after \(preempted.reloadAt) tokens")
            // Positions before the preemption: all recomputed without prefix caching; with it, only those after
            // the whole blocks it freed (found again under their epoch; a lookup under epoch 2 would find none).
            let before = preempted.promptTokens + preempted.reloadAt - 1
            #expect(preempted.recomputed == (prefixCaching ? before - before / 16 * 16 : before),
                    "recomputed \(preempted.recomputed) of \(before) positions")
            let undisturbed = try run(sampling: ignoring, scales: a, b, kvCacheBytes: 64 << 20, prefixCaching: prefixCaching,
                                      preemptAt: preempted.reloadAt)
            #expect(preempted.tokens == undisturbed.tokens,
                    "temperature \(sampling.temperature), prefix caching \(prefixCaching): preempted \(preempted.tokens) vs undisturbed \(undisturbed.tokens)")
        }
    }

    @Test("scales 0.5 and 0.35 give different continuations of the prompt (the scales matter here)")
    func scalesMatter() throws {
        let a = try scaleFile(0.5, name: "a.json"), b = try scaleFile(0.35, name: "b.json")
        var continuations: [[Int]] = []
        for scales in [a, b] {
            let model = try load(scales: scales, kvCacheBytes: 16 << 20, prefixCaching: false)
            let s = try model.makeSequence(prompt: try model.tokenize(Self.prompt), maxTokens: 100,
                                           sampling: SamplingConfig(temperature: 0))
            defer { s.release() }
            var tokens = [try prefill(s).token]
            while tokens.count < 60 { tokens.append(try #require(try decode(s)).token) }
            continuations.append(tokens)
        }
        #expect(continuations[0] != continuations[1])
    }
}
