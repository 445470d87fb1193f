import Executor
import Foundation
import KVCache
import KvantCore
import Tokenizers
import KvantTestSupport
import Testing

/// SmolLM2-135M-Instruct Q4_1 (llama architecture, 3 KV heads, GPT-2 BPE with the `smollm` pre-tokenizer, ChatML)
/// against llama.cpp goldens (scripts/oracle/smollm2_goldens.py; f16 KV on both sides). Compute-heavy checks run in
/// release builds.
@Suite(.serialized, .enabled(if: Fixtures.smolLM2Path != nil, Fixtures.noSmolLM2)) struct SmolLM2Tests {
    static let model: Model? = Fixtures.smolLM2Path.flatMap { try? Model(path: $0) }

    func load() throws -> (Model, ForwardSession) {
        let m = try #require(Self.model)
        return (m, ForwardSession(model: m, threads: 2))
    }

    func pool(_ m: Model, tokens: Int, dtype: KVCacheDType = .fp16, scales: KVScales? = nil) throws -> KVCachePool {
        let spec = m.config.kvCacheSpec(dtype: dtype)
        // int4_pertoken: + its int8 residual rings (one sequence + 4 kept), taken out of the budget first.
        let rings = KVCachePool.residualReserveBytes(spec: spec, maxNumSeqs: 1)
        return try KVCachePool(spec: spec, byteBudget: (tokens + 64) * spec.bytesPerToken + rings, scales: scales)
    }

    @Test func hyperParameters() throws {
        let m = try #require(Self.model)
        let c = m.config
        #expect(c.architecture == .llama && c.numLayers == 30 && c.hiddenSize == 576 && c.numHeads == 9)
        #expect(c.numKVHeads == 3 && c.headDim == 64 && c.ffnSize == 1536 && c.vocabSize == 49152)
        #expect(c.ropeBase == 100_000 && !c.ropeNeox && c.slidingWindow == nil && c.finalLogitSoftcap == nil)
        #expect(abs(c.attentionScale - 0.125) < 1e-7 && c.embeddingScale == 1)
        // tied output (no output.weight), Q8_0 embedding, Q4_1 layers
        #expect(m.file.tensor(named: "output.weight") == nil)
        #expect(m.file.tensor(named: "token_embd.weight")?.type == .q8_0)
        #expect(m.file.tensor(named: "blk.0.attn_q.weight")?.type == .q4_1)
        #expect(!m.addsBOS && m.bosTokenID == 1 && m.eosTokenID == 2)
        // <|im_end|> (2) and <|endoftext|> (0) stop generation
        #expect(m.endOfGenerationTokenIDs.isSuperset(of: [0, 2]))
    }

    /// kvant-eval's `--file` path: GPL-3 tokenized as llama.cpp's tools do gives llama.cpp's ids (7 639 tokens, no BOS).
    @Test func textFileTokensMatchLlamaCpp() throws {
        let g = try Fixtures.json("smollm2_gpl3_perplexity.json")
        let want = (g["tokens"] as! [Int]).map { Int32($0) }
        let got = try TextTokenizer.tokenize(path: g["text"] as! String, model: try load().0)
        #expect(got.count == want.count)
        #expect(got == want)
    }

    @Test(.enabled(if: Fixtures.isRelease, Fixtures.needsRelease))
    func teacherForcedTop1AgreesWithLlamaCpp() async throws {
        let g = try Fixtures.json("smollm2_gpl3_teacher_forced.json")
        let tokens = (g["tokens"] as! [Int]).map { Int32($0) }
        let top1 = g["top1"] as! [Int], lp = g["logprob"] as! [Double], top1FA = g["top1_flash_attn"] as! [Int]
        let oracleSelf = g["top1_agreement_flash_vs_noflash"] as! Double
        let oracleDlp = g["mean_abs_dlogprob_flash_vs_noflash"] as! Double
        let (agree, agreeEither, n, dlp) = try await offPool { () throws -> (Int, Int, Int, Double) in
            let (m, s) = try self.load()
            let p = try self.pool(m, tokens: tokens.count)
            var agree = 0, agreeEither = 0, n = 0
            var dlp = 0.0
            try s.forward(tokens: tokens, startPosition: 0, sequence: p.createSequence(), pool: p,
                          logits: .range(0..<(tokens.count - 1))) { i, l in
                var best = 0
                for k in 1..<l.count where l[k] > l[best] { best = k }
                if best == top1[i] { agree += 1 }
                if best == top1[i] || best == top1FA[i] { agreeEither += 1 }
                dlp += abs(Ops_logSoftmax(l, Int(tokens[i + 1])) - lp[i])
                n += 1
            }
            return (agree, agreeEither, n, dlp)
        }
        let rate = Double(agree) / Double(n), either = Double(agreeEither) / Double(n)
        print("SmolLM2 teacher-forced top-1 agreement \(rate) (with llama.cpp's flash-off or -on top-1: \(either)) over \(n) positions; llama.cpp flash on vs off: \(oracleSelf); mean |Δ log p| \(dlp / Double(n)) (llama.cpp flash on vs off: \(oracleDlp))")
        #expect(n == 1023)
        // At llama.cpp's own noise floor: as close to llama.cpp (flash off) as llama.cpp's two attention kernels are
        // to each other, minus one point (near-ties; other CPUs round differently).
        #expect(rate >= oracleSelf - 0.01)
        #expect(either >= 0.97)
        #expect(dlp / Double(n) < 2 * oracleDlp)
    }

    @Test(.enabled(if: Fixtures.isRelease, Fixtures.needsRelease))
    func perplexityWithinOnePercentOfLlamaCpp() async throws {
        let g = try Fixtures.json("smollm2_gpl3_perplexity.json")
        let tokens = (g["tokens"] as! [Int]).map { Int32($0) }
        let ref = g["perplexity"] as! Double, ctx = g["ctx"] as! Int
        let r = try await offPool {
            let (m, s) = try self.load()
            return try PerplexityEvaluator.run(session: s, pool: try self.pool(m, tokens: ctx), tokens: tokens, ctx: ctx)
        }
        print("SmolLM2 perplexity \(r.perplexity) vs llama.cpp \(ref) (ctx \(ctx), \(r.chunks) chunks, \(r.count) tokens, f16 KV)")
        #expect(r.count == g["count"] as! Int)
        #expect(abs(r.perplexity - ref) / ref < 0.01)
    }

    /// Every KV dtype computes perplexity (GPL-3, ctx 512, 4 chunks); the static int8 dtypes with scales calibrated on
    /// the built-in sample text (per tensor and per head, separate K/V scales). Bounds are loose here (4 chunks);
    /// the full-text figures are in BENCHMARKS.md.
    @Test(.enabled(if: Fixtures.isRelease, Fixtures.needsRelease))
    func everyKVDTypeComputesPerplexity() async throws {
        let g = try Fixtures.json("smollm2_gpl3_perplexity.json")
        let tokens = (g["tokens"] as! [Int]).map { Int32($0) }
        let results = try await offPool { () throws -> [(KVCacheDType, Double)] in
            let (m, s) = try self.load()
            let tok = try makeTokenizer(from: m.file)
            let calib = tok.encode(CalibrationSample.text, addSpecial: true, parseSpecial: false)
            var out: [(KVCacheDType, Double)] = []
            for dtype in KVCacheDType.allCases {
                let scales = dtype.usesStaticScales
                    ? try KVCalibrator.run(session: s, tokens: calib, perHead: dtype == .int8PerTensorPerHead).scales : nil
                let p = try self.pool(m, tokens: 512, dtype: dtype, scales: scales)
                out.append((dtype, try PerplexityEvaluator.run(session: s, pool: p, tokens: tokens, ctx: 512, maxChunks: 4).perplexity))
            }
            return out
        }
        let fp32 = try #require(results.first { $0.0 == .fp32 }?.1)
        for (dtype, ppl) in results {
            print("SmolLM2 GPL-3 ctx 512, 4 chunks: \(dtype.rawValue) \(ppl) (\(String(format: "%+.2f", 100 * (ppl / fp32 - 1))) % vs fp32)")
            #expect(ppl.isFinite && ppl > 1)
            #expect(ppl / fp32 - 1 < (dtype.isQuantized ? 0.03 : 0.005), "\(dtype.rawValue): \(ppl) vs fp32 \(fp32)")
        }
    }

    /// Per-head scales that matter (issue 13): SmolLM2 has 3 KV heads, and `calibrate --per-head` (KVCalibrator, the
    /// path of the daemon's `calibrate` and of `kvant-eval calibrate`: built-in sample, default method, separate K and V
    /// scales) gives every layer 3 different K scales and 3 different V scales, spread apart (the largest head's over the
    /// smallest's; measured median 1.28 for K, 1.34 for V, so above 1.1). With them int8_pertensor_perhead scores all of
    /// GPL-3 at ctx 512 (14 chunks, 3 570 tokens: BENCHMARKS.md's row) no worse than int8_pertensor with the per-tensor
    /// scales of the same calibration, and both stay within the issue's +1.5 % of an fp32 KV cache. Measured on the
    /// project VM: fp32 18.3876, per tensor 18.5407 (+0.83 %), per head 18.4201 (+0.18 %). No tolerance on "no worse":
    /// the gap (0.65 %) is 7× the rounding noise of these 3 570 tokens (fp16 / bf16 vs fp32 KV: −0.09 … +0.07 %), which
    /// is about what other CPUs' kernels (AVX2 vs AVX-512) move a figure by.
    @Test(.enabled(if: Fixtures.isRelease, Fixtures.needsRelease))
    func perHeadScalesDifferAndDoNoWorseThanPerTensor() async throws {
        let g = try Fixtures.json("smollm2_gpl3_perplexity.json")
        let tokens = (g["tokens"] as! [Int]).map { Int32($0) }
        let (perTensor, perHead, ppl) = try await offPool { () throws -> (KVScales, KVScales, [KVCacheDType: Double]) in
            let (m, s) = try self.load()
            let calib = Array(try TextTokenizer.tokenize(text: CalibrationSample.text, model: m).prefix(2048))
            let t = try KVCalibrator.run(session: s, tokens: calib, perHead: false).scales
            let h = try KVCalibrator.run(session: s, tokens: calib, perHead: true).scales
            var ppl: [KVCacheDType: Double] = [:]
            for (dtype, scales) in [(KVCacheDType.fp32, nil), (.int8PerTensor, t), (.int8PerTensorPerHead, h)] as [(KVCacheDType, KVScales?)] {
                let p = try self.pool(m, tokens: 512, dtype: dtype, scales: scales)
                ppl[dtype] = try PerplexityEvaluator.run(session: s, pool: p, tokens: tokens, ctx: 512).perplexity
            }
            return (t, h, ppl)
        }
        #expect(perTensor.granularity == .perTensor && perTensor.hasSeparateKV)
        #expect(perHead.granularity == .perHead && perHead.headsPerLayer == 3 && perHead.numLayers == 30 && perHead.hasSeparateKV)
        var kSpread: [Float] = [], vSpread: [Float] = []
        for l in 0..<perHead.numLayers {
            let k = perHead.keyLayerScales(l), v = perHead.valueLayerScales(l)
            #expect(k.count == 3 && Set(k).count == 3 && v.count == 3 && Set(v).count == 3, "layer \(l): K \(k), V \(v)")
            kSpread.append(k.max()! / k.min()!)
            vSpread.append(v.max()! / v.min()!)
        }
        let kMedian = kSpread.sorted()[kSpread.count / 2], vMedian = vSpread.sorted()[vSpread.count / 2]
        let fp32 = try #require(ppl[.fp32]), tensor = try #require(ppl[.int8PerTensor]), head = try #require(ppl[.int8PerTensorPerHead])
        func pct(_ x: Double) -> String { String(format: "%+.2f %%", 100 * (x / fp32 - 1)) }
        print("SmolLM2 per-head scales: median max/min over heads K \(kMedian), V \(vMedian); GPL-3 ctx 512: fp32 \(fp32), int8_pertensor \(tensor) (\(pct(tensor))), int8_pertensor_perhead \(head) (\(pct(head)))")
        #expect(kMedian > 1.1 && vMedian > 1.1)
        #expect(head <= tensor, "per head \(head) vs per tensor \(tensor)")
        #expect(tensor / fp32 - 1 < 0.015 && head / fp32 - 1 < 0.015)
    }

    /// Greedy continuations of three prompts and three ChatML conversations (rendered by jinja2 from the model's
    /// template) equal llama.cpp's for their 8 tokens: its continuation with flash attention off, or the one with
    /// flash attention on (llama.cpp's two attention kernels disagree with each other on some of these prompts).
    /// Where llama.cpp is itself undecided (a top-1/top-2 margin under 0.1 whose winner changes when it evaluates the
    /// same tokens as one batch) Kvant may take llama.cpp's other answer, and the comparison ends there.
    @Test func greedyContinuationsMatchLlamaCpp() throws {
        let g = try Fixtures.json("smollm2_greedy.json")
        let (m, s) = try load()
        let p = try pool(m, tokens: 128)
        var exact = 0, exactFlash = 0
        let cases = g["continuations"] as! [[String: Any]]
        #expect(cases.count == 6)
        for c in cases {
            let prompt = (c["prompt_tokens"] as! [Int]).map { Int32($0) }
            let want = (c["greedy"] as! [Int]).map { Int32($0) }
            let seq = p.createSequence()
            defer { p.free(seq) }
            let gen = try Generator(session: s, pool: p, sequence: seq, sampling: .greedy, maxTokens: 8,
                                    stopTokenIDs: [], detokenize: { _ in "" })
            let r = try gen.run(prompt: prompt)
            let margin = c["top1_margin"] as! [Double]
            let batched = (c["top1_batched"] as! [Int]).map { Int32($0) }, flash = (c["greedy_flash_attn"] as! [Int]).map { Int32($0) }
            print("SmolLM2 greedy \((c["prompt"] as! String).suffix(30).debugDescription): kvant \(r.tokens) llama.cpp \(want) (flash attention on: \(flash))")
            #expect(r.tokens.count == 8)
            if r.tokens == want { exact += 1; continue }
            if r.tokens == flash { exactFlash += 1; continue }
            for i in 0..<min(8, r.tokens.count) where r.tokens[i] != want[i] {
                #expect(margin[i] < 0.1 && r.tokens[i] == batched[i],
                        "step \(i): kvant \(r.tokens[i]), llama.cpp \(want[i]) (margin \(margin[i]), batched \(batched[i]), flash \(flash))")
                break
            }
        }
        print("SmolLM2 greedy: \(exact) of \(cases.count) continuations equal llama.cpp's (flash attention off) for all 8 tokens, \(exactFlash) more its flash-attention one")
        #expect(exact + exactFlash >= 4)
    }

    /// Chat through the generation loop with the GGUF tokenizer: the ChatML rendering of a question ("Name three
    /// primary colors.") is answered as llama.cpp answers it (its first 8 greedy tokens, flash attention off or on:
    /// "The primary colors are: red, blue" / "The primary colors are:\n\nRed") and generation ends at <|im_end|>
    /// (an end-of-generation token) before max_tokens.
    @Test func chatEndsAtImEnd() throws {
        let g = try Fixtures.json("smollm2_greedy.json")
        let chat = (g["continuations"] as! [[String: Any]])[4]
        let (m, s) = try load()
        let tok = try makeTokenizer(from: m.file)
        let prompt = tok.encode(chat["prompt"] as! String, addSpecial: true, parseSpecial: true)
        #expect(prompt == (chat["prompt_tokens"] as! [Int]).map { Int32($0) })
        let p = try pool(m, tokens: 256)
        let gen = try Generator(session: s, pool: p, sequence: p.createSequence(), sampling: .greedy, maxTokens: 160, tokenizer: tok)
        var streamed = ""
        let r = try gen.run(prompt: prompt, onToken: { _, piece in streamed += piece })
        print("SmolLM2 chat answer: \(r.text.debugDescription)")
        #expect(r.finishReason == .eos)
        let answers = ["greedy", "greedy_flash_attn"].map { tok.decode((chat[$0] as! [Int]).map { Int32($0) }) }
        #expect(answers.contains { r.text.hasPrefix($0) }, "\(r.text.debugDescription) starts with neither of \(answers)")
        #expect(!r.text.contains("<|im_end|>") && streamed == r.text)
    }
}

/// log p(k) from logits (double accumulation), as the Gemma tests compute it.
func Ops_logSoftmax(_ l: UnsafeBufferPointer<Float>, _ k: Int) -> Double {
    var mx = -Float.infinity
    for v in l { mx = max(mx, v) }
    var z = 0.0
    for v in l { z += exp(Double(v - mx)) }
    return Double(l[k] - mx) - log(z)
}
