import ControlProtocol
import Foundation
import KvantCore
import KvantTestSupport
import Testing

/// Runs the built `kvantctl` against an in-process daemon with the FakeBackend.
struct Kvantctl {
    let socket: String

    static func binary() throws -> String {
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let path = URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("kvantctl").path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw KvantError(.notFound, "kvantctl is not built at \(path)")
        }
        return path
    }

    /// Starts kvantctl with `KVANT_SOCKET` set; returns the process and its stdout/stderr pipes.
    func start(_ arguments: [String]) throws -> (Process, Pipe, Pipe) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Self.binary())
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["KVANT_SOCKET"] = socket
        process.environment = environment
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        return (process, out, err)
    }

    /// Runs kvantctl with stdout and stderr on one pipe (as `2>&1`): the order of the writes shows.
    func runMerged(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Self.binary())
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["KVANT_SOCKET"] = socket
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        try? pipe.fileHandleForWriting.close()
        let data = try await offPool { pipe.fileHandleForReading.readDataToEndOfFile() }
        try await waitForExit(process)
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    func run(_ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
        let (process, out, err) = try start(arguments)
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        let (stdout, stderr) = try await offPool { () -> (Data, Data) in
            let stdout = out.fileHandleForReading.readDataToEndOfFile()
            let stderr = err.fileHandleForReading.readDataToEndOfFile()
            return (stdout, stderr)
        }
        try await waitForExit(process)
        return (process.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
    }
}

@Suite("kvantctl against the daemon", .serialized)
struct KvantctlTests {
    @Test("tables, --json, streaming generate, exit codes per reason")
    func commands() async throws {
        let daemon = try TestDaemon(tag: "ctl")
        try await daemon.start()
        let ctl = Kvantctl(socket: daemon.socketPath)
        let model = try daemon.writeAllowed("model.gguf", "GGUF")

        let health = try await ctl.run(["health"])
        #expect(health.status == 0)
        #expect(health.stdout.contains("status  ok"))
        #expect(health.stdout.contains("(none loaded)"))

        let noModel = try await ctl.run(["generate", "hi"])
        #expect(noModel.status == ClientExitCode.code(for: .failedPrecondition))
        #expect(noModel.stderr.contains("failed_precondition: generate: no model is loaded"))

        let load = try await ctl.run(["load-model", model, "--kv-cache-dtype", "int8_pertoken", "--json"])
        #expect(load.status == 0)
        let loaded = try WireCodec.decoder.decode(LoadModelResult.self, from: Data(load.stdout.utf8))
        #expect(loaded.model.kvCacheDType == .int8PerToken)

        let generate = try await ctl.run(["generate", "stream me", "--max-tokens", "50"])
        #expect(generate.status == 0)
        #expect(generate.stdout == "stream me\n")
        #expect(generate.stderr.contains("9 prompt + 9 generated tokens, finish stop"))

        let stats = try await ctl.run(["stats"])
        #expect(stats.stdout.contains("1 served, 0 running, 0 waiting, 0 failed"))
        #expect(stats.stdout.contains("kv_cache.total_blocks"))

        let outside = try await ctl.run(["scales", "validate", "/etc/passwd"])
        #expect(outside.status == ClientExitCode.code(for: .permissionDenied))
        let missing = try await ctl.run(["load-model", daemon.allowed + "/nope.gguf"])
        #expect(missing.status == ClientExitCode.code(for: .notFound))
        let badDType = try await ctl.run(["set-kv-dtype", "int4"])
        #expect(badDType.status == ClientExitCode.code(for: .invalidArgument))
        let usage = try await ctl.run(["generate"])
        #expect(usage.status == ClientExitCode.usage)
        // --json: errors are JSON on stdout too (plus the message on stderr and the exit code).
        let jsonError = try await ctl.run(["set-kv-dtype", "int4", "--json"])
        #expect(jsonError.status == ClientExitCode.code(for: .invalidArgument))
        let errorObject = try #require(try JSONSerialization.jsonObject(with: Data(jsonError.stdout.utf8)) as? [String: Any])
        let inner = try #require(errorObject["error"] as? [String: Any])
        #expect(inner["reason"] as? String == "invalid_argument")
        #expect((inner["message"] as? String)?.contains("int4") == true)
        #expect(inner["exit_code"] as? Int == Int(ClientExitCode.code(for: .invalidArgument)))
        #expect(jsonError.stderr.contains("invalid_argument"))
        let noDaemon = try await Kvantctl(socket: daemon.dir + "/none.sock").run(["version"])
        #expect(noDaemon.status == ClientExitCode.code(for: .unavailable))
        #expect(noDaemon.stderr.contains("is kvantd running?"))
        try await daemon.stop()
    }

    @Test("usage errors under --json: the error object on stdout (reason usage, exit 64); without --json the parser's text")
    func usageErrorsJSON() async throws {
        // Parse errors come before any connection: no daemon needed.
        let ctl = Kvantctl(socket: "/nonexistent/kvantd.sock")
        let cases: [(args: [String], mentions: String)] = [
            (["stats", "--bogus", "--json"], "--bogus"),                              // unknown option
            (["generate", "--json"], "<prompt>"),                                     // missing argument
            (["generate", "hi", "--max-tokens", "many", "--json"], "many"),           // bad value
            (["--json", "load-model"], "<path>"),                                     // --json before the subcommand
            (["--json", "bogus-command"], "bogus-command"),                           // unknown subcommand
        ]
        for (args, mentions) in cases {
            let r = try await ctl.run(args)
            #expect(r.status == ClientExitCode.usage, "\(args)")
            let object = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(args): \(r.stdout)")
            let inner = try #require(object["error"] as? [String: Any])
            #expect(inner["reason"] as? String == "usage")
            #expect(inner["exit_code"] as? Int == Int(ClientExitCode.usage))
            let message = inner["message"] as? String ?? ""
            #expect(message.contains(mentions), "\(args): \(inner)")
            #expect(r.stderr.contains("Usage:"), "\(args): the parser's text stays on stderr")
            // stderr says the same error as the JSON (not the parser's first complaint, e.g. about --json).
            #expect(r.stderr.hasPrefix("Error: " + message + "\n"), "\(args): stderr \(r.stderr) vs JSON \(message)")
        }
        let plain = try await ctl.run(["stats", "--bogus"])
        #expect(plain.status == ClientExitCode.usage)
        #expect(plain.stdout.isEmpty)
        #expect(plain.stderr.contains("Unknown option '--bogus'") && plain.stderr.contains("Usage:"))
        // --json and --socket before the subcommand work as after it.
        let before = try await ctl.run(["--json", "--socket", "/nonexistent/other.sock", "health"])
        #expect(before.status == ClientExitCode.code(for: .unavailable))
        #expect(before.stdout.contains("\"reason\" : \"unavailable\"") && before.stderr.contains("/nonexistent/other.sock"), "\(before)")
        let beforeMessage = ((try? JSONSerialization.jsonObject(with: Data(before.stdout.utf8)) as? [String: Any])?["error"] as? [String: Any])?["message"] as? String
        #expect(before.stderr == "kvantctl: unavailable: \(beforeMessage ?? "?")\n", "stderr and the JSON say the same: \(before)")
        // --help under --json is no error: the help text, exit 0.
        let help = try await ctl.run(["stats", "--help", "--json"])
        #expect(help.status == 0 && !help.stdout.contains("\"error\""))
    }

    @Test("negative numbers without '=': --top-k -1 and negative penalties work; out of range values name the field")
    func negativeNumbers() async throws {
        let daemon = try TestDaemon(tag: "ctlneg")
        try await daemon.start()
        _ = try await daemon.loadModel()
        let ctl = Kvantctl(socket: daemon.socketPath)
        let ok = try await ctl.run(["generate", "neg", "--top-k", "-1", "--presence-penalty", "-0.5",
                                    "--frequency-penalty", "-2", "--max-tokens", "10", "--temperature", "0"])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(ok.stdout == "neg\n")
        let refused: [(args: [String], message: String)] = [
            (["--temperature", "-1"], "generate: 'temperature' must be a finite number >= 0, got -1.0"),
            (["--max-tokens", "-5"], "generate: 'max_tokens' must be at least 1, got -5"),
            (["--seed", "-5"], "generate: 'seed' (--seed) must be an integer >= 0, got -5"),
            (["--top-k", "-2"], "generate: 'top_k' must be -1 or 0 (off) or a positive count, got -2"),
            (["--presence-penalty", "-3"], "generate: 'presence_penalty' must be in [-2, 2], got -3.0"),
        ]
        for (args, message) in refused {
            let r = try await ctl.run(["generate", "x"] + args)
            #expect(r.status == ClientExitCode.code(for: .invalidArgument), "\(args): \(r.stderr)")
            #expect(r.stderr.contains("kvantctl: invalid_argument: " + message), "\(args): \(r.stderr)")
        }
        let bytes = try await ctl.run(["load-model", daemon.allowed + "/m.gguf", "--kv-cache-bytes", "-1"])
        #expect(bytes.status == ClientExitCode.code(for: .invalidArgument))
        #expect(bytes.stderr.contains("'kv_cache_bytes' must be positive, got -1"), "\(bytes.stderr)")
        let percentile = try await ctl.run(["calibrate", "--output", daemon.allowed + "/s.json", "--percentile", "-1"])
        #expect(percentile.stderr.contains("'percentile' must be in (0, 100], got -1.0"), "\(percentile.stderr)")
        try await daemon.stop()
    }

    @Test("generate --n: each choice under its own line, one summary per choice; --json has choices; bad n named")
    func generateN() async throws {
        let daemon = try TestDaemon(tag: "ctln")
        try await daemon.start()
        _ = try await daemon.loadModel()
        let ctl = Kvantctl(socket: daemon.socketPath)
        let text = try await ctl.run(["generate", "echo", "--n", "3", "--max-tokens", "10", "--seed", "4"])
        #expect(text.status == 0, "\(text.stderr)")
        // The fake backend echoes the prompt, every choice alike.
        #expect(text.stdout == "--- choice 0 ---\necho\n--- choice 1 ---\necho\n--- choice 2 ---\necho\n")
        #expect(text.stderr.contains("3 choices]"), "\(text.stderr)")
        for i in 0..<3 { #expect(text.stderr.contains("[choice \(i): 4 generated tokens, finish stop"), "\(text.stderr)") }
        let json = try await ctl.run(["generate", "echo", "--n", "2", "--max-tokens", "10", "--json"])
        #expect(json.status == 0)
        let result = try WireCodec.decoder.decode(GenerateResult.self, from: Data(json.stdout.utf8))
        #expect(result.choices?.map(\.index) == [0, 1] && result.choices?.map(\.text) == ["echo", "echo"])
        #expect(result.text == "echo")
        // n = 1 (the default): the output of before.
        let one = try await ctl.run(["generate", "echo", "--max-tokens", "10"])
        #expect(one.stdout == "echo\n" && !one.stderr.contains("choice"))
        for (value, shown) in [("0", "0"), ("17", "17"), ("-1", "-1")] {
            let r = try await ctl.run(["generate", "x", "--n", value])
            #expect(r.status == ClientExitCode.code(for: .invalidArgument), "--n \(value): \(r.stderr)")
            #expect(r.stderr.contains("kvantctl: invalid_argument: generate: 'n' must be in 1...16, got \(shown)"), "\(r.stderr)")
        }
        try await daemon.stop()
    }

    @Test("drain --resume says what happened: a drain ended, or there was none")
    func drainResumeOutput() async throws {
        let daemon = try TestDaemon(tag: "ctldrain")
        try await daemon.start()
        let ctl = Kvantctl(socket: daemon.socketPath)
        let drain = try await ctl.run(["drain"])
        #expect(drain.status == 0)
        #expect(drain.stdout.contains("draining   yes (drain)"), "\(drain.stdout)")
        let resumed = try await ctl.run(["drain", "--resume"])
        #expect(resumed.status == 0)
        #expect(resumed.stdout == "drain ended: new HTTP requests are served again (0 in flight)\n", "\(resumed.stdout)")
        let again = try await ctl.run(["drain", "--resume"])
        #expect(again.stdout == "not draining: nothing to resume; new HTTP requests are served (0 in flight)\n", "\(again.stdout)")
        let json = try await ctl.run(["drain", "--resume", "--json"])
        let result = try WireCodec.decoder.decode(DrainResult.self, from: Data(json.stdout.utf8))
        #expect(result.resumed == false && result.draining == false)
        try await daemon.stop()
    }

    @Test("Ctrl-C during generate sends cancel: partial text, exit code of cancelled")
    func interruptCancels() async throws {
        let daemon = try TestDaemon(tag: "ctlint", decodeDelay: 0.02)
        try await daemon.start()
        _ = try await daemon.loadModel()
        let (process, out, err) = try Kvantctl(socket: daemon.socketPath).start(
            ["generate", String(repeating: "z", count: 120), "--max-tokens", "120"])
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        // Wait until tokens stream, then interrupt.
        let firstBytes = try await offPool { out.fileHandleForReading.availableData }
        #expect(firstBytes.first == UInt8(ascii: "z"))
        kill(process.processIdentifier, SIGINT)
        let (rest, stderr) = try await offPool { () -> (Data, Data) in
            (out.fileHandleForReading.readDataToEndOfFile(), err.fileHandleForReading.readDataToEndOfFile())
        }
        try await waitForExit(process)
        #expect(process.terminationStatus == ClientExitCode.code(for: .cancelled))
        let text = String(decoding: firstBytes + rest, as: UTF8.self)
        #expect(text.hasPrefix("z"))
        #expect(text.count < 120)   // the echo would be 120 z's
        #expect(String(decoding: stderr, as: UTF8.self).contains("finish cancelled"))
        let stats = try await offPool { [socket = daemon.socketPath] in
            try ControlClient(socketPath: socket, timeout: 120).call(.stats, EmptyParams(), as: StatsResult.self)
        }
        #expect(stats.engine.requestsRunning == 0)
        try await daemon.stop()
    }

    @Test("Ctrl-C during generate --json: the JSON result says cancelled and the exit code is still cancelled's")
    func interruptCancelsJSON() async throws {
        let daemon = try TestDaemon(tag: "ctlintj", decodeDelay: 0.02)
        try await daemon.start()
        _ = try await daemon.loadModel()
        let (process, out, _) = try Kvantctl(socket: daemon.socketPath).start(
            ["generate", String(repeating: "z", count: 120), "--max-tokens", "120", "--json"])
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        try await Task.sleep(for: .milliseconds(400))   // no streaming with --json: let some tokens decode
        kill(process.processIdentifier, SIGINT)
        let stdout = try await offPool { out.fileHandleForReading.readDataToEndOfFile() }
        try await waitForExit(process)
        #expect(process.terminationStatus == ClientExitCode.code(for: .cancelled))
        let result = try WireCodec.decoder.decode(GenerateResult.self, from: stdout)
        #expect(result.finishReason == .cancelled && result.completionTokens < 120)
        try await daemon.stop()
    }

    @Test("output order with 2>&1: the text's newline before the summary; progress lines (one per update off a terminal) before the next message")
    func outputOrder() async throws {
        let daemon = try TestDaemon(tag: "ctlord")
        try await daemon.start()
        _ = try await daemon.loadModel()
        let ctl = Kvantctl(socket: daemon.socketPath)
        let streamed = try await ctl.runMerged(["generate", "stream me", "--max-tokens", "50"])
        #expect(streamed.status == 0)
        #expect(streamed.output.hasPrefix("stream me\n[9 prompt + 9 generated tokens, finish stop"), "\(streamed.output)")
        let plain = try await ctl.runMerged(["generate", "plain", "--max-tokens", "50", "--no-stream"])
        #expect(plain.output.hasPrefix("plain\n[5 prompt"), "\(plain.output)")

        let text = try daemon.writeAllowed("text.txt", "some text")
        let good = try await ctl.runMerged(["calibrate", "--output", daemon.allowed + "/s.json", "--text-path", text,
                                            "--num-tokens", "512"])
        #expect(good.status == 0)
        // Not a terminal: one progress line per update (no \r redraws in logs), ended before the result.
        #expect(good.output.hasPrefix("calibrate: 256/512 tokens\ncalibrate: 512/512 tokens\noutput"), "\(good.output)")
        #expect(!good.output.contains("\r"))
        let bad = try daemon.writeAllowed("bad.txt", "FAIL text")
        let failed = try await ctl.runMerged(["calibrate", "--output", daemon.allowed + "/s2.json", "--text-path", bad,
                                              "--num-tokens", "512"])
        #expect(failed.status == ClientExitCode.code(for: .invalidArgument))
        #expect(failed.output.contains("calibrate: 512/512 tokens\nkvantctl: invalid_argument: fake: calibration text"),
                "\(failed.output)")
        try await daemon.stop()
    }
}
