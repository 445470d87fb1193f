import ChatTemplates
import ControlProtocol
import Foundation

/// The request-body checks of `/v1/completions` and `/v1/chat/completions` that run before the engine is
/// asked anything, callable without a server: the `http-body` harness of `kvant-fuzz` feeds arbitrary
/// bytes through them (the HTTP framing itself is Hummingbird's and swift-nio's, fuzzed upstream).
public enum RequestParsing {
    /// Parses `body` as both routes do: JSON object, sampling fields (both `max_tokens` spellings),
    /// `messages` and their content parts, then renders the messages with ChatML and with `template`.
    /// - Throws: `OpenAIError` (400) naming the field, as the routes answer, or `ChatTemplateLimitError` for a template
    ///   over a rendering limit; `ChatTemplateError` never escapes.
    public static func check(body: [UInt8], template: ChatTemplate? = nil) throws {
        let f = try RequestFields(body: Data(body))
        _ = try SamplingFields.parse(f, maxTokensKeys: ["max_tokens"])
        _ = try SamplingFields.parse(f, maxTokensKeys: ["max_completion_tokens", "max_tokens"])
        _ = try f.stringOrStrings("stop")
        guard f.has("messages") else { return }
        let messages = try OpenAIAPI.chatMessages(f)
        let kwargs = try f.object("chat_template_kwargs")?.object ?? [:]
        _ = try JinjaChatRenderer.chatML.render(messages: messages, addGenerationPrompt: true, bosToken: "<s>", eosToken: "</s>",
                                                extraContext: kwargs)
        if let template {
            let renderer = JinjaChatRenderer(template: template)
            _ = try renderer.render(messages: messages, addGenerationPrompt: try f.bool("add_generation_prompt") ?? true,
                                    bosToken: "<s>", eosToken: "</s>", extraContext: kwargs)
        }
    }
}
