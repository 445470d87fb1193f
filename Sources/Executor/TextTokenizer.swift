import Foundation
import KvantCore

/// Text → token ids for the evaluation tools. Wired to the `Tokenizers` target once it is available.
public enum TextTokenizer {
    /// Tokenizes the file at `path` with the model's GGUF tokenizer, BOS first when the model adds one.
    /// - Throws: `KvantError(.unavailable)` until the tokenizer is wired in; file errors.
    public static func tokenize(path: String, model: Model) throws -> [Int32] {
        throw KvantError(.unavailable, "text tokenization is not wired in yet; pass --tokens-json with llama.cpp's tokens")
    }
}
