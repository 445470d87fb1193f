import Foundation
import Testing

/// Where the tests find real model files (never committed; `make model` fetches them), with the
/// reason a test is skipped when one is missing.
public enum RealModel {
    /// The repository's root (this file is Tests/KvantTestSupport/RealModel.swift).
    public static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The default model (Gemma 3 270M Q4_K_M): `$KVANT_MODEL`, else `<repo>/models/gemma-3-270m-q4_k_m.gguf`,
    /// else `/work/models/gemma-3-270m-q4_k_m.gguf`; nil when none exists.
    public static let path: String? = locate("gemma-3-270m-q4_k_m.gguf", environment: "KVANT_MODEL")

    /// Why a real-model test is skipped.
    public static let skipReason: Comment = "real model not found (set KVANT_MODEL or run `make model`)"

    /// SmolLM2-135M-Instruct Q4_1 (llama, 3 KV heads, ChatML), the chat model of record:
    /// `$KVANT_SMOLLM2_MODEL`, else `<repo>/models/SmolLM2-135M-Instruct.Q4_1.gguf`, else `/work/models/…`.
    public static let smolLM2Path: String? = locate("SmolLM2-135M-Instruct.Q4_1.gguf", environment: "KVANT_SMOLLM2_MODEL")

    /// Why a SmolLM2 test is skipped.
    public static let smolLM2SkipReason: Comment = "SmolLM2 not found (set KVANT_SMOLLM2_MODEL or run `make model-smollm2`)"

    /// True in release builds: compute-heavy tests run only there (`swift test -c release`); test
    /// targets are built in the same configuration as this one.
    public static var isReleaseBuild: Bool {
        #if DEBUG
        return false
        #else
        return true
        #endif
    }

    /// Why a compute-heavy test is skipped in a debug build.
    public static let needsRelease: Comment = "compute-heavy: runs in release builds only (swift test -c release)"

    /// A model file: the environment variable's path if set and present, else `<repo>/models/NAME`, else
    /// `/work/models/NAME`; nil when none exists.
    public static func locate(_ name: String, environment variable: String) -> String? {
        let candidates: [String?] = [ProcessInfo.processInfo.environment[variable],
                          repoRoot.appendingPathComponent("models/\(name)").path,
                          "/work/models/\(name)"]
        return candidates.compactMap { $0 }.first { FileManager.default.fileExists(atPath: $0) }
    }
}
