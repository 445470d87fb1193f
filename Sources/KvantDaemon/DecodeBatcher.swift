import Foundation
import KvantCore

/// Continuous batching of decode steps (the scheduling idea of Orca, Yu et al., OSDI 2022, and
/// vLLM): a sequence that wants its next token registers here instead of queueing its own lane
/// item. The first registration queues one lane item; when the lane runs it, every sequence
/// registered by then decodes together through `LoadedModel.decodeBatch`, sharing each pass over
/// the weights. Sequences that finish or start (prefill items) interleave between batches, so a
/// new request joins the next batch after its prefill.
///
/// Gathering: sequences in their decode phase are counted (`enter` / `leave`). A batch item that
/// finds fewer of them registered than are active waits up to `gatherWindow` seconds for the rest
/// (they are only passing their previous token to their client), so steps stay full instead of
/// alternating between one sequence and the others.
final class DecodeBatcher: @unchecked Sendable {
    /// Longest wait of a batch for active sequences that have not registered yet, seconds.
    let gatherWindow: TimeInterval

    init(gatherWindow: TimeInterval = 0.002) { self.gatherWindow = gatherWindow }

    private struct Pending {
        let model: any LoadedModel
        let sequence: any GenerationSequence
        let continuation: CheckedContinuation<GeneratedToken, Error>
    }

    private let lock = NSCondition()
    private var pending: [Pending] = []
    private var active = 0
    private var scheduled = false
    private var batchCount = 0
    private var rowCount = 0

    /// Forward passes run for decode steps and rows decoded so far (mean batch size = rows / passes).
    var figures: (batches: Int, rows: Int) {
        lock.lock(); defer { lock.unlock() }
        return (batchCount, rowCount)
    }

    /// A sequence starts decoding (after its prefill): later batches wait briefly for it.
    func enter() {
        lock.lock(); active += 1; lock.unlock()
    }

    /// A sequence stops decoding (finished, cancelled or failed).
    func leave() {
        lock.lock(); active -= 1; lock.broadcast(); lock.unlock()
    }

    /// The next token of `sequence`, decoded in the next batch on `lane`.
    func decode(_ sequence: any GenerationSequence, model: any LoadedModel, on lane: ComputeLane) async throws -> GeneratedToken {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<GeneratedToken, Error>) in
            lock.lock()
            pending.append(Pending(model: model, sequence: sequence, continuation: continuation))
            lock.broadcast()
            let schedule = !scheduled
            scheduled = true
            lock.unlock()
            if schedule { lane.submit { self.drain() } }
        }
    }

    /// On the lane: decodes everything registered so far, one `decodeBatch` per model (a model
    /// swap can leave sequences of the old model running).
    private func drain() {
        lock.lock()
        let deadline = Date(timeIntervalSinceNow: gatherWindow)
        while pending.count < active, lock.wait(until: deadline) {}
        let batch = pending
        pending = []
        scheduled = false
        lock.unlock()
        for idx in orderedGroups(count: batch.count, key: { ObjectIdentifier(batch[$0].model) }) {
            let outcome = batch[idx[0]].model.decodeBatch(idx.map { batch[$0].sequence })
            precondition(outcome.results.count == idx.count, "decodeBatch returned \(outcome.results.count) results for \(idx.count) sequences")
            lock.lock(); batchCount += outcome.passes; rowCount += idx.count; lock.unlock()
            for (j, i) in idx.enumerated() { batch[i].continuation.resume(with: outcome.results[j]) }
        }
    }
}
