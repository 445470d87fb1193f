import KvantCore

/// The methods of the control protocol; the raw value is the wire name and the `kvantctl`
/// subcommand (kebab-case).
public enum RPCMethod: String, CaseIterable, Sendable {
    case loadModel = "load-model"
    case unloadModel = "unload-model"
    case health
    case version
    case setKVDType = "set-kv-dtype"
    case reloadScales = "reload-scales"
    case stats
    case generate
    case tokenize
    case perplexity
    case calibrate
    case scalesShow = "scales-show"
    case scalesValidate = "scales-validate"
    case cancel

    /// Methods that change the daemon's state or read files; allowed only for root, the
    /// daemon's own uid and members of the configured socket group. The rest
    /// (`health`, `version`, `stats`, `tokenize`, `scales-show`, `cancel` of one's own
    /// request) are open to anyone who can connect.
    public var isMutating: Bool {
        switch self {
        case .health, .version, .stats, .tokenize, .scalesShow, .cancel: return false
        case .loadModel, .unloadModel, .setKVDType, .reloadScales, .generate, .perplexity,
             .calibrate, .scalesValidate: return true
        }
    }
}

/// Notifications the daemon sends while a request runs; `params.id` is the request's id.
public enum NotificationMethod: String, Sendable {
    /// One generated token of a `generate` with `stream: true`: `GenerateTokenNotification`.
    case generateToken = "generate.token"
    /// Progress of a `calibrate`: `ProgressNotification` (tokens).
    case calibrateProgress = "calibrate.progress"
    /// Progress of a `perplexity`: `ProgressNotification` (tokens).
    case perplexityProgress = "perplexity.progress"
}

/// Params of methods that take none (`{}` or absent).
public struct EmptyParams: Codable, Equatable, Sendable {
    public init() {}
}

// MARK: - Model

/// `load-model` params. Absent fields fall back to the daemon's configuration.
public struct LoadModelParams: Codable, Equatable, Sendable {
    /// Model file (GGUF); must lie under one of the daemon's `allowed_dirs`.
    public var path: String
    /// vLLM spelling: `auto`, `fp16`, `bf16`, `fp32`, `int8_pertensor`, `int8_pertensor_perhead`, `int8_pertoken`.
    public var kvCacheDType: KVCacheDType?
    /// Scale file (`kv_cache_scales.json`) for the static int8 modes; under `allowed_dirs`.
    public var quantizationParamPath: String?
    /// KV-cache pool size in bytes.
    public var kvCacheBytes: Int?
    /// Longest sequence (prompt + generated tokens), in tokens.
    public var maxModelLen: Int?

    public init(path: String, kvCacheDType: KVCacheDType? = nil, quantizationParamPath: String? = nil,
                kvCacheBytes: Int? = nil, maxModelLen: Int? = nil) {
        self.path = path
        self.kvCacheDType = kvCacheDType
        self.quantizationParamPath = quantizationParamPath
        self.kvCacheBytes = kvCacheBytes
        self.maxModelLen = maxModelLen
    }

    enum CodingKeys: String, CodingKey {
        case path, kvCacheDType = "kv_cache_dtype", quantizationParamPath = "quantization_param_path"
        case kvCacheBytes = "kv_cache_bytes", maxModelLen = "max_model_len"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        path = try c.decode(String.self, forKey: .path)
        kvCacheDType = try c.decodeIfPresent(KVCacheDType.self, forKey: .kvCacheDType)
        quantizationParamPath = try c.decodeIfPresent(String.self, forKey: .quantizationParamPath)
        kvCacheBytes = try c.decodeIntegerIfPresent(forKey: .kvCacheBytes)
        maxModelLen = try c.decodeIntegerIfPresent(forKey: .maxModelLen)
    }

    /// Range checks of the numeric fields. - Throws: `KvantError(.invalidArgument)` naming the field.
    public func validate() throws {
        if path.isEmpty { throw KvantError(.invalidArgument, "load-model: 'path' is empty") }
        if let kvCacheBytes, kvCacheBytes <= 0 {
            throw KvantError(.invalidArgument, "load-model: 'kv_cache_bytes' must be positive, got \(kvCacheBytes)")
        }
        if let maxModelLen, maxModelLen <= 0 {
            throw KvantError(.invalidArgument, "load-model: 'max_model_len' must be positive, got \(maxModelLen)")
        }
    }
}

/// What the daemon reports about the loaded model and its KV cache.
public struct ModelInfo: Codable, Equatable, Sendable {
    /// Model file, as realpath'd by the daemon.
    public var path: String
    /// `general.name` or the file name.
    public var name: String
    /// `general.architecture`, e.g. `gemma3`.
    public var architecture: String
    public var numLayers: Int
    public var numKVHeads: Int
    public var headDim: Int
    public var vocabSize: Int
    /// Longest sequence in tokens.
    public var maxModelLen: Int
    public var kvCacheDType: KVCacheDType
    /// Token positions per KV block.
    public var blockSize: Int
    /// KV-cache pool size in bytes.
    public var kvCacheBytes: Int
    /// Tokens the pool holds (all sequences together).
    public var kvCacheCapacityTokens: Int
    /// Non-fatal findings about the configuration (e.g. a static int8 dtype without a scale file);
    /// absent when there are none.
    public var warnings: [String]?

    public init(path: String, name: String, architecture: String, numLayers: Int, numKVHeads: Int, headDim: Int,
                vocabSize: Int, maxModelLen: Int, kvCacheDType: KVCacheDType, blockSize: Int, kvCacheBytes: Int,
                kvCacheCapacityTokens: Int, warnings: [String]? = nil) {
        self.warnings = warnings
        self.path = path
        self.name = name
        self.architecture = architecture
        self.numLayers = numLayers
        self.numKVHeads = numKVHeads
        self.headDim = headDim
        self.vocabSize = vocabSize
        self.maxModelLen = maxModelLen
        self.kvCacheDType = kvCacheDType
        self.blockSize = blockSize
        self.kvCacheBytes = kvCacheBytes
        self.kvCacheCapacityTokens = kvCacheCapacityTokens
    }

    enum CodingKeys: String, CodingKey {
        case path, name, architecture, numLayers = "num_layers", numKVHeads = "num_kv_heads", headDim = "head_dim"
        case vocabSize = "vocab_size", maxModelLen = "max_model_len", kvCacheDType = "kv_cache_dtype"
        case blockSize = "block_size", kvCacheBytes = "kv_cache_bytes", kvCacheCapacityTokens = "kv_cache_capacity_tokens"
        case warnings
    }
}

/// `load-model` result.
public struct LoadModelResult: Codable, Equatable, Sendable {
    public var model: ModelInfo
    /// Wall time of the load, in seconds.
    public var loadSeconds: Double
    /// The model that was replaced, if any (its path).
    public var replaced: String?

    public init(model: ModelInfo, loadSeconds: Double, replaced: String?) {
        self.model = model
        self.loadSeconds = loadSeconds
        self.replaced = replaced
    }

    enum CodingKeys: String, CodingKey { case model, loadSeconds = "load_seconds", replaced }
}

/// `unload-model` result.
public struct UnloadModelResult: Codable, Equatable, Sendable {
    /// False when no model was loaded.
    public var unloaded: Bool
    public var path: String?

    public init(unloaded: Bool, path: String?) {
        self.unloaded = unloaded
        self.path = path
    }
}

/// `set-kv-dtype` params.
public struct SetKVDTypeParams: Codable, Equatable, Sendable {
    public var kvCacheDType: KVCacheDType
    /// Required for `int8_pertensor` / `int8_pertensor_perhead` unless the model already has scales.
    public var quantizationParamPath: String?

    public init(kvCacheDType: KVCacheDType, quantizationParamPath: String? = nil) {
        self.kvCacheDType = kvCacheDType
        self.quantizationParamPath = quantizationParamPath
    }

    enum CodingKeys: String, CodingKey { case kvCacheDType = "kv_cache_dtype", quantizationParamPath = "quantization_param_path" }
}

// MARK: - Scales

/// `reload-scales` params; without `path` the daemon re-reads the scale file it loaded last.
public struct ReloadScalesParams: Codable, Equatable, Sendable {
    public var path: String?
    public init(path: String? = nil) { self.path = path }
}

/// `scales-validate` params.
public struct ScalesValidateParams: Codable, Equatable, Sendable {
    public var path: String
    public init(path: String) { self.path = path }
}

/// A summary of a KV scale file (vLLM `kv_cache_scales.json` schema): the reply of
/// `reload-scales`, `scales-show` and `scales-validate`.
public struct ScalesReport: Codable, Equatable, Sendable {
    /// The file, realpath'd; nil for scales that came from elsewhere (calibration in memory).
    public var path: String?
    /// Layers covered.
    public var layers: Int
    /// True when the file has one scale per (layer, KV head), false for one per layer.
    public var perHead: Bool
    /// Smallest and largest scale in force (K and V scales when the file has separate ones).
    public var min: Double
    public var max: Double
    /// The file's `scaling_factor` per layer: one value, or one per KV head (`per_head`).
    public var layerScales: [[Double]]?
    /// The K and V scales in force per layer when the file has separate ones (`k_scaling_factor`,
    /// `v_scaling_factor`, a Kvant extension vLLM ignores); absent when K and V share `layer_scales`.
    public var layerKeyScales: [[Double]]?
    public var layerValueScales: [[Double]]?
    /// SHA-256 of the file bytes, lowercase hex.
    public var sha256: String
    /// Scale epoch after installing (`reload-scales`), the current epoch (`scales-show`), nil for `scales-validate`.
    public var epoch: Int?
    /// Non-fatal findings (e.g. "layer 3: scale 0.0 replaced by 1.0").
    public var warnings: [String]

    public init(path: String?, layers: Int, perHead: Bool, min: Double, max: Double, sha256: String, epoch: Int?,
                warnings: [String], layerScales: [[Double]]? = nil, layerKeyScales: [[Double]]? = nil,
                layerValueScales: [[Double]]? = nil) {
        self.layerScales = layerScales
        self.layerKeyScales = layerKeyScales
        self.layerValueScales = layerValueScales
        self.path = path
        self.layers = layers
        self.perHead = perHead
        self.min = min
        self.max = max
        self.sha256 = sha256
        self.epoch = epoch
        self.warnings = warnings
    }

    enum CodingKeys: String, CodingKey {
        case path, layers, perHead = "per_head", min, max, sha256, epoch, warnings
        case layerScales = "layer_scales", layerKeyScales = "layer_k_scales", layerValueScales = "layer_v_scales"
    }
}

/// `scales-show` result: the active scales, or nil when the cache dtype uses none.
public struct ScalesShowResult: Codable, Equatable, Sendable {
    public var kvCacheDType: KVCacheDType
    public var scales: ScalesReport?

    public init(kvCacheDType: KVCacheDType, scales: ScalesReport?) {
        self.kvCacheDType = kvCacheDType
        self.scales = scales
    }

    enum CodingKeys: String, CodingKey { case kvCacheDType = "kv_cache_dtype", scales }
}

// MARK: - Health, version, stats

/// `health` result.
public struct HealthResult: Codable, Equatable, Sendable {
    /// `ok`, or `degraded` when the last reload failed (see `last_error`).
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
    public var uptimeSeconds: Double
    /// Resident set size of the daemon, bytes (`/proc/self/statm`).
    public var rssBytes: Int
    /// Open control connections.
    public var connections: Int

    public init(requestsServed: Int = 0, requestsRunning: Int = 0, requestsWaiting: Int = 0, requestsFailed: Int = 0,
                promptTokens: Int = 0, generatedTokens: Int = 0, prefillTokensPerSecond: Double = 0,
                decodeTokensPerSecond: Double = 0, decodeBatchMean: Double = 0, uptimeSeconds: Double = 0, rssBytes: Int = 0,
                connections: Int = 0) {
        self.decodeBatchMean = decodeBatchMean
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
        case decodeBatchMean = "decode_batch_mean"
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

// MARK: - Generate

/// `generate` params; defaults follow vLLM's `SamplingParams` (top_k 0 or -1 = off).
public struct GenerateParams: Codable, Equatable, Sendable {
    public var prompt: String
    /// Tokens to generate at most.
    public var maxTokens: Int
    /// 0 = greedy.
    public var temperature: Double
    public var topP: Double
    public var topK: Int
    public var minP: Double
    public var repetitionPenalty: Double
    public var seed: UInt64?
    /// Generation stops before the first occurrence of any of these strings (excluded from `text`).
    public var stop: [String]
    /// Send a `generate.token` notification per token before the response.
    public var stream: Bool
    /// OpenAI/vLLM presence penalty in [-2, 2]: subtracted once from the logit of every token already
    /// generated (output tokens only); 0 = off.
    public var presencePenalty: Double = 0
    /// OpenAI/vLLM frequency penalty in [-2, 2]: subtracted from a token's logit once per time it was
    /// generated (output tokens only); 0 = off.
    public var frequencyPenalty: Double = 0
    /// Keep generating past end-of-sequence tokens: they are never sampled (llama.cpp's `ignore_eos`),
    /// so generation ends only at `max_tokens`, `max_model_len` or a stop string.
    public var ignoreEOS: Bool = false
    /// Token ids to use as the prompt instead of tokenizing `prompt` (the HTTP API's token-id prompts and
    /// chat prompts tokenized without BOS). Not on the wire.
    public var promptTokenIDs: [Int]?
    /// Report the log-probability of each generated token and this many alternatives (0…20);
    /// nil = none. Not on the wire (the HTTP API reads them from `GeneratedToken.logprobs`).
    public var logprobs: Int?
    /// Report the log-probability of each prompt token (from the second on) and this many
    /// alternatives (0…20) in `GenerateResult.promptLogprobs`; nil = none. Not on the wire.
    public var promptLogprobs: Int?

    public static let maxStopStrings = 16
    public static let maxStopStringBytes = 256

    public init(prompt: String, maxTokens: Int = 128, temperature: Double = 1.0, topP: Double = 1.0, topK: Int = 0,
                minP: Double = 0.0, repetitionPenalty: Double = 1.0, seed: UInt64? = nil, stop: [String] = [],
                stream: Bool = false) {
        self.prompt = prompt
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.minP = minP
        self.repetitionPenalty = repetitionPenalty
        self.seed = seed
        self.stop = stop
        self.stream = stream
    }

    enum CodingKeys: String, CodingKey {
        case prompt, maxTokens = "max_tokens", temperature, topP = "top_p", topK = "top_k", minP = "min_p"
        case repetitionPenalty = "repetition_penalty", seed, stop, stream
        case presencePenalty = "presence_penalty", frequencyPenalty = "frequency_penalty", ignoreEOS = "ignore_eos"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(prompt, forKey: .prompt)
        try c.encode(maxTokens, forKey: .maxTokens)
        try c.encode(temperature, forKey: .temperature)
        try c.encode(topP, forKey: .topP)
        try c.encode(topK, forKey: .topK)
        try c.encode(minP, forKey: .minP)
        try c.encode(repetitionPenalty, forKey: .repetitionPenalty)
        try c.encodeIfPresent(seed, forKey: .seed)
        try c.encode(stop, forKey: .stop)
        try c.encode(stream, forKey: .stream)
        // Additive fields: only when set, so older daemons see the messages they know.
        if presencePenalty != 0 { try c.encode(presencePenalty, forKey: .presencePenalty) }
        if frequencyPenalty != 0 { try c.encode(frequencyPenalty, forKey: .frequencyPenalty) }
        if ignoreEOS { try c.encode(ignoreEOS, forKey: .ignoreEOS) }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        prompt = try c.decode(String.self, forKey: .prompt)
        maxTokens = try c.decodeIntegerIfPresent(forKey: .maxTokens) ?? 128
        temperature = try c.decodeIfPresent(Double.self, forKey: .temperature) ?? 1.0
        topP = try c.decodeIfPresent(Double.self, forKey: .topP) ?? 1.0
        topK = try c.decodeIntegerIfPresent(forKey: .topK) ?? 0
        minP = try c.decodeIfPresent(Double.self, forKey: .minP) ?? 0.0
        repetitionPenalty = try c.decodeIfPresent(Double.self, forKey: .repetitionPenalty) ?? 1.0
        if let value = try c.decodeIntegerIfPresent(forKey: .seed) {
            guard value >= 0 else {
                throw DecodingError.dataCorruptedError(forKey: .seed, in: c, debugDescription: "must be an integer >= 0, got \(value)")
            }
            seed = UInt64(value)
        } else {
            seed = nil
        }
        stop = try c.decodeIfPresent([String].self, forKey: .stop) ?? []
        stream = try c.decodeIfPresent(Bool.self, forKey: .stream) ?? false
        presencePenalty = try c.decodeIfPresent(Double.self, forKey: .presencePenalty) ?? 0
        frequencyPenalty = try c.decodeIfPresent(Double.self, forKey: .frequencyPenalty) ?? 0
        ignoreEOS = try c.decodeIfPresent(Bool.self, forKey: .ignoreEOS) ?? false
    }

    /// Range checks. - Throws: `KvantError(.invalidArgument)` naming the field and the allowed range.
    public func validate() throws {
        func bad(_ message: String) -> KvantError { KvantError(.invalidArgument, "generate: \(message)") }
        if maxTokens < 1 { throw bad("'max_tokens' must be at least 1, got \(maxTokens)") }
        if !(temperature >= 0 && temperature.isFinite) { throw bad("'temperature' must be a finite number >= 0, got \(temperature)") }
        if !(topP > 0 && topP <= 1) { throw bad("'top_p' must be in (0, 1], got \(topP)") }
        if topK < -1 { throw bad("'top_k' must be -1 or 0 (off) or a positive count, got \(topK)") }
        if !(minP >= 0 && minP <= 1) { throw bad("'min_p' must be in [0, 1], got \(minP)") }
        if !(repetitionPenalty > 0 && repetitionPenalty.isFinite) {
            throw bad("'repetition_penalty' must be a finite number > 0, got \(repetitionPenalty)")
        }
        if !(presencePenalty >= -2 && presencePenalty <= 2) { throw bad("'presence_penalty' must be in [-2, 2], got \(presencePenalty)") }
        if !(frequencyPenalty >= -2 && frequencyPenalty <= 2) { throw bad("'frequency_penalty' must be in [-2, 2], got \(frequencyPenalty)") }
        for (name, value) in [("logprobs", logprobs), ("prompt_logprobs", promptLogprobs)] {
            if let value, !(0...TokenLogprobs.maxTopLogprobs).contains(value) {
                throw bad("'\(name)' must be in 0...\(TokenLogprobs.maxTopLogprobs), got \(value)")
            }
        }
        if let ids = promptTokenIDs, ids.isEmpty { throw bad("the prompt has no tokens") }
        if stop.count > Self.maxStopStrings { throw bad("'stop' has \(stop.count) strings; at most \(Self.maxStopStrings)") }
        for (index, text) in stop.enumerated() {
            if text.isEmpty { throw bad("'stop[\(index)]' is empty") }
            if text.utf8.count > Self.maxStopStringBytes {
                throw bad("'stop[\(index)]' is \(text.utf8.count) bytes; at most \(Self.maxStopStringBytes)")
            }
        }
    }
}

/// Params of the `generate.token` notification.
public struct GenerateTokenNotification: Codable, Equatable, Sendable {
    /// The id of the `generate` request.
    public var id: RPCID
    /// The text piece of this token (may be empty for tokens that only complete a UTF-8 sequence later).
    public var text: String
    /// Token id.
    public var token: Int

    public init(id: RPCID, text: String, token: Int) {
        self.id = id
        self.text = text
        self.token = token
    }
}

/// Why a generation ended: vLLM's `stop` (end-of-sequence token or stop string) and `length`,
/// plus `cancelled` (by `cancel`, a closed connection or shutdown).
public enum FinishReason: String, Codable, Sendable {
    case stop
    case length
    case cancelled
}

/// Timings of one `generate`, milliseconds and tokens per second.
public struct GenerateTimings: Codable, Equatable, Sendable {
    /// Waiting for a sequence slot.
    public var queueMs: Double
    public var prefillMs: Double
    public var decodeMs: Double
    public var prefillTokensPerSecond: Double
    public var decodeTokensPerSecond: Double

    public init(queueMs: Double, prefillMs: Double, decodeMs: Double, prefillTokensPerSecond: Double,
                decodeTokensPerSecond: Double) {
        self.queueMs = queueMs
        self.prefillMs = prefillMs
        self.decodeMs = decodeMs
        self.prefillTokensPerSecond = prefillTokensPerSecond
        self.decodeTokensPerSecond = decodeTokensPerSecond
    }

    enum CodingKeys: String, CodingKey {
        case queueMs = "queue_ms", prefillMs = "prefill_ms", decodeMs = "decode_ms"
        case prefillTokensPerSecond = "prefill_tokens_per_second", decodeTokensPerSecond = "decode_tokens_per_second"
    }
}

/// `generate` result.
public struct GenerateResult: Codable, Equatable, Sendable {
    /// Generated text, without the stop string that ended it.
    public var text: String
    /// Generated token ids (including the token that completed a stop string, excluding an end-of-sequence token).
    public var tokens: [Int]
    public var promptTokens: Int
    public var completionTokens: Int
    public var finishReason: FinishReason
    /// The stop string matched, or `eos` for the end-of-sequence token; nil otherwise.
    public var stopReason: String?
    public var timings: GenerateTimings
    /// Log-probabilities of the prompt's tokens when `GenerateParams.promptLogprobs` asked for them:
    /// one entry per prompt token, the first nil (nothing precedes it). Not on the wire.
    public var promptLogprobs: [TokenLogprobs?]? = nil

    public init(text: String, tokens: [Int], promptTokens: Int, completionTokens: Int, finishReason: FinishReason,
                stopReason: String?, timings: GenerateTimings) {
        self.text = text
        self.tokens = tokens
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.finishReason = finishReason
        self.stopReason = stopReason
        self.timings = timings
    }

    enum CodingKeys: String, CodingKey {
        case text, tokens, promptTokens = "prompt_tokens", completionTokens = "completion_tokens"
        case finishReason = "finish_reason", stopReason = "stop_reason", timings
    }
}

// MARK: - Tokenize, perplexity, calibrate, cancel

/// `tokenize` params.
public struct TokenizeParams: Codable, Equatable, Sendable {
    public var text: String
    public init(text: String) { self.text = text }
}

/// `tokenize` result.
public struct TokenizeResult: Codable, Equatable, Sendable {
    public var tokens: [Int]
    public var count: Int
    public init(tokens: [Int]) {
        self.tokens = tokens
        self.count = tokens.count
    }
}

/// `perplexity` params: a text file under `allowed_dirs`, evaluated in windows of `ctx` tokens.
public struct PerplexityParams: Codable, Equatable, Sendable {
    public var path: String
    /// Context window in tokens (llama.cpp's `-c`); 0 or absent = the daemon's default (512).
    public var ctx: Int?

    public init(path: String, ctx: Int? = nil) {
        self.path = path
        self.ctx = ctx
    }

    enum CodingKeys: String, CodingKey { case path, ctx }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        path = try c.decode(String.self, forKey: .path)
        ctx = try c.decodeIntegerIfPresent(forKey: .ctx)
    }
}

/// `perplexity` result.
public struct PerplexityResult: Codable, Equatable, Sendable {
    /// exp(mean negative log-likelihood) over the scored tokens.
    public var perplexity: Double
    /// Mean negative log-likelihood per scored token, nats.
    public var meanNLL: Double
    /// Tokens scored.
    public var tokens: Int
    /// Windows evaluated.
    public var chunks: Int
    public var seconds: Double

    public init(perplexity: Double, meanNLL: Double, tokens: Int, chunks: Int, seconds: Double) {
        self.perplexity = perplexity
        self.meanNLL = meanNLL
        self.tokens = tokens
        self.chunks = chunks
        self.seconds = seconds
    }

    enum CodingKeys: String, CodingKey { case perplexity, meanNLL = "mean_nll", tokens, chunks, seconds }
}

/// `calibrate` params: record K/V amax over text and write a `kv_cache_scales.json` to `output`.
public struct CalibrateParams: Codable, Equatable, Sendable {
    /// Text file under `allowed_dirs`; absent = the daemon's built-in default calibration text.
    public var textPath: String?
    /// Tokens of the text to run (default 2048).
    public var numTokens: Int?
    /// One scale per (layer, KV head) instead of per layer.
    public var perHead: Bool?
    /// Tensor-parallel size to write scales for (vLLM schema `tp_size`; default 1).
    public var tpSize: Int?
    /// Percentile of |x| used as amax, in (0, 100]: 100 = plain max (amax/127); absent = the
    /// daemon's default clipping (Kvant: MSE-optimal shared K/V clip, docs/kv-cache.md).
    public var percentile: Double?
    /// Also write separate K and V scales (`k_scaling_factor` / `v_scaling_factor` beside the shared
    /// `scaling_factor`; vLLM ignores them); default true. false writes only vLLM's shared scale.
    public var separateKV: Bool?
    /// Output file; its directory must lie under `allowed_dirs`.
    public var output: String

    public init(textPath: String? = nil, numTokens: Int? = nil, perHead: Bool? = nil, tpSize: Int? = nil,
                percentile: Double? = nil, separateKV: Bool? = nil, output: String) {
        self.separateKV = separateKV
        self.textPath = textPath
        self.numTokens = numTokens
        self.perHead = perHead
        self.tpSize = tpSize
        self.percentile = percentile
        self.output = output
    }

    enum CodingKeys: String, CodingKey {
        case textPath = "text_path", numTokens = "num_tokens", perHead = "per_head", tpSize = "tp_size", percentile, output
        case separateKV = "separate_kv"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        textPath = try c.decodeIfPresent(String.self, forKey: .textPath)
        numTokens = try c.decodeIntegerIfPresent(forKey: .numTokens)
        perHead = try c.decodeIfPresent(Bool.self, forKey: .perHead)
        tpSize = try c.decodeIntegerIfPresent(forKey: .tpSize)
        percentile = try c.decodeIfPresent(Double.self, forKey: .percentile)
        separateKV = try c.decodeIfPresent(Bool.self, forKey: .separateKV)
        output = try c.decode(String.self, forKey: .output)
    }

    /// - Throws: `KvantError(.invalidArgument)` naming the field.
    public func validate() throws {
        if output.isEmpty { throw KvantError(.invalidArgument, "calibrate: 'output' is empty") }
        if let numTokens, numTokens < 1 { throw KvantError(.invalidArgument, "calibrate: 'num_tokens' must be at least 1, got \(numTokens)") }
        if let tpSize, tpSize < 1 { throw KvantError(.invalidArgument, "calibrate: 'tp_size' must be at least 1, got \(tpSize)") }
        if let percentile, !(percentile > 0 && percentile <= 100) {
            throw KvantError(.invalidArgument, "calibrate: 'percentile' must be in (0, 100], got \(percentile)")
        }
    }
}

/// `calibrate` result.
public struct CalibrateResult: Codable, Equatable, Sendable {
    /// The file written (realpath'd).
    public var output: String
    public var tokens: Int
    public var seconds: Double
    public var scales: ScalesReport

    public init(output: String, tokens: Int, seconds: Double, scales: ScalesReport) {
        self.output = output
        self.tokens = tokens
        self.seconds = seconds
        self.scales = scales
    }
}

/// Params of `calibrate.progress` and `perplexity.progress`.
public struct ProgressNotification: Codable, Equatable, Sendable {
    public var id: RPCID
    /// Tokens processed so far.
    public var done: Int
    /// Tokens to process in all.
    public var total: Int

    public init(id: RPCID, done: Int, total: Int) {
        self.id = id
        self.done = done
        self.total = total
    }
}

/// `cancel` params: the id of a request sent earlier on the same connection.
public struct CancelParams: Codable, Equatable, Sendable {
    public var id: RPCID
    public init(id: RPCID) { self.id = id }
}

/// `cancel` result: false when no such request was running (already finished or never sent).
public struct CancelResult: Codable, Equatable, Sendable {
    public var cancelled: Bool
    public init(cancelled: Bool) { self.cancelled = cancelled }
}
