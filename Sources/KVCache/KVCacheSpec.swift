import KvantCore

/// The shape of a KV cache: what the pool is built from (never from the model itself).
///
/// Storage per layer per block: K and V values `[numKVHeads, blockSize, headDim]` in the
/// element type of `dtype`; `int8_pertoken` adds fp32 scales `[numKVHeads, blockSize]` for K and for V.
///
/// Layers that attend only within a sliding window (`layerWindows`, Gemma 3: 15 of 18 layers with a
/// 512-token window) keep only the blocks their window still reads. The layers are split into
/// **layer groups** of `layersPerGroup` layers each, every group holding layers of one kind (full
/// attention, or one window size) — vLLM's hybrid KV-cache manager with a uniform page size: one
/// physical block holds `blockSize` positions of every layer of one group, and a sequence has one
/// block table per group (see `KVCachePool`).
public struct KVCacheSpec: Sendable, Equatable, Hashable, Codable {
    /// Number of transformer layers (each has its own K/V).
    public var numLayers: Int
    /// num_kv_heads: K/V heads per layer (GQA: fewer than query heads).
    public var numKVHeads: Int
    /// head_dim: elements per head vector.
    public var headDim: Int
    /// kv_cache_dtype (`auto` is stored as fp16).
    public var dtype: KVCacheDType
    /// block_size: token positions per block (vLLM default 16).
    public var blockSize: Int
    /// Sliding window in tokens of each layer (`numLayers` entries; nil = full attention), or empty when
    /// every layer attends to the whole context. A layer with window `w` attends at position `p` to keys
    /// `p - w + 1 ... p` (llama.cpp's and Gemma 3's convention), so its blocks wholly before that range
    /// are freed as the sequence grows.
    public var layerWindows: [Int?]

    public init(numLayers: Int, numKVHeads: Int, headDim: Int, dtype: KVCacheDType, blockSize: Int = 16,
                layerWindows: [Int?] = []) {
        self.numLayers = numLayers
        self.numKVHeads = numKVHeads
        self.headDim = headDim
        self.dtype = dtype
        self.blockSize = blockSize
        self.layerWindows = layerWindows
    }

    /// Throws `KvantError(.invalidArgument)` naming the field when a dimension is out of range
    /// (numLayers 1...4096, numKVHeads 1...1024, headDim 1...4096, blockSize 1...1024, layer windows
    /// ≥ 1 with one entry per layer).
    public func validate() throws {
        func check(_ name: String, _ value: Int, _ range: ClosedRange<Int>) throws {
            guard range.contains(value) else {
                throw KvantError(.invalidArgument, "KV cache spec: \(name) = \(value) is out of range \(range.lowerBound)...\(range.upperBound)")
            }
        }
        try check("num_layers", numLayers, 1...4096)
        try check("num_kv_heads", numKVHeads, 1...1024)
        try check("head_dim", headDim, 1...4096)
        try check("block_size", blockSize, 1...1024)
        guard layerWindows.isEmpty || layerWindows.count == numLayers else {
            throw KvantError(.invalidArgument, "KV cache spec: \(layerWindows.count) layer windows for num_layers \(numLayers)")
        }
        for (l, w) in layerWindows.enumerated() {
            if let w { try check("sliding window of layer \(l)", w, 1...(1 << 30)) }
        }
        if dtype == .int4PerToken && headDim % 64 != 0 {
            throw KvantError(.invalidArgument, "KV cache spec: kv_cache_dtype int4_pertoken needs head_dim a multiple of 64 (its V groups); head_dim = \(headDim)")
        }
    }

    /// Sliding window of layer `l` in tokens; nil for full attention.
    public func window(layer l: Int) -> Int? { layerWindows.isEmpty ? nil : layerWindows[l] }

    /// Bytes of one token's K and V for one layer: `2 · numKVHeads · headDim · bytes(dtype)`,
    /// plus `2 · numKVHeads · 4` (fp32 K and V scales) for `int8_pertoken`; `int4_pertoken`:
    /// `numKVHeads · (headDim/32 · 20 + headDim/64 · 34)` (K groups of 32 with fp16 scale and min, V groups of
    /// 64 with an fp16 scale: 296 B per KV head at head_dim 256, 0.289× fp16). The int8 residual of the
    /// recent blocks is per sequence, not per token (`KVCachePool.residualBytesPerSequence`).
    public var bytesPerTokenPerLayer: Int {
        if dtype == .int4PerToken { return numKVHeads * Self.int4RowBytes(headDim: headDim) }
        return 2 * numKVHeads * headDim * dtype.elementBytes + (dtype.resolved == .int8PerToken ? 2 * numKVHeads * 4 : 0)
    }

    /// `int4_pertoken`: bytes of one K row plus one V row of one KV head (`kv_q4k_row_bytes + kv_q4v_row_bytes`).
    public static func int4RowBytes(headDim: Int) -> Int { headDim / 32 * 20 + headDim / 64 * 34 }

    /// Bytes of one token's K and V over all layers (what a token costs while a sequence is shorter than
    /// every window).
    public var bytesPerToken: Int { numLayers * bytesPerTokenPerLayer }

    /// Number of layers attending to the whole context.
    public var numFullAttentionLayers: Int { (0..<numLayers).filter { window(layer: $0) == nil }.count }

    /// Bytes one more token adds to a sequence longer than every window: the full-attention layers' K/V
    /// (`numFullAttentionLayers · bytesPerTokenPerLayer`).
    public var fullAttentionBytesPerToken: Int { numFullAttentionLayers * bytesPerTokenPerLayer }

    /// The same shape stored as fp16: what `bytesPerToken` is compared with in stats.
    public var fp16BytesPerToken: Int { numLayers * 2 * numKVHeads * headDim * 2 }

    /// Layers per group (per physical block): the greatest common divisor of the layer counts of each
    /// kind (full attention, each window size), so that every group holds layers of one kind and no
    /// block has unused layer slots. Gemma 3 270M: gcd(3 full, 15 windowed) = 3. Without windows: all layers.
    public var layersPerGroup: Int {
        func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
        return kinds.map { $0.layers.count }.reduce(0, gcd)
    }

    /// The layer groups: the kinds in order (full attention first, then windows in order of first
    /// appearance), each kind's layers in ascending order cut into groups of `layersPerGroup`.
    public var layerGroups: [KVLayerGroup] {
        let g = layersPerGroup
        var groups: [KVLayerGroup] = []
        for kind in kinds {
            for start in stride(from: 0, to: kind.layers.count, by: g) {
                groups.append(KVLayerGroup(window: kind.window, layers: Array(kind.layers[start..<(start + g)])))
            }
        }
        return groups
    }

    private var kinds: [KVLayerGroup] {
        var order: [Int?] = []
        var layers: [Int?: [Int]] = [:]
        for l in 0..<numLayers {
            let w = window(layer: l)
            if layers[w] == nil { order.append(w) }
            layers[w, default: []].append(l)
        }
        order.sort { a, b in a == nil && b != nil }   // full attention first, windows keep their order
        return order.map { KVLayerGroup(window: $0, layers: layers[$0]!) }
    }
}

/// Layers of one kind that share physical blocks (one block holds `blockSize` positions of each of them).
public struct KVLayerGroup: Sendable, Equatable, Hashable, Codable {
    /// Their sliding window in tokens; nil = full attention.
    public var window: Int?
    /// Layer indices, ascending.
    public var layers: [Int]

    public init(window: Int?, layers: [Int]) {
        self.window = window
        self.layers = layers
    }
}

/// Result of growing a sequence's block table (vLLM's `AllocStatus`).
public enum AllocationStatus: String, Sendable, Equatable, Codable {
    /// The blocks were allocated.
    case ok
    /// Not enough free blocks now; retry after other sequences are freed (back-pressure).
    case later
    /// The request needs more blocks than the whole pool has (or the sequence is unknown): it can never fit.
    case never
}

/// Identifies one sequence (one block table) inside a `KVCachePool`.
public struct SequenceID: Hashable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public var description: String { "seq\(rawValue)" }
}
