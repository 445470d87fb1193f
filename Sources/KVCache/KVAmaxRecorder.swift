import CKernels
import Foundation
import KvantCore

/// Records, for calibration, the amax (max |x|) of post-RoPE K and of V per (layer, KV head) over
/// every token `KVCachePool.write` stores while the recorder is set on the pool. Lock-free
/// (atomic max on the float bits). With `histogram: true` it also keeps a log-spaced histogram of
/// |x| per layer for K and V (8 bins per octave from 2^-24 to 2^24, under a lock: slower, opt-in),
/// from which `percentileAmax` gives a clipping value less sensitive to outliers.
public final class KVAmaxRecorder: @unchecked Sendable {
    public let numLayers: Int
    public let numKVHeads: Int
    public let keepsHistogram: Bool
    private let amax: UnsafeMutablePointer<Float>      // [numLayers, numKVHeads, 2] (K, V)
    private let tokens: UnsafeMutablePointer<Int64>    // [numLayers]
    private static let binsPerOctave = 8
    private static let minExp = -24
    private static let numBins = 48 * 8 + 2             // + underflow and overflow bins
    private var hist: [Int64]                           // [numLayers, 2, numBins]
    private let histLock = NSLock()

    /// - Throws: `KvantError(.invalidArgument)` for non-positive or huge dimensions.
    public init(numLayers: Int, numKVHeads: Int, histogram: Bool = false) throws {
        guard (1...4096).contains(numLayers), (1...1024).contains(numKVHeads) else {
            throw KvantError(.invalidArgument, "KVAmaxRecorder: num_layers \(numLayers) / num_kv_heads \(numKVHeads) out of range")
        }
        self.numLayers = numLayers
        self.numKVHeads = numKVHeads
        keepsHistogram = histogram
        amax = .allocate(capacity: numLayers * numKVHeads * 2)
        amax.initialize(repeating: 0, count: numLayers * numKVHeads * 2)
        tokens = .allocate(capacity: numLayers)
        tokens.initialize(repeating: 0, count: numLayers)
        hist = histogram ? [Int64](repeating: 0, count: numLayers * 2 * Self.numBins) : []
    }

    deinit {
        amax.deallocate()
        tokens.deallocate()
    }

    /// Records one token's K and V amax for (layer, head); `key`/`value` point at `count` values
    /// (used only for the histogram). Out-of-range layer/head are ignored.
    public func record(layer: Int, head: Int, keyAmax: Float, valueAmax: Float,
                       key: UnsafePointer<Float>? = nil, value: UnsafePointer<Float>? = nil, count: Int = 0) {
        guard layer >= 0, layer < numLayers, head >= 0, head < numKVHeads else { return }
        let i = (layer * numKVHeads + head) * 2
        kv_atomic_max_f32(amax + i, keyAmax)
        kv_atomic_max_f32(amax + i + 1, valueAmax)
        if head == 0 { kv_atomic_add_i64(tokens + layer, 1) }
        if keepsHistogram, let key, let value, count > 0 {
            histLock.lock(); defer { histLock.unlock() }
            for (kind, p) in [key, value].enumerated() {
                let base = (layer * 2 + kind) * Self.numBins
                for j in 0..<count { hist[base + Self.bin(abs(p[j]))] += 1 }
            }
        }
    }

    private static func bin(_ a: Float) -> Int {
        guard a > 0, a.isFinite else { return a.isFinite ? 0 : numBins - 1 }
        let b = Int((log2(a) - Float(minExp)) * Float(binsPerOctave)) + 1
        return min(max(b, 0), numBins - 1)
    }

    /// amax of K for (layer, head) so far (0 if nothing recorded or out of range).
    public func keyAmax(layer: Int, head: Int) -> Float {
        guard layer >= 0, layer < numLayers, head >= 0, head < numKVHeads else { return 0 }
        return load((layer * numKVHeads + head) * 2)
    }
    /// amax of V for (layer, head) so far (0 if nothing recorded or out of range).
    public func valueAmax(layer: Int, head: Int) -> Float {
        guard layer >= 0, layer < numLayers, head >= 0, head < numKVHeads else { return 0 }
        return load((layer * numKVHeads + head) * 2 + 1)
    }
    /// Tokens recorded for a layer (0 out of range).
    public func tokenCount(layer: Int) -> Int {
        guard layer >= 0, layer < numLayers else { return 0 }
        return Int(UnsafeMutableRawPointer(tokens + layer).assumingMemoryBound(to: Int64.self).pointee)
    }

    private func load(_ i: Int) -> Float {
        let bits = UnsafeMutableRawPointer(amax + i).assumingMemoryBound(to: UInt32.self).pointee
        return Float(bitPattern: bits)
    }

    /// The |x| below which `percentile` % of the recorded K (`ofKeys`) or V values of a layer fall,
    /// rounded up to the histogram bin edge (≤ 9 % above the exact value). Nil without a histogram
    /// or without data.
    public func percentileAmax(layer: Int, ofKeys: Bool, percentile: Double) -> Float? {
        guard keepsHistogram, layer >= 0, layer < numLayers else { return nil }
        histLock.lock(); defer { histLock.unlock() }
        let base = (layer * 2 + (ofKeys ? 0 : 1)) * Self.numBins
        let total = hist[base..<(base + Self.numBins)].reduce(0, +)
        guard total > 0 else { return nil }
        let target = Double(total) * min(max(percentile, 0), 100) / 100
        var cum: Int64 = 0
        for b in 0..<Self.numBins {
            cum += hist[base + b]
            if Double(cum) >= target {
                if b == 0 { return 0 }
                return Float(pow(2.0, Double(Self.minExp) + Double(b) / Double(Self.binsPerOctave)))
            }
        }
        return .infinity
    }

    /// Static scales from the recorded amax: `max(amax_K, amax_V) / 127` (K and V share the scale),
    /// per layer (max over heads) or per (layer, KV head). With `percentile` (needs `histogram: true`)
    /// each clipping value is capped at the layer's percentile of |K| and |V| (the larger of the two),
    /// trading rare clipped outliers for a finer step on everything else.
    /// - Throws: `KvantError(.failedPrecondition)` naming the layer/head when nothing was recorded,
    ///   or when a percentile is asked of a recorder without a histogram.
    public func scales(perHead: Bool, percentile: Double? = nil) throws -> KVScales {
        if percentile != nil && !keepsHistogram {
            throw KvantError(.failedPrecondition, "KV amax calibration: a percentile needs a recorder made with histogram: true")
        }
        var rows: [[Float]] = []
        for l in 0..<numLayers {
            var row: [Float] = []
            var cap = Float.infinity
            if let percentile {
                cap = max(percentileAmax(layer: l, ofKeys: true, percentile: percentile) ?? 0,
                          percentileAmax(layer: l, ofKeys: false, percentile: percentile) ?? 0)
            }
            for h in 0..<numKVHeads {
                let a = min(max(keyAmax(layer: l, head: h), valueAmax(layer: l, head: h)), cap)
                guard a > 0, a.isFinite else {
                    throw KvantError(.failedPrecondition, "KV amax calibration: layer \(l) head \(h) has amax \(a); run calibration tokens through every layer first")
                }
                row.append(a / 127)
            }
            rows.append(perHead ? row : [row.max()!])
        }
        return perHead ? try KVScales(perHead: rows) : try KVScales(perTensor: rows.map { $0[0] })
    }
}
