import CKernels
import Foundation
import KvantCore

// MEASUREMENT TOOL, NOT A SERVED DTYPE. Simulates candidate 4-bit KV formats on an fp32 pool: each K/V row is
// quantized to the candidate format at append time and the dequantized values are stored in the fp32 cache, so
// attention (unchanged kernels) sees exactly what a kernel reading the real format would see. Used by
// `kvant-eval perplexity --simulate-k/--simulate-v/--simulate-residual` to choose the int4 design (issue 16,
// docs/kv-cache.md "4-bit KV: measurements"). The daemon never sets it.

/// One tensor's (K's or V's) simulated row format.
public struct KVRowFormat: Sendable, Equatable, CustomStringConvertible {
    /// 2...8 bits per value (4 = the candidates; 5, 6 to find how many bits K needs); 0 = unquantized (fp32).
    public var bits: Int
    /// Values per scale group; 0 = the whole head row (head_dim values, one scale per (token, KV head)).
    public var group: Int
    /// Asymmetric groups: scale and minimum (zero point) per group, levels `min + q·s`, q in 0...2^bits−1
    /// (llama.cpp q4_1). Symmetric below 8 bits: q4_0's rule — `s = m / −2^(bits−1)` with m the group's value
    /// of largest magnitude, q in −2^(bits−1)...2^(bits−1)−1 (−8...7 for 4 bits; the extreme value exact); for
    /// 8 bits `s = amax/127`, q in −127...127 (as int8_pertoken).
    public var asymmetric: Bool
    /// Rotate the row by the normalized Hadamard transform (groups of `kv_hadamard_group(head_dim)`) before
    /// quantizing, and back after dequantizing.
    public var rotate: Bool
    /// Store group scales (and minimums) as fp16 (as q4_0/q4_1 do); false keeps fp32 (row scales).
    public var fp16Scales: Bool

    public init(bits: Int, group: Int = 0, asymmetric: Bool = false, rotate: Bool = true, fp16Scales: Bool = true) {
        self.bits = bits; self.group = group; self.asymmetric = asymmetric; self.rotate = rotate; self.fp16Scales = fp16Scales
    }

    /// Parses `fp32`, or `int<bits>[:g<group>|:row][:sym|:asym][:rot|:norot][:f32s]`, e.g. `int4:g32:asym:rot`.
    public init(parsing text: String) throws {
        let parts = text.lowercased().split(separator: ":").map(String.init)
        guard let head = parts.first else { throw KvantError(.invalidArgument, "empty KV row format") }
        if head == "fp32" && parts.count == 1 { self.init(bits: 0); return }
        guard head.hasPrefix("int"), let b = Int(head.dropFirst(3)), (2...8).contains(b) else {
            throw KvantError(.invalidArgument, "KV row format '\(text)': expected fp32 or int<2...8>[...]")
        }
        self.init(bits: b, group: 0, asymmetric: false, rotate: true, fp16Scales: b < 8)
        for p in parts.dropFirst() {
            switch p {
            case "sym": asymmetric = false
            case "asym": asymmetric = true
            case "rot": rotate = true
            case "norot": rotate = false
            case "row": group = 0
            case "f32s": fp16Scales = false
            case "f16s": fp16Scales = true
            case let g where g.hasPrefix("g"):
                guard let n = Int(g.dropFirst()), n > 0 else { throw KvantError(.invalidArgument, "KV row format '\(text)': bad group '\(g)'") }
                group = n
            default: throw KvantError(.invalidArgument, "KV row format '\(text)': unknown part '\(p)'")
            }
        }
    }

    public var description: String {
        if bits == 0 { return "fp32" }
        return "int\(bits):" + (group == 0 ? "row" : "g\(group)") + (asymmetric ? ":asym" : ":sym")
            + (rotate ? ":rot" : ":norot") + (fp16Scales ? ":f16s" : ":f32s")
    }

    /// Stored bytes of one row of `headDim` values, scales (and minimums) included.
    public func rowBytes(headDim: Int) -> Double {
        if bits == 0 { return Double(4 * headDim) }
        let g = group == 0 ? headDim : group
        let groups = (headDim + g - 1) / g
        let perScale = fp16Scales ? 2 : 4
        return Double(headDim * bits) / 8 + Double(groups * perScale * (asymmetric ? 2 : 1))
    }

    /// Quantizes and dequantizes `n` values in place (`g` = rotation group).
    func apply(_ x: UnsafeMutablePointer<Float>, n: Int, rotationGroup: Int32) {
        guard bits > 0 else { return }
        if rotate { kv_hadamard(x, Int32(n), rotationGroup) }
        let g = group == 0 ? n : min(group, n)
        var base = 0
        while base < n {
            let m = min(g, n - base)
            quantizeGroup(x + base, m)
            base += m
        }
        if rotate { kv_hadamard(x, Int32(n), rotationGroup) }
    }

    private func roundScale(_ s: Float) -> Float { fp16Scales ? Float(Float16(s)) : s }

    private func quantizeGroup(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
        if asymmetric {
            var lo = Float.infinity, hi = -Float.infinity
            for i in 0..<n { lo = min(lo, x[i]); hi = max(hi, x[i]) }
            let levels = Float((1 << bits) - 1)
            let s = roundScale((hi - lo) / levels), mn = roundScale(lo)
            guard s > 0 else { for i in 0..<n { x[i] = mn }; return }
            for i in 0..<n {
                let q = min(max(((x[i] - mn) / s).rounded(.toNearestOrEven), 0), levels)
                x[i] = q * s + mn
            }
            return
        }
        if bits < 8 {
            // q4_0's rule (for 4 bits): the value of largest magnitude maps to −2^(bits−1) exactly.
            var m: Float = 0
            for i in 0..<n where abs(x[i]) > abs(m) { m = x[i] }
            let half = Float(1 << (bits - 1))
            let s = roundScale(m / -half)
            guard s != 0 else { for i in 0..<n { x[i] = 0 }; return }
            for i in 0..<n {
                let q = min(max((x[i] / s).rounded(.toNearestOrEven), -half), half - 1)
                x[i] = q * s
            }
            return
        }
        var amax: Float = 0
        for i in 0..<n { amax = max(amax, abs(x[i])) }
        let s = roundScale(amax / Float((1 << (bits - 1)) - 1))
        let lim = Float((1 << (bits - 1)) - 1)
        guard s > 0 else { for i in 0..<n { x[i] = 0 }; return }
        for i in 0..<n { x[i] = min(max((x[i] / s).rounded(.toNearestOrEven), -lim), lim) * s }
    }
}

/// MEASUREMENT TOOL, NOT A SERVED DTYPE: a simulated KV format for an fp32 pool (see the file comment).
public struct KVQuantSimulation: Sendable {
    public var key: KVRowFormat
    public var value: KVRowFormat
    /// KIVI-style residual: the positions of the block holding the query position are read in this format
    /// (e.g. `int8` per row, rotated) instead of `key`/`value`; older blocks (full ones) in `key`/`value`.
    /// nil = no residual.
    public var residual: KVRowFormat?
    /// How many blocks (the query's and the ones before it) the residual covers.
    public var residualBlocks: Int
    /// Layers stored entirely in `residual` (or int8 per row, rotated, without a residual format): mixed precision.
    public var highPrecisionLayers: Set<Int>
    /// Positions below this (attention-sink tokens: BOS and the first few; StreamingLLM, IntactKV) are stored in
    /// the high-precision format in every layer.
    public var sinkTokens: Int

    public init(key: KVRowFormat, value: KVRowFormat, residual: KVRowFormat? = nil, residualBlocks: Int = 1,
                highPrecisionLayers: Set<Int> = [], sinkTokens: Int = 0) {
        self.key = key; self.value = value; self.residual = residual
        self.residualBlocks = max(1, residualBlocks); self.highPrecisionLayers = highPrecisionLayers
        self.sinkTokens = max(0, sinkTokens)
    }

    var highPrecision: KVRowFormat { residual ?? KVRowFormat(bits: 8, group: 0, asymmetric: false, rotate: true, fp16Scales: false) }

    func formats(layer: Int, position: Int) -> (KVRowFormat, KVRowFormat) {
        highPrecisionLayers.contains(layer) || position < sinkTokens ? (highPrecision, highPrecision) : (key, value)
    }

    /// Stored bytes per token per layer per KV head (K + V), scales included, averaged over `numLayers` layers;
    /// the residual blocks are not counted (a few blocks per sequence). fp16 is `4 · headDim`.
    public func bytesPerTokenPerHead(headDim: Int, numLayers: Int) -> Double {
        let low = key.rowBytes(headDim: headDim) + value.rowBytes(headDim: headDim)
        let high = 2 * highPrecision.rowBytes(headDim: headDim)
        let nh = highPrecisionLayers.filter { $0 >= 0 && $0 < numLayers }.count
        return (Double(numLayers - nh) * low + Double(nh) * high) / Double(numLayers)
    }
}

/// Per-layer relative error of the simulated K and V (in the model's basis): `Σ (x̂ − x)² / Σ x²`.
public struct KVSimulationError: Sendable {
    public var keyRelMSE: [Double]
    public var valueRelMSE: [Double]
}

final class KVSimulationState: @unchecked Sendable {
    let sim: KVQuantSimulation
    /// Same layout as the pool's storage: the main (fp32) storage holds the residual format, this one the
    /// `key`/`value` format (only when `sim.residual` is set).
    let shadow: UnsafeMutableRawPointer?
    let lock = NSLock()
    var errK: [Double], sqK: [Double], errV: [Double], sqV: [Double]

    init(sim: KVQuantSimulation, layers: Int, shadowBytes: Int) {
        self.sim = sim
        if sim.residual != nil {
            shadow = aligned_alloc_checked(shadowBytes)
            memset(shadow!, 0, shadowBytes)
        } else { shadow = nil }
        errK = .init(repeating: 0, count: layers); sqK = errK; errV = errK; sqV = errK
    }

    deinit { if let shadow { free_aligned(shadow) } }
}

extension KVCachePool {
    /// MEASUREMENT TOOL, NOT A SERVED DTYPE. Installs a simulated KV format (fp32 pools only, before any write).
    /// - Throws: `KvantError(.invalidArgument)` on a pool that is not fp32.
    public func setQuantSimulation(_ sim: KVQuantSimulation) throws {
        guard spec.dtype == .fp32 else {
            throw KvantError(.invalidArgument, "KV quantization simulation needs kv_cache_dtype fp32 (it stores dequantized values), not \(spec.dtype.rawValue)")
        }
        simulation = KVSimulationState(sim: sim, layers: spec.numLayers, shadowBytes: numBlocks * pageStride)
    }

    /// The per-layer K/V error of the simulated format so far (nil without a simulation).
    public var quantSimulationError: KVSimulationError? {
        guard let s = simulation else { return nil }
        s.lock.lock(); defer { s.lock.unlock() }
        return KVSimulationError(keyRelMSE: zip(s.errK, s.sqK).map { $1 > 0 ? $0 / $1 : 0 },
                                 valueRelMSE: zip(s.errV, s.sqV).map { $1 > 0 ? $0 / $1 : 0 })
    }

    /// Applies the simulation to one token's K and V (`[numKVHeads, headDim]`): writes the low-precision
    /// version into `kLow`/`vLow` and, with a residual, the residual version into `kRes`/`vRes`.
    func simulate(_ s: KVSimulationState, layer: Int, position: Int, key: UnsafePointer<Float>, value: UnsafePointer<Float>,
                  kLow: UnsafeMutablePointer<Float>, vLow: UnsafeMutablePointer<Float>,
                  kRes: UnsafeMutablePointer<Float>, vRes: UnsafeMutablePointer<Float>) {
        let D = spec.headDim, n = spec.numKVHeads * D
        let g = kv_hadamard_group(Int32(D))
        kLow.update(from: key, count: n); vLow.update(from: value, count: n)
        let (kf, vf) = s.sim.formats(layer: layer, position: position)
        for h in 0..<spec.numKVHeads {
            kf.apply(kLow + h * D, n: D, rotationGroup: g)
            vf.apply(vLow + h * D, n: D, rotationGroup: g)
        }
        if let r = s.sim.residual {
            kRes.update(from: key, count: n); vRes.update(from: value, count: n)
            for h in 0..<spec.numKVHeads {
                r.apply(kRes + h * D, n: D, rotationGroup: g)
                r.apply(vRes + h * D, n: D, rotationGroup: g)
            }
        }
        var ek = 0.0, sk = 0.0, ev = 0.0, sv = 0.0
        for i in 0..<n {
            let dk = Double(kLow[i] - key[i]), dv = Double(vLow[i] - value[i])
            ek += dk * dk; ev += dv * dv
            sk += Double(key[i]) * Double(key[i]); sv += Double(value[i]) * Double(value[i])
        }
        s.lock.lock()
        s.errK[layer] += ek; s.sqK[layer] += sk; s.errV[layer] += ev; s.sqV[layer] += sv
        s.lock.unlock()
    }
}

extension KVCachePool {
    /// Residual simulation: keys before the query's block from the shadow storage (`key`/`value` format), the
    /// query's own block from the main storage (residual format); two partial softmaxes merged.
    func attendSimulatedResidual(table: BlockTable, shadow: UnsafeMutableRawPointer, layer: Int, first: Int, position: Int,
                                 query: UnsafePointer<Float>, numHeads: Int, scale: Float, output: UnsafeMutablePointer<Float>) {
        let blockStart = max(0, position / spec.blockSize - (simulation!.sim.residualBlocks - 1)) * spec.blockSize
        let hd = numHeads * spec.headDim
        table.groups[groupOfLayer[layer]].withUnsafeBufferPointer { ids in
            func view(_ base: UnsafeMutableRawPointer) -> kv_layer_view {
                kv_layer_view(
                    base: UnsafePointer(base.assumingMemoryBound(to: UInt8.self) + slotOfLayer[layer] * blockStride),
                    block_stride: pageStride, v_offset: vOffset, ks_offset: ksOffset, vs_offset: vsOffset,
                    static_scales: UnsafePointer(blockScales), static_v_scales: UnsafePointer(blockVScales),
                    block_ids: ids.baseAddress, dtype: dtypeCode, num_kv_heads: Int32(spec.numKVHeads),
                    head_dim: Int32(spec.headDim), block_size: Int32(spec.blockSize),
                    use_avx512: useAVX512 ? 1 : 0, numerics: Int32(KV_NUMERICS_DEFAULT))
            }
            var main = view(storage)
            if first >= blockStart {
                kv_attend(&main, Int32(first), Int32(position), query, Int32(numHeads), scale, output)
                return
            }
            var old = view(shadow)
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * (hd + 2 * numHeads)) { buf in
                let acc = buf.baseAddress!, m = acc + 2 * hd, l = m + 2 * numHeads
                kv_attend_partial(&old, Int32(first), Int32(blockStart - 1), query, Int32(numHeads), scale, acc, m, l)
                kv_attend_partial(&main, Int32(blockStart), Int32(position), query, Int32(numHeads), scale,
                                  acc + hd, m + numHeads, l + numHeads)
                kv_attend_merge(2, Int32(numHeads), Int32(spec.headDim), acc, m, l, output)
            }
        }
    }
}
