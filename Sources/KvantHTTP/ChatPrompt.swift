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
///
/// The seam for the chat-template renderer (the Jinja subset in target `ChatTemplates`): at merge,
/// `ChatTemplateResolver.makeRenderer` wraps `ChatTemplate(source:)` in this protocol. Until then
/// every template renders as ChatML (`ChatMLRenderer`).
public protocol ChatPromptRenderer: Sendable {
    /// - Parameters:
    ///   - addGenerationPrompt: end with the assistant's turn header (`<|im_start|>assistant\n`).
    ///   - extraContext: `chat_template_kwargs`, visible to the template as variables.
    /// - Throws: `OpenAIError` (400) for a conversation the template refuses (`raise_exception`).
    func render(messages: [ChatMessage], addGenerationPrompt: Bool, bosToken: String, eosToken: String,
                extraContext: [String: JSONValue]) throws -> String
}

/// ChatML (`<|im_start|>role\ncontent<|im_end|>\n` per message), the default of Hugging Face's
/// tokenizers and vLLM for models without a template; SmolLM2's own template is ChatML.
public struct ChatMLRenderer: ChatPromptRenderer {
    public init() {}

    public func render(messages: [ChatMessage], addGenerationPrompt: Bool, bosToken: String, eosToken: String,
                       extraContext: [String: JSONValue]) throws -> String {
        var text = ""
        for message in messages { text += "<|im_start|>\(message.role)\n\(message.content)<|im_end|>\n" }
        if addGenerationPrompt { text += "<|im_start|>assistant\n" }
        return text
    }
}

/// Which template a model's chat prompts use: `--chat-template FILE` over the GGUF's
/// `tokenizer.chat_template`, ChatML when neither exists.
public struct ChatTemplateResolver: Sendable {
    /// Template text of `--chat-template` / `chat_template`, read at start-up.
    public let overrideSource: String?
    public let overridePath: String?

    /// Reads the override file. - Throws: `KvantError(.notFound/.invalidArgument)` naming the file.
    public init(overridePath: String?) throws {
        self.overridePath = overridePath
        guard let overridePath else { overrideSource = nil; return }
        guard FileManager.default.fileExists(atPath: overridePath) else {
            throw KvantError(.notFound, "chat_template: \(overridePath) does not exist")
        }
        guard let data = FileManager.default.contents(atPath: overridePath), let text = String(data: data, encoding: .utf8) else {
            throw KvantError(.invalidArgument, "chat_template: \(overridePath) is not readable UTF-8 text")
        }
        overrideSource = text
    }

    /// The renderer for the loaded model and where its template came from (for /v1/models and the log):
    /// `"file <path>"`, `"gguf tokenizer.chat_template"` or `"chatml (default: the model has no tokenizer.chat_template)"`.
    public func resolve(_ model: ChatTemplateSource) -> (renderer: any ChatPromptRenderer, source: String) {
        if let overrideSource, let overridePath {
            return (Self.makeRenderer(source: overrideSource), "file \(overridePath)")
        }
        if let template = model.template, !template.isEmpty {
            return (Self.makeRenderer(source: template), "gguf tokenizer.chat_template")
        }
        return (ChatMLRenderer(), "chatml (default: the model has no tokenizer.chat_template)")
    }

    /// The renderer of a Jinja template. Phase 1 (before the `ChatTemplates` target is merged): ChatML for
    /// every template, which is exact for ChatML templates without a default system prompt.
    static func makeRenderer(source: String) -> any ChatPromptRenderer {
        ChatMLRenderer()
    }
}
