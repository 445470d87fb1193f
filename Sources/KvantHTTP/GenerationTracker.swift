import Foundation
import KvantDaemon

/// The HTTP API's generations in flight: admission beyond `max_num_seqs` + `max_queued_requests`
/// (429), refusal while the daemon drains (503 + `Retry-After`; each admitted request is counted in
/// `DrainState`, whose `waitUntilIdle` graceful shutdown awaits), and cancellation of whatever still runs
/// `shutdown_timeout_seconds` after shutdown began (each then ends with `finish_reason: "abort"`). Thread-safe.
final class GenerationTracker: @unchecked Sendable {
    /// Sequences that may run or wait at once (`max_num_seqs + max_queued_requests`).
    let capacity: Int
    let drain: DrainState
    private let lock = NSLock()
    private var active = 0
    private var cancels: [Int: @Sendable () -> Void] = [:]
    private var nextKey = 0

    init(capacity: Int, drain: DrainState) {
        self.capacity = capacity
        self.drain = drain
    }

    /// Sequences admitted and not yet finished.
    var activeSequences: Int { lock.lock(); defer { lock.unlock() }; return active }

    /// Admits `sequences` more sequences, or throws 429 (over capacity) / 503 (draining).
    func admit(_ sequences: Int) throws -> Admission {
        lock.lock(); defer { lock.unlock() }
        // Draining wins over capacity: a 503 is resent to another daemon by a load balancer, a 429 is not.
        if let reason = drain.drainReason { throw Self.drainingError(reason) }
        guard active + sequences <= capacity else {
            throw OpenAIError(.tooManyRequests,
                              "the server is over capacity: \(active) sequences running or waiting, this request needs \(sequences) more, at most \(capacity) (max_num_seqs + max_queued_requests); retry later",
                              retryAfterSeconds: 1)
        }
        guard drain.enter() else { throw Self.drainingError(drain.drainReason) }
        active += sequences
        return Admission(tracker: self, sequences: sequences)
    }

    /// 503 with `Retry-After` for a request that arrives while the daemon drains.
    static func drainingError(_ reason: DrainState.Reason?) -> OpenAIError {
        OpenAIError(.serviceUnavailable, reason == .shutdown
            ? "the server is draining: it is shutting down and takes no new requests; retry on another server"
            : "the server is draining: an operator took it out of rotation (kvantctl drain); retry on another server",
            retryAfterSeconds: 5)
    }

    fileprivate func release(_ sequences: Int) {
        lock.lock(); active -= sequences; lock.unlock()
        drain.leave()
    }

    /// Registers a cancellation for shutdown; returns the key for `unregister`.
    func register(_ cancel: @escaping @Sendable () -> Void) -> Int {
        lock.lock()
        let key = nextKey
        nextKey += 1
        cancels[key] = cancel
        lock.unlock()
        return key
    }

    func unregister(_ key: Int) {
        lock.lock(); cancels[key] = nil; lock.unlock()
    }

    /// Cancels every generation still running (the shutdown deadline passed).
    func cancelAll() {
        lock.lock()
        let all = Array(cancels.values)
        lock.unlock()
        for cancel in all { cancel() }
    }

    /// A grant of sequences; `release()` exactly once.
    final class Admission: @unchecked Sendable {
        private let tracker: GenerationTracker
        private let sequences: Int
        private let lock = NSLock()
        private var released = false

        fileprivate init(tracker: GenerationTracker, sequences: Int) {
            self.tracker = tracker
            self.sequences = sequences
        }

        func release() {
            lock.lock()
            let first = !released
            released = true
            lock.unlock()
            if first { tracker.release(sequences) }
        }

        deinit { release() }
    }
}

/// Streamed text that must not show a stop string: holds back a tail that could still become one and
/// stops at the first complete one (the engine ends the generation there and cuts its text before it).
public struct StopStringHoldBack {
    let stops: [[Unicode.Scalar]]
    private var pending: [Unicode.Scalar] = []
    private(set) var emitted: [Unicode.Scalar] = []
    private var stopped = false

    public init(stops: [String]) {
        self.stops = stops.filter { !$0.isEmpty }.map { Array($0.unicodeScalars) }
    }

    /// Adds a piece of generated text; returns the text that may be sent now.
    public mutating func append(_ piece: String) -> String {
        guard !stopped else { return "" }
        pending += piece.unicodeScalars
        guard !stops.isEmpty else { return flush() }
        if let cut = firstStop() {
            stopped = true
            let out = Array(pending[..<cut])
            pending.removeAll()
            emitted += out
            return String(String.UnicodeScalarView(out))
        }
        let hold = heldBack()
        let out = Array(pending[..<(pending.count - hold)])
        pending.removeFirst(pending.count - hold)
        emitted += out
        return String(String.UnicodeScalarView(out))
    }

    /// At the end: the rest of `finalText` (the engine's text, cut before a stop string) not sent yet.
    public mutating func finish(finalText: String) -> String {
        let final = Array(finalText.unicodeScalars)
        guard final.starts(with: emitted), final.count > emitted.count else { return "" }
        let rest = Array(final[emitted.count...])
        emitted = final
        pending.removeAll()
        return String(String.UnicodeScalarView(rest))
    }

    private mutating func flush() -> String {
        let out = pending
        pending.removeAll()
        emitted += out
        return String(String.UnicodeScalarView(out))
    }

    /// Index in `pending` where the earliest complete stop string starts.
    private func firstStop() -> Int? {
        var best: Int?
        for stop in stops where stop.count <= pending.count {
            var i = 0
            while i + stop.count <= pending.count {
                if pending[i] == stop[0], Array(pending[i..<(i + stop.count)]) == stop {
                    if best == nil || i < best! { best = i }
                    break
                }
                i += 1
            }
        }
        return best
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop string.
    private func heldBack() -> Int {
        var best = 0
        for stop in stops {
            var k = min(stop.count - 1, pending.count)
            while k > best {
                if Array(pending.suffix(k)) == Array(stop.prefix(k)) { best = k; break }
                k -= 1
            }
        }
        return best
    }
}
