import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

struct AttentionCase: CustomStringConvertible, Sendable {
    var numKVHeads: Int, numHeads: Int, headDim: Int, blockSize: Int, length: Int, window: Int?
    var description: String { "kv\(numKVHeads) q\(numHeads) d\(headDim) b\(blockSize) T\(length) w\(window.map(String.init) ?? "-")" }
}

let attentionCases: [AttentionCase] = [
    .init(numKVHeads: 1, numHeads: 4, headDim: 256, blockSize: 16, length: 41, window: nil),   // Gemma 3 270M shape
    .init(numKVHeads: 2, numHeads: 8, headDim: 64, blockSize: 16, length: 37, window: 10),     // GQA + sliding window
    .init(numKVHeads: 4, numHeads: 4, headDim: 128, blockSize: 8, length: 19, window: nil),    // MHA
    .init(numKVHeads: 2, numHeads: 10, headDim: 72, blockSize: 16, length: 35, window: 17),    // 5 heads/group, d % 16 = 8
    .init(numKVHeads: 1, numHeads: 3, headDim: 20, blockSize: 5, length: 23, window: 7),       // generic head_dim
    .init(numKVHeads: 2, numHeads: 4, headDim: 32, blockSize: 64, length: 150, window: 100),   // blocks longer than a kernel chunk
]

/// Per-dtype bound on |x̂ − x| for one stored element given the row's amax (K or V of one head)
/// and, for static modes, the scale: fp16 keeps 11 significant bits (half an ulp = 2^-11 relative),
/// bf16 8 bits (2^-8), int8 rounds to the nearest multiple of the scale (s/2; per-token s = amax/127).
func elementBound(_ dtype: KVCacheDType, x: Float, amax: Float, staticScale: Float) -> Float {
    switch dtype.resolved {
    case .fp32: return 0
    case .fp16, .auto: return abs(x) * 0x1p-11 + 0x1p-24
    case .bf16: return abs(x) * 0x1p-8 + 1e-38
    case .int8PerToken: return amax / 254 * 1.0001 + 1e-30
    case .int8PerTensor, .int8PerTensorPerHead: return staticScale / 2 * 1.0001
    case .int4PerToken: return .infinity   // rotated 4-bit rows: Int4CacheTests
    }
}

@Suite("KV cache storage and attention")
struct AttentionTests {
    static let dtypes: [KVCacheDType] = [.fp32, .fp16, .auto, .bf16, .int8PerToken, .int8PerTensor, .int8PerTensorPerHead]

    @Test("write/read round trip within the dtype's error bound", arguments: dtypes)
    func roundTrip(dtype: KVCacheDType) throws {
        try roundTrip(dtype: dtype, rotation: true)
        if dtype == .int8PerToken { try roundTrip(dtype: dtype, rotation: false) }
    }

    func roundTrip(dtype: KVCacheDType, rotation: Bool) throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 2, headDim: 24, dtype: dtype, blockSize: 4)
        var rng = SplitMix64(seed: 7)
        let T = 11, n = 2 * 24
        // Rows with very different magnitudes, an all-zero row and exact ties.
        var keys = (0..<T).map { t in rng.floats(n, scale: Float(1 << (t % 5))) }
        var values = (0..<T).map { _ in rng.floats(n, scale: 0.5) }
        keys[3] = [Float](repeating: 0, count: n)
        values[3] = [Float](repeating: 0, count: n)
        // Static scales chosen from the data (per layer, or per layer per head) so nothing clips.
        var scales: KVScales? = nil
        if dtype.usesStaticScales {
            var amaxPerHead: [Float] = [0, 0]
            for h in 0..<2 {
                for t in 0..<T {
                    for i in (h * 24)..<(h * 24 + 24) { amaxPerHead[h] = max(amaxPerHead[h], abs(keys[t][i]), abs(values[t][i])) }
                }
            }
            scales = dtype == .int8PerTensor
                ? try KVScales(perTensor: [amaxPerHead.max()! / 127, 2 * amaxPerHead.max()! / 127])
                : try KVScales(perHead: [amaxPerHead.map { $0 / 127 }, amaxPerHead.map { 2 * $0 / 127 }])
        }
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 16, scales: scales, hadamardRotation: rotation)
        let rotated = dtype == .int8PerToken && rotation
        #expect(pool.rotationGroup == (rotated ? 8 : 1))  // head_dim 24 = 3 · 8
        let seq = pool.createSequence()
        for layer in 0..<2 { writeAll(pool, seq, layer: layer, keys: keys, values: values) }
        for layer in 0..<2 {
            for p in 0..<T {
                let (k, v) = readBack(pool, seq, layer: layer, position: p)
                for h in 0..<2 {
                    let r = (h * 24)..<(h * 24 + 24)
                    let kAmax = keys[p][r].map(abs).max()!, vAmax = values[p][r].map(abs).max()!
                    let s = scales?.scale(layer: layer, head: h) ?? 1
                    if rotated {
                        expectRotatedInt8(stored: Array(k[r]), original: Array(keys[p][r]), group: 8, "K layer \(layer) pos \(p) head \(h)")
                        expectRotatedInt8(stored: Array(v[r]), original: Array(values[p][r]), group: 8, "V layer \(layer) pos \(p) head \(h)")
                        continue
                    }
                    for i in r {
                        #expect(abs(k[i] - keys[p][i]) <= elementBound(dtype, x: keys[p][i], amax: kAmax, staticScale: s),
                                "K layer \(layer) pos \(p) elem \(i): \(k[i]) vs \(keys[p][i])")
                        #expect(abs(v[i] - values[p][i]) <= elementBound(dtype, x: values[p][i], amax: vAmax, staticScale: s),
                                "V layer \(layer) pos \(p) elem \(i): \(v[i]) vs \(values[p][i])")
                    }
                }
                if p == 3 { #expect(k.allSatisfy { $0 == 0 } && v.allSatisfy { $0 == 0 }, "zero row must read back as zeros, not NaN") }
            }
        }
        if dtype.usesStaticScales {
            #expect(pool.stats().saturationCounts == [0, 0])
        }
    }

    /// int8_pertoken with rotation: the fp64 reference rotates the row (y = H x / √g per group), quantizes it
    /// with s = amax(y)/127 and rotates back. Elements may differ from it by one rounding flip spread over a group
    /// (s/√g); the L2 error of the row is at most √D · s/2 (orthogonal transform of per-element errors ≤ s/2).
    func expectRotatedInt8(stored: [Float], original: [Float], group g: Int, _ what: String) {
        let x = original.map(Double.init)
        let y = hadamardReference(x, group: g)
        let amax = y.map(abs).max()!
        let s = amax / 127
        let q = y.map { s > 0 ? ($0 / s).rounded(.toNearestOrEven) * s : 0 }
        let ref = hadamardReference(q, group: g)
        let tol = s / Double(g).squareRoot() * 1.001 + 1e-6 * amax
        for i in 0..<x.count {
            #expect(abs(Double(stored[i]) - ref[i]) <= tol, "\(what) elem \(i): \(stored[i]) vs reference \(ref[i])")
        }
        let l2 = zip(stored, x).map { (Double($0) - $1) * (Double($0) - $1) }.reduce(0, +).squareRoot()
        #expect(l2 <= Double(x.count).squareRoot() * s / 2 * 1.001 + 1e-6 * amax, "\(what): L2 error \(l2)")
    }

    @Test("int8_pertoken Hadamard rotation: an outlier channel no longer sets the step of the whole row")
    func rotationHelpsOutliers() throws {
        // Gemma-like rows: head_dim 256, rms ~1, one channel 40× larger (crest factor ~40 unrotated).
        var rng = SplitMix64(seed: 5)
        let D = 256, T = 32
        let rows = (0..<T).map { t -> [Float] in
            var r = rng.floats(D, scale: 1.7)
            r[(t * 37) % D] = 40
            return r
        }
        var err: [Bool: Double] = [:]
        for rotation in [true, false] {
            let spec = KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: D, dtype: .int8PerToken, blockSize: 16)
            let pool = try KVCachePool(spec: spec, byteBudget: 1 << 20, hadamardRotation: rotation)
            #expect(pool.rotationGroup == (rotation ? 256 : 1))
            #expect(pool.stats().rotation == (rotation ? "hadamard-256" : nil))
            let seq = pool.createSequence()
            writeAll(pool, seq, layer: 0, keys: rows, values: rows)
            var e = 0.0, n = 0.0
            for p in 0..<T {
                let (k, v) = readBack(pool, seq, layer: 0, position: p)
                for i in 0..<D {
                    e += Double(k[i] - rows[p][i]) * Double(k[i] - rows[p][i]) + Double(v[i] - rows[p][i]) * Double(v[i] - rows[p][i])
                    n += 2 * Double(rows[p][i]) * Double(rows[p][i])
                }
            }
            err[rotation] = e / n
        }
        // Unrotated: step 40/127 for values of rms ~1 -> relative MSE ~ (40/127)²/12 / E[x²]. Rotated: the
        // outlier is spread over 256 channels and the step follows the row's rms.
        #expect(err[false]! > 5 * err[true]!, "relative MSE rotated \(err[true]!) vs unrotated \(err[false]!)")
        #expect(err[true]! < 1e-4)
    }

    @Test("int8 static: values beyond ±127·s clip to ±127·s and are counted per layer")
    func staticClipping() throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 8, dtype: .int8PerTensor, blockSize: 4)
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 14, scales: try KVScales(perTensor: [0.01, 0.01]))
        let seq = pool.createSequence()
        let k: [Float] = [2, -2, 1.27, -1.2749, 0.5, 0, 1.2751, -3]  // 1.27 = 127·s exactly, not clipped
        let v: [Float] = [0, 0, 0, 0, 0, 0, 0, 0.004]
        writeAll(pool, seq, layer: 1, keys: [k], values: [v])
        let (rk, rv) = readBack(pool, seq, layer: 1, position: 0)
        let s: Float = 0.01
        #expect(rk == [127 * s, -127 * s, 127 * s, -127 * s, 50 * s, 0, 127 * s, -127 * s])
        #expect(rv[7] == 0)  // 0.4 rounds to 0
        #expect(pool.stats().saturationCounts == [0, 4])  // 2, -2, 1.2751, -3
    }

    @Test("int8 rounding is half-to-even in both the vector loop and the scalar tail")
    func roundHalfEven() throws {
        let spec = KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: 12, dtype: .int8PerTensor, blockSize: 4)
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 14, scales: try KVScales(perTensor: [0.5]))
        let seq = pool.createSequence()
        // x / 0.5 = 2.5, 3.5, -2.5, -0.5, 0.5, 1.5, 126.5, -126.5 (vector lanes) and 2.5, 3.5, -1.5, 127.5 (scalar tail)
        let k: [Float] = [1.25, 1.75, -1.25, -0.25, 0.25, 0.75, 63.25, -63.25, 1.25, 1.75, -0.75, 63.75]
        writeAll(pool, seq, layer: 0, keys: [k], values: [k])
        let (rk, rv) = readBack(pool, seq, layer: 0, position: 0)
        let q: [Float] = [2, 4, -2, 0, 0, 2, 126, -126, 2, 4, -2, 127]
        #expect(rk == q.map { $0 * 0.5 })
        #expect(rv == rk)
        #expect(pool.stats().saturationCounts == [2])  // 127.5 rounds to 128 and is clipped, in K and in V
    }

    @Test("attend matches an fp64 reference on the dequantized cache and on the true values", arguments: dtypes)
    func attendMatchesReference(dtype: KVCacheDType) throws {
        for avx512 in [false, true] {
            try attendMatchesReference(dtype: dtype, allowAVX512: avx512)
        }
    }

    func attendMatchesReference(dtype: KVCacheDType, allowAVX512: Bool) throws {
        for (ci, c) in attentionCases.enumerated() {
            var rng = SplitMix64(seed: UInt64(100 + ci))
            let n = c.numKVHeads * c.headDim
            let keys = (0..<c.length).map { _ in rng.floats(n) }
            let values = (0..<c.length).map { _ in rng.floats(n) }
            var scales: KVScales? = nil
            if dtype == .int8PerTensor { scales = try KVScales(perTensor: [1.0 / 127, 1.0 / 127]) }
            if dtype == .int8PerTensorPerHead {
                scales = try KVScales(perHead: [[Float]](repeating: (0..<c.numKVHeads).map { Float(1 + $0) / 127 }, count: 2))
            }
            let spec = KVCacheSpec(numLayers: 2, numKVHeads: c.numKVHeads, headDim: c.headDim, dtype: dtype, blockSize: c.blockSize)
            let pool = try KVCachePool(spec: spec, byteBudget: 1 << 20, scales: scales, allowAVX512: allowAVX512)
            if !allowAVX512 { #expect(!pool.usesAVX512) }
            _ = pool.createSequence()  // a sequence that owns other blocks, so block ids are not 0, 1, 2…
            let other = pool.createSequence()
            #expect(pool.reserve(other, newLength: 2 * c.blockSize + 1) == .ok)
            let seq = pool.createSequence()
            writeAll(pool, seq, layer: 1, keys: keys, values: values)
            let deq = (0..<c.length).map { readBack(pool, seq, layer: 1, position: $0) }
            let scale = 1 / Float(c.headDim).squareRoot() * 3  // sharper softmax than usual
            for position in [0, c.blockSize - 1, c.blockSize, c.length / 2, c.length - 1] where position < c.length {
                let query = rng.floats(c.numHeads * c.headDim)
                let out = attend(pool, seq, layer: 1, position: position, query: query, numHeads: c.numHeads,
                                 window: c.window, scale: scale)
                let refDeq = referenceAttention(keys: deq.map(\.k), values: deq.map(\.v), query: query, numHeads: c.numHeads,
                                                numKVHeads: c.numKVHeads, headDim: c.headDim, position: position,
                                                window: c.window, scale: scale)
                let refTrue = referenceAttention(keys: keys, values: values, query: query, numHeads: c.numHeads,
                                                 numKVHeads: c.numKVHeads, headDim: c.headDim, position: position,
                                                 window: c.window, scale: scale)
                // Same cache contents: only fp32 summation order and the exp approximation differ.
                let errDeq = zip(out, refDeq).map { abs(Double($0) - $1) }.max()!
                #expect(errDeq < 2e-5, "\(c) \(dtype.rawValue) avx512 \(pool.usesAVX512) pos \(position): kernel vs fp64 on cache contents \(errDeq)")
                // True values: the output is a convex combination of V rows (|v| ≤ 1), so storage error in V
                // moves it by at most the element bound, and the score error |q|₁·δk·scale shifts softmax weights.
                let tol: Double = switch dtype.resolved {
                case .fp32: 2e-5
                case .fp16, .auto: 3e-3
                case .bf16: 2.5e-2
                default: 4e-2
                }
                let errTrue = zip(out, refTrue).map { abs(Double($0) - $1) }.max()!
                #expect(errTrue < tol, "\(c) \(dtype.rawValue) avx512 \(pool.usesAVX512) pos \(position): vs true values \(errTrue)")
            }
        }
    }

    @Test("sliding window excludes keys at or before position − window")
    func slidingWindowExcludes() throws {
        let spec = KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: 16, dtype: .fp32, blockSize: 4)
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 16)
        let seq = pool.createSequence()
        // V row t is all t: the output is the softmax-weighted mean position. Zero keys: uniform weights.
        let keys = [[Float]](repeating: [Float](repeating: 0, count: 16), count: 12)
        let values = (0..<12).map { [Float](repeating: Float($0), count: 16) }
        writeAll(pool, seq, layer: 0, keys: keys, values: values)
        let q = [Float](repeating: 1, count: 16)
        let out = attend(pool, seq, layer: 0, position: 10, query: q, numHeads: 1, window: 3, scale: 1)
        #expect(out.allSatisfy { abs($0 - 9) < 1e-5 })  // mean of 8, 9, 10
        let full = attend(pool, seq, layer: 0, position: 10, query: q, numHeads: 1, window: nil, scale: 1)
        #expect(full.allSatisfy { abs($0 - 5) < 1e-5 })  // mean of 0…10
        let one = attend(pool, seq, layer: 0, position: 7, query: q, numHeads: 1, window: 1, scale: 1)
        #expect(one.allSatisfy { $0 == 7 })
    }

    @Test("large scores: softmax with max subtraction neither overflows nor loses the winner", arguments: [KVCacheDType.fp32, .fp16, .int8PerToken])
    func largeScores(dtype: KVCacheDType) throws {
        let spec = KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: 16, dtype: dtype, blockSize: 4)
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 16)
        let seq = pool.createSequence()
        // Key t = t·e0 / 10: scores t·100 with query 1000·e0; softmax is one-hot on the last key within fp32.
        let keys = (0..<40).map { t in [Float(t) / 10] + [Float](repeating: 0, count: 15) }
        let values = (0..<40).map { t in [Float](repeating: Float(t), count: 16) }
        writeAll(pool, seq, layer: 0, keys: keys, values: values)
        let q = [Float(1000)] + [Float](repeating: 0, count: 15)
        for position in [0, 5, 39] {
            let out = attend(pool, seq, layer: 0, position: position, query: q, numHeads: 1, window: nil, scale: 1)
            #expect(out.allSatisfy { abs($0 - Float(position)) < 1e-3 }, "position \(position): \(out[0])")
        }
        // Negative huge scores: the winner is the first key.
        let neg = attend(pool, seq, layer: 0, position: 39, query: q.map { -$0 }, numHeads: 1, window: nil, scale: 1)
        #expect(neg.allSatisfy { abs($0) < 1e-3 })
    }

    @Test("split-K decode (keys over several threads) matches the single-pass kernel", arguments: [KVCacheDType.fp32, .fp16, .bf16, .int8PerToken, .int8PerTensor])
    func splitKeys(dtype: KVCacheDType) throws {
        for avx512 in [false, true] {
            let spec = KVCacheSpec(numLayers: 1, numKVHeads: 2, headDim: 64, dtype: dtype, blockSize: 16)
            let scales = dtype == .int8PerTensor ? try KVScales(perTensor: [1.0 / 127]) : nil
            let pool = try KVCachePool(spec: spec, byteBudget: 1 << 22, scales: scales, allowAVX512: avx512)
            var rng = SplitMix64(seed: 77)
            let T = 1500
            let keys = (0..<T).map { _ in rng.floats(128) }, values = (0..<T).map { _ in rng.floats(128) }
            let seq = pool.createSequence()
            writeAll(pool, seq, layer: 0, keys: keys, values: values)
            for (position, window) in [(T - 1, nil), (1000, 700), (300, nil), (200, nil)] as [(Int, Int?)] {
                let q = rng.floats(6 * 64)
                let one = attend(pool, seq, layer: 0, position: position, query: q, numHeads: 6, window: window, scale: 0.3)
                for threads in [2, 3, 5] {
                    let split = attend(pool, seq, layer: 0, position: position, query: q, numHeads: 6, window: window, scale: 0.3, threads: threads)
                    let err = zip(one, split).map { abs($0 - $1) }.max()!
                    #expect(err < 2e-6, "\(dtype.rawValue) avx512 \(avx512) position \(position) threads \(threads): \(err)")
                }
            }
        }
    }

    @Test("parallel prefill and parallel sequences give the same results as serial calls")
    func concurrentUse() throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 64, dtype: .int8PerToken, blockSize: 16)
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 22)
        var rng = SplitMix64(seed: 99)
        let T = 48
        let keys = (0..<T).map { _ in rng.floats(64) }, values = (0..<T).map { _ in rng.floats(64) }
        let queries = (0..<T).map { _ in rng.floats(4 * 64) }
        let serial = pool.createSequence()
        writeAll(pool, serial, layer: 0, keys: keys, values: values)
        let expected = (0..<T).map { attend(pool, serial, layer: 0, position: $0, query: queries[$0], numHeads: 4, window: nil, scale: 0.125) }
        let seqs = (0..<4).map { _ in pool.createSequence() }
        for s in seqs { #expect(pool.reserve(s, newLength: T) == .ok) }
        // Each sequence written by positions in parallel (prefill), sequences interleaved across threads.
        DispatchQueue.concurrentPerform(iterations: 4 * T) { i in
            let s = seqs[i % 4], p = i / 4
            let ok = keys[p].withUnsafeBufferPointer { k in values[p].withUnsafeBufferPointer { v in
                pool.write(layer: 0, sequence: s, position: p, key: k.baseAddress!, value: v.baseAddress!)
            } }
            precondition(ok)
        }
        let results = UnsafeMutablePointer<[Float]>.allocate(capacity: 4 * T)
        results.initialize(repeating: [], count: 4 * T)
        defer { results.deinitialize(count: 4 * T); results.deallocate() }
        DispatchQueue.concurrentPerform(iterations: 4 * T) { i in
            results[i] = attend(pool, seqs[i % 4], layer: 0, position: i / 4, query: queries[i / 4], numHeads: 4, window: nil, scale: 0.125)
        }
        for i in 0..<(4 * T) { #expect(results[i] == expected[i / 4], "sequence \(i % 4) position \(i / 4)") }
    }
}
