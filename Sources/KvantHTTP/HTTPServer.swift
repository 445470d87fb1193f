import Foundation
import Hummingbird
import KvantCore
import KvantDaemon
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle

/// Settings of the HTTP API (from `DaemonConfiguration`; see docs/http.md).
public struct HTTPSettings: Sendable {
    /// TCP listener; nil = none (`http_port = 0`, `--no-http`).
    public var host: String
    public var port: Int?
    /// Also listen on this Unix socket.
    public var unixSocket: String?
    /// Required as `Authorization: Bearer …` on every route but /health and /metrics; nil = no key.
    public var apiKey: String?
    public var servedModelName: String?
    /// Jinja chat template file overriding the model's.
    public var chatTemplatePath: String?
    public var maxRequestBodyBytes: Int
    public var maxNumSeqs: Int
    public var maxQueuedRequests: Int
    /// Idle connections (no request in progress, or a request not sent on) are closed after this long.
    public var timeoutKeepAlive: Duration
    /// How long in-flight generations may run after graceful shutdown began before they are cancelled.
    public var shutdownTimeout: Duration

    public init(_ c: DaemonConfiguration) {
        host = c.httpHost
        port = c.httpPort == 0 ? nil : c.httpPort
        unixSocket = c.httpUnixSocket
        apiKey = c.apiKey
        servedModelName = c.servedModelName
        chatTemplatePath = c.chatTemplate
        maxRequestBodyBytes = c.maxRequestBodyBytes
        maxNumSeqs = c.maxNumSeqs
        maxQueuedRequests = c.maxQueuedRequests
        timeoutKeepAlive = .seconds(c.timeoutKeepAlive)
        shutdownTimeout = .milliseconds(Int64(c.shutdownTimeoutSeconds * 1000))
    }

    /// True when the configuration asks for any HTTP listener.
    public var isEnabled: Bool { port != nil || unixSocket != nil }
}

/// The OpenAI-compatible HTTP API as a service of the daemon's `ServiceGroup` (Hummingbird 2).
///
/// Listens on `host:port` and/or a Unix socket before READY=1 (`waitUntilListening`). Graceful
/// shutdown drains first, with the listeners still open: `/health` answers 503 `draining` and new
/// requests get 503 + `Retry-After` (so a load balancer stops sending work and resends what came
/// meanwhile), while the requests in flight run to their end. Generations still running
/// `shutdown_timeout_seconds` later are cancelled, so every stream ends with a final chunk
/// (`finish_reason: "abort"`) and `data: [DONE]`. Only then do the listeners close (Hummingbird's
/// graceful shutdown: responses being written are finished, idle keep-alive connections closed).
public final class KvantHTTPServer: ListeningService, @unchecked Sendable {
    public let settings: HTTPSettings
    let api: OpenAIAPI
    private let logger: Logger
    private let listening = ListeningSignal()
    private let lock = NSLock()
    private var listenersUp = 0
    private var port: Int?

    /// - Parameters:
    ///   - isStartingUp: true while the start-up model loads (`Daemon.isStartingUp`).
    ///   - metrics: the exporter of the registry the engine's counters write to.
    /// - Throws: `KvantError` for an unreadable `chat_template` file.
    ///   - drain: the daemon's draining state (`Daemon.drain`), shared with the `drain` control method.
    public init(settings: HTTPSettings, engine: Engine, isStartingUp: @escaping @Sendable () -> Bool,
                metrics: MetricsExporter, logger: Logger, drain: DrainState = DrainState()) throws {
        self.settings = settings
        self.logger = logger
        api = OpenAIAPI(engine: engine, isStartingUp: isStartingUp, settings: settings,
                        templates: try ChatTemplateResolver(overridePath: settings.chatTemplatePath),
                        tracker: GenerationTracker(capacity: settings.maxNumSeqs + settings.maxQueuedRequests, drain: drain),
                        metrics: metrics, logger: logger)
    }

    /// The HTTP API of `daemon`, configured by its configuration.
    public convenience init(daemon: Daemon, metrics: MetricsExporter, logger: Logger) throws {
        try self.init(settings: HTTPSettings(daemon.configuration), engine: daemon.engine,
                      isStartingUp: { daemon.isStartingUp }, metrics: metrics, logger: logger, drain: daemon.drain)
    }

    /// The TCP port bound (useful with port 0), once listening.
    public var boundPort: Int? { lock.lock(); defer { lock.unlock() }; return port }

    public func waitUntilListening() async { await listening.wait() }

    public func run() async throws {
        var addresses: [BindAddress] = []
        var names: [String] = []
        if let port = settings.port {
            addresses.append(.hostname(settings.host, port: port))
            names.append("\(settings.host):\(port)")
            if settings.apiKey == nil && !Self.isLoopback(settings.host) {
                logger.warning("the HTTP API listens on a non-loopback address without an API key: anyone who can reach \(settings.host):\(port) can use the model; set api_key (--api-key)")
            }
        }
        if let path = settings.unixSocket {
            addresses.append(.unixDomainSocket(path: path))
            names.append(path)
        }
        guard !addresses.isEmpty else { listening.signal(); return }
        let expected = addresses.count
        // Hummingbird's own start-up lines repeat ours; its errors still come through.
        var serverLogger = logger
        serverLogger.logLevel = max(logger.logLevel, .notice)
        let apps = zip(addresses, names).map { address, name in
            BoundApplication(name: name, app: Application(
                router: api.makeRouter(),
                server: .kvantHTTP1(configuration: .init(additionalChannelHandlers: [ClientDisconnectHandler()],
                                                    idleTimeout: .nanoseconds(Int64(settings.timeoutKeepAlive.components.seconds) * 1_000_000_000))),
                configuration: .init(address: address, serverName: "kvantd"),
                onServerRunning: { [self] channel in self.up(channel, name: name, expected: expected) },
                logger: serverLogger))
        }
        // The listeners run in a group of their own, in a detached task: the daemon's graceful shutdown
        // must not reach Hummingbird before the drain ends (a nested ServiceGroup inherits its parent's).
        let listeners = ServiceGroup(configuration: .init(services: apps.map { .init(service: $0) }, logger: serverLogger))
        let runner = Task.detached { try await listeners.run() }
        let drainer = DrainerBox()
        do {
            try await withTaskCancellationHandler {
                try await withGracefulShutdownHandler {
                    try await runner.value
                } onGracefulShutdown: { [self] in
                    drainer.set(Task { await self.drainThenClose(listeners) })
                }
            } onCancel: {
                runner.cancel()
            }
        } catch {
            // Logged here, as it happens, so the cause is the first error line of the log (the other services'
            // shutdown lines follow it). `listening` is not signalled: the supervisor must not send READY=1; the
            // group's cancellation ends its wait.
            if !(error is CancellationError) { logger.error("\((error as? KvantError)?.message ?? "\(error)")") }
            drainer.cancel()
            throw error
        }
        drainer.cancel()
        if let path = settings.unixSocket { unlink(path) }
        logger.notice("HTTP API stopped")
    }

    /// Graceful shutdown: drain (listeners open), cancel what still runs at the deadline, then close.
    private func drainThenClose(_ listeners: ServiceGroup) async {
        let drain = api.tracker.drain
        drain.begin(.shutdown)
        let inFlight = drain.inFlightCount
        logger.notice("draining HTTP requests", metadata: ["in_flight": "\(inFlight)",
                                                          "shutdown_timeout_seconds": "\(settings.shutdownTimeout)"])
        if !(await drain.waitUntilIdle(timeout: settings.shutdownTimeout)) {
            logger.warning("shutdown_timeout_seconds passed with HTTP requests in flight; cancelling them",
                           metadata: ["in_flight": "\(drain.inFlightCount)"])
            api.tracker.cancelAll()
            await drain.waitUntilIdle()
        }
        await listeners.triggerGracefulShutdown()
    }

    private func up(_ channel: any Channel, name: String, expected: Int) {
        lock.lock()
        listenersUp += 1
        if let p = channel.localAddress?.port { port = p }
        let all = listenersUp == expected
        lock.unlock()
        logger.notice("HTTP API listening", metadata: ["address": "\(channel.localAddress?.port.map { "\(name) (port \($0))" } ?? name)"])
        if all { listening.signal() }
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// An operator's words for a listener that could not start: the address, the system's words, the errno's
    /// name and number (`Address already in use (EADDRINUSE, errno 98)`), and for a port in use what to do.
    static func bindError(_ error: Error, _ name: String) -> Error {
        if let io = error as? IOError {
            let code = io.errnoCode
            let symbol = errnoName(code).map { "\($0), " } ?? ""
            var message = "cannot listen for HTTP on \(name): \(String(cString: strerror(code))) (\(symbol)errno \(code))"
            if code == EADDRINUSE {
                message += "; another process listens there: stop it, or choose another http_port (--port) or http_unix_socket"
            }
            return KvantError(.unavailable, message)
        }
        if error is SocketAddressError {
            return KvantError(.unavailable, "cannot listen for HTTP on \(name): not a usable address (\(error))")
        }
        return error
    }
}

/// The symbolic name of the errno values a listen can fail with.
func errnoName(_ code: Int32) -> String? {
    switch code {
    case EADDRINUSE: return "EADDRINUSE"
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL"
    case EACCES: return "EACCES"
    case EPERM: return "EPERM"
    case EAFNOSUPPORT: return "EAFNOSUPPORT"
    case EINVAL: return "EINVAL"
    case ENOENT: return "ENOENT"
    case ENOTDIR: return "ENOTDIR"
    case EROFS: return "EROFS"
    case ENAMETOOLONG: return "ENAMETOOLONG"
    case EMFILE: return "EMFILE"
    default: return nil
    }
}

/// One listener: a Hummingbird application, its bind errors in an operator's words.
private struct BoundApplication<App: ApplicationProtocol>: Service {
    let name: String
    let app: App
    func run() async throws {
        do { try await app.run() } catch { throw KvantHTTPServer.bindError(error, name) }
    }
}

/// The drain task, cancelled when the server stops first.
private final class DrainerBox: @unchecked Sendable {
    private let lock = NSLock()
    private var task: Task<Void, Never>?
    private var done = false
    func set(_ task: Task<Void, Never>) {
        lock.lock(); defer { lock.unlock() }
        if done { task.cancel() } else { self.task = task }
    }
    func cancel() {
        lock.lock(); defer { lock.unlock() }
        done = true
        task?.cancel()
    }
}
