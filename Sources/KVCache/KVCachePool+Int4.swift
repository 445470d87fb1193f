import CKernels
import Foundation
import KvantCore

// int4_pertoken (issue 16; docs/kv-cache.md "4-bit KV"): 4-bit rows in the pool, and per sequence an int8 copy of
// its most recent blocks and of token 0 (KIVI's residual, Liu et al. 2024), read by attention instead of the
// 4-bit rows for those positions.

/// Where a sequence's int8 residual rows live: `slots` block slots of the `int8_pertoken` block layout
/// (K `[numKVHeads, blockSize, headDim]` int8, V, then fp32 K and V scales `[numKVHeads, blockSize]`) for every
/// layer; slot `s` of layer `l` at `(s · numLayers + l) · blockStride`. Logical block `b` of the sequence goes to
/// slot `b mod ringBlocks`; slot `ringBlocks` holds token 0 (the attention sink).
struct KVResidualLayout: Sendable {
    /// Blocks of each query's recent past read at int8: by default the query's own block and the 3 before it
    /// (measured: docs/kv-cache.md).
    let recentBlocks: Int
    /// Block slots of the ring: `recentBlocks` + the blocks one prefill micro-batch spans + 1, so that a prefill
    /// micro-batch (all its positions written before any is attended) still finds every query's recent blocks.
    /// The micro-batch is the pool's `prefillChunk`; a pass writing more positions of one sequence would push its
    /// first queries' recent blocks out of the ring (`ForwardSession` splits or refuses such passes).
    let ringBlocks: Int
    let blockSize: Int
    let numLayers: Int
    let blockStride: Int
    let vOffset: Int
    let ksOffset: Int
    let vsOffset: Int
    var slots: Int { ringBlocks + 1 }
    /// Bytes of one sequence's residual (all layers).
    var bytes: Int { slots * numLayers * blockStride }

    init(spec: KVCacheSpec, prefillChunk: Int, recentBlocks: Int) {
        let H = spec.numKVHeads, B = spec.blockSize, D = spec.headDim
        blockSize = B
        numLayers = spec.numLayers
        self.recentBlocks = recentBlocks
        ringBlocks = recentBlocks + (prefillChunk + B - 1) / B + 1
        vOffset = H * B * D
        ksOffset = 2 * H * B * D
        vsOffset = ksOffset + H * B * 4
        blockStride = (vsOffset + H * B * 4 + 63) & ~63
    }
}

/// One sequence's int8 residual rows (layout `KVResidualLayout`), in slot `slot` of the pool's ring arena (carved out
/// of `kv_cache_bytes`: `KVCachePool.residualRings`). Per layer it holds the positions `lo ..< hi` (contiguous, the
/// latest written) and, when `sink` is set, position 0.
/// Mutated only by `KVCachePool.write` of its sequence; like the pool's blocks, a layer's rows must not be
/// written while that layer of the sequence is attended. The pool returns the slot when it drops the ring.
final class KVResidualRing: @unchecked Sendable {
    let mem: UnsafeMutableRawPointer
    let slot: Int
    var lo: [Int]
    var hi: [Int]
    var sink: [Bool]

    init(_ layout: KVResidualLayout, mem: UnsafeMutableRawPointer, slot: Int) {
        self.mem = mem
        self.slot = slot
        lo = .init(repeating: 0, count: layout.numLayers)
        hi = lo
        sink = .init(repeating: false, count: layout.numLayers)
    }

    /// Records that `position` of `layer` is (re)written: appending extends the held range, rewriting inside it
    /// drops everything after it, anything else restarts it; the range never spans more than `ringBlocks`
    /// logical blocks (older positions fall out and are read at int4).
    func note(layer l: Int, position p: Int, layout: KVResidualLayout) {
        if p == hi[l] || (p >= lo[l] && p < hi[l]) {
            hi[l] = p + 1
        } else {
            lo[l] = p; hi[l] = p + 1
        }
        let B = layout.blockSize
        lo[l] = max(lo[l], ((hi[l] - 1) / B - layout.ringBlocks + 1) * B)
        if p == 0 { sink[l] = true }
    }
}

extension KVCachePool {
    /// Residual rings an `int4_pertoken` pool reserves: one per sequence that may be live at once (`maxNumSeqs`)
    /// plus, with prefix caching, the `retiredRingLimit` rings of freed sequences kept for prefix-cache hits.
    /// 0 for other dtypes or without a residual (`int4RecentBlocks` 0).
    public static func residualRingCount(spec: KVCacheSpec, maxNumSeqs: Int, int4RecentBlocks: Int = 4,
                                         enablePrefixCaching: Bool = true) -> Int {
        guard spec.dtype.resolved == .int4PerToken, int4RecentBlocks > 0 else { return 0 }
        return max(1, maxNumSeqs) + (enablePrefixCaching ? retiredRingLimit : 0)
    }

    /// Bytes of `kv_cache_bytes` an `int4_pertoken` pool sets aside for its residual rings before it sizes its
    /// blocks: `residualRingCount · ` one ring's bytes (`residualBytesPerSequence`); 0 for other dtypes.
    /// `prefillChunk`: the pool's (the daemon's is `max_num_batched_tokens`, 64 by default).
    /// Gemma 3 270M, block_size 16, max_num_seqs 16, prefix caching: 64-token chunks 20 · 1 497 600 =
    /// 29 952 000 bytes; 512-token micro-batches 20 · 5 690 880 = 113 817 600 bytes.
    public static func residualReserveBytes(spec: KVCacheSpec, maxNumSeqs: Int, prefillChunk: Int = 512,
                                            int4RecentBlocks: Int = 4, enablePrefixCaching: Bool = true) -> Int {
        let n = residualRingCount(spec: spec, maxNumSeqs: maxNumSeqs, int4RecentBlocks: int4RecentBlocks,
                                  enablePrefixCaching: enablePrefixCaching)
        guard n > 0 else { return 0 }
        return n * KVResidualLayout(spec: spec, prefillChunk: max(1, prefillChunk), recentBlocks: int4RecentBlocks).bytes
    }
}

extension KVCachePool {
    /// `int4_pertoken`: bytes of the int8 residual ring of one sequence (taken from the pool's ring arena at its
    /// first write, returned when it is freed and its ring is not kept for prefix caching):
    /// `(ringBlocks + 1) · numLayers` int8_pertoken blocks; 0 for other dtypes.
    /// Gemma 3 270M with block_size 16: 64-token chunks (the daemon's default `max_num_batched_tokens`)
    /// 10 · 18 · 8320 B = 1 497 600 B; 512-token micro-batches 38 · 18 · 8320 B = 5 690 880 B.
    public var residualBytesPerSequence: Int { residual?.bytes ?? 0 }

    /// Stores one token's rotated K and V rows of one layer as int4 (`kDst`, `vDst`, per head) and as int8 in the
    /// sequence's residual ring. `kr`/`vr`: `[numKVHeads, headDim]` scratch, already rotated.
    func storeInt4(layer: Int, position: Int, ring: KVResidualRing?, blk: UnsafeMutableRawPointer,
                   kr: UnsafeMutablePointer<Float>, vr: UnsafeMutablePointer<Float>) {
        let B = spec.blockSize, H = spec.numKVHeads, D = spec.headDim
        let off = position % B
        for h in 0..<H {
            kv_store_row_q4k(kr + h * D, blk + (h * B + off) * rowBytes, Int32(D))
            kv_store_row_q4v(vr + h * D, blk + vOffset + (h * B + off) * vRowBytes, Int32(D))
        }
        guard let ring, let L = residual else { return }
        ring.note(layer: layer, position: position, layout: L)
        func store(slot: Int, off: Int) {
            let rb = ring.mem + (slot * L.numLayers + layer) * L.blockStride
            for h in 0..<H {
                let k = kr + h * D, v = vr + h * D
                let ks = kv_amax(k, Int32(D)) / 127, vs = kv_amax(v, Int32(D)) / 127
                (rb + L.ksOffset).assumingMemoryBound(to: Float.self)[h * B + off] = ks
                (rb + L.vsOffset).assumingMemoryBound(to: Float.self)[h * B + off] = vs
                _ = kv_store_row(Int32(KV_DT_I8_TOKEN), k, rb + (h * B + off) * D, Int32(D), ks)
                _ = kv_store_row(Int32(KV_DT_I8_TOKEN), v, rb + L.vOffset + (h * B + off) * D, Int32(D), vs)
            }
        }
        store(slot: (position / B) % L.ringBlocks, off: off)
        if position == 0 { store(slot: L.ringBlocks, off: 0) }
    }

    /// The residual ring of a sequence, created on first use (lock held by the caller) in a free slot of the ring
    /// arena; nil when every slot is held by a live sequence (more live sequences than the pool's `maxNumSeqs`:
    /// the sequence is then read at int4 only, less accurate, never wrong; counted in `residualRingsUnavailable`).
    /// `sparing`: a retired ring that must not be evicted for it (the source of a prefix-cache hit).
    func residualRing(_ seq: SequenceID, sparing: KVResidualRing? = nil) -> KVResidualRing? {
        guard residual != nil else { return nil }
        if let r = residuals[seq] { return r }
        if ringless.contains(seq) { return nil }
        guard let r = takeRing(sparing: sparing) else {
            ringless.insert(seq)   // stays int4-only (no ring that starts mid-sequence)
            residualRingMisses += 1
            return nil
        }
        residuals[seq] = r
        return r
    }

    /// A ring in a free arena slot (lock held), evicting the oldest retired ring (other than `sparing`) when no slot
    /// is free; nil when live sequences hold every slot.
    func takeRing(sparing: KVResidualRing? = nil) -> KVResidualRing? {
        guard let L = residual else { return nil }
        if freeRingSlots.isEmpty, let i = retiredRings.firstIndex(where: { $0.ring !== sparing }) {
            releaseRing(retiredRings.remove(at: i).ring)
        }
        guard let slot = freeRingSlots.popLast() else { return nil }
        return KVResidualRing(L, mem: ringArena! + slot * L.bytes, slot: slot)
    }

    /// Returns a ring's slot to the arena (lock held); the ring must no longer be referenced by the pool.
    func releaseRing(_ ring: KVResidualRing) {
        freeRingSlots.append(ring.slot)
    }

    /// A copy of `ring` in a free slot (lock held; `fork`), nil when none is free (the caller marks the child ringless).
    func copyRing(_ ring: KVResidualRing) -> KVResidualRing? {
        guard let L = residual, let c = takeRing() else { return nil }
        c.mem.copyMemory(from: ring.mem, byteCount: L.bytes)
        c.lo = ring.lo; c.hi = ring.hi; c.sink = ring.sink
        return c
    }

    /// int4 attention in the cache's (rotated) basis: keys `first...position`, where the query's recent blocks
    /// (`max(first, (position / B − 3) · B) ... position`, as far as the ring holds them) and token 0 are read from
    /// the int8 residual and the rest from the 4-bit blocks; the partial softmaxes are merged (`kv_attend_merge`).
    /// With `threads > 1` (the caller's split-K part count) the 4-bit range is split into that many parts of equal work
    /// counting the int8 ring and sink with the last one, run over threads like `attendInCacheBasis`'s split-K.
    func attendInt4(table: BlockTable, ring: KVResidualRing?, layer: Int, first: Int, position: Int, threads: Int,
                    query: UnsafePointer<Float>, numHeads: Int, scale: Float, output: UnsafeMutablePointer<Float>) {
        let B = spec.blockSize
        let L = residual ?? KVResidualLayout(spec: spec, prefillChunk: 1, recentBlocks: 1)   // unused without a ring
        let recentStart = max(first, (position / B - (L.recentBlocks - 1)) * B)
        var resStart = position + 1
        var useSink = false
        if let ring {
            let lo = ring.lo[layer], hi = ring.hi[layer]
            if lo <= position && position < hi { resStart = max(recentStart, lo) }
            useSink = first == 0 && ring.sink[layer] && resStart > 0
        }
        // Segments: (0 = int4 blocks, 1 = ring, 2 = sink), first, last.
        var segs: [(Int, Int, Int)] = []
        if useSink { segs.append((2, 0, 0)) }
        let lowFirst = useSink ? 1 : first
        if lowFirst <= resStart - 1 {
            // `threads` parts of equal work over all keys (the caller's split-K count): the 4-bit range is cut so that
            // its last part plus the int8 ring (and the sink) weigh what each other part does. Cutting the 4-bit
            // range alone left a 512-token window layer in one 448-key part beside a 64-key ring: one thread idle.
            let keys = resStart - lowFirst
            let total = position - first + 1
            let parts = threads > 1 ? max(1, min(threads, keys / 64, 62)) : 1
            let share = (total + parts - 1) / parts
            var start = lowFirst
            for p in 1...parts {
                var end = p == parts ? resStart : min(resStart, lowFirst + p * share)
                if p < parts { end = end / B * B }   // on a block start (an empty part joins the next)
                guard end > start else { continue }
                segs.append((0, start, end - 1))
                start = end
            }
        }
        if resStart <= position { segs.append((1, resStart, position)) }

        let lb0 = resStart / B
        let ringIDs = resStart <= position ? (lb0...(position / B)).map { Int32($0 % L.ringBlocks) } : [0]
        let sinkID: [Int32] = [Int32(L.ringBlocks)]
        let H = Int32(spec.numKVHeads), D = Int32(spec.headDim), BB = Int32(B)
        let avx = Int32(useAVX512 ? 1 : 0)
        table.groups[groupOfLayer[layer]].withUnsafeBufferPointer { ids in
            ringIDs.withUnsafeBufferPointer { rids in
                sinkID.withUnsafeBufferPointer { sid in
                    let low = kv_layer_view(
                        base: UnsafePointer(layerBase(layer).assumingMemoryBound(to: UInt8.self)),
                        block_stride: pageStride, v_offset: vOffset, ks_offset: 0, vs_offset: 0,
                        static_scales: nil, static_v_scales: nil, block_ids: ids.baseAddress,
                        dtype: Int32(KV_DT_Q4), num_kv_heads: H, head_dim: D, block_size: BB, use_avx512: avx,
                        numerics: Int32(KV_NUMERICS_DEFAULT))
                    func ringView(_ bids: UnsafePointer<Int32>?) -> kv_layer_view {
                        kv_layer_view(
                            base: UnsafePointer((ring!.mem + layer * L.blockStride).assumingMemoryBound(to: UInt8.self)),
                            block_stride: L.numLayers * L.blockStride, v_offset: L.vOffset, ks_offset: L.ksOffset,
                            vs_offset: L.vsOffset, static_scales: nil, static_v_scales: nil, block_ids: bids,
                            dtype: Int32(KV_DT_I8_TOKEN), num_kv_heads: H, head_dim: D, block_size: BB,
                            use_avx512: avx, numerics: Int32(KV_NUMERICS_DEFAULT))
                    }
                    let views: [kv_layer_view] = [
                        low,
                        ring == nil ? low : ringView(rids.baseAddress! - lb0),   // indexed by logical block
                        ring == nil ? low : ringView(sid.baseAddress),
                    ]
                    if segs.count == 1 {
                        var v = views[segs[0].0]
                        kv_attend(&v, Int32(segs[0].1), Int32(segs[0].2), query, Int32(numHeads), scale, output)
                        return
                    }
                    let n = segs.count, hd = numHeads * spec.headDim
                    withUnsafeTemporaryAllocation(of: Float.self, capacity: n * (hd + 2 * numHeads)) { buf in
                        let acc = buf.baseAddress!, m = acc + n * hd, l = m + n * numHeads
                        let run = { (i: Int) in
                            var v = views[segs[i].0]
                            kv_attend_partial(&v, Int32(segs[i].1), Int32(segs[i].2), query, Int32(numHeads), scale,
                                              acc + i * hd, m + i * numHeads, l + i * numHeads)
                        }
                        if threads > 1 { DispatchQueue.concurrentPerform(iterations: n, execute: run) }
                        else { for i in 0..<n { run(i) } }
                        kv_attend_merge(Int32(n), Int32(numHeads), Int32(spec.headDim), acc, m, l, output)
                    }
                }
            }
        }
    }
}

// Prefix caching for int4_pertoken (docs/serving.md "Prefix caching and int4_pertoken"). A sequence continued
// after a hit of k blocks must read what a cold run reads: the 4-bit rows of positions 0 ..< k·B (the shared
// cached blocks) and, for its first queries, the int8 rows of the hit's last `recentBlocks − 1` blocks and of
// token 0. Those int8 rows depend on everything before them (each position's K/V comes out of attention over
// its past), so they cannot be rebuilt from the 4-bit blocks or recomputed locally; they are copied from a ring
// that holds them: the ring of a live sequence (the other choices of an `n > 1` request, a concurrent request
// with the same prefix) or of one of the last `retiredRingLimit` freed sequences (a conversation's next turn,
// a repeated prompt). A hit is shortened to the longest one some ring covers.
extension KVCachePool {
    /// Freed sequences whose residual rings are kept as sources for prefix-cache hits (each
    /// `residualBytesPerSequence` bytes of the ring arena, reserved beside the `maxNumSeqs` live rings).
    static let retiredRingLimit = 4

    /// Keeps the ring of a freed sequence (lock held) as a source for later hits, when it can serve one.
    /// Otherwise, and for the oldest beyond `retiredRingLimit`, its arena slot is returned.
    func retireRing(_ ring: KVResidualRing, hashes: [BlockHash]) {
        guard prefixCachingEnabled, !hashes.isEmpty else { releaseRing(ring); return }
        retiredRings.append((hashes, ring))
        while retiredRings.count > Self.retiredRingLimit { releaseRing(retiredRings.removeFirst().ring) }
    }

    /// Keeps a copy of `seq`'s residual ring as it is now among the rings kept for prefix-cache hits (the
    /// `retiredRingLimit` most recent; int4_pertoken with prefix caching; a no-op otherwise, or without a ring, a
    /// hashed block or a slot). The executor calls it when a prompt has just been prefilled: the ring then holds the
    /// prompt's last blocks, which a later request sharing the prompt's beginning (a system prompt followed by a
    /// short question, a repeated prompt) needs at int8, while `seq`'s own ring moves on with its answer (a ring
    /// holds a sequence's last `ringBlocks` blocks: 9 at 64-token chunks). The copy's rows are final for every whole
    /// block it covers (`residualSource`'s argument), so hits served from it equal a cold run.
    public func checkpointResidual(_ seq: SequenceID) {
        lock.lock(); defer { lock.unlock() }
        guard residual != nil, prefixCachingEnabled, let r = residuals[seq], let t = tables[seq], !t.blockHashes.isEmpty,
              let copy = copyRing(r) else { return }
        retireRing(copy, hashes: t.blockHashes)
    }

    /// A ring holding, in every layer, token 0 and the int8 rows of logical blocks
    /// `max(0, k − recentBlocks + 1) ..< k` of the chain ending in `hashes[k − 1]` (the blocks the queries after a
    /// hit of `k` blocks read at int8), or nil (lock held; `k ≥ 1`). The ring's rows of those blocks are final:
    /// its sequence wrote them for the same tokens (equal chained hash) and, like every computation of the pool,
    /// bit for bit as any other sequence with that prefix does. A live sequence's ring is read here while its own
    /// writes update it outside the lock: `attachCachedPrefix` must not run during another sequence's forward pass
    /// (the engine calls both on its one compute thread).
    func residualSource(hashes: [BlockHash], k: Int) -> KVResidualRing? {
        guard let L = residual else { return nil }
        let first = max(0, k - L.recentBlocks + 1) * L.blockSize, end = k * L.blockSize
        func covers(_ r: KVResidualRing, _ hs: [BlockHash]) -> Bool {
            guard hs.count >= k, hs[k - 1] == hashes[k - 1] else { return false }
            for l in 0..<L.numLayers where !(r.sink[l] && r.lo[l] <= first && r.hi[l] >= end) { return false }
            return true
        }
        for (seq, r) in residuals { if let t = tables[seq], covers(r, t.blockHashes) { return r } }
        for e in retiredRings.reversed() where covers(e.ring, e.hashes) { return e.ring }
        return nil
    }

    /// Gives `seq` (fresh, its hit of `k` blocks just attached; lock held) a ring holding what `source` holds of
    /// blocks `max(0, k − recentBlocks + 1) ..< k` and token 0, as a cold run's ring would hold them at position
    /// `k·B`. Without memory for a ring the sequence reads those positions at int4 (as `write` does then).
    func attachResidual(_ seq: SequenceID, from source: KVResidualRing, k: Int) {
        guard let L = residual, let ring = residualRing(seq, sparing: source) else { return }
        let first = max(0, k - L.recentBlocks + 1)
        let slotBytes = L.numLayers * L.blockStride   // slot s of every layer: contiguous
        for s in Set((first..<k).map { $0 % L.ringBlocks } + [L.ringBlocks]) {
            (ring.mem + s * slotBytes).copyMemory(from: source.mem + s * slotBytes, byteCount: slotBytes)
        }
        for l in 0..<L.numLayers {
            ring.lo[l] = first * L.blockSize
            ring.hi[l] = k * L.blockSize
            ring.sink[l] = true
        }
    }
}
