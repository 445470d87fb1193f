import ControlProtocol
import Foundation
import Hummingbird
import KvantDaemon
import NIOCore

extension OpenAIAPI {
    /// Roles a message may have.
    static let chatRoles: Set<String> = ["system", "developer", "user", "assistant", "tool"]

    /// The conversation of `messages`: string content or the array-of-text-parts form (parts joined by "\n").
    static func chatMessages(_ f: RequestFields) throws -> [ChatMessage] {
        guard let items = try f.array("messages") else { throw OpenAIError.invalidField("messages", "required (an array of messages)") }
        guard !items.isEmpty else { throw OpenAIError.invalidField("messages", "is empty") }
        return try items.enumerated().map { index, item in
            let field = "messages[\(index)]"
            guard case .object(let object) = item else {
                throw OpenAIError.invalidField(field, "expected an object with 'role' and 'content', got \(RequestFields.typeName(item))")
            }
            let m = RequestFields(object, path: field + ".")
            guard let role = try m.string("role") else { throw OpenAIError.invalidField(m.name("role"), "required") }
            guard Self.chatRoles.contains(role) else {
                throw OpenAIError.invalidField(m.name("role"), "unknown role '\(role.prefix(32))'; expected one of: system, developer, user, assistant, tool")
            }
            if m.has("tool_calls") { throw OpenAIError.invalidField(m.name("tool_calls"), "tool calls are not supported") }
            var content = ""
            switch m["content"] {
            case nil:
                guard role == "assistant" else { throw OpenAIError.invalidField(m.name("content"), "required") }
            case .string(let text)?:
                content = text
            case .array(let parts)?:
                var texts: [String] = []
                for (k, part) in parts.enumerated() {
                    let partField = "\(m.name("content"))[\(k)]"
                    guard case .object(let p) = part else {
                        throw OpenAIError.invalidField(partField, "expected a content part object, got \(RequestFields.typeName(part))")
                    }
                    let pf = RequestFields(p, path: partField + ".")
                    guard let type = try pf.string("type") else { throw OpenAIError.invalidField(pf.name("type"), "required") }
                    guard type == "text" else {
                        throw OpenAIError.invalidField(pf.name("type"), "content parts of type '\(type.prefix(32))' are not supported (text only)")
                    }
                    guard let text = try pf.string("text") else { throw OpenAIError.invalidField(pf.name("text"), "required") }
                    texts.append(text)
                }
                content = texts.joined(separator: "\n")
            case let other?:
                throw OpenAIError.invalidField(m.name("content"), "expected a string or an array of content parts, got \(RequestFields.typeName(other))")
            }
            return ChatMessage(role: role, content: content)
        }
    }

    /// The prompt text of a chat request: its messages through the model's chat template, and the BOS text
    /// the template was given.
    func renderChat(_ f: RequestFields) async throws -> (prompt: String, bosToken: String) {
        let messages = try Self.chatMessages(f)
        let addGenerationPrompt = try f.bool("add_generation_prompt") ?? true
        let kwargs = try f.object("chat_template_kwargs")?.object ?? [:]
        guard let source = await engine.chatTemplate else { _ = try await requireModel(); return ("", "") }
        let (renderer, origin) = try templates.resolve(source)
        if let info = await engine.modelInfo, templateLog.first(info.path) {
            logger.notice("chat prompts use \(origin)", metadata: ["model": "\(info.path)"])
        }
        do {
            return (try renderer.render(messages: messages, addGenerationPrompt: addGenerationPrompt, bosToken: source.bosToken,
                                        eosToken: source.eosToken, extraContext: kwargs), source.bosToken)
        } catch let error as OpenAIError {
            throw error
        } catch let error as ChatTemplateLimitError {
            // The template's fault (a runaway loop or recursion, a huge output): say which template of which model.
            let model = await engine.modelInfo.map(servedName) ?? "(none)"
            logger.warning("the chat template went over a rendering limit", metadata: ["template": "\(origin)", "model": "\(model)",
                                                                                     "error": "\(error)"])
            throw OpenAIError(.badRequest, "the chat template of model '\(model)' (\(origin)) went over a rendering limit: \(error); "
                              + "the template is at fault, not the messages (fix it, or serve another with --chat-template)")
        } catch {
            throw OpenAIError(.badRequest, "the chat template failed on these messages: \(error)", param: "messages")
        }
    }

    /// The token ids of a chat request's prompt. `add_special_tokens` as given; by default the model's BOS is added
    /// (when its vocabulary adds one) unless the rendered text already starts with it: templates that write
    /// `{{ bos_token }}` (Gemma, Llama 3) get exactly one, and a template without it (ChatML, the fallback of a
    /// model that has none) still gets the BOS the model was trained with, as llama.cpp's server does.
    func chatPromptTokens(_ f: RequestFields) async throws -> [Int] {
        let (prompt, bos) = try await renderChat(f)
        let addSpecial = try f.bool("add_special_tokens") ?? !(bos.isEmpty == false && prompt.hasPrefix(bos))
        return try await engine.tokenize(prompt, addSpecialTokens: addSpecial)
    }

    // MARK: /v1/chat/completions

    func chatCompletions(_ request: Request, _ context: KvantRequestContext) async throws -> Response {
        let f = try await readBody(request)
        let info = try await requireModel()
        try checkModel(f, info)
        let sampling = try SamplingFields.parse(f, maxTokensKeys: ["max_completion_tokens", "max_tokens"])
        let stream = try f.bool("stream") ?? false
        let includeUsage = try f.streamOptionsIncludeUsage(stream: stream)
        let wantLogprobs = try f.bool("logprobs") ?? false
        let top = try f.int("top_logprobs", in: 0...TokenLogprobs.maxTopLogprobs)
        if top != nil && !wantLogprobs { throw OpenAIError.invalidField("top_logprobs", "needs 'logprobs': true") }
        if let tools = try f.array("tools"), !tools.isEmpty { throw OpenAIError.invalidField("tools", "tool calling is not supported") }
        _ = try f.string("user")
        let tokens = try await chatPromptTokens(f)
        guard !tokens.isEmpty else { throw OpenAIError.invalidField("messages", "the rendered prompt has no tokens") }
        let budget = try tokenBudget(promptTokens: tokens.count, requested: sampling.maxTokens, defaultTokens: nil, info: info,
                                     maxNumSeqs: settings.maxNumSeqs, promptField: "messages")
        let logprobs = wantLogprobs ? (top ?? 0) : nil
        let choices = (0..<sampling.n).map { j in
            PlannedChoice(index: j, promptIndex: 0,
                          params: sampling.params(prompt: tokens, maxTokens: budget, choice: j, logprobs: logprobs, promptLogprobs: nil))
        }
        let admission = try tracker.admit(choices.count)
        let run = GenerationRun(engine: engine, choices: choices, disconnect: await ClientDisconnectHandler.of(context.channel),
                                tracker: tracker, admission: admission)
        let id = requestID("chatcmpl-")
        let created = Self.now()
        let model = servedName(info)

        if !stream {
            let collected = try await collect(run, count: choices.count)
            var items: [JSONValue] = []
            var completionTokens = 0
            for (index, (result, generated)) in collected.enumerated() {
                completionTokens += result.completionTokens
                var lp: JSONValue = .null
                if logprobs != nil { lp = .object(["content": .array(generated.compactMap { $0.logprobs.map(chatLogprob) })]) }
                items.append(.object([
                    "index": .int(index), "message": .object(["role": .string("assistant"), "content": .string(result.text)]),
                    "logprobs": lp, "finish_reason": .string(finishReasonText(result.finishReason)),
                    "stop_reason": stopReasonValue(result),
                ]))
            }
            return Self.jsonResponse(.object([
                "id": .string(id), "object": .string("chat.completion"), "created": .int(created), "model": .string(model),
                "choices": .array(items), "usage": usageValue(prompt: tokens.count, completion: completionTokens),
            ]))
        }

        let events = EventIterator(run.events)
        let first = await events.next()
        if case .failed(_, let error) = first { run.cancel(); throw error }
        let frame: @Sendable (_ choices: [JSONValue], _ usage: JSONValue?) -> JSONValue = { items, usage in
            var object: [String: JSONValue] = ["id": .string(id), "object": .string("chat.completion.chunk"),
                                               "created": .int(created), "model": .string(model), "choices": .array(items)]
            if includeUsage { object["usage"] = usage ?? .null }
            return .object(object)
        }
        let count = choices.count
        let stops = sampling.stop
        let promptCount = tokens.count
        let body = ResponseBody { writer in
            var states = Dictionary(uniqueKeysWithValues: (0..<count).map { ($0, ChatStreamState(stops: stops, logprobs: logprobs != nil)) })
            // vLLM's first chunk of every choice: the role.
            do {
                for index in 0..<count {
                    try await writer.write(sseEvent(frame([.object([
                        "index": .int(index), "delta": .object(["role": .string("assistant"), "content": .string("")]),
                        "logprobs": .null, "finish_reason": .null])], nil)))
                }
            } catch {
                run.cancel()   // the client went away: free its sequences now
                throw error
            }
            try await writeChoiceEvents(&writer, first: first, events: events, run: run, states: &states,
                                        includeUsage: includeUsage, promptTokens: promptCount, frame: frame)
        }
        return Response(status: .ok, headers: Self.sseHeaders, body: body)
    }
}

/// One entry of chat `logprobs.content`: `{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}`.
func chatLogprob(_ entry: TokenLogprobs) -> JSONValue {
    func one(_ t: TokenLogprob) -> [String: JSONValue] {
        ["token": .string(t.text), "logprob": logprobValue(t.logprob), "bytes": .array(t.bytes.map { .int(Int($0)) })]
    }
    var chosen = one(entry.chosen)
    chosen["top_logprobs"] = .array(entry.top.map { .object(one($0)) })
    return .object(chosen)
}

/// One streamed chat choice: `delta.content` held back while it may become a stop string.
struct ChatStreamState: ChoiceStreamState {
    var holdBack: StopStringHoldBack
    let logprobs: Bool
    var pending: [GeneratedToken] = []

    init(stops: [String], logprobs: Bool) {
        holdBack = StopStringHoldBack(stops: stops)
        self.logprobs = logprobs
    }

    private mutating func item(_ text: String, index: Int, finish: GenerateResult?) -> JSONValue {
        let lp: JSONValue = logprobs && !pending.isEmpty
            ? .object(["content": .array(pending.compactMap { $0.logprobs.map(chatLogprob) })]) : .null
        pending.removeAll()
        return .object([
            "index": .int(index), "delta": text.isEmpty && finish != nil ? .object([:]) : .object(["content": .string(text)]),
            "logprobs": lp, "finish_reason": finish.map { .string(finishReasonText($0.finishReason)) } ?? .null,
            "stop_reason": finish.map(stopReasonValue) ?? .null,
        ])
    }

    mutating func token(_ token: GeneratedToken, index: Int) -> JSONValue? {
        pending.append(token)
        let text = holdBack.append(token.text)
        guard !text.isEmpty else { return nil }
        return item(text, index: index, finish: nil)
    }

    mutating func done(_ result: GenerateResult, index: Int) -> JSONValue? {
        item(holdBack.finish(finalText: result.text), index: index, finish: result)
    }
}
