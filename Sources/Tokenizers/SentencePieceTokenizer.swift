import KvantCore
import ModelFormats

/// SentencePiece-style tokenizer (`tokenizer.ggml.model = llama`): Gemma, LLaMA 1/2, Mistral.
///
/// Follows llama.cpp's `llm_tokenizer_spm` (src/llama-vocab.cpp): special and user-defined tokens are
/// split out first (`tokenizer_st_partition`); each raw fragment gets a leading space if
/// `add_space_prefix` and the previous fragment was special, spaces become "▁" (U+2581); the fragment
/// is split into UTF-8 characters, adjacent symbols are merged greedily by the score of the merged
/// token (highest first, leftmost on ties) while the merge is a token; symbols that are not tokens are
/// emitted as byte-fallback tokens `<0xNN>`.
public final class SentencePieceTokenizer: Tokenizer, @unchecked Sendable {
    let vocab: Vocabulary
    let special: SpecialTokens
    let addSpacePrefix: Bool
    let partitioner: SpecialPartitioner
    /// Byte-fallback token of each byte value (`<0xNN>`, else the one-byte token), or -1.
    let byteTokens: [Int32]
    /// User-defined tokens shaped like special ones (`isSpecial`).
    let specialUserDefined: Set<Int32>

    public var vocabSize: Int { vocab.count }
    public var bos: Int32? { special.bos }
    public var eos: Int32? { special.eos }
    public var addsBOS: Bool { special.addBOS }
    public var endOfGenerationTokens: Set<Int32> { special.eog }
    /// `tokenizer.ggml.add_space_prefix` (llama.cpp default for SPM: true).
    public var addsSpacePrefix: Bool { addSpacePrefix }

    /// Throws `KvantError` naming the file and key when the vocabulary is missing or malformed.
    public init(file: GGUFFile) throws {
        let v = try readVocabulary(file)
        var s = try SpecialTokens.read(from: file, count: v.count,
                                       defaults: SpecialTokens(bos: 1, eos: 2, unk: 0, eot: nil, pad: nil, addBOS: true, addEOS: false))
        v.applyLlamaCppSpecialDetection(&s)
        vocab = v
        special = s
        addSpacePrefix = file.metadata["tokenizer.ggml.add_space_prefix"] != nil
            ? try file.bool("tokenizer.ggml.add_space_prefix") : true
        partitioner = SpecialPartitioner(vocabulary: v, ordered: v.specialTokensByLength())
        let hex = Array("0123456789ABCDEF".utf8)
        var bt = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            let name: [UInt8] = [UInt8(ascii: "<"), UInt8(ascii: "0"), UInt8(ascii: "x"), hex[b >> 4], hex[b & 15], UInt8(ascii: ">")]
            if let id = v.id(of: name) { bt[b] = id } else if let id = v.id(of: [UInt8(b)]) { bt[b] = id }
        }
        byteTokens = bt
        var specials = Set<Int32>()
        for i in 0..<v.count where v.attributes[i].contains(.userDefined) && Self.looksSpecial(Array(v.textBytes(i))) {
            specials.insert(Int32(i))
        }
        specialUserDefined = specials
    }

    /// Control and unknown tokens, and user-defined tokens shaped like special ones: `[name]`, or `<name>` that is
    /// not an HTML tag (`name` without whitespace; an HTML tag is `<x>` or `</x>` with `x` lowercase letters and
    /// digits). A SentencePiece GGUF keeps the piece types of the tokenizer model, where Gemma 3's image markers
    /// `<start_of_image>`, `<end_of_image>` and `[multimodal]` are user-defined although Hugging Face's tokenizer
    /// counts them special (its `skip_special_tokens` drops them); the same vocabulary's user-defined runs of
    /// newlines and tabs and its HTML tags (`<table>`, `</td>`) are text and stay.
    public func isSpecial(_ id: Int32) -> Bool {
        let a = attributes(of: id)
        return !a.isDisjoint(with: [.control, .unknown]) || (a.contains(.userDefined) && specialUserDefined.contains(id))
    }

    static func looksSpecial(_ t: [UInt8]) -> Bool {
        guard t.count >= 3, let first = t.first, let last = t.last else { return false }
        let name = t[1..<(t.count - 1)]
        if name.contains(where: { $0 <= 0x20 }) { return false }
        switch (first, last) {
        case (UInt8(ascii: "["), UInt8(ascii: "]")): return true
        case (UInt8(ascii: "<"), UInt8(ascii: ">")):
            let tag = name.first == UInt8(ascii: "/") ? name.dropFirst() : name[...]
            let isLowerAlnum = { (b: UInt8) in (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) }
            let isHTMLTag = !tag.isEmpty && (tag.first.map { $0 >= 0x61 && $0 <= 0x7A } ?? false) && tag.allSatisfy(isLowerAlnum)
            return !isHTMLTag
        default: return false
        }
    }

    public func encode(_ text: String, addSpecial: Bool, parseSpecial: Bool) -> [Int32] {
        var output: [Int32] = []
        var utf8 = Array(text.utf8)
        output.reserveCapacity(utf8.count / 3 + 2)
        if addSpecial && special.addBOS, let b = special.bos { output.append(b) }
        utf8.withUnsafeMutableBufferPointer { buf in
            let input = UnsafeBufferPointer(buf)
            let fragments = partitioner.partition(input, vocabulary: vocab, parseSpecial: parseSpecial)
            var isPrevSpecial = true
            var scratch: [UInt8] = []
            var session = SPMSession()
            for f in fragments {
                switch f {
                case .token(let id):
                    output.append(id)
                    isPrevSpecial = true
                case .raw(let start, let end):
                    scratch.removeAll(keepingCapacity: true)
                    if addSpacePrefix && isPrevSpecial { scratch += [0xE2, 0x96, 0x81] }
                    for i in start..<end {
                        let b = input[i]
                        if b == 0x20 { scratch += [0xE2, 0x96, 0x81] } else { scratch.append(b) }
                    }
                    scratch.withUnsafeBufferPointer { session.tokenize($0, tokenizer: self, output: &output) }
                    isPrevSpecial = false
                }
            }
        }
        if addSpecial && special.addEOS, let e = special.eos { output.append(e) }
        return output
    }

    public func attributes(of id: Int32) -> TokenAttributes { vocab.attributes(of: id) }

    public func piece(for id: Int32) -> String { vocab.piece(for: id) }

    /// llama.cpp's `token_to_piece` for SPM: control/unknown → "" (text when `renderSpecial`),
    /// user-defined → text, normal → text with "▁" as space, byte → the byte.
    public func bytes(for id: Int32, renderSpecial: Bool) -> [UInt8] {
        guard id >= 0 && Int(id) < vocab.count else { return [] }
        let a = vocab.attributes[Int(id)]
        let t = vocab.textBytes(Int(id))
        if !a.isDisjoint(with: [.control, .unknown]) {
            return renderSpecial ? Array(t) : []
        }
        if a.contains(.userDefined) { return Array(t) }
        if a.contains(.normal) { return unescapeSpaces(t) }
        if a.contains(.byte) { return parseByteToken(t).map { [$0] } ?? Array(t) }
        return []
    }

    /// Bytes of `ids` joined, as llama.cpp's `llama_detokenize(remove_special: false,
    /// unparse_special: renderSpecial)`: with `add_space_prefix`, one leading space is removed from the
    /// piece of the first token only (so text encoded without BOS comes back exactly; after a BOS the
    /// encoder's prefix space stays, as in llama.cpp).
    public func decodeBytes(_ ids: [Int32], renderSpecial: Bool) -> [UInt8] {
        var out: [UInt8] = []
        for (i, id) in ids.enumerated() {
            let b = bytes(for: id, renderSpecial: renderSpecial)
            if i == 0 && addSpacePrefix && b.first == 0x20 { out += b.dropFirst() } else { out += b }
        }
        return out
    }
}

func unescapeSpaces(_ t: UnsafeBufferPointer<UInt8>) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(t.count)
    var i = 0
    while i < t.count {
        if i + 2 < t.count && t[i] == 0xE2 && t[i + 1] == 0x96 && t[i + 2] == 0x81 {
            out.append(0x20)
            i += 3
        } else {
            out.append(t[i])
            i += 1
        }
    }
    return out
}

/// The byte of a `<0xNN>` token text.
func parseByteToken(_ t: UnsafeBufferPointer<UInt8>) -> UInt8? {
    guard t.count == 6, t[0] == UInt8(ascii: "<"), t[1] == UInt8(ascii: "0"), t[2] == UInt8(ascii: "x"),
          t[5] == UInt8(ascii: ">") else { return nil }
    func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }
    guard let h = hex(t[3]), let l = hex(t[4]) else { return nil }
    return h << 4 | l
}

/// Length of the UTF-8 sequence a byte starts, by its high nibble (llama.cpp's `unicode_len_utf8`).
@inline(__always)
func utf8Length(_ b: UInt8) -> Int {
    switch b >> 4 {
    case 0xC, 0xD: return 2
    case 0xE: return 3
    case 0xF: return 4
    default: return 1
    }
}

/// Scratch state of one SPM encode, reused across fragments.
struct SPMSession {
    struct Symbol { var start: Int32; var n: Int32; var prev: Int32; var next: Int32 }
    struct Bigram { var left: Int32; var right: Int32; var score: Float; var size: Int32 }
    var symbols: [Symbol] = []
    var heap: [Bigram] = []

    /// Bigram priority: higher score first, then smaller left index (llama.cpp's llm_bigram_spm::comparator).
    @inline(__always)
    static func before(_ a: Bigram, _ b: Bigram) -> Bool {
        a.score > b.score || (a.score == b.score && a.left < b.left)
    }

    mutating func push(_ x: Bigram) {
        heap.append(x)
        var i = heap.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if SPMSession.before(heap[i], heap[p]) { heap.swapAt(i, p); i = p } else { break }
        }
    }

    mutating func pop() -> Bigram {
        let top = heap[0]
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var i = 0
            let n = heap.count
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < n && SPMSession.before(heap[l], heap[m]) { m = l }
                if r < n && SPMSession.before(heap[r], heap[m]) { m = r }
                if m == i { break }
                heap.swapAt(i, m)
                i = m
            }
        }
        return top
    }

    mutating func tryAddBigram(_ left: Int32, _ right: Int32, _ text: UnsafeBufferPointer<UInt8>, _ v: Vocabulary) {
        guard left >= 0, right >= 0 else { return }
        let l = symbols[Int(left)], r = symbols[Int(right)]
        let size = Int(l.n + r.n)
        let key = UnsafeBufferPointer(rebasing: text[Int(l.start) ..< Int(l.start) + size])
        guard let id = v.id(of: key) else { return }
        push(Bigram(left: left, right: right, score: v.scores[Int(id)], size: Int32(size)))
    }

    mutating func tokenize(_ text: UnsafeBufferPointer<UInt8>, tokenizer t: SentencePieceTokenizer, output: inout [Int32]) {
        let v = t.vocab
        symbols.removeAll(keepingCapacity: true)
        heap.removeAll(keepingCapacity: true)
        var offs = 0
        var index: Int32 = 0
        while offs < text.count {
            let n = min(utf8Length(text[offs]), text.count - offs)
            let start = offs
            offs += n
            symbols.append(Symbol(start: Int32(start), n: Int32(n), prev: index - 1,
                                  next: offs == text.count ? -1 : index + 1))
            index += 1
        }
        if symbols.isEmpty { return }
        for i in 1..<max(symbols.count, 1) { tryAddBigram(Int32(i - 1), Int32(i), text, v) }
        while !heap.isEmpty {
            let b = pop()
            let l = symbols[Int(b.left)], r = symbols[Int(b.right)]
            if l.n == 0 || r.n == 0 || l.n + r.n != b.size { continue }
            symbols[Int(b.left)].n = l.n + r.n
            symbols[Int(b.right)].n = 0
            symbols[Int(b.left)].next = r.next
            if r.next >= 0 { symbols[Int(r.next)].prev = b.left }
            tryAddBigram(symbols[Int(b.left)].prev, b.left, text, v)
            tryAddBigram(b.left, symbols[Int(b.left)].next, text, v)
        }
        var i: Int32 = 0
        while i != -1 {
            let s = symbols[Int(i)]
            let piece = UnsafeBufferPointer(rebasing: text[Int(s.start) ..< Int(s.start + s.n)])
            if let id = v.id(of: piece) {
                output.append(id)
            } else {
                // Merged symbols are always tokens; only single characters fall back to bytes.
                for b in piece {
                    let id = t.byteTokens[Int(b)]
                    if id >= 0 { output.append(id) } else if let u = t.special.unk { output.append(u) }
                }
            }
            i = s.next
        }
    }
}
