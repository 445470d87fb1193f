import ControlProtocol
import Foundation
import HTTPTypes
import Hummingbird
import KvantDaemon
import NIOCore

/// A prompt of a completions request: its token ids and its text (for `echo`).
private struct Prompt {
    var tokens: [Int]
    var text: String
}

extension OpenAIAPI {
    // MARK: /v1/completions

    /// `POST /v1/completions` (OpenAI's legacy completions, as vLLM serves them).
    func completions(_ request: Request, _ context: KvantRequestContext) async throws -> Response {
        let f = try await readBody(request)
        let info = try await requireModel()
        try checkModel(f, info)
        let sampling = try SamplingFields.parse(f, maxTokensKeys: ["max_tokens"])
        let stream = try f.bool("stream") ?? false
        let includeUsage = try f.streamOptionsIncludeUsage(stream: stream)
        let logprobs = try f.int("logprobs", in: 0...TokenLogprobs.maxTopLogprobs)
        let echo = try f.bool("echo") ?? false
        if let suffix = try f.string("suffix"), !suffix.isEmpty { throw OpenAIError.invalidField("suffix", "is not supported") }
        _ = try f.string("user")
        if stream && echo && logprobs != nil {
            throw OpenAIError.invalidField("echo", "echo with logprobs is supported only without stream (the prompt's logprobs come with the full response)")
        }
        let prompts = try await completionPrompts(f, info)
        let choicesCount = prompts.count * sampling.n
        guard choicesCount <= SamplingFields.maxN * 4 else {
            throw OpenAIError.invalidField("prompt", "\(prompts.count) prompts × n \(sampling.n) = \(choicesCount) choices; at most \(SamplingFields.maxN * 4)")
        }
        var choices: [PlannedChoice] = []
        for (pi, prompt) in prompts.enumerated() {
            let budget = try tokenBudget(promptTokens: prompt.tokens.count, requested: sampling.maxTokens, defaultTokens: 16,
                                         info: info, maxNumSeqs: settings.maxNumSeqs, promptField: "prompt")
            for j in 0..<sampling.n {
                let index = pi * sampling.n + j
                choices.append(PlannedChoice(index: index, promptIndex: pi, params: sampling.params(
                    prompt: prompt.tokens, maxTokens: budget, choice: j, logprobs: logprobs,
                    promptLogprobs: echo && logprobs != nil ? logprobs : nil)))
            }
        }
        let admission = try tracker.admit(choices.count)
        let run = GenerationRun(engine: engine, choices: choices, disconnect: await ClientDisconnectHandler.of(context.channel),
                                tracker: tracker, admission: admission)
        let id = requestID("cmpl-")
        let created = Self.now()
        let model = servedName(info)
        let promptTokens = prompts.map(\.tokens.count).reduce(0, +)

        if !stream {
            let collected = try await collect(run, count: choices.count)
            var items: [JSONValue] = []
            var completionTokens = 0
            for choice in choices {
                let (result, tokens) = collected[choice.index]
                completionTokens += result.completionTokens
                let prompt = prompts[choice.promptIndex]
                let prefix = echo ? prompt.text : ""
                var lp: JSONValue = .null
                if logprobs != nil {
                    var acc = CompletionLogprobs(offset: 0)
                    if echo, let scored = result.promptLogprobs {
                        for (i, token) in prompt.tokens.enumerated() {
                            if let entry = i < scored.count ? scored[i] : nil {
                                acc.add(entry, text: entry.chosen.text)
                            } else {
                                acc.addUnscored(text: try await engine.detokenize([token]))
                            }
                        }
                        acc.offset = prefix.unicodeScalars.count
                    }
                    for token in tokens { if let entry = token.logprobs { acc.add(entry, text: token.text) } }
                    lp = acc.value
                }
                items.append(.object([
                    "index": .int(choice.index), "text": .string(prefix + result.text), "logprobs": lp,
                    "finish_reason": .string(finishReasonText(result.finishReason)), "stop_reason": stopReasonValue(result),
                ]))
            }
            return Self.jsonResponse(.object([
                "id": .string(id), "object": .string("text_completion"), "created": .int(created), "model": .string(model),
                "choices": .array(items), "usage": usageValue(prompt: promptTokens, completion: completionTokens),
            ]))
        }

        // Streamed: the first event decides between an error status and 200 + SSE.
        let events = EventIterator(run.events)
        let first = await events.next()
        if case .failed(_, let error) = first { run.cancel(); throw error }
        var states: [Int: CompletionStreamState] = [:]
        for choice in choices {
            states[choice.index] = CompletionStreamState(stops: sampling.stop, logprobs: logprobs != nil,
                                                         echo: echo ? prompts[choice.promptIndex].text : nil)
        }
        let frame: @Sendable (_ choices: [JSONValue], _ usage: JSONValue?) -> JSONValue = { items, usage in
            var object: [String: JSONValue] = ["id": .string(id), "object": .string("text_completion"), "created": .int(created),
                                               "model": .string(model), "choices": .array(items)]
            if includeUsage { object["usage"] = usage ?? .null }
            return .object(object)
        }
        let initialStates = states
        let body = ResponseBody { writer in
            var states = initialStates
            try await writeChoiceEvents(&writer, first: first, events: events, run: run, states: &states,
                                        includeUsage: includeUsage, promptTokens: promptTokens, frame: frame)
        }
        return Response(status: .ok, headers: Self.sseHeaders, body: body)
    }

    static let sseHeaders: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]

    /// The prompts: a string, an array of token ids, or an array of either (one choice set per prompt).
    private func completionPrompts(_ f: RequestFields, _ info: ModelInfo) async throws -> [Prompt] {
        guard let value = f["prompt"] else { throw OpenAIError.invalidField("prompt", "required (a string or an array of token ids)") }
        func fromTokens(_ items: [JSONValue], field: String) async throws -> Prompt {
            guard !items.isEmpty else { throw OpenAIError.invalidField(field, "is empty") }
            let ids = try Self.ids(items, field: field, vocabSize: info.vocabSize)
            return Prompt(tokens: ids, text: try await engine.detokenize(ids))
        }
        func fromText(_ text: String, field: String) async throws -> Prompt {
            let tokens = try await engine.tokenize(text, addSpecialTokens: true)
            guard !tokens.isEmpty else { throw OpenAIError.invalidField(field, "the prompt has no tokens") }
            return Prompt(tokens: tokens, text: text)
        }
        switch value {
        case .string(let text): return [try await fromText(text, field: "prompt")]
        case .array(let items):
            guard !items.isEmpty else { throw OpenAIError.invalidField("prompt", "is empty") }
            if items.allSatisfy({ if case .int = $0 { return true } else { return false } }) {
                return [try await fromTokens(items, field: "prompt")]
            }
            var prompts: [Prompt] = []
            for (i, item) in items.enumerated() {
                switch item {
                case .string(let text): prompts.append(try await fromText(text, field: "prompt[\(i)]"))
                case .array(let ids): prompts.append(try await fromTokens(ids, field: "prompt[\(i)]"))
                default:
                    throw OpenAIError.invalidField("prompt[\(i)]", "expected a string or an array of token ids, got \(RequestFields.typeName(item))")
                }
            }
            return prompts
        default:
            throw OpenAIError.invalidField("prompt", "expected a string or an array of token ids, got \(RequestFields.typeName(value))")
        }
    }

    /// Waits for every choice; the first failure cancels the rest and is thrown.
    func collect(_ run: GenerationRun, count: Int) async throws -> [(GenerateResult, [GeneratedToken])] {
        var results = [GenerateResult?](repeating: nil, count: count)
        var tokens = [[GeneratedToken]](repeating: [], count: count)
        for await event in run.events {
            switch event {
            case .token(let index, let token): tokens[index].append(token)
            case .done(let index, let result): results[index] = result
            case .failed(_, let error): run.cancel(); throw error
            }
        }
        // Every choice reports done or failed before the stream ends; a missing one was cancelled with the request.
        guard results.allSatisfy({ $0 != nil }) else { throw CancellationError() }
        return (0..<count).map { (results[$0]!, tokens[$0]) }
    }
}

/// The `error` object of an SSE error event (the stream already sent 200).
func errorObject(_ error: OpenAIError) -> JSONValue {
    .object(["message": .string(error.message), "type": .string(error.type),
             "param": error.param.map { .string($0) } ?? .null, "code": .int(error.status.code)])
}

/// A logprob as JSON: −∞ (a token the model cannot produce) as vLLM's −9999.0, since JSON has no infinity.
func logprobValue(_ value: Double) -> JSONValue { .double(value.isFinite ? value : -9999.0) }

/// OpenAI's completions `logprobs` object: `tokens`, `token_logprobs`, `top_logprobs`, `text_offset`.
struct CompletionLogprobs {
    var offset: Int
    var tokens: [JSONValue] = []
    var tokenLogprobs: [JSONValue] = []
    var top: [JSONValue] = []
    var offsets: [JSONValue] = []

    mutating func add(_ entry: TokenLogprobs, text: String) {
        tokens.append(.string(entry.chosen.text))
        tokenLogprobs.append(logprobValue(entry.chosen.logprob))
        // The chosen token is always among them, so there may be `logprobs` + 1 entries (OpenAI's legacy
        // completions and vLLM do the same; `logprobs: 0` gives just the chosen token).
        var alternatives: [String: JSONValue] = [entry.chosen.text: logprobValue(entry.chosen.logprob)]
        for alt in entry.top where alternatives[alt.text] == nil { alternatives[alt.text] = logprobValue(alt.logprob) }
        top.append(.object(alternatives))
        offsets.append(.int(offset))
        offset += text.unicodeScalars.count
    }

    /// The first prompt token: it has no logprob.
    mutating func addUnscored(text: String) {
        tokens.append(.string(text))
        tokenLogprobs.append(.null)
        top.append(.null)
        offsets.append(.int(offset))
        offset += text.unicodeScalars.count
    }

    var isEmpty: Bool { tokens.isEmpty }

    var value: JSONValue {
        .object(["tokens": .array(tokens), "token_logprobs": .array(tokenLogprobs), "top_logprobs": .array(top),
                 "text_offset": .array(offsets)])
    }
}

/// One streamed completion choice: text held back while it may become a stop string, logprobs of the
/// tokens since the last chunk, the echoed prompt first.
struct CompletionStreamState: ChoiceStreamState {
    var holdBack: StopStringHoldBack
    let logprobs: Bool
    var echo: String?
    var pending: [GeneratedToken] = []
    var offset = 0

    init(stops: [String], logprobs: Bool, echo: String?) {
        holdBack = StopStringHoldBack(stops: stops)
        self.logprobs = logprobs
        self.echo = echo
    }

    private mutating func item(_ text: String, index: Int, finish: GenerateResult?) -> JSONValue {
        var lp: JSONValue = .null
        if logprobs {
            var acc = CompletionLogprobs(offset: offset)
            for token in pending { if let entry = token.logprobs { acc.add(entry, text: token.text) } }
            offset = acc.offset
            lp = acc.isEmpty ? .null : acc.value
        }
        pending.removeAll()
        var prefix = ""
        if let echo { prefix = echo; offset += echo.unicodeScalars.count; self.echo = nil }
        return .object([
            "index": .int(index), "text": .string(prefix + text), "logprobs": lp,
            "finish_reason": finish.map { .string(finishReasonText($0.finishReason)) } ?? .null,
            "stop_reason": finish.map(stopReasonValue) ?? .null,
        ])
    }

    /// The chunk for a token, nil while its text is held back.
    mutating func token(_ token: GeneratedToken, index: Int) -> JSONValue? {
        pending.append(token)
        let text = holdBack.append(token.text)
        guard !text.isEmpty || echo != nil else { return nil }
        return item(text, index: index, finish: nil)
    }

    /// The last chunk: the rest of the text and the finish reason.
    mutating func done(_ result: GenerateResult, index: Int) -> JSONValue? {
        item(holdBack.finish(finalText: result.text), index: index, finish: result)
    }
}
