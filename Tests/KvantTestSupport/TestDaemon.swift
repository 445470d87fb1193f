import ControlProtocol
import Dispatch
import Foundation
import KvantCore
import KvantDaemon
import Logging
import ServiceLifecycle

/// The configuration of an in-process test daemon: a fresh temporary directory (`makeTempDir(tag)`), its
/// `allowed` subdirectory as the only `allowed_dirs`, the control socket `kvantd.sock` inside it, and a 2 s
/// `shutdown_timeout_seconds`.
public func makeTestDaemonConfiguration(tag: String) throws
    -> (dir: String, allowed: String, socketPath: String, configuration: DaemonConfiguration) {
    let dir = try makeTempDir(tag)
    let allowed = dir + "/allowed"
    try FileManager.default.createDirectory(atPath: allowed, withIntermediateDirectories: true)
    var configuration = DaemonConfiguration()
    configuration.socket = dir + "/kvantd.sock"
    configuration.allowedDirs = [allowed]
    configuration.shutdownTimeoutSeconds = 2
    return (dir, allowed, dir + "/kvantd.sock", configuration)
}

/// An in-process daemon with the fake backend on a temporary socket.
public final class TestDaemon: @unchecked Sendable {
    public let dir: String
    public let allowed: String
    public let socketPath: String
    public let daemon: Daemon
    public let group: ServiceGroup
    public let backend: FakeBackend
    private var runTask: Task<Void, Error>?
    public let reloads: AsyncStream<Void>.Continuation

    public init(tag: String, decodeDelay: TimeInterval = 0, loadDelay: TimeInterval = 0, tokenCapacity: Int? = nil,
         onDemandBlocks: Bool = false, notifier: SystemdNotifier = .disabled,
         logs: LogCapture? = nil, configure: (inout DaemonConfiguration, String) -> Void = { _, _ in }) throws {
        var configuration: DaemonConfiguration
        (dir, allowed, socketPath, configuration) = try makeTestDaemonConfiguration(tag: tag)
        configure(&configuration, allowed)
        backend = FakeBackend(decodeDelay: decodeDelay, loadDelay: loadDelay, tokenCapacity: tokenCapacity, onDemandBlocks: onDemandBlocks)
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
    public func launch() {
        let group = self.group
        runTask = Task { try await group.run() }
    }

    /// Starts the group and waits until the daemon is ready (READY=1 point).
    public func start() async throws {
        launch()
        let daemon = self.daemon
        let ready = Task { await daemon.waitUntilReady(); return true }
        let timeout = Task { try await Task.sleep(for: .seconds(10)); ready.cancel() }
        _ = await ready.value
        timeout.cancel()
        guard (try? ControlClient(socketPath: socketPath, timeout: 120)) != nil else {
            throw KvantError(.unavailable, "test daemon is not listening on \(socketPath)")
        }
    }

    /// Graceful shutdown; waits for the group to finish.
    public func stop() async throws {
        await group.triggerGracefulShutdown()
        try await runTask?.value
        try? FileManager.default.removeItem(atPath: dir)
    }

    public func client() throws -> ControlClient { try ControlClient(socketPath: socketPath, timeout: 120) }

    /// Writes a file under the allowed directory and returns its path.
    @discardableResult
    public func writeAllowed(_ name: String, _ text: String) throws -> String {
        let path = allowed + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Loads a fake model file `model.gguf`.
    public func loadModel(kvCacheDType: KVCacheDType? = nil) async throws -> LoadModelResult {
        let path = try writeAllowed("model.gguf", "GGUF fake")
        let socketPath = self.socketPath
        return try await offPool {
            try ControlClient(socketPath: socketPath, timeout: 120).call(
                .loadModel, LoadModelParams(path: path, kvCacheDType: kvCacheDType), as: LoadModelResult.self)
        }
    }
}

extension TestDaemon {
    /// Runs one `generate` per params at once, each on a client connection of its own, and returns
    /// the results in the order of `params`.
    public func generateConcurrently(_ params: [GenerateParams]) async throws -> [GenerateResult] {
        let socket = socketPath
        return try await withThrowingTaskGroup(of: (Int, GenerateResult).self) { group in
            for (i, p) in params.enumerated() {
                group.addTask {
                    (i, try await offPool {
                        try ControlClient(socketPath: socket, timeout: 120).call(.generate, p, as: GenerateResult.self)
                    })
                }
            }
            var all = [GenerateResult?](repeating: nil, count: params.count)
            for try await (i, result) in group { all[i] = result }
            return all.map { $0! }
        }
    }

    /// `stats` over a new connection.
    public func stats() async throws -> StatsResult {
        let socket = socketPath
        return try await offPool { try ControlClient(socketPath: socket, timeout: 120).call(.stats, EmptyParams(), as: StatsResult.self) }
    }
}

/// Sends raw request lines and returns the decoded reply lines (blocking; call via offPool).
public func exchange(_ client: ControlClient, _ line: String) throws -> RPCResponse {
    try client.sendRaw(Array((line + "\n").utf8))
    while true {
        if case .response(let response) = try client.readMessage() { return response }
    }
}

/// Log records kept in memory (level and the message with its metadata).
public final class LogCapture: @unchecked Sendable {
    private let lock = NSLock()
    private var records: [(Logger.Level, String)] = []

    public init() {}

    public func append(_ level: Logger.Level, _ text: String) { lock.lock(); records.append((level, text)); lock.unlock() }

    /// Messages logged at `level` or more severe.
    public func messages(atLeast level: Logger.Level) -> [String] {
        lock.lock(); defer { lock.unlock() }
        return records.filter { $0.0 >= level }.map(\.1)
    }
}

public struct CapturingLogHandler: LogHandler {
    public let capture: LogCapture
    public var logLevel: Logger.Level = .trace
    public var metadata: Logger.Metadata = [:]

    public init(capture: LogCapture) { self.capture = capture }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let level = event.level, message = event.message, explicit = event.metadata
        var merged = metadata
        if let explicit { merged.merge(explicit) { $1 } }
        capture.append(level, "\(message)" + merged.sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined())
    }
}
