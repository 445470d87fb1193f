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
         logprobs: Int? = nil, promptLogprobs: Int? = nil, skipSpecialTokens: Bool = true) {
        self.owner = owner
        self.pool = pool
        self.sequence = sequence
        self.prompt = prompt
        self.sampler = sampler
        self.logprobs = logprobs
        self.promptLogprobCount = promptLogprobs
        history = prompt
        decoder = owner.tokenizer.makeStreamingDecoder(skipSpecialTokens: skipSpecialTokens)
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

    /// Automatic prefix caching: attaches the longest cached prefix of the prompt (whole blocks, at most all
    /// but the last token), so the chunks compute only the rest. Prompt logprobs need every row computed, so
    /// they skip the cache.
    func attachCachedPrefix() {
        if promptLogprobCount == nil { pool.attachCachedPrefix(sequence, prompt: prompt) }
    }

    /// True once the prefill sampled the first token.
    private var prefilled = false

    var prefillRemaining: Int { prefilled ? 0 : max(0, prompt.count - pool.computedLength(of: sequence)) }

    /// Chunked prefill: prompt positions `start ..< end` with `start` the pool's computed length (chunks run
    /// before, or a prefix already in the cache) and `end` at most `maxTokens` later, ending on a block
    /// boundary unless it reaches the prompt's end (so a chunk never holds more sliding-window blocks than
    /// the pool's admission counted for a prefill micro-batch). The forward pass computes every row as an
    /// unchunked prefill does (rows are independent in every kernel; prefill rows never split their keys),
    /// so the tokens are the same. With prompt logprobs, each row scores the next prompt token; rows of a
    /// cached prefix were not computed here and score nil.
    func prefill(maxTokens: Int) throws -> GeneratedToken? {
        guard !prefilled else { throw KvantError(.internal, "prefill of a sequence already prefilled") }
        let start = min(pool.computedLength(of: sequence), prompt.count - 1)
        var end = min(prompt.count, start + max(1, maxTokens))
        if end < prompt.count {
            let aligned = end / owner.blockSize * owner.blockSize
            if aligned > start { end = aligned }
        }
        let chunk = Array(prompt[start..<end])
        let last = end == prompt.count
        var next: Int32 = 0
        if let top = promptLogprobCount {
            if promptLogprobs == nil { promptLogprobs = [nil] + Array(repeating: nil, count: start) }
            try owner.session.forward(tokens: chunk, startPosition: start, sequence: sequence, pool: pool,
                                      logits: .all, splitKeys: false) { i, logits in
                let g = start + i
                if g + 1 < prompt.count {
                    promptLogprobs!.append(entry(logits, chosen: prompt[g + 1], top: top))
                } else {
                    next = sample(logits)
                }
            }
        } else {
            try owner.session.forward(tokens: chunk, startPosition: start, sequence: sequence, pool: pool,
                                      logits: last ? .last : .range(0..<0), splitKeys: false) { _, logits in
                next = sample(logits)
            }
        }
        guard last else { return nil }
        prefilled = true
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
