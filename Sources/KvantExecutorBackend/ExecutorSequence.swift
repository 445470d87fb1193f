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

    init(owner: ExecutorModel, pool: KVCachePool, sequence: SequenceID, prompt: [Int32], sampler: Sampler) {
        self.owner = owner
        self.pool = pool
        self.sequence = sequence
        self.prompt = prompt
        self.sampler = sampler
        history = prompt
        decoder = owner.tokenizer.makeStreamingDecoder()
    }

    private func step(tokens: [Int32], start: Int) throws -> GeneratedToken {
        var next: Int32 = 0
        try owner.session.forward(tokens: tokens, startPosition: start, sequence: sequence, pool: pool, logits: .last) { _, logits in
            next = sampler.sample(logits: logits, history: history)
        }
        return accept(next)
    }

    /// True while one more decode step fits (below max_model_len, not released).
    var canDecode: Bool { !released && history.count < owner.maxModelLen }

    /// The decode row of this sequence: its last token at the next position.
    var decodeItem: DecodeItem { DecodeItem(token: history[history.count - 1], position: history.count - 1, sequence: sequence) }

    /// Appends a sampled token and turns it into text (streaming UTF-8) or the end of the sequence.
    func accept(_ next: Int32) -> GeneratedToken {
        history.append(next)
        if owner.tokenizer.isEndOfGeneration(next) {
            return GeneratedToken(token: Int(next), text: decoder.finish(), isEndOfSequence: true)
        }
        return GeneratedToken(token: Int(next), text: decoder.append(next), isEndOfSequence: false)
    }

    func prefill() throws -> GeneratedToken {
        try step(tokens: prompt, start: 0)
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
