import Foundation
import Testing
import KvantCore
import ModelFormats
import Tokenizers

/// Minimal GGUF v3 writer for tokenizer metadata (no tensors).
private struct MetaWriter {
    var kvs: [[UInt8]] = []
    private static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    private static func str(_ s: String) -> [UInt8] { le(UInt64(s.utf8.count)) + Array(s.utf8) }
    mutating func string(_ k: String, _ v: String) { kvs.append(Self.str(k) + Self.le(UInt32(8)) + Self.str(v)) }
    mutating func u32(_ k: String, _ v: UInt32) { kvs.append(Self.str(k) + Self.le(UInt32(4)) + Self.le(v)) }
    mutating func strings(_ k: String, _ v: [String]) {
        kvs.append(Self.str(k) + Self.le(UInt32(9)) + Self.le(UInt32(8)) + Self.le(UInt64(v.count)) + v.flatMap(Self.str))
    }
    mutating func floats(_ k: String, _ v: [Float]) {
        kvs.append(Self.str(k) + Self.le(UInt32(9)) + Self.le(UInt32(6)) + Self.le(UInt64(v.count)) + v.flatMap { Self.le($0.bitPattern) })
    }
    mutating func int32s(_ k: String, _ v: [Int32]) {
        kvs.append(Self.str(k) + Self.le(UInt32(9)) + Self.le(UInt32(5)) + Self.le(UInt64(v.count)) + v.flatMap { Self.le($0) })
    }
    func write(_ name: String) -> String {
        var b = Array("GGUF".utf8) + Self.le(UInt32(3)) + Self.le(UInt64(0)) + Self.le(UInt64(kvs.count))
        for kv in kvs { b += kv }
        let dir = NSTemporaryDirectory() + "kvant-tokenizer-tests-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let p = dir + "/" + UUID().uuidString + "-" + name
        _ = FileManager.default.createFile(atPath: p, contents: Data(b))
        return p
    }
}

private func error(_ path: String) -> KvantError? {
    do { _ = try makeTokenizer(from: GGUFFile(path: path)); return nil } catch let e as KvantError { return e } catch { return nil }
}

@Suite struct TokenizerErrorTests {
    @Test func missingModelKey() {
        var w = MetaWriter(); w.strings("tokenizer.ggml.tokens", ["a"])
        let p = w.write("nomodel.gguf")
        let e = error(p)
        #expect(e?.reason == .invalidArgument)
        #expect(e?.message == "\(p): metadata key 'tokenizer.ggml.model' is missing")
    }

    @Test func unsupportedModel() {
        var w = MetaWriter(); w.string("tokenizer.ggml.model", "t5"); w.strings("tokenizer.ggml.tokens", ["a"])
        let p = w.write("t5.gguf")
        #expect(error(p)?.message == "\(p): tokenizer.ggml.model 't5' is not supported (supported: llama, gpt2)")
    }

    @Test func missingTokens() {
        var w = MetaWriter(); w.string("tokenizer.ggml.model", "llama")
        let p = w.write("notokens.gguf")
        #expect(error(p)?.message == "\(p): metadata key 'tokenizer.ggml.tokens' is missing")
    }

    @Test func scoresShorterThanVocabulary() {
        var w = MetaWriter(); w.string("tokenizer.ggml.model", "llama")
        w.strings("tokenizer.ggml.tokens", ["a", "b", "c"]); w.floats("tokenizer.ggml.scores", [0, 1])
        let p = w.write("scores.gguf")
        #expect(error(p)?.message == "\(p): metadata 'tokenizer.ggml.scores' has 2 entries for 3 tokens")
    }

    @Test func wrongTypeOfTokens() {
        var w = MetaWriter(); w.string("tokenizer.ggml.model", "llama"); w.floats("tokenizer.ggml.tokens", [1])
        let p = w.write("tokentype.gguf")
        #expect(error(p)?.message == "\(p): metadata key 'tokenizer.ggml.tokens'[0] has type FLOAT32, expected STRING")
    }

    @Test func unsupportedPreTokenizerAndMissingMerges() {
        // unknown to llama.cpp as well; and one llama.cpp knows but whose other vocabulary settings Kvant does not model
        for pre in ["klingon-bpe", "chatglm-bpe"] {
            var w = MetaWriter(); w.string("tokenizer.ggml.model", "gpt2"); w.string("tokenizer.ggml.pre", pre)
            w.strings("tokenizer.ggml.tokens", ["a"])
            let p = w.write("pre.gguf")
            let message = error(p)?.message ?? ""
            #expect(message.hasPrefix("\(p): tokenizer.ggml.pre '\(pre)' is not supported (supported: "), "\(message)")
            // the message lists what is supported
            #expect(message.contains("smollm") && message.contains("qwen2") && message.contains("llama-bpe"))
        }
        var m = MetaWriter(); m.string("tokenizer.ggml.model", "gpt2"); m.strings("tokenizer.ggml.tokens", ["a"])
        let q = m.write("merges.gguf")
        #expect(error(q)?.message == "\(q): metadata key 'tokenizer.ggml.merges' is missing")
    }

    /// A hand-made SentencePiece vocabulary exercising scores, byte fallback and add_space_prefix.
    @Test func smallSentencePieceVocabulary() throws {
        var w = MetaWriter()
        w.string("tokenizer.ggml.model", "llama")
        // ids: 0 <unk>, 1 <s>, 2 </s>, 3 ▁, 4 a, 5 b, 6 ab, 7 ▁ab, 8 <0x63> ('c'), 9 <0xC3>, 10 <0xA9>
        w.strings("tokenizer.ggml.tokens", ["<unk>", "<s>", "</s>", "▁", "a", "b", "ab", "▁ab", "<0x63>", "<0xC3>", "<0xA9>"])
        w.floats("tokenizer.ggml.scores", [0, 0, 0, -1, -2, -2, -1, -0.5, 0, 0, 0])
        w.int32s("tokenizer.ggml.token_type", [2, 3, 3, 1, 1, 1, 1, 1, 6, 6, 6])
        let p = w.write("spm.gguf")
        let t = try makeTokenizer(from: GGUFFile(path: p))
        #expect(t.bos == 1 && t.eos == 2 && t.addsBOS)            // llama.cpp SPM defaults
        // add_space_prefix defaults to true for SPM: " ab" → "▁ab"
        #expect(t.encode("ab", addSpecial: true) == [1, 7])
        // "c" and "é" have no piece: byte fallback <0x63>, <0xC3><0xA9>
        #expect(t.encode("abcé", addSpecial: false) == [7, 8, 9, 10])
        #expect(t.decode([7, 8, 9, 10]) == "abcé")              // the prefix space of the first piece is removed
        #expect(t.decode([1, 7, 8, 9, 10]) == " abcé")          // after BOS it stays (llama_detokenize)
        #expect(t.decode([1, 7], renderSpecial: true) == "<s> ab")
        #expect(t.isControl(1) && t.attributes(of: 0).contains(.unknown) && t.attributes(of: 9).contains(.byte))
        #expect(t.encode("ba", addSpecial: false) == [3, 5, 4])
    }
}
