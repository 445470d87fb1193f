import Foundation
import KVCache
import KvantCore
import Tokenizers

/// Why a generation ended.
public enum FinishReason: String, Sendable, Codable {
    /// An end-of-generation token (EOS, `<end_of_turn>`, …) was sampled (it is not part of the output).
    case eos
    /// A stop string appeared; the text is cut before it.
    case stop
    /// `maxTokens` tokens were generated, or the context is full.
    case length
    /// The cancellation check returned true.
    case cancelled
}

/// The outcome of `Generator.run`.
public struct GenerationResult: Sendable {
    public var tokens: [Int32]
    public var text: String
    public var finishReason: FinishReason
    public var promptTokens: Int
    public var prefillSeconds: Double
    public var decodeSeconds: Double
}

/// The generation loop: prefill the prompt, then sample/decode until EOS, a stop string, `maxTokens` or
/// cancellation, streaming text that can no longer be part of a stop string.
public final class Generator {
    public let session: ForwardSession
    public let pool: KVCachePool
    public let sequence: SequenceID
    public var sampler: Sampler
    public let maxTokens: Int
    public let stopStrings: [String]
    public let stopTokenIDs: Set<Int32>
    private let detokenize: ([Int32]) -> String

    /// - Parameters:
    ///   - sequence: a pool sequence; the prompt is appended after its cached length (0 for a new sequence).
    ///   - maxTokens: generated tokens at most (≥ 1).
    ///   - stopStrings: generation ends when one appears in the decoded output (empty strings are ignored).
    ///   - stopTokenIDs: end-of-generation ids; default `model.endOfGenerationTokenIDs`.
    ///   - detokenize: token ids → text (the tokenizer's decode), used for stop strings and streamed text.
    /// - Throws: `KvantError(.invalidArgument)` for bad sampling parameters or `maxTokens < 1`.
    public init(session: ForwardSession, pool: KVCachePool, sequence: SequenceID, sampling: SamplingParameters,
                maxTokens: Int, stopStrings: [String] = [], stopTokenIDs: Set<Int32>? = nil,
                detokenize: @escaping ([Int32]) -> String) throws {
        guard maxTokens >= 1 else { throw KvantError(.invalidArgument, "max_tokens \(maxTokens) must be ≥ 1") }
        self.session = session
        self.pool = pool
        self.sequence = sequence
        self.sampler = try Sampler(sampling)
        self.maxTokens = maxTokens
        self.stopStrings = stopStrings.filter { !$0.isEmpty }
        self.stopTokenIDs = stopTokenIDs ?? session.model.endOfGenerationTokenIDs
        self.detokenize = detokenize
    }

    /// Convenience: stop tokens = the tokenizer's end-of-generation tokens plus the model's; text via `decode`.
    public convenience init(session: ForwardSession, pool: KVCachePool, sequence: SequenceID, sampling: SamplingParameters,
                            maxTokens: Int, stopStrings: [String] = [], tokenizer: any Tokenizer) throws {
        try self.init(session: session, pool: pool, sequence: sequence, sampling: sampling, maxTokens: maxTokens,
                      stopStrings: stopStrings,
                      stopTokenIDs: tokenizer.endOfGenerationTokens.union(session.model.endOfGenerationTokenIDs),
                      detokenize: { tokenizer.decode($0) })
    }

    /// Runs the prompt and generates. `onToken(token, newText)` is called for every generated token with the text
    /// released by it (possibly empty while a stop string may be forming). `isCancelled` is checked before every
    /// decode step.
    /// - Throws: `KvantError(.invalidArgument)` for an empty prompt or bad tokens, `.resourceExhausted` when the KV
    ///   cache has no room, errors thrown by `onToken`.
    public func run(prompt: [Int32], isCancelled: () -> Bool = { false },
                    onToken: (Int32, String) throws -> Void = { _, _ in }) throws -> GenerationResult {
        guard !prompt.isEmpty else { throw KvantError(.invalidArgument, "empty prompt") }
        let ctx = session.model.config.contextLength
        var position = pool.length(of: sequence)
        var history = prompt
        var generated: [Int32] = []
        var emitted = 0          // characters of the decoded output already released
        var text = ""
        var reason = FinishReason.length
        let t0 = Date()
        var logits = try session.forwardLast(tokens: prompt, startPosition: position, sequence: sequence, pool: pool)
        position += prompt.count
        let t1 = Date()
        let maxStop = stopStrings.map(\.count).max() ?? 0
        while true {
            if isCancelled() { reason = .cancelled; break }
            let next = sampler.sample(logits: logits, history: history)
            if stopTokenIDs.contains(next) { reason = .eos; break }
            generated.append(next)
            history.append(next)
            text = detokenize(generated)
            if maxStop > 0, let r = firstStop(in: text, from: max(0, emitted - maxStop)) {
                let piece = String(text[text.index(text.startIndex, offsetBy: emitted)..<r.lowerBound])
                text = String(text[..<r.lowerBound])
                try onToken(next, piece)
                reason = .stop
                break
            }
            // Hold back a tail that could still grow into a stop string.
            let releasable = text.count - heldBack(text)
            if releasable > emitted {
                let s = text.index(text.startIndex, offsetBy: emitted), e = text.index(text.startIndex, offsetBy: releasable)
                try onToken(next, String(text[s..<e]))
                emitted = releasable
            } else {
                try onToken(next, "")
            }
            if generated.count >= maxTokens || position >= ctx { reason = .length; break }
            logits = try session.forwardLast(tokens: [next], startPosition: position, sequence: sequence, pool: pool)
            position += 1
        }
        if reason != .stop, emitted < text.count {
            // Flush the held-back tail (no stop string completed); reported with the last token.
            if let last = generated.last {
                try onToken(last, String(text[text.index(text.startIndex, offsetBy: emitted)...]))
            }
        }
        return GenerationResult(tokens: generated, text: text, finishReason: reason, promptTokens: prompt.count,
                                prefillSeconds: t1.timeIntervalSince(t0), decodeSeconds: Date().timeIntervalSince(t1))
    }

    private func firstStop(in text: String, from offset: Int) -> Range<String.Index>? {
        let start = text.index(text.startIndex, offsetBy: min(offset, text.count))
        var best: Range<String.Index>?
        for s in stopStrings {
            if let r = text.range(of: s, range: start..<text.endIndex), best == nil || r.lowerBound < best!.lowerBound { best = r }
        }
        return best
    }

    /// Length of the longest suffix of `text` that is a proper prefix of a stop string.
    private func heldBack(_ text: String) -> Int {
        var best = 0
        for s in stopStrings {
            var k = min(s.count - 1, text.count)
            while k > best {
                if text.hasSuffix(String(s.prefix(k))) { best = k; break }
                k -= 1
            }
        }
        return best
    }
}
