import ControlProtocol
import Foundation
import KvantCore
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The control plane: JSON-RPC 2.0 over a Unix stream socket, one message per line.
///
/// A task per connection; requests on one connection run concurrently (a `generate` does not
/// block a `cancel` or `stats` sent after it), their replies and notifications are written
/// whole lines at a time. Bad input (an over-long line, invalid JSON, unknown method, bad params)
/// gets an error reply and the connection keeps working.
///
/// Graceful shutdown: stop accepting, refuse new requests (`unavailable`) on every open connection,
/// idle ones included, while the in-flight requests of all connections finish (for at most
/// `shutdownTimeout`, then they are cancelled); only then close the connections and remove the socket
/// file (unless it came from socket activation). So a client never sees its connection drop while the
/// daemon still drains: it gets an answer it can act on.
public final class ControlServer: Service, @unchecked Sendable {
    /// - Configuration keys: `socket`, `socket_mode`, `socket_group`, `shutdown_timeout_seconds`
    ///   (see `DaemonConfiguration`).
    public struct Configuration: Sendable {
        /// Path to bind; ignored when `listenFD` is set.
        public var socketPath: String
        /// Permission bits applied with chmod after bind (default 0660).
        public var socketMode: UInt32
        /// Group the socket file is chown'ed to; nil keeps the daemon's group.
        public var socketGroupID: UInt32?
        /// An already bound and listening socket (socket activation); the path is then not touched.
        public var listenFD: Int32?
        /// How long in-flight requests may run after shutdown began.
        public var shutdownTimeout: Duration
        /// Longest request line in bytes.
        public var maxLineBytes: Int

        public init(socketPath: String, socketMode: UInt32 = 0o660, socketGroupID: UInt32? = nil, listenFD: Int32? = nil,
                    shutdownTimeout: Duration = .seconds(30), maxLineBytes: Int = WireCodec.maxRequestLineBytes) {
            self.socketPath = socketPath
            self.socketMode = socketMode
            self.socketGroupID = socketGroupID
            self.listenFD = listenFD
            self.shutdownTimeout = shutdownTimeout
            self.maxLineBytes = maxLineBytes
        }
    }

    public let configuration: Configuration
    private let handler: RequestHandler
    private let logger: Logger
    private let onListening: @Sendable () async -> Void
    /// Every open connection's session, for the server-wide drain at shutdown.
    private let sessions = SessionRegistry()

    /// - Parameter onListening: called once the socket accepts connections (the daemon then loads
    ///   the start-up model and sends READY=1).
    public init(configuration: Configuration, handler: RequestHandler, logger: Logger,
                onListening: @escaping @Sendable () async -> Void = {}) {
        self.configuration = configuration
        self.handler = handler
        self.logger = logger
        self.onListening = onListening
    }

    public func run() async throws {
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.backlog, value: 128)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
        let initializer: @Sendable (Channel) -> EventLoopFuture<NIOAsyncChannel<ByteBuffer, ByteBuffer>> = { channel in
            channel.eventLoop.makeCompletedFuture {
                try makeClosingOnDeinit(NIOAsyncChannel<ByteBuffer, ByteBuffer>.self, channel,
                                        configuration: .init(isOutboundHalfClosureEnabled: true))
            }
        }
        let server: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
        let ownsPath: Bool
        if let fd = configuration.listenFD {
            do {
                server = try await bootstrap.bind(fd, childChannelInitializer: initializer)
            } catch {
                throw KvantError(.unavailable, "cannot listen on the socket passed by systemd (fd \(fd)): \(Self.systemText(error))")
            }
            ownsPath = false
            logger.notice("listening on the socket passed by systemd", metadata: ["fd": "\(fd)"])
        } else {
            server = try await bindPath(bootstrap, initializer: initializer)
            ownsPath = true
            logger.notice("listening", metadata: ["socket": "\(configuration.socketPath)"])
        }
        await onListening()

        await withDiscardingTaskGroup { group in
            do {
                // On shutdown the listener is closed and the loop runs until the stream ends, so
                // connections NIO accepted meanwhile are still served (and closed) rather than
                // dropped unfinished.
                try await withGracefulShutdownHandler {
                    try await server.executeThenClose { inbound in
                        for try await connection in inbound {
                            group.addTask { await self.serve(connection) }
                        }
                    }
                } onGracefulShutdown: {
                    server.channel.close(promise: nil)
                }
            } catch is CancellationError {
                // The group is stopping (another service failed, or shutdown): not an error of ours.
                logger.debug("accept loop cancelled")
            } catch {
                logger.error("accept loop ended", metadata: ["error": "\(error)"])
            }
            if ownsPath { unlink(configuration.socketPath) }
            logger.info("stopped accepting; draining connections")
        }
        logger.notice("control server stopped")
    }

    /// True when something accepts connections on the Unix socket at `path`.
    public static func socketIsLive(_ path: String) -> Bool {
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return rc == 0
    }

    /// An operator's words for a bind/listen error: the system's message for an errno, plain text for
    /// NIO's address errors, instead of NIO's type and case names.
    static func systemText(_ error: Error) -> String {
        if let io = error as? IOError { return "\(String(cString: strerror(io.errnoCode))) (errno \(io.errnoCode))" }
        if let address = error as? SocketAddressError, address == .unixDomainSocketPathTooLong {
            return "the socket path is longer than a Unix socket address allows (107 bytes)"
        }
        return "\(error)"
    }

    private func bindPath(_ bootstrap: ServerBootstrap,
                          initializer: @escaping @Sendable (Channel) -> EventLoopFuture<NIOAsyncChannel<ByteBuffer, ByteBuffer>>)
        async throws -> NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never> {
        let path = configuration.socketPath
        let directory = (path as NSString).deletingLastPathComponent
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.isEmpty ? "." : directory, isDirectory: &isDirectory),
              isDirectory.boolValue else {
            throw KvantError(.notFound, "socket directory \(directory) does not exist (RuntimeDirectory=kvant creates /run/kvant under systemd)")
        }
        // A socket file that still accepts connections belongs to a running daemon: never take it over
        // (a stale one, from a daemon that died, is replaced).
        if Self.socketIsLive(path) {
            throw KvantError(.unavailable, "another process is serving \(path) (a running kvantd?); stop it or choose another --socket")
        }
        // Created 0600 (umask), then widened with chmod: never more open than configured.
        let oldMask = umask(0o177)
        let server: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
        do {
            server = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true,
                                              childChannelInitializer: initializer)
            umask(oldMask)
        } catch {
            umask(oldMask)
            throw KvantError(.unavailable, "cannot bind \(path): \(Self.systemText(error))")
        }
        if let gid = configuration.socketGroupID, chown(path, uid_t.max, gid) != 0 {
            let message = String(cString: strerror(errno))
            try? await server.channel.close()
            throw KvantError(.permissionDenied, "cannot chown \(path) to gid \(gid): \(message)")
        }
        if chmod(path, mode_t(configuration.socketMode)) != 0 {
            let message = String(cString: strerror(errno))
            try? await server.channel.close()
            throw KvantError(.permissionDenied, "cannot chmod \(path) to \(String(configuration.socketMode, radix: 8)): \(message)")
        }
        return server
    }

    private static func peerCredentials(_ channel: Channel) async -> PeerCredentials? {
        guard let provider = channel as? SocketOptionProvider else { return nil }
        do {
            let cred: LinuxUCred = try await provider.unsafeGetSocketOption(
                level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED)).get()
            return PeerCredentials(pid: cred.pid, uid: cred.uid, gid: cred.gid)
        } catch {
            return nil
        }
    }

    private func serve(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async {
        let engine = handler.engine
        await engine.connectionOpened()
        let peer = await Self.peerCredentials(connection.channel)
        var connectionLogger = logger
        connectionLogger[metadataKey: "peer"] = "\(peer.map(\.description) ?? "unknown")"
        let log = connectionLogger
        log.debug("connection opened")
        do {
            try await connection.executeThenClose { inbound, outbound in
                let writer = ConnectionWriter(outbound)
                let session = ConnectionSession()
                let sessions = self.sessions
                await sessions.add(session)
                defer { Task { await sessions.remove(session) } }
                let channel = connection.channel
                let timeout = configuration.shutdownTimeout
                // The peer closed its end (EPOLLHUP; a half-close only ends our input): cancel what it
                // still has running, e.g. a non-streaming generate that would otherwise hold a slot
                // and the CPU until max_tokens.
                channel.closeFuture.whenComplete { _ in
                    Task {
                        let cancelled = await session.connectionClosed()
                        if cancelled > 0 {
                            log.info("connection closed by the client; cancelled its running requests",
                                     metadata: ["cancelled": "\(cancelled)"])
                        }
                    }
                }
                await withGracefulShutdownHandler {
                    var framer = LineFramer(maxLineBytes: configuration.maxLineBytes)
                    do {
                        for try await buffer in inbound {
                            framer.append(buffer.readableBytesView)
                            while let event = framer.nextLine() {
                                switch event {
                                case .overlong(let seen):
                                    log.warning("request line over the limit dropped", metadata: ["bytes": "\(seen)"])
                                    await writer.send(RPCResponse(id: nil, error: RPCErrorObject(
                                        code: RPCErrorCode.invalidRequest,
                                        message: "request line exceeds \(configuration.maxLineBytes) bytes (\(seen) bytes without a newline); the line was dropped",
                                        reason: .invalidArgument)))
                                case .line(let line):
                                    await self.dispatch(line, peer: peer, writer: writer, session: session, log: log)
                                }
                            }
                        }
                    } catch {
                        log.debug("connection read ended", metadata: ["error": "\(error)"])
                    }
                    // A last request without its newline before EOF or half-close is still answered.
                    if case .line(let line)? = framer.finish() {
                        await self.dispatch(line, peer: peer, writer: writer, session: session, log: log)
                    }
                    // Input ended (EOF, half-close or shutdown): finish what was asked, then close.
                    await session.waitUntilIdle()
                } onGracefulShutdown: {
                    Task {
                        await session.shutDown(timeout: timeout, channel: channel, log: log,
                                               othersBusy: { await sessions.anyBusy(besides: session) })
                    }
                }
            }
        } catch {
            log.debug("connection closed with error", metadata: ["error": "\(error)"])
        }
        await engine.connectionClosed()
        log.debug("connection closed")
    }

    private func dispatch(_ line: [UInt8], peer: PeerCredentials?, writer: ConnectionWriter, session: ConnectionSession,
                          log: Logger) async {
        if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { return }   // blank lines (hand typing)
        let request: RPCRequest
        switch WireCodec.decodeRequest(line: line) {
        case .failure(let failure):
            await writer.send(failure.response)
            return
        case .success(let decoded):
            request = decoded
        }
        if await session.isShuttingDown {
            if request.id != nil {
                await writer.send(RPCResponse(id: request.id, error: RPCErrorObject(KvantError(.unavailable, "kvantd is shutting down"))))
            }
            return
        }
        if request.method == RPCMethod.cancel.rawValue {
            let response: RPCResponse
            do {
                let params = try request.decodeParams(CancelParams.self)
                let cancelled = await session.cancel(params.id)
                response = RPCResponse(id: request.id, result: try JSONValue(encoding: CancelResult(cancelled: cancelled)))
            } catch {
                response = RPCResponse(id: request.id, error: RPCErrorObject(KvantError.normalized(error)))
            }
            if request.id != nil { await writer.send(response) }
            return
        }
        let context = RequestContext(peer: peer, notify: { await writer.send($0) })
        let handler = self.handler
        let started = await session.start(id: request.id, {
            let response = await handler.handle(request, context: context)
            return request.id != nil ? response : nil
        }, reply: { await writer.send($0) })
        if !started, let id = request.id {
            await writer.send(RPCResponse(id: id, error: RPCErrorObject(
                code: RPCErrorCode.invalidRequest, message: "invalid request: id \(id) is already used by a running request on this connection",
                reason: .invalidArgument)))
        }
    }
}

/// NIO's deinit-closing wrapper of an accepted connection (`init(synchronouslyWrapping:)`), reached
/// through a protocol so the build stays free of its deprecation warning. It is the variant Kvant
/// needs: a connection accepted while the listener closes can be dropped by NIO before it reaches the
/// accept loop; the non-closing `init(wrappingChannelSynchronously:)` then traps ("Deinited
/// NIOAsyncWriter without calling finish()"), this one closes the connection instead.
protocol ClosingOnDeinitWrapping {
    init(synchronouslyWrapping channel: Channel, configuration: NIOAsyncChannel<ByteBuffer, ByteBuffer>.Configuration) throws
}

extension NIOAsyncChannel: ClosingOnDeinitWrapping where Inbound == ByteBuffer, Outbound == ByteBuffer {}

func makeClosingOnDeinit<T: ClosingOnDeinitWrapping>(_ type: T.Type, _ channel: Channel,
                                                     configuration: NIOAsyncChannel<ByteBuffer, ByteBuffer>.Configuration) throws -> T {
    try T(synchronouslyWrapping: channel, configuration: configuration)
}

/// `struct ucred` of <sys/socket.h> (hidden behind _GNU_SOURCE in the Glibc module): pid, uid, gid.
struct LinuxUCred: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

/// Serialises whole-line writes of one connection.
actor ConnectionWriter {
    private let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    private var broken = false

    init(_ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) {
        self.outbound = outbound
    }

    /// Writes one message line; false when the connection is gone.
    @discardableResult
    func send<T: Encodable>(_ message: T) async -> Bool {
        guard !broken else { return false }
        do {
            let bytes = try WireCodec.encodeLine(message)
            // Written from a fresh task: the final reply of a cancelled request must still go out,
            // and NIO's writer refuses writes from a cancelled task.
            let outbound = self.outbound
            try await Task { try await outbound.write(ByteBuffer(bytes: bytes)) }.value
            return true
        } catch {
            broken = true
            return false
        }
    }
}

/// The in-flight requests of one connection, for `cancel`, for cancelling everything when the
/// client disconnects, and for draining at shutdown.
///
/// A request's id is released before its final reply is written, so a client that reuses the id
/// as soon as it read the reply is never refused; the task itself stays tracked (for draining)
/// until the reply is out.
///
/// Public for tests only (the daemon's control server is its one user).
public actor ConnectionSession {
    private var ids: [RPCID: UUID] = [:]
    private var tasks: [UUID: Task<Void, Never>] = [:]
    /// Tasks whose work is done and whose reply is being written: still tracked (for draining), but
    /// no longer cancellable work, so a close seen now does not count them as cancelled.
    private var replying: Set<UUID> = []
    private var idleWaiters: [CheckedContinuation<Void, Never>] = []
    private(set) var isShuttingDown = false
    private(set) var isClosed = false

    /// Starts `work` as a task tracked under `id`; its response (if any) goes to `reply` after the id
    /// was released. False when `id` is already running.
    public init() {}

    public func start(id: RPCID?, _ work: @escaping @Sendable () async -> RPCResponse?,
                      reply: @escaping @Sendable (RPCResponse) async -> Void) -> Bool {
        if let id, ids[id] != nil { return false }
        let key = UUID()
        if let id { ids[id] = key }
        let task = Task {
            let response = await work()
            self.release(id: id, key: key)
            if let response { await reply(response) }
            self.finished(key: key)
        }
        tasks[key] = task
        if isClosed { task.cancel() }
        return true
    }

    private func release(id: RPCID?, key: UUID) {
        if let id, ids[id] == key { ids[id] = nil }
        replying.insert(key)
    }

    private func finished(key: UUID) {
        tasks[key] = nil
        replying.remove(key)
        wakeIfIdle()
    }

    private var isIdle: Bool { tasks.isEmpty }

    /// Requests still running (tracked tasks, replies being written included).
    public var runningCount: Int { tasks.count }

    private func wakeIfIdle() {
        guard isIdle else { return }
        for waiter in idleWaiters { waiter.resume() }
        idleWaiters.removeAll()
    }

    func cancel(_ id: RPCID) -> Bool {
        guard let key = ids[id], let task = tasks[key] else { return false }
        task.cancel()
        return true
    }

    /// The client closed the connection: cancel every request still running for it (their replies
    /// have nowhere to go). Returns how many were cancelled: requests whose work was still running,
    /// not those already done and writing their reply (a client that read its reply and closed at
    /// once cancelled nothing).
    @discardableResult
    public func connectionClosed() -> Int {
        isClosed = true
        for task in tasks.values { task.cancel() }
        return tasks.keys.filter { !replying.contains($0) }.count
    }

    public func waitUntilIdle() async {
        if isIdle { return }
        await withCheckedContinuation { idleWaiters.append($0) }
    }

    /// Refuses new requests (`unavailable`), waits up to `timeout` until this connection's in-flight
    /// requests and those of every other connection (`othersBusy`) finished, cancels what is left of
    /// its own (logging how many), then closes. An idle connection therefore stays open, answering
    /// `unavailable`, while the daemon drains.
    func shutDown(timeout: Duration, channel: Channel, log: Logger, othersBusy: @Sendable () async -> Bool) async {
        isShuttingDown = true
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if isIdle, !(await othersBusy()) { break }
            try? await Task.sleep(for: .milliseconds(20))
        }
        if !tasks.isEmpty {
            log.warning("shutdown grace ran out; cancelling requests still running",
                        metadata: ["cancelled": "\(tasks.count)", "grace_seconds": "\(timeout)"])
        }
        for task in tasks.values { task.cancel() }
        await waitUntilIdle()
        try? await channel.close()
    }
}

/// The sessions of all open connections (for the server-wide drain at shutdown).
actor SessionRegistry {
    private var sessions: [ObjectIdentifier: ConnectionSession] = [:]

    func add(_ session: ConnectionSession) { sessions[ObjectIdentifier(session)] = session }

    func remove(_ session: ConnectionSession) { sessions[ObjectIdentifier(session)] = nil }

    /// True while a connection other than `session` has requests running.
    func anyBusy(besides session: ConnectionSession) async -> Bool {
        for (key, other) in sessions where key != ObjectIdentifier(session) {
            if await other.runningCount > 0 { return true }
        }
        return false
    }
}
