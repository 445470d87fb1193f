import Foundation

/// A first-in first-out queue of suspended tasks, each resumed exactly once: in arrival order by
/// `resumeFirst(_:)`, or at once with the `cancelled` value given to `wait` when its task is
/// cancelled while it waits (it then leaves the queue). The engine keeps two: requests waiting for a
/// sequence slot (`max_num_seqs`) and requests waiting for KV blocks.
///
/// Thread-safe; cancellation is handled synchronously in the task's cancellation handler, so a
/// cancelled waiter never holds its place until some other event.
final class WaiterQueue<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var waiters: [(key: Int, continuation: CheckedContinuation<Value, Never>)] = []
    private var nextKey = 0

    /// Tasks waiting now.
    var count: Int { lock.withLock { waiters.count } }

    var isEmpty: Bool { count == 0 }

    /// Suspends the calling task until `resumeFirst` resumes it (returning the value given there) or
    /// the task is cancelled (returning `cancelled`; also at once when it is cancelled already).
    /// - Parameter atFront: queue ahead of every waiter (a request that already had its turn and retries).
    func wait(atFront: Bool = false, cancelled: Value) async -> Value {
        let key = lock.withLock { () -> Int in nextKey += 1; return nextKey }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Value, Never>) in
                lock.lock()
                if Task.isCancelled {
                    lock.unlock()
                    continuation.resume(returning: cancelled)
                    return
                }
                if atFront { waiters.insert((key, continuation), at: 0) } else { waiters.append((key, continuation)) }
                lock.unlock()
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
}
