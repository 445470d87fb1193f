import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon

/// A deterministic stand-in for the real executor, to drive the daemon end to end.
///
/// - Model file: any file under the allowed dirs; a file whose text starts with `FAIL` fails to load
///   with `invalid_argument`.
/// - Tokenizer: one token per UTF-8 byte (token id = byte value).
/// - Generation echoes the prompt's tokens in order, then emits end-of-sequence (token 0); with
///   `ignore_eos` it goes on with "." (46). `decodeDelay` slows each step (for cancellation and concurrency tests).
/// - Detokenize: the inverse of the tokenizer (ids are bytes).
/// - Logprobs (when asked for): the chosen token −0.25, alternatives token+1, +2, … (mod 128) at −1, −2, …;
///   prompt logprobs the same for every prompt token but the first.
/// - Scale files: JSON `{"layers": N, "per_head": bool, "scales": [numbers]}`; installing bumps the epoch.
///   The `sha256` field of fake reports is an FNV-1a digest (the fake has no SHA-256).
/// - Perplexity: one "token" per byte, progress every 64; value = 1 + bytes/1000.
public final class FakeBackend: InferenceBackend, @unchecked Sendable {
    public let decodeDelay: TimeInterval
    /// Seconds each model load takes (start-up gate tests).
    public let loadDelay: TimeInterval
    /// KV capacity of loaded models in token slots (admission-control tests); nil = unlimited.
    public let tokenCapacity: Int?
    private let lock = NSLock()
    public private(set) var loads: [ModelLoadRequest] = []
    private var lastModel: FakeModel?

    /// Most sequences live at once on the model loaded last.
    public var peakSequencesOfLastModel: Int { lock.lock(); defer { lock.unlock() }; return lastModel?.peakSequences ?? 0 }

    /// Holds every sequence's decode steps from a position on until opened (drain tests); nil = never.
    public let gate: DecodeGate?

    public init(decodeDelay: TimeInterval = 0, loadDelay: TimeInterval = 0, tokenCapacity: Int? = nil, gate: DecodeGate? = nil) {
        self.gate = gate
        self.decodeDelay = decodeDelay
        self.loadDelay = loadDelay
        self.tokenCapacity = tokenCapacity
    }

    public var name: String { "fake" }

    public func loadModel(_ request: ModelLoadRequest, progress: @escaping @Sendable (String) -> Void) throws -> any LoadedModel {
        progress("reading \(request.path)")
        if loadDelay > 0 { Thread.sleep(forTimeInterval: loadDelay) }
        guard let data = FileManager.default.contents(atPath: request.path) else {
            throw KvantError(.notFound, "cannot read \(request.path)")
        }
        if data.starts(with: Array("FAIL".utf8)) {
            throw KvantError(.invalidArgument, "\(request.path): not a GGUF file (bad magic)")
        }
        lock.lock()
        loads.append(request)
        lock.unlock()
        progress("allocating KV cache")
        let model = FakeModel(request: request, decodeDelay: decodeDelay, tokenCapacity: tokenCapacity, gate: gate)
        lock.lock()
        lastModel = model
        lock.unlock()
        if let scales = request.quantizationParamPath { _ = try model.installScales(path: scales) }
        return model
    }

    public func validateScales(path: String, for model: (any LoadedModel)?) throws -> ScalesReport {
        try FakeModel.readScales(path: path, epoch: nil)
    }
}

public final class FakeModel: LoadedModel, @unchecked Sendable {
    public struct CacheStats: Codable, Sendable {
        var total_blocks: Int
        var used_blocks: Int
        var usage: Double
        var kv_cache_dtype: String
        var epoch: Int
        var bytes_per_token: Int
    }

    private let lock = NSLock()
    private var _info: ModelInfo
    private var scales: ScalesReport?
    private var epoch = 0
    var liveSequences = 0
    private var maxLiveSequences = 0
    private var usedTokens = 0
    /// KV capacity model: token slots shared by all sequences; each reserves prompt + max_tokens. nil = unlimited.
    public let tokenCapacity: Int?
    public let decodeDelay: TimeInterval
    public let gate: DecodeGate?

    public init(request: ModelLoadRequest, decodeDelay: TimeInterval, tokenCapacity: Int? = nil, gate: DecodeGate? = nil) {
        self.gate = gate
        self.decodeDelay = decodeDelay
        self.tokenCapacity = tokenCapacity
        let capacity = request.kvCacheBytes / 64
        _info = ModelInfo(path: request.path, name: "fake-echo", architecture: "echo", numLayers: 2, numKVHeads: 1,
                          headDim: 4, vocabSize: 256, maxModelLen: request.maxModelLen ?? 256,
                          kvCacheDType: request.kvCacheDType, blockSize: request.blockSize,
                          kvCacheBytes: request.kvCacheBytes, kvCacheCapacityTokens: capacity)
    }

    public var info: ModelInfo { lock.lock(); defer { lock.unlock() }; return _info }

    public func tokenize(_ text: String) throws -> [Int] { text.utf8.map { Int($0) } }

    public func detokenize(_ tokens: [Int]) throws -> String {
        if let bad = tokens.first(where: { $0 < 0 || $0 > 255 }) {
            throw KvantError(.invalidArgument, "token id \(bad) is outside the vocabulary (0..<256)")
        }
        return String(decoding: tokens.map { UInt8($0) }, as: UTF8.self)
    }

    public func makeSequence(prompt: [Int], maxTokens: Int, sampling: SamplingConfig) throws -> any GenerationSequence {
        let needed = min(prompt.count + maxTokens, info.maxModelLen)
        lock.lock()
        defer { lock.unlock() }
        if let capacity = tokenCapacity {
            if needed > capacity {
                throw KvantError(.resourceExhausted, "fake: \(needed) tokens needed, capacity \(capacity) tokens")
            }
            if usedTokens + needed > capacity {
                throw KVCacheAdmissionLater(tokensNeeded: needed,
                                            message: "fake: \(needed) tokens needed, \(capacity - usedTokens) of capacity \(capacity) free")
            }
        }
        usedTokens += needed
        liveSequences += 1
        maxLiveSequences = max(maxLiveSequences, liveSequences)
        return FakeSequence(model: self, prompt: prompt, reserved: needed, sampling: sampling)
    }

    public func sequenceReleased(reserved: Int) {
        lock.lock()
        liveSequences -= 1
        usedTokens -= reserved
        lock.unlock()
    }

    /// Most sequences live at once so far.
    public var peakSequences: Int { lock.lock(); defer { lock.unlock() }; return maxLiveSequences }

    public func kvCacheStats() -> any Encodable & Sendable {
        lock.lock()
        defer { lock.unlock() }
        return CacheStats(total_blocks: 100, used_blocks: liveSequences, usage: Double(liveSequences) / 100,
                          kv_cache_dtype: _info.kvCacheDType.rawValue, epoch: epoch, bytes_per_token: 64)
    }

    public func kvCacheUsage() -> KVCacheUsage {
        lock.lock()
        defer { lock.unlock() }
        return KVCacheUsage(usedBlocks: liveSequences, totalBlocks: 100)
    }

    public func currentScales() -> ScalesReport? { lock.lock(); defer { lock.unlock() }; return scales }

    public func installScales(path: String) throws -> ScalesReport {
        lock.lock()
        let next = epoch + 1
        lock.unlock()
        let report = try FakeModel.readScales(path: path, epoch: next)
        lock.lock()
        epoch = next
        scales = report
        lock.unlock()
        return report
    }

    public static func readScales(path: String, epoch: Int?) throws -> ScalesReport {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw KvantError(.notFound, "scale file \(path) is not readable")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw KvantError(.invalidArgument, "scale file \(path): not a JSON object")
        }
        guard let layers = object["layers"] as? Int else {
            throw KvantError(.invalidArgument, "scale file \(path): missing integer field 'layers'")
        }
        guard let values = object["scales"] as? [Double], !values.isEmpty else {
            throw KvantError(.invalidArgument, "scale file \(path): missing non-empty array 'scales'")
        }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in data { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return ScalesReport(path: path, layers: layers, perHead: object["per_head"] as? Bool ?? false,
                            min: values.min()!, max: values.max()!, sha256: String(hash, radix: 16), epoch: epoch,
                            warnings: values.contains(0) ? ["a scale is 0"] : [])
    }

    public func setKVCacheDType(_ dtype: KVCacheDType, quantizationParamPath: String?) throws {
        if dtype.usesStaticScales && quantizationParamPath == nil && currentScales() == nil {
            throw KvantError(.failedPrecondition, "\(dtype.rawValue) needs a scale file (quantization_param_path)")
        }
        lock.lock()
        _info.kvCacheDType = dtype
        lock.unlock()
        if let quantizationParamPath { _ = try installScales(path: quantizationParamPath) }
    }

    public func perplexity(path: String, contextLength: Int, control: OperationControl) throws -> PerplexityResult {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw KvantError(.notFound, "\(path) is not readable")
        }
        var done = 0
        while done < data.count {
            if control.isCancelled { throw KvantError(.cancelled, "perplexity cancelled after \(done) tokens") }
            done = min(data.count, done + 64)
            control.progress(done: done, total: data.count)
            if decodeDelay > 0 { Thread.sleep(forTimeInterval: decodeDelay) }
        }
        let ppl = 1 + Double(data.count) / 1000
        return PerplexityResult(perplexity: ppl, meanNLL: log(ppl), tokens: data.count,
                                chunks: (data.count + contextLength - 1) / contextLength, seconds: 0)
    }

    public func calibrate(_ request: CalibrationRequest, control: OperationControl) throws -> CalibrateResult {
        for step in stride(from: 256, through: request.numTokens, by: 256) {
            if control.isCancelled { throw KvantError(.cancelled, "calibration cancelled") }
            control.progress(done: step, total: request.numTokens)
        }
        if let text = request.textPath, FileManager.default.contents(atPath: text)?.starts(with: Array("FAIL".utf8)) == true {
            throw KvantError(.invalidArgument, "fake: calibration text \(text) rejected after the run")
        }
        let count = request.perHead ? info.numLayers * info.numKVHeads : info.numLayers
        let scales = (0..<count).map { Double($0 + 1) / 100 }
        let object: [String: Any] = ["layers": info.numLayers, "per_head": request.perHead, "scales": scales]
        let data = try JSONSerialization.data(withJSONObject: object)
        guard FileManager.default.createFile(atPath: request.outputPath, contents: data) else {
            throw KvantError(.permissionDenied, "cannot write \(request.outputPath)")
        }
        let report = try FakeModel.readScales(path: request.outputPath, epoch: nil)
        return CalibrateResult(output: request.outputPath, tokens: request.numTokens, seconds: 0, scales: report)
    }
}

public final class FakeSequence: GenerationSequence {
    public let model: FakeModel
    public let prompt: [Int]
    public let reserved: Int
    public let sampling: SamplingConfig
    public var position = 0

    public init(model: FakeModel, prompt: [Int], reserved: Int, sampling: SamplingConfig = SamplingConfig()) {
        self.model = model
        self.prompt = prompt
        self.reserved = reserved
        self.sampling = sampling
    }

    /// The fake's logprobs of `token` with `top` alternatives.
    public static func logprobs(_ token: Int, top: Int) -> TokenLogprobs {
        func entry(_ t: Int, _ lp: Double) -> TokenLogprob {
            TokenLogprob(token: t, text: String(decoding: [UInt8(t & 0xff)], as: UTF8.self), bytes: [UInt8(t & 0xff)], logprob: lp)
        }
        return TokenLogprobs(chosen: entry(token, -0.25), top: (0..<top).map { entry((token + 1 + $0) & 0x7f, -Double($0 + 1)) })
    }

    private func next() -> GeneratedToken {
        model.gate?.pass(position: position)
        if model.decodeDelay > 0 { Thread.sleep(forTimeInterval: model.decodeDelay) }
        let token: Int
        if position < prompt.count {
            token = prompt[position]
        } else if sampling.ignoreEOS {
            token = 46
        } else {
            return GeneratedToken(token: 0, text: "", isEndOfSequence: true)
        }
        position += 1
        return GeneratedToken(token: token, text: String(decoding: [UInt8(token)], as: UTF8.self), isEndOfSequence: false,
                              logprobs: sampling.logprobs.map { Self.logprobs(token, top: $0) })
    }

    public var promptLogprobs: [TokenLogprobs?]? {
        guard let top = sampling.promptLogprobs else { return nil }
        return prompt.enumerated().map { i, t in i == 0 ? nil : Self.logprobs(t, top: top) }
    }

    public func prefill() throws -> GeneratedToken { next() }
    public func decode() throws -> GeneratedToken { next() }
    public func release() { model.sequenceReleased(reserved: reserved) }
}

/// Holds generation at a token position until `open()`: a test can then act while a stream is
/// certainly in flight, with no timing assumption. Blocks the compute thread (at most 120 s, a guard
/// that only ends a failing test).
public final class DecodeGate: @unchecked Sendable {
    public let holdAt: Int
    private let condition = NSCondition()
    private var opened = false
    private var held = 0

    /// - Parameter holdAt: the first token position (0-based) that waits for `open()`.
    public init(holdAt: Int) { self.holdAt = holdAt }

    public func open() {
        condition.lock()
        opened = true
        condition.broadcast()
        condition.unlock()
    }

    /// Sequences waiting at the gate now.
    public var waiting: Int { condition.lock(); defer { condition.unlock() }; return held }

    func pass(position: Int) {
        guard position >= holdAt else { return }
        condition.lock()
        defer { condition.unlock() }
        held += 1
        let deadline = Date().addingTimeInterval(120)
        while !opened && condition.wait(until: deadline) {}
        held -= 1
    }
}
