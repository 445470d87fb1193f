import Foundation
import KvantCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A blocking client for the control socket, used by `kvantctl` and by the daemon's tests.
///
/// One connection; `call` writes a request line and reads lines until the response with the
/// same id arrives, handing notifications to a closure on the way. `send` is safe from another
/// thread while a `call` waits (writes are serialised), which is how `kvantctl` sends `cancel`
/// on Ctrl-C over the same connection.
public final class ControlClient: @unchecked Sendable {
    /// The default socket path (`/run/kvant/kvantd.sock`).
    public static let defaultSocketPath = "/run/kvant/kvantd.sock"

    public let socketPath: String
    private var fd: Int32
    private let writeLock = NSLock()
    private let idLock = NSLock()
    private var nextID = 1
    private var framer = LineFramer(maxLineBytes: WireCodec.maxResponseLineBytes)

    /// Connects to the Unix stream socket at `socketPath`.
    /// - Throws: `KvantError(.unavailable)` when nothing listens there, `.permissionDenied` when
    ///   the socket's mode forbids connecting, `.invalidArgument` for a path longer than `sun_path`.
    /// - Parameter timeout: seconds a single read or write may block (SO_RCVTIMEO/SO_SNDTIMEO);
    ///   nil waits forever (long generations). A timeout throws `KvantError(.unavailable)`.
    public init(socketPath: String, timeout: Double? = nil) throws {
        self.socketPath = socketPath
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !pathBytes.isEmpty, pathBytes.count < capacity else {
            throw KvantError(.invalidArgument, "socket path '\(socketPath)' is empty or longer than \(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
            raw[pathBytes.count] = 0
        }
        #if canImport(Glibc)
        let socketFD = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let socketFD = socket(AF_UNIX, SOCK_STREAM, 0)
        #endif
        guard socketFD >= 0 else {
            throw KvantError(.internal, "socket(AF_UNIX): \(String(cString: strerror(errno)))")
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(socketFD, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if result != 0 {
            let code = errno
            _ = Glibc.close(socketFD)
            let text = String(cString: strerror(code))
            switch code {
            case EACCES, EPERM:
                throw KvantError(.permissionDenied, "cannot connect to \(socketPath): \(text) (are you in the socket's group?)")
            default:
                throw KvantError(.unavailable, "cannot connect to \(socketPath): \(text) (is kvantd running?)")
            }
        }
        fd = socketFD
        if let timeout, timeout > 0 {
            var value = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - timeout.rounded(.down)) * 1_000_000))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    deinit {
        if fd >= 0 { _ = Glibc.close(fd) }
    }

    /// Half-closes the connection (`shutdown(SHUT_WR)`): the daemon sees the end of the requests and
    /// still answers the last one, even without its newline; replies can still be read.
    public func finishWriting() {
        if fd >= 0 { _ = shutdown(fd, Int32(SHUT_WR)) }
    }

    /// Closes the connection; later calls fail with `.unavailable`.
    public func close() {
        writeLock.lock()
        defer { writeLock.unlock() }
        if fd >= 0 {
            _ = shutdown(fd, Int32(SHUT_RDWR))
            _ = Glibc.close(fd)
            fd = -1
        }
    }

    /// A fresh request id (1, 2, 3, …) for this connection.
    public func makeID() -> RPCID {
        idLock.lock()
        defer { idLock.unlock() }
        let id = nextID
        nextID += 1
        return .number(id)
    }

    /// Writes raw bytes (one or more lines, or a deliberately broken line in tests).
    public func sendRaw(_ bytes: [UInt8]) throws {
        writeLock.lock()
        defer { writeLock.unlock() }
        guard fd >= 0 else { throw KvantError(.unavailable, "connection to \(socketPath) is closed") }
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                Glibc.send(fd, raw.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw KvantError(.unavailable, "write to \(socketPath) failed: \(String(cString: strerror(errno)))")
            }
            offset += written
        }
    }

    /// Writes one request line.
    public func send(_ request: RPCRequest) throws {
        try sendRaw(try WireCodec.encodeLine(request))
    }

    /// Reads the next raw line from the daemon, or nil at end of stream.
    /// - Throws: `.unavailable` on read errors, `.internal` for a line over `maxResponseLineBytes`.
    public func readLine() throws -> [UInt8]? {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            switch framer.nextLine() {
            case .line(let line)?: return line
            case .overlong(let seen)?:
                throw KvantError(.internal, "the daemon sent a line over \(WireCodec.maxResponseLineBytes) bytes (\(seen) read)")
            case nil: break
            }
            let count = chunk.withUnsafeMutableBytes { raw in recv(fd, raw.baseAddress!, raw.count, 0) }
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    throw KvantError(.unavailable, "no reply from kvantd on \(socketPath) within the timeout")
                }
                throw KvantError(.unavailable, "read from \(socketPath) failed: \(String(cString: strerror(errno)))")
            }
            if count == 0 { return nil }
            framer.append(chunk[0..<count])
        }
    }

    /// Reads the next message from the daemon.
    /// - Throws: `.unavailable` when the daemon closed the connection.
    public func readMessage() throws -> RPCServerMessage {
        guard let line = try readLine() else {
            throw KvantError(.unavailable, "kvantd closed the connection")
        }
        return try WireCodec.decodeServerMessage(line: line)
    }

    /// Sends `request` and reads until its response, passing notifications to `onNotification`.
    /// Responses to other ids (e.g. of a `cancel` sent meanwhile) are skipped.
    public func roundTrip(_ request: RPCRequest,
                          onNotification: (RPCNotification) throws -> Void = { _ in }) throws -> RPCResponse {
        try send(request)
        while true {
            switch try readMessage() {
            case .notification(let notification): try onNotification(notification)
            case .response(let response):
                if response.id == request.id || (response.id == nil && response.error != nil) { return response }
            }
        }
    }

    /// Calls `method` with typed params and decodes the typed result.
    /// - Throws: `RPCErrorObject` for an error reply (its `reason` gives the class), `KvantError` for transport failures.
    public func call<P: Encodable, R: Decodable>(_ method: RPCMethod, _ params: P, as result: R.Type,
                                                 id: RPCID? = nil,
                                                 onNotification: (RPCNotification) throws -> Void = { _ in }) throws -> R {
        let request = try RPCRequest(id: id ?? makeID(), method: method, params: params)
        return try roundTrip(request, onNotification: onNotification).decodeResult(R.self)
    }

    /// Sends `cancel` for `id` without waiting for its reply (safe from a signal-handling thread).
    public func sendCancel(of id: RPCID) throws {
        try send(try RPCRequest(id: makeID(), method: .cancel, params: CancelParams(id: id)))
    }
}

/// Exit codes of `kvantctl`, one per `ErrorReason` (documented in docs/protocol.md); other failures exit 1.
public enum ClientExitCode {
    public static let success: Int32 = 0
    /// Usage errors found by the argument parser (EX_USAGE).
    public static let usage: Int32 = 64

    public static func code(for reason: ErrorReason) -> Int32 {
        switch reason {
        case .invalidArgument: return 2
        case .notFound: return 3
        case .failedPrecondition: return 4
        case .resourceExhausted: return 5
        case .unavailable: return 6
        case .permissionDenied: return 7
        case .cancelled: return 8
        case .internal: return 9
        }
    }
}
