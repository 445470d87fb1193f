import ArgumentParser
import Dispatch
import Executor
import Foundation
import KVCache
import KvantCore
import ModelFormats
import Tokenizers

/// Offline evaluation of the executor: perplexity (llama-perplexity's method), top-1 agreement with a golden
/// fixture, and prefill/decode speed.
@main
struct KvantEval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvant-eval",
        abstract: "Perplexity, top-1 agreement and speed of Kvant's executor.",
        subcommands: [Perplexity.self, Calibrate.self, Top1.self, Bench.self, Speed.self, TokenizeSpeed.self])
}

struct ModelOptions: ParsableArguments {
    @Option(help: "GGUF model path.") var model: String
    @Option(help: "Worker threads.") var threads: Int = 2
    @Option(name: .customLong("kv-cache-dtype"), help: "auto, fp16, bf16, fp32, int8_pertensor, int8_pertensor_perhead, int8_pertoken, int4_pertoken.")
    var kvCacheDType: String = "auto"
    @Option(name: .customLong("quantization-param-path"), help: "kv_cache_scales.json for the static int8 dtypes.")
    var quantizationParamPath: String?
    @Flag(name: .customLong("default-scales"), help: "Static int8 dtypes without a scale file: every scale 1.0 (as the daemon does, with a warning).")
    var defaultScales = false
    @Flag(name: .customLong("no-kv-rotation"), help: "int8_pertoken, int4_pertoken: store K/V rows unrotated (no Hadamard rotation), for comparison.")
    var noKVRotation = false
    @Option(name: .customLong("int4-recent-blocks"), help: "int4_pertoken: blocks of each query's recent past (and token 0) read from the int8 residual (0 = none, for comparison).")
    var int4RecentBlocks: Int = 4
    @Option(name: .customLong("simulate-k"), help: "MEASUREMENT ONLY (needs --kv-cache-dtype fp32): simulate K stored as fp32 | int4|int8[:g<N>|:row][:sym|:asym][:rot|:norot], e.g. int4:g32:asym:rot.")
    var simulateK: String?
    @Option(name: .customLong("simulate-v"), help: "MEASUREMENT ONLY: simulated V format (as --simulate-k).")
    var simulateV: String?
    @Option(name: .customLong("simulate-residual"), help: "MEASUREMENT ONLY: KIVI-style residual, the query's own block read in this format (e.g. int8:row:sym:rot:f32s).")
    var simulateResidual: String?
    @Option(name: .customLong("simulate-residual-blocks"), help: "MEASUREMENT ONLY: blocks covered by the residual (the query's and earlier ones).")
    var simulateResidualBlocks: Int = 1
    @Option(name: .customLong("simulate-int8-layers"), help: "MEASUREMENT ONLY: comma-separated layers kept whole in the residual format (default int8 per row, rotated).")
    var simulateInt8Layers: String?
    @Option(name: .customLong("simulate-sink-tokens"), help: "MEASUREMENT ONLY: positions below this stored in the residual format (default int8 per row, rotated) in every layer.")
    var simulateSinkTokens: Int = 0

    /// The simulated KV format (measurement tool), nil when no --simulate-* option is given.
    func simulation() throws -> KVQuantSimulation? {
        guard simulateK != nil || simulateV != nil || simulateResidual != nil else { return nil }
        return KVQuantSimulation(key: try KVRowFormat(parsing: simulateK ?? "fp32"), value: try KVRowFormat(parsing: simulateV ?? "fp32"),
                                 residual: try simulateResidual.map { try KVRowFormat(parsing: $0) },
                                 residualBlocks: simulateResidualBlocks,
                                 highPrecisionLayers: Set((simulateInt8Layers ?? "").split(separator: ",").compactMap { Int($0) }),
                                 sinkTokens: simulateSinkTokens)
    }

    /// `sequences`: live at once (the pool's `maxNumSeqs`; int4_pertoken's residual rings are added to the budget).
    func load(contextTokens: Int, sequences: Int = 1) throws -> (Model, ForwardSession, KVCachePool) {
        let dtype = try KVCacheDType(parsing: kvCacheDType)
        let model = try Model(path: model)
        let spec = model.config.kvCacheSpec(dtype: dtype)
        var scales: KVScales?
        if let p = quantizationParamPath {
            scales = try KVScales.load(path: p, expectedModelType: nil, numLayers: spec.numLayers, numKVHeads: spec.numKVHeads)
        } else if dtype.usesStaticScales && !defaultScales {
            throw KvantError(.invalidArgument, "--kv-cache-dtype \(dtype.rawValue) needs --quantization-param-path (or --default-scales for 1.0 everywhere)")
        }
        let blocks = (contextTokens + spec.blockSize - 1) / spec.blockSize + 2
        let rings = KVCachePool.residualReserveBytes(spec: spec, maxNumSeqs: sequences, int4RecentBlocks: int4RecentBlocks)
        let pool = try KVCachePool(spec: spec, byteBudget: blocks * spec.blockSize * spec.bytesPerToken * 2 + rings, scales: scales,
                                   hadamardRotation: !noKVRotation, int4RecentBlocks: int4RecentBlocks, maxNumSeqs: sequences)
        if let sim = try simulation() { try pool.setQuantSimulation(sim) }
        return (model, ForwardSession(model: model, threads: threads), pool)
    }
}

/// Token ids of a text: `--file` through the GGUF tokenizer, or a JSON fixture with a "tokens" array.
func loadTokens(file: String?, tokensJSON: String?, model: Model) throws -> [Int32] {
    if let j = tokensJSON {
        let obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: j)))
        guard let d = obj as? [String: Any], let t = d["tokens"] as? [Int] else {
            throw KvantError(.invalidArgument, "\(j): no \"tokens\" array")
        }
        return t.map { Int32($0) }
    }
    guard let f = file else { throw KvantError(.invalidArgument, "give --file or --tokens-json") }
    return try TextTokenizer.tokenize(path: f, model: model)
}

struct Perplexity: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Perplexity like llama-perplexity: non-overlapping chunks of ctx tokens, BOS first, the second half scored.")
    @OptionGroup var opts: ModelOptions
    @Option(help: "Text file.") var file: String?
    @Option(name: .customLong("tokens-json"), help: "JSON file with a \"tokens\" array (instead of --file).") var tokensJSON: String?
    @Option(help: "Context (chunk) length in tokens.") var ctx: Int = 512
    @Option(help: "Evaluate at most this many chunks.") var chunks: Int?

    func run() throws {
        let (model, session, pool) = try opts.load(contextTokens: ctx)
        let tokens = try loadTokens(file: file, tokensJSON: tokensJSON, model: model)
        let t0 = Date()
        let r = try PerplexityEvaluator.run(session: session, pool: pool, tokens: tokens, ctx: ctx, maxChunks: chunks, progress: { i, ppl in
            FileHandle.standardError.write("[\(i + 1)]\(String(format: "%.4f", ppl)) ".data(using: .utf8)!)
        })
        FileHandle.standardError.write("\n".data(using: .utf8)!)
        let dt = Date().timeIntervalSince(t0)
        var extra = ""
        if let sim = try opts.simulation(), let e = pool.quantSimulationError {
            let D = pool.spec.headDim
            let f = { (v: [Double]) in "[" + v.map { String(format: "%.3g", $0) }.joined(separator: ", ") + "]" }
            let L = pool.spec.numLayers
            extra = String(format: ", \"simulated\": {\"k\": \"%@\", \"v\": \"%@\", \"residual\": \"%@ x%d\", \"int8_layers\": \"%@\", \"sink_tokens\": %d, \"bytes_per_token_per_kv_head\": %.1f, \"vs_fp16\": %.4f, ",
                           sim.key.description, sim.value.description, sim.residual?.description ?? "none", sim.residualBlocks,
                           sim.highPrecisionLayers.sorted().map(String.init).joined(separator: ","), sim.sinkTokens,
                           sim.bytesPerTokenPerHead(headDim: D, numLayers: L), sim.bytesPerTokenPerHead(headDim: D, numLayers: L) / Double(4 * D))
                + "\"k_rel_mse\": \(f(e.keyRelMSE)), \"v_rel_mse\": \(f(e.valueRelMSE))}"
        }
        print(String(format: "{\"perplexity\": %.6f, \"chunks\": %d, \"ctx\": %d, \"scored_tokens\": %d, \"kv_cache_dtype\": \"%@\", \"seconds\": %.2f",
                     r.perplexity, r.chunks, ctx, r.count, opts.kvCacheDType, dt) + extra + "}")
    }
}

struct Calibrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Calibrates static KV scales (KVCalibrator, as the daemon's calibrate) and writes kv_cache_scales.json.")
    @Option(help: "GGUF model path.") var model: String
    @Option(help: "Worker threads.") var threads: Int = 2
    @Option(help: "Calibration text file (default: the built-in calibration sample).") var file: String?
    @Option(name: .customLong("num-tokens"), help: "At most this many tokens of the text.") var numTokens: Int = 2048
    @Flag(name: .customLong("per-head"), help: "One scale per (layer, KV head).") var perHead = false
    @Option(name: .customLong("tp-size"), help: "TP ranks to write.") var tpSize: Int = 1
    @Option(help: "Clipping: max (amax/127), mse (MSE-optimal shared clip of K and V), or p<percentile> e.g. p99.99 (default: calibrate's default).")
    var method: String?
    @Option(name: .customLong("key-weight"), help: "For --method mse: weight of K's relative error against V's.") var keyWeight: Double = 1
    @Option(help: "Output kv_cache_scales.json.") var output: String
    @Flag(name: .customLong("shared-kv-scale"), help: "Only vLLM's shared K/V scale (no k_scaling_factor / v_scaling_factor).")
    var sharedKVScale = false

    func run() throws {
        let clip: KVClipMethod
        switch method ?? "default" {
        case "default": clip = KVCalibrator.defaultMethod
        case "max": clip = .max
        case "mse": clip = .mse(keyWeight: keyWeight)
        case let m where m.hasPrefix("p"):
            guard let p = Double(m.dropFirst()), p > 0, p < 100 else {
                throw KvantError(.invalidArgument, "--method \(m): expected p<percentile> with a percentile in (0, 100)")
            }
            clip = .percentile(p)
        case let m:
            throw KvantError(.invalidArgument, "--method \(m): expected max, mse or p<percentile>")
        }
        let m = try Model(path: model)
        var tokens = try file.map { try TextTokenizer.tokenize(path: $0, model: m) }
            ?? TextTokenizer.tokenize(text: CalibrationSample.text, model: m)
        if tokens.count > numTokens { tokens.removeLast(tokens.count - numTokens) }
        let session = ForwardSession(model: m, threads: threads)
        let t0 = Date()
        let r = try KVCalibrator.run(session: session, tokens: tokens, window: 512, perHead: perHead, method: clip,
                                     separateKV: !sharedKVScale)
        let data = try r.scales.encode(modelType: m.config.architecture.rawValue, tpSize: tpSize, perHead: perHead)
        try data.write(to: URL(fileURLWithPath: output), options: .atomic)
        let back = try KVScales.load(path: output, expectedModelType: m.config.architecture.rawValue,
                                     numLayers: m.config.numLayers, numKVHeads: m.config.numKVHeads)
        let layers = (0..<m.config.numLayers).map { l in
            String(format: "{\"layer\": %d, \"k_amax\": %.4g, \"v_amax\": %.4g, \"k_rms\": %.4g, \"v_rms\": %.4g, \"clip\": %.4g, \"k_clip\": %.4g, \"v_clip\": %.4g, \"k_saturation\": %.3g, \"v_saturation\": %.3g}",
                   l, r.keyAmax[l], r.valueAmax[l], r.keyRMS[l], r.valueRMS[l], back.layerScales(l).max()! * 127,
                   back.keyLayerScales(l).max()! * 127, back.valueLayerScales(l).max()! * 127, r.keySaturation[l], r.valueSaturation[l])
        }
        print("{\"output\": \"\(output)\", \"method\": \"\(r.method)\", \"tokens\": \(r.tokens), \"per_head\": \(perHead), \"tp_size\": \(tpSize), "
              + String(format: "\"seconds\": %.2f, ", Date().timeIntervalSince(t0)) + "\"layers\": [\n  " + layers.joined(separator: ",\n  ") + "]}")
    }
}

struct Top1: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Teacher-forced top-1 agreement with a golden fixture (tokens + llama.cpp top-1 per position).")
    @OptionGroup var opts: ModelOptions
    @Option(help: "Text file (unused when the fixture holds tokens).") var file: String?
    @Option(help: "Golden fixture JSON with \"tokens\" and \"top1\".") var golden: String
    @Option(name: .customLong("dump-json"), help: "Write Kvant's top-1 and next-token log-probs here.") var dumpJSON: String?

    func run() throws {
        let obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: golden)))
        guard let d = obj as? [String: Any], let toks = d["tokens"] as? [Int], let ref = d["top1"] as? [Int] else {
            throw KvantError(.invalidArgument, "\(golden): needs \"tokens\" and \"top1\" arrays")
        }
        let (_, session, pool) = try opts.load(contextTokens: toks.count)
        let tokens = toks.map { Int32($0) }
        let seq = pool.createSequence()
        defer { pool.free(seq) }
        var agree = 0, n = 0
        var ours: [Int] = [], lps: [Double] = []
        try session.forward(tokens: tokens, startPosition: 0, sequence: seq, pool: pool, logits: .range(0..<min(ref.count, tokens.count))) { i, l in
            var best = 0
            for k in 1..<l.count where l[k] > l[best] { best = k }
            if best == ref[i] { agree += 1 }
            n += 1
            ours.append(best)
            if i + 1 < tokens.count { lps.append(logSoftmax(l, Int(tokens[i + 1]))) }
        }
        if let path = dumpJSON {
            let data = try JSONSerialization.data(withJSONObject: ["top1": ours, "logprob": lps])
            try data.write(to: URL(fileURLWithPath: path))
        }
        print(String(format: "{\"top1_agreement\": %.4f, \"positions\": %d, \"kv_cache_dtype\": \"%@\"}", Double(agree) / Double(max(n, 1)), n, opts.kvCacheDType))
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Prefill and decode speed in tokens/s.")
    @OptionGroup var opts: ModelOptions
    @Option(name: .customLong("prompt-tokens")) var promptTokens: Int = 512
    @Option(name: .customLong("gen-tokens")) var genTokens: Int = 128
    @Option(help: "KV cache capacity in tokens.") var context: Int = 4096
    @Option(help: "Text whose tokens are used (default: token ids cycling through the vocabulary).") var file: String?
    @Option var repeats: Int = 2
    @Option(help: "Sequences decoded together per step (ForwardSession.decode); decode_tps counts all of their tokens.")
    var batch: Int = 1

    func run() throws {
        guard promptTokens >= 1, genTokens >= 1, promptTokens + genTokens <= context else {
            throw KvantError(.invalidArgument, "need 1 ≤ prompt-tokens, 1 ≤ gen-tokens, prompt+gen ≤ context")
        }
        let (model, session, pool) = try opts.load(contextTokens: max(context, batch * (promptTokens + genTokens + 16)), sequences: batch)
        var toks: [Int32]
        if let f = file { toks = try TextTokenizer.tokenize(path: f, model: model) } else {
            toks = [model.bosTokenID ?? 2] + (1..<(promptTokens + genTokens)).map { Int32(1000 + ($0 * 7919) % 200_000) % Int32(model.config.vocabSize) }
        }
        while toks.count < promptTokens + genTokens { toks += toks }
        guard batch >= 1, batch <= 64 else { throw KvantError(.invalidArgument, "--batch must be in 1...64") }
        if batch > 1 {
            // Prefill `batch` sequences, then decode them together.
            var bestD = 0.0
            for _ in 0..<max(1, repeats) {
                let seqs = (0..<batch).map { _ in pool.createSequence() }
                for sq in seqs { _ = try session.forwardLast(tokens: Array(toks[0..<promptTokens]), startPosition: 0, sequence: sq, pool: pool) }
                let t1 = Date()
                for i in 0..<genTokens {
                    let items = seqs.map { DecodeItem(token: toks[promptTokens + i], position: promptTokens + i, sequence: $0) }
                    try session.decode(items, pool: pool) { _, _ in }
                }
                bestD = max(bestD, Double(genTokens * batch) / Date().timeIntervalSince(t1))
                for sq in seqs { pool.free(sq) }
            }
            print(String(format: "{\"engine\": \"kvant\", \"threads\": %d, \"batch\": %d, \"prompt_tokens\": %d, \"gen_tokens\": %d, \"kv_cache_dtype\": \"%@\", \"decode_tps\": %.2f}",
                         opts.threads, batch, promptTokens, genTokens, opts.kvCacheDType, bestD))
            return
        }
        var bestP = 0.0, bestD = 0.0
        for _ in 0..<max(1, repeats) {
            let seq = pool.createSequence()
            let t0 = Date()
            _ = try session.forwardLast(tokens: Array(toks[0..<promptTokens]), startPosition: 0, sequence: seq, pool: pool)
            let t1 = Date()
            for i in 0..<genTokens {
                _ = try session.forwardLast(tokens: [toks[promptTokens + i]], startPosition: promptTokens + i, sequence: seq, pool: pool)
            }
            let t2 = Date()
            pool.free(seq)
            bestP = max(bestP, Double(promptTokens) / t1.timeIntervalSince(t0))
            bestD = max(bestD, Double(genTokens) / t2.timeIntervalSince(t1))
        }
        print(String(format: "{\"engine\": \"kvant\", \"threads\": %d, \"prompt_tokens\": %d, \"gen_tokens\": %d, \"context\": %d, \"kv_cache_dtype\": \"%@\", \"prefill_tps\": %.2f, \"decode_tps\": %.2f}",
                     opts.threads, promptTokens, genTokens, context, opts.kvCacheDType, bestP, bestD))
    }
}

/// Speed measured the way llama.cpp's own tools measure it, so `make bench` can put the two side by side.
///
/// Default (one sequence) follows llama-bench (tools/llama-bench/llama-bench.cpp of llama.cpp in the
/// llama-cpp-python 0.3.36 sdist): a test is either a prompt run `ppN` (`--n-prompt N --n-gen 0`) or a generation
/// run `tgN` (`--n-prompt 0 --n-gen N`), optionally `@ dD` (`--n-depth D`). Per test: a warm-up (the whole prompt
/// run for pp, one generated token for tg), then per repetition: an empty cache; `D` context tokens prefilled
/// untimed (prefilled once and the cache cut back to `D` after each repetition, as llama-bench restores its saved
/// state); then, timed, the prompt of `N` tokens in one forward pass (logits of the last token only) or `N`
/// one-token decode steps at positions `D ..< D+N`, each computing its logits. Tokens: BOS first (when the model
/// adds one), then pseudo-random ids, as llama-bench's `std::rand() % n_vocab`.
///
/// `--batched --parallel P` follows llama-batched-bench instead (tools/batched-bench): P sequences each prefilled with
/// their own `--n-prompt` random tokens (timed as pp), then `--n-gen` decode steps of P rows each, one token per
/// sequence per step (`ForwardSession.decode`, timed as tg: `speed_tg = P·n_gen / t_tg`).
///
/// Prints one JSON line per repetition set: `samples_ts` (tokens/s of each repetition), `avg_ts`, and for
/// `--batched` `speed_pp`/`speed_tg` as llama-batched-bench's jsonl.
struct Speed: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Prefill/decode tokens/s measured as llama-bench (or llama-batched-bench with --batched) measures them.")
    @OptionGroup var opts: ModelOptions
    @Option(name: .customLong("n-prompt"), help: "Prompt tokens of a pp test (0 for a tg test).") var nPrompt: Int = 0
    @Option(name: .customLong("n-gen"), help: "Generated tokens of a tg test (0 for a pp test).") var nGen: Int = 128
    @Option(name: .customLong("n-depth"), help: "Context tokens in the cache before the timed part (llama-bench -d).") var nDepth: Int = 0
    @Option(help: "Timed repetitions (llama-bench -r).") var reps: Int = 1
    @Flag(help: "Measure as llama-batched-bench (see --parallel) instead of llama-bench.") var batched = false
    @Option(help: "With --batched: sequences decoded together (llama-batched-bench -npl).") var parallel: Int = 1
    @Option(help: "Seed of the pseudo-random token ids.") var seed: UInt64 = 1

    func run() throws {
        guard nPrompt >= 0, nGen >= 0, nDepth >= 0, reps >= 1, parallel >= 1, parallel <= 64 else {
            throw KvantError(.invalidArgument, "need n-prompt, n-gen, n-depth ≥ 0, reps ≥ 1 and parallel in 1...64")
        }
        let single = !batched
        guard !single || (nPrompt > 0) != (nGen > 0) else {
            throw KvantError(.invalidArgument, "one test at a time: --n-prompt N --n-gen 0 (ppN) or --n-prompt 0 --n-gen N (tgN)")
        }
        guard single || (nPrompt > 0 && nGen > 0 && nDepth == 0) else {
            throw KvantError(.invalidArgument, "--batched needs --n-prompt > 0, --n-gen > 0 and no --n-depth (llama-batched-bench's -npp/-ntg)")
        }
        let perSeq = nPrompt + nGen + nDepth
        let (model, session, pool) = try opts.load(contextTokens: parallel * (perSeq + 2 * blockSlack), sequences: parallel)
        let vocab = UInt64(model.config.vocabSize)
        let bos: Int32? = model.addsBOS ? (model.bosTokenID ?? 2) : nil
        var state = seed &* 6364136223846793005 &+ 1442695040888963407
        func rand() -> Int32 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int32(truncatingIfNeeded: (state >> 33) % vocab)
        }
        func randomTokens(_ n: Int, bosFirst: Bool) -> [Int32] {
            (0..<n).map { i in i == 0 && bosFirst ? (bos ?? rand()) : rand() }
        }
        func run(_ tokens: [Int32], at start: Int, _ seq: SequenceID) throws {
            try session.forward(tokens: tokens, startPosition: start, sequence: seq, pool: pool, logits: .last) { _, _ in }
        }
        func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

        if !single {
            var samplesPP: [Double] = [], samplesTG: [Double] = []
            // Warm-up as llama-batched-bench: 16 tokens of one sequence.
            do {
                let s = pool.createSequence()
                try run(randomTokens(16, bosFirst: false), at: 0, s)
                pool.free(s)
            }
            for _ in 0..<reps {
                let seqs = (0..<parallel).map { _ in pool.createSequence() }
                let prompts = seqs.map { _ in randomTokens(nPrompt, bosFirst: false) }
                let t0 = now()
                for (s, p) in zip(seqs, prompts) { try run(p, at: 0, s) }
                let t1 = now()
                for i in 0..<nGen {
                    let items = seqs.map { DecodeItem(token: rand(), position: nPrompt + i, sequence: $0) }
                    try session.decode(items, pool: pool) { _, _ in }
                }
                let t2 = now()
                for s in seqs { pool.free(s) }
                samplesPP.append(Double(parallel * nPrompt) / (Double(t1 - t0) / 1e9))
                samplesTG.append(Double(parallel * nGen) / (Double(t2 - t1) / 1e9))
            }
            print(jsonLine(["engine": "\"kvant\"", "kv_cache_dtype": "\"\(opts.kvCacheDType)\"", "n_threads": "\(opts.threads)",
                            "pp": "\(nPrompt)", "tg": "\(nGen)", "pl": "\(parallel)",
                            "speed_pp": fmt(samplesPP.reduce(0, +) / Double(reps)), "speed_tg": fmt(samplesTG.reduce(0, +) / Double(reps)),
                            "samples_pp": "[" + samplesPP.map(fmt).joined(separator: ", ") + "]",
                            "samples_tg": "[" + samplesTG.map(fmt).joined(separator: ", ") + "]"]))
            return
        }

        // Warm-up as llama-bench: the whole prompt run for pp, one generated token for tg, on an empty cache.
        do {
            let s = pool.createSequence()
            if nPrompt > 0 { try run(randomTokens(nPrompt, bosFirst: true), at: 0, s) } else { try run(randomTokens(1, bosFirst: true), at: 0, s) }
            pool.free(s)
        }
        let seq = pool.createSequence()
        defer { pool.free(seq) }
        if nDepth > 0 { try run(randomTokens(nDepth, bosFirst: true), at: 0, seq) }
        var samples: [UInt64] = []
        for _ in 0..<reps {
            pool.truncate(seq, to: nDepth)
            if nPrompt > 0 {
                let toks = randomTokens(nPrompt, bosFirst: true)  // llama-bench: BOS first in every prompt run, depth or not
                let t0 = now()
                try run(toks, at: nDepth, seq)
                samples.append(now() - t0)
            } else {
                let toks = randomTokens(nGen, bosFirst: true)
                let t0 = now()
                for i in 0..<nGen { try run([toks[i]], at: nDepth + i, seq) }
                samples.append(now() - t0)
            }
        }
        let n = Double(nPrompt + nGen)
        let ts = samples.map { n / (Double($0) / 1e9) }
        let test = (nPrompt > 0 ? "pp\(nPrompt)" : "tg\(nGen)") + (nDepth > 0 ? " @ d\(nDepth)" : "")
        print(jsonLine(["engine": "\"kvant\"", "test": "\"\(test)\"", "kv_cache_dtype": "\"\(opts.kvCacheDType)\"",
                        "n_threads": "\(opts.threads)", "n_prompt": "\(nPrompt)", "n_gen": "\(nGen)", "n_depth": "\(nDepth)",
                        "samples_ns": "[" + samples.map { "\($0)" }.joined(separator: ", ") + "]",
                        "samples_ts": "[" + ts.map(fmt).joined(separator: ", ") + "]",
                        "avg_ts": fmt(ts.reduce(0, +) / Double(ts.count))]))
    }

    /// Spare blocks' worth of tokens per sequence (warm-up sequence, partially filled blocks).
    private var blockSlack: Int { 64 }
    private func fmt(_ v: Double) -> String { String(format: "%.4f", v) }
    private func jsonLine(_ fields: KeyValuePairs<String, String>) -> String {
        "{" + fields.map { "\"\($0.key)\": \($0.value)" }.joined(separator: ", ") + "}"
    }
}

/// log-softmax of entry `k` (Double accumulation).
func logSoftmax(_ l: UnsafeBufferPointer<Float>, _ k: Int) -> Double {
    var m = -Float.infinity
    for v in l { m = max(m, v) }
    var s = 0.0
    for v in l { s += exp(Double(v - m)) }
    return Double(l[k] - m) - log(s)
}

/// Tokenizer speed on a text (the suite checks only correctness: a busy machine would fail a speed assertion).
struct TokenizeSpeed: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize-speed",
        abstract: "Encode and decode speed of the GGUF's tokenizer on a text file, in MB/s (median of repeats).")
    @Option(help: "GGUF model path.") var model: String
    @Option(help: "UTF-8 text file.") var file: String = "/usr/share/common-licenses/GPL-3"
    @Option var repeats: Int = 5

    func run() throws {
        let tokenizer = try makeTokenizer(from: GGUFFile(path: model))
        let text = try TextTokenizer.readText(path: file)
        let megabytes = Double(text.utf8.count) / 1e6
        var encodeSeconds: [Double] = [], decodeSeconds: [Double] = []
        var ids: [Int32] = []
        for _ in 0..<max(1, repeats) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            ids = tokenizer.encode(text, addSpecial: false, parseSpecial: false)
            let t1 = DispatchTime.now().uptimeNanoseconds
            let back = tokenizer.decode(ids)
            let t2 = DispatchTime.now().uptimeNanoseconds
            guard back == text else { throw KvantError(.internal, "decode(encode(text)) differs from the text of \(file)") }
            encodeSeconds.append(Double(t1 - t0) / 1e9)
            decodeSeconds.append(Double(t2 - t1) / 1e9)
        }
        func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
        print(String(format: "{\"bytes\": %d, \"tokens\": %d, \"encode_mb_per_s\": %.2f, \"decode_mb_per_s\": %.2f, \"repeats\": %d}",
                     text.utf8.count, ids.count, megabytes / median(encodeSeconds), megabytes / median(decodeSeconds), encodeSeconds.count))
    }
}
