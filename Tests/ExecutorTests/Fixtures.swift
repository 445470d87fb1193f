import Foundation
import KvantTestSupport
import Testing

/// Paths and JSON of the committed fixtures (written by scripts/oracle/llama_goldens.py and tiny_llama.py).
enum Fixtures {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    /// The real model (KvantTestSupport's one locator); nil when absent.
    static var realModelPath: String? { RealModel.path }
    static var noModel: Comment { RealModel.skipReason }
    /// SmolLM2-135M-Instruct (KvantTestSupport's locator); nil when absent.
    static var smolLM2Path: String? { RealModel.smolLM2Path }
    static var noSmolLM2: Comment { RealModel.smolLM2SkipReason }
    static let needsRelease: Comment = RealModel.needsRelease
    static var tinyLlamaPath: String { dir.appendingPathComponent("tiny_llama.gguf").path }

    static func json(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: dir.appendingPathComponent(name))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    /// True in release builds (compute-heavy tests only run there).
    static var isRelease: Bool { RealModel.isReleaseBuild }
}
