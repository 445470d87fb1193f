import Foundation

/// Physical blocks of the pool: a free queue and a reference count per block (vLLM's block pool).
/// The free queue is a doubly linked list in release order, so a block can also leave it from the
/// middle (`take`), which the prefix cache needs to revive a freed block it still knows. Not
/// thread-safe by itself: `KVCachePool` calls it under its lock.
public struct BlockPool: Sendable {
    /// Total number of blocks.
    public let numBlocks: Int
    private var refCounts: [Int32]
    // The free queue: head = oldest freed (taken first by `allocate`), tail = newest. -1 ends the list.
    private var next: [Int32]
    private var prev: [Int32]
    private var head: Int32 = -1
    private var tail: Int32 = -1
    /// Number of blocks in the free queue.
    public private(set) var numFree: Int

    public init(numBlocks: Int) {
        precondition(numBlocks >= 0)
        self.numBlocks = numBlocks
        refCounts = [Int32](repeating: 0, count: numBlocks)
        next = [Int32](repeating: -1, count: numBlocks)
        prev = [Int32](repeating: -1, count: numBlocks)
        numFree = 0
        for b in 0..<numBlocks { append(Int32(b)) }
    }

    /// Blocks with a reference count above zero.
    public var numUsed: Int { numBlocks - numFree }

    /// The block `allocate` would take next (the oldest free one), nil when none is free.
    public var oldestFree: Int32? { head >= 0 ? head : nil }

    /// Takes the oldest free block (reference count becomes 1); nil when none is free.
    public mutating func allocate() -> Int32? {
        guard head >= 0 else { return nil }
        let id = head
        take(id)
        return id
    }

    /// Takes a specific free block out of the free queue (reference count becomes 1).
    /// Precondition: the block is free.
    public mutating func take(_ id: Int32) {
        let i = Int(id)
        precondition(refCounts[i] == 0, "take of used block \(id)")
        let p = prev[i], n = next[i]
        if p >= 0 { next[Int(p)] = n } else { head = n }
        if n >= 0 { prev[Int(n)] = p } else { tail = p }
        prev[i] = -1; next[i] = -1
        numFree -= 1
        refCounts[i] = 1
    }

    /// Adds a reference (a forked sequence sharing the block).
    public mutating func retain(_ id: Int32) {
        precondition(refCounts[Int(id)] > 0, "retain of free block \(id)")
        refCounts[Int(id)] += 1
    }

    /// Drops a reference; at zero the block joins the free queue's tail (taken last). Returns true if it was freed.
    @discardableResult
    public mutating func release(_ id: Int32) -> Bool {
        precondition(refCounts[Int(id)] > 0, "release of free block \(id)")
        refCounts[Int(id)] -= 1
        guard refCounts[Int(id)] == 0 else { return false }
        append(id)
        return true
    }

    /// Reference count of a block (0 = free).
    public func refCount(_ id: Int32) -> Int { Int(refCounts[Int(id)]) }

    private mutating func append(_ id: Int32) {
        let i = Int(id)
        prev[i] = tail
        next[i] = -1
        if tail >= 0 { next[Int(tail)] = id } else { head = id }
        tail = id
        numFree += 1
    }
}

/// One sequence's block tables, one per layer group (`KVCacheSpec.layerGroups`): logical block i of a
/// group holds token positions `i*blockSize ..< (i+1)*blockSize` of every layer of the group.
public struct BlockTable: Sendable, Equatable {
    /// The id of a block a sliding-window group has freed (its positions are out of every window still to come).
    public static let nullBlock: Int32 = -1

    /// Physical block ids per layer group in logical order; `nullBlock` where a sliding-window group freed one.
    public internal(set) var groups: [[Int32]]
    /// Reserved length in tokens (positions 0..<length may be written and attended).
    public internal(set) var length: Int = 0
    /// Positions whose K/V are committed (`KVCachePool.commit`): written in every layer. The next
    /// query position; sliding-window groups keep the blocks it and later positions still read.
    public internal(set) var computed: Int = 0
    /// Token ids of the committed positions, when the caller gave them (`commit(tokens:)`).
    public internal(set) var tokens: [Int32] = []
    /// Per group: how many leading entries are `nullBlock` (freed out of the window, or never needed).
    public internal(set) var firstLive: [Int]
    /// Admission (`KVCachePool.admit`): the growth the pool promised blocks for; nil when not admitted.
    public internal(set) var admission: KVAdmission?
    /// Blocks promised to this sequence (`admit`) and not yet allocated: free blocks no other sequence may take.
    public internal(set) var promised: Int = 0
    /// Prefix cache: the chained hash of each full committed block `0 ..< blockHashes.count` (logical block i =
    /// positions `i*blockSize ..< (i+1)*blockSize`, the same chain for every layer group). Empty when prefix
    /// caching is off; the chain stops at the first block with an unknown token id or mixed scale epochs.
    public internal(set) var blockHashes: [BlockHash] = []
    /// Static int8 pools: the scale epoch of each logical block `0 ..< epochs.count` — the epoch it was written
    /// under (recorded by `commit` and prefix-cache hits), or, for a sequence resumed after a preemption
    /// (`KVCachePool.createSequence(resuming:)`), the epoch its block had before and will be written under again.
    /// Empty for other dtypes.
    public internal(set) var epochs: [Int32] = []

    init(numGroups: Int) {
        groups = Array(repeating: [], count: numGroups)
        firstLive = Array(repeating: 0, count: numGroups)
    }

    /// The block table of the first layer group (the only one of a pool without sliding windows).
    public var blockIDs: [Int32] { groups[0] }

    /// Blocks the tables hold (every group, freed entries excluded; a block shared with a fork counts here too).
    public var heldBlocks: Int {
        var n = 0
        for (gi, ids) in groups.enumerated() { n += ids.count - firstLive[gi] }
        return n
    }
}

/// The growth a sequence was admitted for: its prompt is prefilled from position 0 in micro-batches of
/// `KVCachePool.prefillChunk` tokens, then one token at a time is decoded up to `maxLength` positions.
public struct KVAdmission: Sendable, Equatable {
    /// Prompt tokens (prefilled in micro-batches).
    public var promptLength: Int
    /// Positions the sequence may reach (prompt + generated tokens).
    public var maxLength: Int

    public init(promptLength: Int, maxLength: Int) {
        self.promptLength = promptLength
        self.maxLength = maxLength
    }
}

/// The prefix cache's identity of a full block (vLLM's block hash): the first 128 bits of
/// SHA-256(parent hash ‖ the block's token ids ‖ the scale epoch it was written under), chained from a
/// per-pool seed that holds the kv_cache_dtype, the rotation and the block size. 128 bits because a
/// collision would silently serve another prompt's K/V.
public struct BlockHash: Sendable, Hashable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) { self.high = high; self.low = low }

    /// The first 16 bytes of SHA-256(`bytes`), big-endian.
    public init(digestOf bytes: [UInt8]) {
        let d = SHA256.digest(bytes)
        var h: UInt64 = 0, l: UInt64 = 0
        for i in 0..<8 { h = h << 8 | UInt64(d[i]); l = l << 8 | UInt64(d[8 + i]) }
        high = h; low = l
    }

    /// The hash of the block after `parent` holding `tokens`, written under scale epoch `epoch` (0 for
    /// dtypes without static scales): SHA-256 over `parent` (16 bytes), `tokens.count` token ids (int32 LE)
    /// and `epoch` (int64 LE), truncated to 128 bits.
    public static func chain(parent: BlockHash, tokens: some Collection<Int32>, epoch: Int) -> BlockHash {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(16 + 4 * tokens.count + 8)
        for s in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: parent.high >> UInt64(s))) }
        for s in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: parent.low >> UInt64(s))) }
        for t in tokens { let u = UInt32(bitPattern: t); for s in [0, 8, 16, 24] as [UInt32] { bytes.append(UInt8(truncatingIfNeeded: u >> s)) } }
        let e = UInt64(bitPattern: Int64(epoch))
        for s in stride(from: 0, through: 56, by: 8) { bytes.append(UInt8(truncatingIfNeeded: e >> UInt64(s))) }
        return BlockHash(digestOf: bytes)
    }

    public var description: String { String(format: "%016llx%016llx", high, low) }
}
