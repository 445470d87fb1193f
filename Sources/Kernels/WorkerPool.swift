import CKernels

/// Fork-join worker threads for the decode hot path (`kvant_pool`, Sources/CKernels/pool.c): `threads - 1` workers plus
/// the caller run the tasks of one job, claiming them one at a time, so the caller finishes a job alone when a worker is
/// late (another process holding its core). Idle workers spin for `spinMicroseconds` before blocking on a futex: decode
/// runs ~75 short jobs per token, and a spinning worker starts each within a fraction of a microsecond, where waking a
/// blocked thread (as `DispatchQueue.concurrentPerform` does) costs several microseconds per job.
/// One job at a time: not re-entrant, not thread-safe (one pool per `MatMul`).
public final class WorkerPool: @unchecked Sendable {
    public let threads: Int
    private let pool: OpaquePointer?

    /// - Parameters: threads: workers + the caller (≥ 1); spinMicroseconds: idle spin before blocking.
    public init(threads: Int, spinMicroseconds: Int = 200) {
        self.threads = max(1, threads)
        // nil (thread creation failed): `run` executes every task on the caller.
        pool = self.threads > 1 ? kvant_pool_create(Int32(self.threads), Int32(spinMicroseconds)) : nil
    }

    deinit { if let pool { kvant_pool_destroy(pool) } }

    /// Runs `body(i)` for every `i` in `0..<tasks`, on the workers and the calling thread; returns when all are done.
    public func run(_ tasks: Int, _ body: (Int) -> Void) {
        guard tasks > 0 else { return }
        guard let pool, tasks > 1 else {
            for i in 0..<tasks { body(i) }
            return
        }
        withoutActuallyEscaping(body) { escaping in
            var fn = escaping
            withUnsafeMutablePointer(to: &fn) { ctx in
                kvant_pool_run(pool, Int64(tasks), { ctx, i in
                    ctx!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(Int(i))
                }, ctx)
            }
        }
    }
}
