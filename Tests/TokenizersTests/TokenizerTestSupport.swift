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

    /// SmolLM2-135M-Instruct (KvantTestSupport's locator); nil when absent.
    static var smolLM2Path: String? { RealModel.smolLM2Path }
    static var smolLM2SkipReason: Comment { RealModel.smolLM2SkipReason }

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
