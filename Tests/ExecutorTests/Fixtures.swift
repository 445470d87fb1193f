import Foundation
import KvantTestSupport
import Testing

/// Paths and JSON of the committed fixtures (written by scripts/oracle/llama_goldens.py and tiny_llama.py).
enum Fixtures {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    /// The real model (KvantTestSupport's one locator); nil when absent.
    static var realModelPath: String? { RealModel.path }
    static var noModel: Comment { RealModel.skipReason }
    /// SmolLM2-135M-Instruct: $KVANT_SMOLLM2_MODEL, else <repo>/models/SmolLM2-135M-Instruct.Q4_1.gguf, else /work/models/…
    static let smolLM2Path: String? = {
        let env = ProcessInfo.processInfo.environment["KVANT_SMOLLM2_MODEL"]
        let repo = dir.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path
        return [env, repo, "/work/models/SmolLM2-135M-Instruct.Q4_1.gguf"].compactMap { $0 }
            .first { FileManager.default.fileExists(atPath: $0) }
    }()
    static let noSmolLM2: Comment = "SmolLM2 model not found (set KVANT_SMOLLM2_MODEL or run `scripts/fetch-model.sh smollm2`)"
    static let needsRelease: Comment = "compute-heavy: runs in release builds only (swift test -c release)"
    static var tinyLlamaPath: String { dir.appendingPathComponent("tiny_llama.gguf").path }

    static func json(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: dir.appendingPathComponent(name))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    /// True in release builds (compute-heavy tests only run there).
    static var isRelease: Bool {
        #if DEBUG
        return false
        #else
        return true
        #endif
    }
}
