import Foundation
import Testing
import KvantCore
import ModelFormats
import Tokenizers

private struct BPEGoldens: Decodable {
    struct File: Decodable {
        let file: String; let pre: String; let n_vocab: Int; let n_merges: Int; let bos: Int32; let eos: Int32
        let cases: [GoldenFile.Case]
    }
    let oracle: String
    let files: [File]
}

/// Tiny GPT-2 byte-level BPE vocabularies written by gguf.GGUFWriter, one per pre-tokenizer
/// (llama-bpe = llama3 regex, gpt-2, default chain), against llama.cpp's ids
/// (scripts/oracle/tokenizer_bpe_fixture.py).
@Suite struct BPEGoldenTests {
    private let goldens: BPEGoldens

    init() throws {
        goldens = try TokFixtures.json("tokenizer_bpe_goldens.json", as: BPEGoldens.self)
    }

    @Test(arguments: ["llama-bpe", "gpt-2", "default"])
    func idsMatchLlamaCpp(pre: String) throws {
        let g = try #require(goldens.files.first { $0.pre == pre })
        let file = try GGUFFile(path: TokFixtures.path(g.file))
        let t = try makeTokenizer(from: file)
        #expect(t is BPETokenizer)
        #expect(t.vocabSize == g.n_vocab)
        #expect(t.bos == g.bos && t.eos == g.eos)
        #expect(g.cases.count >= 28)
        for c in g.cases {
            let ids = t.encode(c.text, addSpecial: c.add_special, parseSpecial: c.parse_special)
            #expect(ids == c.ids, "\(pre): \(c.text.debugDescription.prefix(70)) add_special=\(c.add_special) parse_special=\(c.parse_special)")
        }
    }

    @Test(arguments: ["llama-bpe", "gpt-2", "default"])
    func decodeRoundTrip(pre: String) throws {
        let g = try #require(goldens.files.first { $0.pre == pre })
        let t = try makeTokenizer(from: GGUFFile(path: TokFixtures.path(g.file)))
        for c in g.cases where !c.parse_special {
            // llama.cpp's detokenize also "cleans" spaces before punctuation for BPE (clean_spaces);
            // Kvant returns the exact bytes, so compare with the input text instead.
            #expect(t.decode(c.ids) == c.text, "\(pre): \(c.text.debugDescription.prefix(70))")
        }
    }

    @Test func byteLevelPiecesAndSpecials() throws {
        let t = try makeTokenizer(from: GGUFFile(path: TokFixtures.path("tokenizer_bpe_llama-bpe.gguf")))
        // token 32 is byte 0x20 → "Ġ" (U+0120) in GPT-2's mapping; token 10 is "\n" → "Ċ"
        #expect(t.piece(for: 32) == "Ġ")
        #expect(t.piece(for: 10) == "Ċ")
        #expect(t.bytes(for: 32, renderSpecial: false) == [0x20])
        #expect(t.piece(for: 65) == "A")
        let bos = try #require(t.bos)
        #expect(t.piece(for: bos) == "<|begin_of_text|>" && t.isControl(bos))
        #expect(t.isEndOfGeneration(t.eos!))
        #expect(t.endOfGenerationTokens.contains(Int32(t.vocabSize - 2)))   // <|eot_id|> by text, as llama.cpp
        #expect(t.encode("<tool>", addSpecial: false, parseSpecial: false) == [Int32(t.vocabSize - 1)])
    }
}

@Suite struct TokenizerConcurrencyAndStreamingTests {
    /// Byte-level BPE splits "😀" into four one-byte tokens; the streaming decoder holds them back.
    @Test func bpeStreamingOverByteTokens() throws {
        let t = try makeTokenizer(from: GGUFFile(path: TokFixtures.path("tokenizer_bpe_gpt-2.gguf")))
        let ids = t.encode("a😀", addSpecial: false)
        #expect(ids.count == 5)
        #expect(ids.dropFirst().allSatisfy { t.bytes(for: $0, renderSpecial: false).count == 1 })
        var d = t.makeStreamingDecoder()
        #expect(ids.map { d.append($0) } == ["a", "", "", "", "😀"])
        #expect(d.finish() == "")
    }

    /// Encoding is thread-safe: both cores encoding at once give the single-threaded ids.
    @Test func concurrentEncode() throws {
        let t = try makeTokenizer(from: GGUFFile(path: TokFixtures.path("tokenizer_bpe_llama-bpe.gguf")))
        let texts = (0..<64).map { "text \($0): The quick brown fox, it's 12345 — naïve 😀\n" }
        let expected = texts.map { t.encode($0, addSpecial: true) }
        let results = UnsafeMutableBufferPointer<[Int32]>.allocate(capacity: texts.count)
        results.initialize(repeating: [])
        defer { results.deallocate() }
        DispatchQueue.concurrentPerform(iterations: texts.count) { i in
            results[i] = t.encode(texts[i], addSpecial: true)
        }
        #expect(Array(results) == expected)
        if let g = TokFixtures.gemma {
            let ge = texts.map { g.encode($0, addSpecial: true) }
            let gr = UnsafeMutableBufferPointer<[Int32]>.allocate(capacity: texts.count)
            gr.initialize(repeating: [])
            defer { gr.deallocate() }
            DispatchQueue.concurrentPerform(iterations: texts.count) { i in gr[i] = g.encode(texts[i], addSpecial: true) }
            #expect(Array(gr) == ge)
        }
    }
}
