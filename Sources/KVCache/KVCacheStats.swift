/// A snapshot of the KV-cache pool for `stats` (JSON keys in snake_case).
public struct KVCacheStats: Codable, Sendable, Equatable {
    /// kv_cache_dtype as configured (`auto` stays `auto`; it is stored as fp16).
    public var kvCacheDType: String
    /// Tokens per block.
    public var blockSize: Int
    public var numBlocks: Int
    public var usedBlocks: Int
    public var freeBlocks: Int
    /// Sum of the sequences' reserved lengths (a shared prefix counts once per sequence).
    public var tokensCached: Int
    /// The longest single sequence the pool holds, sliding-window layers keeping only their window
    /// (`KVCachePool.capacityTokens`; numBlocks · blockSize without sliding windows).
    public var capacityTokens: Int
    /// Bytes of K/V each further token of a long sequence costs (longer than every sliding window): the
    /// full-attention layers' K/V, scales included for int8_pertoken (`KVCacheSpec.fullAttentionBytesPerToken`;
    /// all layers without sliding windows).
    public var bytesPerToken: Int
    /// Bytes of K/V of one token over all layers (what a token costs while the sequence is shorter than
    /// every window).
    public var bytesPerTokenAllLayers: Int
    /// Bytes the sliding-window layers hold per long sequence at most: their window plus one block each,
    /// in whole blocks (0 without sliding windows). A sequence of n tokens (n beyond the windows) holds at
    /// most `n · bytesPerToken + slidingWindowBytesPerSequence` rounded up to whole blocks.
    public var slidingWindowBytesPerSequence: Int
    /// Layers per physical block (one layer group).
    public var layersPerBlock: Int
    /// The layer groups: each has its own block table per sequence (vLLM's hybrid KV-cache manager).
    public var layerGroups: [KVLayerGroup]
    /// K/V bytes per value relative to fp16 (over all layers, scales included).
    public var bytesPerTokenRatioToFP16: Double
    /// usedBlocks / numBlocks.
    public var usage: Double
    /// Number of live sequences.
    public var sequences: Int
    /// Where scales come from: a file path (static, loaded), "in-memory" (static, not from a file),
    /// "default 1.0" (static with no scales: values are rounded to integers), "dynamic"
    /// (int8_pertoken) or "none" (fp32/fp16/bf16).
    public var scaleSource: String
    public var scalePath: String?
    /// Lowercase hex SHA-256 of the scale file.
    public var scaleSHA256: String?
    /// Current scale epoch (static modes).
    public var scaleEpoch: Int?
    /// Epochs whose tables are still alive (the current one and those some block was written with).
    public var liveEpochs: [Int]
    /// Current scales per layer: one value (int8_pertensor) or one per KV head (int8_pertensor_perhead):
    /// the file's `scaling_factor`, shared by K and V (what vLLM would use).
    public var layerScales: [[Float]]?
    /// When the scale file has separate K and V scales (`k_scaling_factor` / `v_scaling_factor`, a Kvant
    /// extension) the scales in force for K and for V, in the same form as `layerScales`; else absent.
    public var layerKeyScales: [[Float]]?
    public var layerValueScales: [[Float]]?
    /// Values clipped at ±127 per layer since the pool was built (static modes).
    public var saturationCounts: [Int64]?
    /// Warnings of the loaded scale file (e.g. a null model_type).
    public var scaleWarnings: [String]
    /// The attention kernel in use: "avx512" or "avx2" (run-time CPU check, see docs/kv-cache.md).
    public var attentionKernel: String
    /// `int8_pertoken`, `int4_pertoken`: "hadamard-<g>" when K and V are stored Hadamard-rotated over groups of g values
    /// of each head before quantization (the default; see `KVCachePool.rotationGroup`), else absent.
    public var rotation: String?
    /// Automatic prefix caching on (`enable_prefix_caching`, vLLM's key).
    public var prefixCaching: Bool
    /// Prompt tokens looked up in the prefix cache since the pool was built (vLLM's `prefix_cache_queries`).
    public var prefixCacheQueries: Int64
    /// Of those, tokens served from the cache (their prefill skipped; vLLM's `prefix_cache_hits`).
    public var prefixCacheHits: Int64
    /// prefixCacheHits / prefixCacheQueries (0 before the first query).
    public var prefixCacheHitRate: Double
    /// Physical blocks holding a cached full block (in use or free, not yet evicted), over every layer group.
    /// Unlike `tokensCached` a block shared by several sequences counts once.
    public var prefixCachedBlocks: Int
    /// `int4_pertoken`: bytes of the int8 residual (recent blocks and token 0, all layers) each live sequence
    /// holds beside the pool (`KVCachePool.residualBytesPerSequence`), else absent.
    public var residualBytesPerSequence: Int?
    /// Bytes of the blocks: `numBlocks ·` the block size in bytes (every layer of its group). With the int4
    /// residual, `blockPoolBytes + residualBytes ≤ kv_cache_bytes`.
    public var blockPoolBytes: Int
    /// `int4_pertoken`: residual rings the pool reserved out of `kv_cache_bytes` (max_num_seqs live + the freed
    /// ones kept for prefix caching), the bytes they take, how many hold a ring now (live or kept), and how many
    /// sequences found none free and were read at int4 only (more live than max_num_seqs); else absent.
    public var residualRings: Int?
    public var residualBytes: Int?
    public var residualRingsInUse: Int?
    public var residualRingMisses: Int64?

    public init(kvCacheDType: String, blockSize: Int, numBlocks: Int, usedBlocks: Int, freeBlocks: Int,
                tokensCached: Int, capacityTokens: Int, bytesPerToken: Int, bytesPerTokenAllLayers: Int,
                slidingWindowBytesPerSequence: Int, layersPerBlock: Int, layerGroups: [KVLayerGroup],
                bytesPerTokenRatioToFP16: Double,
                usage: Double, sequences: Int, scaleSource: String, scalePath: String?, scaleSHA256: String?,
                scaleEpoch: Int?, liveEpochs: [Int], layerScales: [[Float]]?, layerKeyScales: [[Float]]? = nil,
                layerValueScales: [[Float]]? = nil, saturationCounts: [Int64]?,
                scaleWarnings: [String], attentionKernel: String = "avx2", rotation: String? = nil,
                prefixCaching: Bool = false, prefixCacheQueries: Int64 = 0, prefixCacheHits: Int64 = 0,
                prefixCachedBlocks: Int = 0,
                residualBytesPerSequence: Int? = nil, blockPoolBytes: Int = 0, residualRings: Int? = nil,
                residualBytes: Int? = nil, residualRingsInUse: Int? = nil, residualRingMisses: Int64? = nil) {
        self.kvCacheDType = kvCacheDType; self.blockSize = blockSize; self.numBlocks = numBlocks
        self.usedBlocks = usedBlocks; self.freeBlocks = freeBlocks; self.tokensCached = tokensCached
        self.capacityTokens = capacityTokens; self.bytesPerToken = bytesPerToken
        self.bytesPerTokenAllLayers = bytesPerTokenAllLayers; self.slidingWindowBytesPerSequence = slidingWindowBytesPerSequence
        self.layersPerBlock = layersPerBlock; self.layerGroups = layerGroups
        self.bytesPerTokenRatioToFP16 = bytesPerTokenRatioToFP16; self.usage = usage; self.sequences = sequences
        self.scaleSource = scaleSource; self.scalePath = scalePath; self.scaleSHA256 = scaleSHA256
        self.scaleEpoch = scaleEpoch; self.liveEpochs = liveEpochs; self.layerScales = layerScales
        self.layerKeyScales = layerKeyScales; self.layerValueScales = layerValueScales
        self.saturationCounts = saturationCounts; self.scaleWarnings = scaleWarnings
        self.attentionKernel = attentionKernel
        self.rotation = rotation
        self.prefixCaching = prefixCaching
        self.prefixCacheQueries = prefixCacheQueries
        self.prefixCacheHits = prefixCacheHits
        self.prefixCacheHitRate = prefixCacheQueries > 0 ? Double(prefixCacheHits) / Double(prefixCacheQueries) : 0
        self.prefixCachedBlocks = prefixCachedBlocks
        self.residualBytesPerSequence = residualBytesPerSequence
        self.blockPoolBytes = blockPoolBytes
        self.residualRings = residualRings
        self.residualBytes = residualBytes
        self.residualRingsInUse = residualRingsInUse
        self.residualRingMisses = residualRingMisses
    }

    enum CodingKeys: String, CodingKey {
        case kvCacheDType = "kv_cache_dtype", blockSize = "block_size", numBlocks = "num_blocks"
        case usedBlocks = "num_blocks_used", freeBlocks = "num_blocks_free", tokensCached = "tokens_cached"
        case capacityTokens = "capacity_tokens", bytesPerToken = "bytes_per_token"
        case bytesPerTokenAllLayers = "bytes_per_token_all_layers"
        case slidingWindowBytesPerSequence = "sliding_window_bytes_per_sequence"
        case layersPerBlock = "layers_per_block", layerGroups = "layer_groups"
        case bytesPerTokenRatioToFP16 = "bytes_per_token_ratio_to_fp16", usage, sequences
        case scaleSource = "scale_source", scalePath = "scale_path", scaleSHA256 = "scale_sha256"
        case scaleEpoch = "scale_epoch", liveEpochs = "live_epochs", layerScales = "layer_scales"
        case layerKeyScales = "layer_k_scales", layerValueScales = "layer_v_scales"
        case saturationCounts = "saturation_counts", scaleWarnings = "scale_warnings"
        case attentionKernel = "attention_kernel", rotation = "kv_rotation"
        case prefixCaching = "enable_prefix_caching", prefixCacheQueries = "prefix_cache_queries"
        case prefixCacheHits = "prefix_cache_hits", prefixCacheHitRate = "prefix_cache_hit_rate"
        case prefixCachedBlocks = "prefix_cached_blocks"
        case residualBytesPerSequence = "residual_bytes_per_sequence"
        case blockPoolBytes = "block_pool_bytes", residualRings = "residual_rings", residualBytes = "residual_bytes"
        case residualRingsInUse = "residual_rings_in_use", residualRingMisses = "residual_ring_misses"
    }
}
