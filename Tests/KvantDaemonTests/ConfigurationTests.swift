import Foundation
import KvantCore
import KvantDaemon
import KvantTestSupport
import Logging
import Testing

@Suite("Configuration (TOML)")
struct ConfigurationTests {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    @Test("config/kvantd.toml parses and sets every documented key")
    func shippedFile() throws {
        let config = try DaemonConfiguration.load(path: Self.repoRoot + "/config/kvantd.toml")
        #expect(config.socket == "/run/kvant/kvantd.sock")
        #expect(config.socketGroup == "kvant")
        #expect(config.socketMode == 0o660)
        #expect(config.model == nil)
        #expect(config.kvCacheDType == .auto)
        #expect(config.kvCacheBytes == 268_435_456)
        #expect(config.blockSize == 16)
        #expect(config.maxNumSeqs == 16)
        #expect(config.maxNumBatchedTokens == 64)
        #expect(config.allowedDirs == ["/var/lib/kvant"])
        #expect(config.logLevel == .info)
        #expect(config.shutdownTimeoutSeconds == 30)
        #expect(config.perplexityContext == 512)
        #expect(config.enablePrefixCaching)
        // Every key the parser knows is documented in the shipped file (set or commented out).
        let text = try String(contentsOfFile: Self.repoRoot + "/config/kvantd.toml", encoding: .utf8)
        for key in DaemonConfiguration.keys {
            #expect(text.contains("\n\(key) =") || text.contains("\n# \(key) ="), "key \(key) undocumented")
        }
    }

    @Test("max_num_batched_tokens: key, flag (flags win), and at least max_num_seqs")
    func maxNumBatchedTokens() throws {
        var config = try DaemonConfiguration.parse(toml: "max_num_batched_tokens = 512\nmax_num_seqs = 8", file: "t.toml")
        #expect(config.maxNumBatchedTokens == 512)
        #expect(config.engineSettings.maxNumBatchedTokens == 512)
        try config.validate()
        try config.applyFlags(maxNumBatchedTokens: 64)
        #expect(config.maxNumBatchedTokens == 64)
        #expect(throws: KvantError.self) { try config.applyFlags(maxNumBatchedTokens: 0) }
        config.maxNumBatchedTokens = 4
        let error = try #require(throws: KvantError.self) { try config.validate() }
        #expect(error.message == "max_num_batched_tokens (4) must be at least max_num_seqs (8): a step decodes one token of every running sequence")
        #expect(throws: KvantError.self) { try DaemonConfiguration.parse(toml: "max_num_batched_tokens = 0", file: "t.toml") }
    }

    @Test("max_num_seqs: key, --max-num-seqs flag (flags win, same range as the key)")
    func maxNumSeqsFlag() throws {
        var config = try DaemonConfiguration.parse(toml: "max_num_seqs = 8\nmax_num_batched_tokens = 512", file: "t.toml")
        #expect(config.maxNumSeqs == 8)
        try config.applyFlags(maxNumSeqs: 32)
        #expect(config.maxNumSeqs == 32 && config.engineSettings.maxNumSeqs == 32)
        let error = try #require(throws: KvantError.self) { try config.applyFlags(maxNumSeqs: 0) }
        #expect(error.message == "--max-num-seqs 0 is out of range 1...1024")
        #expect(config.maxNumSeqs == 32)
    }

    @Test("values of every type")
    func values() throws {
        let config = try DaemonConfiguration.parse(toml: """
            model = "/m/x.gguf"
            kv_cache_dtype = "int8_pertensor_perhead"
            quantization_param_path = "/m/s.json"
            socket_mode = "0600"
            max_model_len = 4096
            threads = 2
            log_level = "debug"
            shutdown_timeout_seconds = 2.5
            allowed_dirs = ["/a", "/b"]
            enable_prefix_caching = false
            """, file: "t.toml")
        #expect(config.model == "/m/x.gguf")
        #expect(config.kvCacheDType == .int8PerTensorPerHead)
        #expect(config.quantizationParamPath == "/m/s.json")
        #expect(config.socketMode == 0o600)
        #expect(config.maxModelLen == 4096)
        #expect(config.threads == 2)
        #expect(config.logLevel == .debug)
        #expect(config.shutdownTimeoutSeconds == 2.5)
        #expect(config.allowedDirs == ["/a", "/b"])
        #expect(!config.enablePrefixCaching && !config.engineSettings.enablePrefixCaching)
        // The flag wins over the file.
        var flagged = config
        try flagged.applyFlags(enablePrefixCaching: true)
        #expect(flagged.engineSettings.enablePrefixCaching)
    }

    @Test("errors name the key and the file", arguments: [
        ("sockett = \"/x\"", "unknown key 'sockett'"),
        ("block_size = \"16\"", "key 'block_size' must be an integer"),
        ("block_size = 0", "key 'block_size' = 0 is out of range 1...1024"),
        ("kv_cache_dtype = \"int4\"", "key 'kv_cache_dtype': unknown kv_cache_dtype 'int4'"),
        ("socket_mode = \"rw-rw----\"", "key 'socket_mode' = 'rw-rw----' is not an octal mode"),
        ("allowed_dirs = \"/var/lib/kvant\"", "key 'allowed_dirs' must be an array of strings"),
        ("allowed_dirs = [1]", "key 'allowed_dirs' must be an array of strings"),
        ("log_level = \"loud\"", "key 'log_level' = 'loud'"),
        ("shutdown_timeout_seconds = -1", "key 'shutdown_timeout_seconds' = -1.0 is out of range"),
        ("socket = ", "TOML syntax error at line 1"),
        // toml++ asserted (aborting kvantd) on a table header with no key; each is a syntax error now.
        ("[", "TOML syntax error at line 1: '[' starts a table header but no key follows it"),
        ("block_size = 16\n[[[", "TOML syntax error at line 2: '[' starts a table header"),
        ("  [ ]", "TOML syntax error at line 1: '[' starts a table header"),
        ("[[#x", "TOML syntax error at line 1: '[' starts a table header"),
        ("[a]]", "TOML syntax error at line 1"),
        ("enable_prefix_caching = \"no\"", "key 'enable_prefix_caching' must be a boolean (true or false)"),
    ])
    func errors(line: String, expected: String) {
        do {
            _ = try DaemonConfiguration.parse(toml: line, file: "/etc/kvant/kvantd.toml")
            Issue.record("no error for \(line)")
        } catch let error as KvantError {
            #expect(error.reason == .invalidArgument)
            #expect(error.message.hasPrefix("/etc/kvant/kvantd.toml: "), "\(error.message)")
            #expect(error.message.contains(expected), "\(error.message)")
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test("a line starting with '[' inside a multi-line string is text, not a table header")
    func bracketInMultilineString() throws {
        let config = try DaemonConfiguration.parse(toml: "socket = \"\"\"\n[\n/x.sock\"\"\"\nblock_size = 32", file: "t.toml")
        #expect(config.socket == "[\n/x.sock")
        #expect(config.blockSize == 32)
    }

    @Test("a missing file is not_found")
    func missingFile() {
        #expect(throws: KvantError(.notFound, "configuration file /nonexistent/kvantd.toml does not exist")) {
            try DaemonConfiguration.load(path: "/nonexistent/kvantd.toml")
        }
    }

    @Test("journald priority prefixes")
    func priorities() {
        #expect(JournalLogHandler.priority(.critical) == 2)
        #expect(JournalLogHandler.priority(.error) == 3)
        #expect(JournalLogHandler.priority(.warning) == 4)
        #expect(JournalLogHandler.priority(.notice) == 5)
        #expect(JournalLogHandler.priority(.info) == 6)
        #expect(JournalLogHandler.priority(.debug) == 7)
        #expect(JournalLogHandler.priority(.trace) == 7)
    }
}
