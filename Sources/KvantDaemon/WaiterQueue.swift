import Foundation

/// A first-in first-out queue of suspended tasks, each resumed exactly once: in arrival order by
/// `resumeFirst(_:)`, by its key (`resume(key:with:)`), or at once with the `cancelled` value given to
/// `wait` when its task is cancelled while it waits (it then leaves the queue). Each waiter may carry an
/// `Item` that the queue's owner reads in place (`waiting`) before deciding whom to resume.
///
/// The scheduler keeps three: requests waiting for a sequence slot (`max_num_seqs`), requests waiting
/// for KV blocks, and admitted requests waiting for their prefill (the waiting queue, whose items are
/// the sequences prefilled chunk by chunk while they stay in it).
///
/// Thread-safe; cancellation is handled synchronously in the task's cancellation handler, so a
/// cancelled waiter never holds its place until some other event.
final class WaiterQueue<Item, Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var waiters: [(key: Int, item: Item, continuation: CheckedContinuation<Value, Never>)] = []
    private var nextKey = 0

    /// Tasks waiting now.
    var count: Int { lock.withLock { waiters.count } }

    var isEmpty: Bool { count == 0 }

    /// The waiting items with their keys, first in line first (a snapshot).
    var waiting: [(key: Int, item: Item)] { lock.withLock { waiters.map { ($0.key, $0.item) } } }

    /// Suspends the calling task until `resumeFirst` or `resume(key:with:)` resumes it (returning the value
    /// given there) or the task is cancelled (returning `cancelled`; also at once when it is cancelled already).
    /// - Parameters:
    ///   - atFront: queue ahead of every waiter (a request that already had its turn and retries).
    ///   - queued: called once the waiter is in the queue (not when it was cancelled before), outside the
    ///     queue's lock; the owner uses it to schedule the work that will resume it.
    func wait(_ item: Item, atFront: Bool = false, cancelled: Value, queued: @escaping () -> Void = {}) async -> Value {
        let key = lock.withLock { () -> Int in nextKey += 1; return nextKey }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Value, Never>) in
                lock.lock()
                if Task.isCancelled {
                    lock.unlock()
                    continuation.resume(returning: cancelled)
                    return
                }
                if atFront { waiters.insert((key, item, continuation), at: 0) } else { waiters.append((key, item, continuation)) }
                lock.unlock()
                queued()
            }
        } onCancel: {
            let removed = lock.withLock { () -> CheckedContinuation<Value, Never>? in
                guard let index = waiters.firstIndex(where: { $0.key == key }) else { return nil }
                return waiters.remove(at: index).continuation
            }
            removed?.resume(returning: cancelled)
        }
    }

    /// Resumes the longest-waiting task with `value`.
    /// - Returns: false when nobody waits.
    @discardableResult
    func resumeFirst(_ value: Value) -> Bool {
        let first = lock.withLock { () -> CheckedContinuation<Value, Never>? in
            waiters.isEmpty ? nil : waiters.removeFirst().continuation
        }
        first?.resume(returning: value)
        return first != nil
    }

    /// Resumes the waiter `key` (from `waiting`) with `value`.
    /// - Returns: false when it is no longer in the queue (it was cancelled meanwhile).
    @discardableResult
    func resume(key: Int, with value: Value) -> Bool {
        let found = lock.withLock { () -> CheckedContinuation<Value, Never>? in
            guard let index = waiters.firstIndex(where: { $0.key == key }) else { return nil }
            return waiters.remove(at: index).continuation
        }
        found?.resume(returning: value)
        return found != nil
    }
}

extension WaiterQueue where Item == Void {
    /// `wait` for a queue whose waiters carry nothing.
    func wait(atFront: Bool = false, cancelled: Value) async -> Value {
        await wait((), atFront: atFront, cancelled: cancelled)
    }
}
