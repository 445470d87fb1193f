import Foundation
import KVCache
import Kernels
import KvantCore

/// Perplexity exactly as llama.cpp's `llama-perplexity` computes it (tools/perplexity/perplexity.cpp,
/// `perplexity()` without a stride): `n_chunk = tokens.count / ctx` non-overlapping chunks; the first token of
/// each chunk is replaced by BOS; the logits of positions `ctx/2 … ctx-2` score the next token
/// (`ctx - ctx/2 - 1` tokens per chunk); PPL = exp(mean NLL). `tokens` is the text tokenized with BOS.
public enum PerplexityEvaluator {
    public struct Result: Sendable {
        public var perplexity: Double
        public var nll: Double
        public var count: Int
        public var chunks: Int
    }

    /// - Throws: `KvantError(.invalidArgument)` when there are fewer than `2·ctx` tokens (llama-perplexity's
    ///   requirement) or `ctx < 4`; forward-pass errors.
    /// `isCancelled` is checked before each chunk; when true the run throws `KvantError(.cancelled)`.
    public static func run(session: ForwardSession, pool: KVCachePool, tokens: [Int32], ctx: Int, maxChunks: Int? = nil,
                           isCancelled: () -> Bool = { false },
                           progress: (Int, Double) -> Void = { _, _ in }) throws -> Result {
        guard ctx >= 4 else { throw KvantError(.invalidArgument, "ctx \(ctx) must be ≥ 4") }
        guard tokens.count >= 2 * ctx else {
            throw KvantError(.invalidArgument, "perplexity needs at least \(2 * ctx) tokens for ctx \(ctx); the text has \(tokens.count)")
        }
        let bos = session.model.bosTokenID
        let addBOS = session.model.addsBOS
        var nChunk = tokens.count / ctx
        if let m = maxChunks { nChunk = min(nChunk, max(1, m)) }
        let first = ctx / 2
        var nll = 0.0
        var count = 0
        for c in 0..<nChunk {
            if isCancelled() { throw KvantError(.cancelled, "perplexity cancelled after \(c) of \(nChunk) chunks") }
            let start = c * ctx
            var chunk = Array(tokens[start..<(start + ctx)])
            if addBOS, let b = bos { chunk[0] = b }
            let seq = pool.createSequence()
            defer { pool.free(seq) }
            try session.forward(tokens: chunk, startPosition: 0, sequence: seq, pool: pool, logits: .range(first..<(ctx - 1))) { j, logits in
                let target = Int(tokens[start + j + 1])
                nll -= logits.withMemoryRebound(to: Float.self) { Ops.logSoftmax($0.baseAddress!, n: $0.count, index: target) }
                count += 1
            }
            progress(c, exp(nll / Double(count)))
        }
        return Result(perplexity: exp(nll / Double(count)), nll: nll, count: count, chunks: nChunk)
    }
}
