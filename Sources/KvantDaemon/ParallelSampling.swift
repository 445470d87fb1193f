import ControlProtocol
import Foundation

/// The `n` choices of one request (parallel sampling, vLLM's `n`), generated with one prefill: each choice calls
/// `Engine.generate(choice:of:onToken:)` from a task of its own (its own stream, result and cancellation).
///
/// Choice 0 leads: it takes the `n` sequence slots at once (`max_num_seqs`; waiting in arrival order), is
/// admitted like any request (its prompt's blocks promised) and makes a fork of its sequence per other choice
/// (`GenerationSequence.makeFork`: the same prompt, its own sampler and seed). Its prompt is prefilled once, in
/// chunks; the last chunk samples every choice's first token from the same logits and gives each fork all of its
/// KV blocks (copy-on-write), so the choices then decode as sequences of their own. A fork has no admission of its
/// own: its blocks (the copy of the partial last block, then its generated tokens') come on demand like any
/// generated token's, and when the pool runs out one is preempted and recomputed like any sequence.
///
/// Each choice is the request it would be alone, token for token: same prompt logits, same sampler (seed
/// `seed + choice`, as the HTTP API derives it). A choice cancelled before the fork is simply not forked; when
/// choice 0 ends before its last prefill chunk the others are prefilled on their own. With more choices than
/// `max_num_seqs`, a backend that cannot fork, or choice 0 failing before admission, each choice runs as a
/// request of its own (prefix caching then shares the prompt's full blocks).
public final class ParallelSampling: @unchecked Sendable {
    /// One request per choice (the same prompt; seeds differ).
    public let choices: [GenerateParams]

    /// What choice 0 decided for another choice.
    enum Lead: Sendable {
        /// Forked from choice 0's sequence: run this job (its slot is taken).
        case forked(Scheduler.Job, Plan)
        /// Run as a request of its own.
        case independent
    }

    /// What a forked choice runs with (the leader's model, prompt and budget).
    struct Plan: Sendable {
        let model: any LoadedModel
        let prompt: [Int]
        let budget: Int
    }

    private let lock = NSLock()
    private var leads: [Int: Lead] = [:]
    private var resolved = false
    private var waiters: [Int: CheckedContinuation<Lead, Never>] = [:]
    /// Choices cancelled while they waited for choice 0: not forked.
    private var abandoned: Set<Int> = []

    public init(choices: [GenerateParams]) {
        self.choices = choices
    }

    /// Choice `index` (> 0) waits for choice 0's decision; `.independent` when its task is cancelled meanwhile.
    func awaitLead(_ index: Int) async -> Lead {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Lead, Never>) in
                lock.lock()
                if resolved {
                    let lead = leads[index] ?? .independent
                    lock.unlock()
                    continuation.resume(returning: lead)
                } else if Task.isCancelled {
                    abandoned.insert(index)
                    lock.unlock()
                    continuation.resume(returning: .independent)
                } else {
                    waiters[index] = continuation
                    lock.unlock()
                }
            }
        } onCancel: {
            let waiter = lock.withLock { () -> CheckedContinuation<Lead, Never>? in
                guard !resolved, let waiter = waiters.removeValue(forKey: index) else { return nil }
                abandoned.insert(index)
                return waiter
            }
            waiter?.resume(returning: .independent)
        }
    }

    /// Choice 0 closes the group: the choices still waiting (not abandoned), which it will fork. After this, a
    /// choice's cancellation no longer abandons it (it gets its job and ends it like a running request).
    func claim() -> [Int] {
        lock.withLock {
            guard !resolved else { return [] }
            return (1..<choices.count).filter { !abandoned.contains($0) }
        }
    }

    /// Choice 0's decision: `leads` for the choices it forked, `.independent` for every other one.
    func resolve(_ forked: [Int: Lead] = [:]) {
        let wake = lock.withLock { () -> [(CheckedContinuation<Lead, Never>, Lead)] in
            guard !resolved else { return [] }
            resolved = true
            leads = forked
            let wake = waiters.map { ($0.value, forked[$0.key] ?? .independent) }
            waiters = [:]
            return wake
        }
        for (waiter, lead) in wake { waiter.resume(returning: lead) }
    }
}

extension Engine {
    /// Generates the `params.n` choices of one request (the control socket's `generate`): `n = 1` is
    /// `generate(_:onToken:)`; `n > 1` runs choice `i` as the request `params.choice(i)` (seed `seed + i`) through
    /// `generate(choice:of:onToken:)`, each from a task of its own, so the choices share one prefill of the prompt
    /// and fork its KV blocks (`ParallelSampling`; with `n > max_num_seqs` each choice runs as a request of its own).
    /// `onToken(i, token)` streams choice `i`'s tokens, each choice's in order.
    /// - Returns: the `n` results in choice order. Cancelling the calling task ends every choice (`cancelled`).
    /// - Throws: `params.validate()`'s error (`n` outside 1...`GenerateParams.maxN` among them) before anything
    ///   runs; otherwise the first error of a choice, after the other choices were cancelled and released.
    public func generate(choices params: GenerateParams,
                         onToken: @escaping @Sendable (_ choice: Int, GeneratedToken) async -> Void) async throws -> [GenerateResult] {
        try params.validate()
        guard params.n > 1 else { return [try await generate(params) { await onToken(0, $0) }] }
        let group = ParallelSampling(choices: (0..<params.n).map { params.choice($0) })
        return try await withThrowingTaskGroup(of: (Int, GenerateResult).self) { tasks in
            for i in 0..<params.n {
                tasks.addTask { (i, try await self.generate(choice: i, of: group) { await onToken(i, $0) }) }
            }
            // The first failure leaves the group: the other choices are cancelled and awaited (their blocks freed).
            var results = [GenerateResult?](repeating: nil, count: params.n)
            for try await (i, result) in tasks { results[i] = result }
            return results.map { $0! }
        }
    }
}
