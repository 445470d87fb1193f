import CKernels
import Foundation
import KvantCore

// Sequences and their block tables: create, fork (copy-on-write), free, reserve, truncate.
extension KVCachePool {
    /// A new, empty sequence (no blocks until `reserve`).
    public func createSequence() -> SequenceID {
        lock.lock(); defer { lock.unlock() }
        let id = SequenceID(rawValue: nextSequence)
        nextSequence += 1
        tables[id] = BlockTable()
        return id
    }

    /// A new sequence sharing all of `seq`'s blocks (reference counts + 1) and its length. The
    /// partially filled last block is copied by whichever sequence next writes into it
    /// (copy-on-write); full blocks stay shared until freed.
    /// Precondition: `seq` exists (a caller error otherwise).
    public func fork(_ seq: SequenceID) -> SequenceID {
        lock.lock(); defer { lock.unlock() }
        guard let table = tables[seq] else { preconditionFailure("KVCachePool.fork: unknown sequence \(seq)") }
        for id in table.blockIDs { blocks.retain(id) }
        let child = SequenceID(rawValue: nextSequence)
        nextSequence += 1
        tables[child] = table
        return child
    }

    /// Drops the sequence and releases its blocks (a block returns to the free queue when no
    /// sequence references it). Unknown ids are ignored.
    public func free(_ seq: SequenceID) {
        lock.lock(); defer { lock.unlock() }
        guard let table = tables.removeValue(forKey: seq) else { return }
        for id in table.blockIDs { blocks.release(id) }
    }

    /// Reserved length of the sequence in tokens (0 for an unknown id).
    public func length(of seq: SequenceID) -> Int {
        lock.lock(); defer { lock.unlock() }
        return tables[seq]?.length ?? 0
    }

    /// The sequence's block table (a snapshot), nil for an unknown id.
    public func blockTable(of seq: SequenceID) -> BlockTable? {
        lock.lock(); defer { lock.unlock() }
        return tables[seq]
    }

    /// Grows the sequence to `newLength` token positions, allocating blocks (and copying a shared,
    /// partially filled last block that the new positions will be written into).
    /// - Returns: `.ok` (also when `newLength <= length`), `.later` when not enough blocks are free
    ///   now (nothing changes), `.never` when `newLength` needs more blocks than the pool has, the
    ///   length is negative or the sequence is unknown.
    public func reserve(_ seq: SequenceID, newLength: Int) -> AllocationStatus {
        lock.lock(); defer { lock.unlock() }
        guard var table = tables[seq], newLength >= 0 else { return .never }
        if newLength <= table.length { return .ok }
        let B = spec.blockSize
        let needBlocks = newLength / B + (newLength % B == 0 ? 0 : 1)  // no overflow for huge lengths
        if needBlocks > numBlocks { return .never }
        let extra = needBlocks - table.blockIDs.count
        let cow = table.length % B != 0 && blocks.refCount(table.blockIDs[table.blockIDs.count - 1]) > 1
        if extra + (cow ? 1 : 0) > blocks.numFree { return .later }
        if cow { copyOnWrite(&table, logicalBlock: table.blockIDs.count - 1) }
        for _ in 0..<extra { table.blockIDs.append(allocateBlock()!) }
        table.length = newLength
        tables[seq] = table
        return .ok
    }

    /// Shortens the sequence to `newLength` tokens (e.g. to regenerate from an earlier position),
    /// releasing the blocks past it. Growing again later goes through `reserve`, which copies a
    /// shared partially filled last block before it is written. No-op when `newLength >= length`
    /// or the sequence is unknown; negative lengths count as 0.
    public func truncate(_ seq: SequenceID, to newLength: Int) {
        lock.lock(); defer { lock.unlock() }
        guard var table = tables[seq], newLength < table.length else { return }
        let n = max(0, newLength)
        let keep = n / spec.blockSize + (n % spec.blockSize == 0 ? 0 : 1)
        while table.blockIDs.count > keep { blocks.release(table.blockIDs.removeLast()) }
        table.length = n
        tables[seq] = table
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

    // Under the lock.
    func allocateBlock() -> Int32? {
        guard let id = blocks.allocate() else { return nil }
        if isStatic {
            for l in 0..<spec.numLayers { blockEpoch[l * numBlocks + Int(id)] = -1 }
        }
        return id
    }

    // Under the lock: replaces logical block `lb` of `table` by a private copy (all layers).
    func copyOnWrite(_ table: inout BlockTable, logicalBlock lb: Int) {
        let old = table.blockIDs[lb]
        guard let new = allocateBlock() else {
            preconditionFailure("KVCachePool: no free block for copy-on-write (reserve before writing)")
        }
        let H = spec.numKVHeads
        for l in 0..<spec.numLayers {
            let src = storage + (l * numBlocks + Int(old)) * blockStride
            let dst = storage + (l * numBlocks + Int(new)) * blockStride
            dst.copyMemory(from: src, byteCount: blockStride)
            if isStatic {
                let o = l * numBlocks + Int(old), n = l * numBlocks + Int(new)
                blockEpoch[n] = blockEpoch[o]
                (blockScales + n * H).update(from: blockScales + o * H, count: H)
                (blockVScales + n * H).update(from: blockVScales + o * H, count: H)
            }
        }
        blocks.release(old)
        table.blockIDs[lb] = new
    }
}
