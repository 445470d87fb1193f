import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

/// Calibration clipping methods of `KVAmaxRecorder` (shared K/V scale, vLLM's schema).
@Suite struct ClipMethodTests {
    /// One layer, one KV head, head_dim 8: `n` tokens of K and V from the given generators.
    func record(n: Int, key: (Int, Int) -> Float, value: (Int, Int) -> Float, histogram: Bool = true) throws -> KVAmaxRecorder {
        let spec = KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: 8, dtype: .fp32, blockSize: 16)
        let pool = try KVCachePool(spec: spec, byteBudget: (n + 32) * spec.bytesPerToken)
        let rec = try KVAmaxRecorder(numLayers: 1, numKVHeads: 1, histogram: histogram)
        pool.amaxRecorder = rec
        let keys = (0..<n).map { t in (0..<8).map { key(t, $0) } }
        let values = (0..<n).map { t in (0..<8).map { value(t, $0) } }
        writeAll(pool, pool.createSequence(), layer: 0, keys: keys, values: values)
        return rec
    }

    /// Exact objective `w · mse_K / E[K²] + mse_V / E[V²]` of int8 with clip `c`, from raw values.
    func exactObjective(_ k: [Float], _ v: [Float], clip c: Float, keyWeight w: Double) -> Double {
        let s = c / 127
        func rel(_ x: [Float]) -> Double {
            var e = 0.0, p = 0.0
            for a in x {
                let q = min(max((a / s).rounded(.toNearestOrEven), -127), 127)
                e += Double(a - q * s) * Double(a - q * s); p += Double(a) * Double(a)
            }
            return p > 0 ? e / p : 0
        }
        return w * rel(k) + rel(v)
    }

    @Test("mse: the histogram optimum is (near) the exact optimum of the raw values; saturation reported", arguments: [1.0, 16.0])
    func mseMatchesExactObjective(keyWeight: Double) throws {
        var rng = SplitMix64(seed: 11)
        // K in ±2; V mostly in ±4 with a heavy tail (1 value in 16 at ±30..60), the shape of a layer whose V range dwarfs K's.
        let k = (0..<512).map { _ in (0..<8).map { _ in rng.unit() * 2 } }
        let v = (0..<512).map { t in (0..<8).map { i in (t * 8 + i) % 16 == 3 ? (30 + abs(rng.unit()) * 30) * (i % 2 == 0 ? 1 : -1) : rng.unit() * 4 } }
        let rec = try record(n: 512, key: { k[$0][$1] }, value: { v[$0][$1] })
        let kf = k.flatMap { $0 }, vf = v.flatMap { $0 }
        let amax = max(rec.keyAmax(layer: 0, head: 0), rec.valueAmax(layer: 0, head: 0))
        let r = try #require(rec.mseOptimalClip(layer: 0, keyWeight: keyWeight))
        let grid = (0...256).map { amax * Float(pow(2.0, -Double($0) / 32)) }
        let best = grid.map { exactObjective(kf, vf, clip: $0, keyWeight: keyWeight) }.min()!
        let got = exactObjective(kf, vf, clip: r.clip, keyWeight: keyWeight)
        let atMax = exactObjective(kf, vf, clip: amax, keyWeight: keyWeight)
        #expect(r.clip < amax, "clip \(r.clip), amax \(amax)")
        #expect(got <= best * 1.15, "objective at the histogram clip \(got), exact optimum \(best)")
        #expect(got < atMax, "objective \(got) vs \(atMax) at the amax")
        let exactSat = Double(vf.filter { abs($0) > r.clip }.count) / Double(vf.count)
        #expect(r.keySaturation == 0 || r.clip < 2)
        #expect(abs(r.valueSaturation - exactSat) < 0.02, "V saturation \(r.valueSaturation) vs exact \(exactSat)")
        #expect(rec.saturationFraction(layer: 0, ofKeys: false, clip: r.clip) == r.valueSaturation)
        #expect(try rec.scales(perHead: false, method: .mse(keyWeight: keyWeight)).layerScales(0)[0] == r.clip / 127)
        #expect(try rec.scales(perHead: false, method: .max).layerScales(0)[0] == amax / 127)
    }

    @Test("mse: without outliers the clip stays at (nearly) the amax")
    func mseKeepsBoundedRange() throws {
        var rng = SplitMix64(seed: 5)
        let kv = (0..<256).map { _ in (0..<16).map { _ in rng.unit() * 3 } }
        let rec = try record(n: 256, key: { kv[$0][$1] }, value: { kv[$0][$1 + 8] })
        let amax = max(rec.keyAmax(layer: 0, head: 0), rec.valueAmax(layer: 0, head: 0))
        let r = try #require(rec.mseOptimalClip(layer: 0, keyWeight: 1))
        #expect(r.clip <= amax && r.clip >= 0.9 * amax, "clip \(r.clip), amax \(amax)")
    }

    @Test("mse: the key weight moves the clip toward K's range when V has a heavy tail")
    func keyWeightFavoursKeys() throws {
        var rng = SplitMix64(seed: 9)
        // K in ±1; V with a heavy tail: 1 value in 16 at ±40..80.
        let k = (0..<512).map { _ in (0..<8).map { _ in rng.unit() } }
        let v = (0..<512).map { t in (0..<8).map { i in (t * 8 + i) % 16 == 3 ? 40 + abs(rng.unit()) * 40 : rng.unit() * 4 } }
        let rec = try record(n: 512, key: { k[$0][$1] }, value: { v[$0][$1] })
        let light = try #require(rec.mseOptimalClip(layer: 0, keyWeight: 1))
        let heavy = try #require(rec.mseOptimalClip(layer: 0, keyWeight: 64))
        #expect(heavy.clip < light.clip, "key weight 64: \(heavy.clip), 1: \(light.clip)")
        #expect(heavy.valueSaturation > light.valueSaturation)
    }

    @Test("mse and percentile need a histogram; nothing recorded is refused")
    func preconditions() throws {
        let plain = try record(n: 4, key: { _, _ in 1 }, value: { _, _ in 1 }, histogram: false)
        #expect(kvantError { _ = try plain.scales(perHead: false, method: .mse(keyWeight: 1)) }?.reason == .failedPrecondition)
        #expect(plain.mseOptimalClip(layer: 0, keyWeight: 1) == nil)
        #expect(try plain.scales(perHead: false, method: .max).layerScales(0) == [1 / 127])
        let empty = try KVAmaxRecorder(numLayers: 1, numKVHeads: 1, histogram: true)
        #expect(kvantError { _ = try empty.scales(perHead: false, method: .mse(keyWeight: 1)) }?.message.contains("layer 0 head 0") == true)
        #expect(empty.mseOptimalClip(layer: 0, keyWeight: 1) == nil)
    }

    @Test("separate K/V scales: each tensor gets its own max, percentile or MSE clip; the shared scale is unchanged")
    func separateKVScales() throws {
        var rng = SplitMix64(seed: 21)
        func gauss() -> Float { (0..<4).map { _ in rng.unit() }.reduce(0, +) * 0.87 }  // ~N(0, 1), |x| < 3.5
        // K ~ N(0, 1); V ~ N(0, 20²) with rare outliers to ±120: the 20–30× K/V range gap of Gemma 3's layers.
        let k = (0..<1024).map { _ in (0..<8).map { _ in gauss() } }
        let v = (0..<1024).map { t in (0..<8).map { i in (t * 8 + i) % 512 == 5 ? 100 + abs(rng.unit()) * 20 : gauss() * 20 } }
        let rec = try record(n: 1024, key: { k[$0][$1] }, value: { v[$0][$1] })
        let ak = rec.keyAmax(layer: 0, head: 0), av = rec.valueAmax(layer: 0, head: 0)
        let maxS = try rec.scales(perHead: false, method: .max, separateKV: true)
        #expect(maxS.hasSeparateKV)
        #expect(maxS.keyScale(layer: 0, head: 0) == ak / 127 && maxS.valueScale(layer: 0, head: 0) == av / 127)
        #expect(maxS.scale(layer: 0, head: 0) == max(ak, av) / 127)
        #expect(maxS.sharedOnly == (try rec.scales(perHead: false, method: .max)))
        #expect(try !rec.scales(perHead: false, method: .max, separateKV: false).hasSeparateKV)

        // MSE per tensor: each clip is the grid optimum of that tensor's own exact relative error.
        let mse = try rec.scales(perHead: true, method: .mse(keyWeight: 4), separateKV: true)
        let kf = k.flatMap { $0 }, vf = v.flatMap { $0 }
        for (name, x, a, got) in [("K", kf, ak, mse.keyScale(layer: 0, head: 0) * 127), ("V", vf, av, mse.valueScale(layer: 0, head: 0) * 127)] {
            func rel(_ c: Float) -> Double { exactObjective(x, [], clip: c, keyWeight: 1) }
            let best = (0...256).map { rel(a * Float(pow(2.0, -Double($0) / 32))) }.min()!
            #expect(got <= a, "\(name) clip \(got) above its amax \(a)")
            let bestClip = (0...256).map { a * Float(pow(2.0, -Double($0) / 32)) }.min { rel($0) < rel($1) }!
            #expect(rel(got) <= best * 1.15 + 1e-9, "\(name): relative error at the chosen clip \(got): \(rel(got)), grid optimum \(best) at \(bestClip), amax \(a)")
        }
        // K gets its own step: over 10× finer than the shared scale would give it.
        #expect(mse.keyScale(layer: 0, head: 0) * 10 < mse.scale(layer: 0, head: 0))
        let single = try #require(rec.mseOptimalClip(layer: 0, ofKeys: false))
        #expect(single.clip == mse.valueScale(layer: 0, head: 0) * 127)
        #expect(abs(single.saturation - Double(vf.filter { abs($0) > single.clip }.count) / Double(vf.count)) < 0.01)

        // Percentile per tensor: V capped at its own 99th percentile, K at its own.
        let p = try rec.scales(perHead: false, method: .percentile(99), separateKV: true)
        #expect(p.valueScale(layer: 0, head: 0) == min(av, rec.percentileAmax(layer: 0, ofKeys: false, percentile: 99)!) / 127)
        #expect(p.keyScale(layer: 0, head: 0) == min(ak, rec.percentileAmax(layer: 0, ofKeys: true, percentile: 99)!) / 127)
        #expect(p.valueScale(layer: 0, head: 0) < av / 127)
    }
}
