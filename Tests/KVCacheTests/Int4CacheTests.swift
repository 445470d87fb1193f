import CKernels
import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

/// `int4_pertoken` in the pool (issue 16): rows stored at append time, Hadamard-rotated, as the int4 formats of
/// kv_q4.c (checked against fp64 in Int4FormatTests); the query's last 4 blocks and token 0 read from the int8
/// residual. References here are fp64: the rotation (`hadamardReference`), the int8 rule (amax/127, round half to
/// even) and the attention (`referenceAttention`) are recomputed; the 4-bit codes come from the format functions.
@Suite("int4_pertoken KV cache")
struct Int4CacheTests {
    struct Shape: CustomStringConvertible, Sendable {
        var numKVHeads: Int, numHeads: Int, headDim: Int, blockSize: Int, length: Int, window: Int?
        var description: String { "kv\(numKVHeads) q\(numHeads) d\(headDim) b\(blockSize) T\(length) w\(window.map(String.init) ?? "-")" }
    }

    static let shapes: [Shape] = [
        .init(numKVHeads: 1, numHeads: 4, headDim: 256, blockSize: 16, length: 150, window: nil),  // Gemma 3 270M
        .init(numKVHeads: 2, numHeads: 8, headDim: 64, blockSize: 16, length: 120, window: 40),    // GQA + window
        .init(numKVHeads: 3, numHeads: 9, headDim: 64, blockSize: 16, length: 90, window: nil),    // SmolLM2-135M
        .init(numKVHeads: 4, numHeads: 4, headDim: 128, blockSize: 8, length: 70, window: nil),    // MHA, small blocks
        .init(numKVHeads: 2, numHeads: 4, headDim: 64, blockSize: 64, length: 330, window: 100),   // blocks > a kernel chunk
    ]

    /// fp64 reference of one head's row as the int4 block holds it: rotate (fp64), round to fp32, store and load with
    /// the format functions, rotate back (fp64).
    static func int4Reference(_ x: ArraySlice<Float>, key: Bool) -> [Double] {
        let D = x.count, g = Int(kv_hadamard_group(Int32(D)))
        let y = hadamardReference(x.map(Double.init), group: g).map(Float.init)
        var packed = [UInt8](repeating: 0, count: D)
        var back = [Float](repeating: 0, count: D)
        if key { kv_store_row_q4k(y, &packed, Int32(D)); kv_load_row_q4k(packed, &back, Int32(D)) }
        else { kv_store_row_q4v(y, &packed, Int32(D)); kv_load_row_q4v(packed, &back, Int32(D)) }
        return hadamardReference(back.map(Double.init), group: g)
    }

    /// fp64 reference of the int8 residual row: rotate, s = amax/127, round half to even, rotate back.
    static func int8Reference(_ x: ArraySlice<Float>) -> [Double] {
        let g = Int(kv_hadamard_group(Int32(x.count)))
        let y = hadamardReference(x.map(Double.init), group: g)
        let s = y.map(abs).max()! / 127
        return hadamardReference(y.map { s > 0 ? ($0 / s).rounded(.toNearestOrEven) * s : 0 }, group: g)
    }

    static func rows(_ c: Shape, _ rng: inout SplitMix64) -> [[Float]] {
        (0..<c.length).map { t in
            var r = rng.floats(c.numKVHeads * c.headDim, scale: Float(1 + t % 3))
            r[(t * 13) % r.count] *= 8   // an outlier channel
            return r
        }
    }

    @Test("spec: 296 B per token per KV head at head_dim 256 (0.289x fp16), head_dim must be a multiple of 64")
    func sizes() throws {
        let gemma = KVCacheSpec(numLayers: 18, numKVHeads: 1, headDim: 256, dtype: .int4PerToken)
        #expect(gemma.bytesPerTokenPerLayer == 296)
        #expect(gemma.bytesPerToken == 18 * 296)
        #expect(abs(Double(gemma.bytesPerToken) / Double(gemma.fp16BytesPerToken) - 0.289) < 0.001)
        let smol = KVCacheSpec(numLayers: 30, numKVHeads: 3, headDim: 64, dtype: .int4PerToken)
        #expect(smol.bytesPerTokenPerLayer == 3 * (40 + 34))
        #expect(Double(smol.bytesPerToken) / Double(smol.fp16BytesPerToken) <= 0.3)
        let e = kvantError { try KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: 72, dtype: .int4PerToken).validate() }
        #expect(e?.message.contains("head_dim a multiple of 64") == true)
        #expect(try KVCacheDType(parsing: "int4_pertoken") == .int4PerToken)
        #expect(KVCacheDType.int4PerToken.isQuantized && KVCacheDType.int4PerToken.isDynamic)

        // The residual rings come out of the budget: 1 live (maxNumSeqs default) + 4 retired with prefix caching.
        let ring = 38 * 18 * 8320   // 4 recent blocks + 32 of a 512-token micro-batch + 1, + the sink slot; 18 layers
        #expect(ring == 5_690_880)
        let page = 18 * 16 * 296     // one block: 16 positions of the 18 layers (one layer group), 4 736 B per layer
        let pool = try KVCachePool(spec: gemma, byteBudget: 5 * ring + 10 * page + page - 1)
        let st = pool.stats()
        #expect(st.bytesPerTokenAllLayers == 18 * 296)
        #expect(st.rotation == "hadamard-256")
        #expect(st.scaleSource == "dynamic")
        #expect(pool.pageStride == page)
        #expect(pool.residualBytesPerSequence == ring)
        #expect(st.residualBytesPerSequence == ring)
        #expect(st.residualRings == 5 && st.residualBytes == 5 * ring && st.residualRingsInUse == 0)
        #expect(pool.numBlocks == 10 && st.numBlocks == 10 && st.blockPoolBytes == 10 * page)
        #expect(st.capacityTokens == 160)
        #expect(KVCachePool.residualReserveBytes(spec: gemma, maxNumSeqs: 1) == 5 * ring)

        // max_num_seqs 16 (the daemon's default), prefix caching off: 16 rings.
        let p16 = try KVCachePool(spec: gemma, byteBudget: 16 * ring + 3 * page, enablePrefixCaching: false, maxNumSeqs: 16)
        #expect(p16.residualRings == 16 && p16.numBlocks == 3 && p16.stats().residualBytes == 16 * ring)
        #expect(KVCachePool.residualReserveBytes(spec: gemma, maxNumSeqs: 16, enablePrefixCaching: false) == 16 * ring)
        #expect(KVCachePool.residualReserveBytes(spec: gemma, maxNumSeqs: 16) == 20 * ring)
        // Other dtypes reserve nothing; without a residual (int4RecentBlocks 0) neither.
        #expect(KVCachePool.residualReserveBytes(spec: KVCacheSpec(numLayers: 18, numKVHeads: 1, headDim: 256, dtype: .int8PerToken),
                                                 maxNumSeqs: 16) == 0)
        let noRes = try KVCachePool(spec: gemma, byteBudget: 2 * page, int4RecentBlocks: 0, maxNumSeqs: 16)
        #expect(noRes.residualRings == 0 && noRes.numBlocks == 2 && noRes.stats().residualBytes == 0)

        // Too small for the rings plus one block: an error naming the numbers.
        let small = kvantError { try KVCachePool(spec: gemma, byteBudget: 20 * ring + page - 1, maxNumSeqs: 16) }
        #expect(small?.reason == .resourceExhausted)
        #expect(small?.message == "KV cache byte budget \(20 * ring + page - 1) bytes is too small for kv_cache_dtype int4_pertoken: the int8 residual rings of max_num_seqs 16 sequences + 4 rings of freed sequences kept for prefix caching take 20 × 5690880 = 113817600 bytes, leaving 85247, less than one block of every layer (85248 bytes: block_size 16, 18 layers); raise kv_cache_bytes to at least 113902848 or lower max_num_seqs")
        #expect(kvantError { try KVCachePool(spec: gemma, byteBudget: 1 << 30, maxNumSeqs: 0) }?.message
                == "KV cache: max_num_seqs 0; must be at least 1")

        // Gemma 3 270M with its sliding windows in 256 MiB at max_num_seqs 16: the 20 rings (113.8 MB) leave
        // int4_pertoken's blocks 142.6 MB; int8_pertoken has all 256 MiB for blocks.
        let windows: [Int?] = (0..<18).map { $0 % 6 == 5 ? nil : 512 }
        func windowed(_ dt: KVCacheDType) throws -> KVCachePool {
            try KVCachePool(spec: KVCacheSpec(numLayers: 18, numKVHeads: 1, headDim: 256, dtype: dt, layerWindows: windows),
                            byteBudget: 1 << 28, maxNumSeqs: 16)
        }
        let p4 = try windowed(.int4PerToken), p8 = try windowed(.int8PerToken)
        #expect(p4.numBlocks == ((1 << 28) - 20 * ring) / p4.pageStride)
        #expect(p8.numBlocks == (1 << 28) / p8.pageStride)
        let s4 = p4.stats()
        #expect(s4.blockPoolBytes + s4.residualBytes! <= 1 << 28)
        #expect(s4.blockPoolBytes + s4.residualBytes! > (1 << 28) - p4.pageStride)
        let c4 = p4.capacityTokens, c8 = p8.capacityTokens
        print("capacity_tokens in 256 MiB, Gemma 3 270M, max_num_seqs 16: int4_pertoken \(c4), int8_pertoken \(c8)")
        #expect(s4.capacityTokens == c4)
        #expect(c4 > c8)

        // The daemon's pools: rings sized for its 64-token chunks (max_num_batched_tokens), 4 + 4 + 1 blocks + the
        // sink slot: 1 497 600 B on Gemma (18 layers × 8 320 B per slot), 1 958 400 B on SmolLM2 (30 × 6 528 B).
        let ring64 = 10 * 18 * 8320
        #expect(KVCachePool.residualReserveBytes(spec: gemma, maxNumSeqs: 16, prefillChunk: 64) == 20 * ring64)
        func daemonPool(_ spec: KVCacheSpec, _ budget: Int) throws -> KVCachePool {
            try KVCachePool(spec: spec, byteBudget: budget, prefillChunk: 64, maxNumSeqs: 16)
        }
        func gemmaSpec(_ dt: KVCacheDType) -> KVCacheSpec {
            KVCacheSpec(numLayers: 18, numKVHeads: 1, headDim: 256, dtype: dt, layerWindows: windows)
        }
        let smolRing = 10 * 30 * 6528
        let smolSpec = { (dt: KVCacheDType) in KVCacheSpec(numLayers: 30, numKVHeads: 3, headDim: 64, dtype: dt) }
        for budget in [1 << 28, 1 << 26] {
            let g4 = try daemonPool(gemmaSpec(.int4PerToken), budget), g8 = try daemonPool(gemmaSpec(.int8PerToken), budget)
            #expect(g4.residualBytesPerSequence == ring64 && g4.stats().residualBytes == 20 * ring64)
            #expect(g4.numBlocks == (budget - 20 * ring64) / g4.pageStride)
            // SmolLM2 has no sliding windows: capacity is exactly its blocks' positions. 64 MiB is accepted now (the
            // 512-token rings, 20 × 7 441 920 B, did not fit in it).
            let s4 = try daemonPool(smolSpec(.int4PerToken), budget), s8 = try daemonPool(smolSpec(.int8PerToken), budget)
            #expect(s4.residualBytesPerSequence == smolRing)
            #expect(s4.pageStride == 30 * 3584)   // 16 positions × 3 heads × 74 B = 3 552 B per layer, 64-byte aligned
            #expect(s4.capacityTokens == (budget - 20 * smolRing) / s4.pageStride * 16)
            #expect(s8.capacityTokens == budget / (16 * s8.spec.bytesPerToken) * 16)
            print("capacity_tokens, max_num_seqs 16, 64-token chunks, \(budget >> 20) MiB: Gemma 3 270M int4_pertoken \(g4.capacityTokens), int8_pertoken \(g8.capacityTokens); SmolLM2 int4_pertoken \(s4.capacityTokens), int8_pertoken \(s8.capacityTokens)")
            if budget == 1 << 28 {
                // The rings take 11 % (Gemma) and 15 % (SmolLM2) of 256 MiB: int4 holds 1.57× and 1.56× int8's tokens
                // (with 512-token rings, 42 % of the budget on Gemma: 169 392 vs 167 344, above).
                #expect(Double(g4.capacityTokens) > 1.5 * Double(g8.capacityTokens))
                #expect(Double(s4.capacityTokens) > 1.5 * Double(s8.capacityTokens))
            } else {
                // 64 MiB: the 20 rings are 45 % (Gemma) and 58 % (SmolLM2) of it, int4 holds a little less than int8
                // (a fixed reservation per sequence; README "Known limits").
                #expect(g4.capacityTokens > 30_000 && s4.capacityTokens > 4_000)
            }
        }
    }

    @Test("residual rings: one arena slot per live sequence, freed ones kept for prefix caching until a live one needs the slot; none left = int4 only, counted")
    func ringSlots() throws {
        let spec = KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: 64, dtype: .int4PerToken, blockSize: 8)
        for caching in [false, true] {
            let pool = try KVCachePool(spec: spec, byteBudget: 1 << 21, enablePrefixCaching: caching, maxNumSeqs: 2)
            let rings = caching ? 6 : 2
            #expect(pool.residualRings == rings)
            var rng = SplitMix64(seed: 5)
            let row = rng.floats(64)
            func write(_ s: SequenceID, length: Int) {
                #expect(pool.reserve(s, newLength: length) == .ok)
                for p in 0..<length { pool.write(layer: 0, sequence: s, position: p, key: row, value: row) }
                pool.commit(s, tokens: [Int32](repeating: 1, count: length), from: 0)
            }
            // Fill every slot with live sequences (the pool sized for 2 holds `rings`), then one more: no ring.
            let live = (0..<rings).map { _ in pool.createSequence() }
            for s in live { write(s, length: 16) }
            #expect(pool.stats().residualRingsInUse == rings && pool.stats().residualRingMisses == 0)
            let extra = pool.createSequence()
            write(extra, length: 16)
            #expect(pool.stats().residualRingMisses == 1)
            #expect(pool.stats().residualRingsInUse == rings)
            // Freed: without prefix caching the slot returns at once; with it the ring is kept (4 at most).
            for s in live { pool.free(s) }
            pool.free(extra)
            #expect(pool.stats().residualRingsInUse == (caching ? 4 : 0))
            // Live sequences take free slots first, then evict the oldest kept ring.
            let again = (0..<rings).map { _ in pool.createSequence() }
            for s in again { write(s, length: 8) }
            #expect(pool.stats().residualRingsInUse == rings && pool.stats().residualRingMisses == 1)
            for s in again { pool.free(s) }
        }
    }

    @Test("write/read round trip: the rotated 4-bit rows, rotated back, as the fp64 reference", arguments: [64, 128, 256])
    func roundTrip(headDim D: Int) throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 2, headDim: D, dtype: .int4PerToken, blockSize: 4)
        let pool = try KVCachePool(spec: spec, byteBudget: (1 << 20) + KVCachePool.residualReserveBytes(spec: spec, maxNumSeqs: 1))
        #expect(pool.rotationGroup == D)
        var rng = SplitMix64(seed: UInt64(D))
        let c = Shape(numKVHeads: 2, numHeads: 2, headDim: D, blockSize: 4, length: 11, window: nil)
        var keys = Self.rows(c, &rng), values = Self.rows(c, &rng)
        keys[3] = [Float](repeating: 0, count: 2 * D); values[3] = keys[3]
        let seq = pool.createSequence()
        for l in 0..<2 { writeAll(pool, seq, layer: l, keys: keys, values: values) }
        for l in 0..<2 {
            for p in 0..<c.length {
                let (k, v) = readBack(pool, seq, layer: l, position: p)
                for h in 0..<2 {
                    let r = (h * D)..<(h * D + D)
                    let rk = Self.int4Reference(keys[p][r], key: true), rv = Self.int4Reference(values[p][r], key: false)
                    let amax = Double(max(keys[p][r].map(abs).max()!, values[p][r].map(abs).max()!))
                    let ek = zip(k[r], rk).map { abs(Double($0) - $1) }.max()!
                    let ev = zip(v[r], rv).map { abs(Double($0) - $1) }.max()!
                    #expect(ek <= 1e-4 * amax + 1e-7 && ev <= 1e-4 * amax + 1e-7, "layer \(l) pos \(p) head \(h): K \(ek) V \(ev)")
                    // And the 4-bit error itself is real but bounded: relative L2 error of a 4-bit row is ~0.1.
                    let rel = { (a: ArraySlice<Float>, b: ArraySlice<Float>) -> Double in
                        let e = zip(a, b).map { Double($0 - $1) * Double($0 - $1) }.reduce(0, +)
                        let n = b.map { Double($0) * Double($0) }.reduce(0, +)
                        return n > 0 ? (e / n).squareRoot() : e
                    }
                    if p != 3 {
                        #expect(rel(k[r], keys[p][r]) < 0.2 && rel(v[r], values[p][r]) < 0.25, "pos \(p) head \(h)")
                        #expect(rel(k[r], keys[p][r]) > 0.001, "a 4-bit row cannot be (nearly) exact")
                    }
                }
                if p == 3 { #expect(k.allSatisfy { $0 == 0 } && v.allSatisfy { $0 == 0 }) }
            }
        }
    }

    /// The keys and values attention must see at `position` (window `window`): the query's last 4 blocks (as far as
    /// the ring holds them, from `ringLo`) and token 0 at int8, the rest at int4.
    static func expectedContents(keys: [[Float]], values: [[Float]], c: Shape, position: Int, ringLo: Int)
        -> (k: [[Float]], v: [[Float]]) {
        let B = c.blockSize, D = c.headDim
        let first = c.window.map { max(0, position - $0 + 1) } ?? 0
        let rs = max(first, (position / B - 3) * B, ringLo <= position ? ringLo : position + 1)
        var k = keys, v = values
        for t in first...position {
            let int8 = t >= rs || (t == 0 && first == 0)
            for h in 0..<c.numKVHeads {
                let r = (h * D)..<(h * D + D)
                let kr = int8 ? Self.int8Reference(keys[t][r]) : Self.int4Reference(keys[t][r], key: true)
                let vr = int8 ? Self.int8Reference(values[t][r]) : Self.int4Reference(values[t][r], key: false)
                for i in 0..<D { k[t][h * D + i] = Float(kr[i]); v[t][h * D + i] = Float(vr[i]) }
            }
        }
        return (k, v)
    }

    @Test("attend matches the fp64 reference on int4 + int8-residual contents (AVX2 and AVX-512, GQA, windows, block boundaries)",
          arguments: [false, true])
    func attendMatchesReference(allowAVX512: Bool) throws {
        for (ci, c) in Self.shapes.enumerated() {
            var rng = SplitMix64(seed: UInt64(300 + ci))
            let keys = Self.rows(c, &rng), values = Self.rows(c, &rng)
            let spec = KVCacheSpec(numLayers: 2, numKVHeads: c.numKVHeads, headDim: c.headDim, dtype: .int4PerToken,
                                   blockSize: c.blockSize)
            let pool = try KVCachePool(spec: spec, byteBudget: (1 << 21) + KVCachePool.residualReserveBytes(spec: spec, maxNumSeqs: 1),
                                       allowAVX512: allowAVX512)
            if !allowAVX512 { #expect(!pool.usesAVX512) }
            let other = pool.createSequence()   // owns other blocks, so block ids are not 0, 1, 2…
            #expect(pool.reserve(other, newLength: 2 * c.blockSize + 1) == .ok)
            let seq = pool.createSequence()
            writeAll(pool, seq, layer: 1, keys: keys, values: values)
            let B = c.blockSize
            let scale = 1 / Float(c.headDim).squareRoot() * 3
            for position in [0, 1, B - 1, B, 4 * B - 1, 4 * B, 4 * B + 1, c.length / 2, c.length - 1] where position < c.length {
                let query = rng.floats(c.numHeads * c.headDim)
                let out = attend(pool, seq, layer: 1, position: position, query: query, numHeads: c.numHeads,
                                 window: c.window, scale: scale)
                let exp = Self.expectedContents(keys: keys, values: values, c: c, position: position, ringLo: 0)
                let ref = referenceAttention(keys: exp.k, values: exp.v, query: query, numHeads: c.numHeads,
                                             numKVHeads: c.numKVHeads, headDim: c.headDim, position: position,
                                             window: c.window, scale: scale)
                let err = zip(out, ref).map { abs(Double($0) - $1) }.max()!
                #expect(err < 1e-4, "\(c) avx512 \(pool.usesAVX512) pos \(position): kernel vs fp64 on int4/int8 contents \(err)")
                // Against the true values the 4-bit error shows, but bounded.
                let truth = referenceAttention(keys: keys, values: values, query: query, numHeads: c.numHeads,
                                               numKVHeads: c.numKVHeads, headDim: c.headDim, position: position,
                                               window: c.window, scale: scale)
                // Against the true values the 4-bit error shows, bounded by a fraction of the largest |V| (rows up to
                // 3, outlier channels up to 24 here; measured at most 0.05 of it).
                let errTrue = zip(out, truth).map { abs(Double($0) - $1) }.max()!
                let vmax = Double(values.joined().map(abs).max()!)
                #expect(errTrue < 0.1 * vmax, "\(c) pos \(position): vs true values \(errTrue) (max |v| \(vmax))")
                if position >= 6 * B && c.window == nil {
                    // Positions 1 ..< (p/B − 3)·B really are read at int4: an all-int8 reference is further away.
                    let all8 = Self.expectedContents(keys: keys, values: values, c: Shape(numKVHeads: c.numKVHeads, numHeads: c.numHeads, headDim: c.headDim, blockSize: 1 << 20, length: c.length, window: nil), position: position, ringLo: 0)
                    let ref8 = referenceAttention(keys: all8.k, values: all8.v, query: query, numHeads: c.numHeads,
                                                  numKVHeads: c.numKVHeads, headDim: c.headDim, position: position,
                                                  window: nil, scale: scale)
                    let err8 = zip(out, ref8).map { abs(Double($0) - $1) }.max()!
                    #expect(err8 > 10 * err, "\(c) pos \(position): int8-only reference \(err8) vs mixed \(err)")
                }
            }
        }
    }

    @Test("split-K decode over threads equals the single pass; a ring shorter than the sequence falls back to int4 exactly as documented",
          arguments: [false, true])
    func splitKeysAndShortRing(allowAVX512: Bool) throws {
        let c = Shape(numKVHeads: 2, numHeads: 6, headDim: 64, blockSize: 16, length: 1300, window: nil)
        var rng = SplitMix64(seed: 41)
        let keys = Self.rows(c, &rng), values = Self.rows(c, &rng)
        // prefillChunk 32: the ring holds 4 + 2 + 1 = 7 blocks, so early positions have lost their int8 rows.
        let spec = KVCacheSpec(numLayers: 1, numKVHeads: 2, headDim: 64, dtype: .int4PerToken, blockSize: 16)
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 22, allowAVX512: allowAVX512, prefillChunk: 32)
        let seq = pool.createSequence()
        writeAll(pool, seq, layer: 0, keys: keys, values: values)
        let ringLo = ((c.length - 1) / 16 - 7 + 1) * 16
        for (position, window) in [(c.length - 1, nil), (1000, 700), (ringLo + 5, nil), (300, nil), (ringLo - 1, 200)] as [(Int, Int?)] {
            let q = rng.floats(6 * 64)
            let one = attend(pool, seq, layer: 0, position: position, query: q, numHeads: 6, window: window, scale: 0.3)
            var cw = c; cw.window = window
            let exp = Self.expectedContents(keys: keys, values: values, c: cw, position: position, ringLo: ringLo)
            let ref = referenceAttention(keys: exp.k, values: exp.v, query: q, numHeads: 6, numKVHeads: 2, headDim: 64,
                                         position: position, window: window, scale: 0.3)
            let err = zip(one, ref).map { abs(Double($0) - $1) }.max()!
            #expect(err < 1e-4, "avx512 \(allowAVX512) position \(position): vs fp64 \(err)")
            for threads in [2, 3] {
                let split = attend(pool, seq, layer: 0, position: position, query: q, numHeads: 6, window: window, scale: 0.3, threads: threads)
                let e = zip(one, split).map { abs($0 - $1) }.max()!
                // Up to three partial softmaxes merged in a different order: fp32 rounding of outputs up to ~24.
                #expect(e < 1e-5, "position \(position) threads \(threads): \(e)")
            }
        }
    }

    @Test("fork copies the int8 residual; truncate + rewrite reads the new rows; free drops the residual")
    func forkTruncate() throws {
        let c = Shape(numKVHeads: 1, numHeads: 2, headDim: 64, blockSize: 8, length: 60, window: nil)
        var rng = SplitMix64(seed: 9)
        let keys = Self.rows(c, &rng), values = Self.rows(c, &rng)
        let spec = KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: 64, dtype: .int4PerToken, blockSize: 8)
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 20)
        let seq = pool.createSequence()
        writeAll(pool, seq, layer: 0, keys: keys, values: values)
        let child = pool.fork(seq)
        let q = rng.floats(2 * 64)
        let a = attend(pool, seq, layer: 0, position: 59, query: q, numHeads: 2, window: nil, scale: 0.5)
        let b = attend(pool, child, layer: 0, position: 59, query: q, numHeads: 2, window: nil, scale: 0.5)
        #expect(a == b)
        // Regenerate from position 40 in the child with other rows: the parent is unchanged.
        #expect(pool.truncate(child, to: 40))
        var k2 = keys, v2 = values
        for t in 40..<60 { k2[t] = rng.floats(64); v2[t] = rng.floats(64) }
        writeAll(pool, child, layer: 0, keys: k2, values: v2, from: 40)
        for (s, kk, vv) in [(seq, keys, values), (child, k2, v2)] {
            let out = attend(pool, s, layer: 0, position: 59, query: q, numHeads: 2, window: nil, scale: 0.5)
            let exp = Self.expectedContents(keys: kk, values: vv, c: c, position: 59, ringLo: 0)
            let ref = referenceAttention(keys: exp.k, values: exp.v, query: q, numHeads: 2, numKVHeads: 1, headDim: 64,
                                         position: 59, window: nil, scale: 0.5)
            #expect(zip(out, ref).map { abs(Double($0) - $1) }.max()! < 1e-4)
        }
        pool.free(seq); pool.free(child)
        #expect(pool.stats().usedBlocks == 0)
    }
}

extension Int4CacheTests {
    @Test("the served int4 cache stores what the measurement simulation (KVQuantSimulation) simulated")
    func servedMatchesSimulation() throws {
        let c = Shape(numKVHeads: 1, numHeads: 4, headDim: 256, blockSize: 16, length: 200, window: nil)
        var rng = SplitMix64(seed: 77)
        let keys = Self.rows(c, &rng), values = Self.rows(c, &rng)
        let served = try KVCachePool(spec: KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: 256, dtype: .int4PerToken),
                                     byteBudget: 1 << 22)
        let simulated = try KVCachePool(spec: KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: 256, dtype: .fp32),
                                        byteBudget: 1 << 22)
        try simulated.setQuantSimulation(KVQuantSimulation(
            key: try KVRowFormat(parsing: "int4:g32:asym:rot"), value: try KVRowFormat(parsing: "int4:g64:sym:rot"),
            residual: try KVRowFormat(parsing: "int8:row:sym:rot:f32s"), residualBlocks: 4, sinkTokens: 1))
        let a = served.createSequence(), b = simulated.createSequence()
        writeAll(served, a, layer: 0, keys: keys, values: values)
        writeAll(simulated, b, layer: 0, keys: keys, values: values)
        var worst = 0.0
        for p in [0, 15, 16, 63, 64, 65, 130, 199] {
            let q = rng.floats(4 * 256)
            let x = attend(served, a, layer: 0, position: p, query: q, numHeads: 4, window: nil, scale: 0.2)
            let y = attend(simulated, b, layer: 0, position: p, query: q, numHeads: 4, window: nil, scale: 0.2)
            worst = max(worst, zip(x, y).map { Double(abs($0 - $1)) }.max()!)
        }
        print("served vs simulated int4 attention: max |diff| \(worst)")
        #expect(worst < 1e-4)
    }
}

extension Int4CacheTests {
    @Test("served vs simulated on the Gemma 3 layout: 18 layers in layer groups, sliding windows, a prefill micro-batch written before it is attended")
    func servedMatchesSimulationGemmaLayout() throws {
        let windows: [Int?] = (0..<18).map { $0 % 6 == 5 ? nil : 512 }
        let T = 300
        var rng = SplitMix64(seed: 78)
        let served = try KVCachePool(spec: KVCacheSpec(numLayers: 18, numKVHeads: 1, headDim: 256, dtype: .int4PerToken,
                                                       layerWindows: windows), byteBudget: 1 << 25)
        let simulated = try KVCachePool(spec: KVCacheSpec(numLayers: 18, numKVHeads: 1, headDim: 256, dtype: .fp32,
                                                          layerWindows: windows), byteBudget: 1 << 26)
        try simulated.setQuantSimulation(KVQuantSimulation(
            key: try KVRowFormat(parsing: "int4:g32:asym:rot"), value: try KVRowFormat(parsing: "int4:g64:sym:rot"),
            residual: try KVRowFormat(parsing: "int8:row:sym:rot:f32s"), residualBlocks: 4, sinkTokens: 1))
        let a = served.createSequence(), b = simulated.createSequence()
        #expect(served.reserve(a, newLength: T) == .ok && simulated.reserve(b, newLength: T) == .ok)
        var worst = 0.0
        for l in 0..<18 {
            let keys = (0..<T).map { t in rng.floats(256, scale: t == 0 ? 20 : Float(1 + l % 4)) }
            let values = (0..<T).map { _ in rng.floats(256, scale: 2) }
            writeAll(served, a, layer: l, keys: keys, values: values)
            writeAll(simulated, b, layer: l, keys: keys, values: values)
            for p in [0, 17, 64, 130, 299] {
                let q = rng.floats(4 * 256, scale: 3)
                let x = attend(served, a, layer: l, position: p, query: q, numHeads: 4, window: windows[l], scale: 0.0625)
                let y = attend(simulated, b, layer: l, position: p, query: q, numHeads: 4, window: windows[l], scale: 0.0625)
                worst = max(worst, zip(x, y).map { Double(abs($0 - $1)) }.max()!)
            }
        }
        print("served vs simulated int4 attention, Gemma layout: max |diff| \(worst)")
        #expect(worst < 1e-4)
    }
}

extension Int4CacheTests {
    /// Attention outputs of queries `p0 ..< p0 + n` of a 1-layer int4 pool (chunk `prefillChunk`, block 16, head_dim
    /// 64, 2 KV heads): positions `0 ..< p0` written and committed first, then either every position of the pass
    /// written before any is attended (`onePass`, a prefill micro-batch) or each written and attended in turn.
    static func passOutputs(prefillChunk: Int, p0: Int, n: Int, onePass: Bool, keys: [[Float]], values: [[Float]],
                            queries: [[Float]]) throws -> [[Float]] {
        let spec = KVCacheSpec(numLayers: 1, numKVHeads: 2, headDim: 64, dtype: .int4PerToken, blockSize: 16)
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 22, prefillChunk: prefillChunk, enablePrefixCaching: false)
        let seq = pool.createSequence()
        #expect(pool.reserve(seq, newLength: p0 + n) == .ok)
        func write(_ p: Int) {
            keys[p].withUnsafeBufferPointer { k in
                values[p].withUnsafeBufferPointer { v in
                    _ = pool.write(layer: 0, sequence: seq, position: p, key: k.baseAddress!, value: v.baseAddress!)
                }
            }
        }
        for p in 0..<p0 { write(p) }
        pool.commit(seq, tokens: [Int32](repeating: 1, count: p0), from: 0)
        var out: [[Float]] = []
        if onePass { for p in p0..<(p0 + n) { write(p) } }
        for (i, p) in (p0..<(p0 + n)).enumerated() {
            if !onePass { write(p) }
            out.append(attend(pool, seq, layer: 0, position: p, query: queries[i], numHeads: 4, window: nil, scale: 0.3))
        }
        return out
    }

    @Test("ring sized for the pool's prefill chunk: a pass of that many positions (the worst alignment) reads what position-by-position reads; a longer pass would not (ForwardSession splits it)")
    func ringHoldsOneChunk() throws {
        let spec = KVCacheSpec(numLayers: 1, numKVHeads: 2, headDim: 64, dtype: .int4PerToken, blockSize: 16)
        // 64-token chunks (the daemon's default max_num_batched_tokens): 4 recent + 4 + 1 blocks, + the sink slot.
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 22, prefillChunk: 64)
        let blockStride = 2 * (2 * 16 * 64) + 2 * (2 * 16 * 4)   // int8 K, V [2, 16, 64] + fp32 scales [2, 16]
        #expect(pool.residualBytesPerSequence == 10 * 1 * blockStride)
        #expect(try KVCachePool(spec: spec, byteBudget: 1 << 22, prefillChunk: 512).residualBytesPerSequence == 38 * blockStride)
        #expect(KVCachePool.residualReserveBytes(spec: spec, maxNumSeqs: 16, prefillChunk: 64) == 20 * 10 * blockStride)

        var rng = SplitMix64(seed: 64)
        let c = Shape(numKVHeads: 2, numHeads: 4, headDim: 64, blockSize: 16, length: 400, window: nil)
        let keys = Self.rows(c, &rng), values = Self.rows(c, &rng)
        let queries = (0..<130).map { _ in rng.floats(4 * 64) }
        // p0 = 207: the last position of a block, so a 64-position pass spans 5 blocks (the most it can).
        for p0 in [207, 192] {
            let stepwise = try Self.passOutputs(prefillChunk: 64, p0: p0, n: 64, onePass: false, keys: keys, values: values, queries: queries)
            let pass = try Self.passOutputs(prefillChunk: 64, p0: p0, n: 64, onePass: true, keys: keys, values: values, queries: queries)
            #expect(pass == stepwise, "p0 \(p0): a 64-position pass on a 64-chunk ring")
            // The same pass on a ring sized for 512: the same outputs bit for bit (the ring's size changes nothing it holds).
            let big = try Self.passOutputs(prefillChunk: 512, p0: p0, n: 64, onePass: true, keys: keys, values: values, queries: queries)
            #expect(big == stepwise, "p0 \(p0): 512-chunk ring")
        }
        // 128 positions in one pass on the 64-chunk ring: the first queries' recent blocks were overwritten (read at
        // 4 bits), so they differ from the position-by-position run; that is the overflow `ForwardSession` prevents.
        let stepwise = try Self.passOutputs(prefillChunk: 64, p0: 207, n: 128, onePass: false, keys: keys, values: values, queries: queries)
        let over = try Self.passOutputs(prefillChunk: 64, p0: 207, n: 128, onePass: true, keys: keys, values: values, queries: queries)
        #expect(over[0] != stepwise[0])
        #expect(over[127] == stepwise[127])   // the last queries still find theirs
    }
}
