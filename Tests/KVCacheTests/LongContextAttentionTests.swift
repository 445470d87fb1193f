import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

/// Decode-time attention at a long context for the Gemma 3 270M shape (1 KV head, head_dim 256,
/// 4 query heads): outputs of every dtype against fp32, and split-K against one pass. Timings are
/// printed for information only; speed is measured and compared in `make bench`, never asserted here.
@Suite("Decode speed, Gemma 3 270M shape")
struct DecodeSpeedTests {
    static func isDebug() -> Bool {
        var debug = false
        assert({ debug = true; return true }())
        return debug
    }

    /// Median seconds per `attend` call over the last position of a `context`-token sequence in each
    /// of `layers` layers (rotating layers so the cache does not sit in L1/L2 for one layer only).
    static func measure(_ dtype: KVCacheDType, context: Int, layers: Int, reps: Int, avx512: Bool) throws -> (seconds: Double, output: [Float]) {
        let spec = KVCacheSpec(numLayers: layers, numKVHeads: 1, headDim: 256, dtype: dtype)
        var scales: KVScales? = nil
        if dtype.usesStaticScales { scales = try KVScales(perTensor: [Float](repeating: 2.0 / 127, count: layers)) }
        let pool = try KVCachePool(spec: spec, byteBudget: spec.bytesPerToken * (context + 64) + (1 << 20)
                                       + KVCachePool.residualReserveBytes(spec: spec, maxNumSeqs: 1), scales: scales, allowAVX512: avx512)
        let seq = pool.createSequence()
        #expect(pool.reserve(seq, newLength: context) == .ok)
        var rng = SplitMix64(seed: 42)
        var k = [Float](repeating: 0, count: 256), v = k
        for p in 0..<context {
            for i in 0..<256 { k[i] = rng.unit(); v[i] = rng.unit() }
            for l in 0..<layers {
                pool.write(layer: l, sequence: seq, position: p, key: k, value: v)
            }
        }
        let q = rng.floats(4 * 256)
        var out = [Float](repeating: 0, count: 4 * 256)
        var times: [Double] = []
        for r in 0..<reps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            for l in 0..<layers {
                pool.attend(layer: l, sequence: seq, position: context - 1, query: q, numHeads: 4, window: nil, scale: 1 / 16, output: &out)
            }
            let t1 = DispatchTime.now().uptimeNanoseconds
            if r > 0 { times.append(Double(t1 - t0) / 1e9 / Double(layers)) }
        }
        if dtype == .int8PerTensor || dtype == .fp16 {
            var split: [Double] = []
            var out2 = out
            for _ in 0..<reps {
                let t0 = DispatchTime.now().uptimeNanoseconds
                for l in 0..<layers {
                    pool.attend(layer: l, sequence: seq, position: context - 1, query: q, numHeads: 4, window: nil, scale: 1 / 16, output: &out2, threads: 2)
                }
                split.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 / Double(layers))
            }
            split.sort()
            print("attend \(avx512 ? "avx512" : "avx2") \(dtype.rawValue) ctx \(context) split over 2 threads: \(String(format: "%.1f", split[split.count / 2] * 1e6)) µs/layer")
            #expect(zip(out, out2).allSatisfy { abs($0 - $1) < 1e-5 })
        }
        times.sort()
        return (times[times.count / 2], out)
    }

    @Test("decode attend at 4096 tokens: every dtype agrees with fp32, split over threads equals one pass")
    func decodeInt8VsFP16() throws {
        let debug = Self.isDebug()
        let context = debug ? 1024 : 4096, layers = debug ? 2 : 6, reps = debug ? 3 : 15
        for avx512 in [false, true] {
        var results: [KVCacheDType: (Double, [Float])] = [:]
        for dtype in [KVCacheDType.fp16, .int8PerTensor, .int8PerToken, .int4PerToken, .bf16, .fp32] {
            results[dtype] = try Self.measure(dtype, context: context, layers: layers, reps: reps, avx512: avx512)
            let (s, _) = results[dtype]!
            let bytes = Double(context * KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: 256, dtype: dtype).bytesPerToken)
            print("attend \(avx512 ? "avx512" : "avx2") \(dtype.rawValue) ctx \(context): \(String(format: "%.1f", s * 1e6)) µs/layer, \(String(format: "%.2f", bytes / s / 1e9)) GB/s of cache")
        }
        let ref = results[.fp32]!.1
        for dtype in [KVCacheDType.fp16, .int8PerTensor, .int8PerToken, .int4PerToken, .bf16] {
            let err = zip(results[dtype]!.1, ref).map { abs($0 - $1) }.max()!
            print("attend \(avx512 ? "avx512" : "avx2") \(dtype.rawValue) output vs fp32: \(err)")
            #expect(err < 0.02, "\(dtype.rawValue) output vs fp32: \(err)")
        }
        }
    }
}
