import Dispatch
import Foundation
import KvantCore

/// The engine's single compute thread: a serial queue that runs model work one item at a time.
/// Items from concurrent requests interleave in FIFO order, so decode steps of several
/// sequences alternate (round-robin). It also keeps the heartbeat the systemd watchdog reads.
final class ComputeLane: @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []
    private let lock = NSLock()
    private var busySince: UInt64?
    private var lastBeat: UInt64 = DispatchTime.now().uptimeNanoseconds

    /// Starts the lane's own thread (not a GCD worker: model work blocks for long stretches and
    /// must not starve the shared pools).
    init(label: String) {
        let thread = Thread { [unowned self] in self.loop() }
        thread.name = label
        thread.stackSize = 8 << 20
        thread.start()
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }

    private func enqueue(_ job: @escaping () -> Void) {
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Runs `body` on the lane and returns its result.
    func run<T>(_ body: @escaping () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            enqueue {
                self.markBusy(true)
                defer { self.markBusy(false) }
                do {
                    continuation.resume(returning: try body())
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    /// Queues `body` on the lane without waiting for it (it must not throw; it reports its own results).
    func submit(_ body: @escaping () -> Void) {
        enqueue {
            self.markBusy(true)
            defer { self.markBusy(false) }
            body()
        }
    }

    /// Records progress inside a long item (called from `OperationControl.progress`).
    func beat() {
        lock.lock()
        lastBeat = DispatchTime.now().uptimeNanoseconds
        lock.unlock()
    }

    private func markBusy(_ busy: Bool) {
        lock.lock()
        let now = DispatchTime.now().uptimeNanoseconds
        busySince = busy ? now : nil
        lastBeat = now
        lock.unlock()
    }

    /// True when the lane is idle, or busy but made progress within `window` nanoseconds.
    func isAlive(window: UInt64) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard busySince != nil else { return true }
        return DispatchTime.now().uptimeNanoseconds &- lastBeat <= window
    }
}

/// Resident set size of this process in bytes (`/proc/self/statm`, field 2 × page size); 0 if unreadable.
public func residentSetBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}
