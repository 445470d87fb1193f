import Executor
import KVCache
import KvantCore
import KvantDaemon

extension ExecutorModel {
    /// One scheduler step in one forward pass (vLLM V1's mixed batch): the decode rows of this model's sequences
    /// on the chunks' pool and the chunks' tokens run as one `ForwardSession.step` micro-batch, so the weights
    /// are read once per step instead of once for the decode rows and once per chunk. Every row rounds as it
    /// does in `decodeBatch` / `prefill(maxTokens:)` / `recompute(maxTokens:)` (decode rows split their keys,
    /// chunk rows do not; no kernel mixes rows), so the tokens are those of the separate calls, bit for bit.
    ///
    /// What does not fit in the pass runs as before, after it: decode rows of another pool (after `set-kv-dtype`)
    /// or at `max_model_len` (`decodeBatch`), chunks of another pool, chunks whose tokens would take the
    /// micro-batch past `maxBatch` and chunks longer than the pool's `prefillChunk` (on their own). When the pass is refused before computing anything (a KV
    /// block not free now, a bad row), every part runs on its own instead, so each error stays with its sequence.
    func runStep(decode sequences: [any GenerationSequence], chunks: [StepChunk]) -> StepOutcome {
        // The pass's pool: the first chunk's (chunks are sized by the scheduler for the current pool).
        guard let pool = chunks.lazy.compactMap({ ($0.sequence as? ExecutorSequence).flatMap { $0.owner === self ? $0.pool : nil } }).first
        else { return separately(decode: sequences, chunks: chunks) }
        let maxBatch = session.maxBatch
        var fusedRows = sequences.indices.filter { i in
            guard let e = sequences[i] as? ExecutorSequence else { return false }
            return e.owner === self && e.pool === pool && e.canDecode
        }
        if fusedRows.count > maxBatch { fusedRows = [] }   // decodeBatch splits them into passes of maxBatch
        let rows = fusedRows.map { sequences[$0] as! ExecutorSequence }
        var chunkResults = [Result<[GeneratedToken]?, Error>?](repeating: nil, count: chunks.count)
        var plans: [(index: Int, plan: ExecutorSequence.ChunkPlan)] = []
        var tokens = rows.count
        for (j, chunk) in chunks.enumerated() {
            guard let e = chunk.sequence as? ExecutorSequence, e.owner === self, e.pool === pool else { continue }
            let plan: ExecutorSequence.ChunkPlan?
            switch chunk.kind {
            case .prefill:
                do { plan = try e.prefillChunk(maxTokens: chunk.maxTokens, forks: chunk.forks) } catch { chunkResults[j] = .failure(error); continue }
            case .recompute:
                plan = e.recomputeChunk(maxTokens: chunk.maxTokens)
            }
            guard let plan else { chunkResults[j] = .success(nil); continue }
            guard tokens + plan.chunk.tokens.count <= maxBatch else { continue }   // on its own after the pass
            // Larger than the pool's prefill chunk (what its int4 residual rings hold; `step` refuses it): on its own,
            // where `forward` splits it into micro-batches of that size. The scheduler's chunks never are.
            guard plan.chunk.tokens.count <= pool.prefillChunk else { continue }
            tokens += plan.chunk.tokens.count
            plans.append((j, plan))
        }
        var decodeResults = [Result<GeneratedToken, Error>?](repeating: nil, count: sequences.count)
        var passes = 0, fusedPasses = 0
        if !plans.isEmpty {
            var next = [Int32](repeating: 0, count: rows.count)
            do {
                try session.step(decode: rows.map(\.decodeItem), chunks: plans.map(\.plan.chunk), pool: pool) { row, logits in
                    switch row {
                    case .decode(let r): next[r] = rows[r].sample(logits)
                    case .chunk(let c, let i): plans[c].plan.logits(i, logits)
                    }
                }
                if !rows.isEmpty { passes += 1; fusedPasses += 1 }
                for (r, i) in fusedRows.enumerated() { decodeResults[i] = .success(rows[r].accept(next[r])) }
                for (j, plan) in plans { chunkResults[j] = .success(plan.finish()) }
            } catch {
                // Refused before anything ran: every part on its own, so each error stays with its sequence.
                logger.debug("fused step refused; running its decode rows and chunks separately", metadata: ["error": "\(error)"])
                return separately(decode: sequences, chunks: chunks)
            }
        }
        // The rest as before: decode rows in `decodeBatch`, chunks on their own (in the order given).
        let left = sequences.indices.filter { decodeResults[$0] == nil }
        if !left.isEmpty {
            let outcome = decodeBatch(left.map { sequences[$0] })
            passes += outcome.passes
            for (k, i) in left.enumerated() { decodeResults[i] = outcome.results[k] }
        }
        for j in chunks.indices where chunkResults[j] == nil { chunkResults[j] = chunks[j].separately }
        return StepOutcome(decode: DecodeBatchOutcome(results: decodeResults.map { $0! }, passes: passes),
                           chunks: chunkResults.map { $0! }, fusedPasses: fusedPasses)
    }

    /// The parts one after the other: a decode step of `sequences`, then each chunk on its own.
    private func separately(decode sequences: [any GenerationSequence], chunks: [StepChunk]) -> StepOutcome {
        let decoded = sequences.isEmpty ? DecodeBatchOutcome(results: [], passes: 0) : decodeBatch(sequences)
        return StepOutcome(decode: decoded, chunks: chunks.map(\.separately), fusedPasses: 0)
    }
}
