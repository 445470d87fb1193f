import ControlProtocol
import Foundation
import Hummingbird
import KvantDaemon
import NIOCore

/// Sampling fields shared by `/v1/completions` and `/v1/chat/completions` (vLLM `SamplingParams`
/// meanings and defaults).
struct SamplingFields {
    var maxTokens: Int?
    var temperature = 1.0
    var topP = 1.0
    var topK = 0
    var minP = 0.0
    var repetitionPenalty = 1.0
    var presencePenalty = 0.0
    var frequencyPenalty = 0.0
    var seed: UInt64?
    var stop: [String] = []
    var ignoreEOS = false
    /// vLLM's `skip_special_tokens` (default true).
    var skipSpecialTokens = true
    var n = 1

    /// Most choices (`n`) of one request (the control socket's `generate` has the same limit).
    static let maxN = GenerateParams.maxN

    /// - Parameter maxTokensKeys: the field names of the token budget, first wins (`max_completion_tokens`, `max_tokens`).
    static func parse(_ f: RequestFields, maxTokensKeys: [String]) throws -> SamplingFields {
        // Structured output is not implemented: refuse it rather than return text that ignores it.
        if let format = try f.object("response_format"), let type = try format.string("type"), type != "text" {
            throw OpenAIError.invalidField("response_format.type", "'\(type.prefix(32))' is not supported (no structured output); only \"text\"")
        }
        var s = SamplingFields()
        for key in maxTokensKeys.reversed() { if let v = try f.int(key, in: 1...Int(Int32.max)) { s.maxTokens = v } }
        s.temperature = try f.double("temperature", in: 0...100) ?? 1.0
        s.topP = try f.double("top_p", in: 0...1, exclusiveLower: true) ?? 1.0
        s.topK = try f.int("top_k", in: -1...Int(Int32.max)) ?? 0
        s.minP = try f.double("min_p", in: 0...1) ?? 0
        s.repetitionPenalty = try f.double("repetition_penalty", in: 0...100, exclusiveLower: true) ?? 1.0
        s.presencePenalty = try f.double("presence_penalty", in: -2...2) ?? 0
        s.frequencyPenalty = try f.double("frequency_penalty", in: -2...2) ?? 0
        if let seed = try f.int("seed") { s.seed = UInt64(bitPattern: Int64(seed)) }
        s.stop = try f.stringOrStrings("stop")
        if s.stop.count > GenerateParams.maxStopStrings {
            throw OpenAIError.invalidField("stop", "has \(s.stop.count) strings; at most \(GenerateParams.maxStopStrings)")
        }
        for (i, text) in s.stop.enumerated() {
            if text.isEmpty { throw OpenAIError.invalidField("stop[\(i)]", "is empty") }
            if text.utf8.count > GenerateParams.maxStopStringBytes {
                throw OpenAIError.invalidField("stop[\(i)]", "is \(text.utf8.count) bytes; at most \(GenerateParams.maxStopStringBytes)")
            }
        }
        s.ignoreEOS = try f.bool("ignore_eos") ?? false
        s.skipSpecialTokens = try f.bool("skip_special_tokens") ?? true
        s.n = try f.int("n", in: 1...maxN) ?? 1
        if let problem = GenerateParams.seedRangeProblem(seed: s.seed, n: s.n) { throw OpenAIError.invalidField("seed", problem) }
        if let bestOf = try f.int("best_of"), bestOf != s.n {
            throw OpenAIError.invalidField("best_of", "only best_of = n is supported (got best_of \(bestOf), n \(s.n))")
        }
        if let bias = try f.object("logit_bias"), !bias.object.isEmpty {
            throw OpenAIError.invalidField("logit_bias", "is not supported")
        }
        return s
    }

    /// The engine request of choice `choice` (`GenerateParams.choice`: its seed is `seed + choice`, so choices differ
    /// and each is reproducible).
    func params(prompt: [Int], maxTokens: Int, choice: Int, logprobs: Int?, promptLogprobs: Int?) -> GenerateParams {
        var p = GenerateParams(prompt: "", maxTokens: maxTokens, temperature: temperature, topP: topP, topK: topK, minP: minP,
                               repetitionPenalty: repetitionPenalty, seed: seed, stop: stop)
        p.presencePenalty = presencePenalty
        p.frequencyPenalty = frequencyPenalty
        p.ignoreEOS = ignoreEOS
        p.skipSpecialTokens = skipSpecialTokens
        p.promptTokenIDs = prompt
        p.logprobs = logprobs
        p.promptLogprobs = promptLogprobs
        return p.choice(choice)
    }
}

/// Token budget of a request, checked against `max_model_len` and the KV cache as vLLM words it.
func tokenBudget(promptTokens p: Int, requested: Int?, defaultTokens: Int?, info: ModelInfo, maxNumSeqs: Int,
                 promptField: String) throws -> Int {
    let m = info.maxModelLen
    guard p < m else {
        throw OpenAIError(.badRequest,
                          "This model's maximum context length is \(m) tokens. However, your request has \(p) input tokens. Please reduce the length of the input.",
                          param: promptField)
    }
    let budget: Int
    if let requested {
        guard p + requested <= m else {
            throw OpenAIError(.badRequest,
                              "This model's maximum context length is \(m) tokens. However, you requested \(p + requested) tokens (\(p) in the input, \(requested) in the completion). Please reduce the length of the input or completion.",
                              param: "max_tokens")
        }
        budget = requested
    } else if let defaultTokens {
        budget = min(defaultTokens, m - p)
    } else {
        // Open-ended: up to max_model_len as vLLM does, within what one sequence can hold (blocks are taken on
        // demand, and a sequence that runs out of them is preempted and recomputed, not failed).
        budget = max(1, min(m - p, info.kvCacheCapacityTokens - p))
    }
    let needed = p + budget
    if needed > info.kvCacheCapacityTokens {
        throw OpenAIError(.badRequest,
                          "the input (\(p) tokens) + max_tokens (\(budget)) needs \(needed) tokens of KV cache, more than its capacity of \(info.kvCacheCapacityTokens) tokens (kv_cache_bytes \(info.kvCacheBytes), kv_cache_dtype \(info.kvCacheDType.rawValue)); lower max_tokens or shorten the input",
                          param: requested != nil ? "max_tokens" : promptField)
    }
    return budget
}

/// One planned sequence of a request.
struct PlannedChoice: Sendable {
    /// Index in the response's `choices`.
    let index: Int
    /// Which prompt it continues (completions may have several).
    let promptIndex: Int
    let params: GenerateParams
}

/// What a run of choices reports, in order per choice.
enum GenerationEvent: Sendable {
    case token(choice: Int, GeneratedToken)
    case done(choice: Int, GenerateResult)
    case failed(choice: Int, OpenAIError)
}

/// The choices of one request generating concurrently, their events in one stream. Cancelled by
/// `cancel()`, by the client's connection closing, and by the shutdown deadline (`GenerationTracker`).
final class GenerationRun: @unchecked Sendable {
    let events: AsyncStream<GenerationEvent>
    private let lock = NSLock()
    private var task: Task<Void, Never>?
    private var cancelled = false

    /// - Parameter disconnect: the connection's handler; its client going away cancels the run.
    init(engine: Engine, choices: [PlannedChoice], disconnect: ClientDisconnectHandler?, tracker: GenerationTracker,
         admission: GenerationTracker.Admission) {
        let (stream, continuation) = AsyncStream<GenerationEvent>.makeStream()
        events = stream
        let key = tracker.register { [weak self] in self?.cancel() }
        let task = Task {
            // Parallel sampling: the choices of one prompt share one prefill and fork its KV blocks.
            var groups: [Int: (ParallelSampling, [Int])] = [:]
            for promptIndex in Set(choices.map(\.promptIndex)) {
                let mine = choices.filter { $0.promptIndex == promptIndex }
                if mine.count > 1 {
                    groups[promptIndex] = (ParallelSampling(choices: mine.map(\.params)), mine.map(\.index))
                }
            }
            await withTaskGroup(of: Void.self) { group in
                for choice in choices {
                    let fork = groups[choice.promptIndex].map { ($0.0, $0.1.firstIndex(of: choice.index)!) }
                    group.addTask {
                        do {
                            let emit: @Sendable (GeneratedToken) async -> Void = { token in
                                continuation.yield(.token(choice: choice.index, token))
                            }
                            let result = if let (sampling, k) = fork {
                                try await engine.generate(choice: k, of: sampling, onToken: emit)
                            } else {
                                try await engine.generate(choice.params, onToken: emit)
                            }
                            continuation.yield(.done(choice: choice.index, result))
                        } catch {
                            continuation.yield(.failed(choice: choice.index, OpenAIError.from(error)))
                        }
                    }
                }
            }
            tracker.unregister(key)
            admission.release()
            continuation.finish()
        }
        let disconnectKey = disconnect?.onDisconnect { [weak self] in self?.cancel() }
        lock.lock()
        self.task = task
        let cancelNow = cancelled
        lock.unlock()
        if cancelNow { task.cancel() }
        if let disconnect, let disconnectKey {
            Task { _ = await task.value; disconnect.remove(disconnectKey) }
        }
    }

    /// Ends every choice: each finishes with `finish_reason` cancelled (reported as `abort`) and frees its KV blocks.
    func cancel() {
        lock.lock()
        cancelled = true
        let task = self.task
        lock.unlock()
        task?.cancel()
    }

    deinit { task?.cancel() }
}

/// The streamed state of one choice: turns its events into the `choices` items of SSE chunks
/// (nil: nothing to send yet, e.g. text held back while it may still become a stop string).
protocol ChoiceStreamState {
    mutating func token(_ token: GeneratedToken, index: Int) -> JSONValue?
    mutating func done(_ result: GenerateResult, index: Int) -> JSONValue?
}

/// Writes a run's events as SSE chunks, starting with `first` (already read by the route to choose the
/// status): one chunk per item, an `{"error": …}` chunk when a choice fails (the run is cancelled), the
/// usage chunk when `includeUsage`, then `[DONE]`. A write that fails (the client went away) cancels the
/// run, freeing its sequences at once, and rethrows.
/// - Parameter frame: the chunk object around `choices` items and the usage value.
func writeChoiceEvents<State: ChoiceStreamState>(
    _ writer: inout any ResponseBodyWriter, first: GenerationEvent?, events: EventIterator, run: GenerationRun,
    states: inout [Int: State], includeUsage: Bool, promptTokens: Int,
    frame: (_ choices: [JSONValue], _ usage: JSONValue?) -> JSONValue
) async throws {
    var completionTokens = 0
    var pending = first
    do {
        while let event = pending {
            switch event {
            case .token(let index, let token):
                if let item = states[index]?.token(token, index: index) { try await writer.write(sseEvent(frame([item], nil))) }
            case .done(let index, let result):
                completionTokens += result.completionTokens
                if let item = states[index]?.done(result, index: index) { try await writer.write(sseEvent(frame([item], nil))) }
            case .failed(_, let error):
                run.cancel()
                try await writer.write(sseEvent(.object(["error": errorObject(error)])))
            }
            pending = await events.next()
        }
        if includeUsage {
            try await writer.write(sseEvent(frame([], usageValue(prompt: promptTokens, completion: completionTokens))))
        }
        try await writer.write(sseDone)
        try await writer.finish(nil)
    } catch {
        run.cancel()   // the client went away: free its sequences now
        throw error
    }
}

/// An iterator handed from the route to the response body writer (one consumer).
final class EventIterator: @unchecked Sendable {
    var iterator: AsyncStream<GenerationEvent>.AsyncIterator
    init(_ stream: AsyncStream<GenerationEvent>) { iterator = stream.makeAsyncIterator() }
    func next() async -> GenerationEvent? { await iterator.next() }
}

/// `finish_reason` as OpenAI/vLLM write it (a cancelled generation is vLLM's `abort`).
func finishReasonText(_ reason: FinishReason) -> String {
    switch reason {
    case .stop: return "stop"
    case .length: return "length"
    case .cancelled: return "abort"
    }
}

/// vLLM's `stop_reason`: the stop string that ended the text, null for end-of-sequence or length.
func stopReasonValue(_ result: GenerateResult) -> JSONValue {
    guard result.finishReason == .stop, let reason = result.stopReason, reason != "eos" else { return .null }
    return .string(reason)
}

func usageValue(prompt: Int, completion: Int) -> JSONValue {
    .object(["prompt_tokens": .int(prompt), "completion_tokens": .int(completion), "total_tokens": .int(prompt + completion)])
}

/// A random id like OpenAI's (`cmpl-…`, `chatcmpl-…`).
func requestID(_ prefix: String) -> String {
    prefix + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
}

/// One SSE event: `data: <json>\n\n`.
func sseEvent(_ value: JSONValue) -> ByteBuffer {
    var buffer = ByteBuffer(string: "data: ")
    buffer.writeBytes(OpenAIAPI.encodeJSON(value))
    buffer.writeString("\n\n")
    return buffer
}

let sseDone = ByteBuffer(string: "data: [DONE]\n\n")
