import Foundation

/// Runs a blocking or compute-heavy closure on a thread of its own and returns its result. All test
/// targets share one process, and Swift concurrency's cooperative pool is as wide as the cores (2 here):
/// a synchronous test computing for seconds on it, or a blocking client, would starve the daemon
/// tests' actors and NIO tasks. Keep `#expect` outside `body` (issues are recorded through the test's
/// task-local context).
public func offPool<T>(_ body: @escaping () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        // A thread of its own: GCD's pool is as wide as the cores and grows slowly when blocked.
        Thread {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }.start()
    }
}

/// A short temporary directory (sockaddr_un paths are limited to 107 bytes).
public func makeTempDir(_ tag: String) throws -> String {
    let path = "/tmp/kvt-\(tag)-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    chmod(path, 0o755)
    return path
}
