import Foundation
import Testing
import ModelFormats
import Tokenizers

/// Load and encode speed of the Gemma 3 tokenizer (262 144 tokens). Bounds are asserted in release
/// builds only (debug Swift is 10-50x slower); the measured times are printed.
@Suite(.enabled(if: TokFixtures.modelPath != nil, TokFixtures.skipReason))
struct TokenizerPerformanceTests {
    private func seconds(_ body: () throws -> Void) rethrows -> Double {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try body()
        return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }

    @Test func loadAndEncodeSpeed() throws {
        guard let path = TokFixtures.realModelPath() else { return }
        var file: GGUFFile?
        var tok: (any Tokenizer)?
        let tOpen = try seconds { file = try GGUFFile(path: path) }
        let tBuild = try seconds { tok = try makeTokenizer(from: file!) }
        let t = try #require(tok)
        // ~35 KB of English text (the GPL-3 licence text if present, else a generated mix)
        let gpl = "/usr/share/common-licenses/GPL-3"
        let text = (try? String(contentsOfFile: gpl, encoding: .utf8))
            ?? String(repeating: "The quick brown fox jumps over the lazy dog. 1234 café 中文 😀\n", count: 600)
        var ids: [Int32] = []
        let tEncode = seconds { ids = t.encode(text, addSpecial: true) }
        let bytesPerSecond = Double(text.utf8.count) / tEncode
        print("tokenizer perf: GGUFFile open \(String(format: "%.3f", tOpen)) s, tokenizer build \(String(format: "%.3f", tBuild)) s, encode \(text.utf8.count) bytes -> \(ids.count) tokens in \(String(format: "%.4f", tEncode)) s (\(String(format: "%.1f", bytesPerSecond / 1e6)) MB/s)")
        #expect(t.decode(ids) == text)
        #if !DEBUG
        #expect(tOpen + tBuild < 1.0, "loading must take well under a second in release")
        #expect(bytesPerSecond > 1e6, "encode should exceed 1 MB/s in release")
        #endif
    }
}
