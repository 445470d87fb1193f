import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantTestSupport
import Logging
import Testing

@Suite("Failures are logged at error level and reflected in health")
struct HealthConsistencyTests {
    func health(_ socket: String) async throws -> HealthResult {
        try await offPool { try ControlClient(socketPath: socket, timeout: 120).call(.health, EmptyParams(), as: HealthResult.self) }
    }

    func failing<P: Encodable & Sendable>(_ socket: String, _ method: RPCMethod, _ params: P) async throws -> RPCErrorObject? {
        try await offPool { () -> RPCErrorObject? in
            do {
                _ = try ControlClient(socketPath: socket, timeout: 120).call(method, params, as: JSONValue.self)
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

    @Test("a SIGHUP reload that fails sets health degraded with last_error; a later set-kv-dtype clears it")
    func hangupFailureDegrades() async throws {
        let logs = LogCapture()
        let daemon = try TestDaemon(tag: "hup", logs: logs)
        try await daemon.start()
        let socket = daemon.socketPath
        let scales = try daemon.writeAllowed("scales.json", #"{"layers": 2, "scales": [0.1, 0.2]}"#)
        _ = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(
                .loadModel, LoadModelParams(path: try daemon.writeAllowed("m.gguf", "GGUF"), kvCacheDType: .int8PerTensor,
                                            quantizationParamPath: scales), as: LoadModelResult.self)
        }
        #expect(try await health(socket).status == "ok")
        // The file in use gets broken; SIGHUP re-reads it and fails.
        _ = FileManager.default.createFile(atPath: scales, contents: Data(#"{"layers": 2}"#.utf8))
        daemon.reloads.yield()
        let h = try await waitForHealth(socket) { $0.status != "ok" }
        #expect(h.status == "degraded")
        #expect(h.lastError?.contains("missing non-empty array 'scales'") == true, "\(String(describing: h.lastError))")
        #expect(logs.messages(atLeast: .error).contains { $0.contains("reload failed") })
        // Switching the dtype (here without a file: static on 1.0) makes the failed file irrelevant: ok again,
        // and a SIGHUP has nothing to re-read (it does not bring the old file back).
        _ = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.setKVDType, SetKVDTypeParams(kvCacheDType: .int8PerTensor), as: ModelInfo.self)
        }
        #expect(try await health(socket).status == "ok")
        daemon.reloads.yield()
        let noop = try await waitForLog(logs, containing: "kv_cache_dtype int8_pertensor uses no scale file, nothing to reload")
        #expect(noop)
        #expect(try await health(socket).status == "ok")
        let explicit = try await failing(socket, .reloadScales, ReloadScalesParams())
        #expect(explicit?.reason == .failedPrecondition && explicit?.message.contains("give a path") == true)
        #expect(try await health(socket).status == "ok")
        try await daemon.stop()
    }

    @Test("SIGHUP without a model logs its outcome")
    func hangupWithoutModelLogs() async throws {
        let logs = LogCapture()
        let daemon = try TestDaemon(tag: "hup0", logs: logs)
        try await daemon.start()
        daemon.reloads.yield()
        let found = try await waitForLog(logs, containing: "no model loaded, nothing to reload")
        #expect(found)
        #expect(try await health(daemon.socketPath).status == "ok")
        try await daemon.stop()
    }

    /// Polls the captured log (notice and above) until a message contains `text` (reloads run asynchronously),
    /// at most 2 s; true when one did.
    func waitForLog(_ logs: LogCapture, containing text: String) async throws -> Bool {
        for _ in 0..<200 {
            if logs.messages(atLeast: .notice).contains(where: { $0.contains(text) }) { return true }
            try await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    /// Polls `health` until `predicate` holds (reloads run asynchronously), at most 2 s.
    func waitForHealth(_ socket: String, _ predicate: (HealthResult) -> Bool) async throws -> HealthResult {
        var h = try await health(socket)
        for _ in 0..<200 where !predicate(h) {
            try await Task.sleep(for: .milliseconds(10))
            h = try await health(socket)
        }
        return h
    }

    @Test("after set-kv-dtype to a dtype without static scales, SIGHUP is a no-op and an explicit reload-scales is the caller's error; health stays ok")
    func reloadAfterLeavingStaticDType() async throws {
        let logs = LogCapture()
        let daemon = try TestDaemon(tag: "hupfp", logs: logs)
        try await daemon.start()
        let scales = try daemon.writeAllowed("scales.json", #"{"layers": 2, "scales": [0.1, 0.2]}"#)
        let socket = daemon.socketPath
        _ = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(
                .loadModel, LoadModelParams(path: try daemon.writeAllowed("m.gguf", "GGUF"), kvCacheDType: .int8PerTensor,
                                            quantizationParamPath: scales), as: LoadModelResult.self)
        }
        _ = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.setKVDType, SetKVDTypeParams(kvCacheDType: .fp16), as: ModelInfo.self)
        }
        daemon.reloads.yield()
        let found = try await waitForLog(logs, containing: "kv_cache_dtype fp16 uses no scale file, nothing to reload")
        #expect(found, "\(logs.messages(atLeast: .notice))")
        #expect(try await health(socket).status == "ok")
        let explicit = try await failing(socket, .reloadScales, ReloadScalesParams(path: scales))
        #expect(explicit?.reason == .failedPrecondition)
        #expect(explicit?.message.contains("kv_cache_dtype fp16 uses no static scales") == true, "\(String(describing: explicit))")
        #expect(try await health(socket).status == "ok")
        try await daemon.stop()
    }

    @Test("a start-up model whose scale file is broken: fix the file, SIGHUP loads the configured model and health recovers")
    func reloadRetriesFailedStartupLoad() async throws {
        let logs = LogCapture()
        var scalesPath = ""
        let daemon = try TestDaemon(tag: "hupst", logs: logs) { config, allowed in
            let model = allowed + "/m.gguf"
            scalesPath = allowed + "/scales.json"
            _ = FileManager.default.createFile(atPath: model, contents: Data("GGUF".utf8))
            _ = FileManager.default.createFile(atPath: scalesPath, contents: Data(#"{"layers": 2}"#.utf8))   // no 'scales'
            config.model = model
            config.kvCacheDType = .int8PerTensor
            config.quantizationParamPath = scalesPath
        }
        try await daemon.start()
        let socket = daemon.socketPath
        var h = try await health(socket)
        #expect(h.status == "degraded" && !h.modelLoaded)
        #expect(h.lastError?.contains("missing non-empty array 'scales'") == true, "\(String(describing: h.lastError))")
        // Still broken: the reload says so and health stays degraded.
        daemon.reloads.yield()
        let stillFails = try await waitForLog(logs, containing: "still fails to load")
        #expect(stillFails)
        #expect(try await health(socket).status == "degraded")
        // Fixed: the next reload loads the configured model.
        _ = FileManager.default.createFile(atPath: scalesPath, contents: Data(#"{"layers": 2, "scales": [0.1, 0.2]}"#.utf8))
        daemon.reloads.yield()
        h = try await waitForHealth(socket) { $0.modelLoaded }
        #expect(h.modelLoaded && h.status == "ok" && h.kvCacheDType == .int8PerTensor, "\(h)")
        #expect(logs.messages(atLeast: .notice).contains { $0.contains("reload: loaded the configured model") })
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
                try ControlClient(socketPath: socket, timeout: 120).call(
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
