import Foundation
import KvantTestSupport
import Testing
import ModelFormats
import Tokenizers

enum TokFixtures {
    static func path(_ name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/\(name)").path
    }

    static func json<T: Decodable>(_ name: String, as: T.Type) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(contentsOf: URL(fileURLWithPath: path(name))))
    }

    /// The real model (KvantTestSupport's one locator); nil when absent (tests are then skipped with a reason).
    static var modelPath: String? { RealModel.path }

    static var skipReason: Comment { RealModel.skipReason }

    /// SmolLM2-135M-Instruct: $KVANT_SMOLLM2_MODEL, else <repo>/models/SmolLM2-135M-Instruct.Q4_1.gguf, else
    /// /work/models/…; nil when none exists (its tests are then skipped with `smolLM2SkipReason`).
    static let smolLM2Path: String? = {
        let env = ProcessInfo.processInfo.environment["KVANT_SMOLLM2_MODEL"]
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path
        return [env, repo, "/work/models/SmolLM2-135M-Instruct.Q4_1.gguf"].compactMap { $0 }
            .first { FileManager.default.fileExists(atPath: $0) }
    }()

    static let smolLM2SkipReason: Comment = "SmolLM2 model not found (set KVANT_SMOLLM2_MODEL or run `scripts/fetch-model.sh smollm2`)"

    static func realModelPath() -> String? { modelPath }

    /// The Gemma 3 tokenizer, loaded once for all tests.
    static let gemma: (any Tokenizer)? = {
        guard let p = realModelPath() else { return nil }
        do { return try makeTokenizer(from: GGUFFile(path: p)) } catch {
            print("cannot load tokenizer from \(p): \(error)")
            return nil
        }
    }()
}

struct GoldenFile: Decodable {
    struct Case: Decodable {
        let text: String
        let add_special: Bool
        let parse_special: Bool
        let ids: [Int32]
        let detokenized_hex: String
    }
    let oracle: String
    let n_vocab: Int
    let bos: Int32
    let eos: Int32
    let cases: [Case]
}

func hexBytes(_ s: String) -> [UInt8] {
    var out: [UInt8] = []
    var i = s.startIndex
    while i < s.endIndex {
        let j = s.index(i, offsetBy: 2)
        out.append(UInt8(s[i..<j], radix: 16)!)
        i = j
    }
    return out
}
