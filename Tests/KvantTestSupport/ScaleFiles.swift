import Foundation

/// Writes a vLLM-schema `kv_cache_scales.json` with one scale for every layer of TP rank 0 (`model_type` null, which
/// the loader accepts with a warning) as `name` in a per-process temporary directory `kvant-<tag>-<pid>`.
/// - Returns: the file's path.
public func uniformScaleFile(_ scale: Double, layers: Int = 18, name: String, tag: String) throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kvant-\(tag)-\(getpid())")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let entries = (0..<layers).map { "\"\($0)\": \(scale)" }.joined(separator: ", ")
    let path = dir.appendingPathComponent(name).path
    try #"{"model_type": null, "kv_cache": {"dtype": "int8", "scaling_factor": {"0": {\#(entries)}}}}"#
        .write(toFile: path, atomically: true, encoding: .utf8)
    return path
}
