import CKernels
import Foundation
import KvantCore

/// The paged KV cache: a preallocated pool of blocks shared by all sequences (vLLM's
/// PagedAttention, Kwon et al. 2023), one block table per sequence, storage in the spec's dtype.
///
/// Memory layout (layer-major): block `b` of layer `l` starts at `(l · numBlocks + b) · blockStride`
/// bytes and holds K `[numKVHeads, blockSize, headDim]`, then V `[numKVHeads, blockSize, headDim]`,
/// then for `int8_pertoken` fp32 K scales `[numKVHeads, blockSize]` and V scales `[numKVHeads, blockSize]`.
///
/// Static int8 modes: the scale tables are versioned (epochs). The first write into a (block, layer)
/// after the block is allocated records the current epoch and its scales for that block; every later
/// write into that block (and every read) uses the block's recorded scales, so a scale reload never
/// changes the meaning of values already in the cache. Old epochs stay listed while a block uses them.
///
/// Thread safety: one lock guards the block tables, the block pool and the epoch tables; `write`
/// and `attend` take it once per call to look up the block(s), and run the kernels outside it.
/// Different sequences may be used from different threads; `attend` may run concurrently for
/// different positions of one sequence, provided each attended position was written before.
/// Freeing a sequence while another thread still reads it is a caller error.
public final class KVCachePool: @unchecked Sendable {
    /// The spec the pool was built from.
    public let spec: KVCacheSpec
    /// Number of blocks (each holds `blockSize` tokens of every layer).
    public let numBlocks: Int
    /// Bytes actually allocated per (layer, block) (>= blockSize · bytesPerTokenPerLayer, 64-byte aligned).
    public let blockStride: Int
    /// True when `attend` uses the AVX-512 kernel (CPU support, allowed at init, head_dim % 16 == 0).
    public var usesAVX512: Bool { useAVX512 && spec.headDim % 16 == 0 }
    private let useAVX512: Bool
    /// `int8_pertoken` only: K and V are stored rotated by a normalized Hadamard transform over groups of
    /// this many values of each head (`kv_hadamard`; the largest power of two dividing head_dim: 256 for
    /// Gemma 3's head_dim 256), and attention rotates the query the same way and the output back. 1 = no
    /// rotation (every other dtype, or `hadamardRotation: false`). See docs/kv-cache.md.
    public let rotationGroup: Int

    private let dtypeCode: Int32
    private let rowBytes: Int
    private let vOffset: Int
    private let ksOffset: Int
    private let vsOffset: Int
    private let storage: UnsafeMutableRawPointer
    private let lock = NSLock()
    private var blocks: BlockPool
    private var tables: [SequenceID: BlockTable] = [:]
    private var nextSequence = 0

    // Static int8 modes.
    private let isStatic: Bool
    private let blockEpoch: UnsafeMutablePointer<Int32>      // [numLayers, numBlocks], -1 = unwritten
    private let blockScales: UnsafeMutablePointer<Float>     // K scales [numLayers, numBlocks, numKVHeads]
    private let blockVScales: UnsafeMutablePointer<Float>    // V scales [numLayers, numBlocks, numKVHeads]
    private var epochTables: [Int: ScaleTables] = [:]        // epoch -> K and V scales [numLayers, numKVHeads]
    private var currentEpoch = 0
    private var currentScales: KVScales?
    private let saturation: UnsafeMutablePointer<Int64>      // [numLayers]
    private var recorder: KVAmaxRecorder?

    /// Builds the pool and allocates `byteBudget` bytes' worth of blocks up front.
    ///
    /// - Parameters:
    ///   - spec: the cache shape; validated.
    ///   - byteBudget: bytes for K/V storage; `numBlocks = byteBudget / (numLayers · blockStride)`.
    ///   - scales: static scales for `int8_pertensor`/`int8_pertensor_perhead` (epoch 1). Without them a
    ///     static pool uses 1.0 everywhere (epoch 0, scale source "default 1.0").
    ///   - allowAVX512: use the AVX-512 attention kernel when the CPU has it (run-time CPUID check) and
    ///     head_dim is a multiple of 16; false forces the AVX2 kernel (tests compare both).
    ///   - hadamardRotation: `int8_pertoken` stores each (token, KV head) row of K and V after an
    ///     orthogonal Hadamard rotation, so one outlier channel no longer sets the scale of the whole
    ///     row (relative int8 error 5× lower on Gemma 3 270M); attention is unchanged mathematically.
    ///     false stores the rows as they are (for comparison). Ignored by the other dtypes.
    /// - Throws: `KvantError(.invalidArgument)` for a bad spec, scales given for a dtype that has none,
    ///   or scales not matching the spec; `.resourceExhausted` when the budget is below one block or
    ///   the allocation fails.
    /// MemAvailable from /proc/meminfo in bytes (nil where there is none).
    static func availableMemoryBytes() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            if parts.count >= 2, let kb = Int(parts[1]) { return kb * 1024 }
        }
        return nil
    }

    public init(spec: KVCacheSpec, byteBudget: Int, scales: KVScales? = nil, allowAVX512: Bool = true,
                hadamardRotation: Bool = true) throws {
        try spec.validate()
        self.spec = spec
        useAVX512 = allowAVX512 && kv_cpu_has_avx512() != 0
        let dt = spec.dtype.resolved
        rotationGroup = dt == .int8PerToken && hadamardRotation ? Int(kv_hadamard_group(Int32(spec.headDim))) : 1
        switch dt {
        case .fp32: dtypeCode = Int32(KV_DT_F32)
        case .fp16, .auto: dtypeCode = Int32(KV_DT_F16)
        case .bf16: dtypeCode = Int32(KV_DT_BF16)
        case .int8PerTensor, .int8PerTensorPerHead: dtypeCode = Int32(KV_DT_I8_STATIC)
        case .int8PerToken: dtypeCode = Int32(KV_DT_I8_TOKEN)
        }
        isStatic = dt.usesStaticScales
        let H = spec.numKVHeads, B = spec.blockSize
        rowBytes = spec.headDim * dt.elementBytes
        let kvBytes = H * B * rowBytes
        vOffset = kvBytes
        ksOffset = (2 * kvBytes + 3) & ~3
        vsOffset = ksOffset + H * B * 4
        let raw = dt == .int8PerToken ? vsOffset + H * B * 4 : 2 * kvBytes
        blockStride = (raw + 63) & ~63
        let perBlock = blockStride * spec.numLayers
        guard byteBudget >= perBlock else {
            throw KvantError(.resourceExhausted,
                             "KV cache byte budget \(byteBudget) bytes is smaller than one block (\(perBlock) bytes: block_size \(B), \(spec.numLayers) layers, kv_cache_dtype \(spec.dtype.rawValue))")
        }
        numBlocks = min(byteBudget / perBlock, Int(Int32.max) / 2)
        let (total, overflow) = numBlocks.multipliedReportingOverflow(by: perBlock)
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
        blocks = BlockPool(numBlocks: numBlocks)
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

    /// Capacity in tokens of one sequence using the whole pool: `numBlocks · blockSize`.
    public var capacityTokens: Int { numBlocks * spec.blockSize }

    // MARK: sequences and block tables

    /// A new, empty sequence (no blocks until `reserve`).
    public func createSequence() -> SequenceID {
        lock.lock(); defer { lock.unlock() }
        let id = SequenceID(rawValue: nextSequence)
        nextSequence += 1
        tables[id] = BlockTable()
        return id
    }

    /// A new sequence sharing all of `seq`'s blocks (reference counts + 1) and its length. The
    /// partially filled last block is copied by whichever sequence next writes into it
    /// (copy-on-write); full blocks stay shared until freed.
    /// Precondition: `seq` exists (a caller error otherwise).
    public func fork(_ seq: SequenceID) -> SequenceID {
        lock.lock(); defer { lock.unlock() }
        guard let table = tables[seq] else { preconditionFailure("KVCachePool.fork: unknown sequence \(seq)") }
        for id in table.blockIDs { blocks.retain(id) }
        let child = SequenceID(rawValue: nextSequence)
        nextSequence += 1
        tables[child] = table
        return child
    }

    /// Drops the sequence and releases its blocks (a block returns to the free queue when no
    /// sequence references it). Unknown ids are ignored.
    public func free(_ seq: SequenceID) {
        lock.lock(); defer { lock.unlock() }
        guard let table = tables.removeValue(forKey: seq) else { return }
        for id in table.blockIDs { blocks.release(id) }
    }

    /// Reserved length of the sequence in tokens (0 for an unknown id).
    public func length(of seq: SequenceID) -> Int {
        lock.lock(); defer { lock.unlock() }
        return tables[seq]?.length ?? 0
    }

    /// The sequence's block table (a snapshot), nil for an unknown id.
    public func blockTable(of seq: SequenceID) -> BlockTable? {
        lock.lock(); defer { lock.unlock() }
        return tables[seq]
    }

    /// Grows the sequence to `newLength` token positions, allocating blocks (and copying a shared,
    /// partially filled last block that the new positions will be written into).
    /// - Returns: `.ok` (also when `newLength <= length`), `.later` when not enough blocks are free
    ///   now (nothing changes), `.never` when `newLength` needs more blocks than the pool has, the
    ///   length is negative or the sequence is unknown.
    public func reserve(_ seq: SequenceID, newLength: Int) -> AllocationStatus {
        lock.lock(); defer { lock.unlock() }
        guard var table = tables[seq], newLength >= 0 else { return .never }
        if newLength <= table.length { return .ok }
        let B = spec.blockSize
        let needBlocks = newLength / B + (newLength % B == 0 ? 0 : 1)  // no overflow for huge lengths
        if needBlocks > numBlocks { return .never }
        let extra = needBlocks - table.blockIDs.count
        let cow = table.length % B != 0 && blocks.refCount(table.blockIDs[table.blockIDs.count - 1]) > 1
        if extra + (cow ? 1 : 0) > blocks.numFree { return .later }
        if cow { copyOnWrite(&table, logicalBlock: table.blockIDs.count - 1) }
        for _ in 0..<extra { table.blockIDs.append(allocateBlock()!) }
        table.length = newLength
        tables[seq] = table
        return .ok
    }

    /// Shortens the sequence to `newLength` tokens (e.g. to regenerate from an earlier position),
    /// releasing the blocks past it. Growing again later goes through `reserve`, which copies a
    /// shared partially filled last block before it is written. No-op when `newLength >= length`
    /// or the sequence is unknown; negative lengths count as 0.
    public func truncate(_ seq: SequenceID, to newLength: Int) {
        lock.lock(); defer { lock.unlock() }
        guard var table = tables[seq], newLength < table.length else { return }
        let n = max(0, newLength)
        let keep = n / spec.blockSize + (n % spec.blockSize == 0 ? 0 : 1)
        while table.blockIDs.count > keep { blocks.release(table.blockIDs.removeLast()) }
        table.length = n
        tables[seq] = table
    }

    /// Number of free blocks now.
    public var freeBlocks: Int {
        lock.lock(); defer { lock.unlock() }
        return blocks.numFree
    }

    /// Reference count of a physical block (0 = free or out of range); for tests and stats.
    public func refCount(block: Int32) -> Int {
        lock.lock(); defer { lock.unlock() }
        guard block >= 0, Int(block) < numBlocks else { return 0 }
        return blocks.refCount(block)
    }

    // Under the lock.
    private func allocateBlock() -> Int32? {
        guard let id = blocks.allocate() else { return nil }
        if isStatic {
            for l in 0..<spec.numLayers { blockEpoch[l * numBlocks + Int(id)] = -1 }
        }
        return id
    }

    // Under the lock: replaces logical block `lb` of `table` by a private copy (all layers).
    private func copyOnWrite(_ table: inout BlockTable, logicalBlock lb: Int) {
        let old = table.blockIDs[lb]
        guard let new = allocateBlock() else {
            preconditionFailure("KVCachePool: no free block for copy-on-write (reserve before writing)")
        }
        let H = spec.numKVHeads
        for l in 0..<spec.numLayers {
            let src = storage + (l * numBlocks + Int(old)) * blockStride
            let dst = storage + (l * numBlocks + Int(new)) * blockStride
            dst.copyMemory(from: src, byteCount: blockStride)
            if isStatic {
                let o = l * numBlocks + Int(old), n = l * numBlocks + Int(new)
                blockEpoch[n] = blockEpoch[o]
                (blockScales + n * H).update(from: blockScales + o * H, count: H)
                (blockVScales + n * H).update(from: blockVScales + o * H, count: H)
            }
        }
        blocks.release(old)
        table.blockIDs[lb] = new
    }

    // MARK: amax recording, scales

    /// When set, `write` records the per-(layer, KV head) amax of K and of V (calibration).
    public var amaxRecorder: KVAmaxRecorder? {
        get { lock.lock(); defer { lock.unlock() }; return recorder }
        set { lock.lock(); defer { lock.unlock() }; recorder = newValue }
    }

    /// Validates `scales` against the spec (dtype static, layer count, head count) and makes them
    /// current under a new epoch; blocks written before keep their epoch's scales. A failing call
    /// changes nothing.
    /// - Returns: the new epoch.
    /// - Throws: `KvantError(.failedPrecondition)` for a non-static dtype, `.invalidArgument` on a mismatch.
    @discardableResult
    public func installScales(_ scales: KVScales) throws -> Int {
        guard isStatic else {
            throw KvantError(.failedPrecondition, "kv_cache_dtype \(spec.dtype.rawValue) uses no scale file (only int8_pertensor and int8_pertensor_perhead do)")
        }
        let table = try Self.scaleTable(scales, for: spec)
        lock.lock(); defer { lock.unlock() }
        currentEpoch += 1
        epochTables[currentEpoch] = table
        currentScales = scales
        collectEpochs()
        return currentEpoch
    }

    /// The current epoch (0 = default 1.0 scales).
    public var scaleEpoch: Int {
        lock.lock(); defer { lock.unlock() }
        return currentEpoch
    }

    // Under the lock: drops tables of epochs no allocated block uses (the current one stays).
    private func collectEpochs() {
        var live: Set<Int32> = [Int32(currentEpoch)]
        for l in 0..<spec.numLayers {
            for b in 0..<numBlocks where blocks.refCount(Int32(b)) > 0 {
                let e = blockEpoch[l * numBlocks + b]
                if e >= 0 { live.insert(e) }
            }
        }
        for e in epochTables.keys where !live.contains(Int32(e)) { epochTables[e] = nil }
    }

    /// Checks `scales` against a cache of `spec` exactly as `init(scales:)` and `installScales` do
    /// (static dtype, layer count, per-head scales only for `int8_pertensor_perhead`, head count).
    /// - Throws: `KvantError(.failedPrecondition)` for a dtype without static scales, `.invalidArgument` on a mismatch.
    public static func checkScales(_ scales: KVScales, for spec: KVCacheSpec) throws {
        guard spec.dtype.usesStaticScales else {
            throw KvantError(.failedPrecondition, "kv_cache_dtype \(spec.dtype.rawValue) uses no scale file (only int8_pertensor and int8_pertensor_perhead do)")
        }
        _ = try scaleTable(scales, for: spec)
    }

    /// K and V scales of one epoch, `[numLayers, numKVHeads]` each (equal unless the file has separate K/V scales).
    struct ScaleTables { var key: [Float]; var value: [Float] }

    static func scaleTable(_ scales: KVScales, for spec: KVCacheSpec) throws -> ScaleTables {
        let src = scales.path.map { "scale file '\($0)'" } ?? "KV scales"
        guard scales.numLayers == spec.numLayers else {
            throw KvantError(.invalidArgument, "\(src): \(scales.numLayers) layers; the KV cache has num_layers \(spec.numLayers)")
        }
        let H = spec.numKVHeads
        switch scales.granularity {
        case .perHead:
            guard spec.dtype == .int8PerTensorPerHead else {
                throw KvantError(.invalidArgument, "\(src): per-head scales need kv_cache_dtype int8_pertensor_perhead, not \(spec.dtype.rawValue)")
            }
            guard scales.headsPerLayer == H else {
                throw KvantError(.invalidArgument, "\(src): \(scales.headsPerLayer) scales per layer; the KV cache has num_kv_heads \(H)")
            }
        case .perTensor: break
        }
        var table = ScaleTables(key: [Float](repeating: 1, count: spec.numLayers * H), value: [Float](repeating: 1, count: spec.numLayers * H))
        for l in 0..<spec.numLayers {
            for h in 0..<H {
                for (name, s) in [("K", scales.keyScale(layer: l, head: h)), ("V", scales.valueScale(layer: l, head: h))] {
                    guard s.isFinite, s > 0 else {
                        throw KvantError(.invalidArgument, "\(src): layer \(l) head \(h): \(name) scale \(s); expected a finite positive number")
                    }
                }
                table.key[l * H + h] = scales.keyScale(layer: l, head: h)
                table.value[l * H + h] = scales.valueScale(layer: l, head: h)
            }
        }
        return table
    }

    // MARK: write / read / attend

    /// Stores K and V of one token for one layer (post-RoPE), converting to the cache dtype.
    /// - Parameters: key, value: `[numKVHeads, headDim]` fp32 each; `position < length(of: sequence)`.
    /// int8_pertoken: scale `amax/127` per (token, KV head) for K and V separately (0 for a zero vector).
    /// Static int8: the block's epoch scales; values beyond ±127·s are clipped and counted per layer.
    /// Writing into a block shared with a forked sequence first copies it (copy-on-write); `reserve`
    /// already does that for the shared, partially filled last block it grows into, so this only
    /// allocates when positions inside the shared range are rewritten (use `truncate` first).
    /// - Returns: true; false when that copy-on-write found no free block — then nothing was written
    ///   (never a write into the other sequence's block).
    /// Preconditions (caller errors): known sequence, layer and position in range.
    @discardableResult
    public func write(layer: Int, sequence: SequenceID, position: Int,
                      key: UnsafePointer<Float>, value: UnsafePointer<Float>) -> Bool {
        precondition(layer >= 0 && layer < spec.numLayers, "KVCachePool.write: layer \(layer) out of range")
        let B = spec.blockSize, H = spec.numKVHeads, D = spec.headDim
        let off = position % B
        lock.lock()
        guard var table = tables[sequence] else {
            lock.unlock(); preconditionFailure("KVCachePool.write: unknown sequence \(sequence)")
        }
        guard position >= 0, position < table.length else {
            lock.unlock(); preconditionFailure("KVCachePool.write: position \(position) outside the reserved length \(table.length)")
        }
        let lb = position / B
        if blocks.refCount(table.blockIDs[lb]) > 1 {
            guard blocks.numFree > 0 else { lock.unlock(); return false }
            copyOnWrite(&table, logicalBlock: lb)
            tables[sequence] = table
        }
        let bid = Int(table.blockIDs[lb])
        let slot = layer * numBlocks + bid
        if isStatic && blockEpoch[slot] < 0 {
            blockEpoch[slot] = Int32(currentEpoch)
            let t = epochTables[currentEpoch]!
            for h in 0..<H {
                blockScales[slot * H + h] = t.key[layer * H + h]
                blockVScales[slot * H + h] = t.value[layer * H + h]
            }
        }
        let rec = recorder
        lock.unlock()

        let blk = storage + slot * blockStride
        var clipped: Int32 = 0
        let G = Int32(rotationGroup)
        for h in 0..<H {
            let k = key + h * D, v = value + h * D
            let kDst = blk + (h * B + off) * rowBytes
            let vDst = blk + vOffset + (h * B + off) * rowBytes
            var kAmax: Float = -1, vAmax: Float = -1
            switch dtypeCode {
            case Int32(KV_DT_I8_TOKEN):
                withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * D) { buf in
                    // The scale is amax/127 of the row as stored (rotated when G > 1).
                    let kr = buf.baseAddress!, vr = kr + D
                    kr.update(from: k, count: D); vr.update(from: v, count: D)
                    kv_hadamard(kr, Int32(D), G); kv_hadamard(vr, Int32(D), G)
                    let ks = kv_amax(kr, Int32(D)) / 127, vs = kv_amax(vr, Int32(D)) / 127
                    (blk + ksOffset).assumingMemoryBound(to: Float.self)[h * B + off] = ks
                    (blk + vsOffset).assumingMemoryBound(to: Float.self)[h * B + off] = vs
                    _ = kv_store_row(dtypeCode, kr, kDst, Int32(D), ks)
                    _ = kv_store_row(dtypeCode, vr, vDst, Int32(D), vs)
                }
            case Int32(KV_DT_I8_STATIC):
                clipped += kv_store_row(dtypeCode, k, kDst, Int32(D), blockScales[slot * H + h])
                clipped += kv_store_row(dtypeCode, v, vDst, Int32(D), blockVScales[slot * H + h])
            default:
                _ = kv_store_row(dtypeCode, k, kDst, Int32(D), 1)
                _ = kv_store_row(dtypeCode, v, vDst, Int32(D), 1)
            }
            if let rec {
                if kAmax < 0 { kAmax = kv_amax(k, Int32(D)); vAmax = kv_amax(v, Int32(D)) }
                rec.record(layer: layer, head: h, keyAmax: kAmax, valueAmax: vAmax, key: k, value: v, count: D)
            }
        }
        if clipped > 0 { kv_atomic_add_i64(saturation + layer, Int64(clipped)) }
        return true
    }

    /// Reads back (dequantizes) K and V of one token for one layer into `[numKVHeads, headDim]` fp32
    /// buffers: what attention sees, in the model's basis (a rotated int8_pertoken row is rotated back).
    /// For tests and debugging; attention never uses it.
    public func read(layer: Int, sequence: SequenceID, position: Int,
                     key: UnsafeMutablePointer<Float>, value: UnsafeMutablePointer<Float>) {
        precondition(layer >= 0 && layer < spec.numLayers, "KVCachePool.read: layer \(layer) out of range")
        let B = spec.blockSize, H = spec.numKVHeads, D = spec.headDim
        lock.lock()
        guard let table = tables[sequence], position >= 0, position < table.length else {
            lock.unlock(); preconditionFailure("KVCachePool.read: unknown sequence or position \(position) out of range")
        }
        let slot = layer * numBlocks + Int(table.blockIDs[position / B])
        lock.unlock()
        let off = position % B
        let blk = storage + slot * blockStride
        for h in 0..<H {
            var ks: Float = 1, vs: Float = 1
            if dtypeCode == Int32(KV_DT_I8_TOKEN) {
                ks = (blk + ksOffset).assumingMemoryBound(to: Float.self)[h * B + off]
                vs = (blk + vsOffset).assumingMemoryBound(to: Float.self)[h * B + off]
            } else if isStatic {
                ks = blockScales[slot * H + h]; vs = blockVScales[slot * H + h]
            }
            kv_load_row(dtypeCode, blk + (h * B + off) * rowBytes, key + h * D, Int32(D), ks)
            kv_load_row(dtypeCode, blk + vOffset + (h * B + off) * rowBytes, value + h * D, Int32(D), vs)
            kv_hadamard(key + h * D, Int32(D), Int32(rotationGroup))     // back to the model's basis
            kv_hadamard(value + h * D, Int32(D), Int32(rotationGroup))
        }
    }

    /// The epoch whose scales a (layer, position) of a sequence was written with (static modes;
    /// -1 when not yet written or not a static mode).
    public func epoch(layer: Int, sequence: SequenceID, position: Int) -> Int {
        lock.lock(); defer { lock.unlock() }
        guard isStatic, layer >= 0, layer < spec.numLayers, let table = tables[sequence],
              position >= 0, position < table.length else { return -1 }
        return Int(blockEpoch[layer * numBlocks + Int(table.blockIDs[position / spec.blockSize])])
    }

    /// Causal attention of one query position over keys `(position - window, position]` (all of
    /// `0...position` when `window` is nil) of `sequence` in `layer`.
    /// - Parameters:
    ///   - query: `[numHeads, headDim]` fp32; GQA: head h uses KV head `h / (numHeads / numKVHeads)`.
    ///   - scale: multiplies q·k before the softmax (usually `1/sqrt(headDim)`).
    ///   - output: `[numHeads, headDim]` fp32, `Σ softmax(q·k·scale) · v`.
    ///   - threads: for decode (one position at a time), split the keys over up to this many
    ///     threads (`DispatchQueue.concurrentPerform`, at least 256 keys each) and merge the partial
    ///     softmaxes (split-K, "flash-decoding"). Leave at 1 when the caller already runs positions in
    ///     parallel (prefill).
    ///   - numerics: `.fast` (default) or `.llamaCpp` (fp16 cache: llama.cpp's rounding, see `KVAttentionNumerics`).
    /// int8 blocks are read directly with the scale folded in; fp16/bf16 widened in registers. With a
    /// Hadamard-rotated cache (`rotationGroup > 1`) the query is rotated into the cache's basis first and
    /// the output rotated back (the transform is orthogonal and its own inverse).
    /// Thread-safe for concurrent calls. Preconditions: known sequence, `position < length`,
    /// `numHeads` a multiple of numKVHeads, `window >= 1`.
    public func attend(layer: Int, sequence: SequenceID, position: Int, query: UnsafePointer<Float>,
                       numHeads: Int, window: Int?, scale: Float, output: UnsafeMutablePointer<Float>,
                       threads: Int = 1, numerics: KVAttentionNumerics = .fast) {
        precondition(layer >= 0 && layer < spec.numLayers, "KVCachePool.attend: layer \(layer) out of range")
        precondition(numHeads > 0 && numHeads % spec.numKVHeads == 0,
                     "KVCachePool.attend: num_heads \(numHeads) is not a multiple of num_kv_heads \(spec.numKVHeads)")
        lock.lock()
        let table = tables[sequence]
        lock.unlock()
        guard let table, position >= 0, position < table.length else {
            preconditionFailure("KVCachePool.attend: unknown sequence \(sequence) or position \(position) out of range")
        }
        var first = 0
        if let window {
            precondition(window >= 1, "KVCachePool.attend: window \(window) < 1")
            first = max(0, position - window + 1)
        }
        let keys = position - first + 1
        let parts = threads > 1 && numerics == .fast ? min(threads, keys / 256, 64) : 1
        let D = spec.headDim, G = Int32(rotationGroup)
        if G > 1 {
            withUnsafeTemporaryAllocation(of: Float.self, capacity: numHeads * D) { q in
                let qr = q.baseAddress!
                qr.update(from: query, count: numHeads * D)
                kv_hadamard(qr, Int32(numHeads * D), G)
                attendInCacheBasis(table: table, layer: layer, first: first, position: position, keys: keys, parts: parts,
                                   query: qr, numHeads: numHeads, scale: scale, output: output, numerics: numerics)
            }
            kv_hadamard(output, Int32(numHeads * D), G)
        } else {
            attendInCacheBasis(table: table, layer: layer, first: first, position: position, keys: keys, parts: parts,
                               query: query, numHeads: numHeads, scale: scale, output: output, numerics: numerics)
        }
    }

    private func attendInCacheBasis(table: BlockTable, layer: Int, first: Int, position: Int, keys: Int, parts: Int,
                                    query: UnsafePointer<Float>, numHeads: Int, scale: Float,
                                    output: UnsafeMutablePointer<Float>, numerics: KVAttentionNumerics) {
        table.blockIDs.withUnsafeBufferPointer { ids in
            var view = kv_layer_view(
                base: UnsafePointer(storage.assumingMemoryBound(to: UInt8.self) + layer * numBlocks * blockStride),
                block_stride: blockStride, v_offset: vOffset, ks_offset: ksOffset, vs_offset: vsOffset,
                static_scales: UnsafePointer(blockScales + (isStatic ? layer * numBlocks * spec.numKVHeads : 0)),
                static_v_scales: UnsafePointer(blockVScales + (isStatic ? layer * numBlocks * spec.numKVHeads : 0)),
                block_ids: ids.baseAddress, dtype: dtypeCode, num_kv_heads: Int32(spec.numKVHeads),
                head_dim: Int32(spec.headDim), block_size: Int32(spec.blockSize),
                use_avx512: useAVX512 ? 1 : 0,
                numerics: numerics == .llamaCpp ? Int32(KV_NUMERICS_LLAMACPP) : Int32(KV_NUMERICS_DEFAULT))
            if parts <= 1 {
                kv_attend(&view, Int32(first), Int32(position), query, Int32(numHeads), scale, output)
                return
            }
            // Part boundaries on block starts where possible, every part non-empty.
            let B = spec.blockSize
            var bounds = [first]
            for p in 1..<parts {
                let b = first + p * keys / parts
                bounds.append(max(b / B * B, bounds[p - 1] + 1))
            }
            bounds.append(position + 1)
            let hd = numHeads * spec.headDim
            let frozen = view
            withUnsafeTemporaryAllocation(of: Float.self, capacity: parts * (hd + 2 * numHeads)) { buf in
                let acc = buf.baseAddress!, m = acc + parts * hd, l = m + parts * numHeads
                DispatchQueue.concurrentPerform(iterations: parts) { p in
                    var v = frozen
                    kv_attend_partial(&v, Int32(bounds[p]), Int32(bounds[p + 1] - 1), query, Int32(numHeads), scale,
                                      acc + p * hd, m + p * numHeads, l + p * numHeads)
                }
                kv_attend_merge(Int32(parts), Int32(numHeads), Int32(spec.headDim), acc, m, l, output)
            }
        }
    }

    // MARK: stats

    /// The warning of a static int8 pool that runs without a scale file (`stats().scaleWarnings`).
    public static let noScaleFileWarning =
        "no scale file: every scale is the default 1.0 (K/V rounded to integers and clipped at ±127; expect a large accuracy loss); calibrate with 'kvantctl calibrate' and load the file with quantization_param_path"

    /// A snapshot of the pool's occupancy, sizes and scales. A static pool without installed scales
    /// reports `noScaleFileWarning` in `scaleWarnings`.
    public func stats() -> KVCacheStats {
        lock.lock(); defer { lock.unlock() }
        let used = blocks.numUsed
        var tokens = 0
        for t in tables.values { tokens += t.length }
        let source: String
        var path: String? = nil, sha: String? = nil, epoch: Int? = nil
        var layerScales: [[Float]]? = nil
        var keyScales: [[Float]]? = nil, valueScales: [[Float]]? = nil
        var saturations: [Int64]? = nil
        var liveEpochs: [Int] = []
        var warnings: [String] = []
        if isStatic {
            epoch = currentEpoch
            if let s = currentScales {
                source = s.path ?? "in-memory"
                path = s.path; sha = s.sha256
                warnings = s.warnings
            } else {
                source = "default 1.0"
                warnings = [KVCachePool.noScaleFileWarning]
            }
            let H = spec.numKVHeads
            let t = epochTables[currentEpoch]!
            func rows(_ v: [Float]) -> [[Float]] {
                (0..<spec.numLayers).map { l in spec.dtype == .int8PerTensor ? [v[l * H]] : Array(v[(l * H)..<(l * H + H)]) }
            }
            if let s = currentScales, s.hasSeparateKV {
                layerScales = (0..<spec.numLayers).map { l in
                    spec.dtype == .int8PerTensor ? [s.layerScales(l).max()!] : (0..<H).map { s.scale(layer: l, head: $0) }
                }
                keyScales = rows(t.key); valueScales = rows(t.value)
            } else {
                layerScales = rows(t.key)
            }
            saturations = (0..<spec.numLayers).map { saturation[$0] }
            collectEpochs()
            liveEpochs = epochTables.keys.sorted()
        } else {
            source = spec.dtype == .int8PerToken ? "dynamic" : "none"
        }
        return KVCacheStats(
            kvCacheDType: spec.dtype.rawValue, blockSize: spec.blockSize, numBlocks: numBlocks,
            usedBlocks: used, freeBlocks: blocks.numFree, tokensCached: tokens,
            capacityTokens: numBlocks * spec.blockSize, bytesPerToken: spec.bytesPerToken,
            bytesPerTokenRatioToFP16: Double(spec.bytesPerToken) / Double(spec.fp16BytesPerToken),
            usage: numBlocks == 0 ? 0 : Double(used) / Double(numBlocks), sequences: tables.count,
            scaleSource: source, scalePath: path, scaleSHA256: sha, scaleEpoch: epoch, liveEpochs: liveEpochs,
            layerScales: layerScales, layerKeyScales: keyScales, layerValueScales: valueScales,
            saturationCounts: saturations, scaleWarnings: warnings,
            attentionKernel: usesAVX512 ? "avx512" : "avx2",
            rotation: rotationGroup > 1 ? "hadamard-\(rotationGroup)" : nil)
    }
}

private func aligned_alloc_checked(_ bytes: Int) -> UnsafeMutableRawPointer? {
    var p: UnsafeMutableRawPointer? = nil
    guard posix_memalign(&p, 64, max(bytes, 64)) == 0 else { return nil }
    return p
}

private func free_aligned(_ p: UnsafeMutableRawPointer) { Foundation.free(p) }

/// How `KVCachePool.attend` rounds.
public enum KVAttentionNumerics: Sendable, Equatable {
    /// Online softmax in fp32 over the cache dtype (the default; FlashAttention-style, one pass).
    case fast
    /// For an fp16 cache on CPUs with AVX-512: llama.cpp's CPU attention with flash attention off, operation for
    /// operation (probabilities rounded to f16, ggml's exp and summation orders), so that logits can be compared with
    /// llama.cpp bit for bit. The query must already be scaled and rounded to f16 (pass scale 1). Other dtypes and
    /// CPUs use `.fast`; one thread per query position (no split-K).
    case llamaCpp

    /// True when `.llamaCpp` is honoured on this CPU.
    public static var llamaCppAvailable: Bool { kv_llamacpp_numerics_available() != 0 }
}
