import Foundation
import KvantTestSupport
import ModelFormats
import Testing
import Tokenizers

/// vLLM's `skip_special_tokens` on the real Gemma 3 vocabulary: which tokens the generated text leaves out, checked
/// against the GGUF's own `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte).
@Suite(.enabled(if: TokFixtures.modelPath != nil, TokFixtures.skipReason))
struct SkipSpecialTokensTests {
    /// Gemma 3's user-defined tokens that Hugging Face's tokenizer counts special (its `boi_token` and `eoi_token`,
    /// and the `[multimodal]` marker): `skip_special_tokens` drops them, as it drops every control token.
    static let specialUserDefined: Set<Int32> = [5, 255_999, 256_000]

    @Test("isSpecial = control + unknown tokens + Gemma's image markers; newline/tab runs and HTML tags stay text")
    func specialSetFromTokenTypes() throws {
        let tokenizer = try #require(TokFixtures.gemma)
        let file = try GGUFFile(path: try #require(TokFixtures.modelPath))
        let types = try file.intArray("tokenizer.ggml.token_type")
        #expect(types.count == tokenizer.vocabSize)
        var userDefinedKept = 0
        for (i, type) in types.enumerated() {
            let id = Int32(i)
            // llama.cpp's text-based detection makes end-of-generation-looking tokens control (Gemma's user-defined
            // `</s>`): generation ends there, and their text is never written either.
            let expected = type == 2 || type == 3 || Self.specialUserDefined.contains(id) || tokenizer.isEndOfGeneration(id)
            if tokenizer.isSpecial(id) != expected {
                Issue.record("token \(id) \(tokenizer.piece(for: id).debugDescription) (token_type \(type)): isSpecial \(!expected)")
            }
            if type == 4 && !expected { userDefinedKept += 1 }
        }
        // The GGUF's 165 user-defined tokens: 3 markers, 70 HTML tags (`</s>` an end of generation) and 92 runs of
        // newlines or tabs.
        #expect(types.filter { $0 == 4 }.count == 165)
        #expect(userDefinedKept == 161)
        #expect(tokenizer.isEndOfGeneration(212) && tokenizer.piece(for: 212) == "</s>")
        #expect(tokenizer.piece(for: 255_999) == "<start_of_image>" && tokenizer.piece(for: 256_000) == "<end_of_image>")
        #expect(!tokenizer.isSpecial(168) && tokenizer.piece(for: 168) == "<table>")
    }

    @Test("decoding with skip_special_tokens: markers and control tokens leave no text; streamed == whole; false keeps all")
    func decodeSkipsSpecialTokens() throws {
        let tokenizer = try #require(TokFixtures.gemma)
        let text = "Look:<start_of_image> a cat<end_of_image>\n\n<table><td>x</td></table><start_of_turn>model\nHi<end_of_turn>"
        let ids = tokenizer.encode(text, addSpecial: false, parseSpecial: true)
        for special in [255_999, 256_000, 105, 106] as [Int32] { #expect(ids.contains(special), "\(ids)") }
        #expect(tokenizer.decode(ids, skipSpecialTokens: true) == "Look: a cat\n\n<table><td>x</td></table>model\nHi")
        #expect(tokenizer.decode(ids, skipSpecialTokens: false) == text)
        // Before skip_special_tokens the plain decode left the user-defined markers in (llama.cpp's token_to_piece).
        #expect(tokenizer.decode(ids).contains("<start_of_image>"))
        // Token by token (as generation streams it) gives the same text.
        var decoder = tokenizer.makeStreamingDecoder(skipSpecialTokens: true)
        var streamed = ""
        for id in ids { streamed += decoder.append(id) }
        streamed += decoder.finish()
        #expect(streamed == tokenizer.decode(ids, skipSpecialTokens: true))
    }

    @Test("SmolLM2 (byte-level BPE): control tokens are special; its GGUF has no user-defined tokens",
          .enabled(if: TokFixtures.smolLM2Path != nil, TokFixtures.smolLM2SkipReason))
    func bpeSpecials() throws {
        let file = try GGUFFile(path: try #require(TokFixtures.smolLM2Path))
        let tokenizer = try makeTokenizer(from: file)
        let types = try file.intArray("tokenizer.ggml.token_type")
        for (i, type) in types.enumerated() where tokenizer.isSpecial(Int32(i)) != (type == 2 || type == 3) {
            Issue.record("token \(i) (token_type \(type)): isSpecial \(tokenizer.isSpecial(Int32(i)))")
        }
        let ids = tokenizer.encode("<|im_start|>assistant\nHello<|im_end|>", addSpecial: false, parseSpecial: true)
        #expect(tokenizer.decode(ids, skipSpecialTokens: true) == "assistant\nHello")
        #expect(tokenizer.decode(ids, skipSpecialTokens: false) == "<|im_start|>assistant\nHello<|im_end|>")
    }
}
