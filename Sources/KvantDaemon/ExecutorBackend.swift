import ControlProtocol
import Executor
import Foundation
import KVCache
import KvantCore
import Logging
import ModelFormats
import Tokenizers

/// The inference backend over Kvant's own CPU executor: GGUF weights (`Executor.Model`), the
/// GGUF tokenizer, and a paged `KVCachePool` built from the model's KV geometry and the requested
/// `kv_cache_dtype`.
///
/// `set-kv-dtype` policy: the new pool is built beside the old one; sequences already running keep
/// the pool they started on (each holds a reference) and finish there, new sequences use the new
/// pool. The old pool's memory is returned when its last sequence ends, so for that while both
/// budgets are allocated.
public struct ExecutorBackend: InferenceBackend {
    let logger: Logger

    public init(logger: Logger = Logger(label: "kvant.executor")) { self.logger = logger }

    public var name: String { "kvant-cpu" }

    public func loadModel(_ request: ModelLoadRequest, progress: @escaping @Sendable (String) -> Void) throws -> any LoadedModel {
        progress("mapping weights of \((request.path as NSString).lastPathComponent)")
        let model = try Model(path: request.path)
        progress("building the tokenizer")
        let tokenizer = try makeTokenizer(from: model.file)
        progress("allocating the KV cache")
        return try ExecutorModel(model: model, tokenizer: tokenizer, request: request, logger: logger)
    }

    public func validateScales(path: String, for model: (any LoadedModel)?) throws -> ScalesReport {
        guard let model = model as? ExecutorModel else {
            throw KvantError(.failedPrecondition,
                             "scales-validate '\(path)': no model is loaded; a scale file is checked against the loaded model's layers, KV heads and model_type")
        }
        let scales = try model.loadScales(path: path)
        var report = ExecutorModel.report(scales, epoch: nil)
        // The same checks reload-scales makes against the pool in force; for a dtype without
        // static scales the file is only checked against the model, and the report says so.
        let dtype = model.info.kvCacheDType
        if dtype.usesStaticScales {
            try KVCachePool.checkScales(scales, for: model.model.config.kvCacheSpec(dtype: dtype))
        } else {
            report.warnings.append("kv_cache_dtype \(dtype.rawValue) uses no scale file; checked against the model only (it applies after set-kv-dtype \(scales.granularity == .perHead ? "int8_pertensor_perhead" : "int8_pertensor or int8_pertensor_perhead"))")
        }
        return report
    }
}

/// A loaded model: weights, tokenizer, one forward session (used only on the engine's compute
/// thread) and the current KV-cache pool.
final class ExecutorModel: LoadedModel, @unchecked Sendable {
    let model: Model
    let tokenizer: any Tokenizer
    let session: ForwardSession
    let path: String
    let name: String
    let kvCacheBytes: Int
    let blockSize: Int
    /// Longest sequence, tokens (prompt + generated).
    let maxModelLen: Int
    let logger: Logger

    private let lock = NSLock()
    private var pool: KVCachePool          // guarded by lock
    private var dtype: KVCacheDType        // guarded by lock
    private var scales: KVScales?          // installed static scales; nil = none or default 1.0

    init(model: Model, tokenizer: any Tokenizer, request: ModelLoadRequest, logger: Logger) throws {
        self.model = model
        self.tokenizer = tokenizer
        self.logger = logger
        path = request.path
        name = (try? model.file.string("general.name")) ?? (request.path as NSString).lastPathComponent
        kvCacheBytes = request.kvCacheBytes
        blockSize = request.blockSize
        let trained = model.config.contextLength
        if let m = request.maxModelLen, m > trained {
            throw KvantError(.invalidArgument, "max_model_len \(m) exceeds the model's trained context length \(trained) (\(request.path))")
        }
        maxModelLen = request.maxModelLen ?? trained
        let threads = request.threads > 0 ? request.threads : ProcessInfo.processInfo.activeProcessorCount
        session = ForwardSession(model: model, threads: threads)
        dtype = request.kvCacheDType
        (pool, scales) = try Self.makePool(model: model, dtype: request.kvCacheDType, scalePath: request.quantizationParamPath,
                                           kvCacheBytes: kvCacheBytes, blockSize: blockSize, logger: logger)
    }

    /// Builds a pool of `kvCacheBytes` for `dtype`, with the scale file for the static modes.
    /// - Throws: `.invalidArgument` for a scale file with a dtype that uses none, or a bad file;
    ///   `.resourceExhausted` when the budget holds less than one block.
    private static func makePool(model: Model, dtype: KVCacheDType, scalePath: String?, kvCacheBytes: Int, blockSize: Int,
                                 logger: Logger) throws -> (KVCachePool, KVScales?) {
        var scales: KVScales?
        if dtype.usesStaticScales {
            if let scalePath {
                scales = try loadScales(model: model, path: scalePath, logger: logger)
            } else {
                logger.warning("""
                    kv_cache_dtype \(dtype.rawValue) without quantization_param_path: EVERY KV SCALE IS 1.0 \
                    (K/V rounded to integers and clipped at ±127); expect a large accuracy loss. \
                    Calibrate with 'kvantctl calibrate' and load the file. stats reports scale_source "default 1.0".
                    """)
            }
        } else if let scalePath {
            throw KvantError(.invalidArgument,
                             "quantization_param_path '\(scalePath)' is only used by int8_pertensor and int8_pertensor_perhead, not by kv_cache_dtype \(dtype.rawValue)")
        }
        let spec = model.config.kvCacheSpec(dtype: dtype, blockSize: blockSize)
        guard kvCacheBytes >= spec.bytesPerToken * spec.blockSize else {
            throw KvantError(.resourceExhausted,
                             "kv_cache_bytes \(kvCacheBytes) holds less than one block of \(spec.blockSize) tokens at \(spec.bytesPerToken) bytes/token (kv_cache_dtype \(dtype.rawValue))")
        }
        return (try KVCachePool(spec: spec, byteBudget: kvCacheBytes, scales: scales), scales)
    }

    /// Reads and validates a scale file against this model (layers, KV heads, model_type).
    func loadScales(path: String) throws -> KVScales {
        try Self.loadScales(model: model, path: path, logger: logger)
    }

    private static func loadScales(model: Model, path: String, logger: Logger) throws -> KVScales {
        let c = model.config
        let s = try KVScales.load(path: path, expectedModelType: c.architecture.rawValue,
                                  numLayers: c.numLayers, numKVHeads: c.numKVHeads)
        for w in s.warnings { logger.warning("\(w)") }
        return s
    }

    static func report(_ s: KVScales, epoch: Int?) -> ScalesReport {
        let inForce = s.keyValues + s.valueValues
        func rows(_ f: (Int) -> [Float]) -> [[Double]] { (0..<s.numLayers).map { f($0).map(Double.init) } }
        return ScalesReport(path: s.path, layers: s.numLayers, perHead: s.granularity == .perHead,
                            min: Double(inForce.min() ?? 0), max: Double(inForce.max() ?? 0),
                            sha256: s.sha256 ?? "", epoch: epoch, warnings: s.warnings,
                            layerScales: rows(s.layerScales),
                            layerKeyScales: s.hasSeparateKV ? rows(s.keyLayerScales) : nil,
                            layerValueScales: s.hasSeparateKV ? rows(s.valueLayerScales) : nil)
    }

    private func current() -> (KVCachePool, KVCacheDType, KVScales?) {
        lock.lock(); defer { lock.unlock() }
        return (pool, dtype, scales)
    }

    // MARK: LoadedModel

    var info: ModelInfo {
        let (pool, dtype, scales) = current()
        let c = model.config
        let warnings = dtype.usesStaticScales && scales == nil
            ? ["kv_cache_dtype \(dtype.rawValue): \(KVCachePool.noScaleFileWarning)"] : nil
        return ModelInfo(path: path, name: name, architecture: c.architecture.rawValue, numLayers: c.numLayers,
                         numKVHeads: c.numKVHeads, headDim: c.headDim, vocabSize: c.vocabSize, maxModelLen: maxModelLen,
                         kvCacheDType: dtype, blockSize: blockSize, kvCacheBytes: kvCacheBytes,
                         kvCacheCapacityTokens: pool.capacityTokens, warnings: warnings)
    }

    func tokenize(_ text: String) throws -> [Int] {
        tokenizer.encode(text, addSpecial: true).map(Int.init)
    }

    func tokenize(_ text: String, addSpecialTokens: Bool) throws -> [Int] {
        tokenizer.encode(text, addSpecial: addSpecialTokens).map(Int.init)
    }

    func detokenize(_ tokens: [Int]) throws -> String {
        let vocab = model.config.vocabSize
        if let (index, bad) = tokens.enumerated().first(where: { $0.element < 0 || $0.element >= vocab }) {
            throw KvantError(.invalidArgument, "token id \(bad) at index \(index) is outside the vocabulary (0..<\(vocab))")
        }
        return tokenizer.decode(tokens.map { Int32($0) })
    }

    var chatTemplate: ChatTemplateSource {
        func text(_ id: Int32?) -> String { id.map { tokenizer.decode([$0], renderSpecial: true) } ?? "" }
        return ChatTemplateSource(template: try? model.file.string("tokenizer.chat_template"),
                                  bosToken: text(tokenizer.bos), eosToken: text(tokenizer.eos))
    }

    /// A token's own text and bytes, for logprobs.
    func logprobEntry(_ id: Int32, _ logprob: Double) -> TokenLogprob {
        let bytes = tokenizer.bytes(for: id, renderSpecial: true)
        return TokenLogprob(token: Int(id), text: String(decoding: bytes, as: UTF8.self), bytes: bytes, logprob: logprob)
    }

    func makeSequence(prompt: [Int], maxTokens: Int, sampling: SamplingConfig) throws -> any GenerationSequence {
        guard !prompt.isEmpty else { throw KvantError(.invalidArgument, "generate: the prompt has no tokens") }
        guard prompt.count < maxModelLen else {
            throw KvantError(.invalidArgument, "generate: the prompt has \(prompt.count) tokens; max_model_len is \(maxModelLen)")
        }
        guard maxTokens >= 1 else { throw KvantError(.invalidArgument, "generate: 'max_tokens' must be at least 1, got \(maxTokens)") }
        let vocab = model.config.vocabSize
        if let bad = prompt.first(where: { $0 < 0 || $0 >= vocab }) {
            throw KvantError(.invalidArgument, "generate: token id \(bad) is outside the vocabulary (0..<\(vocab))")
        }
        let sampler = try Sampler(SamplingParameters(
            temperature: Float(sampling.temperature), topK: max(0, sampling.topK), topP: Float(sampling.topP),
            minP: Float(sampling.minP), repetitionPenalty: Float(sampling.repetitionPenalty), seed: sampling.seed,
            presencePenalty: Float(sampling.presencePenalty), frequencyPenalty: Float(sampling.frequencyPenalty),
            suppressedTokens: sampling.ignoreEOS ? tokenizer.endOfGenerationTokens.sorted() : []))
        let (pool, dtype, _) = current()
        // Admission control: reserve the whole sequence (prompt + max_tokens, capped at max_model_len)
        // now, so a running sequence never meets a full cache mid-decode.
        let needed = prompt.count &+ min(maxTokens, maxModelLen)
        let tokens = min(needed, maxModelLen)
        let what = "generate: the prompt (\(prompt.count) tokens) + max_tokens (\(maxTokens)) needs \(tokens) tokens of KV cache"
        let capacity = "capacity \(pool.capacityTokens) tokens (kv_cache_bytes \(kvCacheBytes), kv_cache_dtype \(dtype.rawValue), block_size \(blockSize))"
        let seq = pool.createSequence()
        switch pool.reserve(seq, newLength: tokens) {
        case .ok:
            break
        case .later:
            pool.free(seq)
            throw KVCacheAdmissionLater(
                tokensNeeded: tokens,
                message: "\(what); \(pool.freeBlocks) of \(pool.numBlocks) blocks are free and nothing else runs; \(capacity)")
        case .never:
            pool.free(seq)
            throw KvantError(.resourceExhausted,
                             "\(what), more than the whole KV cache: \(capacity); lower max_tokens or raise kv_cache_bytes")
        }
        return ExecutorSequence(owner: self, pool: pool, sequence: seq, prompt: prompt.map { Int32($0) }, sampler: sampler,
                                logprobs: sampling.logprobs, promptLogprobs: sampling.promptLogprobs)
    }

    func kvCacheStats() -> any Encodable & Sendable {
        current().0.stats()
    }

    func currentScales() -> ScalesReport? {
        let (pool, dtype, scales) = current()
        guard dtype.usesStaticScales else { return nil }
        if let scales { return Self.report(scales, epoch: pool.scaleEpoch) }
        return ScalesReport(path: nil, layers: model.config.numLayers, perHead: false, min: 1, max: 1, sha256: "",
                            epoch: pool.scaleEpoch, warnings: [KVCachePool.noScaleFileWarning])
    }

    func installScales(path: String) throws -> ScalesReport {
        let (pool, dtype, _) = current()
        guard dtype.usesStaticScales else {
            throw KvantError(.failedPrecondition,
                             "reload-scales: kv_cache_dtype \(dtype.rawValue) uses no static scales (only int8_pertensor and int8_pertensor_perhead do)")
        }
        let s = try loadScales(path: path)
        let epoch = try pool.installScales(s)
        lock.lock(); scales = s; lock.unlock()
        logger.notice("KV scales installed", metadata: ["path": "\(path)", "epoch": "\(epoch)", "sha256": "\(s.sha256 ?? "")"])
        return Self.report(s, epoch: epoch)
    }

    func setKVCacheDType(_ newDType: KVCacheDType, quantizationParamPath: String?) throws {
        let (_, _, oldScales) = current()
        var path = quantizationParamPath
        // Switching between the static modes keeps the scale file in force unless a new one is given.
        if path == nil, newDType.usesStaticScales, let old = oldScales?.path { path = old }
        let (newPool, newScales) = try Self.makePool(model: model, dtype: newDType, scalePath: path,
                                                     kvCacheBytes: kvCacheBytes, blockSize: blockSize, logger: logger)
        lock.lock()
        pool = newPool
        dtype = newDType
        scales = newScales
        lock.unlock()
        logger.notice("KV cache switched", metadata: ["kv_cache_dtype": "\(newDType.rawValue)",
                                                      "capacity_tokens": "\(newPool.capacityTokens)"])
    }

    /// A pool of the current dtype and scales sized for one window of `tokens` tokens (evaluation
    /// runs beside serving and never takes the serving pool's blocks).
    private func scratchPool(tokens: Int) throws -> KVCachePool {
        let (_, dtype, scales) = current()
        let spec = model.config.kvCacheSpec(dtype: dtype, blockSize: blockSize)
        return try KVCachePool(spec: spec, byteBudget: spec.bytesPerToken * (tokens + 2 * blockSize), scales: scales)
    }

    func perplexity(path: String, contextLength: Int, control: OperationControl) throws -> PerplexityResult {
        guard contextLength >= 4, contextLength <= maxModelLen else {
            throw KvantError(.invalidArgument, "perplexity: ctx \(contextLength) must be in 4...\(maxModelLen) (max_model_len)")
        }
        let started = Date()
        // The loaded tokenizer, with llama.cpp's file tokenization (BOS, no special-token parsing).
        let tokens = tokenizer.encode(try TextTokenizer.readText(path: path), addSpecial: true, parseSpecial: false)
        let pool = try scratchPool(tokens: contextLength)
        let total = (tokens.count / contextLength) * contextLength
        let result = try PerplexityEvaluator.run(session: session, pool: pool, tokens: tokens, ctx: contextLength,
                                                 isCancelled: { control.isCancelled }) { chunk, _ in
            control.progress(done: (chunk + 1) * contextLength, total: total)
        }
        return PerplexityResult(perplexity: result.perplexity, meanNLL: result.nll / Double(result.count),
                                tokens: result.count, chunks: result.chunks, seconds: Date().timeIntervalSince(started))
    }

    /// The system's text for a file error (e.g. "No such file or directory").
    private static func reasonText(_ error: Error) -> String {
        if let u = (error as NSError).userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(u.code)))
        }
        return error.localizedDescription
    }

    func calibrate(_ request: CalibrationRequest, control: OperationControl) throws -> CalibrateResult {
        let started = Date()
        try PathPolicy.checkWritable(request.outputPath, field: "output", method: "calibrate")
        let text = try request.textPath.map(TextTokenizer.readText(path:)) ?? CalibrationSample.text
        let source = request.textPath.map { "'\($0)'" } ?? "the built-in calibration sample"
        guard request.numTokens >= 16 else {
            throw KvantError(.invalidArgument, "calibrate: num_tokens \(request.numTokens) is too few; at least 16 are needed")
        }
        var tokens = tokenizer.encode(text, addSpecial: true, parseSpecial: false)
        let available = tokens.count
        if tokens.count > request.numTokens { tokens.removeLast(tokens.count - request.numTokens) }
        guard tokens.count >= 16 else {
            throw KvantError(.invalidArgument, "calibrate: \(source) gives \(tokens.count) tokens; at least 16 are needed")
        }
        // Fail on an unwritable output before spending minutes on the model.
        let output = request.outputPath
        let tmp = output + ".partial-\(getpid())"
        func write(_ data: Data) throws {
            do { try data.write(to: URL(fileURLWithPath: tmp)) } catch {
                throw KvantError(.permissionDenied, "calibrate: cannot write '\(output)': \(Self.reasonText(error))")
            }
        }
        try write(Data())
        defer { unlink(tmp) }
        let result: KVCalibrator.Result
        do {
            result = try KVCalibrator.run(
                session: session, tokens: tokens, window: min(512, maxModelLen), perHead: request.perHead,
                method: request.percentile.map { $0 < 100 ? .percentile($0) : .max } ?? KVCalibrator.defaultMethod,
                separateKV: request.separateKV, isCancelled: { control.isCancelled }, progress: { control.progress(done: $0, total: $1) })
        } catch let e as KvantError where e.reason == .cancelled {
            throw KvantError(.cancelled, "calibrate: \(e.message); '\(output)' was not written")
        }
        let data = try result.scales.encode(modelType: model.config.architecture.rawValue, tpSize: request.tpSize,
                                            perHead: request.perHead)
        // Write beside the target and rename: a cancelled or failed run never leaves a partial file.
        try write(data)
        guard rename(tmp, output) == 0 else {
            throw KvantError(.permissionDenied, "calibrate: cannot write '\(output)': \(String(cString: strerror(errno)))")
        }
        // Read the file back with the rules reload-scales uses: what was written is what will load.
        let written = try loadScales(path: output)
        logger.notice("calibrated KV scales", metadata: ["output": "\(output)", "tokens": "\(result.tokens)",
                                                         "source": "\(source)"])
        var report = Self.report(written, epoch: nil)
        // Worth saying when the user chose the text or the count; the built-in sample under the default count is expected.
        if available < request.numTokens, request.textPath != nil || request.numTokens != CalibrationRequest.defaultNumTokens {
            report.warnings.append("calibrated on all \(available) tokens of \(source), fewer than num_tokens \(request.numTokens)")
        }
        return CalibrateResult(output: output, tokens: result.tokens, seconds: Date().timeIntervalSince(started),
                               scales: report)
    }
}

extension ExecutorModel {
    /// Continuous batching: the sequences of this model that share a pool decode in one
    /// `ForwardSession.decode` call (up to `maxBatch` rows each), sampling each row with its own
    /// sampler and history. Others (another pool after `set-kv-dtype`, at `max_model_len`) and a
    /// batch that fails decode one by one, so an error stays with its sequence. Per-row arithmetic
    /// is the same as a single decode (rows are independent in every kernel).
    func decodeBatch(_ sequences: [any GenerationSequence]) -> DecodeBatchOutcome {
        var results = [Result<GeneratedToken, Error>?](repeating: nil, count: sequences.count)
        var passes = 0
        let groups = orderedGroups(count: sequences.count) { i -> ObjectIdentifier? in
            guard let e = sequences[i] as? ExecutorSequence, e.owner === self, e.canDecode else { return nil }
            return ObjectIdentifier(e.pool)
        }
        for all in groups {
            for start in stride(from: 0, to: all.count, by: session.maxBatch) {
                let idx = Array(all[start..<min(all.count, start + session.maxBatch)])
                guard idx.count > 1 else { continue }
                let rows = idx.map { sequences[$0] as! ExecutorSequence }
                var next = [Int32](repeating: 0, count: rows.count)
                do {
                    try session.decode(rows.map(\.decodeItem), pool: rows[0].pool) { r, logits in
                        next[r] = rows[r].sample(logits)
                    }
                } catch {
                    logger.warning("batched decode failed; decoding the sequences one by one", metadata: ["error": "\(error)"])
                    continue
                }
                passes += 1
                for (j, i) in idx.enumerated() { results[i] = .success(rows[j].accept(next[j])) }
            }
        }
        passes += results.filter { $0 == nil }.count
        return DecodeBatchOutcome(results: results.enumerated().map { i, r in r ?? Result { try sequences[i].decode() } },
                                  passes: passes)
    }
}

/// One generation on the pool it started on.
final class ExecutorSequence: GenerationSequence {
    let owner: ExecutorModel
    let pool: KVCachePool
    let sequence: SequenceID
    let prompt: [Int32]
    var sampler: Sampler
    var history: [Int32]
    var decoder: StreamingDecoder
    var released = false
    /// Alternatives per generated token's logprob; nil = no logprobs.
    let logprobs: Int?
    /// Alternatives per prompt token's logprob; nil = none.
    let promptLogprobCount: Int?
    /// Logprobs of the token sampled last, attached by `accept`.
    private var pendingLogprobs: TokenLogprobs?
    private(set) var promptLogprobs: [TokenLogprobs?]?

    init(owner: ExecutorModel, pool: KVCachePool, sequence: SequenceID, prompt: [Int32], sampler: Sampler,
         logprobs: Int? = nil, promptLogprobs: Int? = nil) {
        self.owner = owner
        self.pool = pool
        self.sequence = sequence
        self.prompt = prompt
        self.sampler = sampler
        self.logprobs = logprobs
        self.promptLogprobCount = promptLogprobs
        history = prompt
        decoder = owner.tokenizer.makeStreamingDecoder()
    }

    /// Samples the next token from this row's logits (penalties count the output after the prompt) and
    /// keeps its logprobs for `accept` when they were asked for.
    func sample(_ logits: UnsafeBufferPointer<Float>) -> Int32 {
        let next = sampler.sample(logits: logits, history: history, outputStart: prompt.count)
        if let logprobs { pendingLogprobs = entry(logits, chosen: next, top: logprobs) }
        return next
    }

    private func entry(_ logits: UnsafeBufferPointer<Float>, chosen: Int32, top: Int) -> TokenLogprobs {
        let lp = Sampler.logprobs(logits: logits, chosen: chosen, top: top)
        return TokenLogprobs(chosen: owner.logprobEntry(chosen, lp.chosen),
                             top: lp.top.map { owner.logprobEntry($0.token, $0.logprob) })
    }

    private func step(tokens: [Int32], start: Int) throws -> GeneratedToken {
        var next: Int32 = 0
        try owner.session.forward(tokens: tokens, startPosition: start, sequence: sequence, pool: pool, logits: .last) { _, logits in
            next = sample(logits)
        }
        return accept(next)
    }

    /// Prefill with the logits of every prompt position: each row scores the next prompt token, the last samples.
    private func prefillScoringPrompt(top: Int) throws -> GeneratedToken {
        var next: Int32 = 0
        var scored: [TokenLogprobs?] = [nil]
        try owner.session.forward(tokens: prompt, startPosition: 0, sequence: sequence, pool: pool, logits: .all) { i, logits in
            if i + 1 < prompt.count {
                scored.append(entry(logits, chosen: prompt[i + 1], top: top))
            } else {
                next = sample(logits)
            }
        }
        promptLogprobs = scored
        return accept(next)
    }

    /// True while one more decode step fits (below max_model_len, not released).
    var canDecode: Bool { !released && history.count < owner.maxModelLen }

    /// The decode row of this sequence: its last token at the next position.
    var decodeItem: DecodeItem { DecodeItem(token: history[history.count - 1], position: history.count - 1, sequence: sequence) }

    /// Appends a sampled token and turns it into text (streaming UTF-8) or the end of the sequence.
    func accept(_ next: Int32) -> GeneratedToken {
        history.append(next)
        let logprobs = pendingLogprobs
        pendingLogprobs = nil
        if owner.tokenizer.isEndOfGeneration(next) {
            return GeneratedToken(token: Int(next), text: decoder.finish(), isEndOfSequence: true, logprobs: logprobs)
        }
        return GeneratedToken(token: Int(next), text: decoder.append(next), isEndOfSequence: false, logprobs: logprobs)
    }

    func prefill() throws -> GeneratedToken {
        if let top = promptLogprobCount { return try prefillScoringPrompt(top: top) }
        return try step(tokens: prompt, start: 0)
    }

    func decode() throws -> GeneratedToken {
        let position = history.count - 1
        guard position + 1 < owner.maxModelLen else {
            // The engine's token budget ends a sequence at max_model_len (finish_reason "length") first.
            throw KvantError(.internal, "decode past max_model_len \(owner.maxModelLen) tokens")
        }
        return try step(tokens: [history[position]], start: position)
    }

    func release() {
        guard !released else { return }
        released = true
        pool.free(sequence)
    }
}
