import ControlProtocol
import Foundation
import KvantCore
import KvantTestSupport
import Testing

/// `generate` with `n` through the real `kvantd` binary and its control socket, on the real model (Gemma 3 270M):
/// choice `i` of a request with `seed` gives the tokens of a separate `n = 1` request with `seed + i` (the HTTP API's
/// rule, `GenerateParams.choice`), streamed notifications name their choice, `n = 1` keeps the reply of before,
/// `n` above `max_num_seqs` still gives every choice, and bad values of `n` are refused naming the field.
@Suite(.serialized, .enabled(if: RealModel.path != nil, RealModel.skipReason),
       .enabled(if: RealModel.isReleaseBuild, RealModel.needsRelease))
struct ParallelSamplingSocketTests {
    @Test("n through the socket: each choice equals a separate request with seed + i; streamed per choice; bad n refused")
    func nThroughTheSocket() async throws {
        let model = URL(fileURLWithPath: try #require(RealModel.path)).resolvingSymlinksInPath().path
        let binary = try kvantdBinary()
        let dir = try makeTempDir("ctln")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/kvantd.sock"
        // max_num_seqs 3: n = 3 forks the prompt's blocks; n = 4 runs its choices as requests of their own.
        let config = dir + "/kvantd.toml"
        try "max_num_seqs = 3\n".write(toFile: config, atomically: true, encoding: .utf8)
        let receiver = try NotifyReceiver(path: dir + "/notify.sock")
        defer { receiver.stop() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--config", config, "--socket", socket, "--allowed-dir", (model as NSString).deletingLastPathComponent,
                             "--kv-cache-bytes", "\(48 << 20)", "--threads", "2", "--no-http", "--log-level", "warning"]
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = receiver.path
        environment.removeValue(forKey: "WATCHDOG_USEC")
        process.environment = environment
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        #expect(try await receiver.wait { $0.hasPrefix("READY=1") } != nil)

        struct Outcome: Sendable {
            var many: GenerateResult, streamed: [Int: [Int]], unindexed: Int, alone: [GenerateResult]
            var single: GenerateResult, singleRaw: JSONValue, singleIndexes: Int
            var wide: GenerateResult, wideAlone: [[Int]]
            var errors: [RPCResponse]
        }
        let o = try await offPool { () throws -> Outcome in
            let client = try ControlClient(socketPath: socket, timeout: 300)
            _ = try client.call(.loadModel, LoadModelParams(path: model), as: LoadModelResult.self)
            var params = GenerateParams(prompt: "The operators of an inference service measure", maxTokens: 16, temperature: 0.8,
                                        topP: 0.95, seed: 7, stream: true)
            params.ignoreEOS = true
            params.n = 3
            // Streamed: every notification names its choice.
            var streamed: [Int: [Int]] = [:]
            var unindexed = 0
            let many = try client.call(.generate, params, as: GenerateResult.self) { notification in
                let token = try notification.params.decode(as: GenerateTokenNotification.self)
                if let index = token.index { streamed[index, default: []].append(token.token) } else { unindexed += 1 }
            }
            // Each choice alone: n = 1, seed + i.
            var alone: [GenerateResult] = []
            for i in 0..<3 {
                var p = params
                p.n = 1
                p.stream = false
                p.seed = 7 + UInt64(i)
                alone.append(try client.call(.generate, p, as: GenerateResult.self))
            }
            // n = 1 (absent on the wire): the reply of before, no `choices`; its notifications carry no index.
            var one = params
            one.n = 1
            var singleIndexes = 0
            let request = try RPCRequest(id: client.makeID(), method: .generate, params: one)
            let response = try client.roundTrip(request) { notification in
                if try notification.params.decode(as: GenerateTokenNotification.self).index != nil { singleIndexes += 1 }
            }
            let singleRaw = try #require(response.result)
            let single = try response.decodeResult(GenerateResult.self)
            // n = 4 > max_num_seqs 3: every choice runs as a request of its own, still seed + i each.
            var wideParams = params
            wideParams.n = 4
            wideParams.stream = false
            wideParams.seed = 100
            let wide = try client.call(.generate, wideParams, as: GenerateResult.self)
            var wideAlone: [[Int]] = []
            for i in 0..<4 {
                var p = wideParams
                p.n = 1
                p.seed = 100 + UInt64(i)
                wideAlone.append(try client.call(.generate, p, as: GenerateResult.self).tokens)
            }
            // Bad n.
            var errors: [RPCResponse] = []
            for value in ["0", "17", "-2", "2.5", "\"3\""] {
                errors.append(try exchange(client, #"{"jsonrpc":"2.0","id":90,"method":"generate","params":{"prompt":"x","n":"# + value + "}}"))
            }
            return Outcome(many: many, streamed: streamed, unindexed: unindexed, alone: alone, single: single, singleRaw: singleRaw,
                           singleIndexes: singleIndexes, wide: wide, wideAlone: wideAlone, errors: errors)
        }

        let choices = try #require(o.many.choices)
        #expect(choices.map(\.index) == [0, 1, 2])
        for (i, choice) in choices.enumerated() {
            #expect(choice.tokens == o.alone[i].tokens, "choice \(i): \(choice.tokens) vs seed \(7 + i) alone \(o.alone[i].tokens)")
            #expect(choice.text == o.alone[i].text)
            #expect(choice.completionTokens == 16 && choice.finishReason == .length)
            #expect(o.streamed[i] == choice.tokens, "streamed tokens of choice \(i)")
        }
        #expect(o.unindexed == 0)
        #expect(Set(choices.map(\.tokens)).count == 3, "the seeds differ, so do the choices")
        // The top-level fields are choice 0's.
        #expect(o.many.tokens == choices[0].tokens && o.many.text == choices[0].text)
        #expect(o.many.promptTokens == o.alone[0].promptTokens)
        // n = 1: no choices on the wire, no index in the notifications; the tokens of seed 7 alone.
        #expect(o.single.choices == nil && o.singleRaw["choices"] == nil && o.singleIndexes == 0)
        #expect(o.single.tokens == o.alone[0].tokens)
        // n above max_num_seqs.
        let wide = try #require(o.wide.choices)
        #expect(wide.map(\.tokens) == o.wideAlone)
        // Bad values: the field and the allowed range (as the HTTP API's `n`), invalid_argument.
        let messages = o.errors.map { $0.error?.message ?? "no error" }
        #expect(o.errors.allSatisfy { $0.error?.code == RPCErrorCode.invalidParams }, "\(messages)")
        #expect(messages[0] == "generate: 'n' must be in 1...16, got 0")
        #expect(messages[1] == "generate: 'n' must be in 1...16, got 17")
        #expect(messages[2] == "generate: 'n' must be in 1...16, got -2")
        #expect(messages[3].contains("field 'n'") && messages[3].contains("2.5"), "\(messages[3])")
        #expect(messages[4].contains("field 'n'"), "\(messages[4])")
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
    }
}
