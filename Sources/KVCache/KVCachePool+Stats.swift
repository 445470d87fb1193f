import CKernels
import Foundation
import KvantCore

// The pool's figures for `stats`.
extension KVCachePool {
    /// The warning of a static int8 pool that runs without a scale file (`stats().scaleWarnings`).
    public static let noScaleFileWarning =
        "no scale file: every scale is the default 1.0 (K/V rounded to integers and clipped at ±127; expect a large accuracy loss); calibrate with 'kvantctl calibrate' and load the file with quantization_param_path"

    /// Bytes the sliding-window groups hold per long sequence at most: `blocksNeeded` of each such group
    /// beyond its window, times the block size in bytes (0 without sliding windows).
    public var slidingWindowBytesPerSequence: Int {
        let B = spec.blockSize
        return groups.reduce(0) { n, g in n + (g.window.map { (($0 - 1 + B - 1) / B + 1) * pageStride } ?? 0) }
    }

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
            source = spec.dtype.isDynamic ? "dynamic" : "none"
        }
        return KVCacheStats(
            kvCacheDType: spec.dtype.rawValue, blockSize: spec.blockSize, numBlocks: numBlocks,
            usedBlocks: used, freeBlocks: blocks.numFree, tokensCached: tokens,
            capacityTokens: capacityTokens, bytesPerToken: spec.fullAttentionBytesPerToken,
            bytesPerTokenAllLayers: spec.bytesPerToken, slidingWindowBytesPerSequence: slidingWindowBytesPerSequence,
            layersPerBlock: layersPerGroup, layerGroups: groups,
            bytesPerTokenRatioToFP16: Double(spec.bytesPerToken) / Double(spec.fp16BytesPerToken),
            usage: numBlocks == 0 ? 0 : Double(used) / Double(numBlocks), sequences: tables.count,
            scaleSource: source, scalePath: path, scaleSHA256: sha, scaleEpoch: epoch, liveEpochs: liveEpochs,
            layerScales: layerScales, layerKeyScales: keyScales, layerValueScales: valueScales,
            saturationCounts: saturations, scaleWarnings: warnings,
            attentionKernel: usesAVX512 ? "avx512" : "avx2",
            rotation: rotationGroup > 1 ? "hadamard-\(rotationGroup)" : nil,
            prefixCaching: prefixCachingEnabled, prefixCacheQueries: prefixQueries, prefixCacheHits: prefixHits,
            prefixCachedBlocks: numCachedBlocks,
            residualBytesPerSequence: isInt4 ? residualBytesPerSequence : nil,
            blockPoolBytes: numBlocks * pageStride,
            residualRings: isInt4 ? residualRings : nil,
            residualBytes: isInt4 ? residualRings * residualBytesPerSequence : nil,
            residualRingsInUse: isInt4 ? residualRings - freeRingSlots.count : nil,
            residualRingMisses: isInt4 ? residualRingMisses : nil)
    }
}
