import ControlProtocol
import Foundation
import KvantCore
import KvantTestSupport
import Testing

/// The built `kvantd` binary beside the test bundle (swift build --build-tests builds it too).
func kvantdBinary() throws -> String {
    let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    let path = URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("kvantd").path
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw KvantError(.notFound, "kvantd is not built at \(path) (swift build --product kvantd)")
    }
    return path
}

@Suite("kvantd as a process: real signals, socket activation", .serialized)
struct KvantdProcessTests {
    @Test("SIGHUP → RELOADING=1 + MONOTONIC_USEC → READY=1; WATCHDOG=1; SIGTERM → STOPPING=1, exit 0, socket removed")
    func signals() async throws {
        let binary = try kvantdBinary()
        let dir = try makeTempDir("proc")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let receiver = try NotifyReceiver(path: dir + "/notify.sock")
        defer { receiver.stop() }
        let socket = dir + "/kvantd.sock"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--socket", socket, "--allowed-dir", dir, "--log-level", "warning", "--no-http"]
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = receiver.path
        environment["WATCHDOG_USEC"] = "200000"
        process.environment = environment
        let stderr = Pipe()
        process.standardError = stderr
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }

        let ready = try await receiver.wait { $0.hasPrefix("READY=1") }
        #expect(ready == "READY=1\nSTATUS=no model loaded")
        #expect(FileManager.default.fileExists(atPath: socket))
        let health = try await offPool { try ControlClient(socketPath: socket, timeout: 120).call(.health, EmptyParams(), as: HealthResult.self) }
        #expect(health.status == "ok")
        #expect(try await receiver.wait { $0 == "WATCHDOG=1" } != nil)

        let before = SystemdNotifier_monotonic()
        kill(process.processIdentifier, SIGHUP)
        let reloading = try #require(try await receiver.wait { $0.hasPrefix("RELOADING=1") })
        let usec = UInt64(reloading.split(separator: "\n")[1].dropFirst("MONOTONIC_USEC=".count)) ?? 0
        #expect(usec >= before && usec <= SystemdNotifier_monotonic())
        let reloaded = try await receiver.wait { $0.hasPrefix("READY=1") && $0.contains("nothing to reload") }
        #expect(reloaded == "READY=1\nSTATUS=no model loaded; reload: no model loaded, nothing to reload")

        // A 4-byte "GGUF" file is no model: load-model names the file and what is wrong, the daemon serves on.
        let model = dir + "/m.gguf"
        try "GGUF".write(toFile: model, atomically: true, encoding: .utf8)
        let loadError = try await offPool { () -> RPCErrorObject? in
            do {
                _ = try ControlClient(socketPath: socket, timeout: 120).call(.loadModel, LoadModelParams(path: model), as: LoadModelResult.self)
                return nil
            } catch let error as RPCErrorObject { return error }
        }
        #expect(loadError?.reason == .invalidArgument)
        #expect(loadError?.message.contains(model) == true)

        kill(process.processIdentifier, SIGTERM)
        let stopping = try await receiver.wait { $0.hasPrefix("STOPPING=1") }
        #expect(stopping != nil)
        try await waitForExit(process)
        #expect(process.terminationStatus == 0)
        #expect(process.terminationReason == .exit)
        #expect(!FileManager.default.fileExists(atPath: socket))
        let log = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(log.split(separator: "\n").allSatisfy { $0.hasPrefix("<") }, "journald prefixes: \(log)")
    }

    @Test("a closed stderr pipe does not end kvantd: log writes after it closed, health answers, SIGTERM exits 0")
    func closedStderr() async throws {
        let binary = try kvantdBinary()
        let dir = try makeTempDir("pipe")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/kvantd.sock"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        // debug: every connection logs, so the daemon writes to the closed pipe below.
        process.arguments = ["--socket", socket, "--allowed-dir", dir, "--log-level", "debug", "--no-http"]
        let stderr = Pipe()
        process.standardError = stderr
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        // Close our read end (and the write end this process still holds): the pipe is broken.
        try stderr.fileHandleForReading.close()
        try? stderr.fileHandleForWriting.close()
        var answered = 0
        for _ in 0..<300 where answered < 3 {
            if let health = try? await offPool({
                try ControlClient(socketPath: socket, timeout: 120).call(.health, EmptyParams(), as: HealthResult.self)
            }) {
                #expect(health.status == "ok")
                answered += 1
            } else {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        #expect(answered == 3)
        #expect(process.isRunning, "kvantd died: status \(process.isRunning ? 0 : process.terminationStatus)")
        kill(process.processIdentifier, SIGTERM)
        try await waitForExit(process)
        #expect(process.terminationReason == .exit)
        #expect(process.terminationStatus == 0)
        #expect(!FileManager.default.fileExists(atPath: socket))
    }

    @Test("a negative number after a numeric flag is its value (no '=' needed), refused by its range check", arguments: [
        ["--port", "-1"], ["--kv-cache-bytes", "-5"], ["--threads", "-2"],
    ])
    func negativeFlagValue(flag: [String]) async throws {
        let binary = try kvantdBinary()
        let dir = try makeTempDir("neg")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--socket", dir + "/k.sock", "--allowed-dir", dir] + flag
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        let log = String(decoding: try await offPool { stderr.fileHandleForReading.readDataToEndOfFile() }, as: UTF8.self)
        try await waitForExit(process)
        #expect(process.terminationStatus != 0)
        #expect(!log.contains("Missing value"), "\(log)")
        #expect(log.contains(flag[1]), "the message names the value: \(log)")
    }

    @Test("HTTP port in use: the first error line names the address, port and EADDRINUSE; no READY=1, STATUS says why; exit 1")
    func httpPortInUse() async throws {
        let binary = try kvantdBinary()
        let dir = try makeTempDir("inuse")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Hold a loopback port (listening, without SO_REUSEPORT) for the test's length.
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(holder) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, length) == 0 && listen(holder, 1) == 0 && getsockname(holder, $0, &length) == 0 }
        }
        try #require(bound, "could not hold a loopback port: errno \(errno)")
        let port = Int(UInt16(bigEndian: address.sin_port))
        let receiver = try NotifyReceiver(path: dir + "/notify.sock")
        defer { receiver.stop() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--socket", dir + "/kvantd.sock", "--allowed-dir", dir, "--host", "127.0.0.1", "--port", String(port)]
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = receiver.path
        process.environment = environment
        let stderr = Pipe()
        process.standardError = stderr
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        let log = String(decoding: try await offPool { stderr.fileHandleForReading.readDataToEndOfFile() }, as: UTF8.self)
        try await waitForExit(process)
        #expect(process.terminationStatus == 1, "\(log)")
        // journald priorities: <0> emerg … <3> err; the first such line is the cause.
        let errors = log.split(separator: "\n").filter { $0.count > 3 && $0.hasPrefix("<") && "0123".contains($0[$0.index(after: $0.startIndex)]) }
        let cause = "cannot listen for HTTP on 127.0.0.1:\(port): Address already in use (EADDRINUSE, errno \(EADDRINUSE))"
        #expect(errors.first?.contains(cause) == true, "\(log)")
        #expect(!log.contains("CancellationError"), "\(log)")
        let status = try await receiver.wait { $0.hasPrefix("STATUS=failed: ") }
        #expect(status?.contains(cause) == true, "\(receiver.datagrams)")
        #expect(!receiver.datagrams.contains { $0.hasPrefix("READY=1") }, "\(receiver.datagrams)")
    }

    @Test("a socket path too long for a Unix address: kvantd exits non-zero naming the path and the limit in plain words")
    func socketPathTooLong() async throws {
        let binary = try kvantdBinary()
        let dir = try makeTempDir("long")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/" + String(repeating: "s", count: 120) + ".sock"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--socket", socket, "--allowed-dir", dir, "--no-http"]
        let stderr = Pipe()
        process.standardError = stderr
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        let log = String(decoding: try await offPool { stderr.fileHandleForReading.readDataToEndOfFile() }, as: UTF8.self)
        try await waitForExit(process)
        #expect(process.terminationStatus != 0)
        #expect(log.contains("cannot bind \(socket): the socket path is longer than a Unix socket address allows (107 bytes)"), "\(log)")
        #expect(!log.contains("unixDomainSocketPathTooLong"))
    }

    @Test("socket activation: kvantd serves the socket systemd-socket-activate passes and leaves the path alone")
    func socketActivation() async throws {
        let binary = try kvantdBinary()
        let activate = "/usr/bin/systemd-socket-activate"
        guard FileManager.default.isExecutableFile(atPath: activate) else {
            Issue.record("needs \(activate) (apt-get install systemd)")
            return
        }
        let dir = try makeTempDir("act")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/activated.sock"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: activate)
        // --socket names a different path: with a passed fd, it must not be bound.
        process.arguments = ["-l", socket, binary, "--socket", dir + "/unused.sock", "--allowed-dir", dir, "--log-level", "error", "--no-http"]
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        var version: VersionResult?
        for _ in 0..<200 {
            if let result = try? await offPool({
                try ControlClient(socketPath: socket, timeout: 120).call(.version, EmptyParams(), as: VersionResult.self)
            }) {
                version = result
                break
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(version?.protocolVersion == controlProtocolVersion)
        #expect(version?.backend == "kvant-cpu")
        #expect(!FileManager.default.fileExists(atPath: dir + "/unused.sock"))
        process.terminate()   // SIGTERM to systemd-socket-activate, which exec'd kvantd on the first connection
        try await waitForExit(process)
        #expect(process.terminationStatus == 0)
    }
}

/// Waits up to 10 s for `process` to exit; records an issue (and the caller's defer kills it) otherwise.
func waitForExit(_ process: Process) async throws {
    for _ in 0..<1000 where process.isRunning {
        try await Task.sleep(for: .milliseconds(10))
    }
    if process.isRunning { Issue.record("process \(process.processIdentifier) did not exit within 10 s") }
    else { process.waitUntilExit() }
}

func SystemdNotifier_monotonic() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
}
