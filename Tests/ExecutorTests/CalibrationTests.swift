import KvantCore
import Executor
import Foundation
import KVCache
import KvantTestSupport
import Testing

/// Issue 5: built-in calibration on the real model. The file `KVCalibrator` + `KVScales.encode` write
/// loads back through the rules `reload-scales` uses and follows vLLM's `kv_cache_scales.json` schema.
@Suite(.serialized, .enabled(if: Fixtures.realModelPath != nil, Fixtures.noModel)) struct CalibrationTests {
    static let model: Model? = Fixtures.realModelPath.flatMap { try? Model(path: $0) }

    func calibrate(perHead: Bool, tokens: Int = 64, method: KVClipMethod? = nil, separateKV: Bool = true) throws -> (Model, KVCalibrator.Result) {
        let m = try #require(Self.model)
        var toks = try TextTokenizer.tokenize(text: CalibrationSample.text, model: m)
        toks = Array(toks.prefix(tokens))
        let r = try KVCalibrator.run(session: ForwardSession(model: m, threads: 2), tokens: toks, window: 512,
                                     perHead: perHead, method: method, separateKV: separateKV)
        return (m, r)
    }

    func tempFile(_ name: String, _ data: Data) throws -> String {
        let dir = NSTemporaryDirectory() + "kvant-calib-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/" + name
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    /// vLLM's QuantParamSchema checks, done on the raw JSON (independently of `KVScales.decode`).
    /// `separateKV`: `k_scaling_factor` and `v_scaling_factor` (Kvant's extension) must be there with the same
    /// ranks, layers and form; otherwise they must be absent.
    func checkSchema(_ data: Data, tp: Int, numLayers: Int, perHeadEntries: Int?, separateKV: Bool = true) throws {
        let obj = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(obj["model_type"] as? String == "gemma3")
        let kv = try #require(obj["kv_cache"] as? [String: Any])
        #expect(kv["dtype"] is String)
        #expect(Set(kv.keys) == Set(["dtype", "scaling_factor"] + (separateKV ? ["k_scaling_factor", "v_scaling_factor"] : [])))
        for field in ["scaling_factor", "k_scaling_factor", "v_scaling_factor"] where kv[field] != nil {
        let sf = try #require(kv[field] as? [String: Any])
        #expect(Set(sf.keys) == Set((0..<tp).map(String.init)), "ranks \(sf.keys.sorted())")
        for r in 0..<tp {
            let layers = try #require(sf[String(r)] as? [String: Any])
            #expect(layers.count == numLayers)
            #expect(Set(layers.keys.compactMap { Int($0) }) == Set(0..<numLayers), "rank \(r) layer keys")
            for (_, v) in layers {
                if let n = perHeadEntries {
                    let list = try #require(v as? [Double])
                    #expect(list.count == n && list.allSatisfy { $0 > 0 && $0.isFinite })
                } else {
                    let d = try #require(v as? Double)
                    #expect(d > 0 && d.isFinite)
                }
            }
        }
        }
    }

    @Test("per-tensor file from calibration: vLLM schema for TP 1 and 2, loads back unchanged", arguments: [1, 2])
    func perTensorRoundTrip(tp: Int) throws {
        let (m, r) = try calibrate(perHead: false)
        let c = m.config
        #expect(r.tokens == 64 && r.keyAmax.count == c.numLayers && r.keyAmax.allSatisfy { $0 > 0 })
        #expect(r.scales.granularity == .perTensor && r.scales.numLayers == c.numLayers)
        let data = try r.scales.encode(modelType: c.architecture.rawValue, tpSize: tp, perHead: false)
        try checkSchema(data, tp: tp, numLayers: c.numLayers, perHeadEntries: nil)
        let path = try tempFile("kv_cache_scales.json", data)
        // The rules reload-scales uses (ExecutorModel.loadScales): model_type, layers, KV heads.
        let back = try KVScales.load(path: path, expectedModelType: c.architecture.rawValue, numLayers: c.numLayers,
                                     numKVHeads: c.numKVHeads)
        #expect(back.values == r.scales.values)
        #expect(back.hasSeparateKV && back.keyValues == r.scales.keyValues && back.valueValues == r.scales.valueValues)
        #expect(back.tpSize == tp && back.modelType == "gemma3" && back.warnings.isEmpty)
        // K and V clips are each at most their own amax, and the shared one at most the larger amax.
        for l in 0..<c.numLayers {
            #expect(back.keyLayerScales(l)[0] <= r.keyAmax[l] / 127 && back.valueLayerScales(l)[0] <= r.valueAmax[l] / 127)
        }
        // Without separate K/V scales the file is plain vLLM.
        let (_, shared) = try calibrate(perHead: false, separateKV: false)
        #expect(!shared.scales.hasSeparateKV && shared.scales.values == r.scales.values)
        try checkSchema(try shared.scales.encode(modelType: c.architecture.rawValue, tpSize: tp, perHead: false),
                        tp: tp, numLayers: c.numLayers, perHeadEntries: nil, separateKV: false)
        let again = try KVScales.load(path: path, expectedModelType: c.architecture.rawValue, numLayers: c.numLayers,
                                      numKVHeads: c.numKVHeads, tpSize: tp)
        #expect(again.values == r.scales.values)
        #expect(r.method == KVCalibrator.defaultMethod)
        // Every clip is at most the layer's amax; plain max calibration gives exactly max(amax_K, amax_V) / 127.
        for l in 0..<c.numLayers { #expect(back.layerScales(l)[0] <= max(r.keyAmax[l], r.valueAmax[l]) / 127) }
        let (_, plain) = try calibrate(perHead: false, method: .max)
        for l in 0..<c.numLayers { #expect(plain.scales.layerScales(l) == [max(plain.keyAmax[l], plain.valueAmax[l]) / 127]) }
        #expect(plain.keySaturation.allSatisfy { $0 < 1e-6 } && plain.valueSaturation.allSatisfy { $0 < 1e-6 })
    }

    @Test("per-head file: heads split over TP ranks (one replicated KV head per rank) and merge back", arguments: [1, 2, 4])
    func perHeadSplitMerge(tp: Int) throws {
        let (m, r) = try calibrate(perHead: true)
        let c = m.config
        #expect(r.scales.granularity == .perHead && r.scales.headsPerLayer == c.numKVHeads)
        let data = try r.scales.encode(modelType: c.architecture.rawValue, tpSize: tp, perHead: true)
        try checkSchema(data, tp: tp, numLayers: c.numLayers, perHeadEntries: max(1, c.numKVHeads / tp))
        let path = try tempFile("kv_cache_scales.json", data)
        let back = try KVScales.load(path: path, expectedModelType: c.architecture.rawValue, numLayers: c.numLayers,
                                     numKVHeads: c.numKVHeads)
        #expect(back.granularity == .perHead && back.values == r.scales.values && back.tpSize == tp)
        // The per-head file is accepted by an int8_pertensor_perhead pool; a per-tensor file of the same run by both.
        let spec = c.kvCacheSpec(dtype: .int8PerTensorPerHead)
        let pool = try KVCachePool(spec: spec, byteBudget: 64 * spec.bytesPerToken, scales: back)
        #expect(pool.stats().layerScales?.flatMap { $0 } == r.scales.values)
        #expect(pool.stats().layerKeyScales?.flatMap { $0 } == r.scales.keyValues)
        #expect(pool.stats().layerValueScales?.flatMap { $0 } == r.scales.valueValues)
    }

    // Issue 5's target is +1.5 % over fp32 (all of GPL-3 in BENCHMARKS.md). With vLLM's shared K/V scale only,
    // layers whose K and V ranges differ 30× cannot get a fine step for both (docs/kv-cache.md); separate K/V
    // scales fix that. This guards both on 2 chunks.
    @Test("perplexity on GPL-3 (2 chunks, ctx 512): calibrated int8_pertensor near fp32 with separate K/V scales, within 4 % shared-only, far better than the 1.0 default",
          .enabled(if: Fixtures.isRelease, Fixtures.needsRelease))
    func calibratedPerplexity() async throws {
        let g = try Fixtures.json("gemma3_gpl3_perplexity.json")
        let tokens = (g["tokens"] as! [Int]).map { Int32($0) }
        let (r, fp32, calibrated, unit, shared) = try await offPool { () throws -> (KVCalibrator.Result, Double, Double, Double, Double) in
            let (m, r) = try self.calibrate(perHead: false, tokens: 4096)
            let s = ForwardSession(model: m, threads: 2)
            func ppl(_ dtype: KVCacheDType, _ scales: KVScales?) throws -> Double {
                let spec = m.config.kvCacheSpec(dtype: dtype)
                let pool = try KVCachePool(spec: spec, byteBudget: 600 * spec.bytesPerToken, scales: scales)
                return try PerplexityEvaluator.run(session: s, pool: pool, tokens: tokens, ctx: 512, maxChunks: 2).perplexity
            }
            return (r, try ppl(.fp32, nil), try ppl(.int8PerTensor, r.scales), try ppl(.int8PerTensor, nil),
                    try ppl(.int8PerTensor, r.scales.sharedOnly))
        }
        print("GPL-3 ctx 512, 2 chunks: fp32 \(fp32), int8_pertensor calibrated (\(r.method), \(r.tokens) tokens of the built-in sample) separate K/V \(calibrated), shared only \(shared), default 1.0 \(unit)")
        #expect(calibrated <= fp32 * 1.02)
        #expect(shared <= fp32 * 1.04)
        #expect(calibrated < shared)
        // Measured on these chunks: fp32 13.90, calibrated 14.29 (+2.8 %), default 1.0 16.29 (+17 %).
        #expect(unit > fp32 * 1.1)
        #expect((unit - fp32) > 4 * (calibrated - fp32))
    }
}
