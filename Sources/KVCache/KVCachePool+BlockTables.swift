import CKernels
import Foundation
import KvantCore

// Sequences and their block tables (one per layer group): create, fork (copy-on-write), free,
// reserve, commit (frees what sliding windows no longer read), truncate.
extension KVCachePool {
    /// A new, empty sequence (no blocks until `reserve`).
    public func createSequence() -> SequenceID {
        lock.lock(); defer { lock.unlock() }
        let id = SequenceID(rawValue: nextSequence)
        nextSequence += 1
        tables[id] = BlockTable(numGroups: groups.count)
        return id
    }

    /// A new sequence sharing all of `seq`'s blocks (reference counts + 1), its length and its committed
    /// tokens. The partially filled last block is copied by whichever sequence next writes into it
    /// (copy-on-write); full blocks stay shared until freed. The child has no admission of its own: its
    /// new blocks (and copies) come from blocks not promised to admitted sequences.
    /// Precondition: `seq` exists (a caller error otherwise).
    public func fork(_ seq: SequenceID) -> SequenceID {
        lock.lock(); defer { lock.unlock() }
        guard let table = tables[seq] else { preconditionFailure("KVCachePool.fork: unknown sequence \(seq)") }
        for ids in table.groups { for id in ids where id != BlockTable.nullBlock { blocks.retain(id) } }
        let child = SequenceID(rawValue: nextSequence)
        nextSequence += 1
        var copy = table
        copy.admission = nil   // the child is not admitted: it grows from blocks nobody was promised
        copy.promised = 0
        tables[child] = copy
        if let r = residuals[seq] {   // int4_pertoken: without a free slot the child reads those positions at int4
            if let c = copyRing(r) { residuals[child] = c } else { ringless.insert(child); residualRingMisses += 1 }
        }
        return child
    }

    /// Drops the sequence and releases its blocks (a block returns to the free queue when no
    /// sequence references it; a sequence's later blocks are queued first, so they are reused first).
    /// Unknown ids are ignored.
    public func free(_ seq: SequenceID) {
        lock.lock(); defer { lock.unlock() }
        guard let table = tables.removeValue(forKey: seq) else { return }
        if let ring = residuals.removeValue(forKey: seq) { retireRing(ring, hashes: table.blockHashes) }
        ringless.remove(seq)
        promisedBlocks -= table.promised
        for ids in table.groups {
            for id in ids.reversed() where id != BlockTable.nullBlock { releaseBlock(id) }
        }
    }

    /// Reserved length of the sequence in tokens (0 for an unknown id).
    public func length(of seq: SequenceID) -> Int {
        lock.lock(); defer { lock.unlock() }
        return tables[seq]?.length ?? 0
    }

    /// Committed length of the sequence (positions whose K/V are written in every layer; 0 for an unknown id).
    public func computedLength(of seq: SequenceID) -> Int {
        lock.lock(); defer { lock.unlock() }
        return tables[seq]?.computed ?? 0
    }

    /// The sequence's block tables (a snapshot), nil for an unknown id.
    public func blockTable(of seq: SequenceID) -> BlockTable? {
        lock.lock(); defer { lock.unlock() }
        return tables[seq]
    }

    /// Grows the sequence to `newLength` token positions, allocating the blocks of every layer group
    /// (a sliding-window group only from the first block the window of the next query position
    /// `computed` reads) and copying a shared, partially filled last block that the new positions will
    /// be written into. New blocks come first from the sequence's promise (`admit`), then from the free
    /// blocks not promised to any sequence.
    /// - Returns: `.ok` (also when `newLength <= length`), `.later` when not enough blocks are free
    ///   now (nothing changes), `.never` when the sequence would hold more blocks than the pool has, the
    ///   length is negative or the sequence is unknown.
    public func reserve(_ seq: SequenceID, newLength: Int) -> AllocationStatus {
        reserve([(seq, newLength)])
    }

    /// `reserve` of several sequences at once, all or nothing: `.ok` when every one grew; otherwise
    /// nothing changes and the worst status is returned (`.never` before `.later`). A sequence listed
    /// twice counts with its largest length.
    public func reserve(_ requests: [(SequenceID, Int)]) -> AllocationStatus {
        lock.lock(); defer { lock.unlock() }
        var want: [SequenceID: Int] = [:]
        for (seq, n) in requests {
            guard tables[seq] != nil, n >= 0 else { return .never }
            want[seq] = max(want[seq] ?? 0, n)
        }
        var unpromised = 0
        for (seq, n) in want {
            let table = tables[seq]!
            guard n > table.length else { continue }
            guard let need = blocksToGrow(table, to: n) else { return .never }
            unpromised += max(0, need - table.promised)
        }
        if unpromised > blocks.numFree - promisedBlocks { return .later }
        for (seq, n) in want.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            var table = tables[seq]!
            guard n > table.length else { continue }
            grow(&table, to: n)
            tables[seq] = table
        }
        return .ok
    }

    /// Admission control: promises `seq` (fresh, not yet grown) the blocks it will hold at most while it
    /// grows as `KVAdmission` describes — its `promptLength` prompt prefilled in micro-batches of
    /// `prefillChunk` tokens, then decoded one token at a time up to `maxLength` positions, each step
    /// committed (`commit`) so sliding-window groups give back what their window left behind
    /// (`peakBlocks`). Promised blocks stay in the free queue but no other sequence may take them; each
    /// block the sequence allocates uses one up, each block its window frees comes back to the promise
    /// while it may still need it. So an admitted sequence never meets a full cache while it grows.
    /// - Returns: `.ok`; `.later` when fewer blocks are free and unpromised now (nothing changes);
    ///   `.never` when it needs more blocks than the pool has, the lengths are out of range
    ///   (`0 ≤ promptLength ≤ maxLength`), the sequence is unknown, already admitted or already grown.
    ///
    /// `onDemand: true` (vLLM V1's admission, used by the daemon): `.never` when the whole growth to `maxLength`
    /// would not fit in the empty pool even as one prompt of `maxLength` tokens (a preempted sequence is
    /// recomputed as a prompt: the `capacityTokens` rule), but only the prompt and the first decode position
    /// (`KVAdmission(promptLength, min(promptLength + 1, maxLength))`) are promised; later positions take
    /// free unpromised blocks as they come (`reserve`), and when there are none the caller preempts a
    /// sequence. While other sequences hold blocks, `watermark` more blocks must stay free after the promise
    /// (`.later` otherwise), so a new sequence does not at once force a preemption.
    public func admit(_ seq: SequenceID, promptLength: Int, maxLength: Int, onDemand: Bool = false,
                      watermark: Int = 0) -> AllocationStatus {
        lock.lock(); defer { lock.unlock() }
        guard var table = tables[seq], table.admission == nil, table.length == 0,
              promptLength >= 0, promptLength <= maxLength else { return .never }
        // On demand, a preempted sequence is recomputed as a prompt of up to `maxLength` tokens later: the whole
        // growth must fit however it ends up split between prompt and generation (as `capacityTokens` counts).
        let whole = KVAdmission(promptLength: onDemand ? maxLength : promptLength, maxLength: maxLength)
        if peakBlocks(whole, from: 0) > numBlocks { return .never }
        let admission = KVAdmission(promptLength: promptLength, maxLength: onDemand ? min(promptLength + 1, maxLength) : maxLength)
        let peak = peakBlocks(admission, from: 0)
        let othersLive = blocks.numFree < numBlocks || promisedBlocks > 0
        if peak + (onDemand && othersLive ? max(0, watermark) : 0) > blocks.numFree - promisedBlocks { return .later }
        table.admission = admission
        table.promised = peak
        promisedBlocks += peak
        tables[seq] = table
        return .ok
    }

    /// Blocks a sequence admitted for `admission` holds at most at any one time from committed position
    /// `computed` on (a fresh sequence: 0). A step running queries `s ..< e` (a prefill micro-batch of at most
    /// `prefillChunk` tokens, or one decode position) holds per full-attention group the blocks of positions
    /// `0 ..< e`, per sliding-window group (window `w`) those of positions `max(0, s - w + 1) ..< e`; the
    /// result is the largest sum over the steps. Only a few steps need evaluating: past the first window a
    /// step's window spans repeat with its start modulo `blockSize` while the full groups only grow, so a
    /// step is dominated by the one `blockSize` positions (or a whole period of micro-batches) later.
    public func peakBlocks(_ admission: KVAdmission, from computed: Int = 0) -> Int {
        let B = spec.blockSize, L = admission.maxLength, P = admission.promptLength, T = prefillChunk
        guard L > 0 else { return 0 }
        var full = 0
        var windows: [Int: Int] = [:]   // window -> number of groups with it
        for group in groups {
            if let w = group.window { windows[w, default: 0] += 1 } else { full += 1 }
        }
        let maxWindow = windows.keys.max() ?? 1
        func held(_ s: Int, _ e: Int) -> Int {
            var n = full * ((e - 1) / B + 1)
            for (w, count) in windows { n += count * ((e - 1) / B - max(0, s - w + 1) / B + 1) }
            return n
        }
        var peak = 0
        // Prefill micro-batches k = 0 ..< n starting at s0 + k·T: those still inside the first window, and the
        // last full period of micro-batches (B / gcd(T, B) of them) plus the partial last one.
        let s0 = min(computed, P)
        if s0 < P {
            func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
            let n = (P - s0 + T - 1) / T, period = B / gcd(T, B)
            let ramp = min(n, max(0, (maxWindow - 1 - s0 + T - 1) / T))   // micro-batches starting before w - 1
            for k in Array(0..<ramp) + Array(max(ramp, n - period - 1)..<n) {
                let s = s0 + k * T
                peak = max(peak, held(s, min(P, s + T)))
            }
        }
        // Decode steps p ∈ [max(computed, P), L): the last blockSize of them dominate the others.
        let d0 = max(computed, P)
        if d0 < L {
            for p in max(d0, L - B)..<L { peak = max(peak, held(p, p + 1)) }
        }
        return peak
    }

    /// Records that positions `start ..< start + tokens.count` of `seq` are computed (their K/V written in
    /// every layer) with these token ids, and frees the blocks of sliding-window groups that lie wholly
    /// before the window of the next query position (`start + tokens.count`): `(p - w + 1)` is the first key
    /// position `p` reads. A `start` beyond the committed length counts the positions between as computed
    /// (token ids unknown); a `start` before it rewrites the tokens from there.
    /// Precondition: known sequence, `start + tokens.count <= length`.
    public func commit(_ seq: SequenceID, tokens: some Collection<Int32>, from start: Int) {
        lock.lock(); defer { lock.unlock() }
        guard var table = tables[seq] else { preconditionFailure("KVCachePool.commit: unknown sequence \(seq)") }
        let end = start + tokens.count
        precondition(start >= 0 && end <= table.length, "KVCachePool.commit: positions \(start)..<\(end) outside the reserved length \(table.length)")
        if start < table.blockHashes.count * spec.blockSize { dropHashes(&table, from: start / spec.blockSize) }
        if start < table.tokens.count { table.tokens.removeSubrange(start...) }
        if start > table.tokens.count { table.tokens += repeatElement(-1, count: start - table.tokens.count) }
        table.tokens += tokens
        table.computed = end
        recordEpochs(&table)     // before the windows release blocks: every block's scale epoch is known
        hashFullBlocks(&table)   // before the windows release blocks: every full block is cached with its hash
        let freed = releaseOutOfWindow(&table)
        rebalancePromise(&table, freed: freed)
        tables[seq] = table
    }

    /// Shortens the sequence to `newLength` tokens (e.g. to regenerate from an earlier position),
    /// releasing the blocks past it (an admitted sequence keeps them promised while its admission may
    /// still need them). Growing again later goes through `reserve`, which copies a shared partially
    /// filled last block before it is written. Negative lengths count as 0.
    /// - Returns: false when a sliding-window group already freed blocks the window of position
    ///   `newLength` reads (nothing changes then); true otherwise (also a no-op when `newLength >= length`
    ///   or the sequence is unknown).
    @discardableResult
    public func truncate(_ seq: SequenceID, to newLength: Int) -> Bool {
        lock.lock(); defer { lock.unlock() }
        guard var table = tables[seq], newLength < table.length else { return true }
        let n = max(0, newLength)
        for (gi, group) in groups.enumerated() where table.firstLive[gi] > firstNeededBlock(group, computed: n) {
            return false
        }
        let keep = n / spec.blockSize + (n % spec.blockSize == 0 ? 0 : 1)
        // Blocks past `n` keep their hashes (their bytes stay valid while cached); a block cut in the middle
        // will be rewritten, so it leaves the prefix cache unless another sequence shares it (then the
        // rewrite goes to a copy).
        if n / spec.blockSize < table.blockHashes.count {
            if n % spec.blockSize != 0 {
                for gi in groups.indices where n / spec.blockSize < table.groups[gi].count {
                    let id = table.groups[gi][n / spec.blockSize]
                    if id != BlockTable.nullBlock, blocks.refCount(id) == 1 { uncache(id) }
                }
            }
            table.blockHashes.removeSubrange((n / spec.blockSize)...)
        }
        var freed = 0
        for gi in groups.indices {
            while table.groups[gi].count > keep {
                let id = table.groups[gi].removeLast()
                if id != BlockTable.nullBlock, releaseBlock(id) { freed += 1 }
            }
            table.firstLive[gi] = min(table.firstLive[gi], table.groups[gi].count)
        }
        table.length = n
        table.computed = min(table.computed, n)
        if table.tokens.count > n { table.tokens.removeSubrange(n...) }
        rebalancePromise(&table, freed: freed)
        tables[seq] = table
        return true
    }

    /// The first position from which `seq` can be (re)computed: every window its queries read is still
    /// in the cache (0 unless a sliding-window group freed blocks; never more than the committed length).
    public func earliestRecomputablePosition(of seq: SequenceID) -> Int {
        lock.lock(); defer { lock.unlock() }
        guard let table = tables[seq] else { return 0 }
        var p = 0
        for (gi, group) in groups.enumerated() where table.firstLive[gi] > 0 {
            p = max(p, table.firstLive[gi] * spec.blockSize + (group.window ?? 1) - 1)
        }
        return min(p, table.computed)
    }

    /// Free blocks promised to admitted sequences (`admit`) and not yet allocated: no other sequence may take them.
    public var promisedFreeBlocks: Int {
        lock.lock(); defer { lock.unlock() }
        return promisedBlocks
    }

    /// Number of free blocks now.
    public var freeBlocks: Int {
        lock.lock(); defer { lock.unlock() }
        return blocks.numFree
    }

    /// Reference count of a physical block (0 = free or out of range); for tests and stats.
    public func refCount(block: Int32) -> Int {
        lock.lock(); defer { lock.unlock() }
        guard block >= 0, Int(block) < numBlocks else { return 0 }
        return blocks.refCount(block)
    }

    // MARK: under the lock

    /// The first logical block a group must keep for queries at positions >= `computed`.
    func firstNeededBlock(_ group: KVLayerGroup, computed: Int) -> Int {
        guard let w = group.window else { return 0 }
        return max(0, computed - w + 1) / spec.blockSize
    }

    /// Frees the sliding-window blocks no query at or after `table.computed` reads. Returns how many
    /// went back to the free queue (a block still shared with a fork only loses a reference), plus, for an
    /// admitted sequence, the credits it took from shared blocks a prefix-cache hit paid for (`blockCredit`;
    /// moved out of `promisedBlocks` here, so `rebalancePromise` adds them back to the sequence's promise).
    @discardableResult
    func releaseOutOfWindow(_ table: inout BlockTable) -> Int {
        var freed = 0
        for (gi, group) in groups.enumerated() where group.window != nil {
            let cut = min(firstNeededBlock(group, computed: table.computed), table.groups[gi].count)
            guard cut > table.firstLive[gi] else { continue }
            for j in table.firstLive[gi]..<cut {
                let id = table.groups[gi][j]
                if releaseBlock(id) {
                    freed += 1
                } else if table.admission != nil, blockCredit[Int(id)] > 0 {
                    blockCredit[Int(id)] -= 1
                    promisedBlocks -= 1
                    freed += 1
                }
                table.groups[gi][j] = BlockTable.nullBlock
            }
            table.firstLive[gi] = cut
        }
        return freed
    }

    /// After an admitted sequence freed `freed` blocks: they rejoin its promise, which is then capped at
    /// what it may still need (`peakBlocks` from its committed position minus the blocks it holds, plus the
    /// sliding-window blocks it shares with other sequences: releasing one of those frees nothing, so the
    /// block that replaces it comes from the credit a prefix-cache hit left on it, `blockCredit`).
    /// Keeps `numFree >= promisedBlocks` (only blocks that really went back to the free queue are added).
    func rebalancePromise(_ table: inout BlockTable, freed: Int) {
        guard let admission = table.admission else { return }
        var sharedWindowBlocks = 0
        for (gi, group) in groups.enumerated() where group.window != nil {
            for id in table.groups[gi][table.firstLive[gi]...] where id != BlockTable.nullBlock && blocks.refCount(id) > 1 {
                sharedWindowBlocks += 1
            }
        }
        let need = max(0, peakBlocks(admission, from: table.computed) - table.heldBlocks + sharedWindowBlocks)
        let promised = min(table.promised + freed, need)
        promisedBlocks += promised - table.promised
        table.promised = promised
    }

    /// New blocks (and copies of a shared partial last block) `reserve` takes to grow `table` to `newLength`
    /// (> its length); nil when the sequence would then hold more blocks than the pool has.
    func blocksToGrow(_ table: BlockTable, to newLength: Int) -> Int? {
        let B = spec.blockSize
        let last = (newLength - 1) / B   // last logical block; no overflow for huge lengths
        var held = 0, fresh = 0, copies = 0
        for (gi, group) in groups.enumerated() {
            let ids = table.groups[gi]
            let first = max(table.firstLive[gi], firstNeededBlock(group, computed: table.computed))
            // Blocks [first, ids.count) exist (only a prefix is ever freed); [ids.count, last] are new.
            held += ids.count - table.firstLive[gi]
            fresh += max(0, last - max(first, ids.count) + 1)
            if table.length % B != 0, let id = ids.last, id != BlockTable.nullBlock, mustCopy(id) { copies += 1 }
        }
        if held > numBlocks || fresh > numBlocks - held { return nil }
        return fresh + copies
    }

    /// Grows `table` to `newLength` (checked by `blocksToGrow` against the free blocks).
    func grow(_ table: inout BlockTable, to newLength: Int) {
        let B = spec.blockSize
        let last = (newLength - 1) / B
        for (gi, group) in groups.enumerated() {
            if table.length % B != 0, let id = table.groups[gi].last, id != BlockTable.nullBlock, mustCopy(id) {
                copyOnWrite(&table, group: gi, logicalBlock: table.groups[gi].count - 1)
            }
            let first = max(table.firstLive[gi], firstNeededBlock(group, computed: table.computed))
            while table.groups[gi].count < first { table.groups[gi].append(BlockTable.nullBlock) }
            if table.groups[gi].count == first { table.firstLive[gi] = first }
            while table.groups[gi].count <= last { table.groups[gi].append(allocateBlock(for: &table)!) }
        }
        table.length = newLength
    }

    /// Free blocks `table` may take now: its promise plus the free blocks nobody was promised.
    func blocksAvailable(to table: BlockTable) -> Int { table.promised + blocks.numFree - promisedBlocks }

    /// True when a write into block `id` must go to a private copy first (shared with another sequence).
    func mustCopy(_ id: Int32) -> Bool { blocks.refCount(id) > 1 }

    /// Drops a reference; true when the block went back to the free queue (releasing the credits left on it).
    @discardableResult
    func releaseBlock(_ id: Int32) -> Bool {
        guard blocks.release(id) else { return false }
        if blockCredit[Int(id)] > 0 {
            promisedBlocks -= Int(blockCredit[Int(id)])
            blockCredit[Int(id)] = 0
        }
        return true
    }

    /// Takes a free block for `table`, from its promise first. nil when none is free.
    func allocateBlock(for table: inout BlockTable) -> Int32? {
        guard let id = blocks.allocate() else { return nil }
        uncache(id)   // evicts a cached block (the least recently freed) before its bytes are overwritten
        if table.promised > 0 {
            table.promised -= 1
            promisedBlocks -= 1
        }
        if isStatic {
            for l in 0..<spec.numLayers { blockEpoch[l * numBlocks + Int(id)] = -1 }
        }
        return id
    }

    /// Replaces logical block `lb` of group `gi` of `table` by a private copy (every layer of the group,
    /// with their epochs and static scales).
    func copyOnWrite(_ table: inout BlockTable, group gi: Int, logicalBlock lb: Int) {
        let old = table.groups[gi][lb]
        guard let new = allocateBlock(for: &table) else {
            preconditionFailure("KVCachePool: no free block for copy-on-write (reserve before writing)")
        }
        (storage + Int(new) * pageStride).copyMemory(from: storage + Int(old) * pageStride, byteCount: pageStride)
        if isStatic {
            let H = spec.numKVHeads
            for l in groups[gi].layers {
                let o = l * numBlocks + Int(old), n = l * numBlocks + Int(new)
                blockEpoch[n] = blockEpoch[o]
                (blockScales + n * H).update(from: blockScales + o * H, count: H)
                (blockVScales + n * H).update(from: blockVScales + o * H, count: H)
            }
        }
        releaseBlock(old)
        table.groups[gi][lb] = new
    }
}
