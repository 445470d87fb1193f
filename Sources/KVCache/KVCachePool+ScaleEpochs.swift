import CKernels
import Foundation
import KvantCore

// Static int8 scales in epochs: install, check, per-epoch tables; amax recording for calibration.
extension KVCachePool {
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

    // Under the lock: drops tables of epochs no allocated block, no sequence's `BlockTable.epochs` and no
    // `KVScaleEpochHold` uses (the current one stays).
    func collectEpochs() {
        var live: Set<Int32> = [Int32(currentEpoch)]
        for l in 0..<spec.numLayers {
            for b in 0..<numBlocks where blocks.refCount(Int32(b)) > 0 {
                let e = blockEpoch[l * numBlocks + b]
                if e >= 0 { live.insert(e) }
            }
        }
        for table in tables.values { live.formUnion(table.epochs) }
        live.formUnion(heldEpochs.keys)
        for e in epochTables.keys where !live.contains(Int32(e)) { epochTables[e] = nil }
    }

    // MARK: Preemption across reload-scales

    /// `free(seq)` for a preemption: the sequence's blocks are released, but the scale epochs its logical blocks
    /// were written under are kept alive (their tables are not collected) in the returned hold, so that the
    /// sequence that recomputes it (`createSequence(resuming:)`) writes each of those blocks under the same
    /// epoch — its recomputed K/V are then quantized exactly as before the preemption, whatever `reload-scales`
    /// installed meanwhile (its later blocks take the epoch current when they are first written, as an
    /// undisturbed sequence's do).
    /// - Returns: nil for a pool without static scales or an unknown sequence (then this is `free`).
    public func freeKeepingScaleEpochs(_ seq: SequenceID) -> KVScaleEpochHold? {
        let hold: KVScaleEpochHold?
        lock.lock()
        if isStatic, let table = tables[seq] {
            // Blocks written since the last commit too (in order, up to the first block not written yet).
            var epochs = table.epochs
            let n = (table.length + spec.blockSize - 1) / spec.blockSize
            while epochs.count < n, let e = writtenEpoch(table, logicalBlock: epochs.count) { epochs.append(e) }
            for e in epochs { heldEpochs[e, default: 0] += 1 }
            hold = KVScaleEpochHold(pool: self, epochs: epochs)
        } else {
            hold = nil
        }
        lock.unlock()
        free(seq)
        return hold
    }

    /// A new, empty sequence that resumes a preempted one: logical block `j < hold.epochs.count` is written
    /// under `hold.epochs[j]` (while that epoch is alive: the new table keeps it so), later blocks under the
    /// epoch current when first written. Its prefix-cache lookup (`attachCachedPrefix`) looks each block up
    /// under the epoch it would be written under, so it finds the blocks the preemption freed, if still cached.
    /// `hold` nil: `createSequence()`. The hold may be dropped afterwards.
    public func createSequence(resuming hold: KVScaleEpochHold?) -> SequenceID {
        let seq = createSequence()
        guard let hold, isStatic, !hold.epochs.isEmpty else { return seq }
        lock.lock(); defer { lock.unlock() }
        tables[seq]?.epochs = hold.epochs
        return seq
    }

    /// Releases one hold's references (its deinit).
    func releaseHold(_ epochs: [Int32]) {
        lock.lock(); defer { lock.unlock() }
        for e in epochs {
            let n = (heldEpochs[e] ?? 1) - 1
            heldEpochs[e] = n > 0 ? n : nil
        }
    }

    // Under the lock: records the epochs of `table`'s logical blocks up to its committed length not recorded yet
    // (static pools; before a sliding window releases any of them), from the first layer of a group holding it.
    func recordEpochs(_ table: inout BlockTable) {
        guard isStatic else { return }
        let n = (table.computed + spec.blockSize - 1) / spec.blockSize
        while table.epochs.count < n {
            table.epochs.append(writtenEpoch(table, logicalBlock: table.epochs.count) ?? Int32(currentEpoch))
        }
    }

    // Under the lock: the epoch logical block `j` of `table` was written under (the first layer of a group that
    // holds it); nil when no group holds it or it is not written yet.
    func writtenEpoch(_ table: BlockTable, logicalBlock j: Int) -> Int32? {
        for (gi, group) in groups.enumerated() where j < table.groups[gi].count && table.groups[gi][j] != BlockTable.nullBlock {
            let e = blockEpoch[group.layers[0] * numBlocks + Int(table.groups[gi][j])]
            if e >= 0 { return e }
        }
        return nil
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
}

/// The scale epochs of a preempted sequence's logical blocks (static int8 pools), kept alive until the sequence
/// that resumes it was created (`KVCachePool.createSequence(resuming:)`) or the request ended; released when
/// dropped (`KVCachePool.freeKeepingScaleEpochs`).
public final class KVScaleEpochHold: @unchecked Sendable {
    /// Epoch of each logical block, in order.
    public let epochs: [Int32]
    private let pool: KVCachePool

    init(pool: KVCachePool, epochs: [Int32]) {
        self.pool = pool
        self.epochs = epochs
    }

    deinit { pool.releaseHold(epochs) }
}
