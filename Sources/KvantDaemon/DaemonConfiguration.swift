import Foundation
import KvantCore
import Logging
import TOMLKit

/// The daemon's configuration: defaults, then the TOML file (`--config`), then command-line flags.
///
/// - Configuration keys:
///   - `socket` (string, default `/run/kvant/kvantd.sock`): control socket path; ignored under socket activation.
///   - `socket_group` (string): group owning the socket and allowed to call mutating methods.
///   - `socket_mode` (string of octal digits, default `"0660"`): permission bits of the socket file.
///   - `model` (string): model loaded at start-up (must lie under `allowed_dirs`); READY=1 waits for it.
///   - `kv_cache_dtype` (string, default `auto`): `auto`, `fp16`, `bf16`, `fp32`, `int8_pertensor`,
///     `int8_pertensor_perhead`, `int8_pertoken`, `int4_pertoken`.
///   - `quantization_param_path` (string): scale file (`kv_cache_scales.json`) for the static int8 modes.
///   - `kv_cache_bytes` (integer, default 268435456): KV-cache pool budget in bytes.
///   - `block_size` (integer, default 16): token positions per KV block (1…1024).
///   - `max_model_len` (integer): longest sequence in tokens; default the model's context length.
///   - `max_num_seqs` (integer, default 16): sequences generated at once; more requests wait.
///   - `max_num_batched_tokens` (integer, default 64, vLLM's name): tokens one engine step computes at most,
///     decode rows of running sequences plus prefill chunks; longer prompts are prefilled in chunks
///     (chunked prefill). At least `max_num_seqs`.
///   - `threads` (integer, default 0 = one per core): compute threads.
///   - `allowed_dirs` (array of strings, default `["/var/lib/kvant"]`): directories model, scale and
///     text paths must lie under (realpath'd).
///   - `log_level` (string, default `info`): `trace`, `debug`, `info`, `notice`, `warning`, `error`, `critical`.
///   - `shutdown_timeout_seconds` (number, default 30): how long in-flight requests may run after
///     SIGTERM before they are cancelled.
///   - `perplexity_ctx` (integer, default 512): default window of `perplexity`.
///   - `enable_prefix_caching` (boolean, default true; vLLM's key): automatic prefix caching — a prompt
///     that starts like an earlier one reuses its cached KV blocks and prefills only the rest.
///   - HTTP API (OpenAI-compatible, vLLM's spelling; see docs/http.md):
///     `http_host` (string, default `127.0.0.1`), `http_port` (integer, default 8000; 0 = no HTTP listener),
///     `http_unix_socket` (string: also serve the API on this Unix socket), `api_key` (string: required as
///     `Authorization: Bearer …`), `served_model_name` (string, default the model file's name without `.gguf`),
///     `chat_template` (string: Jinja file overriding the model's `tokenizer.chat_template`),
///     `max_request_body_bytes` (integer, default 8388608), `max_queued_requests` (integer, default 64:
///     HTTP generation requests that may wait beyond `max_num_seqs`; more get 429), `timeout_keep_alive`
///     (integer seconds, default 5, vLLM's `--timeout-keep-alive`: a connection with no request in progress, or
///     whose request is not sent on, is closed after this long without bytes).
public struct DaemonConfiguration: Sendable, Equatable {
    public var socket: String = "/run/kvant/kvantd.sock"
    public var socketGroup: String?
    public var socketMode: UInt32 = 0o660
    public var model: String?
    public var kvCacheDType: KVCacheDType = .auto
    public var quantizationParamPath: String?
    public var kvCacheBytes: Int = 256 << 20
    public var blockSize: Int = 16
    public var maxModelLen: Int?
    public var maxNumSeqs: Int = 16
    public var maxNumBatchedTokens: Int = Engine.Settings.defaultMaxNumBatchedTokens
    public var threads: Int = 0
    public var allowedDirs: [String] = ["/var/lib/kvant"]
    public var logLevel: Logger.Level = .info
    public var shutdownTimeoutSeconds: Double = 30
    public var perplexityContext: Int = 512
    public var enablePrefixCaching: Bool = true
    public var httpHost: String = "127.0.0.1"
    /// 0 = no TCP listener for the HTTP API.
    public var httpPort: Int = 8000
    public var httpUnixSocket: String?
    public var apiKey: String?
    public var servedModelName: String?
    public var chatTemplate: String?
    public var maxRequestBodyBytes: Int = 8 << 20
    public var maxQueuedRequests: Int = 64
    public var timeoutKeepAlive: Int = 5

    public init() {}

    /// Every key the file may contain.
    public static let keys = [
        "socket", "socket_group", "socket_mode", "model", "kv_cache_dtype", "quantization_param_path",
        "kv_cache_bytes", "block_size", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "threads", "allowed_dirs", "log_level",
        "shutdown_timeout_seconds", "perplexity_ctx", "enable_prefix_caching",
        "http_host", "http_port", "http_unix_socket", "api_key", "served_model_name", "chat_template",
        "max_request_body_bytes", "max_queued_requests", "timeout_keep_alive",
    ]

    /// Reads a TOML file over the defaults.
    /// - Throws: `KvantError(.invalidArgument)` naming the file and the key for syntax errors,
    ///   unknown keys, wrong types and out-of-range values; `.notFound` for a missing file.
    public static func load(path: String) throws -> DaemonConfiguration {
        let text: String
        switch FileBytes.read(path, maxBytes: 1 << 20) {
        case .missing: throw KvantError(.notFound, "configuration file \(path) does not exist")
        case .bytes(let bytes):
            guard let decoded = String(validating: bytes, as: UTF8.self) else {
                throw KvantError(.invalidArgument, "configuration file \(path) is not readable UTF-8 text")
            }
            text = decoded
        case .tooLarge(let size): throw KvantError(.invalidArgument, "configuration file \(path) is \(size) bytes; at most 1 MiB")
        case .directory, .notRegular: throw KvantError(.invalidArgument, "configuration file \(path) is not a regular file")
        case .failed(let reason): throw KvantError(.invalidArgument, "configuration file \(path) is not readable UTF-8 text: \(reason)")
        }
        return try parse(toml: text, file: path)
    }

    /// Parses TOML text (`file` names it in errors).
    public static func parse(toml text: String, file: String) throws -> DaemonConfiguration {
        let table: TOMLTable
        if let line = keylessTableHeaderLine(text) {
            throw KvantError(.invalidArgument,
                             "\(file): TOML syntax error at line \(line): '[' starts a table header but no key follows it")
        }
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw KvantError(.invalidArgument,
                             "\(file): TOML syntax error at line \(error.source.begin.line), column \(error.source.begin.column): \(error.description)")
        }
        var config = DaemonConfiguration()
        for key in table.keys.sorted() {
            guard let value = table[key]?.tomlValue else { continue }
            guard keys.contains(key) else {
                throw KvantError(.invalidArgument, "\(file): unknown key '\(key)'; known keys: \(keys.joined(separator: ", "))")
            }
            try config.apply(key: key, value: value, file: file)
        }
        return config
    }

    /// The first line (1-based) that opens a table header (`[` or `[[`) with no key after it (`[`, `[ ]`,
    /// `[[[`, `[#`), or nil. toml++ (under TOMLKit) asserts on such a header instead of reporting an error,
    /// which would abort the daemon: they are refused here first. Lines inside multi-line strings are skipped;
    /// a value line of a nested array could start with `[[[` or `[[]`, but no key of this file takes one.
    static func keylessTableHeaderLine(_ text: String) -> Int? {
        var inMultilineString: Substring? = nil
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = raw[...]
            if let delimiter = inMultilineString {
                guard let end = line.range(of: delimiter) else { continue }
                line = line[end.upperBound...]
                inMultilineString = nil
            }
            for delimiter in ["\"\"\"", "'''"] where line.components(separatedBy: delimiter).count % 2 == 0 {
                inMultilineString = Substring(delimiter)
            }
            var rest = line.drop { $0 == " " || $0 == "\t" }
            guard rest.first == "[" else { continue }
            rest = rest.dropFirst()
            if rest.first == "[" { rest = rest.dropFirst() }
            rest = rest.drop { $0 == " " || $0 == "\t" }
            guard let next = rest.first else { return index + 1 }
            let bare = next.isASCII && (next.isLetter || next.isNumber || next == "_" || next == "-")
            if !(bare || next == "\"" || next == "'") { return index + 1 }
        }
        return nil
    }

    private mutating func apply(key: String, value: TOMLValue, file: String) throws {
        func bad(_ expected: String) -> KvantError {
            KvantError(.invalidArgument, "\(file): key '\(key)' must be \(expected) (found \(value.type))")
        }
        func string() throws -> String {
            guard let string = value.string else { throw bad("a string") }
            return string
        }
        func int(_ range: ClosedRange<Int>) throws -> Int {
            guard let number = value.int else { throw bad("an integer") }
            return try Self.checked(number, range, what: "\(file): key '\(key)' =")
        }
        switch key {
        case "socket": socket = try string()
        case "socket_group": socketGroup = try string()
        case "socket_mode":
            let text = try string()
            socketMode = try Self.parseMode(text, what: "\(file): key 'socket_mode'")
        case "model": model = try string()
        case "kv_cache_dtype":
            do { kvCacheDType = try KVCacheDType(parsing: try string()) } catch let error as KvantError {
                throw KvantError(.invalidArgument, "\(file): key 'kv_cache_dtype': \(error.message)")
            }
        case "quantization_param_path": quantizationParamPath = try string()
        case "kv_cache_bytes": kvCacheBytes = try int(Limits.kvCacheBytes)
        case "block_size": blockSize = try int(Limits.blockSize)
        case "max_model_len": maxModelLen = try int(Limits.maxModelLen)
        case "max_num_seqs": maxNumSeqs = try int(Limits.maxNumSeqs)
        case "max_num_batched_tokens": maxNumBatchedTokens = try int(Limits.maxNumBatchedTokens)
        case "threads": threads = try int(Limits.threads)
        case "allowed_dirs":
            guard let array = value.array else { throw bad("an array of strings") }
            allowedDirs = try array.map {
                guard let dir = $0.tomlValue.string else { throw bad("an array of strings") }
                return dir
            }
        case "log_level":
            let text = try string()
            guard let level = Logger.Level(rawValue: text) else {
                throw KvantError(.invalidArgument,
                                 "\(file): key 'log_level' = '\(text)'; expected one of: \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            logLevel = level
        case "shutdown_timeout_seconds":
            guard let seconds = value.double ?? value.int.map(Double.init) else { throw bad("a number") }
            guard seconds >= 0, seconds <= 3600 else {
                throw KvantError(.invalidArgument, "\(file): key 'shutdown_timeout_seconds' = \(seconds) is out of range 0...3600")
            }
            shutdownTimeoutSeconds = seconds
        case "perplexity_ctx": perplexityContext = try int(Limits.perplexityContext)
        case "enable_prefix_caching":
            guard let flag = value.bool else { throw bad("a boolean (true or false)") }
            enablePrefixCaching = flag
        case "http_host": httpHost = try string()
        case "http_port": httpPort = try int(Limits.httpPort)
        case "http_unix_socket": httpUnixSocket = try string()
        case "api_key":
            let key = try string()
            guard !key.isEmpty else { throw KvantError(.invalidArgument, "\(file): key 'api_key' is empty; leave it out for no key") }
            apiKey = key
        case "served_model_name": servedModelName = try string()
        case "chat_template": chatTemplate = try string()
        case "max_request_body_bytes": maxRequestBodyBytes = try int(Limits.maxRequestBodyBytes)
        case "max_queued_requests": maxQueuedRequests = try int(Limits.maxQueuedRequests)
        case "timeout_keep_alive": timeoutKeepAlive = try int(Limits.timeoutKeepAlive)
        default:
            throw KvantError(.invalidArgument, "\(file): unknown key '\(key)'")
        }
    }

    /// The allowed values of the integer settings, the same for the file's keys and the flags.
    public enum Limits {
        public static let kvCacheBytes = 1...Int.max
        public static let blockSize = 1...1024
        public static let maxModelLen = 1...(1 << 24)
        public static let maxNumSeqs = 1...1024
        public static let maxNumBatchedTokens = 1...(1 << 20)
        public static let threads = 0...4096
        public static let perplexityContext = 2...(1 << 24)
        public static let httpPort = 0...65535
        public static let maxRequestBodyBytes = 1024...(1 << 30)
        public static let maxQueuedRequests = 0...1_000_000
        public static let timeoutKeepAlive = 1...86_400
    }

    /// `value` when it lies in `range`.
    /// - Throws: `KvantError(.invalidArgument)` "`what` N is out of range A...B" (`what` names the key or flag).
    public static func checked(_ value: Int, _ range: ClosedRange<Int>, what: String) throws -> Int {
        guard range.contains(value) else {
            if range.upperBound == Int.max {
                throw KvantError(.invalidArgument, "\(what) \(value) must be at least \(range.lowerBound)")
            }
            throw KvantError(.invalidArgument, "\(what) \(value) is out of range \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    /// Applies command-line flags over the file's values (flags win), with the same checks as the file.
    /// Every parameter is optional; nil leaves the setting as it is.
    /// - Throws: `KvantError(.invalidArgument)` naming the flag.
    public mutating func applyFlags(model: String? = nil, kvCacheDType: String? = nil, quantizationParamPath: String? = nil,
                                    blockSize: Int? = nil, kvCacheBytes: Int? = nil, maxModelLen: Int? = nil,
                                    socket: String? = nil, threads: Int? = nil, logLevel: String? = nil,
                                    allowedDirs: [String] = [], maxNumBatchedTokens: Int? = nil,
                                    enablePrefixCaching: Bool? = nil, maxNumSeqs: Int? = nil) throws {
        if let maxNumSeqs { self.maxNumSeqs = try Self.checked(maxNumSeqs, Limits.maxNumSeqs, what: "--max-num-seqs") }
        if let maxNumBatchedTokens {
            self.maxNumBatchedTokens = try Self.checked(maxNumBatchedTokens, Limits.maxNumBatchedTokens, what: "--max-num-batched-tokens")
        }
        if let model { self.model = model }
        if let enablePrefixCaching { self.enablePrefixCaching = enablePrefixCaching }
        if let kvCacheDType {
            do { self.kvCacheDType = try KVCacheDType(parsing: kvCacheDType) } catch let error as KvantError {
                throw KvantError(.invalidArgument, "--kv-cache-dtype: \(error.message)")
            }
        }
        if let quantizationParamPath { self.quantizationParamPath = quantizationParamPath }
        if let blockSize { self.blockSize = try Self.checked(blockSize, Limits.blockSize, what: "--block-size") }
        if let kvCacheBytes { self.kvCacheBytes = try Self.checked(kvCacheBytes, Limits.kvCacheBytes, what: "--kv-cache-bytes") }
        if let maxModelLen { self.maxModelLen = try Self.checked(maxModelLen, Limits.maxModelLen, what: "--max-model-len") }
        if let socket { self.socket = socket }
        if let threads { self.threads = try Self.checked(threads, Limits.threads, what: "--threads") }
        if let logLevel {
            guard let level = Logger.Level(rawValue: logLevel) else {
                throw KvantError(.invalidArgument,
                                 "--log-level '\(logLevel)'; expected one of: \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            self.logLevel = level
        }
        if !allowedDirs.isEmpty { self.allowedDirs = allowedDirs }
    }

    /// Applies the HTTP API's flags (vLLM's `--host`, `--port`, `--api-key`, `--served-model-name`,
    /// `--chat-template`; `--no-http` turns off both listeners), with the file's checks.
    /// - Throws: `KvantError(.invalidArgument)` naming the flag.
    public mutating func applyHTTPFlags(host: String? = nil, port: Int? = nil, noHTTP: Bool = false, unixSocket: String? = nil,
                                        apiKey: String? = nil, servedModelName: String? = nil, chatTemplate: String? = nil,
                                        timeoutKeepAlive: Int? = nil) throws {
        if let timeoutKeepAlive { self.timeoutKeepAlive = try Self.checked(timeoutKeepAlive, Limits.timeoutKeepAlive, what: "--timeout-keep-alive") }
        if let host { httpHost = host }
        if let port { httpPort = try Self.checked(port, Limits.httpPort, what: "--port") }
        if let unixSocket { httpUnixSocket = unixSocket }
        if noHTTP {
            httpPort = 0
            httpUnixSocket = nil
        }
        if let apiKey {
            guard !apiKey.isEmpty else { throw KvantError(.invalidArgument, "--api-key is empty; leave it out for no key") }
            self.apiKey = apiKey
        }
        if let servedModelName { self.servedModelName = servedModelName }
        if let chatTemplate { self.chatTemplate = chatTemplate }
    }

    /// Checks the settings that depend on each other, after the file and the flags.
    /// - Throws: `KvantError(.invalidArgument)` naming both settings: `max_num_batched_tokens` below
    ///   `max_num_seqs` (vLLM refuses it too: a step must hold a decode row of every running sequence).
    public func validate() throws {
        guard maxNumBatchedTokens >= maxNumSeqs else {
            throw KvantError(.invalidArgument,
                             "max_num_batched_tokens (\(maxNumBatchedTokens)) must be at least max_num_seqs (\(maxNumSeqs)): a step decodes one token of every running sequence")
        }
    }

    /// Parses an octal mode such as `0660`.
    public static func parseMode(_ text: String, what: String) throws -> UInt32 {
        guard let mode = UInt32(text, radix: 8), mode <= 0o777 else {
            throw KvantError(.invalidArgument, "\(what) = '\(text)' is not an octal mode such as \"0660\"")
        }
        return mode
    }

    /// The engine settings this configuration implies.
    public var engineSettings: Engine.Settings {
        Engine.Settings(kvCacheDType: kvCacheDType, quantizationParamPath: quantizationParamPath,
                        kvCacheBytes: kvCacheBytes, blockSize: blockSize, maxModelLen: maxModelLen, threads: threads,
                        maxNumSeqs: maxNumSeqs, perplexityContext: perplexityContext,
                        maxNumBatchedTokens: maxNumBatchedTokens, enablePrefixCaching: enablePrefixCaching)
    }
}
