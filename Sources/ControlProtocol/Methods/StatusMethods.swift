import KvantCore

// MARK: - Health, version, stats

/// `health` result.
public struct HealthResult: Codable, Equatable, Sendable {
    /// `ok`, `degraded` when the last reload failed (see `last_error`), or `draining` (the `drain` method or shutdown).
    public var status: String
    public var modelLoaded: Bool
    public var model: String?
    public var kvCacheDType: KVCacheDType?
    public var uptimeSeconds: Double
    /// The message of the last failed reload/load, if any since the last success.
    public var lastError: String?

    public init(status: String, modelLoaded: Bool, model: String?, kvCacheDType: KVCacheDType?, uptimeSeconds: Double,
                lastError: String?) {
        self.status = status
        self.modelLoaded = modelLoaded
        self.model = model
        self.kvCacheDType = kvCacheDType
        self.uptimeSeconds = uptimeSeconds
        self.lastError = lastError
    }

    enum CodingKeys: String, CodingKey {
        case status, modelLoaded = "model_loaded", model, kvCacheDType = "kv_cache_dtype"
        case uptimeSeconds = "uptime_seconds", lastError = "last_error"
    }
}

/// `version` result.
public struct VersionResult: Codable, Equatable, Sendable {
    /// `controlProtocolVersion`.
    public var protocolVersion: Int
    public var daemonVersion: String
    /// Name of the inference backend linked into the daemon.
    public var backend: String
    /// Every method the daemon serves.
    public var methods: [String]

    public init(protocolVersion: Int, daemonVersion: String, backend: String, methods: [String]) {
        self.protocolVersion = protocolVersion
        self.daemonVersion = daemonVersion
        self.backend = backend
        self.methods = methods
    }

    enum CodingKeys: String, CodingKey {
        case protocolVersion = "protocol_version", daemonVersion = "daemon_version", backend, methods
    }
}

/// Engine figures reported by `stats`. Rates are totals divided by the time spent in that phase.
public struct EngineFigures: Codable, Equatable, Sendable {
    /// `generate` requests completed (any finish reason, errors excluded).
    public var requestsServed: Int
    /// `generate` requests being prefilled or decoded now.
    public var requestsRunning: Int
    /// `generate` requests waiting for a sequence slot.
    public var requestsWaiting: Int
    /// Requests that ended in an error.
    public var requestsFailed: Int
    /// Prompt tokens prefilled, total.
    public var promptTokens: Int
    /// Tokens generated (decoded), total.
    public var generatedTokens: Int
    /// Prompt tokens per second of prefill time.
    public var prefillTokensPerSecond: Double
    /// Generated tokens per second of decode time.
    public var decodeTokensPerSecond: Double
    /// Mean number of sequences per decode forward pass (continuous batching: the sequences waiting
    /// for their next token decode together in one pass over the weights); 0 before any decode.
    public var decodeBatchMean: Double
    /// Sequences preempted since start (on-demand KV blocks ran out; their blocks were freed and they were
    /// recomputed later, vLLM's `num_preemptions`).
    public var numPreemptions: Int
    /// Engine steps whose one forward pass ran decode rows together with prefill (or recompute) chunk tokens
    /// (the weights read once for both; vLLM V1's mixed batch).
    public var fusedSteps: Int
    public var uptimeSeconds: Double
    /// Resident set size of the daemon, bytes (`/proc/self/statm`).
    public var rssBytes: Int
    /// Open control connections.
    public var connections: Int

    public init(requestsServed: Int = 0, requestsRunning: Int = 0, requestsWaiting: Int = 0, requestsFailed: Int = 0,
                promptTokens: Int = 0, generatedTokens: Int = 0, prefillTokensPerSecond: Double = 0,
                decodeTokensPerSecond: Double = 0, decodeBatchMean: Double = 0, uptimeSeconds: Double = 0, rssBytes: Int = 0,
                connections: Int = 0, numPreemptions: Int = 0, fusedSteps: Int = 0) {
        self.fusedSteps = fusedSteps
        self.decodeBatchMean = decodeBatchMean
        self.numPreemptions = numPreemptions
        self.requestsServed = requestsServed
        self.requestsRunning = requestsRunning
        self.requestsWaiting = requestsWaiting
        self.requestsFailed = requestsFailed
        self.promptTokens = promptTokens
        self.generatedTokens = generatedTokens
        self.prefillTokensPerSecond = prefillTokensPerSecond
        self.decodeTokensPerSecond = decodeTokensPerSecond
        self.uptimeSeconds = uptimeSeconds
        self.rssBytes = rssBytes
        self.connections = connections
    }

    enum CodingKeys: String, CodingKey {
        case requestsServed = "requests_served", requestsRunning = "requests_running"
        case requestsWaiting = "requests_waiting", requestsFailed = "requests_failed"
        case promptTokens = "prompt_tokens", generatedTokens = "generated_tokens"
        case prefillTokensPerSecond = "prefill_tokens_per_second", decodeTokensPerSecond = "decode_tokens_per_second"
        case decodeBatchMean = "decode_batch_mean", numPreemptions = "num_preemptions", fusedSteps = "fused_steps"
        case uptimeSeconds = "uptime_seconds", rssBytes = "rss_bytes", connections
    }
}

/// `stats` result.
public struct StatsResult: Codable, Equatable, Sendable {
    public var engine: EngineFigures
    public var model: ModelInfo?
    /// The KV cache's own statistics object as the backend reports it (blocks, usage, epoch, …); null without a model.
    public var kvCache: JSONValue

    public init(engine: EngineFigures, model: ModelInfo?, kvCache: JSONValue) {
        self.engine = engine
        self.model = model
        self.kvCache = kvCache
    }

    enum CodingKeys: String, CodingKey { case engine, model, kvCache = "kv_cache" }
}
