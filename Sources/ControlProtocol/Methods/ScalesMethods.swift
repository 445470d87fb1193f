import KvantCore

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
