import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import Logging
import Testing

@Suite("Failures are logged at error level and reflected in health")
struct HealthConsistencyTests {
    func health(_ socket: String) async throws -> HealthResult {
        try await offPool { try ControlClient(socketPath: socket, timeout: 20).call(.health, EmptyParams(), as: HealthResult.self) }
    }

    func failing<P: Encodable & Sendable>(_ socket: String, _ method: RPCMethod, _ params: P) async throws -> RPCErrorObject? {
        try await offPool { () -> RPCErrorObject? in
            do {
                _ = try ControlClient(socketPath: socket, timeout: 20).call(method, params, as: JSONValue.self)
                return nil
            } catch let error as RPCErrorObject { return error }
        }
    }

    @Test("load-model / reload-scales failures over RPC: error-level log with the message; refused paths set last_error")
    func rpcFailures() async throws {
        let logs = LogCapture()
        let daemon = try TestDaemon(tag: "hlt", logs: logs)
        try await daemon.start()
        let socket = daemon.socketPath
        // A load that fails in the backend.
        let broken = try daemon.writeAllowed("broken.gguf", "FAIL")
        let loadError = try await failing(socket, .loadModel, LoadModelParams(path: broken))
        #expect(loadError?.reason == .invalidArgument)
        #expect(logs.messages(atLeast: .error).contains { $0.contains("load-model failed") && $0.contains("bad magic") },
                "\(logs.messages(atLeast: .error))")
        _ = try await daemon.loadModel(kvCacheDType: .int8PerTensor)
        #expect(try await health(socket).status == "ok")

        // A path outside allowed_dirs: permission_denied, logged, and health degraded naming it.
        let outside = try await failing(socket, .loadModel, LoadModelParams(path: "/etc/hostname"))
        #expect(outside?.reason == .permissionDenied)
        var h = try await health(socket)
        #expect(h.status == "degraded")
        #expect(h.lastError?.contains("load-model /etc/hostname") == true, "\(String(describing: h.lastError))")
        #expect(logs.messages(atLeast: .error).contains { $0.contains("load-model failed") && $0.contains("/etc/hostname") })

        // reload-scales of a missing file: not_found, logged, last_error names it.
        let missing = daemon.allowed + "/missing.json"
        let reloadError = try await failing(socket, .reloadScales, ReloadScalesParams(path: missing))
        #expect(reloadError?.reason == .notFound)
        h = try await health(socket)
        #expect(h.status == "degraded")
        #expect(h.lastError?.contains("reload-scales \(missing)") == true, "\(String(describing: h.lastError))")
        #expect(logs.messages(atLeast: .error).contains { $0.contains("reload-scales failed") && $0.contains(missing) })
        try await daemon.stop()
    }

    @Test("a SIGHUP reload that fails sets health degraded with last_error, like reload-scales over RPC")
    func hangupFailureDegrades() async throws {
        let logs = LogCapture()
        let daemon = try TestDaemon(tag: "hup", logs: logs)
        try await daemon.start()
        // int8_pertensor without a scale file: a reload has no file to re-read.
        _ = try await daemon.loadModel(kvCacheDType: .int8PerTensor)
        let socket = daemon.socketPath
        #expect(try await health(socket).status == "ok")
        daemon.reloads.yield()
        var h = try await health(socket)
        for _ in 0..<200 where h.status == "ok" {
            try await Task.sleep(for: .milliseconds(10))
            h = try await health(socket)
        }
        #expect(h.status == "degraded")
        #expect(h.lastError?.contains("no scale file given") == true, "\(String(describing: h.lastError))")
        #expect(logs.messages(atLeast: .error).contains { $0.contains("reload failed") })
        try await daemon.stop()
    }

    @Test("SIGHUP without a model logs its outcome")
    func hangupWithoutModelLogs() async throws {
        let logs = LogCapture()
        let daemon = try TestDaemon(tag: "hup0", logs: logs)
        try await daemon.start()
        daemon.reloads.yield()
        var found = false
        for _ in 0..<200 where !found {
            found = logs.messages(atLeast: .notice).contains { $0.contains("no model loaded, nothing to reload") }
            if !found { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(found)
        #expect(try await health(daemon.socketPath).status == "ok")
        try await daemon.stop()
    }

    @Test("when the shutdown grace runs out, the number of cancelled requests is logged")
    func graceRunsOut() async throws {
        let logs = LogCapture()
        let daemon = try TestDaemon(tag: "grace", decodeDelay: 0.05, logs: logs) { config, _ in config.shutdownTimeoutSeconds = 0.2 }
        try await daemon.start()
        _ = try await daemon.loadModel()
        let socket = daemon.socketPath
        let (started, startedContinuation) = AsyncStream<Void>.makeStream()
        let generation = Task {
            try await offPool {
                try ControlClient(socketPath: socket, timeout: 20).call(
                    .generate, GenerateParams(prompt: String(repeating: "g", count: 100), maxTokens: 100, stream: true),
                    as: GenerateResult.self) { _ in startedContinuation.yield() }
            }
        }
        for await _ in started { break }
        try await daemon.stop()
        let result = try await generation.value
        #expect(result.finishReason == .cancelled)
        #expect(logs.messages(atLeast: .warning).contains { $0.contains("shutdown grace ran out") && $0.contains("cancelled=1") },
                "\(logs.messages(atLeast: .warning))")
    }
}
