import Foundation
import Kernels
import Testing

/// WorkerPool runs every task of every job exactly once and returns only when all are done, whatever the
/// number of threads (more threads than cores included: workers then run late and the caller takes their share)
/// and whether the workers spin or block between jobs.
@Suite struct WorkerPoolTests {
    func runJobs(threads: Int, spinMicroseconds: Int, jobs: Int) {
        let pool = WorkerPool(threads: threads, spinMicroseconds: spinMicroseconds)
        let maxTasks = 300
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: maxTasks)
        defer { counts.deallocate() }
        var rng = SystemRandomNumberGenerator()
        for job in 0..<jobs {
            let tasks = job % 7 == 0 ? 1 : Int.random(in: 0...maxTasks, using: &rng)
            counts.initialize(repeating: 0, count: maxTasks)
            let tag = job + 1
            pool.run(tasks) { i in
                // Uneven task lengths, so tasks finish out of order.
                var x = 0
                for k in 0..<((i * 37 + tag) % 500) { x &+= k }
                if x == -1 { print(x) }
                counts[i] += tag    // each index is claimed once: no two threads write the same slot
            }
            // Every task ran exactly once before run returned.
            for i in 0..<tasks where counts[i] != tag {
                Issue.record("threads \(threads) spin \(spinMicroseconds) µs, job \(job): task \(i) ran \(counts[i] / tag) times")
                return
            }
            for i in tasks..<maxTasks where counts[i] != 0 {
                Issue.record("job \(job): index \(i) beyond \(tasks) tasks ran")
                return
            }
            if job % 50 == 0 { usleep(300) }   // let spinning workers fall asleep now and then
        }
    }

    @Test func everyTaskRunsOnceWithSpinningWorkers() { runJobs(threads: 2, spinMicroseconds: 200, jobs: 2000) }
    @Test func everyTaskRunsOnceWithBlockingWorkers() { runJobs(threads: 2, spinMicroseconds: 0, jobs: 2000) }
    @Test func everyTaskRunsOnceWithMoreThreadsThanCores() { runJobs(threads: 5, spinMicroseconds: 50, jobs: 1000) }
    @Test func oneThreadRunsInline() { runJobs(threads: 1, spinMicroseconds: 200, jobs: 100) }

    @Test func poolsComeAndGo() {
        // Creating and destroying pools joins their workers (no leak, no hang), also right after a job.
        for k in 0..<50 {
            let pool = WorkerPool(threads: 2 + k % 3, spinMicroseconds: k % 2 == 0 ? 0 : 100)
            var sum = 0
            let lock = NSLock()
            pool.run(16) { i in lock.lock(); sum += i; lock.unlock() }
            #expect(sum == 120)
        }
    }
}
