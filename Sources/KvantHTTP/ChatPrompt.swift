import ChatTemplates
import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon

/// One chat message as the templates see it: `role` and its text `content` (the array-of-text-parts
/// form is joined with "\n" first, as vLLM does).
public struct ChatMessage: Sendable, Equatable {
    public var role: String
    public var content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// Turns a conversation into the prompt text the model was trained on.
public protocol ChatPromptRenderer: Sendable {
    /// - Parameters:
    ///   - addGenerationPrompt: end with the assistant's turn header (e.g. `<|im_start|>assistant\n`).
    ///   - extraContext: `chat_template_kwargs`, visible to the template as variables.
    /// - Throws: `OpenAIError` (400) for a conversation the template refuses (`raise_exception`) or cannot render;
    ///   `ChatTemplateLimitError` when the template itself went over a rendering limit.
    func render(messages: [ChatMessage], addGenerationPrompt: Bool, bosToken: String, eosToken: String,
                extraContext: [String: JSONValue]) throws -> String
}

/// The chat template, not the request, went over a rendering limit (`ChatTemplate.Limits`: output size, loop steps,
/// recursion depth). The route turns it into a 400 that names the template and the model, not `messages`.
public struct ChatTemplateLimitError: Error, CustomStringConvertible, Sendable {
    public let error: ChatTemplateError
    public var description: String { error.description }
}

/// A Jinja chat template rendered by the `ChatTemplates` target as transformers' `apply_chat_template` does
/// (each message is passed as `{"role": …, "content": …}`; `bos_token`/`eos_token` are the model's texts).
public struct JinjaChatRenderer: ChatPromptRenderer {
    public let template: ChatTemplate

    /// - Throws: `KvantError(.invalidArgument)` naming `origin` and the line and column of a syntax error.
    public init(source: String, origin: String) throws {
        do {
            template = try ChatTemplate(source: source)
        } catch let error as ChatTemplateError {
            throw KvantError(.invalidArgument, "the chat template (\(origin)) cannot be parsed: \(error)")
        }
    }

    /// A renderer of an already parsed template.
    public init(template: ChatTemplate) {
        self.template = template
    }

    /// ChatML (`<|im_start|>role\ncontent<|im_end|>\n` per message), the default of Hugging Face's tokenizers and
    /// vLLM for models without a template; SmolLM2's and Qwen's own templates are ChatML.
    public static let chatML: JinjaChatRenderer = try! JinjaChatRenderer(source: ChatTemplate.chatML, origin: "chatml")

    public func render(messages: [ChatMessage], addGenerationPrompt: Bool, bosToken: String, eosToken: String,
                       extraContext: [String: JSONValue]) throws -> String {
        var context: [String: JinjaValue] = [:]
        for (key, value) in extraContext { context[key] = Self.jinja(value) }
        do {
            return try template.render(messages: messages.map { JinjaValue.message(role: $0.role, content: $0.content) },
                                       addGenerationPrompt: addGenerationPrompt, bosToken: bosToken, eosToken: eosToken,
                                       extraContext: context)
        } catch let error as ChatTemplateError {
            switch error.kind {
            case .raised: throw OpenAIError(.badRequest, "the chat template refused these messages: \(error.message)", param: "messages")
            case .invalidArgument: throw OpenAIError.invalidField("chat_template_kwargs", error.message)
            case .limit: throw ChatTemplateLimitError(error: error)
            default: throw OpenAIError(.badRequest, "the chat template failed on these messages: \(error)", param: "messages")
            }
        }
    }

    /// A request's JSON as the template sees it (object keys in sorted order: `JSONValue` keeps no order).
    static func jinja(_ value: JSONValue) -> JinjaValue {
        switch value {
        case .null: return .null
        case .bool(let b): return .bool(b)
        case .int(let i): return .int(i)
        case .double(let d): return .double(d)
        case .string(let s): return .string(s)
        case .array(let a): return .array(a.map(jinja))
        case .object(let o): return .object(JinjaObject(o.keys.sorted().map { ($0, jinja(o[$0]!)) }))
        }
    }
}

/// Which template a model's chat prompts use: `--chat-template FILE` over the GGUF's
/// `tokenizer.chat_template`, ChatML when neither exists. Parsed templates are kept per source text.
public final class ChatTemplateResolver: @unchecked Sendable {
    /// Template text of `--chat-template` / `chat_template`, read at start-up.
    public let overrideSource: String?
    public let overridePath: String?
    private let lock = NSLock()
    private var parsed: (source: String, renderer: Result<JinjaChatRenderer, KvantError>)?

    /// Reads and parses the override file (at most 1 MiB of UTF-8).
    /// - Throws: `KvantError(.notFound/.invalidArgument)` naming the file (and the line and column of a syntax error).
    public init(overridePath: String?) throws {
        self.overridePath = overridePath
        guard let overridePath else { overrideSource = nil; return }
        switch FileBytes.read(overridePath, maxBytes: 1 << 20) {
        case .bytes(let bytes):
            guard let text = String(validating: bytes, as: UTF8.self) else {
                throw KvantError(.invalidArgument, "chat_template: \(overridePath) is not UTF-8 text")
            }
            overrideSource = text
        case .missing: throw KvantError(.notFound, "chat_template: \(overridePath) does not exist")
        case .directory: throw KvantError(.invalidArgument, "chat_template: \(overridePath) is a directory; name a template file")
        case .notRegular: throw KvantError(.invalidArgument, "chat_template: \(overridePath) is not a regular file")
        case .tooLarge(let size): throw KvantError(.invalidArgument, "chat_template: \(overridePath) is \(size) bytes, more than 1 MiB")
        case .failed(let why): throw KvantError(.invalidArgument, "chat_template: cannot read \(overridePath): \(why)")
        }
        _ = try JinjaChatRenderer(source: overrideSource!, origin: "file \(overridePath)")
    }

    /// The renderer for the loaded model and where its template came from (for /v1/models and the log):
    /// `"file <path>"`, `"gguf tokenizer.chat_template"` or `"chatml (default: the model has no tokenizer.chat_template)"`.
    /// - Throws: `KvantError(.invalidArgument)` when the model's own template cannot be parsed.
    public func resolve(_ model: ChatTemplateSource) throws -> (renderer: any ChatPromptRenderer, source: String) {
        if let overrideSource, let overridePath {
            let origin = "file \(overridePath)"
            return (try renderer(overrideSource, origin: origin), origin)
        }
        if let template = model.template, !template.isEmpty {
            let origin = "gguf tokenizer.chat_template"
            return (try renderer(template, origin: origin), origin)
        }
        return (JinjaChatRenderer.chatML, "chatml (default: the model has no tokenizer.chat_template)")
    }

    /// The parsed template of `source`, parsing it once per distinct text (one model at a time is loaded).
    private func renderer(_ source: String, origin: String) throws -> JinjaChatRenderer {
        lock.lock()
        defer { lock.unlock() }
        if let parsed, parsed.source == source { return try parsed.renderer.get() }
        let result: Result<JinjaChatRenderer, KvantError>
        do { result = .success(try JinjaChatRenderer(source: source, origin: origin)) } catch let e as KvantError {
            result = .failure(e)
        }
        parsed = (source, result)
        return try result.get()
    }
}
