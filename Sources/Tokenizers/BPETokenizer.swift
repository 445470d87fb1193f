import KvantCore
import ModelFormats

/// GPT-2 style byte-level BPE (`tokenizer.ggml.model = gpt2`): GPT-2, LLaMA 3, Qwen, ….
///
/// Follows llama.cpp's `llm_tokenizer_bpe_session` (src/llama-vocab.cpp): special tokens are split out
/// first; each raw fragment is pre-tokenized into words (`PreTokenizer`, chosen by
/// `tokenizer.ggml.pre`), each word's UTF-8 bytes are mapped to GPT-2's printable characters, and
/// adjacent symbols are merged by the rank of the pair in `tokenizer.ggml.merges` (lowest rank first,
/// leftmost on ties). With `ignore_merges` (llama3 and tekken pre-tokenizers) a word that is itself a token
/// is emitted directly. The supported `tokenizer.ggml.pre` values are `PreTokenizer.supportedNames`.
public final class BPETokenizer: Tokenizer, @unchecked Sendable {
    let vocab: Vocabulary
    let special: SpecialTokens
    let preTokenizer: PreTokenizer
    let ignoreMerges: Bool
    let partitioner: SpecialPartitioner
    /// Merge "left right" (bytes, one space between) → rank.
    let ranks: [[UInt8]: Int32]

    /// The `tokenizer.ggml.pre` values Kvant implements (llama.cpp 0.3.36's names), sorted.
    public static var supportedPreTokenizers: [String] { PreTokenizer.supportedNames }

    public var vocabSize: Int { vocab.count }
    public var bos: Int32? { special.bos }
    public var eos: Int32? { special.eos }
    public var addsBOS: Bool { special.addBOS }
    public var endOfGenerationTokens: Set<Int32> { special.eog }

    /// Throws `KvantError` naming the file and key when the vocabulary or merges are missing or
    /// malformed, or `tokenizer.ggml.pre` names a pre-tokenizer Kvant does not implement.
    public init(file: GGUFFile) throws {
        let preName = file.metadata["tokenizer.ggml.pre"] != nil ? try file.string("tokenizer.ggml.pre") : nil
        guard let pre = PreTokenizer(name: preName) else {
            throw KvantError(.invalidArgument, "\(file.path): tokenizer.ggml.pre '\(preName ?? "")' is not supported (supported: \(PreTokenizer.supportedNames.joined(separator: ", ")))")
        }
        preTokenizer = pre
        ignoreMerges = pre.ignoreMerges
        let v = try readVocabulary(file)
        var s = try SpecialTokens.read(from: file, count: v.count,
                                       defaults: SpecialTokens(bos: 11, eos: 11, unk: nil, eot: nil, pad: nil,
                                                               addBOS: pre.addsBOSByDefault, addEOS: false))
        v.applyLlamaCppSpecialDetection(&s)
        vocab = v
        special = s
        let merges = try file.rawStringArray("tokenizer.ggml.merges")
        var r: [[UInt8]: Int32] = [:]
        r.reserveCapacity(merges.count)
        for (i, m) in merges.enumerated() {
            // llama.cpp splits at the first space at index >= 1 and keeps the first rank of a pair
            let bytes = Array(m)
            guard bytes.count > 1, let sp = bytes[1...].firstIndex(of: 0x20) else { continue }
            _ = sp
            if r[bytes] == nil { r[bytes] = Int32(i) }
        }
        ranks = r
        partitioner = SpecialPartitioner(vocabulary: v, ordered: v.specialTokensByLength())
    }

    public func encode(_ text: String, addSpecial: Bool, parseSpecial: Bool) -> [Int32] {
        var output: [Int32] = []
        let utf8 = Array(text.utf8)
        if addSpecial && special.addBOS, let b = special.bos { output.append(b) }
        utf8.withUnsafeBufferPointer { input in
            for f in partitioner.partition(input, vocabulary: vocab, parseSpecial: parseSpecial) {
                switch f {
                case .token(let id): output.append(id)
                case .raw(let s, let e):
                    let fragment = String(decoding: input[s..<e], as: UTF8.self)
                    tokenizeFragment(fragment, &output)
                }
            }
        }
        if addSpecial && special.addEOS, let e = special.eos { output.append(e) }
        return output
    }

    private func tokenizeFragment(_ text: String, _ output: inout [Int32]) {
        let cpts = text.unicodeScalars.map(\.value)
        var start = 0
        for len in preTokenizer.split(cpts) {
            // the word's UTF-8 bytes, each mapped to its GPT-2 character
            var word: [UInt8] = []
            for c in cpts[start ..< start + len] {
                for b in String(Unicode.Scalar(c)!).utf8 { word += ByteLevel.byteToUTF8[Int(b)] }
            }
            start += len
            tokenizeWord(word, &output)
        }
    }

    private struct Symbol { var start: Int; var n: Int; var prev: Int; var next: Int }
    private struct Bigram { var left: Int; var right: Int; var rank: Int32; var text: [UInt8] }

    private func tokenizeWord(_ word: [UInt8], _ output: inout [Int32]) {
        if ignoreMerges, let id = vocab.id(of: word) { output.append(id); return }
        var symbols: [Symbol] = []
        var offset = 0
        while offset < word.count {
            let n = min(utf8Length(word[offset]), word.count - offset)
            let idx = symbols.count
            symbols.append(Symbol(start: offset, n: n, prev: idx - 1, next: offset + n == word.count ? -1 : idx + 1))
            offset += n
        }
        var queue: [Bigram] = []     // small: a word has few symbols; linear selection keeps llama.cpp's order
        func text(_ i: Int) -> ArraySlice<UInt8> { word[symbols[i].start ..< symbols[i].start + symbols[i].n] }
        func addBigram(_ l: Int, _ r: Int) {
            guard l >= 0, r >= 0 else { return }
            let key = Array(text(l)) + [0x20] + Array(text(r))
            guard let rank = ranks[key] else { return }
            queue.append(Bigram(left: l, right: r, rank: rank, text: Array(text(l)) + Array(text(r))))
        }
        for i in 1..<max(symbols.count, 1) { addBigram(i - 1, i) }
        while !queue.isEmpty {
            var best = 0
            for i in 1..<queue.count {
                let a = queue[i], b = queue[best]
                if a.rank < b.rank || (a.rank == b.rank && a.left < b.left) { best = i }
            }
            let bg = queue.remove(at: best)
            let l = symbols[bg.left], r = symbols[bg.right]
            if l.n == 0 || r.n == 0 { continue }
            if Array(text(bg.left)) + Array(text(bg.right)) != bg.text { continue }
            symbols[bg.left].n += r.n
            symbols[bg.right].n = 0
            symbols[bg.left].next = r.next
            if r.next >= 0 { symbols[r.next].prev = bg.left }
            addBigram(symbols[bg.left].prev, bg.left)
            addBigram(bg.left, symbols[bg.left].next)
        }
        for s in symbols where s.n > 0 {
            let piece = Array(word[s.start ..< s.start + s.n])
            if let id = vocab.id(of: piece) {
                output.append(id)
            } else {
                // llama.cpp looks each raw byte of the piece up as a one-byte token
                for b in piece { if let id = vocab.id(of: [b]) { output.append(id) } }
            }
        }
    }

    public func attributes(of id: Int32) -> TokenAttributes { vocab.attributes(of: id) }

    public func piece(for id: Int32) -> String { vocab.piece(for: id) }

    /// Control and unknown tokens. A GGUF converted from a byte-level BPE vocabulary marks Hugging Face's special
    /// added tokens as control (llama.cpp's convert_hf_to_gguf), so its user-defined tokens (Qwen's `<think>`,
    /// `<tool_call>`) are text, as Hugging Face's `skip_special_tokens` keeps them.
    public func isSpecial(_ id: Int32) -> Bool {
        !attributes(of: id).isDisjoint(with: [.control, .unknown])
    }

    /// llama.cpp's `token_to_piece` for BPE: control/unknown → "" (text when `renderSpecial`),
    /// user-defined → text, normal → GPT-2 characters mapped back to bytes, byte → the byte.
    public func bytes(for id: Int32, renderSpecial: Bool) -> [UInt8] {
        guard id >= 0 && Int(id) < vocab.count else { return [] }
        let a = vocab.attributes[Int(id)]
        let t = vocab.textBytes(Int(id))
        if !a.isDisjoint(with: [.control, .unknown]) { return renderSpecial ? Array(t) : [] }
        if a.contains(.userDefined) { return Array(t) }
        if a.contains(.normal) {
            var out: [UInt8] = []
            for s in String(decoding: t, as: UTF8.self).unicodeScalars {
                if let b = ByteLevel.scalarToByte[s.value] {
                    out.append(b)
                } else {
                    out += Array(String(s).utf8)   // not a byte-level character: keep it (llama.cpp marks it [UNK_BYTE])
                }
            }
            return out
        }
        if a.contains(.byte) { return parseByteToken(t).map { [$0] } ?? Array(t) }
        return []
    }

    public func decodeBytes(_ ids: [Int32], renderSpecial: Bool) -> [UInt8] {
        var out: [UInt8] = []
        for id in ids { out += bytes(for: id, renderSpecial: renderSpecial) }
        return out
    }
}
