import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing

/// On-demand blocks with preemption at the pool level (vLLM V1's scheduler over `admit(onDemand:)`,
/// `reserve`, `free` and `attachCachedPrefix`): random request/decode/finish sequences on a small pool with
/// sliding windows and the prefix cache, the scheduler's rules played by the harness against a simple
/// reference model (every live sequence's tokens, all its positions computed).
@Suite("Preemption")
struct PreemptionTests {
    /// A sequence of the reference model: its pool sequence (nil while preempted), tokens (all computed while it
    /// holds blocks), admission order and the length admission checked against the whole pool.
    struct Request {
        var id: SequenceID?
        var tokens: [Int32]
        let order: Int
        let maxLength: Int
    }

    final class Harness {
        let pool: KVCachePool
        let ref: KVCachePool           // cold writes: what every live position must read back
        let spec: KVCacheSpec
        let B = 4
        let watermark: Int
        var rng: SplitMix64
        /// Holding blocks, in admission order.
        var running: [Request] = []
        /// Preempted, earliest admitted first (the front of the waiting queue).
        var preempted: [Request] = []
        var nextOrder = 0
        var preemptions = 0, resumes = 0, completed = 0, refusedNever = 0, hits = 0

        init(dtype: KVCacheDType, seed: UInt64, blocks: Int) throws {
            spec = PrefixCacheTests.spec(dtype)
            let page = try KVCachePool(spec: spec, byteBudget: 1 << 20).pageStride
            pool = try KVCachePool(spec: spec, byteBudget: page * blocks, prefillChunk: 6)
            ref = try KVCachePool(spec: spec, byteBudget: 1 << 22, prefillChunk: 6, enablePrefixCaching: false)
            watermark = pool.groups.count
            rng = SplitMix64(seed: seed)
        }

        func random(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }

        func write(_ p: KVCachePool, _ seq: SequenceID, tokens: [Int32], positions: Range<Int>) {
            PrefixCacheTests.write(p, seq, tokens: tokens, positions: positions)
        }

        /// Computes positions `from ..< to` of `r` in micro-batches of 6 (prefill; every reserve is covered by
        /// its admission's promise). False when a reserve failed.
        func compute(_ r: Request, from: Int, to: Int) -> Bool {
            var start = from
            while start < to {
                let end = min(to, start + 6)
                guard pool.reserve(r.id!, newLength: end) == .ok else { return false }
                write(pool, r.id!, tokens: r.tokens, positions: start..<end)
                pool.commit(r.id!, tokens: r.tokens[start..<end], from: start)
                start = end
            }
            return true
        }

        /// Admits `r` on demand for its tokens (all to compute) and computes them after the cached prefix.
        /// False (nothing held) when its blocks are not free now.
        func admitAndCompute(_ r: inout Request) -> Bool {
            let seq = pool.createSequence()
            let status = pool.admit(seq, promptLength: r.tokens.count, maxLength: r.maxLength, onDemand: true, watermark: watermark)
            guard status == .ok else {
                pool.free(seq)
                #expect(status == .later, "a request that fits the whole pool was refused: \(status)")
                // Nothing else holds blocks: it must fit (it fits the empty pool, prompt + max_tokens).
                #expect(!running.isEmpty, "refused \(status) with nothing else holding blocks")
                return false
            }
            r.id = seq
            // The whole sequence is the "prompt" (its last token's logits would be computed: hit ≤ count − 1).
            let hit = pool.attachCachedPrefix(seq, prompt: r.tokens)
            hits += hit
            let ok = compute(r, from: hit, to: r.tokens.count)
            #expect(ok, "an admitted sequence could not compute its prompt")
            return true
        }

        /// A new request (only while nothing preempted waits, as the scheduler does).
        func request() {
            guard preempted.isEmpty else { return }
            let bases: [[Int32]] = [Array(1...14), Array(20...33)]
            var prompt = Array(bases[random(2)].prefix(random(15)))
            for _ in 0..<(1 + random(8)) { prompt.append(Int32(random(4) + 1)) }
            // Now and then one that can never fit (beyond `capacityTokens`): refused at once.
            let maxLength = random(8) == 0 ? pool.capacityTokens + 1 + random(10) : prompt.count + 1 + random(60)
            if pool.peakBlocks(KVAdmission(promptLength: maxLength, maxLength: maxLength)) > pool.numBlocks {
                let seq = pool.createSequence()
                #expect(pool.admit(seq, promptLength: prompt.count, maxLength: maxLength, onDemand: true) == .never)
                pool.free(seq)
                refusedNever += 1
                return
            }
            nextOrder += 1
            var r = Request(id: nil, tokens: prompt, order: nextOrder, maxLength: maxLength)
            if admitAndCompute(&r) { running.append(r) }
        }

        /// The scheduler's preemption: frees the most recently admitted running sequence; it waits at the front.
        func preemptLast() {
            var victim = running.removeLast()
            pool.free(victim.id!)
            victim.id = nil
            let at = preempted.firstIndex { $0.order > victim.order } ?? preempted.endIndex
            preempted.insert(victim, at: at)
            preemptions += 1
        }

        /// One decode step: every running sequence below its max length grows by a token, earliest admitted
        /// first, preempting the most recently admitted while no block is free. The earliest admitted one must
        /// always grow (everything else can be preempted and it fits the whole pool).
        func decodeStep() {
            var i = 0
            while i < running.count {
                let r = running[i]
                guard r.tokens.count < r.maxLength else { i += 1; continue }
                let n = r.tokens.count
                switch pool.reserve(r.id!, newLength: n + 1) {
                case .ok:
                    running[i].tokens.append(Int32(random(4) + 1))
                    write(pool, r.id!, tokens: running[i].tokens, positions: n..<(n + 1))
                    pool.commit(r.id!, tokens: running[i].tokens[n...], from: n)
                    i += 1
                case .later:
                    if running.count == 1 {
                        Issue.record("the only running sequence (\(n) of \(r.maxLength) tokens) found no free block")
                        return
                    }
                    preemptLast()   // possibly itself (then i == running.count and the loop ends)
                case .never:
                    Issue.record("reserve .never for a sequence admitted for \(r.maxLength) tokens")
                    return
                }
            }
        }

        /// Readmits preempted sequences, earliest admitted first, while their blocks are free.
        func resume() {
            while var r = preempted.first {
                guard admitAndCompute(&r) else { return }
                preempted.removeFirst()
                let at = running.firstIndex { $0.order > r.order } ?? running.endIndex
                running.insert(r, at: at)
                resumes += 1
                checkValues(r)
            }
        }

        func finish() {
            let done = running.indices.filter { running[$0].tokens.count >= running[$0].maxLength }
            let i = done.randomElement(using: &rng) ?? (random(3) == 0 && !running.isEmpty ? random(running.count) : nil)
            guard let i else { return }
            pool.free(running.remove(at: i).id!)
            completed += 1
        }

        /// Every position `r`'s tables still hold reads back what a cold write of its tokens stores.
        func checkValues(_ r: Request) {
            let cold = ref.createSequence()
            defer { ref.free(cold) }
            #expect(ref.reserve(cold, newLength: r.tokens.count) == .ok)
            write(ref, cold, tokens: r.tokens, positions: 0..<r.tokens.count)
            let table = pool.blockTable(of: r.id!)!
            #expect(table.computed == r.tokens.count && table.tokens == r.tokens)
            let width = spec.numKVHeads * spec.headDim
            for l in 0..<spec.numLayers {
                let gi = pool.groups.firstIndex { $0.layers.contains(l) }!
                for p in 0..<r.tokens.count where p / B < table.groups[gi].count && table.groups[gi][p / B] != BlockTable.nullBlock {
                    var k = [Float](repeating: 0, count: width), v = k, k0 = k, v0 = k
                    pool.read(layer: l, sequence: r.id!, position: p, key: &k, value: &v)
                    ref.read(layer: l, sequence: cold, position: p, key: &k0, value: &v0)
                    if (k + v).map(\.bitPattern) != (k0 + v0).map(\.bitPattern) {
                        Issue.record("layer \(l) position \(p) of a recomputed \(r.tokens.count)-token sequence differs")
                        return
                    }
                }
            }
        }

        /// Reference counts equal the live tables' references (no leak, no double free); free = unreferenced;
        /// promises fit in the free blocks; each running sequence has all its tokens computed.
        func checkInvariants() {
            var refs = [Int](repeating: 0, count: pool.numBlocks)
            for r in running {
                guard let table = pool.blockTable(of: r.id!) else { Issue.record("running sequence without a table"); return }
                #expect(table.computed == r.tokens.count)
                for ids in table.groups { for id in ids where id != BlockTable.nullBlock { refs[Int(id)] += 1 } }
            }
            for b in 0..<pool.numBlocks where pool.refCount(block: Int32(b)) != refs[b] {
                Issue.record("block \(b): ref count \(pool.refCount(block: Int32(b))), referenced by \(refs[b]) table entries")
                return
            }
            #expect(pool.freeBlocks == refs.filter { $0 == 0 }.count)
            #expect(pool.promisedFreeBlocks <= pool.freeBlocks)
            #expect(pool.stats().sequences == running.count, "pool sequences \(pool.stats().sequences), model \(running.count)")
        }
    }

    @Test("random request/decode/preempt/recompute/finish keep ref counts exact, nothing leaked, recomputed values equal",
          arguments: [KVCacheDType.fp32, .int8PerTensor, .int8PerToken])
    func randomOperations(dtype: KVCacheDType) throws {
        var preemptions = 0, resumes = 0, completed = 0, never = 0, hits = 0
        for seed in 1...8 as ClosedRange<UInt64> {
            let h = try Harness(dtype: dtype, seed: seed * 104_729, blocks: 40)
            for _ in 0..<500 {
                switch h.random(10) {
                case 0..<3: h.request()
                case 3..<8: h.decodeStep()
                default: h.finish()
                }
                h.resume()
                h.checkInvariants()
            }
            // Drain: everything admitted completes.
            var guardSteps = 0
            while !(h.running.isEmpty && h.preempted.isEmpty), guardSteps < 10_000 {
                h.decodeStep()
                h.finish()
                h.resume()
                h.checkInvariants()
                guardSteps += 1
            }
            #expect(h.running.isEmpty && h.preempted.isEmpty, "not drained: \(h.running.count) running, \(h.preempted.count) preempted")
            #expect(h.pool.freeBlocks == h.pool.numBlocks && h.pool.promisedFreeBlocks == 0,
                    "leak: \(h.pool.numBlocks - h.pool.freeBlocks) blocks, \(h.pool.promisedFreeBlocks) promised")
            preemptions += h.preemptions; resumes += h.resumes; completed += h.completed; never += h.refusedNever; hits += h.hits
        }
        // The runs exercised what they are meant to: preemptions, recomputes with prefix hits, refusals.
        #expect(preemptions > 50 && resumes == preemptions && completed > 100 && never > 5 && hits > 0,
                "preemptions \(preemptions), resumes \(resumes), completed \(completed), never \(never), hit tokens \(hits)")
    }

    @Test("on-demand admission: the prompt and first decode position are promised, the rest is checked against the whole pool")
    func onDemandAdmission() throws {
        let spec = KVCacheSpec(numLayers: 2, numKVHeads: 1, headDim: 8, dtype: .fp16, blockSize: 4)
        let page = try KVCachePool(spec: spec, byteBudget: 1 << 20).pageStride
        let pool = try KVCachePool(spec: spec, byteBudget: page * 10, prefillChunk: 4)   // 10 blocks, 40 positions
        // Too long for the whole pool: refused at once, whatever is free.
        let a = pool.createSequence()
        #expect(pool.admit(a, promptLength: 8, maxLength: 41, onDemand: true) == .never)
        // Fits the pool: 8 prompt tokens + the first decode position = 3 blocks promised, not 10.
        #expect(pool.admit(a, promptLength: 8, maxLength: 40, onDemand: true) == .ok)
        #expect(pool.promisedFreeBlocks == 3)
        // A second one fits beside it (promise 3 of the 7 unpromised), a third with a watermark of 2 does not
        // (3 + 2 > 4 left), without the watermark it does.
        let b = pool.createSequence(), c = pool.createSequence()
        #expect(pool.admit(b, promptLength: 8, maxLength: 40, onDemand: true, watermark: 2) == .ok)
        #expect(pool.admit(c, promptLength: 8, maxLength: 40, onDemand: true, watermark: 2) == .later)
        #expect(pool.admit(c, promptLength: 8, maxLength: 40, onDemand: true) == .ok)
        #expect(pool.promisedFreeBlocks == 9)
        // Growth beyond the promise takes the one unpromised block, then finds none: .later (preempt).
        #expect(pool.reserve(a, newLength: 9) == .ok)
        #expect(pool.reserve(a, newLength: 13) == .ok)
        #expect(pool.reserve(b, newLength: 13) == .later)
        pool.free(c)   // preempting c gives its promise back
        #expect(pool.reserve(b, newLength: 13) == .ok)
        pool.free(a); pool.free(b)
        #expect(pool.freeBlocks == 10 && pool.promisedFreeBlocks == 0)
    }
}
