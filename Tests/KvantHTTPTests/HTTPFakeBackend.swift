import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon

// A copy of Tests/KvantDaemonTests/FakeBackend.swift, trimmed to what the HTTP tests use and extended
// with detokenize, logprobs and ignore_eos (to move into KvantTestSupport with the layout refactor).

/// A deterministic stand-in for the executor.
///
/// - Tokenizer: one token per UTF-8 byte (token id = byte value); BOS is not added; detokenize is the inverse.
/// - Generation echoes the prompt's tokens in order, then end-of-sequence (token 0); with `ignore_eos`
///   it continues with "." (46) until the budget ends. `decodeDelay` slows every step.
/// - Logprobs: the chosen token −0.25, alternatives token+1, +2, … at −1, −2, … (top first).
/// - KV stats: `used_blocks` = live sequences of 100 blocks; `usage` their fraction.
final class HTTPFakeBackend: InferenceBackend, @unchecked Sendable {
    let decodeDelay: TimeInterval
    let tokenCapacity: Int?
    let maxModelLen: Int
    let chatTemplate: String?

    init(decodeDelay: TimeInterval = 0, tokenCapacity: Int? = nil, maxModelLen: Int = 256, chatTemplate: String? = nil) {
        self.decodeDelay = decodeDelay
        self.tokenCapacity = tokenCapacity
        self.maxModelLen = maxModelLen
        self.chatTemplate = chatTemplate
    }

    var name: String { "fake" }

    func loadModel(_ request: ModelLoadRequest, progress: @escaping @Sendable (String) -> Void) throws -> any LoadedModel {
        guard FileManager.default.fileExists(atPath: request.path) else { throw KvantError(.notFound, "cannot read \(request.path)") }
        var request = request
        request.maxModelLen = request.maxModelLen ?? maxModelLen
        return HTTPFakeModel(request: request, decodeDelay: decodeDelay, tokenCapacity: tokenCapacity, template: chatTemplate)
    }

    func validateScales(path: String, for model: (any LoadedModel)?) throws -> ScalesReport {
        throw KvantError(.unavailable, "fake: no scales")
    }
}

final class HTTPFakeModel: LoadedModel, @unchecked Sendable {
    struct CacheStats: Codable, Sendable {
        var total_blocks: Int
        var used_blocks: Int
        var usage: Double
        var bytes_per_token: Int
    }

    private let lock = NSLock()
    let info: ModelInfo
    private var liveSequences = 0
    private var usedTokens = 0
    let tokenCapacity: Int?
    let decodeDelay: TimeInterval
    let template: String?

    init(request: ModelLoadRequest, decodeDelay: TimeInterval, tokenCapacity: Int?, template: String?) {
        self.decodeDelay = decodeDelay
        self.tokenCapacity = tokenCapacity
        self.template = template
        info = ModelInfo(path: request.path, name: "fake-echo", architecture: "echo", numLayers: 2, numKVHeads: 1, headDim: 4,
                         vocabSize: 256, maxModelLen: request.maxModelLen ?? 256, kvCacheDType: request.kvCacheDType,
                         blockSize: request.blockSize, kvCacheBytes: request.kvCacheBytes,
                         kvCacheCapacityTokens: tokenCapacity ?? 1 << 20)
    }

    var live: Int { lock.lock(); defer { lock.unlock() }; return liveSequences }

    func tokenize(_ text: String) throws -> [Int] { text.utf8.map { Int($0) } }
    func tokenize(_ text: String, addSpecialTokens: Bool) throws -> [Int] { try tokenize(text) }
    func detokenize(_ tokens: [Int]) throws -> String {
        if let bad = tokens.first(where: { $0 < 0 || $0 > 255 }) { throw KvantError(.invalidArgument, "token id \(bad) is outside the vocabulary") }
        return String(decoding: tokens.map { UInt8($0) }, as: UTF8.self)
    }
    var chatTemplate: ChatTemplateSource { ChatTemplateSource(template: template, bosToken: "<s>", eosToken: "</s>") }

    func makeSequence(prompt: [Int], maxTokens: Int, sampling: SamplingConfig) throws -> any GenerationSequence {
        let needed = min(prompt.count + maxTokens, info.maxModelLen)
        lock.lock()
        defer { lock.unlock() }
        if let capacity = tokenCapacity {
            if needed > capacity { throw KvantError(.resourceExhausted, "fake: \(needed) tokens needed, capacity \(capacity) tokens") }
            if usedTokens + needed > capacity {
                throw KVCacheAdmissionLater(tokensNeeded: needed, message: "fake: \(needed) tokens needed")
            }
        }
        usedTokens += needed
        liveSequences += 1
        return HTTPFakeSequence(model: self, prompt: prompt, reserved: needed, sampling: sampling)
    }

    func released(reserved: Int) {
        lock.lock()
        liveSequences -= 1
        usedTokens -= reserved
        lock.unlock()
    }

    func kvCacheStats() -> any Encodable & Sendable {
        lock.lock(); defer { lock.unlock() }
        return CacheStats(total_blocks: 100, used_blocks: liveSequences, usage: Double(liveSequences) / 100, bytes_per_token: 64)
    }

    func currentScales() -> ScalesReport? { nil }
    func installScales(path: String) throws -> ScalesReport { throw KvantError(.failedPrecondition, "fake: no scales") }
    func setKVCacheDType(_ dtype: KVCacheDType, quantizationParamPath: String?) throws {}
    func perplexity(path: String, contextLength: Int, control: OperationControl) throws -> PerplexityResult {
        throw KvantError(.unavailable, "fake: no perplexity")
    }
    func calibrate(_ request: CalibrationRequest, control: OperationControl) throws -> CalibrateResult {
        throw KvantError(.unavailable, "fake: no calibration")
    }
}

final class HTTPFakeSequence: GenerationSequence {
    let model: HTTPFakeModel
    let prompt: [Int]
    let reserved: Int
    let sampling: SamplingConfig
    var position = 0

    init(model: HTTPFakeModel, prompt: [Int], reserved: Int, sampling: SamplingConfig) {
        self.model = model
        self.prompt = prompt
        self.reserved = reserved
        self.sampling = sampling
    }

    static func logprobs(_ token: Int, top: Int) -> TokenLogprobs {
        func entry(_ t: Int, _ lp: Double) -> TokenLogprob {
            TokenLogprob(token: t, text: String(decoding: [UInt8(t & 0xff)], as: UTF8.self), bytes: [UInt8(t & 0xff)], logprob: lp)
        }
        return TokenLogprobs(chosen: entry(token, -0.25), top: (0..<top).map { entry((token + 1 + $0) & 0x7f, -Double($0 + 1)) })
    }

    private func next() -> GeneratedToken {
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

    var promptLogprobs: [TokenLogprobs?]? {
        guard let top = sampling.promptLogprobs else { return nil }
        return prompt.enumerated().map { i, t in i == 0 ? nil : Self.logprobs(t, top: top) }
    }

    func prefill() throws -> GeneratedToken { next() }
    func decode() throws -> GeneratedToken { next() }
    func release() { model.released(reserved: reserved) }
}
