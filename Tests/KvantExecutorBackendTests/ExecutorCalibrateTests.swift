import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantExecutorBackend
import KvantTestSupport
import Testing

/// Issue 5: `calibrate` through the daemon's real adapter (`ExecutorBackend`) on the real model:
/// bad inputs give the right `KvantError` reason with a message naming the file, and nothing is
/// written when a run fails or is cancelled.
@Suite(.serialized, .enabled(if: RealModel.path != nil, RealModel.skipReason))
struct ExecutorCalibrateTests {
    static var modelPath: String? { RealModel.path }

    static let loaded: (any LoadedModel)? = {
        guard let path = modelPath else { return nil }
        let req = ModelLoadRequest(path: path, kvCacheDType: .fp16, quantizationParamPath: nil, kvCacheBytes: 16 << 20,
                                   blockSize: 16, maxModelLen: 2048, threads: 2)
        return try? ExecutorBackend().loadModel(req, progress: { _ in })
    }()

    let dir: String
    init() throws { dir = try makeTempDir("calib") }

    func run(text: String?, output: String, cancelled: Bool = false, perHead: Bool = false,
             numTokens: Int = 64, separateKV: Bool = true) throws -> CalibrateResult {
        let model = try #require(Self.loaded)
        let control = OperationControl(isCancelled: { cancelled }, progress: { _, _ in })
        return try model.calibrate(CalibrationRequest(textPath: text, numTokens: numTokens, perHead: perHead, tpSize: 1,
                                                      percentile: 100, separateKV: separateKV, outputPath: output),
                                    control: control)
    }

    func error(_ body: () throws -> Void) -> KvantError? {
        do { try body(); return nil } catch let e as KvantError { return e } catch { return nil }
    }

    /// Files in the test directory (a failed run must leave no partial file behind).
    func files() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() }

    @Test("missing text file: not_found naming the file")
    func missingText() {
        let text = dir + "/no-such-text.txt"
        let e = error { _ = try run(text: text, output: dir + "/out.json") }
        #expect(e?.reason == .notFound)
        #expect(e?.message.contains(text) == true, "\(String(describing: e))")
        #expect(files().isEmpty)
    }

    @Test("empty text file: invalid_argument naming the file and the token count")
    func emptyText() throws {
        let text = dir + "/empty.txt"
        _ = FileManager.default.createFile(atPath: text, contents: Data())
        let e = error { _ = try run(text: text, output: dir + "/out.json") }
        #expect(e?.reason == .invalidArgument)
        #expect(e?.message.contains(text) == true && e?.message.contains("tokens") == true, "\(String(describing: e))")
        #expect(files() == ["empty.txt"])
    }

    @Test("num_tokens below 16 names num_tokens; a text shorter than num_tokens is used whole, with a warning")
    func tokenCounts() throws {
        let e = error { _ = try run(text: nil, output: dir + "/out.json", numTokens: 1) }
        #expect(e?.reason == .invalidArgument)
        #expect(e?.message == "calibrate: num_tokens 1 is too few; at least 16 are needed", "\(String(describing: e))")
        let text = dir + "/short.txt"
        _ = FileManager.default.createFile(atPath: text, contents: Data(String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 8).utf8))
        let r = try run(text: text, output: dir + "/short.json", numTokens: 4096)
        #expect(r.tokens < 200)
        #expect(r.scales.warnings.contains("calibrated on all \(r.tokens) tokens of '\(text)', fewer than num_tokens 4096"), "\(r.scales.warnings)")
    }

    @Test("unwritable output directory: permission_denied naming the output, before any compute")
    func unwritableOutput() throws {
        // A regular file where the directory should be: not writable even for root.
        let blocker = dir + "/not-a-dir"
        _ = FileManager.default.createFile(atPath: blocker, contents: Data("x".utf8))
        let output = blocker + "/kv_cache_scales.json"
        let e = error { _ = try run(text: nil, output: output) }
        #expect(e?.reason == .permissionDenied)
        #expect(e?.message.contains(output) == true, "\(String(describing: e))")
        if geteuid() != 0 {
            let ro = dir + "/ro"
            try FileManager.default.createDirectory(atPath: ro, withIntermediateDirectories: false)
            chmod(ro, 0o555)
            let e2 = error { _ = try run(text: nil, output: ro + "/out.json") }
            #expect(e2?.reason == .permissionDenied && e2?.message.contains(ro + "/out.json") == true)
        }
    }

    @Test("output is an existing directory: invalid_argument 'is a directory' before any compute; nothing written")
    func outputIsDirectory() throws {
        let target = dir + "/scales"
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
        var progressCalls = 0
        let model = try #require(Self.loaded)
        let control = OperationControl(isCancelled: { false }, progress: { _, _ in progressCalls += 1 })
        let e = error {
            _ = try model.calibrate(CalibrationRequest(textPath: nil, numTokens: 64, perHead: false, tpSize: 1,
                                                       percentile: 100, outputPath: target), control: control)
        }
        #expect(e?.reason == .invalidArgument)
        #expect(e?.message.contains("\(target) is a directory") == true, "\(String(describing: e))")
        #expect(progressCalls == 0)
        #expect(files() == ["scales"])
    }

    @Test("issue 11: a symlink planted at the old temporary name is never written through; the output is a regular file")
    func plantedSymlinkIgnored() throws {
        let victim = dir + "/victim.txt"
        _ = FileManager.default.createFile(atPath: victim, contents: Data("precious".utf8))
        let output = dir + "/kv_cache_scales.json"
        // The name the old writer used for its temporary file, and a symlink at the output itself.
        try FileManager.default.createSymbolicLink(atPath: output + ".partial-\(getpid())", withDestinationPath: victim)
        try FileManager.default.createSymbolicLink(atPath: output, withDestinationPath: victim)
        let r = try run(text: nil, output: output)
        #expect(r.tokens >= 16)
        #expect(String(decoding: FileManager.default.contents(atPath: victim) ?? Data(), as: UTF8.self) == "precious")
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: output)) == nil)
        let written = try String(contentsOfFile: output, encoding: .utf8)
        #expect(written.contains("\"scaling_factor\""))
    }

    @Test("cancelled run: cancelled naming the output, and no file (nor partial file) written")
    func cancelledWritesNothing() throws {
        let output = dir + "/kv_cache_scales.json"
        let e = error { _ = try run(text: nil, output: output, cancelled: true) }
        #expect(e?.reason == .cancelled)
        #expect(e?.message.contains(output) == true, "\(String(describing: e))")
        #expect(files().isEmpty, "left behind: \(files())")
    }

    @Test("a good run writes a file that loads back with reload-scales' rules; the report matches it")
    func goodRun() throws {
        let output = dir + "/kv_cache_scales.json"
        let r = try run(text: nil, output: output, perHead: true)
        #expect(files() == ["kv_cache_scales.json"])
        #expect(r.output == output && r.tokens == 64)
        let model = try #require(Self.loaded)
        let checked = try ExecutorBackend().validateScales(path: output, for: model)
        #expect(checked.perHead && checked.layers == 18)
        // The loaded model runs fp16: the file is checked against the model only, and the report says so.
        #expect(checked.warnings == ["kv_cache_dtype fp16 uses no scale file; checked against the model only (it applies after set-kv-dtype int8_pertensor_perhead)"])
        #expect(checked.sha256 == r.scales.sha256 && checked.min == r.scales.min && checked.max == r.scales.max)
        #expect(checked.min > 0 && checked.max < 10)
        // Separate K and V scales (percentile 100 = plain max: amax_K / 127 and amax_V / 127) beside the shared one.
        let k = try #require(checked.layerKeyScales), v = try #require(checked.layerValueScales)
        let shared = try #require(checked.layerScales)
        #expect(k.count == 18 && v.count == 18 && shared.count == 18)
        for l in 0..<18 { #expect(shared[l][0] == max(k[l][0], v[l][0]), "layer \(l): shared = max(K, V) for plain max") }
        #expect(r.scales.layerKeyScales == k && r.scales.layerValueScales == v)
        let text = try String(contentsOfFile: output, encoding: .utf8)
        #expect(text.contains("\"k_scaling_factor\"") && text.contains("\"v_scaling_factor\""))

        // separate_kv false: a plain vLLM file.
        let plain = dir + "/vllm.json"
        let p = try run(text: nil, output: plain, separateKV: false)
        #expect(p.scales.layerKeyScales == nil)
        let ptext = try String(contentsOfFile: plain, encoding: .utf8)
        #expect(!ptext.contains("k_scaling_factor") && ptext.contains("\"scaling_factor\""))
    }
}
