import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

@Suite("Block pool, block tables, fork and copy-on-write")
struct BlockPoolTests {
    // fp32, 1 layer, 1 KV head, head_dim 16, block_size 4: 2·16·4·4 = 512 bytes per block.
    static let spec = KVCacheSpec(numLayers: 1, numKVHeads: 1, headDim: 16, dtype: .fp32, blockSize: 4)

    func rows(_ n: Int, base: Float) -> [[Float]] { (0..<n).map { t in (0..<16).map { base + Float(t) + Float($0) / 100 } } }

    @Test("BlockPool: FIFO free queue, reference counts, release at zero")
    func blockPoolBasics() {
        var bp = BlockPool(numBlocks: 3)
        #expect(bp.numFree == 3)
        let a = bp.allocate()!, b = bp.allocate()!, c = bp.allocate()!
        #expect([a, b, c] == [0, 1, 2])
        #expect(bp.allocate() == nil)
        #expect(bp.numUsed == 3)
        bp.retain(b)
        #expect(bp.refCount(b) == 2)
        #expect(bp.release(b) == false)
        #expect(bp.release(b) == true)
        #expect(bp.refCount(b) == 0 && bp.numFree == 1)
        bp.release(a)
        #expect(bp.allocate() == b)  // oldest freed first
        #expect(bp.allocate() == a)
    }

    @Test("pool size follows the byte budget; too small a budget is an error")
    func budget() throws {
        let pool = try KVCachePool(spec: Self.spec, byteBudget: 512 * 10 + 100)
        #expect(pool.numBlocks == 10)
        #expect(pool.capacityTokens == 40)
        let e = kvantError { _ = try KVCachePool(spec: Self.spec, byteBudget: 511) }
        #expect(e?.reason == .resourceExhausted)
        #expect(e?.message.contains("512") == true)
        let bad = kvantError { _ = try KVCachePool(spec: KVCacheSpec(numLayers: 0, numKVHeads: 1, headDim: 8, dtype: .fp16), byteBudget: 1 << 20) }
        #expect(bad?.reason == .invalidArgument)
        #expect(bad?.message.contains("num_layers") == true)
        let scalesForFP16 = kvantError { _ = try KVCachePool(spec: Self.spec, byteBudget: 1 << 20, scales: try KVScales(perTensor: [1])) }
        #expect(scalesForFP16?.reason == .invalidArgument)
    }

    @Test("reserve: ok, later when out of free blocks (nothing overwritten), never when it can never fit")
    func reserveStatuses() throws {
        let pool = try KVCachePool(spec: Self.spec, byteBudget: 512 * 4)
        let a = pool.createSequence(), b = pool.createSequence()
        #expect(pool.reserve(a, newLength: 17) == .never)  // 5 blocks > 4
        #expect(pool.length(of: a) == 0)
        #expect(pool.reserve(a, newLength: 10) == .ok)     // 3 blocks
        let ka = rows(10, base: 100), va = rows(10, base: -100)
        writeAll(pool, a, layer: 0, keys: ka, values: va)
        #expect(pool.reserve(b, newLength: 4) == .ok)      // last block
        #expect(pool.freeBlocks == 0)
        #expect(pool.reserve(b, newLength: 5) == .later)
        #expect(pool.length(of: b) == 4)
        #expect(pool.reserve(a, newLength: 12) == .ok)     // fits in a's last block
        #expect(pool.reserve(a, newLength: 13) == .later)
        #expect(pool.reserve(a, newLength: 3) == .ok)      // never shrinks
        #expect(pool.length(of: a) == 12)
        writeAll(pool, b, layer: 0, keys: rows(4, base: 7), values: rows(4, base: 8))
        for p in 0..<10 {
            let (k, v) = readBack(pool, a, layer: 0, position: p)
            #expect(k == ka[p] && v == va[p], "a's position \(p) unchanged")
        }
        pool.free(b)
        #expect(pool.freeBlocks == 1)
        #expect(pool.reserve(a, newLength: 13) == .ok)
        #expect(pool.reserve(SequenceID(rawValue: 999), newLength: 1) == .never)
        #expect(pool.refCount(block: 4) == 0 && pool.refCount(block: -1) == 0)
        #expect(pool.length(of: SequenceID(rawValue: 999)) == 0 && pool.blockTable(of: SequenceID(rawValue: 999)) == nil)
        pool.free(a)
        #expect(pool.freeBlocks == 4)
        #expect(pool.stats().sequences == 0)
    }

    @Test("fork shares full blocks by reference count; writing the shared last block copies it")
    func forkCopyOnWrite() throws {
        let pool = try KVCachePool(spec: Self.spec, byteBudget: 512 * 8)
        let parent = pool.createSequence()
        let kp = rows(6, base: 1), vp = rows(6, base: -1)
        writeAll(pool, parent, layer: 0, keys: kp, values: vp)      // blocks: [full, 2 of 4]
        let child = pool.fork(parent)
        let pt = pool.blockTable(of: parent)!, ct = pool.blockTable(of: child)!
        #expect(pt.blockIDs == ct.blockIDs)
        #expect(pool.length(of: child) == 6)
        for id in pt.blockIDs { #expect(pool.refCount(block: id) == 2) }
        #expect(pool.freeBlocks == 6)

        // The child appends into the shared, partially filled block: it gets its own copy.
        #expect(pool.reserve(child, newLength: 8) == .ok)
        let ct2 = pool.blockTable(of: child)!
        #expect(ct2.blockIDs[0] == pt.blockIDs[0])
        #expect(ct2.blockIDs[1] != pt.blockIDs[1])
        #expect(pool.refCount(block: pt.blockIDs[0]) == 2)
        #expect(pool.refCount(block: pt.blockIDs[1]) == 1)
        let kc = kp + rows(2, base: 50), vc = vp + rows(2, base: -50)
        writeAll(pool, child, layer: 0, keys: kc, values: vc, from: 6)

        // The parent continues with different tokens at the same positions.
        let kp2 = kp + rows(2, base: 70), vp2 = vp + rows(2, base: -70)
        writeAll(pool, parent, layer: 0, keys: kp2, values: vp2, from: 6)
        for p in 0..<8 {
            let (k1, v1) = readBack(pool, parent, layer: 0, position: p)
            let (k2, v2) = readBack(pool, child, layer: 0, position: p)
            #expect(k1 == kp2[p] && v1 == vp2[p], "parent position \(p)")
            #expect(k2 == kc[p] && v2 == vc[p], "child position \(p)")
        }
        // Attention over the shared prefix agrees; it differs once the sequences diverge.
        let q = [Float](repeating: 0.1, count: 16)
        #expect(attend(pool, parent, layer: 0, position: 5, query: q, numHeads: 1, window: nil, scale: 1)
                == attend(pool, child, layer: 0, position: 5, query: q, numHeads: 1, window: nil, scale: 1))
        #expect(attend(pool, parent, layer: 0, position: 7, query: q, numHeads: 1, window: nil, scale: 1)
                != attend(pool, child, layer: 0, position: 7, query: q, numHeads: 1, window: nil, scale: 1))

        pool.free(parent)
        #expect(pool.refCount(block: pt.blockIDs[0]) == 1)
        #expect(pool.refCount(block: pt.blockIDs[1]) == 0)
        for p in 0..<8 { #expect(readBack(pool, child, layer: 0, position: p).k == kc[p]) }
        pool.free(child)
        #expect(pool.freeBlocks == 8)
    }

    @Test("a write into a shared block (without reserve growing into it) copies it too")
    func writeIntoSharedBlockCopies() throws {
        let pool = try KVCachePool(spec: Self.spec, byteBudget: 512 * 8)
        let parent = pool.createSequence()
        #expect(pool.reserve(parent, newLength: 8) == .ok)
        let kp = rows(6, base: 1)
        writeAll(pool, parent, layer: 0, keys: kp, values: kp)
        let child = pool.fork(parent)                         // length 8: positions 6, 7 reserved but unwritten
        let kc = kp + rows(2, base: 30)
        writeAll(pool, child, layer: 0, keys: kc, values: kc, from: 6)
        #expect(pool.blockTable(of: child)!.blockIDs[1] != pool.blockTable(of: parent)!.blockIDs[1])
        let kp2 = kp + rows(2, base: 60)
        writeAll(pool, parent, layer: 0, keys: kp2, values: kp2, from: 6)
        #expect(readBack(pool, child, layer: 0, position: 7).k == kc[7])
        #expect(readBack(pool, parent, layer: 0, position: 7).k == kp2[7])
    }

    @Test("truncate releases blocks; rewriting after truncate un-shares the forked block; a copy-on-write with no free block writes nothing")
    func truncateAndFullPoolCopyOnWrite() throws {
        let pool = try KVCachePool(spec: Self.spec, byteBudget: 512 * 3)
        let parent = pool.createSequence()
        let kp = rows(6, base: 1)
        writeAll(pool, parent, layer: 0, keys: kp, values: kp)     // 2 blocks, last one half full
        let child = pool.fork(parent)
        pool.truncate(child, to: 3)                                 // child keeps block 0 only (shared)
        #expect(pool.length(of: child) == 3 && pool.blockTable(of: child)!.blockIDs.count == 1)
        #expect(pool.refCount(block: pool.blockTable(of: parent)!.blockIDs[1]) == 1)
        #expect(pool.freeBlocks == 1)
        // The child regrows into its shared, partially used block 0: reserve copies it (last free block).
        #expect(pool.reserve(child, newLength: 4) == .ok)
        #expect(pool.freeBlocks == 0)
        #expect(pool.blockTable(of: child)!.blockIDs[0] != pool.blockTable(of: parent)!.blockIDs[0])
        let kc = Array(kp[0..<3]) + rows(1, base: 40)
        writeAll(pool, child, layer: 0, keys: kc, values: kc, from: 3)
        #expect(readBack(pool, parent, layer: 0, position: 3).k == kp[3])
        #expect(readBack(pool, child, layer: 0, position: 3).k == kc[3])
        // Pool full; a second fork shares everything; rewriting a shared position cannot copy: nothing is written.
        let twin = pool.fork(parent)
        let fresh = [Float](repeating: 99, count: 16)
        let ok = fresh.withUnsafeBufferPointer { f in
            pool.write(layer: 0, sequence: twin, position: 1, key: f.baseAddress!, value: f.baseAddress!)
        }
        #expect(ok == false)
        #expect(readBack(pool, parent, layer: 0, position: 1).k == kp[1])
        #expect(readBack(pool, twin, layer: 0, position: 1).k == kp[1])
        pool.truncate(parent, to: 0)
        #expect(pool.length(of: parent) == 0 && pool.blockTable(of: parent)!.blockIDs.isEmpty)
        pool.truncate(SequenceID(rawValue: 12345), to: 0)
        pool.free(twin); pool.free(child); pool.free(parent)
        #expect(pool.freeBlocks == 3)
    }

    @Test("fork copy-on-write with a quantized cache keeps scales and epochs of the copied block")
    func forkQuantized() throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 2, headDim: 8, dtype: .int8PerTensorPerHead, blockSize: 4)
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 16, scales: try KVScales(perHead: [[0.01, 0.02], [0.03, 0.04]]))
        var rng = SplitMix64(seed: 5)
        let keys = (0..<6).map { _ in rng.floats(16) }, values = (0..<6).map { _ in rng.floats(16) }
        let parent = pool.createSequence()
        for l in 0..<2 { writeAll(pool, parent, layer: l, keys: keys, values: values) }
        let before = (0..<6).map { readBack(pool, parent, layer: 1, position: $0).k }
        let child = pool.fork(parent)
        _ = try pool.installScales(try KVScales(perHead: [[0.5, 0.5], [0.5, 0.5]]))
        #expect(pool.reserve(child, newLength: 7) == .ok)
        for l in 0..<2 { writeAll(pool, child, layer: l, keys: keys + [keys[0]], values: values + [values[0]], from: 6) }
        for p in 0..<6 {
            #expect(readBack(pool, child, layer: 1, position: p).k == before[p])
            #expect(readBack(pool, parent, layer: 1, position: p).k == before[p])
            #expect(pool.epoch(layer: 1, sequence: child, position: p) == 1)
        }
        // Position 6 lands in the copied block, which was started under epoch 1: it keeps epoch 1's scales.
        #expect(pool.epoch(layer: 1, sequence: child, position: 6) == 1)
        #expect(readBack(pool, child, layer: 1, position: 6).k == before[0])
    }
}
