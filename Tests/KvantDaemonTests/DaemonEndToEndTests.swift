import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantTestSupport
import Testing

@Suite("Daemon end to end (FakeBackend)")
struct DaemonEndToEndTests {
    @Test("version and health before any model")
    func versionAndHealth() async throws {
        let daemon = try TestDaemon(tag: "ver")
        try await daemon.start()
        let socket = daemon.socketPath
        let (version, health) = try await offPool {
            let client = try ControlClient(socketPath: socket, timeout: 120)
            return (try client.call(.version, EmptyParams(), as: VersionResult.self),
                    try client.call(.health, EmptyParams(), as: HealthResult.self))
        }
        #expect(version.protocolVersion == controlProtocolVersion)
        #expect(version.backend == "fake")
        #expect(version.methods.contains("generate") && version.methods.contains("scales-validate"))
        #expect(health.status == "ok")
        #expect(health.modelLoaded == false)
        #expect(health.model == nil)
        try await daemon.stop()
    }

    @Test("load-model, generate (plain and streamed), tokenize, stats")
    func generateFlow() async throws {
        let daemon = try TestDaemon(tag: "gen")
        try await daemon.start()
        let loaded = try await daemon.loadModel(kvCacheDType: .int8PerToken)
        #expect(loaded.model.kvCacheDType == .int8PerToken)
        #expect(loaded.model.path == daemon.allowed + "/model.gguf")
        #expect(loaded.replaced == nil)
        #expect(daemon.backend.loads.count == 1)
        #expect(daemon.backend.loads.first?.blockSize == 16)

        let socket = daemon.socketPath
        let result = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.generate, GenerateParams(prompt: "hello", maxTokens: 3),
                                                       as: GenerateResult.self)
        }
        #expect(result.text == "hel")
        #expect(result.tokens == [104, 101, 108])
        #expect(result.promptTokens == 5)
        #expect(result.completionTokens == 3)
        #expect(result.finishReason == .length)

        // Streamed: one generate.token per token, in order, then the response; eos ends it.
        let (streamed, notifications) = try await offPool { () -> (GenerateResult, [GenerateTokenNotification]) in
            let client = try ControlClient(socketPath: socket, timeout: 120)
            var tokens: [GenerateTokenNotification] = []
            let result = try client.call(.generate, GenerateParams(prompt: "abc", maxTokens: 50, stream: true),
                                         as: GenerateResult.self, id: .string("g1")) { notification in
                #expect(notification.method == "generate.token")
                tokens.append(try notification.params.decode(as: GenerateTokenNotification.self))
            }
            return (result, tokens)
        }
        #expect(notifications.map(\.text).joined() == "abc")
        #expect(notifications.map(\.token) == [97, 98, 99])
        #expect(notifications.allSatisfy { $0.id == .string("g1") })
        #expect(streamed.finishReason == .stop)
        #expect(streamed.stopReason == "eos")
        #expect(streamed.text == "abc")

        // Stop strings end the text before the match.
        let stopped = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(
                .generate, GenerateParams(prompt: "one, two, three", maxTokens: 50, stop: ["three", ", t"]),
                as: GenerateResult.self)
        }
        #expect(stopped.text == "one")
        #expect(stopped.finishReason == .stop)
        #expect(stopped.stopReason == ", t")

        let tokens = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.tokenize, TokenizeParams(text: "hi"), as: TokenizeResult.self)
        }
        #expect(tokens.tokens == [104, 105])
        #expect(tokens.count == 2)

        let stats = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.stats, EmptyParams(), as: StatsResult.self)
        }
        #expect(stats.engine.requestsServed == 3)
        #expect(stats.engine.promptTokens == 5 + 3 + 15)
        #expect(stats.engine.generatedTokens == 3 + 3 + 6)   // "hel", "abc", "one, t"
        #expect(stats.engine.requestsRunning == 0)
        #expect(stats.engine.rssBytes > 1 << 20)
        #expect(stats.engine.connections == 1)
        #expect(stats.model?.name == "fake-echo")
        #expect(stats.kvCache["total_blocks"] == .int(100))
        #expect(stats.kvCache["kv_cache_dtype"] == .string("int8_pertoken"))
        try await daemon.stop()
    }

    @Test("several clients generate at once; each gets its own echo")
    func concurrentClients() async throws {
        let daemon = try TestDaemon(tag: "conc", decodeDelay: 0.002) { config, _ in config.maxNumSeqs = 2 }
        try await daemon.start()
        _ = try await daemon.loadModel()
        let socket = daemon.socketPath
        let prompts = (0..<6).map { "client-\($0)-" + String(repeating: Character(UnicodeScalar(97 + $0)!), count: 10) }
        let results = Array(zip(prompts, try await daemon.generateConcurrently(prompts.map { GenerateParams(prompt: $0, maxTokens: 100, stream: true) })))
        #expect(results.count == 6)
        for (prompt, result) in results {
            #expect(result.text == prompt)
            #expect(result.finishReason == .stop)
        }
        let stats = try await offPool { try ControlClient(socketPath: socket, timeout: 120).call(.stats, EmptyParams(), as: StatsResult.self) }
        #expect(stats.engine.requestsServed == 6)
        #expect(stats.engine.requestsWaiting == 0)
        #expect(stats.kvCache["used_blocks"] == .int(0))
        try await daemon.stop()
    }

    @Test("cancel stops a streaming generate on the same connection")
    func cancelGenerate() async throws {
        let daemon = try TestDaemon(tag: "cancel", decodeDelay: 0.01)
        try await daemon.start()
        _ = try await daemon.loadModel()
        let socket = daemon.socketPath
        let prompt = String(repeating: "x", count: 200)
        let (result, seen) = try await offPool { () -> (GenerateResult, Int) in
            let client = try ControlClient(socketPath: socket, timeout: 120)
            var seen = 0
            let id = RPCID.number(42)
            let result = try client.call(.generate, GenerateParams(prompt: prompt, maxTokens: 200, stream: true),
                                         as: GenerateResult.self, id: id) { _ in
                seen += 1
                if seen == 3 { try client.sendCancel(of: id) }
            }
            return (result, seen)
        }
        #expect(result.finishReason == .cancelled)
        #expect(result.completionTokens >= 3)
        #expect(result.completionTokens < 200)
        #expect(seen == result.completionTokens)
        // Cancelling an id that is not running says so.
        let none = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.cancel, CancelParams(id: .number(7)), as: CancelResult.self)
        }
        #expect(none.cancelled == false)
        try await daemon.stop()
    }

    @Test("perplexity and calibrate stream progress notifications")
    func progressNotifications() async throws {
        let daemon = try TestDaemon(tag: "prog")
        try await daemon.start()
        _ = try await daemon.loadModel()
        let text = try daemon.writeAllowed("text.txt", String(repeating: "a", count: 300))
        let output = daemon.allowed + "/scales.json"
        let socket = daemon.socketPath
        let (ppl, pplProgress) = try await offPool { () -> (PerplexityResult, [ProgressNotification]) in
            var progress: [ProgressNotification] = []
            let result = try ControlClient(socketPath: socket, timeout: 120).call(.perplexity, PerplexityParams(path: text, ctx: 128),
                                                                    as: PerplexityResult.self) { notification in
                #expect(notification.method == "perplexity.progress")
                progress.append(try notification.params.decode(as: ProgressNotification.self))
            }
            return (result, progress)
        }
        #expect(ppl.tokens == 300)
        #expect(ppl.chunks == 3)
        #expect(abs(ppl.perplexity - 1.3) < 1e-12)
        #expect(pplProgress.map(\.done) == [64, 128, 192, 256, 300])
        #expect(pplProgress.allSatisfy { $0.total == 300 })

        let (calibration, calProgress) = try await offPool { () -> (CalibrateResult, [ProgressNotification]) in
            var progress: [ProgressNotification] = []
            let result = try ControlClient(socketPath: socket, timeout: 120).call(
                .calibrate, CalibrateParams(textPath: text, numTokens: 1024, perHead: true, output: output),
                as: CalibrateResult.self) { notification in
                #expect(notification.method == "calibrate.progress")
                progress.append(try notification.params.decode(as: ProgressNotification.self))
            }
            return (result, progress)
        }
        #expect(calibration.output == output)
        #expect(calibration.scales.layers == 2)
        #expect(calibration.scales.perHead)
        #expect(calProgress.map(\.done) == [256, 512, 768, 1024])
        #expect(FileManager.default.fileExists(atPath: output))
        try await daemon.stop()
    }

    @Test("reload-scales, scales-show, scales-validate, set-kv-dtype")
    func scalesMethods() async throws {
        let daemon = try TestDaemon(tag: "scales")
        try await daemon.start()
        _ = try await daemon.loadModel(kvCacheDType: .int8PerTensor)
        let good = try daemon.writeAllowed("good.json", #"{"layers": 2, "per_head": false, "scales": [0.02, 0.05]}"#)
        let bad = try daemon.writeAllowed("bad.json", #"{"layers": 2}"#)
        let socket = daemon.socketPath
        let report = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.reloadScales, ReloadScalesParams(path: good), as: ScalesReport.self)
        }
        #expect(report.epoch == 1)
        #expect(report.layers == 2)
        #expect(report.min == 0.02 && report.max == 0.05)
        #expect(report.path == good)
        // Without a path, the last file is re-read: a new epoch.
        let again = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.reloadScales, ReloadScalesParams(), as: ScalesReport.self)
        }
        #expect(again.epoch == 2)
        let shown = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.scalesShow, EmptyParams(), as: ScalesShowResult.self)
        }
        #expect(shown.kvCacheDType == .int8PerTensor)
        #expect(shown.scales?.epoch == 2)
        let validated = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.scalesValidate, ScalesValidateParams(path: good), as: ScalesReport.self)
        }
        #expect(validated.epoch == nil)
        #expect(validated.sha256 == report.sha256)
        // A bad file: invalid_argument naming the field; the previous scales stay; health says degraded.
        let failure = try await offPool { () -> RPCErrorObject? in
            do {
                _ = try ControlClient(socketPath: socket, timeout: 120).call(.reloadScales, ReloadScalesParams(path: bad), as: ScalesReport.self)
                return nil
            } catch let error as RPCErrorObject { return error }
        }
        #expect(failure?.reason == .invalidArgument)
        #expect(failure?.code == RPCErrorCode.invalidParams)
        #expect(failure?.message.contains("'scales'") == true)
        let health = try await offPool { try ControlClient(socketPath: socket, timeout: 120).call(.health, EmptyParams(), as: HealthResult.self) }
        #expect(health.status == "degraded")
        #expect(health.lastError?.contains("bad.json") == true)
        let stillShown = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.scalesShow, EmptyParams(), as: ScalesShowResult.self)
        }
        #expect(stillShown.scales?.epoch == 2)

        let info = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.setKVDType, SetKVDTypeParams(kvCacheDType: .fp32), as: ModelInfo.self)
        }
        #expect(info.kvCacheDType == .fp32)
        try await daemon.stop()
    }

    @Test("a failed load keeps the previous model; a second load replaces it")
    func modelSwap() async throws {
        let daemon = try TestDaemon(tag: "swap")
        try await daemon.start()
        let first = try await daemon.loadModel()
        let broken = try daemon.writeAllowed("broken.gguf", "FAIL")
        let second = try daemon.writeAllowed("second.gguf", "GGUF 2")
        let socket = daemon.socketPath
        let error = try await offPool { () -> RPCErrorObject? in
            do {
                _ = try ControlClient(socketPath: socket, timeout: 120).call(.loadModel, LoadModelParams(path: broken), as: LoadModelResult.self)
                return nil
            } catch let error as RPCErrorObject { return error }
        }
        #expect(error?.reason == .invalidArgument)
        #expect(error?.message.contains("bad magic") == true)
        let health = try await offPool { try ControlClient(socketPath: socket, timeout: 120).call(.health, EmptyParams(), as: HealthResult.self) }
        #expect(health.model == first.model.path)
        let replaced = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.loadModel, LoadModelParams(path: second, maxModelLen: 32), as: LoadModelResult.self)
        }
        #expect(replaced.replaced == first.model.path)
        #expect(replaced.model.maxModelLen == 32)
        let unloaded = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.unloadModel, EmptyParams(), as: UnloadModelResult.self)
        }
        #expect(unloaded.unloaded)
        #expect(unloaded.path == second)
        try await daemon.stop()
    }

    @Test("graceful shutdown lets an in-flight generate finish and removes the socket")
    func gracefulShutdown() async throws {
        // A grace far longer than the generation needs even on a busy machine: the test waits for the
        // generation's end (an event), so the long grace never slows it down.
        let daemon = try TestDaemon(tag: "stop", decodeDelay: 0.01) { config, _ in config.shutdownTimeoutSeconds = 600 }
        try await daemon.start()
        _ = try await daemon.loadModel()
        let socket = daemon.socketPath
        let (started, startedContinuation) = AsyncStream<Void>.makeStream()
        let generation = Task {
            try await offPool {
                try ControlClient(socketPath: socket, timeout: 120).call(.generate, GenerateParams(prompt: "0123456789", maxTokens: 20, stream: true),
                                                           as: GenerateResult.self) { _ in startedContinuation.yield() }
            }
        }
        for await _ in started { break }
        try await daemon.stop()
        let result = try await generation.value
        #expect(result.text == "0123456789")
        #expect(result.finishReason == .stop)
        #expect(!FileManager.default.fileExists(atPath: socket))
    }
}
