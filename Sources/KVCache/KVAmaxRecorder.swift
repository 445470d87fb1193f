import CKernels
import Foundation
import KvantCore

/// Records, for calibration, the amax (max |x|) of post-RoPE K and of V per (layer, KV head) over
/// every token `KVCachePool.write` stores while the recorder is set on the pool. Lock-free
/// (atomic max on the float bits). With `histogram: true` it also keeps a log-spaced histogram of
/// |x| per (layer, KV head) for K and V (8 bins per octave from 2^-24 to 2^24, under a lock: slower, opt-in),
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
    private var hist: [Int64]                           // [numLayers, numKVHeads, 2, numBins]
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
        hist = histogram ? [Int64](repeating: 0, count: numLayers * numKVHeads * 2 * Self.numBins) : []
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
                let base = ((layer * numKVHeads + head) * 2 + kind) * Self.numBins
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

    /// The |x| below which `percentile` % of the recorded K (`ofKeys`) or V values of a layer fall
    /// (of one KV head, or of all heads when `head` is nil), rounded up to the histogram bin edge
    /// (≤ 9 % above the exact value). Nil without a histogram or without data.
    public func percentileAmax(layer: Int, head: Int? = nil, ofKeys: Bool, percentile: Double) -> Float? {
        guard let h = histogram(layer: layer, head: head, ofKeys: ofKeys) else { return nil }
        let total = h.reduce(0, +)
        guard total > 0 else { return nil }
        let target = Double(total) * min(max(percentile, 0), 100) / 100
        var cum: Int64 = 0
        for b in 0..<Self.numBins {
            cum += h[b]
            if Double(cum) >= target {
                if b == 0 { return 0 }
                return Self.upperEdge(b)
            }
        }
        return .infinity
    }

    /// Upper edge of histogram bin `b` (b ≥ 1).
    private static func upperEdge(_ b: Int) -> Float {
        Float(pow(2.0, Double(minExp) + Double(b) / Double(binsPerOctave)))
    }

    /// The largest recorded |x| of K or V of a layer (one head, or all heads).
    private func amax(layer: Int, head: Int?, ofKeys: Bool) -> Float {
        (head.map { [$0] } ?? Array(0..<numKVHeads)).map { ofKeys ? keyAmax(layer: layer, head: $0) : valueAmax(layer: layer, head: $0) }.max() ?? 0
    }

    /// The |x| histogram `[numBins]` of K or V of a layer (one head, or summed over heads).
    private func histogram(layer: Int, head: Int?, ofKeys: Bool) -> [Int64]? {
        guard keepsHistogram, layer >= 0, layer < numLayers else { return nil }
        if let head, head < 0 || head >= numKVHeads { return nil }
        histLock.lock(); defer { histLock.unlock() }
        var out = [Int64](repeating: 0, count: Self.numBins)
        for h in (head.map { [$0] } ?? Array(0..<numKVHeads)) {
            let base = ((layer * numKVHeads + h) * 2 + (ofKeys ? 0 : 1)) * Self.numBins
            for b in 0..<Self.numBins { out[b] += hist[base + b] }
        }
        return out
    }

    /// Expected squared error per value of int8 quantization with clipping value `clip`
    /// (`s = clip/127`) over a histogram, and the mean square of the values. Each bin's values sit
    /// at the bin's geometric centre; a value inside the range costs `min(x², s²/12)` (rounding:
    /// uniform error, or the value itself when it rounds to 0), a value beyond it `(|x| − clip)²`
    /// (saturation).
    private static func quantizationError(_ h: [Int64], clip: Float) -> (mse: Double, energy: Double) {
        let c = Double(clip), s2 = (c / 127) * (c / 127) / 12
        var err = 0.0, energy = 0.0, n = Double(h[0])
        for b in 1..<(numBins - 1) where h[b] > 0 {
            let x = Double(upperEdge(b)) * pow(2.0, -0.5 / Double(binsPerOctave))
            let k = Double(h[b])
            n += k
            energy += k * x * x
            err += k * (x > c ? (x - c) * (x - c) : min(x * x, s2))
        }
        guard n > 0 else { return (0, 0) }
        return (err / n, energy / n)
    }

    /// Fraction of a histogram's values beyond `clip`, the values of a bin spread evenly over it
    /// (its top edge capped at the recorded `amax`, so nothing saturates at `clip ≥ amax`).
    private static func saturated(_ h: [Int64], amax: Float, clip: Float) -> Double {
        let c = Double(clip), top = Double(amax)
        var sat = 0.0, n = Double(h[0])
        for b in 1..<(numBins - 1) where h[b] > 0 {
            let k = Double(h[b])
            var hi = Double(upperEdge(b))
            let lo = hi * pow(2.0, -1 / Double(binsPerOctave))
            if top < hi { hi = max(top, lo) }
            n += k
            if lo >= c { sat += k } else if hi > c { sat += k * (hi - c) / (hi - lo) }
        }
        return n > 0 ? sat / n : 0
    }

    /// The clipping value that minimizes the expected int8 quantization error of K and V together
    /// under one shared scale (`s = clip/127`, vLLM's schema), from the recorded histograms:
    /// `keyWeight · mse_K / E[K²] + mse_V / E[V²]` (each error relative to its tensor's mean
    /// square, so K and V count by their signal-to-noise ratio; `keyWeight > 1` favours K, whose
    /// error shifts the softmax logits). Searched on a grid of 32 steps per octave from the amax
    /// down to amax / 2^8; never above the amax. Nil without a histogram or data.
    /// - Parameters:
    ///   - head: one KV head, or nil for all heads of the layer (per-tensor scales).
    /// - Returns: the clipping value and the fraction of K and of V values it would saturate.
    public func mseOptimalClip(layer: Int, head: Int? = nil, keyWeight: Double) -> (clip: Float, keySaturation: Double, valueSaturation: Double)? {
        guard let hk = histogram(layer: layer, head: head, ofKeys: true),
              let hv = histogram(layer: layer, head: head, ofKeys: false) else { return nil }
        let ak = amax(layer: layer, head: head, ofKeys: true), av = amax(layer: layer, head: head, ofKeys: false)
        let top = max(ak, av)
        guard top > 0, top.isFinite else { return nil }
        let c = Self.gridOptimum(top: top) { keyWeight * Self.relativeError(hk, clip: $0) + Self.relativeError(hv, clip: $0) }
        return (clip: c, keySaturation: Self.saturated(hk, amax: ak, clip: c), valueSaturation: Self.saturated(hv, amax: av, clip: c))
    }

    /// The clipping value that minimizes the expected int8 quantization error `mse / E[x²]` of K alone
    /// (`ofKeys`) or V alone, for separate K and V scales; same grid and error model as the shared
    /// `mseOptimalClip(layer:head:keyWeight:)`, from the tensor's own amax down. Nil without a histogram or data.
    /// - Returns: the clipping value and the fraction of that tensor's values it would saturate.
    public func mseOptimalClip(layer: Int, head: Int? = nil, ofKeys: Bool) -> (clip: Float, saturation: Double)? {
        guard let h = histogram(layer: layer, head: head, ofKeys: ofKeys) else { return nil }
        let top = amax(layer: layer, head: head, ofKeys: ofKeys)
        guard top > 0, top.isFinite else { return nil }
        let c = Self.gridOptimum(top: top) { Self.relativeError(h, clip: $0) }
        return (clip: c, saturation: Self.saturated(h, amax: top, clip: c))
    }

    /// `mse / E[x²]` of int8 with clipping value `clip` over a histogram (0 for an empty one).
    private static func relativeError(_ h: [Int64], clip: Float) -> Double {
        let e = quantizationError(h, clip: clip)
        return e.energy > 0 ? e.mse / e.energy : 0
    }

    /// The clipping value minimizing `objective` on the search grid of the MSE clips: 32 steps per octave
    /// from `top` down to `top / 2^8` (the first of equal minima).
    private static func gridOptimum(top: Float, objective: (Float) -> Double) -> Float {
        var best: (obj: Double, clip: Float)? = nil
        for i in 0...(8 * 32) {
            let c = top * Float(pow(2.0, -Double(i) / 32))
            let obj = objective(c)
            if best == nil || obj < best!.obj { best = (obj, c) }
        }
        return best!.clip
    }

    /// Root mean square of the recorded K (`ofKeys`) or V values of a layer (one head or all), from
    /// the histogram (bin centres, ≤ 5 % off). With the amax it gives the crest factor amax/rms that
    /// decides how coarse a shared int8 step is for the typical value. Nil without a histogram or data.
    public func rms(layer: Int, head: Int? = nil, ofKeys: Bool) -> Float? {
        guard let h = histogram(layer: layer, head: head, ofKeys: ofKeys), h.reduce(0, +) > 0 else { return nil }
        return Float(Self.quantizationError(h, clip: .greatestFiniteMagnitude).energy.squareRoot())
    }

    /// Fraction of recorded K (`ofKeys`) or V values of a layer (one head or all) beyond `clip`,
    /// at histogram-bin resolution. Nil without a histogram or data.
    public func saturationFraction(layer: Int, head: Int? = nil, ofKeys: Bool, clip: Float) -> Double? {
        guard let h = histogram(layer: layer, head: head, ofKeys: ofKeys), h.reduce(0, +) > 0 else { return nil }
        return Self.saturated(h, amax: amax(layer: layer, head: head, ofKeys: ofKeys), clip: clip)
    }

    /// Static scales from the recorded amax: `max(amax_K, amax_V) / 127` (K and V share the scale),
    /// per layer (max over heads) or per (layer, KV head). With `percentile` (needs `histogram: true`)
    /// each clipping value is capped at the layer's percentile of |K| and |V| (the larger of the two),
    /// trading rare clipped outliers for a finer step on everything else.
    /// - Throws: `KvantError(.failedPrecondition)` naming the layer/head when nothing was recorded,
    ///   or when a percentile is asked of a recorder without a histogram.
    public func scales(perHead: Bool, percentile: Double? = nil) throws -> KVScales {
        try scales(perHead: perHead, method: percentile.map { .percentile($0) } ?? .max)
    }

    /// Static scales `clip / 127` per layer or per (layer, KV head), K and V sharing the scale, with
    /// the clipping value chosen by `method` (see `KVClipMethod`). With `separateKV` the result also
    /// carries separate K and V scales (`KVScales.withSeparateKV`), each chosen by the same method
    /// from that tensor alone: `amax_K / 127` and `amax_V / 127` for `.max`, the tensor's own
    /// percentile cap, or its own MSE-optimal clip (`mseOptimalClip(layer:head:ofKeys:)`).
    /// - Throws: `KvantError(.failedPrecondition)` naming the layer/head when nothing was recorded,
    ///   or when `.percentile`/`.mse` is asked of a recorder without a histogram.
    public func scales(perHead: Bool, method: KVClipMethod, separateKV: Bool) throws -> KVScales {
        let shared = try scales(perHead: perHead, method: method)
        guard separateKV else { return shared }
        var kRows: [[Float]] = [], vRows: [[Float]] = []
        for l in 0..<numLayers {
            func clips(_ keys: Bool) -> [Float] {
                let heads: [Int?] = perHead ? (0..<numKVHeads).map { $0 } : [nil]
                return heads.map { h in
                    let a = amax(layer: l, head: h, ofKeys: keys)
                    var c = a
                    switch method {
                    case .max: break
                    case .percentile(let p): c = min(a, percentileAmax(layer: l, head: h, ofKeys: keys, percentile: p) ?? a)
                    case .mse: c = min(a, mseOptimalClip(layer: l, head: h, ofKeys: keys)?.clip ?? a)
                    }
                    // A tensor that was all zeros on the calibration text: its shared scale is as good as any.
                    return c > 0 && c.isFinite ? c / 127 : shared.scale(layer: l, head: h ?? 0)
                }
            }
            kRows.append(clips(true)); vRows.append(clips(false))
        }
        let k = perHead ? try KVScales(perHead: kRows) : try KVScales(perTensor: kRows.map { $0[0] })
        let v = perHead ? try KVScales(perHead: vRows) : try KVScales(perTensor: vRows.map { $0[0] })
        return try shared.withSeparateKV(key: k, value: v)
    }

    /// Static scales `clip / 127` per layer or per (layer, KV head), K and V sharing the scale (vLLM's
    /// schema), with the clipping value chosen by `method` (see `KVClipMethod`).
    /// - Throws: `KvantError(.failedPrecondition)` naming the layer/head when nothing was recorded,
    ///   or when `.percentile`/`.mse` is asked of a recorder without a histogram.
    public func scales(perHead: Bool, method: KVClipMethod) throws -> KVScales {
        if method != .max && !keepsHistogram {
            throw KvantError(.failedPrecondition, "KV amax calibration: clipping method \(method) needs a recorder made with histogram: true")
        }
        var rows: [[Float]] = []
        for l in 0..<numLayers {
            var row: [Float] = []
            for h in 0..<numKVHeads {
                let a = max(keyAmax(layer: l, head: h), valueAmax(layer: l, head: h))
                guard a > 0, a.isFinite else {
                    throw KvantError(.failedPrecondition, "KV amax calibration: layer \(l) head \(h) has amax \(a); run calibration tokens through every layer first")
                }
                row.append(a)
            }
            switch method {
            case .max:
                break
            case .percentile(let p):
                let cap = max(percentileAmax(layer: l, ofKeys: true, percentile: p) ?? 0,
                              percentileAmax(layer: l, ofKeys: false, percentile: p) ?? 0)
                row = row.map { min($0, cap) }
            case .mse(let w):
                if perHead {
                    row = (0..<numKVHeads).map { h in min(row[h], mseOptimalClip(layer: l, head: h, keyWeight: w)?.clip ?? row[h]) }
                } else {
                    let a = row.max()!
                    row = [min(a, mseOptimalClip(layer: l, keyWeight: w)?.clip ?? a)]
                }
            }
            row = row.map { $0 / 127 }
            rows.append(perHead ? row : [row.max()!])
        }
        return perHead ? try KVScales(perHead: rows) : try KVScales(perTensor: rows.map { $0[0] })
    }
}

/// How calibration turns recorded K/V statistics into a clipping value `c` (scale `c / 127`).
public enum KVClipMethod: Sendable, Equatable, CustomStringConvertible {
    /// `c = max(amax_K, amax_V)`: nothing saturates on the calibration text.
    case max
    /// `c` capped at this percentile (0, 100) of |K| and |V| (the larger of the two).
    case percentile(Double)
    /// `c` minimizing `keyWeight · mse_K / E[K²] + mse_V / E[V²]` over the histograms
    /// (`KVAmaxRecorder.mseOptimalClip`).
    case mse(keyWeight: Double)

    public var description: String {
        switch self {
        case .max: return "max"
        case .percentile(let p): return "percentile \(p)"
        case .mse(let w): return "mse (key weight \(w))"
        }
    }
}
