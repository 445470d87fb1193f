import ControlProtocol
import Executor
import Foundation
import KVCache
import KvantCore
import KvantDaemon
import Logging
import ModelFormats
import Tokenizers

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
    /// Automatic prefix caching in every pool this model builds (`enable_prefix_caching`).
    let enablePrefixCaching: Bool
    /// `max_num_seqs`: an `int4_pertoken` pool reserves that many residual rings out of `kvCacheBytes`.
    let maxNumSeqs: Int
    /// The pools' prefill chunk: the most positions of one sequence a forward pass writes before it attends them,
    /// `min(session.maxBatch, max_num_batched_tokens)`. The scheduler's chunks never exceed its token budget, a
    /// decode writes one position, `ForwardSession.forward` splits longer inputs and `step` refuses them, so an
    /// `int4_pertoken` pool sizes its int8 residual rings for this many (Gemma 3 270M at the default 64:
    /// 1 497 600 B per ring instead of 5 690 880 B for 512) and admission counts sliding windows with it.
    let prefillChunk: Int
    let logger: Logger

    let lock = NSLock()
    var pool: KVCachePool          // guarded by lock
    var dtype: KVCacheDType        // guarded by lock
    var scales: KVScales?          // installed static scales; nil = none or default 1.0

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
        enablePrefixCaching = request.enablePrefixCaching
        maxNumSeqs = request.maxNumSeqs
        let threads = request.threads > 0 ? request.threads : ProcessInfo.processInfo.activeProcessorCount
        session = ForwardSession(model: model, threads: threads)
        prefillChunk = min(session.maxBatch, max(1, request.maxNumBatchedTokens ?? session.maxBatch))
        dtype = request.kvCacheDType
        (pool, scales) = try Self.makePool(model: model, dtype: request.kvCacheDType, scalePath: request.quantizationParamPath,
                                           kvCacheBytes: kvCacheBytes, blockSize: blockSize, prefillChunk: prefillChunk,
                                           enablePrefixCaching: enablePrefixCaching, maxNumSeqs: maxNumSeqs, logger: logger)
    }

    /// Builds a pool of `kvCacheBytes` for `dtype`, with the scale file for the static modes. `int4_pertoken`
    /// takes the residual rings of `maxNumSeqs` sequences (+ the retired ones) out of `kvCacheBytes` first.
    /// - Throws: `.invalidArgument` for a scale file with a dtype that uses none, or a bad file;
    ///   `.resourceExhausted` when the budget (less the int4 residual rings) holds less than one block.
    private static func makePool(model: Model, dtype: KVCacheDType, scalePath: String?, kvCacheBytes: Int, blockSize: Int,
                                 prefillChunk: Int, enablePrefixCaching: Bool, maxNumSeqs: Int,
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
        // int4_pertoken: the pool's own error names the residual rings' share of the budget.
        guard kvCacheBytes >= spec.bytesPerToken * spec.blockSize || dtype.resolved == .int4PerToken else {
            throw KvantError(.resourceExhausted,
                             "kv_cache_bytes \(kvCacheBytes) holds less than one block of \(spec.blockSize) tokens at \(spec.bytesPerToken) bytes/token (kv_cache_dtype \(dtype.rawValue))")
        }
        return (try KVCachePool(spec: spec, byteBudget: kvCacheBytes, scales: scales, prefillChunk: prefillChunk,
                                enablePrefixCaching: enablePrefixCaching, maxNumSeqs: maxNumSeqs), scales)
    }

    /// Reads and validates a scale file against this model (layers, KV heads, model_type).
    func loadScales(path: String) throws -> KVScales {
        try Self.loadScales(model: model, path: path, logger: logger)
    }

    static func loadScales(model: Model, path: String, logger: Logger) throws -> KVScales {
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

    func current() -> (KVCachePool, KVCacheDType, KVScales?) {
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
        let sampler = try makeSampler(sampling)
        let (pool, dtype, _) = current()
        // Admission (vLLM V1): the pool promises the blocks of the prompt and of the first decode position;
        // generated tokens take blocks on demand, and when none is free the scheduler preempts a sequence.
        // A request whose whole growth to prompt + max_tokens (capped at max_model_len) could not fit even in
        // the empty pool is refused now. Sliding-window layers need only their window (plus a prefill
        // micro-batch) of blocks.
        let needed = prompt.count &+ min(maxTokens, maxModelLen)
        let tokens = min(needed, maxModelLen)
        let seq = pool.createSequence()
        let status = pool.admit(seq, promptLength: prompt.count, maxLength: tokens, onDemand: true,
                                watermark: Self.admissionWatermark(pool))
        guard status == .ok else {
            pool.free(seq)
            let blocksNeeded = pool.peakBlocks(KVAdmission(promptLength: tokens, maxLength: tokens))
            let what = "generate: the prompt (\(prompt.count) tokens) + max_tokens (\(maxTokens)) needs \(tokens) tokens of KV cache (\(blocksNeeded) blocks)"
            let capacity = "capacity \(pool.capacityTokens) tokens (kv_cache_bytes \(kvCacheBytes), kv_cache_dtype \(dtype.rawValue), block_size \(blockSize))"
            if status == .later {
                let promptBlocks = pool.peakBlocks(KVAdmission(promptLength: prompt.count, maxLength: min(prompt.count + 1, tokens)))
                throw KVCacheAdmissionLater(
                    tokensNeeded: prompt.count + 1,
                    message: "generate: the prompt (\(prompt.count) tokens) needs \(promptBlocks) blocks of KV cache; \(pool.freeBlocks) of \(pool.numBlocks) blocks are free and nothing else runs; \(capacity)")
            }
            throw KvantError(.resourceExhausted,
                             "\(what), more than the whole KV cache (\(pool.numBlocks) blocks): \(capacity); lower max_tokens or raise kv_cache_bytes")
        }
        return ExecutorSequence(owner: self, pool: pool, sequence: seq, prompt: prompt.map { Int32($0) }, sampler: sampler,
                                maxLength: tokens, logprobs: sampling.logprobs, promptLogprobs: sampling.promptLogprobs,
                                skipSpecialTokens: sampling.skipSpecialTokens)
    }

    /// The sampler of one sequence (its own RNG, seeded by `sampling.seed`).
    func makeSampler(_ sampling: SamplingConfig) throws -> Sampler {
        try Sampler(SamplingParameters(
            temperature: Float(sampling.temperature), topK: max(0, sampling.topK), topP: Float(sampling.topP),
            minP: Float(sampling.minP), repetitionPenalty: Float(sampling.repetitionPenalty), seed: sampling.seed,
            presencePenalty: Float(sampling.presencePenalty), frequencyPenalty: Float(sampling.frequencyPenalty),
            suppressedTokens: sampling.ignoreEOS ? tokenizer.endOfGenerationTokens.sorted() : []))
    }

    /// Free blocks admission leaves beside a new prompt while other sequences hold blocks (vLLM's
    /// `watermark`, 1 % of the blocks), at least one block per layer group (one position of growth each).
    static func admissionWatermark(_ pool: KVCachePool) -> Int {
        max(pool.groups.count, pool.numBlocks / 100)
    }

    func kvCacheStats() -> any Encodable & Sendable {
        current().0.stats()
    }

    func kvCacheUsage() -> KVCacheUsage {
        let pool = current().0
        return KVCacheUsage(usedBlocks: pool.numBlocks - pool.freeBlocks, totalBlocks: pool.numBlocks)
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
                                                     kvCacheBytes: kvCacheBytes, blockSize: blockSize,
                                                     prefillChunk: prefillChunk, enablePrefixCaching: enablePrefixCaching,
                                                     maxNumSeqs: maxNumSeqs, logger: logger)
        lock.lock()
        pool = newPool
        dtype = newDType
        scales = newScales
        lock.unlock()
        logger.notice("KV cache switched", metadata: ["kv_cache_dtype": "\(newDType.rawValue)",
                                                      "capacity_tokens": "\(newPool.capacityTokens)"])
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
