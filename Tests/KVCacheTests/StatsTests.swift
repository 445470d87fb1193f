import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

@Suite("Bytes per token, stats, scale epochs and hot reload")
struct StatsTests {
    @Test("bytes per token: int8 static is half of fp16; per-token adds exactly 8 bytes per KV head per token per layer")
    func bytesPerToken() {
        func spec(_ d: KVCacheDType) -> KVCacheSpec { KVCacheSpec(numLayers: 18, numKVHeads: 1, headDim: 256, dtype: d) }
        #expect(spec(.fp16).bytesPerToken == 18 * 2 * 256 * 2)
        #expect(spec(.auto).bytesPerToken == spec(.fp16).bytesPerToken)
        #expect(spec(.fp32).bytesPerToken == 2 * spec(.fp16).bytesPerToken)
        #expect(spec(.bf16).bytesPerToken == spec(.fp16).bytesPerToken)
        #expect(spec(.int8PerTensor).bytesPerToken * 2 == spec(.fp16).bytesPerToken)
        #expect(spec(.int8PerTensorPerHead).bytesPerToken * 2 == spec(.fp16).bytesPerToken)
        #expect(spec(.int8PerToken).bytesPerToken - spec(.int8PerTensor).bytesPerToken == 8 * 1 * 18)
        let gqa = { (d: KVCacheDType) in KVCacheSpec(numLayers: 3, numKVHeads: 4, headDim: 64, dtype: d) }
        #expect(gqa(.int8PerToken).bytesPerTokenPerLayer - gqa(.int8PerTensor).bytesPerTokenPerLayer == 8 * 4)
        #expect(gqa(.int8PerToken).bytesPerTokenPerLayer == 2 * 4 * 64 + 2 * 4 * 4)
    }

    @Test("capacity in tokens follows the quantized size: int8 fits twice the fp16 tokens in the same budget")
    func capacity() throws {
        let budget = 64 << 20
        let fp16 = try KVCachePool(spec: KVCacheSpec(numLayers: 18, numKVHeads: 1, headDim: 256, dtype: .fp16), byteBudget: budget)
        let int8 = try KVCachePool(spec: KVCacheSpec(numLayers: 18, numKVHeads: 1, headDim: 256, dtype: .int8PerTensor), byteBudget: budget)
        #expect(fp16.capacityTokens == budget / (18 * 2 * 256 * 2) / 16 * 16)
        #expect(int8.capacityTokens == budget / (18 * 2 * 256 * 1) / 16 * 16)
        #expect(int8.capacityTokens >= 2 * fp16.capacityTokens)
    }

    @Test("stats: sizes, usage, sequences, scale source and JSON keys")
    func statsValues() throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 2, headDim: 32, dtype: .int8PerToken, blockSize: 16)
        let perBlock = 2 * 16 * spec.bytesPerTokenPerLayer  // 2 layers · 16 tokens · (2·2·32 + 2·2·4) = 4608
        #expect(perBlock == 4608)
        let pool = try KVCachePool(spec: spec, byteBudget: perBlock * 10)
        let a = pool.createSequence(), b = pool.createSequence()
        #expect(pool.reserve(a, newLength: 20) == .ok)
        #expect(pool.reserve(b, newLength: 16) == .ok)
        let s = pool.stats()
        #expect(s.kvCacheDType == "int8_pertoken")
        #expect(s.numBlocks == 10 && s.usedBlocks == 3 && s.freeBlocks == 7)
        #expect(s.tokensCached == 36 && s.capacityTokens == 160 && s.sequences == 2)
        #expect(s.bytesPerToken == 2 * (2 * 2 * 32 + 2 * 2 * 4))
        #expect(abs(s.bytesPerTokenRatioToFP16 - 288.0 / 512.0) < 1e-12)
        #expect(abs(s.usage - 0.3) < 1e-12)
        #expect(s.scaleSource == "dynamic" && s.scaleEpoch == nil && s.layerScales == nil && s.saturationCounts == nil)
        #expect(s.attentionKernel == (pool.usesAVX512 ? "avx512" : "avx2"))
        let avx2 = try KVCachePool(spec: spec, byteBudget: perBlock * 10, allowAVX512: false)
        #expect(avx2.stats().attentionKernel == "avx2")
        let json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(s)) as! [String: Any]
        for key in ["kv_cache_dtype", "block_size", "num_blocks", "num_blocks_used", "num_blocks_free", "tokens_cached",
                    "capacity_tokens", "bytes_per_token", "bytes_per_token_ratio_to_fp16", "usage", "sequences", "scale_source",
                    "live_epochs", "scale_warnings", "attention_kernel"] {
            #expect(json[key] != nil, "key \(key)")
        }
        #expect(try JSONDecoder().decode(KVCacheStats.self, from: JSONEncoder().encode(s)) == s)
        let fp = try KVCachePool(spec: KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: 8, dtype: .bf16), byteBudget: 1 << 16)
        #expect(fp.stats().scaleSource == "none")
        #expect(fp.stats().bytesPerTokenRatioToFP16 == 1)
    }

    @Test("a static pool without scales reports default 1.0; with a file it reports path, sha256, epoch and layer scales")
    func staticSource() throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 2, headDim: 8, dtype: .int8PerTensorPerHead, blockSize: 4)
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 16)
        var s = pool.stats()
        #expect(s.scaleSource == "default 1.0" && s.scaleEpoch == 0)
        #expect(s.scaleWarnings == [KVCachePool.noScaleFileWarning])
        #expect(s.scaleWarnings.first?.hasPrefix("no scale file: every scale is the default 1.0") == true)
        #expect(s.layerScales == [[1, 1], [1, 1]])
        #expect(s.saturationCounts == [0, 0])
        let dir = tempDir()
        let text = "{\"model_type\": null, \"kv_cache\": {\"dtype\": \"float8_e4m3fn\", \"scaling_factor\": {\"0\": {\"0\": [0.1], \"1\": [0.3]}, \"1\": {\"0\": [0.2], \"1\": [0.4]}}}}"
        let path = writeFile(dir, "kv_cache_scales.json", text)
        let scales = try KVScales.load(path: path, expectedModelType: "gemma3", numLayers: 2, numKVHeads: 2)
        #expect(try pool.installScales(scales) == 1)
        s = pool.stats()
        #expect(s.scaleSource == path && s.scalePath == path)
        #expect(s.scaleSHA256 == SHA256.hex(Array(text.utf8)))
        #expect(s.scaleEpoch == 1)
        #expect(s.layerScales == [[0.1, 0.2], [0.3, 0.4]])
        #expect(s.scaleWarnings.count == 1)
        #expect(s.liveEpochs == [1])  // epoch 0 was never used by a block
    }

    @Test("preemption across a reload: the resumed sequence rewrites its earlier blocks under their old epoch, later ones under the new")
    func preemptionKeepsEpochs() throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 16, dtype: .int8PerTensor, blockSize: 4)
        let a: Float = 0.01, b: Float = 0.002
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 16, scales: try KVScales(perTensor: [a, a]))
        var rng = SplitMix64(seed: 12)
        let keys = (0..<12).map { _ in rng.floats(16, scale: 0.35) }, values = (0..<12).map { _ in rng.floats(16, scale: 0.35) }
        func expected(_ x: [Float], _ s: Float) -> [Float] { x.map { min(max(($0 / s).rounded(.toNearestOrEven), -127), 127) * s } }
        // Positions 0..<6 under epoch 1 (block 1 half full), then preempted: its blocks freed, their epochs held.
        let seq = pool.createSequence()
        for l in 0..<2 { writeAll(pool, seq, layer: l, keys: Array(keys[0..<6]), values: Array(values[0..<6])) }
        var hold = pool.freeKeepingScaleEpochs(seq)
        #expect(hold?.epochs == [1, 1])
        #expect(pool.blockTable(of: seq) == nil && pool.freeBlocks == pool.numBlocks)
        #expect(try pool.installScales(try KVScales(perTensor: [b, b])) == 2)
        #expect(pool.stats().liveEpochs == [1, 2])   // no block uses epoch 1 any more: the hold keeps it
        // The recompute (positions 0..<6 again) and the decode on (6..<12) in the resumed sequence.
        let resumed = pool.createSequence(resuming: hold)
        for l in 0..<2 { writeAll(pool, resumed, layer: l, keys: keys, values: values) }
        for p in 0..<12 {
            let s = p < 8 ? a : b   // blocks 0 and 1 (positions 0..<8) keep epoch 1; block 2 is new: epoch 2
            #expect(pool.epoch(layer: 1, sequence: resumed, position: p) == (p < 8 ? 1 : 2), "position \(p)")
            #expect(readBack(pool, resumed, layer: 0, position: p).k == expected(keys[p], s), "K position \(p)")
        }
        // A fresh sequence (no hold) writes under the current epoch.
        let fresh = pool.createSequence(resuming: nil)
        writeAll(pool, fresh, layer: 0, keys: [keys[0]], values: [values[0]])
        #expect(pool.epoch(layer: 0, sequence: fresh, position: 0) == 2)
        pool.free(fresh)
        // Epoch 1 lives while the resumed sequence's table or a hold names it.
        hold = nil
        #expect(pool.stats().liveEpochs == [1, 2])
        pool.free(resumed)
        #expect(pool.stats().liveEpochs == [2])
        // Without static scales there is nothing to hold.
        let fp16 = try KVCachePool(spec: KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 16, dtype: .fp16, blockSize: 4), byteBudget: 1 << 16)
        let f = fp16.createSequence()
        writeAll(fp16, f, layer: 0, keys: [keys[0]], values: [values[0]])
        #expect(fp16.freeKeepingScaleEpochs(f) == nil && fp16.freeBlocks == fp16.numBlocks)
    }

    @Test("hot reload: first half read back with scales A, second half with B; a broken file leaves B in force")
    func hotReload() throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 16, dtype: .int8PerTensor, blockSize: 4)
        let a: Float = 0.01, b: Float = 0.002
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 16, scales: try KVScales(perTensor: [a, a]))
        var rng = SplitMix64(seed: 11)
        let T = 16
        let keys = (0..<T).map { _ in rng.floats(16, scale: 0.35) }, values = (0..<T).map { _ in rng.floats(16, scale: 0.35) }
        func expected(_ x: [Float], _ s: Float) -> [Float] { x.map { min(max(($0 / s).rounded(.toNearestOrEven), -127), 127) * s } }
        let seq = pool.createSequence()
        #expect(pool.reserve(seq, newLength: 8) == .ok)
        for l in 0..<2 { writeAll(pool, seq, layer: l, keys: Array(keys[0..<8]), values: Array(values[0..<8])) }
        let qBefore = [Float](repeating: 0.2, count: 16)
        let outBefore = attend(pool, seq, layer: 1, position: 7, query: qBefore, numHeads: 1, window: nil, scale: 1)

        #expect(try pool.installScales(try KVScales(perTensor: [b, b])) == 2)
        for l in 0..<2 { writeAll(pool, seq, layer: l, keys: keys, values: values, from: 8) }
        for p in 0..<T {
            let s = p < 8 ? a : b
            let (k, v) = readBack(pool, seq, layer: 1, position: p)
            #expect(k == expected(keys[p], s), "K position \(p) with scale \(s)")
            #expect(v == expected(values[p], s), "V position \(p)")
            #expect(pool.epoch(layer: 1, sequence: seq, position: p) == (p < 8 ? 1 : 2))
        }
        // Attention over the first half is unchanged by the reload.
        #expect(attend(pool, seq, layer: 1, position: 7, query: qBefore, numHeads: 1, window: nil, scale: 1) == outBefore)
        #expect(pool.stats().liveEpochs == [1, 2])
        #expect(pool.stats().saturationCounts!.allSatisfy { $0 > 0 })  // values up to 0.35 > 127·0.002

        // Broken reloads change nothing.
        let dir = tempDir()
        let broken = writeFile(dir, "broken.json", "{\"model_type\": \"gemma3\", \"kv_cache\": {\"dtype\": \"int8\", \"scaling_factor\": {\"0\": {\"0\": 0.5}}}}")
        let e = kvantError { _ = try pool.installScales(try KVScales.load(path: broken, expectedModelType: "gemma3", numLayers: 2, numKVHeads: 1)) }
        #expect(e?.message.contains("layer 1 missing") == true)
        let wrongLayers = kvantError { _ = try pool.installScales(try KVScales(perTensor: [0.5, 0.5, 0.5])) }
        #expect(wrongLayers?.reason == .invalidArgument)
        #expect(wrongLayers?.message.contains("num_layers 2") == true)
        let perHeadOnPerTensor = kvantError { _ = try pool.installScales(try KVScales(perHead: [[0.5], [0.5]])) }
        #expect(perHeadOnPerTensor?.reason == .invalidArgument)
        #expect(pool.scaleEpoch == 2)
        #expect(pool.stats().layerScales == [[b], [b]])

        // A block started under an epoch finishes under it: reload to C, then continue the half-full block.
        #expect(pool.reserve(seq, newLength: 18) == .ok)
        #expect(try pool.installScales(try KVScales(perTensor: [0.05, 0.05])) == 3)
        let more = (0..<2).map { _ in rng.floats(16, scale: 0.35) }
        for l in 0..<2 { writeAll(pool, seq, layer: l, keys: keys + more, values: values + more, from: 16) }
        #expect(pool.epoch(layer: 0, sequence: seq, position: 16) == 3)  // block 4 is new: epoch 3

        // Freeing the sequence lets old epochs go at the next install.
        pool.free(seq)
        #expect(try pool.installScales(try KVScales(perTensor: [0.02, 0.02])) == 4)
        #expect(pool.stats().liveEpochs == [4])
        // Non-static pools refuse scales.
        let fp16 = try KVCachePool(spec: KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 16, dtype: .fp16), byteBudget: 1 << 16)
        #expect(kvantError { _ = try fp16.installScales(try KVScales(perTensor: [1, 1])) }?.reason == .failedPrecondition)
    }

    @Test("separate K/V scales: K and V stored, clipped and attended with their own scales; epochs keep each block's pair")
    func separateKVScales() throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 2, headDim: 16, dtype: .int8PerTensorPerHead, blockSize: 4)
        let dir = tempDir()
        // Shared scaling_factor (what vLLM reads) plus the Kvant extension: K fine, V 10× coarser.
        let text = """
            {"model_type": "gemma3", "kv_cache": {"dtype": "int8",
             "scaling_factor": {"0": {"0": [0.1, 0.1], "1": [0.1, 0.1]}},
             "k_scaling_factor": {"0": {"0": [0.001, 0.002], "1": [0.001, 0.002]}},
             "v_scaling_factor": {"0": {"0": [0.01, 0.02], "1": [0.01, 0.02]}}}}
            """
        let scales = try KVScales.load(path: writeFile(dir, "kv.json", text), expectedModelType: "gemma3", numLayers: 2, numKVHeads: 2)
        #expect(scales.hasSeparateKV)
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 16, scales: scales)
        var rng = SplitMix64(seed: 31)
        let T = 6
        let keys = (0..<T).map { _ in rng.floats(32, scale: 0.2) }, values = (0..<T).map { _ in rng.floats(32, scale: 2) }
        func q(_ x: Float, _ s: Float) -> Float { min(max((x / s).rounded(.toNearestOrEven), -127), 127) * s }
        let seq = pool.createSequence()
        for l in 0..<2 { writeAll(pool, seq, layer: l, keys: keys, values: values) }
        var clipped: Int64 = 0
        for p in 0..<T {
            let (k, v) = readBack(pool, seq, layer: 1, position: p)
            for h in 0..<2 {
                let ks: Float = h == 0 ? 0.001 : 0.002, vs: Float = h == 0 ? 0.01 : 0.02
                for i in (h * 16)..<(h * 16 + 16) {
                    #expect(k[i] == q(keys[p][i], ks), "K pos \(p) elem \(i)")
                    #expect(v[i] == q(values[p][i], vs), "V pos \(p) elem \(i)")
                    if abs(keys[p][i] / ks) > 127.5 { clipped += 1 }
                    if abs(values[p][i] / vs) > 127.5 { clipped += 1 }
                }
            }
        }
        #expect(clipped > 0)  // |K| up to 0.2 > 127 · 0.001, |V| up to 2 > 127 · 0.01
        #expect(pool.stats().saturationCounts?[1] == clipped)
        // Attention reads V with V's scale (fp64 reference on the expected int8 values).
        let query = rng.floats(4 * 16)
        let out = attend(pool, seq, layer: 1, position: T - 1, query: query, numHeads: 4, window: nil, scale: 0.5)
        let dk = keys.map { row in (0..<32).map { q(row[$0], $0 < 16 ? 0.001 : 0.002) } }
        let dv = values.map { row in (0..<32).map { q(row[$0], $0 < 16 ? 0.01 : 0.02) } }
        let ref = referenceAttention(keys: dk, values: dv, query: query, numHeads: 4, numKVHeads: 2, headDim: 16,
                                     position: T - 1, window: nil, scale: 0.5)
        #expect(zip(out, ref).map { abs(Double($0) - $1) }.max()! < 2e-5)
        let st = pool.stats()
        #expect(st.layerScales == [[0.1, 0.1], [0.1, 0.1]])
        #expect(st.layerKeyScales == [[0.001, 0.002], [0.001, 0.002]])
        #expect(st.layerValueScales == [[0.01, 0.02], [0.01, 0.02]])
        let json = String(decoding: try JSONEncoder().encode(st), as: UTF8.self)
        #expect(json.contains("\"layer_k_scales\"") && json.contains("\"layer_v_scales\""))

        // Reload to a shared-only file: old blocks keep their K/V pair, new blocks use the shared scale for both.
        #expect(try pool.installScales(try KVScales(perHead: [[0.05, 0.05], [0.05, 0.05]])) == 2)
        #expect(pool.stats().layerKeyScales == nil)
        #expect(pool.reserve(seq, newLength: T + 4) == .ok)
        let more = (0..<4).map { _ in rng.floats(32, scale: 1.2) }
        for l in 0..<2 { writeAll(pool, seq, layer: l, keys: keys + more, values: values + more, from: T) }
        let (k0, v0) = readBack(pool, seq, layer: 0, position: 0)
        #expect(k0[0] == q(keys[0][0], 0.001) && v0[0] == q(values[0][0], 0.01))
        let (k8, v8) = readBack(pool, seq, layer: 0, position: 8)  // block 2: written under epoch 2
        #expect(k8[3] == q(more[2][3], 0.05) && v8[3] == q(more[2][3], 0.05))
    }

    @Test("checkScales (scales validate) applies the pool's rules without a pool")
    func checkScalesWithoutPool() throws {
        let perHead = try KVScales(perHead: [[0.1, 0.2], [0.3, 0.4]])
        let perTensor = try KVScales(perTensor: [0.1, 0.2])
        let spec = { (d: KVCacheDType) in KVCacheSpec(numLayers: 2, numKVHeads: 2, headDim: 8, dtype: d) }
        try KVCachePool.checkScales(perHead, for: spec(.int8PerTensorPerHead))
        try KVCachePool.checkScales(perTensor, for: spec(.int8PerTensorPerHead))
        try KVCachePool.checkScales(perTensor, for: spec(.int8PerTensor))
        let e = kvantError { try KVCachePool.checkScales(perHead, for: spec(.int8PerTensor)) }
        #expect(e?.reason == .invalidArgument && e?.message.contains("per-head scales need kv_cache_dtype int8_pertensor_perhead") == true)
        #expect(kvantError { try KVCachePool.checkScales(perTensor, for: spec(.fp16)) }?.reason == .failedPrecondition)
        #expect(kvantError { try KVCachePool.checkScales(try KVScales(perTensor: [0.1]), for: spec(.int8PerTensor)) }?.message.contains("num_layers 2") == true)
    }

    @Test("a per-tensor file broadcasts to every head of an int8_pertensor_perhead pool")
    func perTensorOnPerHeadPool() throws {
        let spec = KVCacheSpec(numLayers: 1, numKVHeads: 3, headDim: 8, dtype: .int8PerTensorPerHead, blockSize: 4)
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 16, scales: try KVScales(perTensor: [0.25]))
        #expect(pool.stats().layerScales == [[0.25, 0.25, 0.25]])
    }

    @Test("amax recorder: per-(layer, KV head) amax of K and V; scales = amax/127; percentile from the histogram")
    func amaxRecorder() throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 2, headDim: 8, dtype: .fp16, blockSize: 4)
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 16)
        let rec = try KVAmaxRecorder(numLayers: 2, numKVHeads: 2, histogram: true)
        pool.amaxRecorder = rec
        var keys = [[Float]](repeating: [Float](repeating: 0.1, count: 16), count: 6)
        var values = keys
        keys[2][3] = -3.5      // layer 1, head 0 K
        keys[4][12] = 2.25     // head 1 K
        values[5][9] = -1.5    // head 1 V
        let seq = pool.createSequence()
        writeAll(pool, seq, layer: 1, keys: keys, values: values)
        #expect(rec.keyAmax(layer: 1, head: 0) == 3.5)
        #expect(rec.keyAmax(layer: 1, head: 1) == 2.25)
        #expect(rec.valueAmax(layer: 1, head: 0) == 0.1)
        #expect(rec.valueAmax(layer: 1, head: 1) == 1.5)
        #expect(rec.keyAmax(layer: 0, head: 0) == 0)
        #expect(rec.tokenCount(layer: 1) == 6)
        #expect(rec.keyAmax(layer: 7, head: 0) == 0 && rec.valueAmax(layer: 0, head: -1) == 0 && rec.tokenCount(layer: 2) == 0)
        // 95 of 96 K values of layer 1 are 0.1: the 95th percentile sits at 0.1's bin edge, the max above 2.
        let p95 = rec.percentileAmax(layer: 1, ofKeys: true, percentile: 95)!
        #expect(p95 >= 0.1 && p95 < 0.1 * 1.1)
        #expect(rec.percentileAmax(layer: 1, ofKeys: true, percentile: 100)! >= 3.5)
        // Layer 0 saw nothing: calibration refuses to invent scales.
        #expect(kvantError { _ = try rec.scales(perHead: true) }?.message.contains("layer 0 head 0") == true)
        writeAll(pool, seq, layer: 0, keys: values, values: values)
        let ph = try rec.scales(perHead: true)
        #expect(ph.layerScales(1) == [3.5 / 127, 2.25 / 127])
        #expect(try rec.scales(perHead: false).layerScales(1) == [3.5 / 127])
        // The 95th percentile caps layer 1's outliers at the 0.1 bin edge (both K and V mostly 0.1).
        let clipped = try rec.scales(perHead: true, percentile: 95).layerScales(1)
        #expect(clipped[0] == clipped[1] && clipped[0] >= 0.1 / 127 && clipped[0] < 0.11 / 127)
        let plain = try KVAmaxRecorder(numLayers: 1, numKVHeads: 1)
        #expect(kvantError { _ = try plain.scales(perHead: false, percentile: 99) }?.reason == .failedPrecondition)
        pool.amaxRecorder = nil
        writeAll(pool, seq, layer: 1, keys: keys.map { $0.map { $0 * 100 } }, values: values)
        #expect(rec.keyAmax(layer: 1, head: 0) == 3.5)
    }
}
