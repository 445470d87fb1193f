/// Physical blocks of the pool: a FIFO free queue and a reference count per block (vLLM's
/// block pool). Not thread-safe by itself: `KVCachePool` calls it under its lock.
public struct BlockPool: Sendable {
    /// Total number of blocks.
    public let numBlocks: Int
    private var refCounts: [Int32]
    private var freeQueue: [Int32]   // ring buffer of free block ids
    private var head = 0
    /// Number of blocks in the free queue.
    public private(set) var numFree: Int

    public init(numBlocks: Int) {
        precondition(numBlocks >= 0)
        self.numBlocks = numBlocks
        refCounts = [Int32](repeating: 0, count: numBlocks)
        freeQueue = (0..<Int32(numBlocks)).map { $0 }
        numFree = numBlocks
    }

    /// Blocks with a reference count above zero.
    public var numUsed: Int { numBlocks - numFree }

    /// Takes the oldest free block (reference count becomes 1); nil when none is free.
    public mutating func allocate() -> Int32? {
        guard numFree > 0 else { return nil }
        let id = freeQueue[head]
        head = (head + 1) % numBlocks
        numFree -= 1
        refCounts[Int(id)] = 1
        return id
    }

    /// Adds a reference (a forked sequence sharing the block).
    public mutating func retain(_ id: Int32) {
        precondition(refCounts[Int(id)] > 0, "retain of free block \(id)")
        refCounts[Int(id)] += 1
    }

    /// Drops a reference; the block goes back to the free queue at zero. Returns true if it was freed.
    @discardableResult
    public mutating func release(_ id: Int32) -> Bool {
        precondition(refCounts[Int(id)] > 0, "release of free block \(id)")
        refCounts[Int(id)] -= 1
        guard refCounts[Int(id)] == 0 else { return false }
        freeQueue[(head + numFree) % numBlocks] = id
        numFree += 1
        return true
    }

    /// Reference count of a block (0 = free).
    public func refCount(_ id: Int32) -> Int { Int(refCounts[Int(id)]) }
}

/// One sequence's block table: logical block i holds token positions `i*blockSize ..< (i+1)*blockSize`.
public struct BlockTable: Sendable, Equatable {
    /// Physical block ids in logical order.
    public internal(set) var blockIDs: [Int32] = []
    /// Reserved length in tokens (positions 0..<length may be written and attended).
    public internal(set) var length: Int = 0
}
