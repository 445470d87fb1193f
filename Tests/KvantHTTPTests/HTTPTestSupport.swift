import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantHTTP
import KvantTestSupport
import Logging
import Prometheus
import ServiceLifecycle
import Testing

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// An in-process daemon with the fake backend, its control socket and the HTTP API on an ephemeral
/// loopback port (and optionally a Unix socket).
final class TestHTTPDaemon: @unchecked Sendable {
    let dir: String
    let allowed: String
    let socketPath: String
    let daemon: Daemon
    let http: KvantHTTPServer
    let group: ServiceGroup
    let backend: FakeBackend
    private var runTask: Task<Void, Error>?

    /// - Parameter tcp: listen on an ephemeral loopback port (else only on `http_unix_socket`).
    init(tag: String, backend: FakeBackend = FakeBackend(), tcp: Bool = true,
         configure: (inout DaemonConfiguration, String) -> Void = { _, _ in }) throws {
        var configuration: DaemonConfiguration
        (dir, allowed, socketPath, configuration) = try makeTestDaemonConfiguration(tag: "h-" + tag)
        configuration.httpHost = "127.0.0.1"
        configure(&configuration, dir)
        self.backend = backend
        var logger = Logger(label: "kvantd-http-test")
        logger.logLevel = ProcessInfo.processInfo.environment["KVANT_TEST_LOG"] != nil ? .trace : .warning
        let registry = PrometheusCollectorRegistry()
        let (stream, _) = AsyncStream<Void>.makeStream()
        daemon = try Daemon(configuration: configuration, backend: backend, notifier: .disabled, logger: logger,
                            reloadRequests: stream, metricsFactory: MetricsExporter.makeMetricsFactory(registry: registry))
        var settings = HTTPSettings(configuration)
        settings.port = tcp ? 0 : nil   // 0 = an ephemeral port (KvantHTTPServer.boundPort)
        http = try KvantHTTPServer(settings: settings, engine: daemon.engine, isStartingUp: { [daemon] in daemon.isStartingUp },
                                   metrics: MetricsExporter(registry: registry), logger: logger, drain: daemon.drain)
        group = daemon.makeServiceGroup(gracefulShutdownSignals: [], listeners: [http])
    }

    var port: Int { http.boundPort ?? -1 }

    /// Starts the group and waits for READY (control socket and HTTP listening, start-up model done).
    func start() async throws {
        let group = self.group
        runTask = Task { try await group.run() }
        let daemon = self.daemon
        let ready = Task { await daemon.waitUntilReady() }
        let timeout = Task { try await Task.sleep(for: .seconds(20)); ready.cancel() }
        await ready.value
        timeout.cancel()
    }

    func stop() async throws {
        await group.triggerGracefulShutdown()
        try await runTask?.value
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Starts the shutdown without waiting for it.
    func beginStop() async {
        await group.triggerGracefulShutdown()
    }

    func waitStopped() async throws {
        try await runTask?.value
        try? FileManager.default.removeItem(atPath: dir)
    }

    func client() throws -> ControlClient { try ControlClient(socketPath: socketPath, timeout: 120) }

    /// Loads a fake model file `model.gguf` through the control socket.
    func loadModel() async throws {
        let path = allowed + "/model.gguf"
        try "GGUF fake".write(toFile: path, atomically: true, encoding: .utf8)
        let socketPath = self.socketPath
        _ = try await offPool {
            try ControlClient(socketPath: socketPath, timeout: 120).call(.loadModel, LoadModelParams(path: path), as: LoadModelResult.self)
        }
    }

    func stats() async throws -> StatsResult {
        let socketPath = self.socketPath
        return try await offPool { try ControlClient(socketPath: socketPath, timeout: 120).call(.stats, EmptyParams(), as: StatsResult.self) }
    }

    /// One request on a new connection (blocking work off the pool).
    func request(_ method: String, _ path: String, json: String? = nil, headers: [String: String] = [:]) async throws -> HTTPTestResponse {
        let port = self.port
        return try await offPool {
            let connection = try RawHTTPConnection(port: port)
            defer { connection.close() }
            try connection.send(method: method, path: path, body: json.map { Data($0.utf8) }, headers: headers)
            return try connection.readResponse()
        }
    }

    /// Polls `condition` on `stats` until true (an event, not a duration: the limit only ends a failing test).
    func waitForStats(_ what: String, _ condition: @escaping (StatsResult) -> Bool) async throws -> StatsResult {
        for _ in 0..<2000 {
            let stats = try await self.stats()
            if condition(stats) { return stats }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw TestFailure("stats never showed: \(what)")
    }
}

/// A response read by `RawHTTPConnection`.
struct HTTPTestResponse: Sendable {
    var status: Int
    /// Header names lowercased.
    var headers: [String: String]
    var body: Data

    var text: String { String(decoding: body, as: UTF8.self) }
    var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:] }
    /// `error` of an OpenAI error body.
    var error: [String: Any] { json["error"] as? [String: Any] ?? [:] }
}

/// A minimal HTTP/1.1 client over a blocking socket (TCP loopback or Unix), with full control over
/// framing and disconnects: what the tests need and no HTTP library hides.
final class RawHTTPConnection {
    let fd: Int32
    private var buffer: [UInt8] = []

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket() failed") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { Glibc.close(fd); throw TestFailure("connect to 127.0.0.1:\(port) failed: errno \(errno)") }
        setTimeout()
    }

    init(unixPath: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket() failed") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(unixPath.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { Glibc.close(fd); throw TestFailure("connect to \(unixPath) failed: errno \(errno)") }
        setTimeout()
    }

    private func setTimeout() {
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func close() { Glibc.close(fd) }

    func sendRaw(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw TestFailure("send failed: errno \(errno)") }
            sent += n
        }
    }

    func send(method: String, path: String, body: Data?, headers: [String: String] = [:]) throws {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\n"
        var all = headers
        if let body {
            if all["Content-Type"] == nil { all["Content-Type"] = "application/json" }
            all["Content-Length"] = String(body.count)
        }
        for (k, v) in all.sorted(by: { $0.key < $1.key }) { head += "\(k): \(v)\r\n" }
        head += "\r\n"
        try sendRaw(Array(head.utf8) + (body.map { Array($0) } ?? []))
    }

    private func fill() throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n < 0 { throw TestFailure("recv failed: errno \(errno)") }
        if n == 0 { return false }
        buffer += chunk[0..<n]
        return true
    }

    private func readLine() throws -> String {
        while true {
            if let i = buffer.firstIndex(of: 10) {
                var line = Array(buffer[0..<i])
                buffer.removeFirst(i + 1)
                if line.last == 13 { line.removeLast() }
                return String(decoding: line, as: UTF8.self)
            }
            guard try fill() else { throw TestFailure("connection closed inside a line") }
        }
    }

    private func readExactly(_ n: Int) throws -> [UInt8] {
        while buffer.count < n { guard try fill() else { throw TestFailure("connection closed after \(buffer.count) of \(n) bytes") } }
        let out = Array(buffer[0..<n])
        buffer.removeFirst(n)
        return out
    }

    /// The status line of the response read last (`HTTP/1.1 200 OK`).
    private(set) var statusLine = ""

    /// Everything until the server closes the connection (throws if it stays open past the receive timeout).
    func readToEOF() throws -> [UInt8] {
        while try fill() {}
        defer { buffer.removeAll() }
        return buffer
    }

    /// Status line and headers.
    func readHead() throws -> (status: Int, headers: [String: String]) {
        let statusLine = try readLine()
        self.statusLine = statusLine
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { throw TestFailure("bad status line '\(statusLine)'") }
        var headers: [String: String] = [:]
        while true {
            let line = try readLine()
            if line.isEmpty { break }
            if let colon = line.firstIndex(of: ":") {
                headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return (status, headers)
    }

    /// The next piece of a chunked body; nil at its end.
    func readChunk() throws -> [UInt8]? {
        let sizeLine = try readLine()
        guard let size = Int(sizeLine.split(separator: ";")[0], radix: 16) else { throw TestFailure("bad chunk size '\(sizeLine)'") }
        if size == 0 {
            while try !readLine().isEmpty {}   // trailers
            return nil
        }
        let data = try readExactly(size)
        _ = try readLine()
        return data
    }

    func readResponse() throws -> HTTPTestResponse {
        let (status, headers) = try readHead()
        var body: [UInt8] = []
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            while let chunk = try readChunk() { body += chunk }
        } else if let length = headers["content-length"].flatMap({ Int($0) }) {
            body = try readExactly(length)
        }
        return HTTPTestResponse(status: status, headers: headers, body: Data(body))
    }
}

/// Server-sent events of a body: each event's `data:` payload, in order. Checks the framing: every
/// event is `data: <payload>` lines ended by a blank line, nothing else.
func parseSSE(_ text: String) throws -> [String] {
    guard text.hasSuffix("\n\n") else { throw TestFailure("the stream does not end with a blank line: \(text.suffix(40).debugDescription)") }
    var events: [String] = []
    for block in text.dropLast(2).components(separatedBy: "\n\n") {
        var data: [String] = []
        for line in block.split(separator: "\n", omittingEmptySubsequences: false) {
            guard line.hasPrefix("data: ") else { throw TestFailure("not an SSE data line: \(String(line).debugDescription)") }
            data.append(String(line.dropFirst(6)))
        }
        events.append(data.joined(separator: "\n"))
    }
    return events
}

func jsonObject(_ text: String) throws -> [String: Any] {
    guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
        throw TestFailure("not a JSON object: \(text.prefix(200))")
    }
    return object
}

extension TestHTTPDaemon {
    /// Sends `json` to `path` and checks the OpenAI error: status, `code`, `param` (nil: not checked), `type`, and
    /// that the message contains each of `contains`. Returns the response.
    @discardableResult
    func expectError(_ json: String, path: String = "/v1/completions", status: Int, param: String?, contains: [String],
                     sourceLocation: SourceLocation = #_sourceLocation) async throws -> HTTPTestResponse {
        let r = try await request("POST", path, json: json)
        #expect(r.status == status, "\(json) → \(r.status) \(r.text)", sourceLocation: sourceLocation)
        #expect(r.error["code"] as? Int == status, "\(r.text)", sourceLocation: sourceLocation)
        let message = r.error["message"] as? String ?? ""
        for text in contains { #expect(message.contains(text), "\(json) → \(message)", sourceLocation: sourceLocation) }
        if let param { #expect(r.error["param"] as? String == param, "\(json) → \(r.text)", sourceLocation: sourceLocation) }
        #expect(r.error["type"] is String, sourceLocation: sourceLocation)
        return r
    }
}
