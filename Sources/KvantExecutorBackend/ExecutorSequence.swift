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
///
/// Preemption (vLLM V1's recompute): `preempt` frees the pool sequence (its full blocks stay in the prefix
/// cache until evicted) and keeps `history` and the sampler; `readmit` creates a new pool sequence admitted
/// for the positions to recompute; `recompute` (preempted while decoding) or `prefill` (preempted during its
/// prefill) computes them again, and decoding goes on from `history.last` with the sampler untouched, so the
/// tokens are those of an undisturbed run. With static int8 scales the recompute writes each earlier block
/// under the scale epoch it had (`KVCachePool.freeKeepingScaleEpochs`), also after a `reload-scales` in between,
/// as an undisturbed sequence keeps its blocks' epochs.
final class ExecutorSequence: GenerationSequence {
    let owner: ExecutorModel
    let pool: KVCachePool
    /// The pool sequence holding the blocks; a new one after each `readmit`.
    private(set) var sequence: SequenceID
    let prompt: [Int32]
    /// Prompt + max_tokens, capped at max_model_len: what admission checked against the whole pool.
    let maxLength: Int
    /// False between `preempt` and `readmit` (no pool sequence).
    private var holdsBlocks = true
    /// Preempted while decoding: positions `0 ..< history.count - 1` are computed again before the next decode.
    private var needsRecompute = false
    /// Static int8 pools, between `preempt` and `readmit`: the scale epochs the freed blocks were written under,
    /// kept alive so that the recompute writes them under the same epochs (`KVCachePool.freeKeepingScaleEpochs`).
    private var epochHold: KVScaleEpochHold?
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

    /// Placeholder pool id of a fork not yet forked (no pool sequence has it).
    private static let noSequence = SequenceID(rawValue: -1)

    init(owner: ExecutorModel, pool: KVCachePool, sequence: SequenceID, prompt: [Int32], sampler: Sampler,
         maxLength: Int, logprobs: Int? = nil, promptLogprobs: Int? = nil, skipSpecialTokens: Bool = true) {
        self.owner = owner
        self.pool = pool
        self.sequence = sequence
        self.prompt = prompt
        self.maxLength = maxLength
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
        guard holdsBlocks else { return }
        if needsRecompute {
            // Every position but the last token's is recomputed: `history` caps the hit below that.
            pool.attachCachedPrefix(sequence, prompt: history)
        } else if promptLogprobCount == nil {
            pool.attachCachedPrefix(sequence, prompt: prompt)
        }
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
        try prefill(maxTokens: maxTokens, forks: [])?.first
    }

    /// Parallel sampling: a sibling with its own sampler, holding no pool sequence until `prefill(maxTokens:forks:)`
    /// forks this one into it (or `readmit` admits it on its own when it is never forked).
    func makeFork(sampling: SamplingConfig) throws -> (any GenerationSequence)? {
        let child = ExecutorSequence(owner: owner, pool: pool, sequence: Self.noSequence, prompt: prompt,
                                     sampler: try owner.makeSampler(sampling), maxLength: maxLength,
                                     logprobs: sampling.logprobs, promptLogprobs: promptLogprobCount,
                                     skipSpecialTokens: sampling.skipSpecialTokens)
        child.holdsBlocks = false
        return child
    }

    /// Chunked prefill (above); the last chunk also samples each fork's first token from the prompt's last
    /// logits (its own sampler, history = the prompt, as its own prefill would) and forks the pool sequence into
    /// it (`KVCachePool.fork`: every block shared, the partial last block copied by the first to write into it;
    /// int4_pertoken copies the residual ring). A fork has no admission: its blocks (that copy, then one per
    /// `blockSize` generated tokens) come on demand through `reserveDecode`, like any generated token's.
    /// - Returns: after the last chunk, the first token of this sequence, then of each fork in order; nil before.
    func prefill(maxTokens: Int, forks: [any GenerationSequence]) throws -> [GeneratedToken]? {
        let plan = try prefillChunk(maxTokens: maxTokens, forks: forks)
        try owner.session.forward(tokens: plan.chunk.tokens, startPosition: plan.chunk.startPosition, sequence: sequence,
                                  pool: pool, logits: plan.chunk.logits, splitKeys: false, body: plan.logits)
        return plan.finish()
    }

    /// A chunk of this sequence planned for a forward pass (`prefill`, `recompute`, or a fused step of
    /// `ExecutorModel.runStep`): the rows to run, what to do with each row's logits, and what to do after the
    /// pass (nil result: no token sampled; else this sequence's first token, then its forks').
    struct ChunkPlan {
        let chunk: PrefillChunk
        let logits: (Int, UnsafeBufferPointer<Float>) -> Void
        let finish: () -> [GeneratedToken]?
    }

    /// The next prefill chunk (see `prefill(maxTokens:forks:)`); its `finish` samples the first tokens after the
    /// last one and forks the pool sequence into `forks`.
    func prefillChunk(maxTokens: Int, forks: [any GenerationSequence] = []) throws -> ChunkPlan {
        guard !prefilled else { throw KvantError(.internal, "prefill of a sequence already prefilled") }
        let children = try forks.map { f -> ExecutorSequence in
            guard let c = f as? ExecutorSequence, c.pool === pool, !c.holdsBlocks, !c.prefilled, !c.released, c.prompt == prompt else {
                throw KvantError(.internal, "prefill: a fork that is not an unforked sibling of this sequence")
            }
            return c
        }
        var childNext = [Int32](repeating: 0, count: children.count)
        let start = min(pool.computedLength(of: sequence), prompt.count - 1)
        var end = min(prompt.count, start + max(1, maxTokens))
        if end < prompt.count {
            let aligned = end / owner.blockSize * owner.blockSize
            if aligned > start { end = aligned }
        }
        let chunk = Array(prompt[start..<end])
        let last = end == prompt.count
        var next: Int32 = 0
        let rows: LogitRows
        let logits: (Int, UnsafeBufferPointer<Float>) -> Void
        if let top = promptLogprobCount {
            if promptLogprobs == nil { promptLogprobs = [nil] + Array(repeating: nil, count: start) }
            rows = .all
            logits = { [self] i, l in
                let g = start + i
                if g + 1 < prompt.count {
                    promptLogprobs!.append(entry(l, chosen: prompt[g + 1], top: top))
                } else {
                    next = sample(l)
                    for (k, c) in children.enumerated() { childNext[k] = c.sample(l) }
                }
            }
        } else {
            rows = last ? .last : .range(0..<0)
            logits = { [self] _, l in
                next = sample(l)
                for (k, c) in children.enumerated() { childNext[k] = c.sample(l) }
            }
        }
        return ChunkPlan(chunk: PrefillChunk(tokens: chunk, startPosition: start, sequence: sequence, logits: rows),
                         logits: logits,
                         finish: { [self] in
                             guard last else { return nil }
                             prefilled = true
                             pool.checkpointResidual(sequence)   // int4_pertoken: the prompt's last blocks at int8, for hits
                             var tokens = [accept(next)]
                             for (k, c) in children.enumerated() {
                                 c.sequence = pool.fork(sequence)
                                 c.holdsBlocks = true
                                 c.prefilled = true
                                 c.promptLogprobs = promptLogprobs
                                 tokens.append(c.accept(childNext[k]))
                             }
                             return tokens
                         })
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
        if holdsBlocks { pool.free(sequence) }
        holdsBlocks = false
        epochHold = nil
    }

    // MARK: On-demand blocks and preemption

    var supportsPreemption: Bool { true }

    var kvCacheIdentity: ObjectIdentifier? { ObjectIdentifier(pool) }

    /// Grows the pool sequence to hold the position the next decode writes (`history.count - 1`).
    /// `.never` (past what the pool could ever hold) answers true: the decode then fails with the pool's error.
    func reserveDecode() -> Bool {
        guard !released, holdsBlocks, history.count <= owner.maxModelLen else { return true }
        return pool.reserve(sequence, newLength: history.count) != .later
    }

    func preempt() {
        guard !released, holdsBlocks else { return }
        epochHold = pool.freeKeepingScaleEpochs(sequence)
        holdsBlocks = false
        if prefilled {
            needsRecompute = true
        } else {
            promptLogprobs = nil   // the prefill runs again from the start (or a cached prefix)
        }
    }

    func readmit() -> Bool {
        guard !released, !holdsBlocks else { return true }
        let seq = pool.createSequence(resuming: epochHold)
        let computeLength = prefilled ? history.count - 1 : prompt.count
        let status = pool.admit(seq, promptLength: computeLength, maxLength: max(computeLength, maxLength), onDemand: true,
                                watermark: ExecutorModel.admissionWatermark(pool))
        guard status == .ok else {
            pool.free(seq)
            return false
        }
        sequence = seq
        holdsBlocks = true
        epochHold = nil   // the new sequence's table keeps the epochs now
        return true
    }

    var recomputeRemaining: Int {
        guard needsRecompute, holdsBlocks else { return 0 }
        return max(0, history.count - 1 - pool.computedLength(of: sequence))
    }

    /// Recomputes positions `start ..< end` of `history` (start = the computed length, end at most `maxTokens`
    /// later and at most `history.count - 1`, ending on a block boundary unless it reaches the end). No logits;
    /// positions of generated tokens split their keys as decode rows do (`decodeRowsFrom`), so their K/V and
    /// what later layers compute from them round as in the original decode steps.
    func recompute(maxTokens: Int) throws {
        guard let plan = recomputeChunk(maxTokens: maxTokens) else { return }
        try owner.session.forward(tokens: plan.chunk.tokens, startPosition: plan.chunk.startPosition, sequence: sequence, pool: pool,
                                  logits: .range(0..<0), splitKeys: false, decodeRowsFrom: plan.chunk.decodeRowsFrom) { _, _ in }
        _ = plan.finish()
    }

    /// The next recompute chunk (see `recompute(maxTokens:)`); nil when nothing is left to recompute.
    func recomputeChunk(maxTokens: Int) -> ChunkPlan? {
        guard needsRecompute, holdsBlocks, !released else { return nil }
        let target = history.count - 1
        let start = pool.computedLength(of: sequence)
        guard start < target else { needsRecompute = false; return nil }
        var end = min(target, start + max(1, maxTokens))
        if end < target {
            let aligned = end / owner.blockSize * owner.blockSize
            if aligned > start { end = aligned }
        }
        return ChunkPlan(chunk: PrefillChunk(tokens: Array(history[start..<end]), startPosition: start, sequence: sequence,
                                             logits: .range(0..<0), decodeRowsFrom: prompt.count),
                         logits: { _, _ in },
                         finish: { [self] in
                             if end == target { needsRecompute = false }
                             return nil
                         })
    }
}
