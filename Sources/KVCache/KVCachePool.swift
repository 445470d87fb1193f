import CKernels
import Foundation
import KvantCore

/// The paged KV cache: a preallocated pool of blocks shared by all sequences (vLLM's
/// PagedAttention, Kwon et al. 2023), block tables per sequence, storage in the spec's dtype.
///
/// Layer groups (vLLM's hybrid KV-cache manager with a uniform page size): the layers are split into
/// groups of `layersPerGroup` layers of one kind (`KVCacheSpec.layerGroups`: full attention, or one
/// sliding window). A physical block holds `blockSize` positions of every layer of one group; each
/// sequence has one block table per group. Blocks of a sliding-window group that lie wholly before the
/// window of the next query position are freed as the sequence grows (`commit`), so a long sequence
/// holds `numFullAttentionLayers × length + windowed layers × (window + a block)` positions.
///
/// Memory layout: block `b` is `layersPerGroup · blockStride` bytes at `b · pageStride`; layer `l`
/// (slot `s` of its group) occupies `blockStride` bytes at offset `s · blockStride` inside it, holding
/// K `[numKVHeads, blockSize, headDim]`, then V `[numKVHeads, blockSize, headDim]`, then for
/// `int8_pertoken` fp32 K scales `[numKVHeads, blockSize]` and V scales `[numKVHeads, blockSize]`.
///
/// Static int8 modes: the scale tables are versioned (epochs). The first write into a (block, layer)
/// after the block is allocated records the current epoch and its scales for that block; every later
/// write into that block (and every read) uses the block's recorded scales, so a scale reload never
/// changes the meaning of values already in the cache. Old epochs stay listed while a block uses them.
/// A sequence freed by a preemption keeps its blocks' epochs (`freeKeepingScaleEpochs`), and the sequence
/// that resumes it (`createSequence(resuming:)`) writes each of those blocks under its old epoch again, so a
/// `reload-scales` between a preemption and the recompute does not change what the recompute stores.
///
/// Thread safety: one lock guards the block tables, the block pool and the epoch tables; `write`
/// and `attend` take it once per call to look up the block(s), and run the kernels outside it.
/// Different sequences may be used from different threads; `attend` may run concurrently for
/// different positions of one sequence, provided each attended position was written before.
/// Freeing a sequence while another thread still reads it is a caller error.
public final class KVCachePool: @unchecked Sendable {
    /// The spec the pool was built from.
    public let spec: KVCacheSpec
    /// Number of blocks (each holds `blockSize` tokens of every layer of one layer group).
    public let numBlocks: Int
    /// Bytes actually allocated per (layer, block) (>= blockSize · bytesPerTokenPerLayer, 64-byte aligned).
    public let blockStride: Int
    /// The layer groups (`spec.layerGroups`); a sequence has one block table per group.
    public let groups: [KVLayerGroup]
    /// Layers per group, i.e. per physical block.
    public let layersPerGroup: Int
    /// Bytes of one physical block: `layersPerGroup · blockStride`.
    public let pageStride: Int
    /// Group index and slot inside the group of each layer.
    let groupOfLayer: [Int]
    let slotOfLayer: [Int]
    /// True when `attend` uses the AVX-512 kernel (CPU support, allowed at init, head_dim % 16 == 0).
    public var usesAVX512: Bool { useAVX512 && spec.headDim % 16 == 0 }
    let useAVX512: Bool
    /// `int8_pertoken` only: K and V are stored rotated by a normalized Hadamard transform over groups of
    /// this many values of each head (`kv_hadamard`; the largest power of two dividing head_dim: 256 for
    /// Gemma 3's head_dim 256), and attention rotates the query the same way and the output back. 1 = no
    /// rotation (every other dtype, or `hadamardRotation: false`). See docs/kv-cache.md.
    public let rotationGroup: Int

    let dtypeCode: Int32
    /// Bytes of one K row of one head (int4: `kv_q4k_row_bytes`); V rows take `vRowBytes`.
    let rowBytes: Int
    let vRowBytes: Int
    /// `int4_pertoken`: the pool stores 4-bit rows; each sequence also keeps its recent rows at int8
    /// (`KVResidualRing`, laid out by `residual`), created at its first write, dropped by `free`.
    let isInt4: Bool
    let residual: KVResidualLayout?
    var residuals: [SequenceID: KVResidualRing] = [:]
    /// `int4_pertoken` with prefix caching: the rings of the last `retiredRingLimit` freed sequences, with the
    /// chained hashes of their full blocks, kept as sources of the int8 rows a prefix-cache hit needs
    /// (`residualSource`); the most recently freed last.
    var retiredRings: [(hashes: [BlockHash], ring: KVResidualRing)] = []
    /// `int4_pertoken`: residual rings the pool holds room for, out of `kv_cache_bytes` (`residualRingCount`:
    /// `maxNumSeqs` live + `retiredRingLimit` retired with prefix caching); 0 for other dtypes.
    public let residualRings: Int
    /// Sequences live at once the pool was sized for (the daemon's `max_num_seqs`).
    public let maxNumSeqs: Int
    /// The rings' memory: `residualRings` slots of `residualBytesPerSequence` bytes; nil without rings.
    let ringArena: UnsafeMutableRawPointer?
    var freeRingSlots: [Int] = []
    /// Sequences that found no free ring slot (more live than `maxNumSeqs`) and were read at int4 only.
    var residualRingMisses: Int64 = 0
    /// Live sequences without a ring (no free slot at their first write); they stay int4-only until freed.
    var ringless: Set<SequenceID> = []
    let vOffset: Int
    let ksOffset: Int
    let vsOffset: Int
    let storage: UnsafeMutableRawPointer
    let lock = NSLock()
    var blocks: BlockPool
    var tables: [SequenceID: BlockTable] = [:]
    var nextSequence = 0
    /// Blocks promised to admitted sequences and not yet allocated (Σ `BlockTable.promised`; ≤ free blocks).
    var promisedBlocks = 0
    /// The most positions of one sequence a forward pass writes before it attends them (a prefill micro-batch;
    /// the daemon's `min(ForwardSession.maxBatch, max_num_batched_tokens)`, 64 by default). `admit` and
    /// `capacityTokens` assume it (while a micro-batch runs, a sliding-window layer holds its window plus the
    /// micro-batch), and an `int4_pertoken` pool sizes each int8 residual ring for it
    /// (`recentBlocks + ceil(prefillChunk / blockSize) + 1` blocks). A contract on the writer, not checked by
    /// `write`: `ForwardSession.forward` splits its input into micro-batches of at most this many tokens and
    /// `ForwardSession.step` refuses a longer chunk. A pass that wrote more would read its first queries' recent
    /// blocks at 4 bits (their int8 rows overwritten in the ring): never out of bounds, but not what a run in
    /// smaller passes reads.
    public let prefillChunk: Int

    // Static int8 modes.
    let isStatic: Bool
    let blockEpoch: UnsafeMutablePointer<Int32>      // [numLayers, numBlocks], -1 = unwritten
    let blockScales: UnsafeMutablePointer<Float>     // K scales [numLayers, numBlocks, numKVHeads]
    let blockVScales: UnsafeMutablePointer<Float>    // V scales [numLayers, numBlocks, numKVHeads]
    var epochTables: [Int: ScaleTables] = [:]        // epoch -> K and V scales [numLayers, numKVHeads]
    var currentEpoch = 0
    var currentScales: KVScales?
    /// Epochs kept alive for preempted sequences (`freeKeepingScaleEpochs`): epoch -> holds referencing it.
    var heldEpochs: [Int32: Int] = [:]
    let saturation: UnsafeMutablePointer<Int64>      // [numLayers]
    var recorder: KVAmaxRecorder?
    /// Measurement tool only (`setQuantSimulation`); nil in the daemon.
    var simulation: KVSimulationState?

    // Automatic prefix caching (KVCachePool+PrefixCache.swift).
    /// True when full committed blocks are hashed and `attachCachedPrefix` reuses them (vLLM's
    /// `enable_prefix_caching`).
    public let prefixCachingEnabled: Bool
    /// `hash_{-1}` of every chain: SHA-256 of the pool's kv_cache_dtype, rotation and block size.
    let prefixSeed: BlockHash
    /// Cached blocks by (hash, layer group), in use or free (a free one is evicted when `allocate` takes it).
    /// Several blocks may hold equal contents (sequences that computed the same prefix concurrently), as in
    /// vLLM's `cached_block_hash_to_block`; each stays cached until evicted.
    var cachedBlocks: [PrefixKey: [Int32]] = [:]
    /// Blocks in `cachedBlocks` (Σ of the lists' lengths).
    var numCachedBlocks = 0
    /// The key under which each physical block is in `cachedBlocks`, nil when it is not.
    var blockKey: [PrefixKey?]
    /// Per block: free blocks promised on its behalf by prefix-cache hits that share it in a sliding-window
    /// group (counted in `promisedBlocks`). An admitted sequence that releases the block while another still
    /// holds it (which frees nothing) takes one into its promise; what is left is released with the block.
    var blockCredit: [Int32]
    /// Prompt tokens looked up and tokens served from the cache (vLLM's prefix_cache_queries / _hits).
    var prefixQueries: Int64 = 0
    var prefixHits: Int64 = 0

    /// MemAvailable from /proc/meminfo in bytes (nil where there is none).
    static func availableMemoryBytes() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            if parts.count >= 2, let kb = Int(parts[1]) { return kb * 1024 }
        }
        return nil
    }


    /// Builds the pool and allocates `byteBudget` bytes' worth of blocks up front.
    ///
    /// - Parameters:
    ///   - spec: the cache shape; validated.
    ///   - byteBudget: bytes for K/V storage; `numBlocks = byteBudget / pageStride` (`layersPerGroup · blockStride`).
    ///   - scales: static scales for `int8_pertensor`/`int8_pertensor_perhead` (epoch 1). Without them a
    ///     static pool uses 1.0 everywhere (epoch 0, scale source "default 1.0").
    ///   - allowAVX512: use the AVX-512 attention kernel when the CPU has it (run-time CPUID check) and
    ///     head_dim is a multiple of 16; false forces the AVX2 kernel (tests compare both).
    ///   - hadamardRotation: `int8_pertoken` stores each (token, KV head) row of K and V after an
    ///     orthogonal Hadamard rotation, so one outlier channel no longer sets the scale of the whole
    ///     row (relative int8 error 5× lower on Gemma 3 270M); attention is unchanged mathematically.
    ///     false stores the rows as they are (for comparison). Ignored by the other dtypes.
    ///   - int4RecentBlocks: `int4_pertoken` only: each query reads its last this many blocks (and token 0) from the
    ///     sequence's int8 residual (default 4, as measured in docs/kv-cache.md); 0 = no residual, every position at
    ///     int4 (for comparison: `kvant-eval --int4-recent-blocks 0`).
    ///   - prefillChunk: the most positions of one sequence a forward pass writes before attending them (the
    ///     property of that name), for `admit`, `capacityTokens` and the size of each int4 residual ring; ≥ 1.
    ///   - enablePrefixCaching: hash full committed blocks and reuse them for prompts that start the same way
    ///     (`attachCachedPrefix`; vLLM's automatic prefix caching). false: no hashing, no hits.
    ///   - maxNumSeqs: sequences live at once (the daemon's `max_num_seqs`); ≥ 1. `int4_pertoken` takes the int8
    ///     residual rings of that many sequences (plus `retiredRingLimit` with prefix caching) out of
    ///     `byteBudget` first (`residualReserveBytes`) and sizes its blocks from the rest; other dtypes ignore it.
    /// - Throws: `KvantError(.invalidArgument)` for a bad spec, scales given for a dtype that has none,
    ///   or scales not matching the spec; `.resourceExhausted` when the budget (less the int4 residual rings)
    ///   holds less than one block per layer group (one token) or the allocation fails.
    public init(spec: KVCacheSpec, byteBudget: Int, scales: KVScales? = nil, allowAVX512: Bool = true,
                hadamardRotation: Bool = true, prefillChunk: Int = 512, int4RecentBlocks: Int = 4,
                enablePrefixCaching: Bool = true, maxNumSeqs: Int = 1) throws {
        try spec.validate()
        guard maxNumSeqs >= 1 else {
            throw KvantError(.invalidArgument, "KV cache: max_num_seqs \(maxNumSeqs); must be at least 1")
        }
        self.maxNumSeqs = maxNumSeqs
        guard prefillChunk >= 1 else {
            throw KvantError(.invalidArgument, "KV cache: prefill micro-batch \(prefillChunk) tokens; must be at least 1")
        }
        self.prefillChunk = prefillChunk
        self.spec = spec
        useAVX512 = allowAVX512 && kv_cpu_has_avx512() != 0
        let dt = spec.dtype.resolved
        rotationGroup = dt.isDynamic && hadamardRotation ? Int(kv_hadamard_group(Int32(spec.headDim))) : 1
        switch dt {
        case .fp32: dtypeCode = Int32(KV_DT_F32)
        case .fp16, .auto: dtypeCode = Int32(KV_DT_F16)
        case .bf16: dtypeCode = Int32(KV_DT_BF16)
        case .int8PerTensor, .int8PerTensorPerHead: dtypeCode = Int32(KV_DT_I8_STATIC)
        case .int8PerToken: dtypeCode = Int32(KV_DT_I8_TOKEN)
        case .int4PerToken: dtypeCode = Int32(KV_DT_Q4)
        }
        isStatic = dt.usesStaticScales
        let H = spec.numKVHeads, B = spec.blockSize
        isInt4 = dt == .int4PerToken
        rowBytes = isInt4 ? Int(kv_q4k_row_bytes(Int32(spec.headDim))) : spec.headDim * dt.elementBytes
        vRowBytes = isInt4 ? Int(kv_q4v_row_bytes(Int32(spec.headDim))) : rowBytes
        let kvBytes = H * B * rowBytes
        vOffset = kvBytes
        ksOffset = (2 * kvBytes + 3) & ~3
        vsOffset = ksOffset + H * B * 4
        let raw = dt == .int8PerToken ? vsOffset + H * B * 4 : isInt4 ? kvBytes + H * B * vRowBytes : 2 * kvBytes
        guard int4RecentBlocks >= 0 else {
            throw KvantError(.invalidArgument, "KV cache: int4 recent blocks \(int4RecentBlocks); must be 0 or more")
        }
        residual = isInt4 && int4RecentBlocks > 0
            ? KVResidualLayout(spec: spec, prefillChunk: prefillChunk, recentBlocks: int4RecentBlocks) : nil
        blockStride = (raw + 63) & ~63
        groups = spec.layerGroups
        layersPerGroup = spec.layersPerGroup
        var gOf = [Int](repeating: 0, count: spec.numLayers), sOf = [Int](repeating: 0, count: spec.numLayers)
        for (gi, group) in groups.enumerated() {
            for (slot, l) in group.layers.enumerated() { gOf[l] = gi; sOf[l] = slot }
        }
        groupOfLayer = gOf
        slotOfLayer = sOf
        pageStride = blockStride * layersPerGroup
        let perToken = pageStride * groups.count   // one block of every group: what one token needs
        // int4_pertoken: the residual rings come out of the budget first (admission counts blocks only, so room for
        // every ring the pool can need is set aside once: max_num_seqs live + the retired ones).
        residualRings = residual == nil ? 0
            : Self.residualRingCount(spec: spec, maxNumSeqs: maxNumSeqs, enablePrefixCaching: enablePrefixCaching)
        let ringBytes = residualRings * (residual?.bytes ?? 0)
        if ringBytes > 0 && byteBudget - ringBytes < perToken {
            let retired = enablePrefixCaching ? " + \(Self.retiredRingLimit) rings of freed sequences kept for prefix caching" : ""
            throw KvantError(.resourceExhausted,
                             "KV cache byte budget \(byteBudget) bytes is too small for kv_cache_dtype \(spec.dtype.rawValue): the int8 residual rings of max_num_seqs \(maxNumSeqs) sequences\(retired) take \(residualRings) × \(residual!.bytes) = \(ringBytes) bytes, leaving \(max(0, byteBudget - ringBytes)), less than one block of every layer (\(perToken) bytes: block_size \(B), \(spec.numLayers) layers); raise kv_cache_bytes to at least \(ringBytes + perToken) or lower max_num_seqs")
        }
        guard byteBudget >= perToken else {
            throw KvantError(.resourceExhausted,
                             "KV cache byte budget \(byteBudget) bytes is smaller than one block of every layer (\(perToken) bytes: block_size \(B), \(spec.numLayers) layers, kv_cache_dtype \(spec.dtype.rawValue))")
        }
        numBlocks = min((byteBudget - ringBytes) / pageStride, Int(Int32.max) / 2)
        let (blockBytes, overflow) = numBlocks.multipliedReportingOverflow(by: pageStride)
        let total = blockBytes &+ ringBytes
        if let available = Self.availableMemoryBytes(), !overflow, total > available {
            throw KvantError(.resourceExhausted,
                             "KV cache: kv_cache_bytes \(byteBudget) is more than the memory available now (\(available) bytes, MemAvailable in /proc/meminfo)")
        }
        guard !overflow, let mem = aligned_alloc_checked(total) else {
            throw KvantError(.resourceExhausted, "KV cache: cannot allocate \(byteBudget) bytes")
        }
        // Preallocate for real: touch every page now, so a pool that fits is resident and a full
        // cache can never meet the out-of-memory killer later.
        memset(mem, 0, total)
        storage = mem
        ringArena = ringBytes > 0 ? mem + blockBytes : nil   // blockBytes: a multiple of 64
        freeRingSlots = Array((0..<residualRings).reversed())
        blocks = BlockPool(numBlocks: numBlocks)
        // int4_pertoken too: a hit also takes the int8 residual rows of its last blocks and of token 0 from a
        // ring that holds them (`residualSource`), so a continued sequence reads what a cold run reads.
        prefixCachingEnabled = enablePrefixCaching
        blockKey = [PrefixKey?](repeating: nil, count: numBlocks)
        blockCredit = [Int32](repeating: 0, count: numBlocks)
        prefixSeed = BlockHash(digestOf: Array("kvant-prefix-cache-v1 \(dt.rawValue) rotation \(rotationGroup) block_size \(B)".utf8))
        let epochCount = isStatic ? spec.numLayers * numBlocks : 0
        blockEpoch = .allocate(capacity: max(epochCount, 1))
        blockEpoch.initialize(repeating: -1, count: max(epochCount, 1))
        blockScales = .allocate(capacity: max(epochCount * H, 1))
        blockScales.initialize(repeating: 1, count: max(epochCount * H, 1))
        blockVScales = .allocate(capacity: max(epochCount * H, 1))
        blockVScales.initialize(repeating: 1, count: max(epochCount * H, 1))
        saturation = .allocate(capacity: spec.numLayers)
        saturation.initialize(repeating: 0, count: spec.numLayers)
        if isStatic {
            let ones = [Float](repeating: 1, count: spec.numLayers * H)
            epochTables[0] = ScaleTables(key: ones, value: ones)
        }
        if let scales {
            guard isStatic else {
                throw KvantError(.invalidArgument, "KV scales given for kv_cache_dtype \(spec.dtype.rawValue), which uses no scale file (only int8_pertensor and int8_pertensor_perhead do)")
            }
            let table = try Self.scaleTable(scales, for: spec)
            currentEpoch = 1
            epochTables[1] = table
            currentScales = scales
        }
    }

    deinit {
        free_aligned(storage)
        blockEpoch.deallocate()
        blockScales.deallocate()
        blockVScales.deallocate()
        saturation.deallocate()
    }

    /// `capacity_tokens`: the longest sequence (prompt + generated tokens) `admit` accepts into the empty
    /// pool, however it is split between prompt and generation: the largest `L` with
    /// `peakBlocks(KVAdmission(promptLength: L, maxLength: L)) <= numBlocks` (a prompt of all `L` tokens is
    /// the worst case: its micro-batches span the most blocks). Full-attention groups hold all `L`
    /// positions, each sliding-window group its window plus one prefill micro-batch. At most 2^30.
    /// Without sliding windows: `numBlocks · blockSize`.
    public var capacityTokens: Int {
        func fits(_ L: Int) -> Bool { peakBlocks(KVAdmission(promptLength: L, maxLength: L)) <= numBlocks }
        var lo = 0, hi = 1 << 30
        if fits(hi) { return hi }
        while lo + 1 < hi {   // peakBlocks is non-decreasing in L
            let mid = (lo + hi) / 2
            if fits(mid) { lo = mid } else { hi = mid }
        }
        return lo
    }

    /// Blocks one sequence holds at most while it grows one position at a time to `length` tokens
    /// (`peakBlocks` of a decode-only growth): a full-attention group `ceil(length / blockSize)`, a
    /// sliding-window group with window `w` the blocks spanned by its last `w` positions, at most
    /// `ceil((w - 1) / blockSize) + 1`.
    public func blocksNeeded(forLength length: Int) -> Int {
        peakBlocks(KVAdmission(promptLength: 0, maxLength: max(0, length)))
    }

    /// First byte of layer `l` in block 0; block `b` of the layer is at `+ b · pageStride`.
    @inline(__always) func layerBase(_ l: Int) -> UnsafeMutableRawPointer { storage + slotOfLayer[l] * blockStride }

    /// The (layer, block) storage of `block` for layer `l`.
    @inline(__always) func blockAddress(layer l: Int, block b: Int) -> UnsafeMutableRawPointer {
        storage + b * pageStride + slotOfLayer[l] * blockStride
    }

}

func aligned_alloc_checked(_ bytes: Int) -> UnsafeMutableRawPointer? {
    var p: UnsafeMutableRawPointer? = nil
    guard posix_memalign(&p, 64, max(bytes, 64)) == 0 else { return nil }
    return p
}

func free_aligned(_ p: UnsafeMutableRawPointer) { Foundation.free(p) }
