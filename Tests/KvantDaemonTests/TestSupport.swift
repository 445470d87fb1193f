import ControlProtocol
import Dispatch
import Foundation
import KvantCore
import KvantDaemon
import Logging
import ServiceLifecycle

/// Runs a blocking closure off the cooperative pool (the blocking client must not starve the
/// daemon's tasks, which share the pool in-process).
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        // A thread of its own: GCD's pool is as wide as the cores and grows slowly when blocked.
        Thread {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }.start()
    }
}

/// A short temporary directory (sockaddr_un paths are limited to 107 bytes).
func makeTempDir(_ tag: String) throws -> String {
    let path = "/tmp/kvt-\(tag)-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    chmod(path, 0o755)
    return path
}

/// An in-process daemon with the fake backend on a temporary socket.
final class TestDaemon: @unchecked Sendable {
    let dir: String
    let allowed: String
    let socketPath: String
    let daemon: Daemon
    let group: ServiceGroup
    let backend: FakeBackend
    private var runTask: Task<Void, Error>?
    let reloads: AsyncStream<Void>.Continuation

    init(tag: String, decodeDelay: TimeInterval = 0, loadDelay: TimeInterval = 0, tokenCapacity: Int? = nil,
         notifier: SystemdNotifier = .disabled,
         logs: LogCapture? = nil, configure: (inout DaemonConfiguration, String) -> Void = { _, _ in }) throws {
        dir = try makeTempDir(tag)
        allowed = dir + "/allowed"
        try FileManager.default.createDirectory(atPath: allowed, withIntermediateDirectories: true)
        socketPath = dir + "/kvantd.sock"
        var configuration = DaemonConfiguration()
        configuration.socket = socketPath
        configuration.allowedDirs = [allowed]
        configuration.shutdownTimeoutSeconds = 2
        configure(&configuration, allowed)
        backend = FakeBackend(decodeDelay: decodeDelay, loadDelay: loadDelay, tokenCapacity: tokenCapacity)
        var logger = logs.map { capture in Logger(label: "kvantd-test", factory: { _ in CapturingLogHandler(capture: capture) }) }
            ?? Logger(label: "kvantd-test")
        logger.logLevel = logs != nil ? .trace : ProcessInfo.processInfo.environment["KVANT_TEST_LOG"] != nil ? .trace : .warning
        let (stream, continuation) = AsyncStream<Void>.makeStream()
        reloads = continuation
        daemon = try Daemon(configuration: configuration, backend: backend, notifier: notifier, logger: logger,
                            reloadRequests: stream)
        group = daemon.makeServiceGroup(gracefulShutdownSignals: [])
    }

    /// Starts the group without waiting for READY=1.
    func launch() {
        let group = self.group
        runTask = Task { try await group.run() }
    }

    /// Starts the group and waits until the daemon is ready (READY=1 point).
    func start() async throws {
        launch()
        let daemon = self.daemon
        let ready = Task { await daemon.waitUntilReady(); return true }
        let timeout = Task { try await Task.sleep(for: .seconds(10)); ready.cancel() }
        _ = await ready.value
        timeout.cancel()
        guard (try? ControlClient(socketPath: socketPath, timeout: 20)) != nil else {
            throw KvantError(.unavailable, "test daemon is not listening on \(socketPath)")
        }
    }

    /// Graceful shutdown; waits for the group to finish.
    func stop() async throws {
        await group.triggerGracefulShutdown()
        try await runTask?.value
        try? FileManager.default.removeItem(atPath: dir)
    }

    func client() throws -> ControlClient { try ControlClient(socketPath: socketPath, timeout: 20) }

    /// Writes a file under the allowed directory and returns its path.
    @discardableResult
    func writeAllowed(_ name: String, _ text: String) throws -> String {
        let path = allowed + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Loads a fake model file `model.gguf`.
    func loadModel(kvCacheDType: KVCacheDType? = nil) async throws -> LoadModelResult {
        let path = try writeAllowed("model.gguf", "GGUF fake")
        let socketPath = self.socketPath
        return try await offPool {
            try ControlClient(socketPath: socketPath, timeout: 20).call(
                .loadModel, LoadModelParams(path: path, kvCacheDType: kvCacheDType), as: LoadModelResult.self)
        }
    }
}

/// Sends raw request lines and returns the decoded reply lines (blocking; call via offPool).
func exchange(_ client: ControlClient, _ line: String) throws -> RPCResponse {
    try client.sendRaw(Array((line + "\n").utf8))
    while true {
        if case .response(let response) = try client.readMessage() { return response }
    }
}

/// Log records kept in memory (level and the message with its metadata).
final class LogCapture: @unchecked Sendable {
    private let lock = NSLock()
    private var records: [(Logger.Level, String)] = []

    func append(_ level: Logger.Level, _ text: String) { lock.lock(); records.append((level, text)); lock.unlock() }

    /// Messages logged at `level` or more severe.
    func messages(atLeast level: Logger.Level) -> [String] {
        lock.lock(); defer { lock.unlock() }
        return records.filter { $0.0 >= level }.map(\.1)
    }
}

struct CapturingLogHandler: LogHandler {
    let capture: LogCapture
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, source: String,
             file: String, function: String, line: UInt) {
        var merged = metadata
        if let explicit { merged.merge(explicit) { $1 } }
        capture.append(level, "\(message)" + merged.sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined())
    }
}
