import ArgumentParser
import ControlProtocol
import Dispatch
import Foundation
import KvantCore

// kvantctl: one subcommand per control method; human-readable output by default, `--json`
// prints the daemon's result object. Exit codes per ErrorReason: see ClientExitCode and
// docs/protocol.md.

struct ConnectionOptions: ParsableArguments {
    @Option(help: "Control socket (env KVANT_SOCKET, default /run/kvant/kvantd.sock).")
    var socket: String = ProcessInfo.processInfo.environment["KVANT_SOCKET"] ?? ControlClient.defaultSocketPath

    @Flag(help: "Print the raw JSON result instead of a table.")
    var json = false

    func connect() throws -> ControlClient {
        try ControlClient(socketPath: socket)
    }
}

/// A `\r`-updated progress line on stderr; it is ended with a newline before anything else is
/// written to stderr (the final table, an error message).
enum ProgressLine {
    nonisolated(unsafe) private static var open = false
    /// On a terminal the line is redrawn in place (`\r`); to a file or pipe (logs, CI) each update is a line.
    private static let isTerminal = isatty(STDERR_FILENO) == 1

    static func update(_ text: String) {
        guard isTerminal else {
            FileHandle.standardError.write(Data("\(text)\n".utf8))
            return
        }
        FileHandle.standardError.write(Data("\r\(text)".utf8))
        open = true
    }

    /// Ends the progress line, if one is shown.
    static func finish() {
        if open { FileHandle.standardError.write(Data("\n".utf8)) }
        open = false
    }
}

/// Runs `body`, turning errors into a message on stderr and the exit code of their reason. With
/// `--json` the error is also printed on stdout as `{"error": {"reason", "message", "exit_code"}}`,
/// so a script that parses stdout always gets JSON.
func runClient(_ body: () throws -> Void) throws {
    func fail(_ reason: ErrorReason, _ message: String) -> ExitCode {
        ProgressLine.finish()
        FileHandle.standardError.write(Data("kvantctl: \(reason.rawValue): \(message)\n".utf8))
        let code = ClientExitCode.code(for: reason)
        if jsonRequested() { printJSONError(reason: reason.rawValue, message: message, exitCode: code) }
        return ExitCode(code)
    }
    do {
        try body()
    } catch let error as RPCErrorObject {
        throw fail(error.reason, error.message)
    } catch let error as KvantError {
        throw fail(error.reason, error.message)
    }
}

/// Whether `--json` is among the arguments (before a `--` terminator): asked before parsing succeeds, so a
/// usage error can answer in JSON too.
func jsonRequested(_ arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Bool {
    arguments.prefix { $0 != "--" }.contains("--json")
}

/// `--json` and `--socket PATH` belong to each subcommand; written before it (`kvantctl --json stats`) they are
/// moved after it (before a `--` terminator), so both places work.
func connectionOptionsAfterSubcommand(_ arguments: [String]) -> [String] {
    var leading: [String] = []
    var i = 0
    while i < arguments.count {
        let a = arguments[i]
        if a == "--json" || a.hasPrefix("--socket=") {
            leading.append(a)
            i += 1
        } else if a == "--socket", i + 1 < arguments.count {
            leading += [a, arguments[i + 1]]
            i += 2
        } else {
            break
        }
    }
    guard !leading.isEmpty else { return arguments }
    var rest = Array(arguments[i...])
    rest.insert(contentsOf: leading, at: rest.firstIndex(of: "--") ?? rest.count)
    return rest
}

/// Prints `{"error": {"reason", "message", "exit_code"}}` on stdout, the shape of every kvantctl error under `--json`.
func printJSONError(reason: String, message: String, exitCode: Int32) {
    let object: JSONValue = .object(["error": .object(["reason": .string(reason), "message": .string(message),
                                                         "exit_code": .int(Int(exitCode))])])
    try? printJSON(object)
}

func absolute(_ path: String) -> String {
    URL(fileURLWithPath: path).standardizedFileURL.path
}

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Prints `rows` as two aligned columns.
func printTable(_ rows: [(String, String)]) {
    let width = rows.map(\.0.count).max() ?? 0
    for (key, value) in rows {
        print(key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + value)
    }
}

func formatBytes(_ bytes: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024, unit < units.count - 1 { value /= 1024; unit += 1 }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}

func modelRows(_ info: ModelInfo) -> [(String, String)] {
    modelFacts(info) + (info.warnings ?? []).map { ("warning", $0) }
}

private func modelFacts(_ info: ModelInfo) -> [(String, String)] {
    [("model", info.name), ("path", info.path), ("architecture", info.architecture),
     ("layers", "\(info.numLayers)"), ("kv heads", "\(info.numKVHeads)"), ("head dim", "\(info.headDim)"),
     ("vocab", "\(info.vocabSize)"), ("max model len", "\(info.maxModelLen)"),
     ("kv cache dtype", info.kvCacheDType.rawValue), ("block size", "\(info.blockSize)"),
     ("kv cache", "\(formatBytes(info.kvCacheBytes)) (\(info.kvCacheCapacityTokens) tokens)")]
}

func scalesRows(_ report: ScalesReport) -> [(String, String)] {
    var rows: [(String, String)] = []
    if let path = report.path { rows.append(("path", path)) }
    rows += [("layers", "\(report.layers)"), ("per head", report.perHead ? "yes" : "no"),
             ("min", "\(report.min)"), ("max", "\(report.max)"), ("sha256", report.sha256)]
    if let epoch = report.epoch { rows.append(("epoch", "\(epoch)")) }
    for warning in report.warnings { rows.append(("warning", warning)) }
    rows.append(("K/V scales", report.layerKeyScales == nil ? "shared (scaling_factor)" : "separate (k_scaling_factor, v_scaling_factor)"))
    // The scales per layer (a list per layer for per-head files): shared, or K and V when separate.
    func list(_ v: [Double]) -> String { v.map { String(format: "%.6g", $0) }.joined(separator: ", ") }
    if let k = report.layerKeyScales, let v = report.layerValueScales {
        for l in 0..<min(k.count, v.count) { rows.append(("layer \(l)", "K \(list(k[l]))  V \(list(v[l]))")) }
    } else if let s = report.layerScales {
        for (l, row) in s.enumerated() { rows.append(("layer \(l)", list(row))) }
    }
    return rows
}

/// Sends `cancel` for `id` on Ctrl-C while `body` runs; a second Ctrl-C exits at once (130).
func withCancelOnInterrupt<T>(_ client: ControlClient, id: RPCID, _ body: () throws -> T) rethrows -> T {
    signal(SIGINT, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
    var interrupts = 0
    source.setEventHandler {
        interrupts += 1
        if interrupts > 1 { exit(130) }
        FileHandle.standardError.write(Data("\nkvantctl: cancelling request \(id)…\n".utf8))
        try? client.sendCancel(of: id)
    }
    source.resume()
    defer {
        source.cancel()
        signal(SIGINT, SIG_DFL)
    }
    return try body()
}

@main
struct Kvantctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvantctl",
        abstract: "Control kvantd over its Unix socket (JSON-RPC 2.0, one message per line).",
        discussion: """
        Exit codes: 0 ok, 2 invalid_argument, 3 not_found, 4 failed_precondition, 5 resource_exhausted,
        6 unavailable (also: cannot connect), 7 permission_denied, 8 cancelled, 9 internal, 64 usage.
        """,
        subcommands: [LoadModel.self, UnloadModel.self, SetKVDType.self, ReloadScales.self, Stats.self, Generate.self,
                      Tokenize.self, Perplexity.self, Calibrate.self, Health.self, Version.self, Scales.self, Drain.self])

    /// swift-argument-parser's `main`, plus: under `--json` a usage error (unknown option, missing argument,
    /// bad value; exit 64) is also printed on stdout as the error object of every other error, with reason
    /// `usage`. The parser's own text (with the usage line) still goes to stderr, with or without `--json`, and
    /// says the same error as the JSON.
    static func main() {
        do {
            var command = try parseAsRoot(connectionOptionsAfterSubcommand(Array(CommandLine.arguments.dropFirst())))
            try command.run()
        } catch {
            // ExitCode: thrown by the commands after their own output (JSON included); success: --help, --version.
            let code = exitCode(for: error)
            let arguments = Array(CommandLine.arguments.dropFirst())
            var reported = error
            if !(error is ExitCode), code != .success, jsonRequested(arguments) {
                // Only the subcommands know --json: after an unknown subcommand the parser stops at --json; the
                // error without it names the real problem ("Unexpected argument 'bogus'"). That error is the one
                // reported on both streams, so stderr's text and stdout's JSON say the same.
                if message(for: error).contains("'--json'") {
                    do { _ = try parseAsRoot(connectionOptionsAfterSubcommand(arguments.filter { $0 != "--json" })) } catch {
                        if exitCode(for: error) == code { reported = error }
                    }
                }
                printJSONError(reason: code == .validationFailure ? "usage" : ErrorReason.internal.rawValue,
                               message: message(for: reported), exitCode: code.rawValue)
            }
            exit(withError: reported)
        }
    }
}

struct LoadModel: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "load-model", abstract: "Load a GGUF model (replaces the current one when the load succeeds).")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "Model file (under the daemon's allowed_dirs).") var path: String
    @Option(name: .customLong("kv-cache-dtype")) var kvCacheDType: String?
    @Option(name: .customLong("quantization-param-path")) var quantizationParamPath: String?
    @Option(name: .customLong("kv-cache-bytes"), parsing: .unconditional) var kvCacheBytes: Int?
    @Option(name: .customLong("max-model-len"), parsing: .unconditional) var maxModelLen: Int?

    func run() throws {
        try runClient {
            let dtype = try kvCacheDType.map { try KVCacheDType(parsing: $0) }
            let params = LoadModelParams(path: absolute(path), kvCacheDType: dtype,
                                         quantizationParamPath: quantizationParamPath.map(absolute),
                                         kvCacheBytes: kvCacheBytes, maxModelLen: maxModelLen)
            try params.validate()
            let result = try connection.connect().call(.loadModel, params, as: LoadModelResult.self)
            if connection.json { return try printJSON(result) }
            printTable(modelRows(result.model) + [("load time", String(format: "%.2f s", result.loadSeconds))]
                       + (result.replaced.map { [("replaced", $0)] } ?? []))
        }
    }
}

struct UnloadModel: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "unload-model", abstract: "Unload the model.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runClient {
            let result = try connection.connect().call(.unloadModel, EmptyParams(), as: UnloadModelResult.self)
            if connection.json { return try printJSON(result) }
            print(result.unloaded ? "unloaded \(result.path ?? "")" : "no model was loaded")
        }
    }
}

struct SetKVDType: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "set-kv-dtype", abstract: "Switch the KV-cache dtype while serving (running requests finish on the old pool).")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "auto, fp16, bf16, fp32, int8_pertensor, int8_pertensor_perhead, int8_pertoken, int4_pertoken") var dtype: String
    @Option(name: .customLong("quantization-param-path")) var quantizationParamPath: String?

    func run() throws {
        try runClient {
            let params = SetKVDTypeParams(kvCacheDType: try KVCacheDType(parsing: dtype),
                                          quantizationParamPath: quantizationParamPath.map(absolute))
            let info = try connection.connect().call(.setKVDType, params, as: ModelInfo.self)
            if connection.json { return try printJSON(info) }
            printTable(modelRows(info))
        }
    }
}

struct ReloadScales: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reload-scales", abstract: "Install KV scales from a file (default: re-read the current one).")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "Scale file (kv_cache_scales.json).") var path: String?

    func run() throws {
        try runClient {
            let report = try connection.connect().call(.reloadScales, ReloadScalesParams(path: path.map(absolute)),
                                                       as: ScalesReport.self)
            if connection.json { return try printJSON(report) }
            printTable(scalesRows(report))
        }
    }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Engine figures and KV-cache statistics.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runClient {
            let stats = try connection.connect().call(.stats, EmptyParams(), as: StatsResult.self)
            if connection.json { return try printJSON(stats) }
            let e = stats.engine
            var rows: [(String, String)] = [
                ("uptime", String(format: "%.0f s", e.uptimeSeconds)), ("rss", formatBytes(e.rssBytes)),
                ("connections", "\(e.connections)"),
                ("requests", "\(e.requestsServed) served, \(e.requestsRunning) running, \(e.requestsWaiting) waiting, \(e.requestsFailed) failed"),
                ("tokens", "\(e.promptTokens) prompt, \(e.generatedTokens) generated"),
                ("prefill", String(format: "%.1f tokens/s", e.prefillTokensPerSecond)),
                ("decode", String(format: "%.1f tokens/s", e.decodeTokensPerSecond)),
                ("decode batch", String(format: "%.2f sequences/step (mean)", e.decodeBatchMean)),
                ("preemptions", "\(e.numPreemptions) (KV cache ran out of blocks; recomputed)"),
            ]
            if let model = stats.model { rows += modelRows(model) } else { rows.append(("model", "(none loaded)")) }
            if case .object(let cache) = stats.kvCache {
                for key in cache.keys.sorted() { rows.append(("kv_cache.\(key)", cache[key]!.description)) }
            }
            printTable(rows)
        }
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate text; tokens are printed as they arrive. Ctrl-C cancels.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "Prompt text.") var prompt: String
    // Numbers are read with `.unconditional` parsing, so `--top-k -1` or `--presence-penalty -0.5` work
    // without `=`; a value out of range (`--temperature -1`) is refused by GenerateParams.validate, naming it.
    @Option(name: .customLong("max-tokens"), parsing: .unconditional) var maxTokens = 128
    @Option(parsing: .unconditional) var temperature = 1.0
    @Option(name: .customLong("top-p"), parsing: .unconditional) var topP = 1.0
    @Option(name: .customLong("top-k"), parsing: .unconditional, help: "-1 or 0 = off.") var topK = 0
    @Option(name: .customLong("min-p"), parsing: .unconditional) var minP = 0.0
    @Option(name: .customLong("repetition-penalty"), parsing: .unconditional) var repetitionPenalty = 1.0
    @Option(name: .customLong("presence-penalty"), parsing: .unconditional, help: "In [-2, 2]; 0 = off.")
    var presencePenalty = 0.0
    @Option(name: .customLong("frequency-penalty"), parsing: .unconditional, help: "In [-2, 2]; 0 = off.")
    var frequencyPenalty = 0.0
    @Option(parsing: .unconditional, help: "RNG seed, an integer >= 0.") var seed: Int64?
    @Option(help: "Stop string (repeatable).") var stop: [String] = []
    @Option(name: .customLong("n"), parsing: .unconditional,
            help: "Completions of the prompt (parallel sampling, 1...16; choice i uses seed + i). With more than one, each is printed once all are done, under a '--- choice i ---' line.")
    var n = 1
    @Flag(name: .customLong("no-stream"), help: "Wait for the whole text.") var noStream = false
    @Flag(name: .customLong("skip-special-tokens"), inversion: .prefixedNo,
          help: "Leave special tokens (<end_of_turn>, <start_of_image>, …) out of the text (vLLM's skip_special_tokens).")
    var skipSpecialTokens = true

    func run() throws {
        try runClient {
            if let seed, seed < 0 { throw KvantError(.invalidArgument, "generate: 'seed' (--seed) must be an integer >= 0, got \(seed)") }
            var params = GenerateParams(prompt: prompt, maxTokens: maxTokens, temperature: temperature, topP: topP,
                                        topK: topK, minP: minP, repetitionPenalty: repetitionPenalty, seed: seed.map { UInt64($0) },
                                        stop: stop, stream: !noStream && !connection.json && n == 1)
            params.n = n
            params.presencePenalty = presencePenalty
            params.frequencyPenalty = frequencyPenalty
            params.skipSpecialTokens = skipSpecialTokens
            try params.validate()
            let client = try connection.connect()
            let id = client.makeID()
            let result = try withCancelOnInterrupt(client, id: id) {
                try client.call(.generate, params, as: GenerateResult.self, id: id) { notification in
                    guard notification.method == NotificationMethod.generateToken.rawValue,
                          let token = try? notification.params.decode(as: GenerateTokenNotification.self) else { return }
                    FileHandle.standardOutput.write(Data(token.text.utf8))
                }
            }
            let cancelled = result.finishReason == .cancelled || (result.choices ?? []).contains { $0.finishReason == .cancelled }
            if connection.json {
                try printJSON(result)
                if cancelled { throw ExitCode(ClientExitCode.code(for: .cancelled)) }
                return
            }
            if let choices = result.choices {
                // n > 1: each choice's text under its own line, then one summary line per choice on stderr.
                for choice in choices {
                    FileHandle.standardOutput.write(Data("--- choice \(choice.index) ---\n\(choice.text)\n".utf8))
                }
                var summary = "[\(result.promptTokens) prompt tokens, \(choices.count) choices]\n"
                for choice in choices {
                    summary += String(format: "[choice %d: %d generated tokens, finish %@, decode %.1f tok/s]\n", choice.index,
                                      choice.completionTokens, choice.finishReason.rawValue, choice.timings.decodeTokensPerSecond)
                }
                FileHandle.standardError.write(Data(summary.utf8))
                if cancelled { throw ExitCode(ClientExitCode.code(for: .cancelled)) }
                return
            }
            // Through the same FileHandle as the streamed pieces (unbuffered), so the newline is out
            // before the summary on stderr even when both go to one pipe.
            if !params.stream { FileHandle.standardOutput.write(Data(result.text.utf8)) }
            FileHandle.standardOutput.write(Data("\n".utf8))
            let t = result.timings
            FileHandle.standardError.write(Data(String(
                format: "[%d prompt + %d generated tokens, finish %@, prefill %.1f tok/s, decode %.1f tok/s]\n",
                result.promptTokens, result.completionTokens, result.finishReason.rawValue,
                t.prefillTokensPerSecond, t.decodeTokensPerSecond).utf8))
            if result.finishReason == .cancelled { throw ExitCode(ClientExitCode.code(for: .cancelled)) }
        }
    }
}

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Token ids of a text.")
    @OptionGroup var connection: ConnectionOptions
    @Argument var text: String

    func run() throws {
        try runClient {
            let result = try connection.connect().call(.tokenize, TokenizeParams(text: text), as: TokenizeResult.self)
            if connection.json { return try printJSON(result) }
            print("\(result.count) tokens: " + result.tokens.map(String.init).joined(separator: " "))
        }
    }
}

struct Perplexity: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Perplexity of a text file. Ctrl-C cancels.")
    @OptionGroup var connection: ConnectionOptions
    @Argument var path: String
    @Option(parsing: .unconditional, help: "Window in tokens.") var ctx: Int?

    func run() throws {
        try runClient {
            let client = try connection.connect()
            let id = client.makeID()
            let result = try withCancelOnInterrupt(client, id: id) {
                try client.call(.perplexity, PerplexityParams(path: absolute(path), ctx: ctx), as: PerplexityResult.self,
                                id: id) { notification in
                    if !connection.json, let progress = try? notification.params.decode(as: ProgressNotification.self) {
                        ProgressLine.update("perplexity: \(progress.done)/\(progress.total) tokens")
                    }
                }
            }
            ProgressLine.finish()
            if connection.json { return try printJSON(result) }
            printTable([("perplexity", String(format: "%.4f", result.perplexity)),
                        ("mean nll", String(format: "%.5f", result.meanNLL)),
                        ("tokens", "\(result.tokens)"), ("chunks", "\(result.chunks)"),
                        ("time", String(format: "%.1f s", result.seconds))])
        }
    }
}

struct Calibrate: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Record K/V amax over text and write a kv_cache_scales.json. Ctrl-C cancels.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Output scale file (its directory under allowed_dirs).") var output: String
    @Option(name: .customLong("text-path"), help: "Calibration text file under allowed_dirs (default: the built-in English/code/Chinese sample: 1016 tokens with Gemma 3, 1221 with SmolLM2).")
    var textPath: String?
    @Option(name: .customLong("num-tokens"), parsing: .unconditional, help: "Tokens of the text to run, at least 16 (default 2048, or all of a shorter text).")
    var numTokens: Int?
    @Flag(name: .customLong("per-head"), help: "One scale per (layer, KV head) instead of per layer.") var perHead = false
    @Option(name: .customLong("tp-size"), parsing: .unconditional, help: "Tensor-parallel ranks to write (vLLM schema), heads split in order (default 1).")
    var tpSize: Int?
    @Option(parsing: .unconditional, help: "Clip at this percentile of |K| and |V| in (0, 100); 100 = plain amax/127 (default: the MSE-optimal clip).")
    var percentile: Double?
    @Flag(name: .customLong("shared-kv-scale"),
          help: "Write only vLLM's shared K/V scale per layer (no k_scaling_factor / v_scaling_factor).")
    var sharedKVScale = false

    func run() throws {
        try runClient {
            let params = CalibrateParams(textPath: textPath.map(absolute), numTokens: numTokens, perHead: perHead,
                                         tpSize: tpSize, percentile: percentile, separateKV: sharedKVScale ? false : nil,
                                         output: absolute(output))
            try params.validate()
            let client = try connection.connect()
            let id = client.makeID()
            let result = try withCancelOnInterrupt(client, id: id) {
                try client.call(.calibrate, params, as: CalibrateResult.self, id: id) { notification in
                    if !connection.json, let progress = try? notification.params.decode(as: ProgressNotification.self) {
                        ProgressLine.update("calibrate: \(progress.done)/\(progress.total) tokens")
                    }
                }
            }
            ProgressLine.finish()
            if connection.json { return try printJSON(result) }
            printTable([("output", result.output), ("tokens", "\(result.tokens)"),
                        ("time", String(format: "%.1f s", result.seconds))] + scalesRows(result.scales))
        }
    }
}

struct Health: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Liveness and model state.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runClient {
            let result = try connection.connect().call(.health, EmptyParams(), as: HealthResult.self)
            if connection.json { return try printJSON(result) }
            var rows: [(String, String)] = [("status", result.status), ("model", result.model ?? "(none loaded)")]
            if let dtype = result.kvCacheDType { rows.append(("kv cache dtype", dtype.rawValue)) }
            rows.append(("uptime", String(format: "%.0f s", result.uptimeSeconds)))
            if let lastError = result.lastError { rows.append(("last error", lastError)) }
            printTable(rows)
        }
    }
}

struct Drain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Take the daemon out of rotation: /health answers 503 draining, new HTTP requests get 503.",
        discussion: """
        Requests in flight run to their end; by default the command waits for them (at most
        shutdown_timeout_seconds) and exits 0 once none is left, 4 (failed_precondition) if some still run.
        The daemon keeps running: stop it (systemctl stop, SIGTERM) or end the drain with --resume.
        """)
    @OptionGroup var connection: ConnectionOptions
    @Flag(name: .customLong("no-wait"), help: "Return at once instead of waiting for the requests in flight.")
    var noWait = false
    @Flag(help: "End the drain: serve new requests again.")
    var resume = false

    func run() throws {
        try runClient {
            let result = try connection.connect().call(.drain, DrainParams(wait: !noWait, resume: resume), as: DrainResult.self)
            let unfinished = result.draining && !noWait && !result.drained
            if connection.json {
                try printJSON(result)
                if unfinished { throw ExitCode(ClientExitCode.code(for: .failedPrecondition)) }
                return
            }
            if resume {
                // What happened, not "draining no / drained yes".
                switch result.resumed {
                case false?: print("not draining: nothing to resume; new HTTP requests are served (\(result.inFlight) in flight)")
                default: print("drain ended: new HTTP requests are served again (\(result.inFlight) in flight)")
                }
                return
            }
            printTable([("draining", result.draining ? "yes (\(result.reason ?? "drain"))" : "no"),
                        ("in flight", String(result.inFlight)), ("drained", result.drained ? "yes" : "no")])
            if unfinished {
                throw KvantError(.failedPrecondition, "\(result.inFlight) HTTP request(s) still in flight after shutdown_timeout_seconds")
            }
        }
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Daemon and protocol versions.")
    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runClient {
            let result = try connection.connect().call(.version, EmptyParams(), as: VersionResult.self)
            if connection.json { return try printJSON(result) }
            printTable([("daemon", result.daemonVersion), ("protocol", "\(result.protocolVersion)"),
                        ("client protocol", "\(controlProtocolVersion)"), ("backend", result.backend)])
        }
    }
}

struct Scales: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Inspect KV scales.", subcommands: [Show.self, Validate.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The scales the KV cache uses now.")
        @OptionGroup var connection: ConnectionOptions

        func run() throws {
            try runClient {
                let result = try connection.connect().call(.scalesShow, EmptyParams(), as: ScalesShowResult.self)
                if connection.json { return try printJSON(result) }
                printTable([("kv cache dtype", result.kvCacheDType.rawValue)]
                           + (result.scales.map(scalesRows) ?? [("scales", "(none: this dtype uses no static scales)")]))
            }
        }
    }

    struct Validate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check a scale file without installing it.")
        @OptionGroup var connection: ConnectionOptions
        @Argument var file: String

        func run() throws {
            try runClient {
                let report = try connection.connect().call(.scalesValidate, ScalesValidateParams(path: absolute(file)),
                                                           as: ScalesReport.self)
                if connection.json { return try printJSON(report) }
                printTable(scalesRows(report))
            }
        }
    }
}
