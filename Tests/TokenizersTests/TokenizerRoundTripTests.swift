import Foundation
import Testing
import ModelFormats
import Tokenizers

/// The Gemma 3 tokenizer (262 144 tokens) on a whole text: loads, encodes and decodes it back exactly.
/// Speed is not asserted here (a busy machine would fail it): `kvant-eval tokenize-speed --model M` measures it.
@Suite(.enabled(if: TokFixtures.modelPath != nil, TokFixtures.skipReason))
struct TokenizerRoundTripTests {
    @Test func wholeTextRoundTrip() throws {
        guard let path = TokFixtures.realModelPath() else { return }
        let t = try makeTokenizer(from: GGUFFile(path: path))
        // ~35 KB of English text (the GPL-3 licence text if present, else a generated mix)
        let gpl = "/usr/share/common-licenses/GPL-3"
        let text = (try? String(contentsOfFile: gpl, encoding: .utf8))
            ?? String(repeating: "The quick brown fox jumps over the lazy dog. 1234 café 中文 😀\n", count: 600)
        let ids = t.encode(text, addSpecial: true)
        #expect(ids.count > text.utf8.count / 8)
        #expect(t.decode(ids) == text)
    }
}
