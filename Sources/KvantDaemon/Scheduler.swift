import ControlProtocol
import Foundation
import KvantCore
import Logging

/// The scheduler (vLLM V1's design, on one compute lane): which requests run, and what each engine step
/// computes.
///
/// - **Admission.** Up to `max_num_seqs` requests hold a sequence slot; more wait in arrival order
///   (`WaiterQueue`). A request with a slot is admitted once the KV blocks of its prompt can be promised
///   (`LoadedModel.makeSequence`; `KVCacheAdmissionLater` = wait, in arrival order, for a release;
///   nothing else live and still no room = `resource_exhausted`). Its generated tokens get blocks on demand.
/// - **Preemption** (vLLM V1's recompute preemption). Before a step decodes, every decode row reserves the
///   block its next position needs (`GenerationSequence.reserveDecode`). When the pool has none free, the
///   most recently admitted sequence holding blocks is preempted (`preempt`: its blocks are freed, full ones
///   stay in the prefix cache; its tokens and sampler state are kept) and asked again. A sequence preempted
///   while decoding is queued for recompute ahead of everything else waiting (earliest admitted first):
///   once its blocks can be promised again (`readmit`) its prompt and generated tokens are recomputed in
///   chunks within the step's budget (`recompute`; no sampling), then it decodes on where it stopped. One
///   preempted during its prefill restarts its prefill in its place in the waiting queue. No new request is
///   admitted while a preempted one waits. The client only sees the delay; `preemptions` counts them.
/// - **Waiting queue.** Admitted requests wait for their prefill in arrival order; their prompts are
///   prefilled **in chunks** (chunked prefill): each step gives the prefills at most the step's token
///   budget, first come first served, so a long prompt takes several steps. A request cancelled while it
///   waits (client disconnect, Ctrl-C) leaves between two chunks.
/// - **Running queue.** Sequences past their prefill (they join it in the step that sampled their first
///   token, so the next step decodes them). **Every step decodes every running sequence once**
///   (continuous batching, Orca / vLLM: one `LoadedModel.decodeBatch` per model, one pass over the weights
///   for all rows), whether or not its client has taken its previous token yet (at most `maxLookahead`
///   tokens ahead), until its token budget, end-of-sequence, or the engine finishes it (stop string,
///   cancellation).
/// - **Token budget per step** (`max_num_batched_tokens`, vLLM's name): decode rows + prefill tokens of one
///   step. Decode rows come first; the rest goes to prefill chunks. A step therefore lasts about one decode
///   pass plus one chunk, and running streams keep producing a token per step while a long prompt is
///   admitted, instead of stalling for the whole prompt.
///
/// Threading: the admission methods run on the engine's actor (their `isolation` parameter; the
/// engine owns the scheduler). Steps run on the compute lane, one lane item each; the queues they share
/// with request tasks are guarded by `lock` and the `WaiterQueue`s' own locks (order: `lock` first).
final class Scheduler: @unchecked Sendable {
    /// Tokens a running sequence may be decoded ahead of its consumer (its request's task): bounds the
    /// work wasted on a sequence whose client is slow when a stop string or a disconnect then ends it.
    static let maxLookahead = 32

    /// One admitted request: its sequence and model, and the tokens decoded for it that its task has not
    /// taken yet. Mutable fields are guarded by the scheduler's `lock`.
    final class Job: @unchecked Sendable {
        let sequence: any GenerationSequence
        let model: any LoadedModel
        /// Decode steps after the prefill's token (the token budget minus one).
        let decodes: Int
        /// Decode steps still to run.
        fileprivate var decodesLeft = 0
        /// End-of-sequence or an error was produced, or the engine finished it: no more decode steps.
        fileprivate var ended = false
        fileprivate var outbox: [Result<GeneratedToken, Error>] = []
        fileprivate var reader: CheckedContinuation<Result<GeneratedToken, Error>, Never>?
        /// `sequence.attachCachedPrefix()` ran (once, before the first chunk is sized, and again after a
        /// preemption; on the lane).
        fileprivate var prefixLookedUp = false
        /// Admission order (set when its prefill is queued); preemption picks the largest.
        fileprivate var order = 0
        /// Preempted and not yet readmitted: holds no KV blocks.
        fileprivate var preempted = false
        /// Preempted while decoding: in the recompute queue until recomputed.
        fileprivate var recomputing = false
        /// Its generation had ended when its blocks were taken for another sequence: it holds none any more.
        fileprivate var blocksFreed = false
        /// Parallel sampling: the other choices of its request, forked from this job's sequence by its last
        /// prefill chunk (`attachForks`); emptied then, or when this job ends first (they are detached).
        fileprivate var forkChildren: [Job] = []
        /// A choice waiting to be forked from this parent's prefill; nil once forked or detached.
        fileprivate var forkParent: Job?
        /// The first token its parent's prefill sampled for it (set when forked).
        fileprivate var forkOutcome: PrefillOutcome?
        /// A fork made for parallel sampling and not forked yet: it holds no blocks and no admission.
        fileprivate var isUnforkedFork = false
        /// Its task waiting for `forkOutcome` (nil = detached: prefill on its own).
        fileprivate var forkWaiter: CheckedContinuation<PrefillOutcome?, Never>?

        /// - Parameter budget: tokens the request may generate (>= 1), the prefill's first one included.
        init(sequence: any GenerationSequence, model: any LoadedModel, budget: Int) {
            self.sequence = sequence
            self.model = model
            self.decodes = max(0, budget - 1)
        }
    }

    /// How a prefill ended.
    enum PrefillOutcome: @unchecked Sendable {
        /// The prompt is in the cache; the first generated token.
        case first(GeneratedToken)
        case failed(Error)
        /// The request was cancelled while it waited for (the rest of) its prefill.
        case cancelled
    }

    /// Sequences generated at once (`max_num_seqs`).
    let maxNumSeqs: Int
    /// Tokens computed per step: decode rows + prefill chunk tokens (`max_num_batched_tokens`).
    let maxNumBatchedTokens: Int
    private let lane: ComputeLane
    private let logger: Logger

    // MARK: Admission state (engine actor only)

    /// Sequence slots taken (`max_num_seqs`), including requests that hold a slot and wait for KV blocks.
    private var slotsTaken = 0
    /// Requests waiting for sequence slots (how many each: 1, or `n` for the choices of a parallel-sampling
    /// request), in arrival order; resumed with true when they got them, false when cancelled while waiting.
    private let slotWaiters = WaiterQueue<Int, Bool>()
    /// Requests holding a slot but waiting for KV blocks (admission control), in arrival order;
    /// resumed with false when a release may have freed enough, true when cancelled.
    private let blockWaiters = WaiterQueue<Void, Bool>()
    /// Bumped (under `lock`) when the last preempted sequence was readmitted: a request refused meanwhile
    /// because one waited retries at once.
    private var readmissions = 0
    /// True while a request tries to reserve its blocks (newcomers queue behind it).
    private var kvRetrying = false
    /// Sequences created and not yet released (all models and pools).
    private var liveSequences = 0
    /// Sequences released so far (a waiter retries at once when one was released while it tried).
    private var releaseCount = 0

    // MARK: Step state (any thread, under `lock`)

    /// The waiting queue: admitted requests whose prompt is not fully prefilled, in arrival order.
    private let waiting = WaiterQueue<Job, PrefillOutcome>()
    private let lock = NSLock()
    /// The running queue: sequences in their decode phase, in the order they got there.
    private var running: [Job] = []
    /// Jobs whose prefill was queued and that have not finished, in admission order (preemption candidates).
    private var admitted: [Job] = []
    /// Jobs preempted while decoding, waiting for their recompute, earliest admitted first.
    private var recomputeQueue: [Job] = []
    private var nextOrder = 0
    /// A step item is queued on the lane and has not started yet.
    private var stepQueued = false
    private var counts = Figures()

    /// What the steps did so far.
    struct Figures: Equatable {
        /// Engine steps run.
        var steps = 0
        /// Forward passes of decode steps and the rows they decoded (mean batch = rows / passes).
        var decodePasses = 0
        var decodeRows = 0
        /// Prefill chunks run and the prompt tokens they computed.
        var prefillChunks = 0
        var prefillTokens = 0
        /// Sequences preempted (their blocks freed, recomputed later; vLLM's `num_preemptions`).
        var preemptions = 0
        /// Positions recomputed after preemptions.
        var recomputedTokens = 0
        /// Forward passes that ran decode rows and prefill or recompute chunk tokens together (`fusedStep`).
        var fusedPasses = 0
    }

    init(maxNumSeqs: Int, maxNumBatchedTokens: Int, lane: ComputeLane, logger: Logger) {
        self.maxNumSeqs = max(1, maxNumSeqs)
        self.maxNumBatchedTokens = max(1, maxNumBatchedTokens)
        self.lane = lane
        self.logger = logger
    }

    var figures: Figures { lock.withLock { counts } }

    // MARK: Admission (on the engine's actor)

    /// Requests holding a slot, prefilling or decoding (not those waiting for KV blocks).
    var requestsRunning: Int { slotsTaken - blockWaiters.count }

    /// Requests waiting for a slot or for KV blocks.
    var requestsWaiting: Int { slotWaiters.count + blockWaiters.count }

    /// Takes a sequence slot, waiting in arrival order while `max_num_seqs` run. Returns false (no slot
    /// taken) when the calling task is cancelled before it got one.
    func acquireSlot(isolation: isolated (any Actor)? = #isolation) async -> Bool {
        await acquireSlots(1)
    }

    /// Takes `count` (<= `maxNumSeqs`) slots at once (the `n` choices of one request, so two such requests
    /// never hold part of their slots each while waiting for the rest), waiting in arrival order.
    func acquireSlots(_ count: Int, isolation: isolated (any Actor)? = #isolation) async -> Bool {
        precondition(count >= 1 && count <= maxNumSeqs, "acquireSlots: \(count) slots of \(maxNumSeqs)")
        if slotsTaken + count <= maxNumSeqs, slotWaiters.isEmpty {
            slotsTaken += count
            return true
        }
        return await slotWaiters.wait(count, cancelled: false)
    }

    func releaseSlot(count: Int = 1, isolation: isolated (any Actor)? = #isolation) {
        guard count > 0 else { return }
        slotsTaken -= count
        // The slots pass to the longest waiters while theirs fit (counted as taken before they resume).
        while let first = slotWaiters.waiting.first, slotsTaken + first.item <= maxNumSeqs {
            slotsTaken += first.item
            if !slotWaiters.resume(key: first.key, with: true) { slotsTaken -= first.item }
        }
    }

    /// Creates the sequence, waiting while the KV cache cannot hold it yet (`KVCacheAdmissionLater`).
    /// Waiting requests retry in arrival order, each time a live sequence releases its blocks. When
    /// nothing else is live and it still does not fit, it never will: `resource_exhausted`.
    /// - Returns: nil when the request was cancelled while it waited.
    func admit(_ model: any LoadedModel, prompt: [Int], budget: Int, sampling: SamplingConfig,
               isolation: isolated (any Actor)? = #isolation) async throws -> (any GenerationSequence)? {
        // Behind requests already waiting for KV blocks: first come, first served.
        if !blockWaiters.isEmpty || kvRetrying {
            if await waitForBlocks(atFront: false) { return nil }
        }
        let lane = self.lane
        while true {
            if Task.isCancelled { wakeNextKVWaiter(); return nil }
            kvRetrying = true
            let releasesBefore = releaseCount
            let readmissionsBefore = lock.withLock { readmissions }
            do {
                // On the lane, between two steps: while a preempted sequence waits for its blocks, nobody new
                // takes them (vLLM schedules no new request while its waiting queue starts with a preempted one).
                let sequence = try await lane.run { [self] in
                    if hasPreempted {
                        throw KVCacheAdmissionLater(tokensNeeded: prompt.count,
                                                    message: "generate: a preempted sequence waits for KV blocks first")
                    }
                    return try model.makeSequence(prompt: prompt, maxTokens: budget, sampling: sampling)
                }
                kvRetrying = false
                liveSequences += 1
                wakeNextKVWaiter()   // the next one in line may fit too
                return sequence
            } catch let later as KVCacheAdmissionLater {
                kvRetrying = false
                if liveSequences == 0 {
                    wakeNextKVWaiter()
                    throw KvantError(.resourceExhausted, later.message)
                }
                logger.debug("generate waits for KV blocks", metadata: ["tokens": "\(later.tokensNeeded)"])
                // A release (or the last readmission) while makeSequence ran may have freed enough already:
                // retry at once then.
                if releaseCount == releasesBefore, lock.withLock({ readmissions }) == readmissionsBefore,
                   await waitForBlocks(atFront: true) { return nil }
            } catch {
                kvRetrying = false
                wakeNextKVWaiter()
                throw error
            }
        }
    }

    /// Waits until a sequence releases its blocks; true when cancelled meanwhile.
    private func waitForBlocks(atFront: Bool) async -> Bool {
        let cancelled = await blockWaiters.wait(atFront: atFront, cancelled: true)
        return cancelled || Task.isCancelled
    }

    private func wakeNextKVWaiter() {
        blockWaiters.resumeFirst(false)
    }

    /// Parallel sampling: `count` forks (`GenerationSequence.makeFork`) of an admitted sequence were made; each is
    /// released like a sequence made by `admit` (`sequenceReleased`).
    func forksCreated(_ count: Int, isolation: isolated (any Actor)? = #isolation) {
        liveSequences += count
    }

    /// A sequence made by `admit` (or a fork) was released (its blocks are free again).
    func sequenceReleased(isolation: isolated (any Actor)? = #isolation) {
        liveSequences -= 1
        releaseCount += 1
        wakeNextKVWaiter()
    }

    // MARK: Prefill and decode (any task)

    /// Prefills `job`'s prompt in chunks, one per step it gets budget in, while it waits in the waiting
    /// queue; returns when the last chunk sampled the first token, or at once when the calling task is
    /// cancelled (then at most the chunk running now completes before the engine releases the sequence).
    ///
    /// A fork (`attachForks`) waits instead for its parent's last prefill chunk, which samples its first token
    /// and shares its blocks; when the parent ends before that (cancelled, failed), the fork is detached and
    /// prefilled on its own: it holds no blocks yet, so it is readmitted first like a sequence preempted during
    /// its prefill, then takes what the prefix cache still holds of the prompt.
    func prefill(_ job: Job) async -> PrefillOutcome {
        if lock.withLock({ job.forkParent != nil || job.forkOutcome != nil }) {
            if let outcome = await forkedPrefill(job) { return outcome }
        }
        lock.withLock {
            nextOrder += 1
            job.order = nextOrder
            // A detached fork holds no blocks: readmitted (its prompt's blocks promised) before its prefill.
            if job.isUnforkedFork { job.preempted = true; job.isUnforkedFork = false }
            admitted.append(job)
        }
        return await waiting.wait(job, cancelled: .cancelled, queued: { [self] in scheduleStep() })
    }

    /// Parallel sampling: `children` (jobs of forks made by `parent.sequence.makeFork`, the other choices of its
    /// request) get their first token and their blocks from `parent`'s last prefill chunk. Call before `parent`'s
    /// `prefill`. Forked children take their place in the admission order (preemption candidates) right after it.
    func attachForks(_ children: [Job], to parent: Job) {
        lock.withLock {
            for child in children {
                child.forkParent = parent
                child.isUnforkedFork = true
            }
            parent.forkChildren = children
        }
    }

    /// Waits for the parent's prefill to fork `job`: its first token, or `.cancelled` when the calling task is
    /// cancelled first; nil when it was detached (its parent ended before its last chunk).
    private func forkedPrefill(_ job: Job) async -> PrefillOutcome? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<PrefillOutcome?, Never>) in
                lock.lock()
                if let outcome = job.forkOutcome {
                    lock.unlock()
                    continuation.resume(returning: outcome)
                } else if job.forkParent == nil {
                    lock.unlock()
                    continuation.resume(returning: nil)
                } else if Task.isCancelled {
                    job.ended = true
                    lock.unlock()
                    continuation.resume(returning: .cancelled)
                } else {
                    job.forkWaiter = continuation
                    lock.unlock()
                }
            }
        } onCancel: {
            let waiter = lock.withLock { () -> CheckedContinuation<PrefillOutcome?, Never>? in
                guard let waiter = job.forkWaiter else { return nil }
                job.forkWaiter = nil
                job.ended = true   // not forked any more
                return waiter
            }
            waiter?.resume(returning: .cancelled)
        }
    }

    /// The next token decoded for `job` (already decoded by a step, or the next step's).
    /// - Throws: the decode step's error for this sequence.
    func nextToken(_ job: Job) async throws -> GeneratedToken {
        let result: Result<GeneratedToken, Error> = await withCheckedContinuation { continuation in
            lock.lock()
            if !job.outbox.isEmpty {
                let first = job.outbox.removeFirst()
                lock.unlock()
                continuation.resume(returning: first)
                return
            }
            if job.ended || job.decodesLeft <= 0 {
                lock.unlock()
                continuation.resume(returning: .failure(KvantError(.internal, "decode asked of a sequence whose decode steps ended")))
                return
            }
            job.reader = continuation
            lock.unlock()
        }
        scheduleStep()   // taking a token may have made room within maxLookahead
        return try result.get()
    }

    /// Takes `job` out of the running queue (its generation ended: end-of-sequence, a stop string, its
    /// budget, cancellation or an error). Call before releasing the sequence.
    ///
    /// A parent that ends before its last prefill chunk detaches its forks: each is then prefilled on its own.
    func finish(_ job: Job) {
        let detached = lock.withLock { () -> [CheckedContinuation<PrefillOutcome?, Never>] in
            job.ended = true
            running.removeAll { $0 === job }
            admitted.removeAll { $0 === job }
            recomputeQueue.removeAll { $0 === job }
            job.forkParent = nil
            var waiters: [CheckedContinuation<PrefillOutcome?, Never>] = []
            for child in job.forkChildren {
                child.forkParent = nil
                if let waiter = child.forkWaiter { child.forkWaiter = nil; waiters.append(waiter) }
            }
            job.forkChildren = []
            return waiters
        }
        for waiter in detached { waiter.resume(returning: nil) }
    }

    /// A preempted sequence waits to be readmitted (new admissions wait behind it). Takes `lock`.
    private var hasPreempted: Bool { lock.withLock { admitted.contains { $0.preempted } } }

    // MARK: Steps (on the lane)

    /// Decode rows of the next step: running sequences with decode steps left, within their lookahead.
    private func decodableLocked() -> [Job] {
        running.filter { !$0.ended && $0.decodesLeft > 0 && $0.outbox.count < Self.maxLookahead }
    }

    /// Queues a step on the lane unless one is queued already or there is nothing to do.
    private func scheduleStep() {
        lock.lock()
        let submit = !stepQueued && (!waiting.isEmpty || !recomputeQueue.isEmpty || !decodableLocked().isEmpty)
        if submit { stepQueued = true }
        lock.unlock()
        if submit { lane.submit { [self] in step() } }
    }

    /// One engine step: one decode pass over every running sequence (per model), then prefill chunks of
    /// waiting sequences within the rest of the token budget, first come first served.
    private func step() {
        lock.lock()
        stepQueued = false
        var rows = decodableLocked()
        lock.unlock()
        // A step that preempted readmits nobody (vLLM: no waiting request is scheduled in a step that preempted):
        // the blocks just freed go to the decode rows that needed them.
        let preemptedNow = reserveDecodeBlocks(&rows)
        var budget = maxNumBatchedTokens - rows.count
        var tally = ChunkTally()
        // The decode rows and the chunks that lead the step run in one forward pass (`fusedStep`); the loops
        // below run the chunks it left, after it, each in a pass of its own.
        let fused = fusedStep(rows, budget: &budget, preemptedNow: preemptedNow, tally: &tally)
        // Sequences preempted while decoding come first (earliest admitted first); one that cannot be
        // readmitted yet stops the others behind it.
        for job in lock.withLock({ recomputeQueue }) {
            guard budget > 0 else { break }
            if fused.contains(ObjectIdentifier(job)) { continue }
            if lock.withLock({ job.ended }) { continue }   // finished meanwhile (cancelled): released soon
            guard makeReady(job, preemptedNow: preemptedNow) else { break }
            let before = job.sequence.recomputeRemaining
            let tokens = min(budget, max(1, before))
            budget -= tokens
            let result = Result { try job.sequence.recompute(maxTokens: tokens) }
            recomputeDone(job, result, before: before, tally: &tally)
        }
        // Chunks are sized and run one after the other, so a sequence's prefix-cache lookup (once, before its
        // first chunk is sized: a cached prefix takes none of the budget) sees the blocks that earlier chunks of
        // this step committed (the `n` choices of one request share the first one's prompt blocks).
        for (key, job) in waiting.waiting {
            guard budget > 0 else { break }
            if fused.contains(ObjectIdentifier(job)) { continue }
            guard makeReady(job, preemptedNow: preemptedNow) else { break }
            let tokens = min(budget, max(1, job.sequence.prefillRemaining))
            budget -= tokens
            let before = job.sequence.prefillRemaining
            // Parallel sampling: the choices still waiting for this prefill are forked by its last chunk.
            let forks = lock.withLock { job.forkChildren.filter { !$0.ended } }
            let result = Result { try job.sequence.prefill(maxTokens: tokens, forks: forks.map(\.sequence)) }
            prefillDone(key: key, job, result, forks: forks, before: before, tally: &tally)
        }
        lock.withLock {
            counts.steps += 1
            counts.prefillChunks += tally.chunks
            counts.prefillTokens += tally.prefillTokens
            counts.recomputedTokens += tally.recomputedTokens
        }
        scheduleStep()
    }

    /// Chunks run in a step and the positions they computed.
    private struct ChunkTally {
        var chunks = 0, prefillTokens = 0, recomputedTokens = 0
    }

    /// A recompute chunk of `job` ran (`before`: its `recomputeRemaining` before): failed, it ends the job; done,
    /// the job joins the running queue again.
    private func recomputeDone(_ job: Job, _ result: Result<Void, Error>, before: Int, tally: inout ChunkTally) {
        tally.chunks += 1
        tally.recomputedTokens += max(0, before - job.sequence.recomputeRemaining)
        var wake: (CheckedContinuation<Result<GeneratedToken, Error>, Never>, Result<GeneratedToken, Error>)?
        lock.withLock {
            switch result {
            case .failure(let error):
                job.ended = true
                recomputeQueue.removeAll { $0 === job }
                if let reader = job.reader { job.reader = nil; wake = (reader, .failure(error)) } else { job.outbox.append(.failure(error)) }
            case .success where job.sequence.recomputeRemaining == 0:
                job.recomputing = false
                recomputeQueue.removeAll { $0 === job }
                if !job.ended { running.append(job) }
            case .success: break
            }
        }
        if let (reader, value) = wake { reader.resume(returning: value) }
    }

    /// A prefill chunk of `job` (waiting under `key`) ran (`before`: its `prefillRemaining` before): the last
    /// one's first token goes to its task and the job to the running queue, and each of `forks` (the choices
    /// the chunk forked the sequence into) gets its own first token and joins the admitted and running queues;
    /// an error goes to its task.
    private func prefillDone(key: Int, _ job: Job, _ result: Result<[GeneratedToken]?, Error>, forks: [Job], before: Int,
                             tally: inout ChunkTally) {
        tally.chunks += 1
        tally.prefillTokens += max(0, before - job.sequence.prefillRemaining)
        switch result {
        case .success(nil): break   // stays first in line for the next step
        case .success(let firsts?):
            let first = firsts[0]
            // Into the running queue at once (decoded from the next step on, whatever its task does meanwhile),
            // unless it ended already or its task was cancelled in the meantime. Its forks follow it.
            var forkWake: [(CheckedContinuation<PrefillOutcome?, Never>, PrefillOutcome)] = []
            lock.withLock {
                if !first.isEndOfSequence, job.decodes > 0, !job.ended {
                    job.decodesLeft = job.decodes
                    running.append(job)
                }
                for (i, child) in forks.enumerated() {
                    let token = firsts[i + 1]
                    child.forkParent = nil
                    child.isUnforkedFork = false
                    child.forkOutcome = .first(token)
                    // Holds blocks now: a preemption candidate (admitted after its parent), unless it ended meanwhile
                    // (its task releases it).
                    if !child.ended {
                        nextOrder += 1
                        child.order = nextOrder
                        admitted.append(child)
                        if !token.isEndOfSequence, child.decodes > 0 {
                            child.decodesLeft = child.decodes
                            running.append(child)
                        }
                    }
                    if let waiter = child.forkWaiter { child.forkWaiter = nil; forkWake.append((waiter, .first(token))) }
                }
                job.forkChildren.removeAll { c in forks.contains { $0 === c } }
            }
            for (waiter, outcome) in forkWake { waiter.resume(returning: outcome) }
            if !waiting.resume(key: key, with: .first(first)) { finish(job) }
        case .failure(let error): waiting.resume(key: key, with: .failed(error))
        }
    }

    /// The step's decode rows and the chunks that lead it, in one forward pass (vLLM V1's mixed batch,
    /// `LoadedModel.runStep`): the chunks the loops of `step` would run first, in their order and with the sizes
    /// they would give them, as long as each job's prefix-cache lookup ran before this step (the step's first
    /// chunk excepted: a fresh job's lookup must see the blocks the step's earlier chunks commit, so from such a
    /// job on the loops run the chunks, after this pass) and it belongs to the first chunk's model. Rows of
    /// other models decode in passes of their own (`decodeBatch`). Takes the chunks' tokens out of `budget`.
    /// The first chunk's lookup (and a preempted job's readmission) runs before the decode rows commit their
    /// positions: it does not see a block a decode row of the same step fills.
    /// - Returns: the jobs whose chunk ran here (the loops skip them).
    private func fusedStep(_ rows: [Job], budget: inout Int, preemptedNow: Bool, tally: inout ChunkTally) -> Set<ObjectIdentifier> {
        var planned: [(job: Job, key: Int?, chunk: StepChunk, forks: [Job], before: Int)] = []
        func fits(_ job: Job) -> Bool {
            planned.isEmpty || (job.prefixLookedUp && job.model === planned[0].job.model)
        }
        var fresh = false
        for job in lock.withLock({ recomputeQueue }) {
            guard budget > 0 else { break }
            if lock.withLock({ job.ended }) { continue }
            guard fits(job) else { fresh = true; break }
            guard makeReady(job, preemptedNow: preemptedNow) else { break }
            let before = job.sequence.recomputeRemaining
            let tokens = min(budget, max(1, before))
            budget -= tokens
            planned.append((job, nil, StepChunk(sequence: job.sequence, kind: .recompute, maxTokens: tokens), [], before))
        }
        for (key, job) in fresh ? [] : waiting.waiting {
            guard budget > 0 else { break }
            guard fits(job) else { break }
            guard makeReady(job, preemptedNow: preemptedNow) else { break }
            let tokens = min(budget, max(1, job.sequence.prefillRemaining))
            budget -= tokens
            // Parallel sampling: the choices still waiting for this prefill are forked by its last chunk.
            let forks = lock.withLock { job.forkChildren.filter { !$0.ended } }
            planned.append((job, key, StepChunk(sequence: job.sequence, kind: .prefill, maxTokens: tokens, forks: forks.map(\.sequence)),
                            forks, job.sequence.prefillRemaining))
        }
        let chunkModel = planned.first.map { ObjectIdentifier($0.job.model) }
        var groups = orderedGroups(count: rows.count, key: { ObjectIdentifier(rows[$0].model) })
        if let chunkModel, !groups.contains(where: { ObjectIdentifier(rows[$0[0]].model) == chunkModel }) {
            groups.append([])   // chunks without decode rows of their model
        }
        for idx in groups {
            let model = idx.first.map { rows[$0].model } ?? planned[0].job.model
            let chunks = ObjectIdentifier(model) == chunkModel ? planned : []
            let outcome = model.runStep(decode: idx.map { rows[$0].sequence }, chunks: chunks.map(\.chunk))
            precondition(outcome.decode.results.count == idx.count, "runStep returned \(outcome.decode.results.count) decode results for \(idx.count) sequences")
            precondition(outcome.chunks.count == chunks.count, "runStep returned \(outcome.chunks.count) chunk results for \(chunks.count) chunks")
            deliver(idx.map { rows[$0] }, outcome.decode, fusedPasses: outcome.fusedPasses)
            for (p, result) in zip(chunks, outcome.chunks) {
                if let key = p.key {
                    prefillDone(key: key, p.job, result, forks: p.forks, before: p.before, tally: &tally)
                } else {
                    recomputeDone(p.job, result.map { _ in () }, before: p.before, tally: &tally)
                }
            }
        }
        return Set(planned.map { ObjectIdentifier($0.job) })
    }

    /// Before `job`'s next chunk (prefill or recompute): a preempted job takes its blocks back (not in a step
    /// that just preempted), then its prefix-cache lookup runs once. False when it cannot be readmitted yet
    /// (the jobs behind it wait too).
    private func makeReady(_ job: Job, preemptedNow: Bool) -> Bool {
        if job.preempted {
            guard !preemptedNow, job.sequence.readmit() else { return false }
            readmitted(job)
        }
        if !job.prefixLookedUp {
            job.sequence.attachCachedPrefix()
            job.prefixLookedUp = true
        }
        return true
    }

    /// Makes every decode row reserve the block its next position needs, preempting sequences (the most
    /// recently admitted first) while the pool has none free. A preempted row leaves `rows`. A row for which
    /// nothing can be preempted now also leaves it for this step (the blocks are held by sequences just
    /// admitted whose prefill is not queued yet, or just finished and not yet released: both pass soon; admission
    /// refuses what the whole pool cannot hold, so it is never alone); the next step tries again.
    /// - Returns: true when it preempted a sequence.
    @discardableResult
    private func reserveDecodeBlocks(_ rows: inout [Job]) -> Bool {
        var preempted = false
        var i = 0
        while i < rows.count {
            let job = rows[i]
            if job.sequence.reserveDecode() { i += 1; continue }
            guard let victim = preemptionVictim(for: job) else {
                logger.debug("a decode row waits for a KV block held by a sequence not preemptable yet")
                rows.remove(at: i)
                continue
            }
            preempt(victim)
            preempted = true
            if let k = rows.firstIndex(where: { $0 === victim }) {
                rows.remove(at: k)
                if k < i { i -= 1 }
            }
        }
        return preempted
    }

    /// The sequence to preempt so that `job` can grow: one holding blocks in the same KV cache, preferring one
    /// that needs none any more (its generation ended; its task has not released it yet), then the most
    /// recently admitted (possibly `job` itself, unless nothing else holds blocks). nil when there is none.
    private func preemptionVictim(for job: Job) -> Job? {
        lock.withLock {
            let cache = job.sequence.kvCacheIdentity
            let holders = admitted.filter {
                !$0.preempted && !$0.blocksFreed && $0.sequence.supportsPreemption && $0.sequence.kvCacheIdentity == cache
            }
            if let done = holders.last(where: { h in h !== job && running.contains { $0 === h } && (h.ended || h.decodesLeft <= 0) }) {
                return done
            }
            guard let last = holders.last, last !== job || holders.count > 1 else { return nil }
            return last
        }
    }

    /// Frees `victim`'s blocks. A sequence still decoding goes to the recompute queue (by admission order), one
    /// still prefilling restarts its prefill in its place; one whose generation ended needs nothing more.
    private func preempt(_ victim: Job) {
        victim.sequence.preempt()
        let finished = lock.withLock { () -> Bool in
            let decoding = running.contains { $0 === victim }
            if decoding, victim.ended || victim.decodesLeft <= 0 {
                victim.blocksFreed = true
                return true
            }
            victim.preempted = true
            victim.prefixLookedUp = false
            counts.preemptions += 1
            if decoding {
                running.removeAll { $0 === victim }
                victim.recomputing = true
                let at = recomputeQueue.firstIndex { $0.order > victim.order } ?? recomputeQueue.endIndex
                recomputeQueue.insert(victim, at: at)
            }
            return false
        }
        if finished {
            logger.debug("freed the KV blocks of a finished sequence for a decode step")
        } else {
            logger.info("preempted a sequence (its blocks freed; recomputed later)", metadata: ["admitted": "\(victim.order)"])
        }
    }

    /// `job` got its blocks back; the last preempted one lets new admissions go on.
    private func readmitted(_ job: Job) {
        let last = lock.withLock { () -> Bool in
            job.preempted = false
            guard !admitted.contains(where: { $0.preempted }) else { return false }
            readmissions += 1
            return true
        }
        if last { blockWaiters.resumeFirst(false) }
    }

    /// A decode step's results: each goes to its job's task, or its outbox until the task takes it.
    private func deliver(_ jobs: [Job], _ outcome: DecodeBatchOutcome, fusedPasses: Int) {
        var wake: [(CheckedContinuation<Result<GeneratedToken, Error>, Never>, Result<GeneratedToken, Error>)] = []
        lock.lock()
        counts.decodePasses += outcome.passes
        counts.decodeRows += jobs.count
        counts.fusedPasses += fusedPasses
        for (job, result) in zip(jobs, outcome.results) {
            job.decodesLeft -= 1
            switch result {
            case .success(let token) where !token.isEndOfSequence: break
            default: job.ended = true
            }
            if let reader = job.reader {
                job.reader = nil
                wake.append((reader, result))
            } else {
                job.outbox.append(result)
            }
        }
        lock.unlock()
        for (reader, result) in wake { reader.resume(returning: result) }
    }
}
