/// How the KV cache stores keys and values: the values of vLLM's `--kv-cache-dtype`
/// plus the three int8 modes of the vendor guide.
///
/// - `auto`: fp16 storage (the model's GGUF weights carry no preferred KV type).
/// - `fp16`, `bf16`, `fp32`: unquantized storage.
/// - `int8_pertensor`: static, one scale per layer shared by K and V, from a
///   `kv_cache_scales.json` (vLLM schema; K and V get their own scales when the file has Kvant's
///   `k_scaling_factor` / `v_scaling_factor`).
/// - `int8_pertensor_perhead`: static, one scale per layer per KV head, same file.
/// - `int8_pertoken`: dynamic, one fp32 scale per (token, KV head) for K and for V,
///   computed as `amax / 127` when the cache is written (of the Hadamard-rotated row, see
///   `KVCachePool.rotationGroup`).
/// - `int4_pertoken`: dynamic 4-bit (two values per byte), Hadamard-rotated rows; K asymmetric in
///   groups of 32 (fp16 scale and min per group, llama.cpp q4_1 layout), V symmetric in groups of 64
///   (fp16 scale, q4_0 rule); the last 4 blocks of each sequence and its token 0 are also kept at
///   int8_pertoken and read from there (KIVI's residual). head_dim must be a multiple of 64.
///   See docs/kv-cache.md "4-bit KV".
///
/// Quantization is symmetric: `q = clamp(round(x / s), -127, 127)`, `x̂ = q · s`.
public enum KVCacheDType: String, CaseIterable, Codable, Sendable {
    case auto
    case fp16
    case bf16
    case fp32
    case int8PerTensor = "int8_pertensor"
    case int8PerTensorPerHead = "int8_pertensor_perhead"
    case int8PerToken = "int8_pertoken"
    case int4PerToken = "int4_pertoken"

    /// The dtype actually stored: `auto` resolves to `fp16`.
    public var resolved: KVCacheDType { self == .auto ? .fp16 : self }

    /// Bytes of one stored element (K or V value), without scales; `int4_pertoken` stores half a byte per
    /// value and counts as 1 here (its exact row sizes, group scales included: `KVCacheSpec.bytesPerTokenPerLayer`).
    public var elementBytes: Int {
        switch resolved {
        case .fp32: return 4
        case .fp16, .bf16: return 2
        case .int8PerTensor, .int8PerTensorPerHead, .int8PerToken, .int4PerToken: return 1
        case .auto: return 2
        }
    }

    /// True for the int8 and int4 modes.
    public var isQuantized: Bool { elementBytes == 1 }

    /// True for the modes with scales computed when the cache is written (`int8_pertoken`, `int4_pertoken`).
    public var isDynamic: Bool { self == .int8PerToken || self == .int4PerToken }

    /// True for the modes whose scales come from a scale file (`int8_pertensor`, `int8_pertensor_perhead`).
    public var usesStaticScales: Bool { self == .int8PerTensor || self == .int8PerTensorPerHead }

    /// Decodes the vLLM spelling; an unknown value throws a `DecodingError.dataCorrupted` whose
    /// description lists the valid values (shown to clients as the params error).
    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let value = KVCacheDType(rawValue: text) else {
            throw DecodingError.dataCorruptedError(
                in: container,
                debugDescription: "unknown kv_cache_dtype '\(String(text.prefix(64)))'; expected one of: \(KVCacheDType.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self = value
    }

    /// Parses a flag value such as `int8_pertoken`; throws `KvantError(.invalidArgument)` listing the valid values.
    public init(parsing text: String) throws {
        guard let value = KVCacheDType(rawValue: text) else {
            throw KvantError(.invalidArgument,
                             "unknown kv_cache_dtype '\(text)'; expected one of: \(KVCacheDType.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        self = value
    }
}
