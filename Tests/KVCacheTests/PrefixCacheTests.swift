import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

/// Automatic prefix caching in the pool (`attachCachedPrefix`, hashing in `commit`, LRU eviction in
/// `allocate`), checked by random operation sequences against a simple reference model.
@Suite("Prefix cache")
struct PrefixCacheTests {
    /// 6 layers: full attention on 0 and 3, an 8-token window on the others (groups [0,3], [1,2], [4,5]);
    /// blocks of 4 positions, so windows release blocks and hits need only the window's blocks.
    static func spec(_ dtype: KVCacheDType) -> KVCacheSpec {
        KVCacheSpec(numLayers: 6, numKVHeads: 2, headDim: 8, dtype: dtype, blockSize: 4, layerWindows: [nil, 8, 8, nil, 8, 8])
    }

    /// A rolling hash of a token prefix: the K/V a model writes at a position depend on all tokens up to it.
    static func extend(_ h: UInt64, _ t: Int32) -> UInt64 { (h ^ UInt64(UInt32(bitPattern: t))) &* 0x100000001b3 &+ 0x9e3779b97f4a7c15 }

    /// K and V rows `[numKVHeads · headDim]` of layer `l` at a position whose token prefix hashes to `h`.
    static func rows(_ h: UInt64, layer l: Int, width: Int) -> (key: [Float], value: [Float]) {
        var rng = SplitMix64(seed: h &+ UInt64(l) &* 0x51_7cc1_b727_220a)
        return (rng.floats(width, scale: 3), rng.floats(width, scale: 3))
    }

    /// Writes positions `positions` of sequence `seq` in every layer of `p`: the rows (`rows`) of each position's
    /// token prefix `tokens[...pos]`, as a model would (the same prefix always gives the same rows).
    static func write(_ p: KVCachePool, _ seq: SequenceID, tokens: [Int32], positions: Range<Int>) {
        let spec = p.spec
        var h: UInt64 = 0
        var hashes: [UInt64] = []
        for t in tokens[..<positions.upperBound] { h = extend(h, t); hashes.append(h) }
        for pos in positions {
            for l in 0..<spec.numLayers {
                let (k, v) = rows(hashes[pos], layer: l, width: spec.numKVHeads * spec.headDim)
                let ok = k.withUnsafeBufferPointer { kb in v.withUnsafeBufferPointer { vb in
                    p.write(layer: l, sequence: seq, position: pos, key: kb.baseAddress!, value: vb.baseAddress!)
                } }
                precondition(ok)
            }
        }
    }

    /// A live sequence in the model: its token ids (all positions are committed), and the scale epoch each
    /// logical block was first written under (a block keeps it).
    struct ModelSeq {
        var id: SequenceID
        var tokens: [Int32]
        var blockEpochs: [Int]
        /// The length its admission covers (nil for a fork): it must always grow up to there.
        var admitted: Int? = nil
        /// Forked, or a fork's parent: it may share blocks with another live sequence.
        var forked = false
    }

    final class Harness {
        let pool: KVCachePool
        let ref: KVCachePool          // cold writes, prefix caching off: what a hit must read back
        let spec: KVCacheSpec
        let B = 4
        var rng: SplitMix64
        var live: [ModelSeq] = []
        /// A sequence outside admission holding every block nobody was promised (nil when none).
        var hog: SequenceID?
        var epoch = 0
        /// Block-aligned token prefixes committed by a sequence whose blocks were all written under that epoch.
        var committed: [Int: Set<[Int32]>] = [:]
        var queries = 0, hits = 0, hitEvents = 0, evictions = 0
        /// Forks made, copies-on-write of a shared partial block by a decode, fork byte checks run.
        var forks = 0, copiesOnWrite = 0, forkChecks = 0

        init(dtype: KVCacheDType, seed: UInt64) throws {
            spec = PrefixCacheTests.spec(dtype)
            let page = try KVCachePool(spec: spec, byteBudget: 1 << 20).pageStride
            pool = try KVCachePool(spec: spec, byteBudget: page * 48, prefillChunk: 6)
            ref = try KVCachePool(spec: spec, byteBudget: 1 << 20, prefillChunk: 6, enablePrefixCaching: false)
            rng = SplitMix64(seed: seed)
        }

        func random(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }

        func write(_ p: KVCachePool, _ seq: SequenceID, tokens: [Int32], positions: Range<Int>) {
            PrefixCacheTests.write(p, seq, tokens: tokens, positions: positions)
        }

        func read(_ p: KVCachePool, _ seq: SequenceID, layer: Int, position: Int) -> [Float] {
            var k = [Float](repeating: 0, count: spec.numKVHeads * spec.headDim), v = k
            p.read(layer: layer, sequence: seq, position: position, key: &k, value: &v)
            return k + v
        }

        /// Commits `tokens[range]` of model sequence `i` (written before) and records the prefixes it completes.
        func commit(_ i: Int, _ range: Range<Int>) {
            let s = live[i]
            pool.commit(s.id, tokens: s.tokens[range], from: range.lowerBound)
            for j in (range.lowerBound / B)..<(range.upperBound / B) where s.blockEpochs[0...j].allSatisfy({ $0 == s.blockEpochs[j] }) {
                committed[s.blockEpochs[j], default: []].insert(Array(s.tokens[0..<((j + 1) * B)]))
            }
        }

        /// Writes and commits positions `from ..< to` of model sequence `i` (its tokens already hold them).
        func compute(_ i: Int, from: Int, to: Int) -> Bool {
            var start = from
            while start < to {
                let end = min(to, start + 6)
                guard pool.reserve(live[i].id, newLength: end) == .ok else { return false }
                for j in (start + B - 1) / B ..< (end + B - 1) / B where j >= live[i].blockEpochs.count {
                    live[i].blockEpochs.append(epoch)
                }
                write(pool, live[i].id, tokens: live[i].tokens, positions: start..<end)
                commit(i, start..<end)
                start = end
            }
            return true
        }

        /// A request: a prompt from a few shared prefixes with random tails, admitted, looked up, prefilled.
        func request() {
            let bases: [[Int32]] = [Array(1...14), Array(20...33), [5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7]]
            var prompt: [Int32]
            if !committed.isEmpty, random(4) == 0, let old = committed.values.randomElement(using: &rng)?.randomElement(using: &rng) {
                prompt = old + [Int32(random(3) + 40)]
            } else {
                prompt = Array(bases[random(3)].prefix(random(15)))
                for _ in 0..<(1 + random(10)) { prompt.append(Int32(random(4) + 1)) }
            }
            let seq = pool.createSequence()
            guard pool.admit(seq, promptLength: prompt.count, maxLength: prompt.count + 40) == .ok else { pool.free(seq); return }
            let hit = pool.attachCachedPrefix(seq, prompt: prompt)
            queries += prompt.count
            hits += hit
            #expect(hit % B == 0 && hit <= prompt.count - 1, "hit \(hit) of a \(prompt.count)-token prompt")
            if hit > 0 {
                hitEvents += 1
                // Only what was committed under the current epoch can hit.
                #expect(committed[epoch]?.contains(Array(prompt[0..<hit])) == true, "hit \(hit) of \(prompt) not committed under epoch \(epoch)")
                checkBytes(seq, prompt: prompt, hit: hit)
            }
            // At least as long as the common prefix with a live sequence that still holds every block it needs.
            #expect(hit >= lowerBound(prompt), "hit \(hit) below \(lowerBound(prompt)) for \(prompt)")
            live.append(ModelSeq(id: seq, tokens: prompt, blockEpochs: Array(repeating: epoch, count: hit / B),
                                 admitted: prompt.count + 40))
            #expect(pool.computedLength(of: seq) == hit && pool.blockTable(of: seq)?.tokens == Array(prompt[0..<hit]))
            let ok = compute(live.count - 1, from: hit, to: prompt.count)
            #expect(ok, "an admitted sequence could not grow")
        }

        /// The hit a live sequence guarantees: its whole committed blocks in common with `prompt` (at most all but
        /// the prompt's last token) when every one was written under the current epoch and its window groups still
        /// hold the blocks the window of the hit position reads.
        func lowerBound(_ prompt: [Int32]) -> Int {
            var best = 0
            for s in live {
                let common = zip(s.tokens, prompt).prefix { $0 == $1 }.count
                let k = min(common / B, (prompt.count - 1) / B)
                guard k > 0, s.blockEpochs[0..<k].allSatisfy({ $0 == epoch }), let table = pool.blockTable(of: s.id) else { continue }
                let holds = pool.groups.indices.allSatisfy { gi in
                    let first = pool.groups[gi].window.map { max(0, k * B - $0 + 1) / B } ?? 0
                    return (first..<k).allSatisfy { table.groups[gi][$0] != BlockTable.nullBlock }
                }
                if holds { best = max(best, k * B) }
            }
            return best
        }

        /// Every position a hit attached reads back exactly what a cold write of the same tokens now stores.
        func checkBytes(_ seq: SequenceID, prompt: [Int32], hit: Int) {
            let cold = ref.createSequence()
            defer { ref.free(cold) }
            #expect(ref.reserve(cold, newLength: hit) == .ok)
            write(ref, cold, tokens: prompt, positions: 0..<hit)
            let table = pool.blockTable(of: seq)!
            for l in 0..<spec.numLayers {
                let gi = pool.groups.firstIndex { $0.layers.contains(l) }!
                for p in 0..<hit where table.groups[gi][p / B] != BlockTable.nullBlock {
                    let a = read(pool, seq, layer: l, position: p), b = read(ref, cold, layer: l, position: p)
                    #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "layer \(l) position \(p) of a \(hit)-token hit")
                    if a != b { return }
                }
            }
        }

        func decode() {
            guard !live.isEmpty else { return }
            let i = random(live.count)
            let n = live[i].tokens.count
            live[i].tokens.append(Int32(random(4) + 1))
            let shared = pool.blockTable(of: live[i].id).flatMap { t in t.groups.first?.last.map { pool.refCount(block: $0) > 1 } } ?? false
            if !compute(i, from: n, to: n + 1) {
                // Only a sequence beyond its admission (or a fork) may find no free block.
                #expect(n >= live[i].admitted ?? 0, "an admitted sequence could not grow to \(n + 1) (admitted \(live[i].admitted ?? 0))")
                live[i].tokens.removeLast()
            } else if live[i].forked {
                if shared, n % B != 0 { copiesOnWrite += 1 }
                checkForks()
            }
        }

        func fork() {
            guard !live.isEmpty else { return }
            let i = random(live.count)
            let s = live[i]
            live.append(ModelSeq(id: pool.fork(s.id), tokens: s.tokens, blockEpochs: s.blockEpochs, forked: true))
            // Blocks a forked parent releases while the fork holds them do not return to its promise (a known
            // limit of admission, docs/kv-cache.md): from now on it may find no free block.
            live[i].admitted = nil
            live[i].forked = true
            forks += 1
        }

        /// Every live sequence that shares (or shared) blocks with a fork reads back, at every position it still
        /// holds, what a cold write of its own tokens stores: a write of one (after copy-on-write of the shared
        /// partial block) never shows in another. Sequences with blocks of an older scale epoch are skipped
        /// (a cold write now would use the new scales).
        func checkForks() {
            for s in live where s.forked && s.blockEpochs.allSatisfy({ $0 == epoch }) {
                let n = pool.computedLength(of: s.id)
                guard n > 0 else { continue }
                checkBytes(s.id, prompt: s.tokens, hit: n)
                forkChecks += 1
            }
        }

        func free() {
            guard !live.isEmpty else { return }
            pool.free(live.remove(at: random(live.count)).id)
        }

        /// New static scales on both pools (a new epoch).
        func reload() throws {
            let scales = try KVScales(perTensor: (0..<spec.numLayers).map { _ in Float(0.015 + 0.03 * rng.nextUniform()) })
            epoch = try pool.installScales(scales)
            #expect(try ref.installScales(scales) == epoch)
        }

        /// A sequence outside admission takes every unpromised free block (evicting cached ones) and overwrites
        /// them with other values; it holds them until the next call frees them again.
        func pressure() {
            if let h = hog { pool.free(h); hog = nil; return }
            let seq = pool.createSequence()
            var length = 0
            while pool.reserve(seq, newLength: length + B) == .ok { length += B }
            if length > 0 {
                let tokens = (0..<length).map { _ in Int32(100 + random(50)) }
                write(pool, seq, tokens: tokens, positions: 0..<length)
                evictions += 1
            }
            hog = seq
        }

        /// Reference counts equal the references of the live block tables; free = unreferenced; promises fit.
        func checkInvariants() {
            var refs = [Int](repeating: 0, count: pool.numBlocks)
            for s in live.map(\.id) + (hog.map { [$0] } ?? []) {
                for ids in pool.blockTable(of: s)!.groups { for id in ids where id != BlockTable.nullBlock { refs[Int(id)] += 1 } }
            }
            for b in 0..<pool.numBlocks where pool.refCount(block: Int32(b)) != refs[b] {
                Issue.record("block \(b): ref count \(pool.refCount(block: Int32(b))), referenced by \(refs[b]) table entries")
                return
            }
            #expect(pool.freeBlocks == refs.filter { $0 == 0 }.count)
            #expect(pool.promisedFreeBlocks <= pool.freeBlocks)
            let stats = pool.stats()
            #expect(stats.prefixCacheQueries == Int64(queries) && stats.prefixCacheHits == Int64(hits))
            #expect(stats.prefixCachedBlocks <= pool.numBlocks)
        }
    }

    @Test("random admit/commit/fork/free/evict/reload against a reference model",
          arguments: [KVCacheDType.fp32, .fp16, .int8PerTensor, .int8PerTensorPerHead, .int8PerToken])
    func randomOperations(dtype: KVCacheDType) throws {
        var totalHits = 0, totalEvictions = 0, totalForks = 0, totalCopies = 0, totalForkChecks = 0
        for seed in 1...10 as ClosedRange<UInt64> {
            let h = try Harness(dtype: dtype, seed: seed * 7919)
            for _ in 0..<400 {
                switch h.random(20) {
                case 0..<7: h.request()
                case 7..<11: for _ in 0..<6 { h.decode() }
                case 11..<13: h.fork()
                case 13..<17: h.free()
                case 17: if dtype.usesStaticScales { try h.reload() } else { h.pressure() }
                default: h.pressure()
                }
                h.checkInvariants()
                while h.live.count > 8 { h.free() }
            }
            while !h.live.isEmpty { h.free() }
            if let hog = h.hog { h.pool.free(hog); h.hog = nil }
            h.checkInvariants()
            #expect(h.pool.freeBlocks == h.pool.numBlocks && h.pool.promisedFreeBlocks == 0, "leak: \(h.pool.numBlocks - h.pool.freeBlocks) blocks")
            totalHits += h.hitEvents
            totalEvictions += h.evictions
            totalForks += h.forks
            totalCopies += h.copiesOnWrite
            totalForkChecks += h.forkChecks
        }
        // The runs exercised what they are meant to.
        #expect(totalHits > 30 && totalEvictions > 20, "hits \(totalHits), evictions \(totalEvictions)")
        #expect(totalForks > 30 && totalCopies > 10 && totalForkChecks > 100,
                "forks \(totalForks), copies on write \(totalCopies), fork checks \(totalForkChecks)")
    }

    @Test("a hit: whole blocks, at most prompt − 1 tokens, shared by reference; freed blocks stay cached until evicted (LRU)")
    func basics() throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 8, dtype: .fp16, blockSize: 4)
        let page = try KVCachePool(spec: spec, byteBudget: 1 << 20).pageStride
        let pool = try KVCachePool(spec: spec, byteBudget: page * 8)
        let zero = [Float](repeating: 0.5, count: 8)
        func run(_ prompt: [Int32]) -> SequenceID {
            let s = pool.createSequence()
            let hit = pool.attachCachedPrefix(s, prompt: prompt)
            #expect(pool.reserve(s, newLength: prompt.count) == .ok)
            for p in hit..<prompt.count { for l in 0..<2 { #expect(pool.write(layer: l, sequence: s, position: p, key: zero, value: zero)) } }
            pool.commit(s, tokens: prompt[hit...], from: hit)
            return s
        }
        let a = run([1, 2, 3, 4, 5, 6, 7, 8, 9])          // 2 whole blocks cached
        #expect(pool.prefixCachedBlocks == 2)
        let b = pool.createSequence()
        #expect(pool.attachCachedPrefix(b, prompt: [1, 2, 3, 4, 5, 6, 7, 8]) == 4)   // capped at prompt − 1
        #expect(pool.blockTable(of: b)?.blockIDs == [pool.blockTable(of: a)!.blockIDs[0]])
        #expect(pool.refCount(block: pool.blockTable(of: a)!.blockIDs[0]) == 2)
        let c = pool.createSequence()
        #expect(pool.attachCachedPrefix(c, prompt: [1, 2, 3, 4, 5, 6, 7, 8, 0]) == 8)
        #expect(pool.attachCachedPrefix(c, prompt: [1, 2, 3, 4, 5, 6, 7, 8, 0]) == 0)   // not fresh any more
        let d = pool.createSequence()
        #expect(pool.attachCachedPrefix(d, prompt: [2, 2, 3, 4, 5, 6, 7, 8, 0]) == 0)   // the chain starts at block 0
        pool.free(b); pool.free(c); pool.free(d)
        let aBlocks = pool.blockTable(of: a)!.blockIDs
        pool.free(a)
        #expect(pool.freeBlocks == pool.numBlocks && pool.prefixCachedBlocks == 2)   // free but still cached
        let e = pool.createSequence()
        #expect(pool.attachCachedPrefix(e, prompt: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == 8)   // revived from the free queue
        #expect(pool.blockTable(of: e)?.blockIDs == Array(aBlocks[0..<2]))
        pool.free(e)
        // Fill the pool: the 2 cached blocks are the most recently freed, so they go last, and then they are evicted.
        let filler = pool.createSequence()
        #expect(pool.reserve(filler, newLength: 4 * 6) == .ok)
        #expect(pool.prefixCachedBlocks == 2)
        #expect(pool.reserve(filler, newLength: 4 * 8) == .ok)
        #expect(pool.prefixCachedBlocks == 0)
        pool.free(filler)
        let f = pool.createSequence()
        #expect(pool.attachCachedPrefix(f, prompt: [1, 2, 3, 4, 5, 6, 7, 8, 9]) == 0)
        let s = pool.stats()
        #expect(s.prefixCacheQueries == 8 + 9 + 9 + 9 + 10 + 9 && s.prefixCacheHits == 4 + 8 + 8)
        #expect(abs(s.prefixCacheHitRate - 20.0 / 54.0) < 1e-12)
        // Off: no hashing, no lookups, no counts.
        let off = try KVCachePool(spec: spec, byteBudget: page * 8, enablePrefixCaching: false)
        let o = off.createSequence()
        #expect(off.reserve(o, newLength: 9) == .ok)
        off.commit(o, tokens: [Int32](1...9), from: 0)
        let o2 = off.createSequence()
        #expect(off.attachCachedPrefix(o2, prompt: [Int32](1...9)) == 0 && off.prefixCachedBlocks == 0)
        #expect(off.stats().prefixCacheQueries == 0 && !off.stats().prefixCaching)
    }

    /// int4_pertoken: a pool with `rows` writes positions `0 ..< tokens.count` of `seq` (from `start`), both layers,
    /// one position at a time (decode order), and returns the attention outputs at positions `from...`.
    static func int4Run(_ pool: KVCachePool, _ seq: SequenceID, tokens: [Int32], start: Int, attendFrom: Int,
                        rows: (Int32, Int) -> (k: [Float], v: [Float], q: [Float])) -> [[Float]] {
        let D = pool.spec.headDim
        var outs: [[Float]] = []
        #expect(pool.reserve(seq, newLength: tokens.count) == .ok)
        for p in start..<tokens.count {
            let (k, v, q) = rows(tokens[p], p)
            for l in 0..<pool.spec.numLayers {
                #expect(pool.write(layer: l, sequence: seq, position: p, key: k, value: v))
            }
            pool.commit(seq, tokens: [tokens[p]], from: p)
            guard p >= attendFrom else { continue }
            for l in 0..<pool.spec.numLayers {
                var out = [Float](repeating: .nan, count: D)
                pool.attend(layer: l, sequence: seq, position: p, query: q, numHeads: 1, window: pool.spec.layerWindows[l],
                            scale: 0.125, output: &out)
                outs.append(out)
            }
        }
        return outs
    }

    @Test("int4_pertoken: a hit takes its int8 residual rows (last 3 blocks, token 0) from a ring that holds them; the continued sequence attends bit for bit as a cold one")
    func int4Hits() throws {
        // block_size 4, 4 recent blocks, micro-batch 4: a ring of 6 blocks + token 0.
        // Layer 1 has a 12-token sliding window.
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 64, dtype: .int4PerToken, blockSize: 4,
                               layerWindows: [nil, 12])
        let pool = try KVCachePool(spec: spec, byteBudget: 1 << 20, prefillChunk: 4, enablePrefixCaching: true)
        #expect(pool.stats().prefixCaching)
        // The K/V of a position depend on its token and position only (as a model's do given the same prefix);
        // the query too. Distinct magnitudes per position so that int8 and int4 reads differ.
        func rows(_ token: Int32, _ p: Int) -> (k: [Float], v: [Float], q: [Float]) {
            var rng = SplitMix64(seed: UInt64(UInt32(bitPattern: token)) &* 1000 &+ UInt64(p))
            return (rng.floats(64, scale: Float(1 + p % 5)), rng.floats(64, scale: 2), rng.floats(64, scale: 3))
        }
        let a = [Int32](1...40)
        let first = pool.createSequence()
        _ = Self.int4Run(pool, first, tokens: a, start: 0, attendFrom: 40, rows: rows)
        // Cold reference: a pool without prefix caching, every position computed.
        func cold(_ tokens: [Int32], from: Int) throws -> [[Float]] {
            let off = try KVCachePool(spec: spec, byteBudget: 1 << 20, prefillChunk: 4, enablePrefixCaching: false)
            return Self.int4Run(off, off.createSequence(), tokens: tokens, start: 0, attendFrom: from, rows: rows)
        }
        func continued(_ tokens: [Int32], promptLength: Int) -> (hit: Int, outs: [[Float]]) {
            let s = pool.createSequence()
            let hit = pool.attachCachedPrefix(s, prompt: Array(tokens[0..<promptLength]))
            return (hit, Self.int4Run(pool, s, tokens: tokens, start: hit, attendFrom: hit, rows: rows))
        }
        // 1. The same 40 tokens and more, while the first sequence is live: its ring holds blocks 4...9 and token 0.
        let b = a + [Int32](100..<108)
        let rb = continued(b, promptLength: 41)
        #expect(rb.hit == 40)
        #expect(rb.outs == (try cold(b, from: 40)))
        // 2. After the first is freed (its ring retired): a prompt sharing 7 blocks hits 7 (blocks 4...6 in the ring).
        pool.free(first)
        let c = Array(a[0..<28]) + [Int32](200..<215)
        let rc = continued(c, promptLength: 40)
        #expect(rc.hit == 28)
        #expect(rc.outs == (try cold(c, from: 28)))
        // 3. Sharing 4 blocks: blocks 1...3 are in no ring (the first's held 4...9; the continued ones from their
        //    hits on), although the pool still caches blocks 0...3: no hit, rather than reading them at int4.
        let d = Array(a[0..<16]) + [Int32](300..<310)
        #expect(pool.prefixCachedBlocks >= 10)
        let rd = continued(d, promptLength: 20)
        #expect(rd.hit == 0)
        #expect(rd.outs == (try cold(d, from: 0)))
        // The int8 rows matter: reading the hit's last blocks at int4 gives other outputs (else this test proves
        // nothing): the same continuation of c in a pool without the residual (every position int4) differs.
        let noRes = try KVCachePool(spec: spec, byteBudget: 1 << 20, prefillChunk: 4, int4RecentBlocks: 0,
                                    enablePrefixCaching: false)
        #expect(Self.int4Run(noRes, noRes.createSequence(), tokens: c, start: 0, attendFrom: 28, rows: rows) != rc.outs)
    }

    @Test("block hashes: 128-bit truncated SHA-256 of parent ‖ token ids ‖ epoch; pools of other dtypes chain from other seeds")
    func hashes() throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 8, dtype: .fp16, blockSize: 4)
        let h = BlockHash.chain(parent: BlockHash(high: 1, low: 2), tokens: [1, 2, 3, 4] as [Int32], epoch: 0)
        // The digest of the same bytes computed independently: 16 bytes of parent (big-endian), int32 LE ids, int64 LE epoch.
        var bytes: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]
        for t in [1, 2, 3, 4] as [UInt8] { bytes += [t, 0, 0, 0] }
        bytes += [UInt8](repeating: 0, count: 8)
        #expect(h.description == String(SHA256.hex(bytes).prefix(32)))
        #expect(h != BlockHash.chain(parent: BlockHash(high: 1, low: 2), tokens: [1, 2, 3, 4] as [Int32], epoch: 1))
        let fp16 = try KVCachePool(spec: spec, byteBudget: 1 << 16)
        var bf = spec; bf.dtype = .bf16
        let bf16 = try KVCachePool(spec: bf, byteBudget: 1 << 16)
        #expect(fp16.prefixBlockHash(parent: nil, tokens: [1, 2, 3, 4]) != bf16.prefixBlockHash(parent: nil, tokens: [1, 2, 3, 4]))
    }
}

@Suite("Prefix cache and admission")
struct PrefixCacheAdmissionTests {
    @Test("a hit on window blocks another admitted sequence holds: both still grow to their admission with every other free block taken")
    func sharedWindowBlocksKeepPromises() throws {
        // Full attention on layer 0, an 8-token window on layer 1; blocks of 4; micro-batches of 4.
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 8, dtype: .fp16, blockSize: 4, layerWindows: [nil, 8])
        let page = try KVCachePool(spec: spec, byteBudget: 1 << 20).pageStride
        let pool = try KVCachePool(spec: spec, byteBudget: page * 64, prefillChunk: 4)
        let row = [Float](repeating: 0.25, count: 8)
        func grow(_ s: SequenceID, to n: Int, tokens: (Int) -> Int32) -> Bool {
            var p = pool.computedLength(of: s)
            while p < n {
                guard pool.reserve(s, newLength: p + 1) == .ok else { return false }
                for l in 0..<2 { _ = pool.write(layer: l, sequence: s, position: p, key: row, value: row) }
                pool.commit(s, tokens: CollectionOfOne(tokens(p)), from: p)
                p += 1
            }
            return true
        }
        let prompt = (0..<20).map { Int32($0 + 1) }
        let a = pool.createSequence()
        #expect(pool.admit(a, promptLength: 20, maxLength: 60) == .ok)
        #expect(grow(a, to: 20) { prompt[$0] })
        let b = pool.createSequence()
        #expect(pool.admit(b, promptLength: 21, maxLength: 61) == .ok)
        #expect(pool.attachCachedPrefix(b, prompt: prompt + [99]) == 20)
        // B shares A's window blocks (positions 13 ..< 20 are in the window of position 20).
        let shared = pool.blockTable(of: b)!.groups[1].filter { $0 != BlockTable.nullBlock }
        #expect(!shared.isEmpty && shared.allSatisfy { pool.refCount(block: $0) == 2 })
        // Someone outside admission takes every free block nobody was promised.
        let hog = pool.createSequence()
        var n = 0
        while pool.reserve(hog, newLength: n + 4) == .ok { n += 4 }
        #expect(pool.freeBlocks == pool.promisedFreeBlocks)
        // Both decode to the end of their admission, A first (its window releases blocks B still holds), then B.
        #expect(grow(a, to: 60) { Int32(100 + $0) }, "A could not grow: \(pool.freeBlocks) free, \(pool.promisedFreeBlocks) promised")
        #expect(grow(b, to: 61) { $0 == 20 ? 99 : Int32(200 + $0) }, "B could not grow: \(pool.freeBlocks) free")
        pool.free(a); pool.free(b); pool.free(hog)
        #expect(pool.freeBlocks == pool.numBlocks && pool.promisedFreeBlocks == 0)
    }
}
