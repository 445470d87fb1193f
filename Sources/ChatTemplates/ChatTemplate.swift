import Foundation

/// Why rendering a chat template failed. `description` names the line and column in the template,
/// the construct, and what went wrong; quoted template text or values are capped to a few dozen
/// characters and escaped (a template is untrusted input from a model file).
public struct ChatTemplateError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Kind: String, Sendable {
        /// The template does not parse (jinja2's TemplateSyntaxError).
        case syntax
        /// The template called `raise_exception(message)`: `message` is exactly its argument.
        case raised
        /// An undefined value was used where a value is required (jinja2's UndefinedError).
        case undefined
        /// An operation the sandbox refuses (mutating a list or dict, private attributes).
        case security
        /// A Python TypeError / ValueError / TemplateRuntimeError equivalent (wrong types, bad arguments).
        case runtime
        /// A Kvant resource limit (`ChatTemplate.Limits`) was hit.
        case limit
        /// The render call itself was invalid (e.g. `extraContext` redefines `messages`).
        case invalidArgument
    }

    public let kind: Kind
    public let message: String
    /// 1-based position in the template (after jinja2's newline normalization); 0 when not applicable.
    public let line: Int
    public let column: Int
    /// The construct being evaluated, e.g. "filter 'tojson'", "call of 'raise_exception'".
    public let construct: String?

    /// One line: position, construct, kind and message (the message capped at 300 characters with
    /// control characters escaped; `message` itself is verbatim).
    public var description: String {
        let place = line > 0 ? "chat template line \(line), column \(column)" : "chat template"
        let text = ChatTemplateError.snippet(message, max: 300)
        switch kind {
        case .syntax: return "\(place): syntax error: \(text)"
        case .raised: return "\(place): the template raised an exception: \(text)"
        default:
            return "\(place)\(construct.map { " (\($0))" } ?? ""): \(kind.rawValue) error: \(text)"
        }
    }

    /// Caps and escapes a piece of untrusted text for an error message.
    static func snippet(_ s: String, max: Int = 40) -> String {
        var out = String.UnicodeScalarView()
        var n = 0
        for c in s.unicodeScalars {
            if n == max { return String(out) + "…" }
            n += 1
            switch c {
            case "\n": out.append(contentsOf: "\\n".unicodeScalars)
            case "\r": out.append(contentsOf: "\\r".unicodeScalars)
            case "\t": out.append(contentsOf: "\\t".unicodeScalars)
            default:
                if c.value < 0x20 || c.value == 0x7F || !PyFormat.isPrintable(c) {
                    out.append(contentsOf: String(PyFormat.stringRepr(String(c)).dropFirst().dropLast()).unicodeScalars)
                } else {
                    out.append(c)
                }
            }
        }
        return String(out)
    }
}

/// A parsed chat template: a Jinja2 template as Hugging Face transformers renders it in
/// `apply_chat_template` (jinja2 `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`
/// with `loopcontrols`, `{% generation %}`, a `tojson` filter that is `json.dumps(ensure_ascii=False)`,
/// and the globals `raise_exception` and `strftime_now`). See docs/chat-templates.md for the subset.
///
/// Parsing happens once in `init`; `render` is pure and may be called concurrently.
public struct ChatTemplate: @unchecked Sendable {
    /// Resource bounds for untrusted templates. Every limit the template hits raises `ChatTemplateError(kind: .limit)`;
    /// a value passed to `render` nested deeper than `maxDepth` is `.invalidArgument` (the caller's input).
    public struct Limits: Sendable, Equatable {
        /// Largest template source accepted by `init`, in bytes.
        public var maxTemplateBytes: Int
        /// Largest rendered output (and largest string or list a template may build), in bytes / items.
        public var maxOutputBytes: Int
        /// Loop iterations, macro calls and per-element filter work, summed over one render.
        public var maxSteps: Int
        /// Nesting of statements, expressions and macro calls, while parsing and while rendering, and of
        /// the arrays/objects passed in. Rendering recurses this deep at most: with the default (100) a
        /// release build needs under 192 KiB of stack (docs/chat-templates.md).
        public var maxDepth: Int

        public init(maxTemplateBytes: Int = 1 << 20, maxOutputBytes: Int = 32 << 20, maxSteps: Int = 2_000_000,
                    maxDepth: Int = 100)
        {
            self.maxTemplateBytes = maxTemplateBytes
            self.maxOutputBytes = maxOutputBytes
            self.maxSteps = maxSteps
            self.maxDepth = maxDepth
        }

        public static let `default` = Limits()
    }

    /// The template text as given.
    public let source: String
    public let limits: Limits
    private let body: [Stmt]
    private let normalized: [Unicode.Scalar]

    /// The ChatML template (as SmolLM2 and Qwen ship it), for models without `tokenizer.chat_template`.
    /// Content in the array-of-parts form is rendered as the concatenation of its text parts.
    public static let chatML: String =
        "{%- for message in messages -%}\n"
        + "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
        + "{%- if message['content'] is string -%}\n"
        + "{{- message['content'] -}}\n"
        + "{%- else -%}\n"
        + "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}\n"
        + "{%- endif -%}\n"
        + "{{- '<|im_end|>\\n' -}}\n"
        + "{%- endfor -%}\n"
        + "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n"

    /// Parses `source`. Throws `ChatTemplateError` (`.syntax` with line and column, or `.limit`).
    public init(source: String, limits: Limits = .default) throws {
        self.source = source
        self.limits = limits
        guard source.utf8.count <= limits.maxTemplateBytes else {
            throw ChatTemplateError(kind: .limit, message: "the template is \(source.utf8.count) bytes, more than the limit of \(limits.maxTemplateBytes)",
                                    line: 0, column: 0, construct: nil)
        }
        do {
            let (tokens, normalized) = try Lexer.tokenize(source)
            self.normalized = normalized
            body = try Parser.parse(tokens, endOffset: normalized.count, maxDepth: limits.maxDepth)
        } catch let e as TemplateSyntaxError {
            let (line, col) = ChatTemplate.position(of: e.offset, in: Lexer.normalize(source))
            throw ChatTemplateError(kind: .syntax, message: e.message, line: line, column: col, construct: nil)
        }
    }

    static func position(of offset: Int, in src: [Unicode.Scalar]) -> (Int, Int) {
        var line = 1
        var col = 1
        for c in src.prefix(max(0, offset)) {
            if c == "\n" { line += 1; col = 1 } else { col += 1 }
        }
        return (line, col)
    }

    /// Renders a chat the way transformers' `apply_chat_template` does: the template sees `messages`,
    /// `tools` and `documents` (null when not given, as transformers passes `None`),
    /// `add_generation_prompt`, `bos_token` / `eos_token` (undefined when nil), and every key of
    /// `extraContext` (the request's `chat_template_kwargs`, e.g. `enable_thinking`).
    ///
    /// - Parameters:
    ///   - messages: the chat, each message passed as-is (string content or the array-of-parts form).
    ///   - now: the clock of `strftime_now`, read in `timeZone` (transformers uses local time).
    /// - Throws: `ChatTemplateError`; `.raised` carries the template's own message verbatim;
    ///   `.invalidArgument` when `extraContext` redefines `messages`, `tools`, `documents` or
    ///   `add_generation_prompt` (Python would reject the duplicate keyword).
    public func render(messages: [JinjaValue], addGenerationPrompt: Bool, bosToken: String?, eosToken: String?,
                       tools: [JinjaValue]? = nil, documents: [JinjaValue]? = nil,
                       extraContext: [String: JinjaValue] = [:], now: Date = Date(),
                       timeZone: TimeZone = .current) throws -> String
    {
        var context: [String: JinjaValue] = [
            "messages": .array(messages),
            "tools": tools.map { .array($0) } ?? .null,
            "documents": documents.map { .array($0) } ?? .null,
            "add_generation_prompt": .bool(addGenerationPrompt),
        ]
        for key in ["messages", "tools", "documents", "add_generation_prompt"] where extraContext[key] != nil {
            throw ChatTemplateError(kind: .invalidArgument,
                                    message: "chat_template_kwargs may not redefine '\(key)'", line: 0, column: 0,
                                    construct: nil)
        }
        if let bosToken { context["bos_token"] = .string(bosToken) }
        if let eosToken { context["eos_token"] = .string(eosToken) }
        for (k, v) in extraContext { context[k] = v }
        return try render(context: context, now: now, timeZone: timeZone)
    }

    /// Renders with exactly `context` as the template's variables (besides the globals `range`, `dict`,
    /// `namespace`, `raise_exception`, `strftime_now`).
    public func render(context: [String: JinjaValue], now: Date = Date(), timeZone: TimeZone = .current) throws -> String {
        let interp = Interpreter(limits: limits, now: now, timeZone: timeZone)
        let root = Frame(parent: nil)
        for (k, v) in context {
            if ChatTemplate.nesting(of: v, exceeds: limits.maxDepth) {
                // The caller's value, not the template, is at fault: an invalid render call.
                throw ChatTemplateError(kind: .invalidArgument,
                                        message: "the value of '\(ChatTemplateError.snippet(k))' is nested more than \(limits.maxDepth) levels deep",
                                        line: 0, column: 0, construct: nil)
            }
            root.vars[k] = Value(v)
        }
        do {
            _ = try interp.exec(body, root)
            return interp.out
        } catch let p as Positioned {
            throw makeError(p.error, offset: p.offset, construct: p.construct)
        } catch let r as RenderError {
            throw makeError(r, offset: nil, construct: nil)
        }
    }

    /// True when `v` nests arrays/objects deeper than `limit` (checked before any recursive conversion).
    static func nesting(of v: JinjaValue, exceeds limit: Int) -> Bool {
        guard limit >= 0 else { return true }
        switch v {
        case .array(let xs): return xs.contains { nesting(of: $0, exceeds: limit - 1) }
        case .object(let o): return o.contains { nesting(of: $0.value, exceeds: limit - 1) }
        default: return false
        }
    }

    private func makeError(_ e: RenderError, offset: Int?, construct: String?) -> ChatTemplateError {
        let (line, col) = offset.map { ChatTemplate.position(of: $0, in: normalized) } ?? (0, 0)
        let (kind, msg): (ChatTemplateError.Kind, String)
        switch e {
        case .undefined(let u): (kind, msg) = (u.isSecurity ? .security : .undefined, u.message)
        case .type(let m), .value(let m), .runtime(let m): (kind, msg) = (.runtime, m)
        case .raised(let m): (kind, msg) = (.raised, m)
        case .limit(let m): (kind, msg) = (.limit, m)
        }
        return ChatTemplateError(kind: kind, message: msg, line: line, column: col,
                                 construct: kind == .raised ? nil : construct)
    }
}
