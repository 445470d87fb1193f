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
/// - Prefill runs in chunks as the scheduler asks (`prefill(maxTokens:)`); every chunk and every decode step is
///   recorded in `FakeModel.events` (scheduler tests count them). A `PrefillGate` holds prefill chunks until the
///   test lets them pass, one ticket each.
/// - Detokenize: the inverse of the tokenizer (ids are bytes).
/// - Logprobs (when asked for): the chosen token −0.25, alternatives token+1, +2, … (mod 128) at −1, −2, …;
///   prompt logprobs the same for every prompt token but the first.
/// - Scale files: JSON `{"layers": N, "per_head": bool, "scales": [numbers]}`; installing bumps the epoch.
///   The `sha256` field of fake reports is an FNV-1a digest (the fake has no SHA-256).
/// - Perplexity: one "token" per byte, progress every 64; value = 1 + bytes/1000.
/// - KV capacity (`tokenCapacity` slots): by default each sequence reserves prompt + max_tokens up front (no
///   preemption). With `onDemandBlocks` (the executor's way): admission takes the prompt + 1 slots, each decode
///   one more (`reserveDecode`), and the scheduler preempts when none is free; a preempted sequence frees its
///   slots, `readmit` takes back what its recompute needs, `recompute` is recorded as `.recompute` events.
public final class FakeBackend: InferenceBackend, @unchecked Sendable {
    public let decodeDelay: TimeInterval
    /// Seconds each model load takes (start-up gate tests).
    public let loadDelay: TimeInterval
    /// KV capacity of loaded models in token slots (admission-control tests); nil = unlimited.
    public let tokenCapacity: Int?
    /// On-demand slots with preemption instead of reserving prompt + max_tokens up front.
    public let onDemandBlocks: Bool
    private let lock = NSLock()
    public private(set) var loads: [ModelLoadRequest] = []
    private var lastModel: FakeModel?

    /// Most sequences live at once on the model loaded last.
    public var peakSequencesOfLastModel: Int { lock.lock(); defer { lock.unlock() }; return lastModel?.peakSequences ?? 0 }

    /// Holds every sequence's decode steps from a position on until opened (drain tests); nil = never.
    public let gate: DecodeGate?

    /// Holds prefill chunks of long prompts until the test lets them pass (scheduler tests); nil = never.
    public let prefillGate: PrefillGate?

    /// The model loaded last (its `events`).
    public var lastLoadedModel: FakeModel? { lock.lock(); defer { lock.unlock() }; return lastModel }

    public init(decodeDelay: TimeInterval = 0, loadDelay: TimeInterval = 0, tokenCapacity: Int? = nil, onDemandBlocks: Bool = false,
                gate: DecodeGate? = nil, prefillGate: PrefillGate? = nil) {
        self.onDemandBlocks = onDemandBlocks
        self.gate = gate
        self.prefillGate = prefillGate
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
        let model = FakeModel(request: request, decodeDelay: decodeDelay, tokenCapacity: tokenCapacity, onDemandBlocks: onDemandBlocks,
                              gate: gate, prefillGate: prefillGate)
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
    /// Slots on demand (prompt + 1 at admission, one per decode) with preemption.
    public let onDemandBlocks: Bool
    public let decodeDelay: TimeInterval
    public let gate: DecodeGate?
    public let prefillGate: PrefillGate?
    private var nextSequenceID = 0
    private var eventLog: [Event] = []

    /// What the model computed, in order (on the compute lane).
    public enum Event: Equatable, Sendable {
        /// A prefill chunk of `tokens` prompt tokens of sequence `sequence`; `last` when it ended the prompt.
        case prefill(sequence: Int, tokens: Int, last: Bool)
        /// One decode step of sequence `sequence`.
        case decode(sequence: Int)
        /// Sequence `sequence` was preempted (its slots freed).
        case preempt(sequence: Int)
        /// A recompute chunk of `tokens` positions of a sequence preempted while decoding.
        case recompute(sequence: Int, tokens: Int)
    }

    /// Every prefill chunk and decode step so far, in the order they ran.
    public var events: [Event] { lock.lock(); defer { lock.unlock() }; return eventLog }

    func record(_ event: Event) { lock.lock(); eventLog.append(event); lock.unlock() }

    private var misuseLog: [String] = []

    /// Calls that break the `GenerationSequence` contract (a step on a released sequence, a second release,
    /// an empty chunk); empty when the engine behaved.
    public var misuses: [String] { lock.lock(); defer { lock.unlock() }; return misuseLog }

    func misuse(_ what: String) { lock.lock(); misuseLog.append(what); lock.unlock() }

    public init(request: ModelLoadRequest, decodeDelay: TimeInterval, tokenCapacity: Int? = nil, onDemandBlocks: Bool = false,
                gate: DecodeGate? = nil, prefillGate: PrefillGate? = nil) {
        self.onDemandBlocks = onDemandBlocks
        self.gate = gate
        self.prefillGate = prefillGate
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
        let reserve = onDemandBlocks ? min(prompt.count + 1, needed) : needed
        if let capacity = tokenCapacity {
            if needed > capacity {
                throw KvantError(.resourceExhausted, "fake: \(needed) tokens needed, capacity \(capacity) tokens")
            }
            if usedTokens + reserve > capacity {
                throw KVCacheAdmissionLater(tokensNeeded: reserve,
                                            message: "fake: \(reserve) tokens needed, \(capacity - usedTokens) of capacity \(capacity) free")
            }
        }
        usedTokens += reserve
        liveSequences += 1
        maxLiveSequences = max(maxLiveSequences, liveSequences)
        nextSequenceID += 1
        return FakeSequence(model: self, prompt: prompt, reserved: reserve, sampling: sampling, id: nextSequenceID)
    }

    /// A fork (parallel sampling) of a sequence of this model: live, holding nothing until forked.
    func forkCreated(sampling: SamplingConfig, prompt: [Int]) -> FakeSequence {
        lock.lock()
        defer { lock.unlock() }
        liveSequences += 1
        maxLiveSequences = max(maxLiveSequences, liveSequences)
        nextSequenceID += 1
        return FakeSequence(model: self, prompt: prompt, reserved: 0, sampling: sampling, id: nextSequenceID, unforked: true)
    }

    public func sequenceReleased(reserved: Int) {
        lock.lock()
        liveSequences -= 1
        usedTokens -= reserved
        lock.unlock()
    }

    /// On-demand slots: takes `count` more if free (always with no capacity).
    func takeSlots(_ count: Int) -> Bool {
        lock.lock(); defer { lock.unlock() }
        if let capacity = tokenCapacity, usedTokens + count > capacity { return false }
        usedTokens += count
        return true
    }

    func returnSlots(_ count: Int) { lock.lock(); usedTokens -= count; lock.unlock() }

    /// Token slots in use (on-demand tests: never above the capacity).
    public var slotsUsed: Int { lock.lock(); defer { lock.unlock() }; return usedTokens }

    /// Sequences made and not released.
    public var sequencesLive: Int { lock.lock(); defer { lock.unlock() }; return liveSequences }

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
    /// Slots held (on demand: grows with the sequence, 0 while preempted).
    public private(set) var reserved: Int
    /// Preempted while decoding: positions recomputed so far (of `prompt.count + position - 1`).
    private var recomputed: Int?
    private var holdsSlots = true
    public let sampling: SamplingConfig
    public var position = 0
    /// Order of creation on its model (1, 2, …), as `FakeModel.events` name it.
    public let id: Int
    /// Prompt tokens prefilled so far.
    public private(set) var prefilled = 0
    private var released = false
    /// Of `reserved`, the prompt slots a fork shares with its parent (not its own: not returned on release).
    private var shared = 0
    /// The sequence (a fork, on-demand models only) of which this is a fork, if forked from it.
    public private(set) var forkedFrom: Int?

    public init(model: FakeModel, prompt: [Int], reserved: Int, sampling: SamplingConfig = SamplingConfig(), id: Int = 0,
                unforked: Bool = false) {
        self.id = id
        self.model = model
        self.prompt = prompt
        self.reserved = reserved
        self.sampling = sampling
        if unforked { holdsSlots = false }
    }

    /// Parallel sampling on an on-demand model: a sibling holding no slots until `prefill(maxTokens:forks:)`.
    public func makeFork(sampling: SamplingConfig) throws -> (any GenerationSequence)? {
        guard model.onDemandBlocks else { return nil }
        return model.forkCreated(sampling: sampling, prompt: prompt)
    }

    public func prefill(maxTokens: Int, forks: [any GenerationSequence]) throws -> [GeneratedToken]? {
        let children = forks.map { $0 as! FakeSequence }
        for c in children where c.holdsSlots || c.released || c.position > 0 || c.prompt != prompt {
            model.misuse("fork \(c.id) of sequence \(id) is not an unforked sibling")
        }
        guard let first = try prefill(maxTokens: maxTokens) else { return nil }
        // The fork shares the prompt's slots (its own slots come with its generated tokens).
        return [first] + children.map { c in
            c.holdsSlots = true
            c.forkedFrom = id
            c.prefilled = c.prompt.count
            c.reserved = c.prompt.count
            c.shared = c.prompt.count
            return c.next()
        }
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

    public var prefillRemaining: Int { position > 0 ? 0 : prompt.count - prefilled }

    public func prefill(maxTokens: Int) throws -> GeneratedToken? {
        if released { model.misuse("prefill of released sequence \(id)") }
        if maxTokens < 1 { model.misuse("prefill chunk of \(maxTokens) tokens for sequence \(id)") }
        if !holdsSlots { model.misuse("prefill of preempted sequence \(id) not readmitted") }
        model.prefillGate?.pass(promptLength: prompt.count)
        let tokens = max(1, min(maxTokens, prompt.count - prefilled))
        prefilled += tokens
        let last = prefilled == prompt.count
        model.record(.prefill(sequence: id, tokens: tokens, last: last))
        return last ? next() : nil
    }

    public func decode() throws -> GeneratedToken {
        if released { model.misuse("decode of released sequence \(id)") }
        if model.onDemandBlocks, !holdsSlots || recomputed != nil || reserved < nextDecodeLength {
            model.misuse("decode of sequence \(id) without its slots (held \(reserved), needs \(nextDecodeLength))")
        }
        model.record(.decode(sequence: id))
        return next()
    }

    public func release() {
        if released { model.misuse("sequence \(id) released twice"); return }
        released = true
        model.sequenceReleased(reserved: reserved - shared)
    }

    // On-demand slots (`FakeModel.onDemandBlocks`).

    public var supportsPreemption: Bool { model.onDemandBlocks }

    /// Tokens whose K/V the sequence holds after its next decode: prompt + tokens generated so far.
    private var nextDecodeLength: Int { prompt.count + position }

    public func reserveDecode() -> Bool {
        guard model.onDemandBlocks, !released else { return true }
        if !holdsSlots || recomputed != nil { model.misuse("reserveDecode of preempted sequence \(id)"); return true }
        let more = nextDecodeLength - reserved
        guard more > 0 else { return true }
        guard model.takeSlots(more) else { return false }
        reserved += more
        return true
    }

    public func preempt() {
        if released || !holdsSlots { model.misuse("preempt of a released or preempted sequence \(id)"); return }
        model.returnSlots(reserved - shared)
        reserved = 0
        shared = 0
        holdsSlots = false
        if position > 0 { recomputed = 0 } else { prefilled = 0 }
        model.record(.preempt(sequence: id))
    }

    public func readmit() -> Bool {
        if released || holdsSlots { model.misuse("readmit of sequence \(id) holding slots"); return true }
        let need = position > 0 ? nextDecodeLength : prompt.count + 1
        guard model.takeSlots(need) else { return false }
        reserved = need
        holdsSlots = true
        return true
    }

    public var recomputeRemaining: Int { recomputed.map { max(0, nextDecodeLength - 1 - $0) } ?? 0 }

    public func recompute(maxTokens: Int) throws {
        guard let done = recomputed, holdsSlots else { model.misuse("recompute of sequence \(id) not preempted or not readmitted"); return }
        let n = max(1, min(maxTokens, nextDecodeLength - 1 - done))
        recomputed = done + n >= nextDecodeLength - 1 ? nil : done + n
        model.record(.recompute(sequence: id, tokens: n))
    }
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

/// Holds the prefill chunks of prompts of at least `minPromptLength` tokens, each until the test gives it
/// a ticket (`give`) or opens the gate for good (`open`): a test can then act while a long prefill is
/// certainly between two chunks, with no timing assumption. Blocks the compute thread (at most 120 s per
/// chunk, a guard that only ends a failing test).
public final class PrefillGate: @unchecked Sendable {
    public let minPromptLength: Int
    private let condition = NSCondition()
    private var opened = false
    private var tickets = 0
    private var held = 0
    private var passedCount = 0

    public init(minPromptLength: Int) { self.minPromptLength = minPromptLength }

    /// Lets `count` more chunks pass.
    public func give(_ count: Int = 1) {
        condition.lock(); tickets += count; condition.broadcast(); condition.unlock()
    }

    /// Lets every chunk pass from now on.
    public func open() {
        condition.lock(); opened = true; condition.broadcast(); condition.unlock()
    }

    /// Chunks waiting at the gate now.
    public var waiting: Int { condition.lock(); defer { condition.unlock() }; return held }

    /// Gated chunks that passed so far.
    public var passed: Int { condition.lock(); defer { condition.unlock() }; return passedCount }

    func pass(promptLength: Int) {
        guard promptLength >= minPromptLength else { return }
        condition.lock()
        defer { condition.unlock() }
        held += 1
        let deadline = Date().addingTimeInterval(120)
        while !opened && tickets == 0 && condition.wait(until: deadline) {}
        if !opened && tickets > 0 { tickets -= 1 }
        held -= 1
        passedCount += 1
    }
}
