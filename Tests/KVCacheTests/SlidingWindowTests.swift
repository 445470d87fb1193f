import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

/// Sliding-window layers keep only their window: layer groups, one block table per group, blocks freed
/// as the window moves on (vLLM's hybrid KV-cache manager).
@Suite("Sliding-window layer groups")
struct SlidingWindowTests {
    /// Gemma 3 270M's layout: 18 layers, every 6th (5, 11, 17) full attention, the others a 512-token window.
    static func gemmaWindows(_ w: Int = 512) -> [Int?] { (0..<18).map { $0 % 6 == 5 ? nil : w } }

    static func gemmaSpec(_ dtype: KVCacheDType = .fp32, headDim: Int = 8, window: Int = 512, blockSize: Int = 16) -> KVCacheSpec {
        KVCacheSpec(numLayers: 18, numKVHeads: 1, headDim: headDim, dtype: dtype, blockSize: blockSize, layerWindows: gemmaWindows(window))
    }

    @Test("layer groups: gcd of the kinds' layer counts, full attention first, one table per group")
    func groups() throws {
        let spec = Self.gemmaSpec()
        #expect(spec.layersPerGroup == 3)
        #expect(spec.numFullAttentionLayers == 3)
        let groups = spec.layerGroups
        #expect(groups.count == 6)
        #expect(groups[0] == KVLayerGroup(window: nil, layers: [5, 11, 17]))
        #expect(groups[1] == KVLayerGroup(window: 512, layers: [0, 1, 2]))
        #expect(groups[5] == KVLayerGroup(window: 512, layers: [14, 15, 16]))
        #expect(Set(groups.flatMap(\.layers)) == Set(0..<18))
        // No windows: one group of every layer (the layout of a plain paged cache).
        let plain = KVCacheSpec(numLayers: 18, numKVHeads: 1, headDim: 8, dtype: .fp16)
        #expect(plain.layerGroups == [KVLayerGroup(window: nil, layers: Array(0..<18))])
        #expect(plain.fullAttentionBytesPerToken == plain.bytesPerToken)
        // Gemma 3 1B: 26 layers, 4 full, 22 windowed: gcd 2.
        let oneB = KVCacheSpec(numLayers: 26, numKVHeads: 1, headDim: 8, dtype: .fp16,
                               layerWindows: (0..<26).map { $0 % 6 == 5 ? nil : 512 })
        #expect(oneB.layersPerGroup == 2 && oneB.layerGroups.count == 13)
        // Two window sizes and full attention.
        let mixed = KVCacheSpec(numLayers: 6, numKVHeads: 1, headDim: 8, dtype: .fp16, layerWindows: [4, nil, 8, 4, nil, 8])
        #expect(mixed.layerGroups == [KVLayerGroup(window: nil, layers: [1, 4]), KVLayerGroup(window: 4, layers: [0, 3]),
                                      KVLayerGroup(window: 8, layers: [2, 5])])
        let bad = kvantError { _ = try KVCachePool(spec: KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 8, dtype: .fp16, layerWindows: [nil]), byteBudget: 1 << 20) }
        #expect(bad?.reason == .invalidArgument && bad?.message.contains("1 layer windows for num_layers 2") == true)
        let zero = kvantError { _ = try KVCachePool(spec: KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: 8, dtype: .fp16, layerWindows: [0]), byteBudget: 1 << 20) }
        #expect(zero?.message.contains("sliding window of layer 0") == true)
    }

    /// Layer-positions held: Σ over groups of (non-null blocks · blockSize · layersPerGroup).
    func layerPositions(_ pool: KVCachePool, _ seq: SequenceID) -> (full: Int, windowed: Int) {
        let table = pool.blockTable(of: seq)!
        var full = 0, windowed = 0
        for (gi, group) in pool.groups.enumerated() {
            let held = table.groups[gi].filter { $0 != BlockTable.nullBlock }.count * pool.spec.blockSize * group.layers.count
            if group.window == nil { full += held } else { windowed += held }
        }
        return (full, windowed)
    }

    @Test("a 16k-token sequence holds at most 3 full layers × 16k + 15 window layers × window positions of blocks")
    func sixteenK() throws {
        let spec = Self.gemmaSpec()
        let n = 16_384, chunk = 512, W = 512, B = 16
        let pool = try KVCachePool(spec: spec, byteBudget: spec.fullAttentionBytesPerToken * (n + 64) + 15 * 3 * W * spec.bytesPerTokenPerLayer)
        let seq = pool.createSequence()
        let zero = [Float](repeating: 0, count: 8)
        var peakWindowed = 0
        func writeAll(_ p: Int) {
            zero.withUnsafeBufferPointer { z in
                for l in 0..<18 { pool.write(layer: l, sequence: seq, position: p, key: z.baseAddress!, value: z.baseAddress!) }
            }
        }
        // Prefill in chunks as the executor does (reserve a chunk, write it, commit it), then decode one at a time.
        var length = 0
        while length < n - 100 {
            let end = min(length + chunk, n - 100)
            #expect(pool.reserve(seq, newLength: end) == .ok)
            peakWindowed = max(peakWindowed, layerPositions(pool, seq).windowed)
            for p in length..<end { writeAll(p) }
            pool.commit(seq, tokens: [Int32](repeating: 1, count: end - length), from: length)
            length = end
            let held = layerPositions(pool, seq)
            #expect(held.full == 3 * ((length + B - 1) / B * B), "length \(length)")
            #expect(held.windowed <= 15 * (W + B), "length \(length): \(held.windowed)")
        }
        while length < n {
            #expect(pool.reserve(seq, newLength: length + 1) == .ok)
            peakWindowed = max(peakWindowed, layerPositions(pool, seq).windowed)
            writeAll(length)
            pool.commit(seq, tokens: [1], from: length)
            length += 1
            #expect(layerPositions(pool, seq).windowed <= 15 * (W + B))
        }
        let held = layerPositions(pool, seq)
        #expect(held.full == 3 * n)
        #expect(held.windowed == 15 * W)   // 16384 is a block boundary: exactly the window
        #expect(held.full + held.windowed <= 3 * n + 15 * W)
        #expect(peakWindowed <= 15 * (W + chunk + B), "peak \(peakWindowed)")
        // Blocks in use = what the tables hold (nothing else leaked).
        #expect(pool.numBlocks - pool.freeBlocks == (held.full + held.windowed) / (B * 3))
        // Position n - 1 reads keys n - W ... n - 1, all still held; n - 2 would read a freed block.
        #expect(pool.earliestRecomputablePosition(of: seq) == n - 1)
        #expect(pool.truncate(seq, to: 100) == false)           // its window was freed long ago
        #expect(pool.truncate(seq, to: n - 8) == false)
        #expect(pool.length(of: seq) == n)
        #expect(pool.truncate(seq, to: n - 1) == true)
        pool.free(seq)
        #expect(pool.freeBlocks == pool.numBlocks)
    }

    @Test("attention over a windowed pool equals attention over a pool that keeps every block, bit for bit",
          arguments: [KVCacheDType.fp16, .int8PerToken, .int8PerTensor])
    func sameAttention(dtype: KVCacheDType) throws {
        let W = 40, B = 8, D = 16, n = 300
        let windowed = try KVCachePool(spec: KVCacheSpec(numLayers: 4, numKVHeads: 1, headDim: D, dtype: dtype, blockSize: B,
                                                         layerWindows: [W, W, W, nil]), byteBudget: 1 << 20)
        let full = try KVCachePool(spec: KVCacheSpec(numLayers: 4, numKVHeads: 1, headDim: D, dtype: dtype, blockSize: B), byteBudget: 1 << 22)
        var rng = SplitMix64(seed: 99)
        let a = windowed.createSequence(), b = full.createSequence()
        var length = 0
        while length < n {
            let step = length < 100 ? 37 : 1
            let end = min(n, length + step)
            #expect(windowed.reserve(a, newLength: end) == .ok && full.reserve(b, newLength: end) == .ok)
            for p in length..<end {
                for l in 0..<4 {
                    let k = rng.floats(D, scale: 3), v = rng.floats(D, scale: 2)
                    k.withUnsafeBufferPointer { kb in v.withUnsafeBufferPointer { vb in
                        windowed.write(layer: l, sequence: a, position: p, key: kb.baseAddress!, value: vb.baseAddress!)
                        full.write(layer: l, sequence: b, position: p, key: kb.baseAddress!, value: vb.baseAddress!)
                    } }
                }
            }
            for p in length..<end {
                let q = rng.floats(2 * D)
                for l in 0..<4 {
                    let w: Int? = l == 3 ? nil : W
                    let x = attend(windowed, a, layer: l, position: p, query: q, numHeads: 2, window: w, scale: 0.25)
                    let y = attend(full, b, layer: l, position: p, query: q, numHeads: 2, window: w, scale: 0.25)
                    #expect(x == y, "layer \(l) position \(p)")
                }
            }
            windowed.commit(a, tokens: [Int32](repeating: 7, count: end - length), from: length)
            length = end
        }
        // The windowed layers hold only the last window (plus the block it starts in).
        let table = windowed.blockTable(of: a)!
        #expect(table.groups[1].filter { $0 != BlockTable.nullBlock }.count <= (W - 1 + B - 1) / B + 1)
        #expect(table.groups[0].count == (n + B - 1) / B && !table.groups[0].contains(BlockTable.nullBlock))
        // Values inside the window read back as written in the full pool.
        for p in (n - W + 1)..<n {
            for l in 0..<4 { #expect(readBack(windowed, a, layer: l, position: p) == readBack(full, b, layer: l, position: p)) }
        }
        #expect(windowed.epoch(layer: 0, sequence: a, position: 0) == -1)
    }

    @Test("capacity: the full layers' bytes per token plus the windows; the figures in stats")
    func capacityAndStats() throws {
        let spec = Self.gemmaSpec(.int8PerToken, headDim: 256)
        #expect(spec.fullAttentionBytesPerToken == 3 * 520)       // 3 layers × (2·256 + 2·4)
        #expect(spec.bytesPerToken == 18 * 520)
        // The bytes for a 32 768-token sequence: 3 layers × 32768 + 5 groups × 33 blocks of the window.
        let page = 3 * 16 * 520                                   // 3 layers × 16 tokens (8320 bytes per layer, 64-aligned)
        let blocks = 32_768 / 16 + 5 * 33
        // prefillChunk 1: the sequence grows one token at a time (decode only).
        let pool = try KVCachePool(spec: spec, byteBudget: blocks * page, prefillChunk: 1)
        #expect(pool.pageStride == page && pool.numBlocks == blocks)
        #expect(pool.blocksNeeded(forLength: 32_768) == blocks)
        #expect(pool.capacityTokens == 32_768)
        #expect(pool.blocksNeeded(forLength: 32_769) == blocks + 1)
        #expect(pool.blocksNeeded(forLength: 100) == 6 * 7)       // within the window every group holds every block
        let s = pool.stats()
        #expect(s.capacityTokens == 32_768)
        #expect(s.bytesPerToken == 1560 && s.bytesPerTokenAllLayers == 9360)
        #expect(s.slidingWindowBytesPerSequence == 5 * 33 * page)
        #expect(s.layersPerBlock == 3 && s.layerGroups.count == 6)
        let json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(s)) as! [String: Any]
        for key in ["bytes_per_token_all_layers", "sliding_window_bytes_per_sequence", "layers_per_block", "layer_groups"] {
            #expect(json[key] != nil, "key \(key)")
        }
        // With the executor's 512-token prefill micro-batches a window group holds up to 512 + 512 positions
        // at once (keys s - 511 ... s + 511 of a micro-batch s ..< s + 512: blocks s/16 - 32 ... s/16 + 31, 64 of
        // them), so a 32 768-token prompt peaks at 2048 + 5 · 64 blocks: 5 · 31 blocks fewer tokens.
        let chunked = try KVCachePool(spec: spec, byteBudget: blocks * page)
        #expect(chunked.prefillChunk == 512)
        #expect(chunked.peakBlocks(KVAdmission(promptLength: 32_768, maxLength: 32_768)) == 2048 + 5 * 64)
        // The largest prompt that fits: its last micro-batch 30208..<30640 holds 1915 + 5 · 59 = 2210 blocks of 2213
        // (one token more: 1916 + 5 · 60); every full micro-batch before it at most 1888 + 5 · 64 = 2208.
        let cap = chunked.capacityTokens
        #expect(cap == 30_640)
        #expect(chunked.peakBlocks(KVAdmission(promptLength: cap, maxLength: cap)) == 1915 + 5 * 59)
        #expect(chunked.peakBlocks(KVAdmission(promptLength: cap + 1, maxLength: cap + 1)) == 1916 + 5 * 60)
        #expect(chunked.stats().capacityTokens == chunked.capacityTokens)
        // Without windows the same budget holds 6× fewer tokens.
        let plain = try KVCachePool(spec: KVCacheSpec(numLayers: 18, numKVHeads: 1, headDim: 256, dtype: .int8PerToken), byteBudget: blocks * page)
        #expect(plain.capacityTokens == blocks * page / (18 * 16 * 520) * 16)
        #expect(pool.capacityTokens > 5 * plain.capacityTokens)
        // Too small for one token of every group.
        let tiny = kvantError { _ = try KVCachePool(spec: spec, byteBudget: 5 * page) }
        #expect(tiny?.reason == .resourceExhausted && tiny?.message.contains("one block of every layer") == true)
    }

    @Test("fork shares every group's blocks; commit frees the windowed ones of each sequence only when unshared")
    func forkWithWindows() throws {
        let B = 4, W = 8
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 8, dtype: .fp32, blockSize: B, layerWindows: [W, nil])
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 16)
        let parent = pool.createSequence()
        let rows = (0..<20).map { t in (0..<8).map { Float(t * 10 + $0) } }
        for l in 0..<2 { writeAll(pool, parent, layer: l, keys: rows, values: rows) }
        pool.commit(parent, tokens: (0..<20).map { Int32($0) }, from: 0)
        // Next query at 20 reads keys 13...20: windowed blocks 0, 1, 2 (positions 0..<12) freed.
        let pt = pool.blockTable(of: parent)!
        #expect(pt.groups[1].prefix(3).allSatisfy { $0 == BlockTable.nullBlock } && pt.groups[1][3] != BlockTable.nullBlock)
        #expect(pt.computed == 20 && pt.tokens == (0..<20).map { Int32($0) })
        let child = pool.fork(parent)
        for id in pt.groups.flatMap({ $0 }) where id != BlockTable.nullBlock { #expect(pool.refCount(block: id) == 2) }
        // The child grows to 28 and commits: its window moves past block 3, which the parent still holds.
        #expect(pool.reserve(child, newLength: 28) == .ok)
        let more = (20..<28).map { t in (0..<8).map { Float(t * 10 + $0) } }
        for l in 0..<2 { writeAll(pool, child, layer: l, keys: rows + more, values: rows + more, from: 20) }
        pool.commit(child, tokens: (20..<28).map { Int32($0) }, from: 20)
        let ct = pool.blockTable(of: child)!
        #expect(ct.groups[1][3] == BlockTable.nullBlock && ct.groups[1][4] == BlockTable.nullBlock)
        #expect(pool.refCount(block: pt.groups[1][3]) == 1)
        #expect(readBack(pool, parent, layer: 0, position: 13).k == rows[13])
        #expect(readBack(pool, child, layer: 0, position: 27).k == more[7])
        #expect(readBack(pool, child, layer: 1, position: 2).k == rows[2])   // the full layer keeps everything
        pool.free(parent); pool.free(child)
        #expect(pool.freeBlocks == pool.numBlocks)
    }

    @Test("admission promises a sequence its peak blocks: no other sequence takes them, and growth never waits")
    func admission() throws {
        let spec = Self.gemmaSpec(.fp16)
        let pool = try KVCachePool(spec: spec, byteBudget: 400 * 3 * 16 * spec.bytesPerTokenPerLayer, prefillChunk: 256)
        #expect(pool.numBlocks == 400)
        // Prompt 1200 in micro-batches of 256, decode to 1300. The most blocks at once: micro-batch 768..<1024,
        // full group blocks 0...63 (64), each window group keys 257...1023 (blocks 16...63, 48): 304. Later
        // steps hold fewer: 1024..<1200 75 + 5 · 43; decode at most 82 + 5 · 33 = 247.
        let admission = KVAdmission(promptLength: 1200, maxLength: 1300)
        #expect(pool.peakBlocks(admission) == 64 + 5 * 48)
        #expect(pool.peakBlocks(admission, from: 1200) == 82 + 5 * 33)
        let a = pool.createSequence()
        #expect(pool.admit(a, promptLength: 1200, maxLength: 1300) == .ok)
        #expect(pool.promisedFreeBlocks == 304 && pool.freeBlocks == 400)
        #expect(pool.admit(a, promptLength: 1, maxLength: 2) == .never)          // already admitted
        // A second sequence needing more than the 96 unpromised blocks waits; one that fits is admitted.
        let b = pool.createSequence()
        #expect(pool.admit(b, promptLength: 400, maxLength: 500) == .later)      // 6 · 32 = 192 blocks
        #expect(pool.admit(b, promptLength: 60, maxLength: 100) == .ok)          // 6 · 7 = 42 blocks
        #expect(pool.promisedFreeBlocks == 346)
        // An unadmitted sequence may only take the 54 blocks nobody was promised.
        let greedy = pool.createSequence()
        #expect(pool.reserve(greedy, newLength: 9 * 16) == .ok)                  // 9 blocks per group: 54
        #expect(pool.reserve(greedy, newLength: 9 * 16 + 1) == .later)
        // `a` grows as the executor grows it: reserve a micro-batch, commit it; then decode one at a time.
        var length = 0, peak = 0
        while length < 1300 {
            let end = length < 1200 ? min(1200, length + 256) : length + 1
            #expect(pool.reserve(a, newLength: end) == .ok, "length \(length)")
            peak = max(peak, pool.blockTable(of: a)!.heldBlocks)
            #expect(pool.promisedFreeBlocks <= pool.freeBlocks)
            pool.commit(a, tokens: [Int32](repeating: 3, count: end - length), from: length)
            length = end
            let t = pool.blockTable(of: a)!
            // The promise never exceeds what `a` may still need.
            #expect(t.promised <= max(0, pool.peakBlocks(admission, from: t.computed) - t.heldBlocks))
        }
        #expect(peak == 304)
        #expect(pool.blockTable(of: a)!.heldBlocks == 82 + 5 * 33)   // next query 1300 reads keys 789...1300: blocks 49...81
        // `b` grows within its promise too, while the pool has only promised blocks free.
        #expect(pool.reserve(b, newLength: 100) == .ok)
        pool.free(a); pool.free(b)
        #expect(pool.promisedFreeBlocks == 0)
        pool.free(greedy)
        #expect(pool.freeBlocks == 400)
        // Out of range: never.
        let c = pool.createSequence()
        #expect(pool.admit(c, promptLength: 5, maxLength: 4) == .never)
        #expect(pool.admit(c, promptLength: pool.capacityTokens + 1, maxLength: pool.capacityTokens + 1) == .never)
        #expect(pool.admit(c, promptLength: pool.capacityTokens, maxLength: pool.capacityTokens) == .ok)
    }

    @Test("decode batches grow all or nothing; a fork of an admitted sequence has no promise")
    func batchReserveAndFork() throws {
        let B = 4, W = 8
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 8, dtype: .fp32, blockSize: B, layerWindows: [W, nil])
        let pool = try KVCachePool(spec: spec, byteBudget: 12 * B * spec.bytesPerTokenPerLayer, prefillChunk: 4)
        #expect(pool.numBlocks == 12)
        let a = pool.createSequence()
        #expect(pool.admit(a, promptLength: 8, maxLength: 12) == .ok)            // decode at 8: 3 full + 3 window blocks
        #expect(pool.promisedFreeBlocks == 6)
        #expect(pool.reserve(a, newLength: 4) == .ok)
        pool.commit(a, tokens: [1, 2, 3, 4], from: 0)
        let child = pool.fork(a)
        #expect(pool.blockTable(of: child)!.promised == 0 && pool.blockTable(of: child)!.admission == nil)
        let x = pool.createSequence()
        #expect(pool.reserve(x, newLength: 4) == .ok)                            // 2 of the 6 unpromised blocks
        // child + x need 2 + 2 of the 4 unpromised blocks left (child copies nothing: its last block is full);
        // with y (2 more) they do not fit, and then nothing grows.
        let y = pool.createSequence()
        #expect(pool.reserve([(child, 5), (x, 5), (y, 1)]) == .later)
        #expect(pool.length(of: child) == 4 && pool.length(of: x) == 4 && pool.length(of: y) == 0)
        #expect(pool.reserve([(child, 5), (x, 5)]) == .ok)
        #expect(pool.length(of: child) == 5 && pool.length(of: x) == 5)
        // The admitted parent still grows to its end although the others took every unpromised block.
        #expect(pool.freeBlocks == pool.promisedFreeBlocks)
        var length = 4
        while length < 12 {
            let end = length < 8 ? 8 : length + 1
            #expect(pool.reserve(a, newLength: end) == .ok, "length \(length)")
            pool.commit(a, tokens: [Int32](repeating: 5, count: end - length), from: length)
            length = end
            #expect(pool.promisedFreeBlocks <= pool.freeBlocks)
        }
        for s in [a, child, x, y] { pool.free(s) }
        #expect(pool.freeBlocks == 12 && pool.promisedFreeBlocks == 0)
    }

    @Test("random create/admit/grow/fork/truncate/free with sliding windows against a reference model")
    func randomOperations() throws {
        let B = 4, W = 9, D = 4
        let windows: [Int?] = [W, nil, W]
        let spec = KVCacheSpec(numLayers: 3, numKVHeads: 1, headDim: D, dtype: .fp32, blockSize: B, layerWindows: windows)
        let pool = try KVCachePool(spec: spec, byteBudget: 40 * B * spec.bytesPerTokenPerLayer, prefillChunk: 3)
        #expect(pool.numBlocks == 40 && pool.groups.count == 3)
        // guaranteed: admitted, never forked nor truncated — growth along its admission never waits.
        struct Seq { var rows: [[Float]] = []; var admission: KVAdmission?; var guaranteed = false }
        var model: [SequenceID: Seq] = [:]
        var rng = SplitMix64(seed: 15)
        var counter: Float = 0
        var seen: Set<String> = []
        func row(_ v: Float, _ l: Int) -> [Float] { (0..<D).map { v + Float(l) * 0.25 + Float($0) / 16 } }
        /// Grows `s` to `end`, writing and committing the new positions; false when reserve says .later.
        func grow(_ s: SequenceID, to end: Int) -> AllocationStatus {
            let st = pool.reserve(s, newLength: end)
            guard st == .ok else { return st }
            var m = model[s]!
            let start = m.rows.count
            for p in start..<end {
                counter += 1
                m.rows.append([counter])
                for l in 0..<3 {
                    let k = row(counter, l), v = row(-counter, l)
                    k.withUnsafeBufferPointer { kb in v.withUnsafeBufferPointer { vb in
                        #expect(pool.write(layer: l, sequence: s, position: p, key: kb.baseAddress!, value: vb.baseAddress!))
                    } }
                }
            }
            pool.commit(s, tokens: [Int32](repeating: 1, count: end - start), from: start)
            model[s] = m
            return .ok
        }
        for step in 0..<1500 {
            let ids = model.keys.sorted { $0.rawValue < $1.rawValue }
            let op = Int(rng.next() % 12)
            if ids.isEmpty || (op == 0 && ids.count < 8) {
                let s = pool.createSequence()
                let P = 1 + Int(rng.next() % 20), L = P + 1 + Int(rng.next() % 20)
                let st = pool.admit(s, promptLength: P, maxLength: L)
                seen.insert("admit.\(st)")
                if st == .ok { model[s] = Seq(admission: KVAdmission(promptLength: P, maxLength: L), guaranteed: true) }
                else { pool.free(s) }
            } else if op == 1 && ids.count < 8 {
                model[pool.createSequence()] = Seq()
            } else if op == 2 {
                let parent = ids[Int(rng.next() % UInt64(ids.count))]
                model[pool.fork(parent)] = Seq(rows: model[parent]!.rows)
                model[parent]!.guaranteed = false   // blocks it drops that the fork still holds do not come back
                seen.insert("fork")
            } else if op <= 8 {
                let s = ids[Int(rng.next() % UInt64(ids.count))]
                let n = model[s]!.rows.count
                if let adm = model[s]!.admission {
                    guard n < adm.maxLength else { continue }
                    let end = n < adm.promptLength ? min(adm.promptLength, n + pool.prefillChunk) : n + 1
                    let st = grow(s, to: end)
                    if model[s]!.guaranteed {
                        #expect(st == .ok, "step \(step): an admitted sequence could not grow")
                        #expect(pool.blockTable(of: s)!.heldBlocks <= pool.peakBlocks(adm), "step \(step)")
                    }
                    seen.insert("admitted.\(st)")
                } else {
                    seen.insert("grow.\(grow(s, to: n + 1 + Int(rng.next() % 3)))")
                }
            } else if op == 9 {
                let s = ids[Int(rng.next() % UInt64(ids.count))]
                let n = model[s]!.rows.count
                let to = Int(rng.next() % UInt64(n + 1))
                let earliest = pool.earliestRecomputablePosition(of: s)
                let ok = pool.truncate(s, to: to)
                #expect(ok == (to >= earliest || to >= n), "step \(step)")
                if ok && to < n { model[s]!.rows.removeSubrange(to...); model[s]!.guaranteed = false; seen.insert("truncate") }
                if !ok { seen.insert("truncate.refused") }
            } else {
                let s = ids[Int(rng.next() % UInt64(ids.count))]
                pool.free(s)
                model[s] = nil
            }
            // Invariants: each block referenced exactly refCount times; free = blocks - referenced;
            // promised ≤ free; every value a query from the next position reads is the one written.
            var refs: [Int32: Int] = [:]
            var promised = 0
            for (s, m) in model {
                let t = pool.blockTable(of: s)!
                #expect(t.length == m.rows.count && t.computed == m.rows.count)
                promised += t.promised
                for ids in t.groups { for id in ids where id != BlockTable.nullBlock { refs[id, default: 0] += 1 } }
                for p in 0..<m.rows.count {
                    for l in 0..<3 {
                        if let w = windows[l], p < m.rows.count - w + 1 { continue }   // outside the next query's window
                        let got = readBack(pool, s, layer: l, position: p)
                        #expect(got.k == row(m.rows[p][0], l) && got.v == row(-m.rows[p][0], l), "step \(step) seq \(s) layer \(l) position \(p)")
                    }
                }
            }
            for (id, n) in refs { #expect(pool.refCount(block: id) == n, "step \(step) block \(id)") }
            #expect(pool.freeBlocks == pool.numBlocks - refs.count, "step \(step)")
            #expect(pool.promisedFreeBlocks == promised && promised <= pool.freeBlocks, "step \(step)")
        }
        for s in model.keys { pool.free(s) }
        #expect(pool.freeBlocks == pool.numBlocks && pool.promisedFreeBlocks == 0)
        for op in ["admit.ok", "admit.later", "admitted.ok", "fork", "grow.ok", "grow.later", "truncate", "truncate.refused"] { #expect(seen.contains(op), "never exercised \(op)") }
    }
}
