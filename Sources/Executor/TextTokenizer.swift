import Foundation
import KvantCore
import Tokenizers

/// Text → token ids for the evaluation tools, as llama.cpp's tools tokenize a text file
/// (`common_tokenize(ctx, text, add_special = true, parse_special = false)`).
public enum TextTokenizer {
    /// Tokenizes the UTF-8 file at `path` with the model's GGUF tokenizer, BOS first when the model adds one.
    /// - Throws: `KvantError(.notFound)` for a missing file, `.invalidArgument` for a file that is not UTF-8 or
    ///   larger than 64 MiB; tokenizer construction errors.
    public static func tokenize(path: String, model: Model) throws -> [Int32] {
        try tokenize(text: readText(path: path), model: model)
    }

    /// Reads a UTF-8 text file of at most 64 MiB (for perplexity and calibration).
    /// - Throws: `KvantError(.notFound)` for a missing file, `.invalidArgument` for a file that is not
    ///   UTF-8 or larger than 64 MiB, `.permissionDenied` for one that cannot be read; each names the file.
    public static func readText(path: String) throws -> String {
        let data: Data
        switch FileBytes.read(path, maxBytes: 64 << 20) {
        case .bytes(let bytes): data = Data(bytes)
        case .missing: throw KvantError(.notFound, "text file '\(path)' not found")
        case .directory, .notRegular: throw KvantError(.invalidArgument, "text file '\(path)' is not a regular file")
        case .tooLarge(let size): throw KvantError(.invalidArgument, "text file '\(path)' is \(size) bytes; at most 64 MiB")
        case .failed(let reason): throw KvantError(.permissionDenied, "text file '\(path)' cannot be read: \(reason)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw KvantError(.invalidArgument, "text file '\(path)' is not valid UTF-8")
        }
        return text
    }

    /// Tokenizes `text` with the model's GGUF tokenizer (BOS added as the model says; special-token
    /// text not parsed). - Throws: tokenizer construction errors.
    public static func tokenize(text: String, model: Model) throws -> [Int32] {
        let tok = try makeTokenizer(from: model.file)
        return tok.encode(text, addSpecial: true, parseSpecial: false)
    }
}
