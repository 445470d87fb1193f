import ControlProtocol
import CoreMetrics
import Dispatch
import Foundation
import KvantCore
import Logging
import ServiceLifecycle
import UnixSignals

/// The daemon's version string reported by `version`.
public let kvantDaemonVersion = "0.1.0"

/// Builds and runs kvantd: the `ControlServer` and the `DaemonSupervisor` (start-up model, READY=1,
/// SIGHUP reloads, watchdog, STATUS=, STOPPING=1) in one `ServiceGroup`.
public final class Daemon: Sendable {
    public let configuration: DaemonConfiguration
    public let engine: Engine
    public let notifier: SystemdNotifier
    public let server: ControlServer
    public let supervisor: DaemonSupervisor
    /// Draining state shared by the `drain` method, graceful shutdown and the HTTP API.
    public let drain = DrainState()
    private let logger: Logger

    /// - Parameters:
    ///   - listenFD: a socket passed by systemd (`SocketActivation.listeningSocket()`), or nil to bind `configuration.socket`.
    ///   - reloadRequests: reload triggers; nil = SIGHUP.
    ///   - metricsFactory: where the engine's counters and histograms also go (`EngineMetrics`); kvantd passes
    ///     the Prometheus factory whose registry `GET /metrics` exposes.
    /// - Throws: `KvantError(.invalidArgument)` for a missing allowed dir or an unknown `socket_group`.
    public init(configuration: DaemonConfiguration, backend: any InferenceBackend, notifier: SystemdNotifier,
                logger: Logger, listenFD: Int32? = nil, reloadRequests: AsyncStream<Void>? = nil,
                metricsFactory: any MetricsFactory = NOOPMetricsHandler.instance) throws {
        self.configuration = configuration
        self.notifier = notifier
        self.logger = logger
        let groupID = try configuration.socketGroup.map { try AccessPolicy.groupID(named: $0) }
        let paths = try PathPolicy(allowedDirs: configuration.allowedDirs)
        let engine = Engine(backend: backend, settings: configuration.engineSettings, logger: logger,
                            metrics: EngineMetrics(factory: metricsFactory))
        self.engine = engine
        let statusReporter = StatusReporter(engine: engine, notifier: notifier)
        let startupFinished = OneShotEvent()
        let handler = RequestHandler(
            engine: engine, paths: paths, access: AccessPolicy(groupID: groupID), daemonVersion: kvantDaemonVersion,
            logger: logger, stateChanged: { await statusReporter.refresh() },
            loadProgress: { statusReporter.loadProgress($0) },
            waitForStartup: { await startupFinished.wait() }, drain: drain,
            drainTimeout: .milliseconds(Int64(configuration.shutdownTimeoutSeconds * 1000)))
        let supervisor = DaemonSupervisor(engine: engine, notifier: notifier, configuration: configuration, paths: paths,
                                          status: statusReporter, logger: logger, reloadRequests: reloadRequests,
                                          startupFinished: startupFinished)
        self.supervisor = supervisor
        self.server = ControlServer(
            configuration: .init(socketPath: configuration.socket, socketMode: configuration.socketMode,
                                 socketGroupID: groupID, listenFD: listenFD,
                                 shutdownTimeout: .milliseconds(Int64(configuration.shutdownTimeoutSeconds * 1000))),
            handler: handler, logger: logger, onListening: { supervisor.listening() })
    }

    /// Returns once READY=1 was sent (socket bound with its final mode and owner, start-up model
    /// loaded or failed), or at once if that happened already.
    public func waitUntilReady() async { await supervisor.ready.wait() }

    /// True until the configured start-up model is loaded or failed (the HTTP API answers 503 "loading" meanwhile).
    public var isStartingUp: Bool { !supervisor.startupFinished.isSignalled }

    /// The service group: graceful shutdown on `gracefulShutdownSignals` (kvantd passes SIGTERM, SIGINT).
    /// Shutdown runs in reverse order: the supervisor (STOPPING=1) first, then the `listeners` (the HTTP
    /// API) drain (`/health` 503 `draining`, new requests 503, in-flight ones finish within
    /// `shutdown_timeout_seconds`, then the listeners close), then the control server. READY=1 waits until every listener listens.
    public func makeServiceGroup(gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint],
                                 listeners: [any ListeningService] = []) -> ServiceGroup {
        supervisor.listeners = listeners
        return ServiceGroup(configuration: .init(
            services: [.init(service: server)] + listeners.map { .init(service: $0) } + [.init(service: supervisor)],
            gracefulShutdownSignals: gracefulShutdownSignals,
            logger: logger))
    }
}

/// Keeps systemd's `STATUS=` current and turns model-load progress into `EXTEND_TIMEOUT_USEC`.
final class StatusReporter: @unchecked Sendable {
    let engine: Engine
    let notifier: SystemdNotifier
    private let lock = NSLock()
    private var lastStatus = ""
    private var lastExtend: UInt64 = 0

    init(engine: Engine, notifier: SystemdNotifier) {
        self.engine = engine
        self.notifier = notifier
    }

    func refresh() async {
        let line = await engine.statusLine()
        let changed = lock.withLock { () -> Bool in
            let changed = line != lastStatus
            lastStatus = line
            return changed
        }
        if changed { notifier.status(line) }
    }

    /// Records `line` as the engine state last reported (a STATUS= sent elsewhere was built from it).
    func remember(_ line: String) {
        lock.lock()
        lastStatus = line
        lock.unlock()
    }

    /// At most one EXTEND_TIMEOUT_USEC (by 90 s) per second while a model loads.
    func loadProgress(_ phase: String) {
        let now = DispatchTime.now().uptimeNanoseconds
        lock.lock()
        let due = now &- lastExtend >= 1_000_000_000 || lastExtend == 0
        if due { lastExtend = now }
        lock.unlock()
        if due { notifier.extendTimeout(microseconds: 90_000_000, status: "loading model: \(phase)") }
    }
}

/// Start-up model, readiness, reloads, watchdog and status: the daemon's conversation with systemd.
///
/// - READY=1 once the socket listens and the start-up model (if configured) is loaded; a failed
///   start-up load still gets READY=1 with the error in STATUS= (the daemon serves `load-model`).
/// - On a reload request (SIGHUP): RELOADING=1 + MONOTONIC_USEC, reload scales, READY=1; a failed
///   reload keeps the old scales and says so in STATUS=. When the configured start-up model failed
///   to load (say its scale file was broken) and nothing was loaded since, a reload retries that
///   load, so "fix the file, then `systemctl reload`" works at start-up too.
/// - WATCHDOG=1 every WATCHDOG_USEC/2 while the engine's compute lane is idle or making progress.
/// - STOPPING=1 when graceful shutdown begins.
public final class DaemonSupervisor: Service, @unchecked Sendable {
    private let engine: Engine
    private let notifier: SystemdNotifier
    private let configuration: DaemonConfiguration
    private let paths: PathPolicy
    private let status: StatusReporter
    private let logger: Logger
    private let reloadRequests: AsyncStream<Void>?
    private let (listeningStream, listeningContinuation) = AsyncStream<Void>.makeStream()
    let ready = OneShotEvent()
    /// True while the configured start-up model failed to load and no load succeeded since (a reload retries it).
    private var startupLoadFailed = false
    /// Signalled once the start-up model is loaded or failed (or shutdown came first); requests wait for it.
    let startupFinished: OneShotEvent
    /// Services that must listen before READY=1 (set by `Daemon.makeServiceGroup` before the group runs).
    var listeners: [any ListeningService] = []

    init(engine: Engine, notifier: SystemdNotifier, configuration: DaemonConfiguration, paths: PathPolicy,
         status: StatusReporter, logger: Logger, reloadRequests: AsyncStream<Void>?, startupFinished: OneShotEvent) {
        self.startupFinished = startupFinished
        self.engine = engine
        self.notifier = notifier
        self.configuration = configuration
        self.paths = paths
        self.status = status
        self.logger = logger
        self.reloadRequests = reloadRequests
    }

    /// Called by the server once the socket listens.
    func listening() {
        listeningContinuation.yield()
        listeningContinuation.finish()
    }

    public func run() async throws {
        // Trap SIGHUP before anything else: its default action would end the process, and systemd
        // may send a reload as soon as READY=1 is out.
        let hangups: UnixSignalsSequence? = reloadRequests == nil ? await UnixSignalsSequence(trapping: .sighup) : nil
        // Wait for the socket (or shutdown before it ever listened).
        for await _ in listeningStream.cancelOnGracefulShutdown() { break }
        for listener in listeners { await listener.waitUntilListening() }
        guard !Task.isShuttingDownGracefully, !Task.isCancelled else {
            startupFinished.signal()
            notifier.stopping(status: "stopping")
            return
        }
        await loadStartupModel()
        startupFinished.signal()
        notifier.ready(status: await engine.statusLine())
        ready.signal()
        logger.notice("ready")

        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.reloadLoop(hangups) }
            if let timeout = notifier.watchdogTimeoutMicroseconds() {
                group.addTask { await self.watchdogLoop(timeoutMicroseconds: timeout) }
            }
            group.addTask { await self.statusLoop() }
            try? await gracefulShutdown()
            group.cancelAll()
        }
        notifier.stopping(status: "stopping: draining requests")
        logger.notice("stopping")
    }

    private func loadStartupModel() async {
        guard let model = configuration.model else { return }
        notifier.extendTimeout(microseconds: 90_000_000, status: "loading model \(model)")
        do {
            let path = try paths.existingFile(model, field: "model")
            let scales = try configuration.quantizationParamPath.map {
                try paths.existingFile($0, field: "quantization_param_path")
            }
            _ = try await engine.loadModel(path: path, kvCacheDType: configuration.kvCacheDType,
                                           quantizationParamPath: scales, kvCacheBytes: nil, maxModelLen: nil,
                                           progress: { [status] in status.loadProgress($0) })
            startupLoadFailed = false
        } catch {
            let error = KvantError.normalized(error)
            logger.error("start-up model failed to load", metadata: ["model": "\(model)", "error": "\(error.message)"])
            await engine.recordFailure("start-up model failed: \(error.message)")
            startupLoadFailed = true
        }
    }

    private func reloadLoop(_ hangups: UnixSignalsSequence?) async {
        if let reloadRequests {
            for await _ in reloadRequests.cancelOnGracefulShutdown() { await reload() }
        } else if let hangups {
            for await _ in hangups.cancelOnGracefulShutdown() { await reload() }
        }
    }

    /// RELOADING=1 + MONOTONIC_USEC → reload scales → READY=1.
    func reload() async {
        notifier.reloading(status: "reloading scales")
        logger.notice("reloading scales")
        var message: String
        var failure: String?
        if await engine.modelInfo == nil, startupLoadFailed, let model = configuration.model {
            await loadStartupModel()
            if await engine.modelInfo != nil {
                message = "reload: loaded the configured model \(model)"
                logger.notice("\(message)")
            } else {
                message = "reload: the configured model \(model) still fails to load"
                failure = await engine.lastFailure
                logger.error("\(message)", metadata: ["error": "\(failure ?? "")"])
            }
        } else if await engine.modelInfo == nil {
            message = "reload: no model loaded, nothing to reload"
            logger.notice("\(message)")
        } else if let info = await engine.modelInfo, await !engine.hasScalesToReload {
            message = "reload: kv_cache_dtype \(info.kvCacheDType.rawValue) uses no scale file, nothing to reload"
            logger.notice("\(message)")
        } else {
            do {
                let report = try await engine.reloadScales(path: nil)
                message = "reloaded scales epoch \(report.epoch.map(String.init) ?? "?") sha256 \(report.sha256.prefix(12))"
                logger.notice("\(message)")
            } catch {
                let error = KvantError.normalized(error)
                failure = error.message
                message = "reload failed, serving with previous scales: \(error.message)"
                logger.error("reload failed", metadata: ["error": "\(error.message)"])
            }
        }
        let base = await engine.statusLine()
        var line = base
        // The engine's line ends with its last error, which this failed reload just set: say it once.
        if let failure, let last = await engine.lastFailure, last.hasSuffix(failure), line.hasSuffix("; \(last)") {
            line.removeLast(last.count + 2)
        }
        notifier.ready(status: "\(line); \(message)")
        // The periodic refresh replaces this STATUS only when the engine's state changes again.
        status.remember(base)
    }

    private func watchdogLoop(timeoutMicroseconds: UInt64) async {
        let interval = Duration.microseconds(Int64(timeoutMicroseconds / 2))
        while !Task.isCancelled {
            if engine.isAlive(window: timeoutMicroseconds * 1000) {
                notifier.watchdog()
            } else {
                logger.warning("compute lane made no progress; withholding WATCHDOG=1")
            }
            try? await Task.sleep(for: interval)
        }
    }

    private func statusLoop() async {
        guard notifier.isEnabled else { return }
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(5))
            if Task.isCancelled { break }
            await status.refresh()
        }
    }
}

/// An event that happens once; `wait()` returns after `signal()`.
final class OneShotEvent: @unchecked Sendable {
    private let lock = NSLock()
    private var signalled = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    var isSignalled: Bool { lock.lock(); defer { lock.unlock() }; return signalled }

    func signal() {
        lock.lock()
        signalled = true
        let pending = waiters
        waiters.removeAll()
        lock.unlock()
        for waiter in pending { waiter.resume() }
    }

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            lock.lock()
            if signalled {
                lock.unlock()
                continuation.resume()
            } else {
                waiters.append(continuation)
                lock.unlock()
            }
        }
    }
}
