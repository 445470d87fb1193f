import KvantCore

// MARK: - Model

/// `load-model` params. Absent fields fall back to the daemon's configuration.
public struct LoadModelParams: Codable, Equatable, Sendable {
    /// Model file (GGUF); must lie under one of the daemon's `allowed_dirs`.
    public var path: String
    /// vLLM spelling: `auto`, `fp16`, `bf16`, `fp32`, `int8_pertensor`, `int8_pertensor_perhead`, `int8_pertoken`, `int4_pertoken`.
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
