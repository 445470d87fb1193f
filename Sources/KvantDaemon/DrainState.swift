import Foundation

/// Whether the daemon drains, and the data-plane (HTTP) requests still in flight. Thread-safe.
///
/// Draining takes a daemon out of a load balancer's rotation: the HTTP API's `/health` answers 503
/// `draining` and new requests get 503 with `Retry-After` (HAProxy's `retry-on 503` resends them to
/// another daemon), while the requests admitted before run to their end. It begins with the `drain`
/// control method or with graceful shutdown (SIGTERM), which then waits for `waitUntilIdle()` (at most
/// `shutdown_timeout_seconds`) before the listeners close.
public final class DrainState: @unchecked Sendable {
    /// Why the daemon drains.
    public enum Reason: String, Sendable {
        /// The `drain` control method (the daemon keeps running; `drain` with `resume` ends it).
        case drain
        /// Graceful shutdown (SIGTERM): the daemon exits once drained.
        case shutdown
    }

    private let lock = NSLock()
    private var reason: Reason?
    private var inFlight = 0
    private var idleWaiters: [UUID: CheckedContinuation<Void, Never>] = [:]

    public init() {}

    /// Non-nil while draining.
    public var drainReason: Reason? { lock.lock(); defer { lock.unlock() }; return reason }

    public var isDraining: Bool { drainReason != nil }

    /// Data-plane requests admitted and not finished.
    public var inFlightCount: Int { lock.lock(); defer { lock.unlock() }; return inFlight }

    /// Starts draining (no effect when draining already, except that `shutdown` overrides `drain`).
    public func begin(_ why: Reason) {
        lock.lock(); defer { lock.unlock() }
        if reason != .shutdown { reason = why }
    }

    /// Ends a drain begun by the `drain` method. Returns false when shutdown began (that drain cannot end).
    public func resume() -> Bool {
        lock.lock(); defer { lock.unlock() }
        if reason == .shutdown { return false }
        reason = nil
        return true
    }

    /// Admits one data-plane request; false while draining (the caller answers 503).
    public func enter() -> Bool {
        lock.lock(); defer { lock.unlock() }
        guard reason == nil else { return false }
        inFlight += 1
        return true
    }

    /// Ends a request admitted by `enter()`, exactly once.
    public func leave() {
        lock.lock()
        inFlight -= 1
        precondition(inFlight >= 0, "DrainState.leave() without enter()")
        let waiters = inFlight == 0 ? Array(idleWaiters.values) : []
        if inFlight == 0 { idleWaiters.removeAll() }
        lock.unlock()
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once no data-plane request is in flight, or when the calling task is cancelled.
    public func waitUntilIdle() async {
        let key = UUID()
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                lock.lock()
                if inFlight == 0 || Task.isCancelled {
                    lock.unlock()
                    continuation.resume()
                } else {
                    idleWaiters[key] = continuation
                    lock.unlock()
                }
            }
        } onCancel: {
            lock.lock()
            let waiter = idleWaiters.removeValue(forKey: key)
            lock.unlock()
            waiter?.resume()
        }
    }

    /// Waits until idle for at most `timeout`; true when idle.
    public func waitUntilIdle(timeout: Duration) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { await self.waitUntilIdle(); return !Task.isCancelled }
            group.addTask { try? await Task.sleep(for: timeout); return false }
            let first = await group.next() ?? false
            group.cancelAll()
            return first || self.inFlightCount == 0
        }
    }
}
