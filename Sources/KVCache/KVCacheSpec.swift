import KvantCore

/// The shape of a KV cache: what the pool is built from (never from the model itself).
///
/// Storage per layer per block: K and V values `[numKVHeads, blockSize, headDim]` in the
/// element type of `dtype`; `int8_pertoken` adds fp32 scales `[numKVHeads, blockSize]` for K and for V.
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

    public init(numLayers: Int, numKVHeads: Int, headDim: Int, dtype: KVCacheDType, blockSize: Int = 16) {
        self.numLayers = numLayers
        self.numKVHeads = numKVHeads
        self.headDim = headDim
        self.dtype = dtype
        self.blockSize = blockSize
    }

    /// Throws `KvantError(.invalidArgument)` naming the field when a dimension is out of range
    /// (numLayers 1...4096, numKVHeads 1...1024, headDim 1...4096, blockSize 1...1024).
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
    }

    /// Bytes of one token's K and V for one layer: `2 · numKVHeads · headDim · bytes(dtype)`,
    /// plus `2 · numKVHeads · 4` (fp32 K and V scales) for `int8_pertoken`.
    public var bytesPerTokenPerLayer: Int {
        2 * numKVHeads * headDim * dtype.elementBytes + (dtype.resolved == .int8PerToken ? 2 * numKVHeads * 4 : 0)
    }

    /// Bytes of one token's K and V over all layers.
    public var bytesPerToken: Int { numLayers * bytesPerTokenPerLayer }

    /// The same shape stored as fp16: what `bytesPerToken` is compared with in stats.
    public var fp16BytesPerToken: Int { numLayers * 2 * numKVHeads * headDim * 2 }
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
