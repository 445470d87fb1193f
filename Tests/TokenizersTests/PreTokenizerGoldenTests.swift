import Foundation
import Testing
import KvantCore
import ModelFormats
import Tokenizers

private struct IDCase: Decodable {
    let text: String
    let add_special: Bool
    let parse_special: Bool
    let ids: [Int32]
}

private struct PreGoldens: Decodable {
    struct Input: Decodable { let text: String; let add_special: Bool; let parse_special: Bool }
    /// `ids[k]`: llama.cpp's ids of `strings[k]` with this file's vocabulary.
    struct File: Decodable { let file: String; let pre: String; let n_vocab: Int; let ids: [[Int32]] }
    let oracle: String
    let strings: [Input]
    let files: [File]

    func cases(_ f: File) -> [IDCase] {
        zip(strings, f.ids).map { IDCase(text: $0.text, add_special: $0.add_special, parse_special: $0.parse_special, ids: $1) }
    }
}

/// Every regex family of llama.cpp's `tokenizer.ggml.pre` table that Kvant implements, each on a tiny byte-level BPE
/// vocabulary carrying that value, against llama.cpp's own `llama-tokenize` ids
/// (scripts/oracle/tokenizer_pre_goldens.py; its merges cross word boundaries, so a boundary placed differently
/// changes the ids).
@Suite struct PreTokenizerGoldenTests {
    private static let goldens: PreGoldens? = try? TokFixtures.json("tokenizer_pre_goldens.json", as: PreGoldens.self)
    static let families = ["default", "gpt-2", "llama-bpe", "dbrx", "smollm", "qwen2", "qwen35", "falcon", "deepseek-llm",
                           "deepseek-coder", "gpt-4o", "tekken", "bloom", "viking"]

    @Test(arguments: families)
    func idsMatchLlamaCpp(pre: String) throws {
        let all = try #require(Self.goldens)
        let g = try #require(all.files.first { $0.pre == pre }, "no goldens for \(pre)")
        let t = try makeTokenizer(from: GGUFFile(path: TokFixtures.path(g.file)))
        #expect(t is BPETokenizer)
        #expect(t.vocabSize == g.n_vocab)
        #expect(g.ids.count == all.strings.count && g.ids.count >= 100)
        var mismatches = 0
        for c in all.cases(g) {
            let ids = t.encode(c.text, addSpecial: c.add_special, parseSpecial: c.parse_special)
            if ids != c.ids { mismatches += 1 }
            #expect(ids == c.ids, "\(pre): \(c.text.debugDescription.prefix(80)) add_special=\(c.add_special) parse_special=\(c.parse_special)")
        }
        #expect(mismatches == 0)
    }

    @Test(arguments: families)
    func decodeRoundTrip(pre: String) throws {
        let all = try #require(Self.goldens)
        let g = try #require(all.files.first { $0.pre == pre })
        let t = try makeTokenizer(from: GGUFFile(path: TokFixtures.path(g.file)))
        for c in all.cases(g) where !c.parse_special {
            // compared as bytes: String equality would accept a canonically equivalent text
            #expect(Array(t.decode(t.encode(c.text, addSpecial: false, parseSpecial: false)).utf8) == Array(c.text.utf8),
                    "\(pre): \(c.text.debugDescription.prefix(80))")
        }
    }

    /// llama.cpp's default of add_bos per value (the fixtures have no add_bos_token key): true for llama3 and tekken.
    @Test func addBOSDefaultFollowsLlamaCpp() throws {
        let all = try #require(Self.goldens)
        for pre in Self.families {
            let g = try #require(all.files.first { $0.pre == pre })
            let t = try makeTokenizer(from: GGUFFile(path: TokFixtures.path(g.file)))
            #expect(t.addsBOS == ["llama-bpe", "tekken"].contains(pre), "\(pre)")
            let withSpecial = try #require(all.cases(g).first { $0.text == "Hello world" && $0.add_special })
            #expect((withSpecial.ids.first == t.bos) == t.addsBOS, "\(pre)")
        }
    }

    /// The goldens tell the families apart: every two of them give different ids for some string.
    @Test func goldensDiscriminateBetweenFamilies() throws {
        let files = try #require(Self.goldens?.files)
        for i in files.indices {
            for j in files.indices where j > i {
                let differ = zip(files[i].ids, files[j].ids).contains { $0 != $1 }
                #expect(differ, "\(files[i].pre) and \(files[j].pre) give the same ids on every golden string")
            }
        }
    }

    /// Aliases map to the family llama.cpp gives them; an unknown value is refused by name.
    @Test func supportedNamesFollowLlamaCppTable() {
        let names = Set(BPETokenizer.supportedPreTokenizers)
        for n in ["smollm", "starcoder", "qwen2", "deepseek-r1-qwen", "deepseek-llm", "deepseek-coder", "falcon", "gpt-4o",
                  "llama4", "gpt-2", "llama-bpe", "llama3", "default", "command-r", "stablelm2", "tekken", "bloom", "mpt", "olmo"] {
            #expect(names.contains(n), "\(n)")
        }
        for n in ["klingon", "chatglm-bpe", "glm4", "roberta-bpe", "jina-v1-en", "gemma4", "kimi-k2", ""] {
            #expect(!names.contains(n), "\(n)")
        }
    }
}

/// SmolLM2-135M-Instruct (pre-tokenizer `smollm`, 49 152 tokens, ChatML specials) against llama.cpp's
/// `llama-tokenize` (scripts/oracle/tokenizer_pre_goldens.py).
@Suite(.enabled(if: TokFixtures.smolLM2Path != nil, TokFixtures.smolLM2SkipReason))
struct SmolLM2TokenizerTests {
    private struct Goldens: Decodable { let oracle: String; let n_vocab: Int; let cases: [IDCase] }

    private static let tokenizer: (any Tokenizer)? = TokFixtures.smolLM2Path.flatMap { try? makeTokenizer(from: GGUFFile(path: $0)) }

    @Test func vocabularyAndSpecials() throws {
        let t = try #require(Self.tokenizer)
        #expect(t is BPETokenizer)
        #expect(t.vocabSize == 49152)
        #expect(t.bos == 1 && t.eos == 2)
        #expect(!t.addsBOS)
        #expect(t.piece(for: 1) == "<|im_start|>" && t.piece(for: 2) == "<|im_end|>" && t.piece(for: 0) == "<|endoftext|>")
        #expect(t.isControl(1) && t.isControl(2))
        // llama.cpp's EOG set for SmolLM2: <|im_end|> (EOS) and <|endoftext|> (by text); not <|im_start|> (README, Models).
        #expect(t.endOfGenerationTokens == [0, 2])
        #expect(t.encode("<|im_start|>user", addSpecial: true).first == 1)
    }

    @Test func idsMatchLlamaCpp() throws {
        let t = try #require(Self.tokenizer)
        let g = try TokFixtures.json("tokenizer_smollm2_goldens.json", as: Goldens.self)
        #expect(g.n_vocab == t.vocabSize)
        #expect(Set(g.cases.map(\.text)).count >= 30)
        for c in g.cases {
            let ids = t.encode(c.text, addSpecial: c.add_special, parseSpecial: c.parse_special)
            #expect(ids == c.ids, "\(c.text.debugDescription.prefix(80)) add_special=\(c.add_special) parse_special=\(c.parse_special)")
        }
    }

    /// decode(encode(s)) == s for every golden string; with specials parsed, rendering them gives the text back.
    @Test func decodeRoundTrip() throws {
        let t = try #require(Self.tokenizer)
        let g = try TokFixtures.json("tokenizer_smollm2_goldens.json", as: Goldens.self)
        for c in g.cases {
            // compared as bytes: String equality would accept a canonically equivalent text
            #expect(Array(t.decode(t.encode(c.text, addSpecial: false, parseSpecial: false)).utf8) == Array(c.text.utf8),
                    "\(c.text.debugDescription.prefix(80))")
            #expect(Array(t.decode(c.ids, renderSpecial: true).utf8) == Array(c.text.utf8), "\(c.text.debugDescription.prefix(80))")
        }
    }
}
