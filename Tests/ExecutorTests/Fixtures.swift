import Foundation

/// Paths and JSON of the committed fixtures (written by scripts/oracle/llama_goldens.py and tiny_llama.py).
enum Fixtures {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    static let realModelPath = ProcessInfo.processInfo.environment["KVANT_MODEL"] ?? "/work/models/gemma-3-270m-q4_k_m.gguf"
    static var tinyLlamaPath: String { dir.appendingPathComponent("tiny_llama.gguf").path }

    static func json(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: dir.appendingPathComponent(name))
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    /// The real model when present; prints why a test is skipped otherwise.
    static func realModelAvailable(_ test: String) -> Bool {
        if FileManager.default.fileExists(atPath: realModelPath) { return true }
        print("SKIP \(test): model file \(realModelPath) is absent (scripts/fetch-model.sh fetches it)")
        return false
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
