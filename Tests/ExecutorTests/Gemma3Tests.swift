import Executor
import Foundation
import KVCache
import KvantCore
import Tokenizers
import KvantTestSupport
import Testing

/// Gemma 3 270M Q4_K_M against llama.cpp goldens (f16 KV on both sides). Compute-heavy checks run in release builds.
@Suite(.serialized, .enabled(if: Fixtures.realModelPath != nil, Fixtures.noModel)) struct Gemma3Tests {
    func load() throws -> (Model, ForwardSession) {
        let m = try Model(path: Fixtures.realModelPath!)
        return (m, ForwardSession(model: m, threads: 2))
    }

    func pool(_ m: Model, tokens: Int) throws -> KVCachePool {
        let spec = m.config.kvCacheSpec(dtype: .fp16)
        return try KVCachePool(spec: spec, byteBudget: (tokens + 64) * spec.bytesPerToken)
    }

    @Test func hyperParameters() throws {
        let c = try load().0.config
        #expect(c.architecture == .gemma3 && c.numLayers == 18 && c.hiddenSize == 640 && c.numHeads == 4)
        #expect(c.numKVHeads == 1 && c.headDim == 256 && c.ffnSize == 2048 && c.vocabSize == 262_144)
        #expect(c.slidingWindow == 512 && c.ropeNeox)
        #expect((0..<18).filter { !c.isSlidingWindowLayer($0) } == [5, 11, 17])
        #expect(c.ropeBase(layer: 5) == 1_000_000 && c.ropeBase(layer: 0) == 10_000)
        #expect(abs(c.attentionScale - 1.0 / 16) < 1e-7 && abs(Double(c.embeddingScale) - 640.0.squareRoot()) < 1e-4)
    }

    /// With `attentionNumerics: .llamaCpp` Kvant computes every operation as llama.cpp 0.3.36 does on an AVX-512 CPU
    /// (the fixture's machine): the teacher-forced logits are bit-identical, so top-1 agrees at every position.
    @Test(.enabled(if: Fixtures.isRelease, Fixtures.needsRelease),
          .enabled(if: KVAttentionNumerics.llamaCppAvailable, "needs AVX-512 (llama.cpp's kernels on the fixture's CPU)"))
    func teacherForcedLogitsMatchLlamaCppExactly() async throws {
        let g = try Fixtures.json("gemma3_gpl3_teacher_forced.json")
        let tokens = (g["tokens"] as! [Int]).map { Int32($0) }
        let top1 = g["top1"] as! [Int], lp = g["logprob"] as! [Double]
        let (agree, n, maxDlp, dlp) = try await offPool { () throws -> (Int, Int, Double, Double) in
        let m = try Model(path: Fixtures.realModelPath!)
        let s = ForwardSession(model: m, threads: 2, attentionNumerics: .llamaCpp)
        let p = try self.pool(m, tokens: tokens.count)
        let seq = p.createSequence()
        var agree = 0, n = 0, maxDlp = 0.0, dlp = 0.0
        try s.forward(tokens: tokens, startPosition: 0, sequence: seq, pool: p, logits: .range(0..<(tokens.count - 1))) { i, l in
            var best = 0
            for k in 1..<l.count where l[k] > l[best] { best = k }
            if best == top1[i] { agree += 1 }
            var mx = -Float.infinity
            for v in l { mx = max(mx, v) }
            var z = 0.0
            for v in l { z += exp(Double(v - mx)) }
            let d = abs(Double(l[Int(tokens[i + 1])] - mx) - log(z) - lp[i])
            dlp += d
            maxDlp = max(maxDlp, d)
            n += 1
        }
        return (agree, n, maxDlp, dlp)
        }
        let rate = Double(agree) / Double(n)
        print("llama.cpp numerics: teacher-forced top-1 agreement \(rate) over \(n) positions; mean |Δ log p| \(dlp / Double(n)), max \(maxDlp)")
        #expect(n == 1023)
        #expect(rate >= 0.97)
        // Bit-identical logits: only the log-softmax's own rounding (double here, numpy there) remains.
        #expect(maxDlp < 1e-4)
    }

    @Test(.enabled(if: Fixtures.isRelease, Fixtures.needsRelease))
    func teacherForcedTop1AgreesWithLlamaCpp() async throws {
        let g = try Fixtures.json("gemma3_gpl3_teacher_forced.json")
        let tokens = (g["tokens"] as! [Int]).map { Int32($0) }
        let top1 = g["top1"] as! [Int], lp = g["logprob"] as! [Double], top1FA = g["top1_flash_attn"] as! [Int]
        let oracleSelf = g["top1_agreement_flash_vs_noflash"] as! Double
        let (agree, agreeEither, n, dlp) = try await offPool { () throws -> (Int, Int, Int, Double) in
        let (m, s) = try self.load()
        let p = try self.pool(m, tokens: tokens.count)
        let seq = p.createSequence()
        var agree = 0, agreeEither = 0, n = 0
        var dlp = 0.0
        try s.forward(tokens: tokens, startPosition: 0, sequence: seq, pool: p, logits: .range(0..<(tokens.count - 1))) { i, l in
            var best = 0
            for k in 1..<l.count where l[k] > l[best] { best = k }
            if best == top1[i] { agree += 1 }
            if best == top1[i] || best == top1FA[i] { agreeEither += 1 }
            var mx = -Float.infinity
            for v in l { mx = max(mx, v) }
            var z = 0.0
            for v in l { z += exp(Double(v - mx)) }
            dlp += abs(Double(l[Int(tokens[i + 1])] - mx) - log(z) - lp[i])
            n += 1
        }
        return (agree, agreeEither, n, dlp)
        }
        let rate = Double(agree) / Double(n), either = Double(agreeEither) / Double(n)
        print("teacher-forced top-1 agreement \(rate) (with llama.cpp's flash-attn-off or -on top-1: \(either)) over \(n) positions; llama.cpp flash-attn on vs off: \(oracleSelf); mean |Δ log p| \(dlp / Double(n))")
        // Kvant's top-1 is one of llama.cpp's two answers (its two attention kernels) at ≥ 97 % of positions.
        #expect(either >= 0.97)
        #expect(n == 1023)
        // llama.cpp agrees with itself (flash attention on vs off) on only ~95 % of these positions: near-ties.
        // Kvant must be at least as close to llama.cpp as llama.cpp is to itself, minus one point (positions are near-ties; other CPUs round differently).
        #expect(rate >= min(0.97, oracleSelf - 0.01))
        #expect(dlp / Double(n) < 0.12)
    }

    @Test(.enabled(if: Fixtures.isRelease, Fixtures.needsRelease))
    func perplexityWithinOnePercentOfLlamaCpp() async throws {
        let g = try Fixtures.json("gemma3_gpl3_perplexity.json")
        let tokens = (g["tokens"] as! [Int]).map { Int32($0) }
        let ref = g["perplexity"] as! Double, ctx = g["ctx"] as! Int
        let r = try await offPool {
            let (m, s) = try self.load()
            return try PerplexityEvaluator.run(session: s, pool: try self.pool(m, tokens: ctx), tokens: tokens, ctx: ctx)
        }
        print("perplexity \(r.perplexity) vs llama.cpp \(ref) (ctx \(ctx), \(r.chunks) chunks, \(r.count) tokens)")
        #expect(r.count == g["count"] as! Int)
        #expect(abs(r.perplexity - ref) / ref < 0.01)
    }

    /// Issue 3: int8_pertoken within +0.5 % of fp32 KV (all of GPL-3 in BENCHMARKS.md; here 8 chunks of 512). The
    /// Hadamard rotation is what gets it there: without it these chunks measured +0.6 … +1.1 % (with different
    /// rounding elsewhere in the executor), with it −0.2 … −0.4 %.
    @Test(.enabled(if: Fixtures.isRelease, Fixtures.needsRelease))
    func int8PerTokenPerplexityNearFP32() async throws {
        let g = try Fixtures.json("gemma3_gpl3_perplexity.json")
        let tokens = (g["tokens"] as! [Int]).map { Int32($0) }
        let (fp32, rotated, plain) = try await offPool { () throws -> (Double, Double, Double) in
            let (m, s) = try self.load()
            func ppl(_ dtype: KVCacheDType, rotation: Bool = true) throws -> Double {
                let spec = m.config.kvCacheSpec(dtype: dtype)
                let pool = try KVCachePool(spec: spec, byteBudget: 600 * spec.bytesPerToken, hadamardRotation: rotation)
                return try PerplexityEvaluator.run(session: s, pool: pool, tokens: tokens, ctx: 512, maxChunks: 8).perplexity
            }
            return (try ppl(.fp32), try ppl(.int8PerToken), try ppl(.int8PerToken, rotation: false))
        }
        print("GPL-3 ctx 512, 8 chunks: fp32 \(fp32), int8_pertoken \(rotated) (without rotation \(plain))")
        #expect(abs(rotated / fp32 - 1) < 0.005)
        #expect(abs(plain - fp32) > abs(rotated - fp32))
    }

    /// Issue 16: int4_pertoken (4-bit rows, rotated; each query's last 4 blocks and token 0 read from the int8
    /// residual) within the issue's +2 % of fp32 KV (here 8 chunks of 512; all of GPL-3 in BENCHMARKS.md). The
    /// residual is what gets it there: with every position at 4 bits (`int4RecentBlocks: 0`) it is clearly worse.
    @Test(.enabled(if: Fixtures.isRelease, Fixtures.needsRelease))
    func int4PerTokenPerplexityNearFP32() async throws {
        let g = try Fixtures.json("gemma3_gpl3_perplexity.json")
        let tokens = (g["tokens"] as! [Int]).map { Int32($0) }
        let (fp32, int4, plain) = try await offPool { () throws -> (Double, Double, Double) in
            let (m, s) = try self.load()
            func ppl(_ dtype: KVCacheDType, recentBlocks: Int = 4) throws -> Double {
                let spec = m.config.kvCacheSpec(dtype: dtype)
                let rings = KVCachePool.residualReserveBytes(spec: spec, maxNumSeqs: 1, int4RecentBlocks: recentBlocks)
                let pool = try KVCachePool(spec: spec, byteBudget: 600 * spec.bytesPerToken + rings, int4RecentBlocks: recentBlocks)
                return try PerplexityEvaluator.run(session: s, pool: pool, tokens: tokens, ctx: 512, maxChunks: 8).perplexity
            }
            return (try ppl(.fp32), try ppl(.int4PerToken), try ppl(.int4PerToken, recentBlocks: 0))
        }
        print("GPL-3 ctx 512, 8 chunks: fp32 \(fp32), int4_pertoken \(int4) (without the int8 residual \(plain))")
        #expect(int4 / fp32 - 1 < 0.02)
        #expect(plain / fp32 - 1 > int4 / fp32 - 1 + 0.01)
    }

    /// kvant-eval's `--file` path: GPL-3 tokenized as llama-perplexity does gives llama.cpp's ids.
    @Test func textFileTokensMatchLlamaCpp() throws {
        let g = try Fixtures.json("gemma3_gpl3_perplexity.json")
        let want = (g["tokens"] as! [Int]).map { Int32($0) }
        let got = try TextTokenizer.tokenize(path: g["text"] as! String, model: try load().0)
        #expect(got.count == want.count)
        #expect(got == want)
    }

    /// The generation loop with the GGUF tokenizer: llama.cpp's greedy text is " the capital of the country of France.";
    /// the stop string "country" cuts it to " the capital of the ".
    @Test func generatorStopsAtStopStringWithRealTokenizer() throws {
        let (m, s) = try load()
        let tok = try makeTokenizer(from: m.file)
        let p = try pool(m, tokens: 64)
        let gen = try Generator(session: s, pool: p, sequence: p.createSequence(), sampling: .greedy, maxTokens: 16,
                                stopStrings: ["country"], tokenizer: tok)
        var streamed = ""
        let r = try gen.run(prompt: tok.encode("The capital of France is", addSpecial: true), onToken: { _, piece in streamed += piece })
        #expect(r.finishReason == .stop)
        #expect(r.text == " the capital of the ")
        #expect(streamed == r.text)
    }

    @Test func greedyContinuationsAgreeForFourTokens() throws {
        let g = try Fixtures.json("gemma3_greedy.json")
        let (m, s) = try load()
        let p = try pool(m, tokens: 64)
        for c in g["continuations"] as! [[String: Any]] {
            let prompt = (c["prompt_tokens"] as! [Int]).map { Int32($0) }
            let want = (c["greedy"] as! [Int]).map { Int32($0) }
            let gen = try Generator(session: s, pool: p, sequence: p.createSequence(), sampling: .greedy, maxTokens: 8,
                                    stopTokenIDs: [], detokenize: { _ in "" })
            let r = try gen.run(prompt: prompt)
            let margin = c["top1_margin"] as! [Double], batched = (c["top1_batched"] as! [Int]).map { Int32($0) }
            print("greedy \(c["prompt"]!): kvant \(r.tokens) llama.cpp \(want) margins \(margin.prefix(4))")
            #expect(r.tokens.count >= 4)
            for i in 0..<min(4, r.tokens.count) where r.tokens[i] != want[i] {
                // Only a near-tie may differ, and only to the token llama.cpp itself picks when it evaluates the
                // same tokens as one batch instead of one by one; the contexts diverge after it.
                #expect(margin[i] < 0.1 && r.tokens[i] == batched[i],
                        "step \(i): kvant \(r.tokens[i]), llama.cpp \(want[i]) (margin \(margin[i]), batched \(batched[i]))")
                break
            }
        }
    }
}
