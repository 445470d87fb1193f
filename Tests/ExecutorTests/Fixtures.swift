import Foundation
import Testing

/// Runs a compute-heavy part of a test on a thread of its own and returns its result. All test targets
/// share one process, and Swift concurrency's cooperative pool is as wide as the cores (2 here): a
/// synchronous test computing for seconds on it would starve the daemon tests' actors and NIO tasks.
/// Keep `#expect` outside `body` (issues are recorded through the test's task-local context).
func offPool<T>(_ body: @escaping () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }.start()
    }
}

/// Paths and JSON of the committed fixtures (written by scripts/oracle/llama_goldens.py and tiny_llama.py).
enum Fixtures {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    /// The real model: $KVANT_MODEL, else <repo>/models/gemma-3-270m-q4_k_m.gguf, else /work/models/…; nil when absent.
    static let realModelPath: String? = {
        let env = ProcessInfo.processInfo.environment["KVANT_MODEL"]
        let repo = dir.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("models/gemma-3-270m-q4_k_m.gguf").path
        return [env, repo, "/work/models/gemma-3-270m-q4_k_m.gguf"].compactMap { $0 }
            .first { FileManager.default.fileExists(atPath: $0) }
    }()
    static let noModel: Comment = "real model not found (set KVANT_MODEL or run `make model`)"
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
