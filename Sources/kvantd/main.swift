import ArgumentParser
import Foundation
import KvantCore
import KvantDaemon
import KvantExecutorBackend
import KvantHTTP
import Logging
import Prometheus

@main
struct Kvantd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvantd",
        abstract: "Kvant daemon: serves LLMs on the CPU with a quantized, paged KV cache.",
        discussion: "Flags override the configuration file (--config). Under systemd, a socket passed by kvantd.socket is used instead of --socket.",
        version: kvantDaemonVersion)

    @Option(name: .customLong("config"), help: "TOML configuration file.")
    var config: String?

    @Option(help: "Model (GGUF) to load at start-up.")
    var model: String?

    @Option(name: .customLong("kv-cache-dtype"), help: "auto, fp16, bf16, fp32, int8_pertensor, int8_pertensor_perhead, int8_pertoken, int4_pertoken.")
    var kvCacheDType: String?

    @Option(name: .customLong("quantization-param-path"), help: "KV scale file (kv_cache_scales.json) for the static int8 modes.")
    var quantizationParamPath: String?

    @Option(name: .customLong("block-size"), parsing: .unconditional, help: "Token positions per KV block.")
    var blockSize: Int?

    @Option(name: .customLong("kv-cache-bytes"), parsing: .unconditional, help: "KV-cache pool size in bytes.")
    var kvCacheBytes: Int?

    @Option(name: .customLong("max-model-len"), parsing: .unconditional, help: "Longest sequence in tokens.")
    var maxModelLen: Int?

    @Option(name: .customLong("max-num-seqs"), parsing: .unconditional,
            help: "Sequences generated at once; more requests wait (max_num_seqs, default 16).")
    var maxNumSeqs: Int?

    @Option(name: .customLong("max-num-batched-tokens"), parsing: .unconditional,
            help: "Tokens one engine step computes at most: decode rows plus prefill chunks; longer prompts are prefilled in chunks (max_num_batched_tokens, default 64).")
    var maxNumBatchedTokens: Int?

    @Option(help: "Control socket path.")
    var socket: String?

    @Option(parsing: .unconditional, help: "Compute threads (0 = one per core).")
    var threads: Int?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?

    @Flag(name: .customLong("enable-prefix-caching"), inversion: .prefixedNo,
          help: "Automatic prefix caching: reuse the KV blocks of earlier prompts' common prefix (enable_prefix_caching; default on).")
    var enablePrefixCaching: Bool?

    @Option(name: .customLong("allowed-dir"), help: "Directory model/scale/text paths must lie under (repeatable; replaces allowed_dirs).")
    var allowedDirs: [String] = []

    @Option(help: "HTTP API (OpenAI-compatible) listen address (http_host; default 127.0.0.1).")
    var host: String?

    @Option(parsing: .unconditional, help: "HTTP API port (http_port; default 8000; 0 = no TCP listener).")
    var port: Int?

    @Flag(name: .customLong("no-http"), help: "No HTTP API (neither TCP nor http_unix_socket).")
    var noHTTP = false

    @Option(name: .customLong("http-unix-socket"), help: "Also serve the HTTP API on this Unix socket.")
    var httpUnixSocket: String?

    @Option(name: .customLong("api-key"), help: "Require 'Authorization: Bearer KEY' on the HTTP API (api_key).")
    var apiKey: String?

    @Option(name: .customLong("served-model-name"), help: "Model id in /v1/models and responses (default: the model file's name without .gguf).")
    var servedModelName: String?

    @Option(name: .customLong("chat-template"), help: "Jinja chat template file overriding the model's tokenizer.chat_template.")
    var chatTemplate: String?

    @Option(name: .customLong("timeout-keep-alive"), parsing: .unconditional, help: "Seconds before an idle HTTP connection (or one whose request stalls) is closed (timeout_keep_alive, default 5).")
    var timeoutKeepAlive: Int?

    func run() async throws {
        // A closed stdout/stderr pipe (`kvantd 2>&1 | head`) must not end the daemon: writes then
        // fail with EPIPE, which the log handler ignores. Sockets use MSG_NOSIGNAL/NIO anyway.
        signal(SIGPIPE, SIG_IGN)
        let configuration: DaemonConfiguration
        do {
            configuration = try resolveConfiguration()
        } catch let error as KvantError {
            writeToStandardError("<3>kvantd: \(error.message)\n")
            throw ExitCode(78)   // EX_CONFIG
        }
        let level = configuration.logLevel
        LoggingSystem.bootstrap { JournalLogHandler(label: $0, level: level) }
        let logger = Logger(label: "kvantd")
        do {
            let listenFD = try SocketActivation.listeningSocket()
            // One registry: the engine's counters write to it, GET /metrics renders it.
            let registry = PrometheusCollectorRegistry()
            let daemon = try Daemon(configuration: configuration, backend: ExecutorBackend(logger: Logger(label: "kvant.executor")),
                                    notifier: .fromEnvironment(), logger: logger, listenFD: listenFD,
                                    metricsFactory: MetricsExporter.makeMetricsFactory(registry: registry))
            let http = HTTPSettings(configuration).isEnabled
                ? try KvantHTTPServer(daemon: daemon, metrics: MetricsExporter(registry: registry), logger: logger) : nil
            logger.info("starting", metadata: ["version": "\(kvantDaemonVersion)", "backend": "\(daemon.engine.backend.name)"])
            try await daemon.makeServiceGroup(listeners: http.map { [$0] } ?? []).run()
        } catch let error as KvantError {
            logger.critical("\(error.message)", metadata: ["reason": "\(error.reason.rawValue)"])
            // `systemctl status` shows why the start failed (no READY=1 was sent; the exit code fails the unit).
            SystemdNotifier.fromEnvironment().status("failed: \(error.message)")
            throw ExitCode(1)
        }
    }

    private func resolveConfiguration() throws -> DaemonConfiguration {
        var configuration = try config.map { try DaemonConfiguration.load(path: $0) } ?? DaemonConfiguration()
        try configuration.applyFlags(model: model, kvCacheDType: kvCacheDType, quantizationParamPath: quantizationParamPath,
                                     blockSize: blockSize, kvCacheBytes: kvCacheBytes, maxModelLen: maxModelLen,
                                     socket: socket, threads: threads, logLevel: logLevel, allowedDirs: allowedDirs,
                                     maxNumBatchedTokens: maxNumBatchedTokens, enablePrefixCaching: enablePrefixCaching,
                                     maxNumSeqs: maxNumSeqs)
        try configuration.applyHTTPFlags(host: host, port: port, noHTTP: noHTTP, unixSocket: httpUnixSocket, apiKey: apiKey,
                                         servedModelName: servedModelName, chatTemplate: chatTemplate,
                                         timeoutKeepAlive: timeoutKeepAlive)
        try configuration.validate()
        return configuration
    }
}
