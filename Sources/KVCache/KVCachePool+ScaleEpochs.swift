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

    // Under the lock: drops tables of epochs no allocated block uses (the current one stays).
    func collectEpochs() {
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
}
