import ControlProtocol
import Dispatch
import Foundation
import KvantCore
import Logging

/// The engine: owns the loaded model, serves `generate` and the other model methods, swaps
/// models only after a new load succeeded, and keeps the figures `stats` reports.
///
/// Model work runs on one compute lane (see `ComputeLane`); up to `maxNumSeqs` sequences are
/// live at once and their decode steps run batched (`DecodeBatcher`: every sequence waiting for
/// its next token shares one pass over the weights); further `generate` requests wait.
public actor Engine {
    /// Engine limits and defaults for loads (from the configuration).
    public struct Settings: Sendable {
        /// Defaults for `load-model` fields a request leaves out.
        public var kvCacheDType: KVCacheDType
        public var quantizationParamPath: String?
        public var kvCacheBytes: Int
        public var blockSize: Int
        public var maxModelLen: Int?
        public var threads: Int
        /// Sequences generated at once; further `generate` requests wait in FIFO order.
        public var maxNumSeqs: Int
        /// Default `perplexity` window, tokens.
        public var perplexityContext: Int

        public init(kvCacheDType: KVCacheDType = .auto, quantizationParamPath: String? = nil,
                    kvCacheBytes: Int = 256 << 20, blockSize: Int = 16, maxModelLen: Int? = nil, threads: Int = 0,
                    maxNumSeqs: Int = 4, perplexityContext: Int = 512) {
            self.kvCacheDType = kvCacheDType
            self.quantizationParamPath = quantizationParamPath
            self.kvCacheBytes = kvCacheBytes
            self.blockSize = blockSize
            self.maxModelLen = maxModelLen
            self.threads = threads
            self.maxNumSeqs = maxNumSeqs
            self.perplexityContext = perplexityContext
        }
    }

    public nonisolated let backend: any InferenceBackend
    public nonisolated let settings: Settings
    /// Request and token totals and latency histograms, shared by `stats` and `/metrics`.
    public nonisolated let counters: EngineCounters
    private let logger: Logger
    private let lane = ComputeLane(label: "kvant.engine.compute")
    private nonisolated let batcher = DecodeBatcher()
    private let startTime = DispatchTime.now().uptimeNanoseconds

    private var model: (any LoadedModel)?
    private var loading = false
    private var lastScalesPath: String?
    private var lastError: String?

    // Figures.
    private var running = 0
    /// Requests waiting for a sequence slot (`max_num_seqs`), in arrival order; resumed with true when
    /// they got the slot, false when cancelled while waiting.
    private var waiters: [(key: Int, continuation: CheckedContinuation<Bool, Never>)] = []
    /// Requests holding a slot but waiting for KV blocks (admission control), in arrival order.
    private var kvWaiters: [(key: Int, continuation: CheckedContinuation<Void, Never>)] = []
    private var nextWaiterKey = 0
    /// True while a request tries to reserve its blocks (newcomers queue behind it).
    private var kvRetrying = false
    /// Sequences created and not yet released (all models and pools).
    private var liveSequences = 0
    /// Sequences released so far (a waiter retries at once when one was released while it tried).
    private var releaseCount = 0
    private var served = 0
    private var failed = 0
    private var prefillNanos: UInt64 = 0
    private var decodeNanos: UInt64 = 0
    private var decodeTokens = 0
    private var connections = 0

    public init(backend: any InferenceBackend, settings: Settings = Settings(), logger: Logger = Logger(label: "kvant.engine"),
                counters: EngineCounters = EngineCounters()) {
        self.backend = backend
        self.settings = settings
        self.logger = logger
        self.counters = counters
    }

    // MARK: Model lifecycle

    /// The loaded model's info, nil without a model.
    public var modelInfo: ModelInfo? { model?.info }

    /// Message of the last failed load/reload since the last success.
    public var lastFailure: String? { lastError }

    /// Loads a model (paths already realpath'd and checked) and swaps it in when the load succeeded;
    /// the previous model keeps serving meanwhile and stays on any failure.
    /// - Parameter progress: phase messages from the backend (for EXTEND_TIMEOUT_USEC / STATUS).
    public func loadModel(path: String, kvCacheDType: KVCacheDType?, quantizationParamPath: String?,
                          kvCacheBytes: Int?, maxModelLen: Int?,
                          progress: @escaping @Sendable (String) -> Void = { _ in }) async throws -> LoadModelResult {
        guard !loading else {
            throw KvantError(.failedPrecondition, "another load-model is in progress; retry when it finished")
        }
        loading = true
        defer { loading = false }
        let dtype = kvCacheDType ?? settings.kvCacheDType
        let request = ModelLoadRequest(
            path: path, kvCacheDType: dtype,
            quantizationParamPath: quantizationParamPath ?? (kvCacheDType == nil ? settings.quantizationParamPath : nil),
            kvCacheBytes: kvCacheBytes ?? settings.kvCacheBytes, blockSize: settings.blockSize,
            maxModelLen: maxModelLen ?? settings.maxModelLen, threads: settings.threads)
        let started = DispatchTime.now().uptimeNanoseconds
        let backend = self.backend
        logger.info("loading model", metadata: ["path": "\(path)", "kv_cache_dtype": "\(dtype.rawValue)"])
        let loaded: any LoadedModel
        do {
            loaded = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<any LoadedModel, Error>) in
                Engine.onLoaderThread {
                    do { continuation.resume(returning: try backend.loadModel(request, progress: progress)) } catch {
                        continuation.resume(throwing: error)
                    }
                }
            }
        } catch {
            let error = Engine.kvantError(error)
            lastError = "load-model \(path): \(error.message)"
            throw error
        }
        let replaced = model?.info.path
        model = loaded
        lastScalesPath = request.quantizationParamPath
        lastError = nil
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        logger.notice("model loaded", metadata: ["path": "\(path)", "seconds": "\(seconds)"])
        return LoadModelResult(model: loaded.info, loadSeconds: seconds, replaced: replaced)
    }

    /// Drops the model; running sequences finish on it (they hold a reference).
    public func unloadModel() -> UnloadModelResult {
        let path = model?.info.path
        model = nil
        lastScalesPath = nil
        return UnloadModelResult(unloaded: path != nil, path: path)
    }

    private func requireModel(_ method: String) throws -> any LoadedModel {
        guard let model else {
            throw KvantError(.failedPrecondition, "\(method): no model is loaded; send load-model first")
        }
        return model
    }

    /// Switches the KV-cache dtype of the loaded model while serving: running sequences finish on the
    /// pool they started on, new ones use the new pool (the backend keeps both until the old drains).
    /// The new pool uses exactly the scale file given (none: the static dtypes run on 1.0 with their
    /// warning), and that is what a later reload re-reads; a failed earlier reload no longer applies.
    public func setKVCacheDType(_ dtype: KVCacheDType, quantizationParamPath: String?) async throws -> ModelInfo {
        let model = try requireModel("set-kv-dtype")
        try await onLane { try model.setKVCacheDType(dtype, quantizationParamPath: quantizationParamPath) }
        lastScalesPath = quantizationParamPath
        lastError = nil
        return model.info
    }

    /// Installs scales from `path`, or re-reads the last scale file when nil. Asking this of a dtype
    /// without static scales is the caller's mistake (`failed_precondition`), not a degraded server.
    public func reloadScales(path: String?) async throws -> ScalesReport {
        let model = try requireModel("reload-scales")
        let dtype = model.info.kvCacheDType
        guard dtype.usesStaticScales else {
            throw KvantError(.failedPrecondition,
                             "reload-scales: kv_cache_dtype \(dtype.rawValue) uses no static scales (only int8_pertensor and int8_pertensor_perhead do); switch with set-kv-dtype first")
        }
        guard let path = path ?? lastScalesPath else {
            // The caller's mistake, like the dtype check above: the server itself is as healthy as before.
            throw KvantError(.failedPrecondition,
                             "reload-scales: no scale file given and none in use (kv_cache_dtype \(model.info.kvCacheDType.rawValue) runs on the default 1.0 scales); give a path")
        }
        do {
            let report = try await onLane { try model.installScales(path: path) }
            lastScalesPath = path
            lastError = nil
            return report
        } catch {
            let error = Engine.kvantError(error)
            lastError = error.message.hasPrefix("reload-scales") ? error.message : "reload-scales: \(error.message)"
            throw error
        }
    }

    public func scalesShow() throws -> ScalesShowResult {
        let model = try requireModel("scales-show")
        return ScalesShowResult(kvCacheDType: model.info.kvCacheDType, scales: model.currentScales())
    }

    public func validateScales(path: String) async throws -> ScalesReport {
        let backend = self.backend
        let model = self.model
        return try await withCheckedThrowingContinuation { continuation in
            Engine.onLoaderThread {
                do { continuation.resume(returning: try backend.validateScales(path: path, for: model)) } catch {
                    continuation.resume(throwing: Engine.kvantError(error))
                }
            }
        }
    }

    // MARK: Requests

    public func tokenize(_ text: String) async throws -> [Int] {
        let model = try requireModel("tokenize")
        return try await onLane { try model.tokenize(text) }
    }

    /// Token ids of `text`, with or without the model's BOS/EOS (chat prompts whose template writes them).
    public func tokenize(_ text: String, addSpecialTokens: Bool) async throws -> [Int] {
        let model = try requireModel("tokenize")
        return try await onLane { try model.tokenize(text, addSpecialTokens: addSpecialTokens) }
    }

    /// The text of token ids. - Throws: `.invalidArgument` for an id outside the vocabulary.
    public func detokenize(_ tokens: [Int]) async throws -> String {
        let model = try requireModel("detokenize")
        return try await onLane { try model.detokenize(tokens) }
    }

    /// The loaded model's chat template and BOS/EOS texts; nil without a model.
    public var chatTemplate: ChatTemplateSource? { model?.chatTemplate }

    /// Generates for `params` (validated here); `onToken` is called for every output token in order
    /// (not for the end-of-sequence token) and may be used to stream. Cancellation of the calling
    /// task ends the generation with `finish_reason: cancelled`.
    public func generate(_ params: GenerateParams,
                         onToken: @escaping @Sendable (GeneratedToken) async -> Void) async throws -> GenerateResult {
        try params.validate()
        let model = try requireModel("generate")
        let queued = DispatchTime.now().uptimeNanoseconds
        do {
            let prompt: [Int]
            if let ids = params.promptTokenIDs { prompt = ids } else { prompt = try await onLane { try model.tokenize(params.prompt) } }
            let maxModelLen = model.info.maxModelLen
            guard prompt.count < maxModelLen else {
                throw KvantError(.invalidArgument,
                                 "generate: the prompt is \(prompt.count) tokens; max_model_len is \(maxModelLen)")
            }
            let budget = min(params.maxTokens, maxModelLen - prompt.count)
            // A request cancelled while it waits for a slot leaves the queue at once (finish_reason cancelled).
            let acquired = await acquireSlot()
            defer { if acquired { releaseSlot() } }
            let sampling = SamplingConfig(params)
            // Admission control: the KV blocks for prompt + budget are reserved up front; when they
            // are not free now, wait (in arrival order) until a running sequence releases its own.
            let sequence = acquired ? try await admit(model, prompt: prompt, budget: budget, sampling: sampling) : nil
            let started = DispatchTime.now().uptimeNanoseconds
            let outcome: Result<GenerateResult, Error>
            do {
                outcome = .success(try await run(sequence, model: model, prompt: prompt, params: params, budget: budget, queued: queued,
                                                 started: started, onToken: onToken))
            } catch {
                outcome = .failure(error)
            }
            if let sequence {
                // Free the KV blocks before replying, so `stats` after the reply sees them free.
                _ = try? await onLane { sequence.release() }
                sequenceReleased()
            }
            return try outcome.get()
        } catch {
            failed += 1
            throw Engine.kvantError(error)
        }
    }

    /// Creates the sequence, waiting while the KV cache cannot hold it yet (`KVCacheAdmissionLater`).
    /// Waiting requests retry in arrival order, each time a live sequence releases its blocks. When
    /// nothing else is live and it still does not fit, it never will: `resource_exhausted`.
    /// - Returns: nil when the request was cancelled while it waited.
    private func admit(_ model: any LoadedModel, prompt: [Int], budget: Int,
                       sampling: SamplingConfig) async throws -> (any GenerationSequence)? {
        // Behind requests already waiting for KV blocks: first come, first served.
        if !kvWaiters.isEmpty || kvRetrying {
            if await waitForBlocks(atFront: false) { return nil }
        }
        while true {
            if Task.isCancelled { wakeNextKVWaiter(); return nil }
            kvRetrying = true
            let releasesBefore = releaseCount
            do {
                let sequence = try await onLane { try model.makeSequence(prompt: prompt, maxTokens: budget, sampling: sampling) }
                kvRetrying = false
                liveSequences += 1
                wakeNextKVWaiter()   // the next one in line may fit too
                return sequence
            } catch let later as KVCacheAdmissionLater {
                kvRetrying = false
                if liveSequences == 0 {
                    wakeNextKVWaiter()
                    throw KvantError(.resourceExhausted, later.message)
                }
                logger.debug("generate waits for KV blocks", metadata: ["tokens": "\(later.tokensNeeded)"])
                // A release while makeSequence ran may have freed enough already: retry at once then.
                if releaseCount == releasesBefore, await waitForBlocks(atFront: true) { return nil }
            } catch {
                kvRetrying = false
                wakeNextKVWaiter()
                throw error
            }
        }
    }

    /// Waits until a sequence releases its blocks; true when cancelled meanwhile.
    private func waitForBlocks(atFront: Bool) async -> Bool {
        let key = nextWaiterKey
        nextWaiterKey += 1
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                if Task.isCancelled { continuation.resume(); return }
                if atFront { kvWaiters.insert((key, continuation), at: 0) } else { kvWaiters.append((key, continuation)) }
            }
        } onCancel: {
            Task { await self.cancelKVWaiter(key) }
        }
        return Task.isCancelled
    }

    private func cancelKVWaiter(_ key: Int) {
        guard let index = kvWaiters.firstIndex(where: { $0.key == key }) else { return }
        kvWaiters.remove(at: index).continuation.resume()
    }

    private func wakeNextKVWaiter() {
        guard !kvWaiters.isEmpty else { return }
        kvWaiters.removeFirst().continuation.resume()
    }

    private func sequenceReleased() {
        liveSequences -= 1
        releaseCount += 1
        wakeNextKVWaiter()
    }

    /// Prefill, then decode until end-of-sequence, a stop string, the token budget or cancellation.
    private func run(_ sequence: (any GenerationSequence)?, model: any LoadedModel, prompt: [Int], params: GenerateParams, budget: Int,
                     queued: UInt64, started: UInt64,
                     onToken: @escaping @Sendable (GeneratedToken) async -> Void) async throws -> GenerateResult {
        var text = ""
        var tokens: [Int] = []
        var finish = FinishReason.length
        var stopReason: String?
        var decodedCount = 0
        var prefilled = false
        var promptLogprobs: [TokenLogprobs?]?
        let prefillEnd: UInt64
        if Task.isCancelled || sequence == nil {   // cancelled while it waited for a slot or KV blocks
            prefillEnd = DispatchTime.now().uptimeNanoseconds
            finish = .cancelled
        } else {
            let sequence = sequence!
            var next = try await onLane { try sequence.prefill() }
            prefillEnd = DispatchTime.now().uptimeNanoseconds
            prefilled = true
            promptLogprobs = sequence.promptLogprobs
            batcher.enter()
            defer { batcher.leave() }
            counters.promptProcessed(prompt.count)
            prefillNanos += prefillEnd - started
            var previousToken: UInt64?
            loop: while true {
                if next.isEndOfSequence {
                    finish = .stop
                    stopReason = "eos"
                    break loop
                }
                tokens.append(next.token)
                text += next.text
                let now = DispatchTime.now().uptimeNanoseconds
                counters.tokenGenerated(sinceArrival: previousToken == nil ? now - queued : nil,
                                        sincePrevious: previousToken.map { now - $0 })
                previousToken = now
                await onToken(next)
                if let match = Engine.firstStop(in: text, stops: params.stop) {
                    text = String(text[..<match.range.lowerBound])
                    finish = .stop
                    stopReason = match.stop
                    break loop
                }
                if tokens.count >= budget { finish = .length; break loop }
                if Task.isCancelled { finish = .cancelled; break loop }
                next = try await batcher.decode(sequence, model: model, on: lane)
                decodedCount += 1
            }
        }
        let end = DispatchTime.now().uptimeNanoseconds
        decodeNanos += end - prefillEnd
        decodeTokens += decodedCount
        served += 1
        counters.requestFinished(finish, promptTokens: prefilled ? prompt.count : 0, generationTokens: tokens.count,
                                 latencyNanoseconds: end - queued)
        let prefillMs = Double(prefillEnd - started) / 1e6
        let decodeMs = Double(end - prefillEnd) / 1e6
        var result = GenerateResult(
            text: text, tokens: tokens, promptTokens: prompt.count, completionTokens: tokens.count,
            finishReason: finish, stopReason: stopReason,
            timings: GenerateTimings(
                queueMs: Double(started - queued) / 1e6, prefillMs: prefillMs, decodeMs: decodeMs,
                prefillTokensPerSecond: prefilled && prefillMs > 0 ? Double(prompt.count) / (prefillMs / 1000) : 0,
                decodeTokensPerSecond: decodeMs > 0 ? Double(decodedCount) / (decodeMs / 1000) : 0))
        result.promptLogprobs = promptLogprobs
        return result
    }

    /// Perplexity of a text file; progress via `onProgress(done, total)`; cancellable.
    public func perplexity(path: String, contextLength: Int?,
                           onProgress: @escaping @Sendable (Int, Int) -> Void) async throws -> PerplexityResult {
        let model = try requireModel("perplexity")
        let ctx = contextLength ?? settings.perplexityContext
        guard ctx >= 2, ctx <= model.info.maxModelLen else {
            throw KvantError(.invalidArgument, "perplexity: 'ctx' must be in 2...\(model.info.maxModelLen) (max_model_len), got \(ctx)")
        }
        return try await longOperation { control in try model.perplexity(path: path, contextLength: ctx, control: control) }
            onProgress: { onProgress($0, $1) }
    }

    /// Calibration: records amax and writes a scale file.
    public func calibrate(_ request: CalibrationRequest,
                          onProgress: @escaping @Sendable (Int, Int) -> Void) async throws -> CalibrateResult {
        let model = try requireModel("calibrate")
        return try await longOperation { control in try model.calibrate(request, control: control) }
            onProgress: { onProgress($0, $1) }
    }

    private func longOperation<T>(_ body: @escaping (OperationControl) throws -> T,
                                  onProgress: @escaping @Sendable (Int, Int) -> Void) async throws -> T {
        let flag = CancelFlag()
        let lane = self.lane
        let control = OperationControl(isCancelled: { flag.isSet }, progress: { done, total in
            lane.beat()
            onProgress(done, total)
        })
        do {
            return try await withTaskCancellationHandler {
                try await onLane { try body(control) }
            } onCancel: {
                flag.set()
            }
        } catch {
            failed += 1
            throw Engine.kvantError(error)
        }
    }

    // MARK: Figures

    public func connectionOpened() { connections += 1 }
    public func connectionClosed() { connections -= 1 }

    public var uptimeSeconds: Double { Double(DispatchTime.now().uptimeNanoseconds - startTime) / 1e9 }

    public func figures() -> EngineFigures {
        let totals = counters.snapshot()
        return EngineFigures(
            requestsServed: served, requestsRunning: running - kvWaiters.count,
            requestsWaiting: waiters.count + kvWaiters.count, requestsFailed: failed,
            promptTokens: totals.promptTokens, generatedTokens: totals.generationTokens,
            prefillTokensPerSecond: prefillNanos > 0 ? Double(totals.promptTokens) / (Double(prefillNanos) / 1e9) : 0,
            decodeTokensPerSecond: decodeNanos > 0 ? Double(decodeTokens) / (Double(decodeNanos) / 1e9) : 0,
            decodeBatchMean: { let f = batcher.figures; return f.batches > 0 ? Double(f.rows) / Double(f.batches) : 0 }(),
            uptimeSeconds: uptimeSeconds, rssBytes: residentSetBytes(), connections: connections)
    }

    public func stats() throws -> StatsResult {
        let cache: JSONValue
        if let model {
            do { cache = try JSONValue(encoding: AnyEncodable(model.kvCacheStats())) } catch {
                throw KvantError(.internal, "stats: the backend's KV-cache statistics are not encodable as JSON")
            }
        } else {
            cache = .null
        }
        return StatsResult(engine: figures(), model: model?.info, kvCache: cache)
    }

    public func health() -> HealthResult {
        HealthResult(status: lastError == nil ? "ok" : "degraded", modelLoaded: model != nil, model: model?.info.path,
                     kvCacheDType: model?.info.kvCacheDType, uptimeSeconds: uptimeSeconds, lastError: lastError)
    }

    /// A one-line status for systemd's `STATUS=`: model, dtype, cache usage.
    public func statusLine() -> String {
        guard let model else { return lastError.map { "no model loaded; \($0)" } ?? "no model loaded" }
        let info = model.info
        var line = "serving \(info.name) kv_cache_dtype=\(info.kvCacheDType.rawValue)"
        if let usage = Engine.cacheUsage(model) { line += String(format: " kv_cache=%.1f%%", usage * 100) }
        line += " running=\(running - kvWaiters.count) waiting=\(waiters.count + kvWaiters.count)"
        if let lastError { line += "; \(lastError)" }
        return line
    }

    /// Records a failure reported outside the engine's own methods (the start-up model load, a
    /// refused path): `health` turns `degraded` with it as `last_error` until the next success.
    public func recordFailure(_ message: String) { lastError = message }

    /// True when the dtype in force uses static scales from a file (what SIGHUP re-reads). With fp16 or
    /// int8_pertoken, or a static dtype running on the default 1.0 (already warned about loudly), a reload
    /// has nothing to re-read.
    public var hasScalesToReload: Bool {
        guard let model else { return false }
        return model.info.kvCacheDType.usesStaticScales && lastScalesPath != nil
    }

    /// True when the compute lane is idle or progressed within `window` nanoseconds (watchdog).
    public nonisolated func isAlive(window: UInt64) -> Bool { lane.isAlive(window: window) }

    /// Reads `usage` (0…1) from the backend's stats object when it has one
    /// (`usage`, or `used_blocks`/`total_blocks`, or `blocks_used`/`blocks_total`).
    static func cacheUsage(_ model: any LoadedModel) -> Double? {
        guard let stats = try? JSONValue(encoding: AnyEncodable(model.kvCacheStats())) else { return nil }
        if let usage = stats["usage"]?.doubleValue { return usage }
        for (usedKey, totalKey) in [("used_blocks", "total_blocks"), ("blocks_used", "blocks_total"), ("usedBlocks", "totalBlocks")] {
            if let used = stats[usedKey]?.doubleValue, let total = stats[totalKey]?.doubleValue, total > 0 { return used / total }
        }
        return nil
    }

    // MARK: Internals

    /// Loads and scale validation run on a thread of their own, beside the compute lane.
    private static func onLoaderThread(_ body: @escaping () -> Void) {
        let thread = Thread(block: body)
        thread.name = "kvant.engine.loader"
        thread.stackSize = 8 << 20
        thread.start()
    }

    private func onLane<T>(_ body: @escaping () throws -> T) async throws -> T {
        try await lane.run(body)
    }

    /// Takes a sequence slot, waiting in arrival order while `max_num_seqs` run. Returns false (no slot
    /// taken) when the calling task is cancelled before it got one.
    private func acquireSlot() async -> Bool {
        if running < settings.maxNumSeqs {
            running += 1
            return true
        }
        let key = nextWaiterKey
        nextWaiterKey += 1
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                if Task.isCancelled { continuation.resume(returning: false); return }
                waiters.append((key, continuation))
            }
        } onCancel: {
            Task { await self.cancelSlotWaiter(key) }
        }
    }

    private func cancelSlotWaiter(_ key: Int) {
        guard let index = waiters.firstIndex(where: { $0.key == key }) else { return }
        waiters.remove(at: index).continuation.resume(returning: false)
    }

    private func releaseSlot() {
        running -= 1
        resumeWaiter()
    }

    private func resumeWaiter() {
        while running < settings.maxNumSeqs, !waiters.isEmpty {
            running += 1
            waiters.removeFirst().continuation.resume(returning: true)
        }
    }

    static func firstStop(in text: String, stops: [String]) -> (stop: String, range: Range<String.Index>)? {
        var best: (stop: String, range: Range<String.Index>)?
        for stop in stops {
            if let range = text.range(of: stop), best == nil || range.lowerBound < best!.range.lowerBound {
                best = (stop, range)
            }
        }
        return best
    }

    /// Any error as a `KvantError`: backend errors of other types become `.internal` without details
    /// that could echo file contents.
    static func kvantError(_ error: Error) -> KvantError {
        if let error = error as? KvantError { return error }
        if error is CancellationError { return KvantError(.cancelled, "the request was cancelled") }
        return KvantError(.internal, "backend error: \(type(of: error))")
    }
}

final class CancelFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    func set() { lock.lock(); value = true; lock.unlock() }
}

struct AnyEncodable: Encodable {
    let value: any Encodable
    init(_ value: any Encodable) { self.value = value }
    func encode(to encoder: Encoder) throws { try value.encode(to: encoder) }
}
