import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

@Suite("Block pool under random create/fork/append/free")
struct PoolStressTests {
    @Test("random operations keep every sequence's values, reference counts and free counts consistent")
    func randomOperations() throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 8, dtype: .fp32, blockSize: 4)
        let pool = try KVCachePool(spec: spec, byteBudget: 2 * 2 * 8 * 4 * 4 * 24)
        #expect(pool.numBlocks == 24)
        var rng = SplitMix64(seed: 2024)
        var model: [SequenceID: [[Float]]] = [:]
        var counter: Float = 0
        var sawLater = false, sawNever = false
        for step in 0..<400 {
            let ids = Array(model.keys).sorted { $0.rawValue < $1.rawValue }
            let op = Int(rng.next() % 10)
            if ids.isEmpty || (op == 0 && ids.count < 6) {
                model[pool.createSequence()] = []
            } else if op <= 2 {
                let parent = ids[Int(rng.next() % UInt64(ids.count))]
                model[pool.fork(parent)] = model[parent]!
            } else if op <= 7 {
                let s = ids[Int(rng.next() % UInt64(ids.count))]
                let old = model[s]!
                let n = 1 + Int(rng.next() % 7)
                let before = pool.freeBlocks
                switch pool.reserve(s, newLength: old.count + n) {
                case .ok:
                    var rows = old
                    for _ in 0..<n { counter += 1; rows.append((0..<8).map { counter + Float($0) / 10 }) }
                    for l in 0..<2 { writeAll(pool, s, layer: l, keys: rows.map { $0.map { $0 + Float(l) } }, values: rows.map { $0.map { -$0 } }, from: old.count) }
                    model[s] = rows
                case .later:
                    sawLater = true
                    #expect(pool.freeBlocks == before && pool.length(of: s) == old.count, "step \(step): .later changed the pool")
                case .never:
                    sawNever = true
                    #expect(old.count + n > 24 * 4)
                }
            } else {
                let s = ids[Int(rng.next() % UInt64(ids.count))]
                pool.free(s)
                model[s] = nil
            }
            // Invariants: contents, reference counts, free count.
            var refs: [Int32: Int] = [:]
            for (s, rows) in model {
                let table = pool.blockTable(of: s)!
                #expect(table.length == rows.count)
                #expect(table.blockIDs.count == (rows.count + 3) / 4)
                for id in table.blockIDs { refs[id, default: 0] += 1 }
                for (p, row) in rows.enumerated() {
                    for l in 0..<2 {
                        let (k, v) = readBack(pool, s, layer: l, position: p)
                        #expect(k == row.map { $0 + Float(l) } && v == row.map { -$0 }, "step \(step) \(s) position \(p) layer \(l)")
                    }
                }
            }
            for (id, n) in refs { #expect(pool.refCount(block: id) == n, "step \(step) block \(id)") }
            #expect(pool.freeBlocks == 24 - refs.count, "step \(step)")
        }
        #expect(sawLater)
        _ = sawNever
        #expect(pool.reserve(pool.createSequence(), newLength: Int.max) == .never)
    }
}
