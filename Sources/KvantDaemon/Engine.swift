import ControlProtocol
import Dispatch
import Foundation
import KvantCore
import Logging

/// The engine: owns the loaded model, serves `generate` and the other model methods, swaps
/// models only after a new load succeeded, and keeps the figures `stats` reports.
///
/// Model work runs on one compute lane (see `ComputeLane`); which requests run and what each step
/// computes is the `Scheduler`'s: up to `maxNumSeqs` sequences live at once, prompts prefilled in chunks
/// of the step's token budget (`maxNumBatchedTokens`) between decode steps that batch every running
/// sequence into one pass over the weights; further `generate` requests wait.
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
        /// Automatic prefix caching for every loaded model (`enable_prefix_caching`).
        public var enablePrefixCaching: Bool
        /// Tokens one engine step computes at most: the decode rows of running sequences plus prefill
        /// chunks of waiting ones (vLLM's `max_num_batched_tokens`); longer prompts are prefilled in
        /// chunks over several steps. At least `maxNumSeqs`.
        public var maxNumBatchedTokens: Int

        /// `max_num_batched_tokens` by default. A step's time grows with its chunk (at 4 000 tokens of context,
        /// 2 loaded cores: 64 → 0.36 s, 128 → 0.9 s, 256 → 1.7 s, 512 → 3.3 s), while the time to prefill a long
        /// prompt did not measurably grow with smaller chunks (BENCHMARKS.md, "Chunked prefill"): 64 is the
        /// largest budget whose steps stay near the 250 ms goal on 2 cores.
        public static let defaultMaxNumBatchedTokens = 64

        public init(kvCacheDType: KVCacheDType = .auto, quantizationParamPath: String? = nil,
                    kvCacheBytes: Int = 256 << 20, blockSize: Int = 16, maxModelLen: Int? = nil, threads: Int = 0,
                    maxNumSeqs: Int = 16, perplexityContext: Int = 512,
                    maxNumBatchedTokens: Int = Settings.defaultMaxNumBatchedTokens, enablePrefixCaching: Bool = true) {
            self.enablePrefixCaching = enablePrefixCaching
            self.maxNumBatchedTokens = maxNumBatchedTokens
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
    private let logger: Logger
    private let lane: ComputeLane
    /// Waiting and running queues, admission, the token budget of each step.
    private let scheduler: Scheduler
    private let startTime = DispatchTime.now().uptimeNanoseconds

    private var model: (any LoadedModel)?
    private var loading = false
    private var lastScalesPath: String?
    /// The last failure since the last success (`health`, `STATUS=`), capped so that no reply or status
    /// line carries more than `KvantError.maxMessageCharacters` of it.
    private var lastError: String? {
        didSet { if let lastError, lastError.count > KvantError.maxMessageCharacters { self.lastError = KvantError.capped(lastError) } }
    }

    private var counters: EngineCounters

    /// - Parameter metrics: where the counters' increments and the latency histograms also go (the
    ///   swift-metrics handlers behind `GET /metrics`); the default keeps only the totals of `stats`.
    public init(backend: any InferenceBackend, settings: Settings = Settings(), logger: Logger = Logger(label: "kvant.engine"),
                metrics: EngineMetrics = EngineMetrics()) {
        self.backend = backend
        self.settings = settings
        self.logger = logger
        self.counters = EngineCounters(metrics: metrics)
        let lane = ComputeLane(label: "kvant.engine.compute")
        self.lane = lane
        self.scheduler = Scheduler(maxNumSeqs: settings.maxNumSeqs,
                                   maxNumBatchedTokens: max(settings.maxNumBatchedTokens, settings.maxNumSeqs),
                                   lane: lane, logger: logger)
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
            maxModelLen: maxModelLen ?? settings.maxModelLen, threads: settings.threads,
            enablePrefixCaching: settings.enablePrefixCaching, maxNumSeqs: settings.maxNumSeqs,
            maxNumBatchedTokens: max(settings.maxNumBatchedTokens, settings.maxNumSeqs))   // the scheduler's budget
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
            let error = KvantError.normalized(error)
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
            let error = KvantError.normalized(error)
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
                    continuation.resume(throwing: KvantError.normalized(error))
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

    /// How full the loaded model's KV cache is (as STATUS= and `/metrics` report it); nil without a model.
    public var kvCacheUsage: KVCacheUsage? { model?.kvCacheUsage() }

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
            let (prompt, budget, maxModelLen) = try await promptAndBudget(params, model: model)
            // A request cancelled while it waits for a slot leaves the queue at once (finish_reason cancelled).
            let scheduler = self.scheduler
            let acquired = await scheduler.acquireSlot()
            defer { if acquired { scheduler.releaseSlot() } }
            let sequence = acquired ? try await admit(model, prompt: prompt, budget: budget, maxModelLen: maxModelLen, params: params) : nil
            return try await runThenRelease(sequence, model: model, prompt: prompt, params: params, budget: budget,
                                            queued: queued, started: DispatchTime.now().uptimeNanoseconds, onToken: onToken)
        } catch {
            counters.failed += 1
            throw KvantError.normalized(error)
        }
    }

    /// Admission control: the KV blocks of the prompt are promised (generated tokens take theirs on demand, with
    /// preemption); when they are not free now, waits (in arrival order) until a sequence releases its own.
    /// - Returns: nil when the request was cancelled while it waited.
    /// - Throws: the scheduler's refusal, named with the request's `max_tokens`, budget and prompt (`naming`).
    private func admit(_ model: any LoadedModel, prompt: [Int], budget: Int, maxModelLen: Int,
                       params: GenerateParams) async throws -> (any GenerationSequence)? {
        do {
            return try await scheduler.admit(model, prompt: prompt, budget: budget, sampling: SamplingConfig(params))
        } catch {
            throw Self.naming(error, requested: params.maxTokens, budget: budget, prompt: prompt.count, maxModelLen: maxModelLen)
        }
    }

    /// The request's prompt tokens (its ids, or its text tokenized on the lane), its token budget (`max_tokens`
    /// capped at `max_model_len` minus the prompt) and `max_model_len`.
    /// - Throws: `.invalidArgument` when the prompt leaves no room for a generated token; tokenizer errors.
    private func promptAndBudget(_ params: GenerateParams, model: any LoadedModel) async throws -> ([Int], Int, Int) {
        let prompt: [Int]
        if let ids = params.promptTokenIDs { prompt = ids } else { prompt = try await onLane { try model.tokenize(params.prompt) } }
        let maxModelLen = model.info.maxModelLen
        guard prompt.count < maxModelLen else {
            throw KvantError(.invalidArgument, "generate: the prompt is \(prompt.count) tokens; max_model_len is \(maxModelLen)")
        }
        return (prompt, min(params.maxTokens, maxModelLen - prompt.count), maxModelLen)
    }

    /// Choice `index` of a parallel-sampling request (`n > 1`): as `generate(_:onToken:)` of
    /// `group.choices[index]`, but the choices share one prefill of the prompt and fork its KV blocks
    /// (`ParallelSampling`). Every choice of the group must be asked for, each from a task of its own.
    public func generate(choice index: Int, of group: ParallelSampling,
                         onToken: @escaping @Sendable (GeneratedToken) async -> Void) async throws -> GenerateResult {
        let params = group.choices[index]
        let n = group.choices.count
        guard n > 1, n <= scheduler.maxNumSeqs else { return try await generate(params, onToken: onToken) }
        if index > 0 {
            switch await group.awaitLead(index) {
            case .independent:
                return try await generate(params, onToken: onToken)
            case .forked(let job, let plan):
                // Its slot was taken by choice 0; its sequence is a fork, released like any other.
                let queued = DispatchTime.now().uptimeNanoseconds
                defer { scheduler.releaseSlot() }
                do {
                    return try await runThenRelease(job.sequence, job: job, model: plan.model, prompt: plan.prompt, params: params,
                                                    budget: plan.budget, queued: queued, started: queued, onToken: onToken)
                } catch {
                    counters.failed += 1
                    throw KvantError.normalized(error)
                }
            }
        }
        // Choice 0: whatever happens before the others are forked, they run on their own.
        defer { group.resolve() }
        try params.validate()
        let model = try requireModel("generate")
        let queued = DispatchTime.now().uptimeNanoseconds
        do {
            let (prompt, budget, maxModelLen) = try await promptAndBudget(params, model: model)
            let scheduler = self.scheduler
            // The n slots at once: n - 1 pass to the forks (or back, for choices not forked).
            let acquired = await scheduler.acquireSlots(n)
            var slotsHeld = acquired ? n : 0
            defer { if slotsHeld > 0 { scheduler.releaseSlot(count: slotsHeld) } }
            let sequence = acquired ? try await admit(model, prompt: prompt, budget: budget, maxModelLen: maxModelLen, params: params) : nil
            var job: Scheduler.Job?
            if let sequence {
                let parent = Scheduler.Job(sequence: sequence, model: model, budget: budget)
                job = parent
                let wanted = group.claim()
                let samplings = wanted.map { SamplingConfig(group.choices[$0]) }
                let forks = (try? await onLane { try samplings.map { try sequence.makeFork(sampling: $0) } }) ?? []
                if forks.count == wanted.count, !forks.isEmpty, forks.allSatisfy({ $0 != nil }) {
                    var leads: [Int: ParallelSampling.Lead] = [:]
                    var children: [Scheduler.Job] = []
                    let plan = ParallelSampling.Plan(model: model, prompt: prompt, budget: budget)
                    for (i, fork) in zip(wanted, forks) {
                        let child = Scheduler.Job(sequence: fork!, model: model, budget: budget)
                        children.append(child)
                        leads[i] = .forked(child, plan)
                    }
                    scheduler.attachForks(children, to: parent)
                    scheduler.forksCreated(children.count)
                    slotsHeld -= children.count
                    group.resolve(leads)
                }
                // Choices not forked get their slots back before they ask for one of their own.
                scheduler.releaseSlot(count: slotsHeld - 1)
                slotsHeld = 1
                group.resolve()
            } else {
                scheduler.releaseSlot(count: slotsHeld)
                slotsHeld = 0
                group.resolve()
            }
            return try await runThenRelease(sequence, job: job, model: model, prompt: prompt, params: params, budget: budget,
                                            queued: queued, started: DispatchTime.now().uptimeNanoseconds, onToken: onToken)
        } catch {
            counters.failed += 1
            throw KvantError.normalized(error)
        }
    }

    /// Runs admission; when it refuses a request whose `max_tokens` was capped at `max_model_len` minus the prompt,
    /// its message names the value the client sent (the backend only saw the capped budget).
    private static func naming(_ error: Error, requested: Int, budget: Int, prompt: Int, maxModelLen: Int) -> Error {
        guard requested != budget, var error = error as? KvantError else { return error }
        let capped = "max_tokens (\(budget))"
        if error.message.contains(capped) {
            error.message = error.message.replacingOccurrences(
                of: capped, with: "max_tokens (\(requested), capped at max_model_len \(maxModelLen) − the prompt's \(prompt) tokens = \(budget))")
        } else {
            error.message += " (max_tokens \(requested) was capped at \(budget): max_model_len \(maxModelLen) − the prompt's \(prompt) tokens)"
        }
        return error
    }

    /// Prefill (in chunks, between decode steps), then decode until end-of-sequence, a stop string, the
    /// token budget or cancellation (`GenerationLoop`); both go through the scheduler's steps. A nil
    /// sequence was cancelled while it waited for a slot or KV blocks. `job`: the sequence's job when made
    /// already (parallel sampling), else a new one.
    /// `run`, then the sequence's KV blocks are freed before the reply (so `stats` after the reply sees them free),
    /// whether it ended normally or with an error (rethrown).
    private func runThenRelease(_ sequence: (any GenerationSequence)?, job: Scheduler.Job? = nil, model: any LoadedModel,
                                prompt: [Int], params: GenerateParams, budget: Int, queued: UInt64, started: UInt64,
                                onToken: @escaping @Sendable (GeneratedToken) async -> Void) async throws -> GenerateResult {
        let outcome: Result<GenerateResult, Error>
        do {
            outcome = .success(try await run(sequence, job: job, model: model, prompt: prompt, params: params, budget: budget,
                                             queued: queued, started: started, onToken: onToken))
        } catch {
            outcome = .failure(error)
        }
        if let sequence {
            _ = try? await onLane { sequence.release() }
            scheduler.sequenceReleased()
        }
        return try outcome.get()
    }

    private func run(_ sequence: (any GenerationSequence)?, job: Scheduler.Job? = nil, model: any LoadedModel, prompt: [Int],
                     params: GenerateParams, budget: Int, queued: UInt64, started: UInt64,
                     onToken: @escaping @Sendable (GeneratedToken) async -> Void) async throws -> GenerateResult {
        let loop = GenerationLoop(stops: params.stop, budget: budget)
        let scheduler = self.scheduler
        var out: GenerationLoop.Outcome
        var previousToken: UInt64?
        if let sequence, !Task.isCancelled || job != nil {
            let job = job ?? Scheduler.Job(sequence: sequence, model: model, budget: budget)
            defer { scheduler.finish(job) }
            out = try await loop.run(
                prefill: {
                    switch await scheduler.prefill(job) {
                    case .first(let token): return token
                    case .failed(let error): throw error
                    case .cancelled: return nil
                    }
                },
                decode: { try await scheduler.nextToken(job) },
                onPrefilled: {
                    counters.promptProcessed(prompt.count)
                    counters.prefillNanos += DispatchTime.now().uptimeNanoseconds - started
                },
                emit: { token in
                    let now = DispatchTime.now().uptimeNanoseconds
                    counters.tokenGenerated(sinceArrival: previousToken == nil ? now - queued : nil,
                                            sincePrevious: previousToken.map { now - $0 })
                    previousToken = now
                    await onToken(token)
                })
        } else {
            out = GenerationLoop.Outcome(finishReason: .cancelled, prefillEnd: DispatchTime.now().uptimeNanoseconds)
        }
        let prefillEnd = out.prefillEnd
        let end = DispatchTime.now().uptimeNanoseconds
        counters.decodeNanos += end - prefillEnd
        counters.decodeTokens += out.decodeSteps
        counters.served += 1
        counters.requestFinished(out.finishReason, promptTokens: out.prefilled ? prompt.count : 0,
                                 generationTokens: out.tokens.count, latencyNanoseconds: end - queued)
        let prefillMs = Double(prefillEnd - started) / 1e6
        let decodeMs = Double(end - prefillEnd) / 1e6
        var result = GenerateResult(
            text: out.text, tokens: out.tokens, promptTokens: prompt.count, completionTokens: out.tokens.count,
            finishReason: out.finishReason, stopReason: out.stopReason,
            timings: GenerateTimings(
                queueMs: Double(started - queued) / 1e6, prefillMs: prefillMs, decodeMs: decodeMs,
                prefillTokensPerSecond: out.prefilled && prefillMs > 0 ? Double(prompt.count) / (prefillMs / 1000) : 0,
                decodeTokensPerSecond: decodeMs > 0 ? Double(out.decodeSteps) / (decodeMs / 1000) : 0))
        result.promptLogprobs = out.prefilled ? sequence?.promptLogprobs : nil
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
            counters.failed += 1
            throw KvantError.normalized(error)
        }
    }

    // MARK: Figures

    public func connectionOpened() { counters.connections += 1 }
    public func connectionClosed() { counters.connections -= 1 }

    public var uptimeSeconds: Double { Double(DispatchTime.now().uptimeNanoseconds - startTime) / 1e9 }

    /// Requests generating now (holding a slot and not waiting for KV blocks).
    private var requestsRunning: Int { scheduler.requestsRunning }

    /// Requests waiting for a slot or for KV blocks.
    private var requestsWaiting: Int { scheduler.requestsWaiting }

    /// Prefill chunks the steps ran and the prompt tokens they computed (a cached prefix and the choices forked
    /// from a parallel-sampling request's prefill computed none), and positions recomputed after preemptions.
    public var prefillWork: (chunks: Int, tokens: Int, recomputedTokens: Int) {
        let f = scheduler.figures
        return (f.prefillChunks, f.prefillTokens, f.recomputedTokens)
    }

    public func figures() -> EngineFigures {
        let steps = scheduler.figures
        let batches = (batches: steps.decodePasses, rows: steps.decodeRows)
        return EngineFigures(
            requestsServed: counters.served, requestsRunning: requestsRunning,
            requestsWaiting: requestsWaiting, requestsFailed: counters.failed,
            promptTokens: counters.promptTokens, generatedTokens: counters.generatedTokens,
            prefillTokensPerSecond: counters.prefillTokensPerSecond,
            decodeTokensPerSecond: counters.decodeTokensPerSecond,
            decodeBatchMean: batches.batches > 0 ? Double(batches.rows) / Double(batches.batches) : 0,
            uptimeSeconds: uptimeSeconds, rssBytes: residentSetBytes(), connections: counters.connections,
            numPreemptions: steps.preemptions, fusedSteps: steps.fusedPasses)
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
        line += String(format: " kv_cache=%.1f%%", model.kvCacheUsage().fraction * 100)
        line += " running=\(requestsRunning) waiting=\(requestsWaiting)"
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

    // MARK: Internals

    /// Loads and scale validation run on a thread of their own, beside the compute lane.
    private static func onLoaderThread(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        thread.name = "kvant.engine.loader"
        thread.stackSize = 8 << 20
        thread.start()
    }

    private func onLane<T>(_ body: @escaping () throws -> T) async throws -> T {
        try await lane.run(body)
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
