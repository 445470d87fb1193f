import KvantCore
import ModelFormats

/// A tokenizer built from GGUF `tokenizer.ggml.*` metadata. Token ids are `Int32` (llama.cpp's
/// `llama_token`), in `0 ..< vocabSize`.
public protocol Tokenizer: AnyObject, Sendable {
    /// Number of tokens in the vocabulary.
    var vocabSize: Int { get }
    /// Beginning-of-sequence token, if the vocabulary has one.
    var bos: Int32? { get }
    /// End-of-sequence token, if the vocabulary has one.
    var eos: Int32? { get }
    /// Whether `encode(_:addSpecial: true)` prepends `bos` (`tokenizer.ggml.add_bos_token`).
    var addsBOS: Bool { get }
    /// Tokens that end generation (eos, end-of-turn such as Gemma's `<end_of_turn>`, …).
    var endOfGenerationTokens: Set<Int32> { get }

    /// Token ids of `text`. `addSpecial` adds BOS/EOS as the model asks (`add_bos_token`, `add_eos_token`);
    /// `parseSpecial` lets the text contain control tokens such as `<start_of_turn>` (llama.cpp's
    /// `parse_special`; user-defined tokens are always matched).
    func encode(_ text: String, addSpecial: Bool, parseSpecial: Bool) -> [Int32]
    /// Raw bytes of `ids` joined: control and unknown tokens render as nothing unless `renderSpecial`.
    /// Ids out of range render as nothing.
    func decodeBytes(_ ids: [Int32], renderSpecial: Bool) -> [UInt8]
    /// The bytes one token contributes to decoded text (see `decodeBytes`).
    func bytes(for id: Int32, renderSpecial: Bool) -> [UInt8]
    /// The vocabulary entry of `id` as stored in the GGUF file (SentencePiece "piece", e.g. `▁Hello`,
    /// `<0x0A>`, `<start_of_turn>`); "" for an id out of range.
    func piece(for id: Int32) -> String
    /// Attributes of `id` (empty for an id out of range).
    func attributes(of id: Int32) -> TokenAttributes
    /// Whether `skip_special_tokens` drops `id` from generated text (vLLM's default, as Hugging Face's tokenizers skip
    /// their special tokens): control and unknown tokens; for a SentencePiece vocabulary also the user-defined tokens
    /// shaped like special ones (see `SentencePieceTokenizer.isSpecial`). False for an id out of range.
    func isSpecial(_ id: Int32) -> Bool
}

extension Tokenizer {
    /// Token ids of `text`, parsing special tokens (see `encode(_:addSpecial:parseSpecial:)`).
    public func encode(_ text: String, addSpecial: Bool) -> [Int32] {
        encode(text, addSpecial: addSpecial, parseSpecial: true)
    }

    /// Text of `ids` (control tokens omitted, invalid UTF-8 replaced by U+FFFD).
    public func decode(_ ids: [Int32]) -> String {
        String(decoding: decodeBytes(ids, renderSpecial: false), as: UTF8.self)
    }

    public func decode(_ ids: [Int32], renderSpecial: Bool) -> String {
        String(decoding: decodeBytes(ids, renderSpecial: renderSpecial), as: UTF8.self)
    }

    /// Whether `id` is a control token (`<bos>`, `<start_of_turn>`, …).
    public func isControl(_ id: Int32) -> Bool { attributes(of: id).contains(.control) }

    public func isEndOfGeneration(_ id: Int32) -> Bool { endOfGenerationTokens.contains(id) }

    /// A decoder for token-by-token output that never emits part of a UTF-8 character.
    public func makeStreamingDecoder(renderSpecial: Bool = false) -> StreamingDecoder {
        StreamingDecoder(tokenizer: self, renderSpecial: renderSpecial)
    }

    /// The decoder of generated text as vLLM's `skip_special_tokens` asks: true (vLLM's default) drops every
    /// `isSpecial` token; false writes every token's text, control tokens included (`<end_of_turn>`, `<|im_end|>`).
    public func makeStreamingDecoder(skipSpecialTokens: Bool) -> StreamingDecoder {
        StreamingDecoder(tokenizer: self, renderSpecial: !skipSpecialTokens, skipSpecialTokens: skipSpecialTokens)
    }

    /// Text of `ids` as `makeStreamingDecoder(skipSpecialTokens:)` writes it, all at once.
    public func decode(_ ids: [Int32], skipSpecialTokens: Bool) -> String {
        var decoder = makeStreamingDecoder(skipSpecialTokens: skipSpecialTokens)
        var text = ""
        for id in ids { text += decoder.append(id) }
        return text + decoder.finish()
    }
}

/// Decodes tokens one at a time (as a sampler produces them), holding back the bytes of an
/// incomplete UTF-8 character (byte-fallback tokens split characters) until it is complete.
/// The concatenation of everything `append` and `finish` return equals `decode(allIds)`.
public struct StreamingDecoder {
    public let tokenizer: any Tokenizer
    public let renderSpecial: Bool
    /// Tokens the tokenizer calls special (`isSpecial`) contribute nothing (`skip_special_tokens`).
    public let skipSpecialTokens: Bool
    private var pending: [UInt8] = []

    public init(tokenizer: any Tokenizer, renderSpecial: Bool = false, skipSpecialTokens: Bool = false) {
        self.tokenizer = tokenizer
        self.renderSpecial = renderSpecial
        self.skipSpecialTokens = skipSpecialTokens
    }

    /// Bytes held back waiting for the rest of a character.
    public var pendingByteCount: Int { pending.count }

    /// Text completed by `id` (possibly "").
    public mutating func append(_ id: Int32) -> String {
        if skipSpecialTokens && tokenizer.isSpecial(id) { return "" }
        pending += tokenizer.bytes(for: id, renderSpecial: renderSpecial)
        let cut = StreamingDecoder.completePrefixLength(pending)
        guard cut > 0 else { return "" }
        let s = String(decoding: pending[0..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        return s
    }

    /// Whatever is still held back (an incomplete character becomes U+FFFD); resets the decoder.
    public mutating func finish() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Length of the longest prefix of `b` that does not end inside a UTF-8 character which later
    /// bytes could still complete.
    static func completePrefixLength(_ b: [UInt8]) -> Int {
        let n = b.count
        // Look back at most 3 bytes for the lead byte of the last character.
        var i = n - 1
        var continuation = 0
        while i >= 0 && continuation < 3 && b[i] & 0xC0 == 0x80 {
            continuation += 1
            i -= 1
        }
        guard i >= 0 else { return n }        // only continuation bytes: invalid, emit (as U+FFFD)
        let lead = b[i]
        let need: Int
        if lead < 0x80 { need = 1 }
        else if lead & 0xE0 == 0xC0 { need = 2 }
        else if lead & 0xF0 == 0xE0 { need = 3 }
        else if lead & 0xF8 == 0xF0 { need = 4 }
        else { return n }                     // invalid lead byte: cannot be completed
        let have = continuation + 1
        return have < need ? i : n
    }
}

/// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.model`: `llama` → SentencePiece-style,
/// `gpt2` → byte-level BPE). Throws `KvantError` naming the file and key for a missing or malformed
/// vocabulary or an unsupported model.
public func makeTokenizer(from file: GGUFFile) throws -> any Tokenizer {
    let model = try file.string("tokenizer.ggml.model")
    switch model {
    case "llama": return try SentencePieceTokenizer(file: file)
    case "gpt2": return try BPETokenizer(file: file)
    default:
        throw KvantError(.invalidArgument, "\(file.path): tokenizer.ggml.model '\(model)' is not supported (supported: llama, gpt2)")
    }
}

/// Whether llama.cpp adds BOS for this file without building the vocabulary: `tokenizer.ggml.add_bos_token` when
/// present, else llama.cpp's default for the tokenizer (`llama`/SentencePiece: true; `gpt2`/BPE: the default of the
/// `tokenizer.ggml.pre` value, true for llama3 and tekken only; anything else: false).
public func ggufAddsBOS(_ file: GGUFFile) -> Bool {
    if file.metadata["tokenizer.ggml.add_bos_token"] != nil, let b = try? file.bool("tokenizer.ggml.add_bos_token") { return b }
    switch try? file.string("tokenizer.ggml.model") {
    case "llama": return true
    case "gpt2":
        let pre = file.metadata["tokenizer.ggml.pre"] != nil ? try? file.string("tokenizer.ggml.pre") : nil
        return PreTokenizer(name: pre)?.addsBOSByDefault ?? false
    default: return false
    }
}

/// Reads tokens, scores and token types shared by both tokenizer kinds.
func readVocabulary(_ file: GGUFFile) throws -> Vocabulary {
    let texts = try file.rawStringArray("tokenizer.ggml.tokens")
    let n = texts.count
    guard n > 0 else { throw KvantError(.invalidArgument, "\(file.path): metadata 'tokenizer.ggml.tokens' is empty") }
    guard n <= Int(Int32.max) else { throw KvantError(.invalidArgument, "\(file.path): metadata 'tokenizer.ggml.tokens' has \(n) tokens, more than 2^31-1") }
    var scores = [Float](repeating: 0, count: n)
    if file.metadata["tokenizer.ggml.scores"] != nil {
        let s = try file.floatArray("tokenizer.ggml.scores")
        guard s.count >= n else {
            throw KvantError(.invalidArgument, "\(file.path): metadata 'tokenizer.ggml.scores' has \(s.count) entries for \(n) tokens")
        }
        scores = Array(s.prefix(n))
    }
    var attrs = [TokenAttributes](repeating: .normal, count: n)
    if file.metadata["tokenizer.ggml.token_type"] != nil {
        let t = try file.intArray("tokenizer.ggml.token_type")
        guard t.count >= n else {
            throw KvantError(.invalidArgument, "\(file.path): metadata 'tokenizer.ggml.token_type' has \(t.count) entries for \(n) tokens")
        }
        for i in 0..<n { attrs[i] = TokenAttributes(ggufTokenType: t[i]) }
    }
    return Vocabulary(texts: texts, scores: scores, attributes: attrs)
}
