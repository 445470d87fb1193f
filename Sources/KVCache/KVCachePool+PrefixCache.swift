import Foundation
import KvantCore

/// A cached block's key: its chained hash and the layer group it belongs to (each group caches its own
/// blocks under the same chain of hashes, as vLLM's hybrid KV-cache coordinator does).
struct PrefixKey: Hashable, Sendable {
    var hash: BlockHash
    var group: Int
}

// Automatic prefix caching (vLLM V1's design: `vllm/v1/core/kv_cache_utils.py`, `block_pool.py`,
// `single_type_kv_cache_manager.py`), adapted to layer groups and quantized blocks; see docs/serving.md.
//
// - `commit` gives every full block of a sequence its chained hash (`BlockHash.chain` over the parent
//   hash, the block's token ids and the scale epoch it was written under) and enters the block into
//   `cachedBlocks` under (hash, group) (beside equal blocks other sequences computed).
// - A freed block keeps its hash and waits in the free queue (LRU: the least recently freed is taken
//   first); `allocateBlock` evicts it from `cachedBlocks` when it takes it for new data.
// - `attachCachedPrefix` (before prefill) walks a prompt's full blocks, finds the longest usable hit over
//   every layer group, and hands the sequence those blocks (`retain` if in use, `take` from the free queue
//   if free); the sequence's prefill starts at the hit length.
extension KVCachePool {
    /// Looks the prompt's full blocks up in the prefix cache and gives the fresh sequence `seq` the longest
    /// usable cached prefix: positions `0 ..< hit` with their token ids are then committed (`computedLength`)
    /// and its prefill starts at `hit`.
    ///
    /// The hit is a multiple of `blockSize` and at most `prompt.count - 1` (the last prompt token is always
    /// computed, so its logits come from a real forward pass; vLLM caps the hit the same way). A hit of `k`
    /// blocks needs, in every full-attention group, blocks `0 ..< k` cached, and in every sliding-window group
    /// (window `w`) only the blocks the window of position `k·blockSize` reads (from `(k·B − w + 1) / B`);
    /// the earlier entries of that group's table are `nullBlock`, as if its window had released them. Static
    /// int8 pools hit only blocks written under the epoch the sequence would write them under (the current
    /// one; for a sequence resumed after a preemption, `createSequence(resuming:)`, its blocks' old epochs), so
    /// outputs never depend on what the cache held before a `reload-scales`.
    ///
    /// Blocks taken out of the free queue, and the promise an admitted sequence (`admit`) still needs from
    /// the hit on (its peak minus the blocks it holds, plus the window blocks it shares with other sequences,
    /// whose release frees nothing), come out of its promise and the free blocks nobody was promised; the hit
    /// is shortened when there are not enough. `int4_pertoken`: the hit is also shortened to the longest whose int8
    /// residual rows (token 0 and its last `int4RecentBlocks − 1` blocks) a live or recently freed sequence's ring
    /// holds; they are copied into the sequence's ring (`residualSource`). Counts `prompt.count` queried tokens and `hit` hit tokens
    /// (`stats`).
    /// - Returns: the hit length in tokens; 0 when prefix caching is off, the sequence is unknown or not
    ///   fresh (already grown), or nothing usable is cached.
    @discardableResult
    public func attachCachedPrefix(_ seq: SequenceID, prompt: [Int32]) -> Int {
        lock.lock(); defer { lock.unlock() }
        guard prefixCachingEnabled, var table = tables[seq], table.length == 0, !prompt.isEmpty else { return 0 }
        prefixQueries += Int64(prompt.count)
        let B = spec.blockSize
        let maxBlocks = (prompt.count - 1) / B
        // The epoch each block would be written under: the current one, or a resumed sequence's planned one.
        func epochOf(_ j: Int) -> Int { !isStatic ? 0 : j < table.epochs.count ? Int(table.epochs[j]) : currentEpoch }
        let hasFull = groups.contains { $0.window == nil }
        // The chain of the prompt's full blocks and, per group, whether each is cached.
        var hashes: [BlockHash] = []
        var found: [[Int32?]] = Array(repeating: [], count: groups.count)
        var parent = prefixSeed
        for j in 0..<maxBlocks {
            let h = BlockHash.chain(parent: parent, tokens: prompt[(j * B)..<((j + 1) * B)], epoch: epochOf(j))
            var fullMiss = false
            for gi in groups.indices {
                // Prefer a block in use (sharing it costs no free block) over reviving a free one.
                let ids = cachedBlocks[PrefixKey(hash: h, group: gi)] ?? []
                let id = ids.first { blocks.refCount($0) > 0 } ?? ids.first
                found[gi].append(id)
                if groups[gi].window == nil, id == nil { fullMiss = true }
            }
            hashes.append(h)
            parent = h
            if hasFull, fullMiss { break }
        }
        // The longest k whose blocks every group has: full groups all of 0..<k, window groups the window's.
        func firstNeeded(_ gi: Int, _ k: Int) -> Int {
            guard let w = groups[gi].window else { return 0 }
            return max(0, k * B - w + 1) / B
        }
        var runs: [[Int]] = []   // runs[gi][j]: consecutive cached blocks of group gi ending at j
        for gi in groups.indices {
            var r: [Int] = [], n = 0
            for id in found[gi] { n = id == nil ? 0 : n + 1; r.append(n) }
            runs.append(r)
        }
        func usable(_ k: Int) -> Bool {
            guard k > 0 else { return true }
            for gi in groups.indices where k - firstNeeded(gi, k) > runs[gi][k - 1] { return false }
            return true
        }
        // Free blocks a hit of k blocks takes out of the free queue; the promise the sequence then still needs
        // (its peak from k minus what it holds); and one credit per window block it shares with another
        // sequence (`blockCredit`): whichever of them releases that block first frees nothing and takes the
        // credit instead, so neither runs short. All come out of its promise and the unpromised free blocks.
        func cost(_ k: Int) -> (revived: Int, promise: Int, credits: Int) {
            var revived = 0, held = 0, sharedWindow = 0
            for gi in groups.indices {
                for j in firstNeeded(gi, k)..<k {
                    held += 1
                    if blocks.refCount(found[gi][j]!) == 0 { revived += 1 } else if groups[gi].window != nil { sharedWindow += 1 }
                }
            }
            guard let admission = table.admission else { return (revived, 0, 0) }
            return (revived, max(0, peakBlocks(admission, from: k * B) - held), sharedWindow)
        }
        // int4_pertoken: a hit also needs a ring that holds its int8 residual rows (KVCachePool+Int4.swift).
        func residualOK(_ k: Int) -> (ok: Bool, source: KVResidualRing?) {
            guard residual != nil else { return (true, nil) }
            let s = residualSource(hashes: hashes, k: k)
            return (s != nil, s)
        }
        var k = hashes.count
        var source: KVResidualRing? = nil
        while k > 0 {
            if usable(k) {
                let r = residualOK(k)
                if r.ok {
                    let c = cost(k)
                    if c.revived + c.promise + c.credits <= blocksAvailable(to: table) { source = r.source; break }
                }
            }
            k -= 1
        }
        guard k > 0 else { return 0 }
        // The ring the hit's residual rows go to; without memory for it, no hit (never a silently different output).
        if let source, residualRing(seq, sparing: source) == nil { return 0 }
        let (_, promise, credits) = cost(k)
        for gi in groups.indices {
            let first = firstNeeded(gi, k)
            var ids = [Int32](repeating: BlockTable.nullBlock, count: first)
            for j in first..<k {
                let id = found[gi][j]!
                if blocks.refCount(id) == 0 {
                    blocks.take(id)
                } else {
                    blocks.retain(id)
                    if credits > 0, groups[gi].window != nil { blockCredit[Int(id)] += 1; promisedBlocks += 1 }
                }
                ids.append(id)
            }
            table.groups[gi] = ids
            table.firstLive[gi] = first
        }
        promisedBlocks += promise - table.promised
        table.promised = promise
        table.length = k * B
        table.computed = k * B
        table.tokens = Array(prompt[0..<(k * B)])
        table.blockHashes = Array(hashes[0..<k])
        if isStatic { while table.epochs.count < k { let e = Int32(epochOf(table.epochs.count)); table.epochs.append(e) } }
        tables[seq] = table
        if let source { attachResidual(seq, from: source, k: k) }
        prefixHits += Int64(k * B)
        return k * B
    }

    /// Blocks in the prefix cache (in use or free and not yet evicted), over every layer group.
    public var prefixCachedBlocks: Int {
        lock.lock(); defer { lock.unlock() }
        return numCachedBlocks
    }

    /// The hash the pool gives the full block after `parent` (nil: the chain's start) holding `tokens` when
    /// written under the current scale epoch; for tests and tools.
    public func prefixBlockHash(parent: BlockHash?, tokens: [Int32]) -> BlockHash {
        lock.lock(); defer { lock.unlock() }
        return BlockHash.chain(parent: parent ?? prefixSeed, tokens: tokens, epoch: isStatic ? currentEpoch : 0)
    }

    // MARK: under the lock

    /// Hashes the full committed blocks of `table` not hashed yet and enters them into `cachedBlocks` (called by
    /// `commit` before sliding windows release blocks). The chain stops at a block with an unknown token id
    /// (-1) or, in a static int8 pool, at a block whose layers were written under different scale epochs.
    func hashFullBlocks(_ table: inout BlockTable) {
        guard prefixCachingEnabled else { return }
        let B = spec.blockSize
        let full = min(table.computed, table.tokens.count) / B
        var parent = table.blockHashes.last ?? prefixSeed
        var j = table.blockHashes.count
        while j < full {
            let tokens = table.tokens[(j * B)..<((j + 1) * B)]
            if tokens.contains(-1) { return }
            guard let epoch = blockChainEpoch(table, logicalBlock: j) else { return }
            let h = BlockHash.chain(parent: parent, tokens: tokens, epoch: epoch)
            for gi in groups.indices where j < table.groups[gi].count {
                let id = table.groups[gi][j]
                guard id != BlockTable.nullBlock, blockKey[Int(id)] == nil else { continue }
                let key = PrefixKey(hash: h, group: gi)
                cachedBlocks[key, default: []].append(id)
                blockKey[Int(id)] = key
                numCachedBlocks += 1
            }
            table.blockHashes.append(h)
            parent = h
            j += 1
        }
    }

    /// The scale epoch logical block `j` of `table` was written under in every layer of every group that holds
    /// it (0 without static scales); nil when the layers disagree or one is unwritten.
    func blockChainEpoch(_ table: BlockTable, logicalBlock j: Int) -> Int? {
        guard isStatic else { return 0 }
        var epoch: Int32? = nil
        for (gi, group) in groups.enumerated() where j < table.groups[gi].count {
            let id = table.groups[gi][j]
            guard id != BlockTable.nullBlock else { continue }
            for l in group.layers {
                let e = blockEpoch[l * numBlocks + Int(id)]
                if e < 0 || (epoch != nil && epoch != e) { return nil }
                epoch = e
            }
        }
        return epoch.map(Int.init)
    }

    /// Forgets the hashes of `table`'s blocks from logical block `from` on (their positions are about to be
    /// rewritten); a block only this sequence holds leaves `cachedBlocks` (a shared one is copied before any
    /// write, so its cached bytes stay valid).
    func dropHashes(_ table: inout BlockTable, from: Int) {
        guard from < table.blockHashes.count else { return }
        for gi in groups.indices {
            for j in from..<min(table.blockHashes.count, table.groups[gi].count) {
                let id = table.groups[gi][j]
                if id != BlockTable.nullBlock, blocks.refCount(id) == 1 { uncache(id) }
            }
        }
        table.blockHashes.removeSubrange(from...)
    }

    /// Removes block `id` from `cachedBlocks` (eviction, or its bytes are about to change).
    func uncache(_ id: Int32) {
        guard let key = blockKey[Int(id)] else { return }
        if var ids = cachedBlocks[key], let i = ids.firstIndex(of: id) {
            ids.remove(at: i)
            cachedBlocks[key] = ids.isEmpty ? nil : ids
            numCachedBlocks -= 1
        }
        blockKey[Int(id)] = nil
    }
}
