import ControlProtocol
import Executor
import Foundation
import KVCache
import KvantCore
import KvantDaemon
import Logging
import ModelFormats
import Tokenizers

/// One generation on the pool it started on.
final class ExecutorSequence: GenerationSequence {
    let owner: ExecutorModel
    let pool: KVCachePool
    let sequence: SequenceID
    let prompt: [Int32]
    var sampler: Sampler
    var history: [Int32]
    var decoder: StreamingDecoder
    var released = false
    /// Alternatives per generated token's logprob; nil = no logprobs.
    let logprobs: Int?
    /// Alternatives per prompt token's logprob; nil = none.
    let promptLogprobCount: Int?
    /// Logprobs of the token sampled last, attached by `accept`.
    private var pendingLogprobs: TokenLogprobs?
    private(set) var promptLogprobs: [TokenLogprobs?]?

    init(owner: ExecutorModel, pool: KVCachePool, sequence: SequenceID, prompt: [Int32], sampler: Sampler,
         logprobs: Int? = nil, promptLogprobs: Int? = nil) {
        self.owner = owner
        self.pool = pool
        self.sequence = sequence
        self.prompt = prompt
        self.sampler = sampler
        self.logprobs = logprobs
        self.promptLogprobCount = promptLogprobs
        history = prompt
        decoder = owner.tokenizer.makeStreamingDecoder()
    }

    /// Samples the next token from this row's logits (penalties count the output after the prompt) and
    /// keeps its logprobs for `accept` when they were asked for.
    func sample(_ logits: UnsafeBufferPointer<Float>) -> Int32 {
        let next = sampler.sample(logits: logits, history: history, outputStart: prompt.count)
        if let logprobs { pendingLogprobs = entry(logits, chosen: next, top: logprobs) }
        return next
    }

    private func entry(_ logits: UnsafeBufferPointer<Float>, chosen: Int32, top: Int) -> TokenLogprobs {
        let lp = Sampler.logprobs(logits: logits, chosen: chosen, top: top)
        return TokenLogprobs(chosen: owner.logprobEntry(chosen, lp.chosen),
                             top: lp.top.map { owner.logprobEntry($0.token, $0.logprob) })
    }

    private func step(tokens: [Int32], start: Int) throws -> GeneratedToken {
        var next: Int32 = 0
        try owner.session.forward(tokens: tokens, startPosition: start, sequence: sequence, pool: pool, logits: .last) { _, logits in
            next = sample(logits)
        }
        return accept(next)
    }

    /// Prefill with the logits of every prompt position: each row scores the next prompt token, the last samples.
    private func prefillScoringPrompt(top: Int) throws -> GeneratedToken {
        var next: Int32 = 0
        var scored: [TokenLogprobs?] = [nil]
        try owner.session.forward(tokens: prompt, startPosition: 0, sequence: sequence, pool: pool, logits: .all) { i, logits in
            if i + 1 < prompt.count {
                scored.append(entry(logits, chosen: prompt[i + 1], top: top))
            } else {
                next = sample(logits)
            }
        }
        promptLogprobs = scored
        return accept(next)
    }

    /// True while one more decode step fits (below max_model_len, not released).
    var canDecode: Bool { !released && history.count < owner.maxModelLen }

    /// The decode row of this sequence: its last token at the next position.
    var decodeItem: DecodeItem { DecodeItem(token: history[history.count - 1], position: history.count - 1, sequence: sequence) }

    /// Appends a sampled token and turns it into text (streaming UTF-8) or the end of the sequence.
    func accept(_ next: Int32) -> GeneratedToken {
        history.append(next)
        let logprobs = pendingLogprobs
        pendingLogprobs = nil
        if owner.tokenizer.isEndOfGeneration(next) {
            return GeneratedToken(token: Int(next), text: decoder.finish(), isEndOfSequence: true, logprobs: logprobs)
        }
        return GeneratedToken(token: Int(next), text: decoder.append(next), isEndOfSequence: false, logprobs: logprobs)
    }

    func prefill() throws -> GeneratedToken {
        if let top = promptLogprobCount { return try prefillScoringPrompt(top: top) }
        // Automatic prefix caching: the longest cached prefix of the prompt (whole blocks, at most all but the
        // last token) is attached to the sequence, and only the rest is computed.
        let start = pool.attachCachedPrefix(sequence, prompt: prompt)
        return try step(tokens: Array(prompt[start...]), start: start)
    }

    func decode() throws -> GeneratedToken {
        let position = history.count - 1
        guard position + 1 < owner.maxModelLen else {
            // The engine's token budget ends a sequence at max_model_len (finish_reason "length") first.
            throw KvantError(.internal, "decode past max_model_len \(owner.maxModelLen) tokens")
        }
        return try step(tokens: [history[position]], start: position)
    }

    func release() {
        guard !released else { return }
        released = true
        pool.free(sequence)
    }
}
