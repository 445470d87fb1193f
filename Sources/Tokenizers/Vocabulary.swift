#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KvantCore
import ModelFormats

/// Per-token attributes, as llama.cpp's `llama_token_attr` (src/llama-vocab.h).
public struct TokenAttributes: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let unknown = TokenAttributes(rawValue: 1 << 0)
    public static let unused = TokenAttributes(rawValue: 1 << 1)
    public static let normal = TokenAttributes(rawValue: 1 << 2)
    public static let control = TokenAttributes(rawValue: 1 << 3)
    public static let userDefined = TokenAttributes(rawValue: 1 << 4)
    public static let byte = TokenAttributes(rawValue: 1 << 5)
    public static let normalized = TokenAttributes(rawValue: 1 << 6)
    public static let lstrip = TokenAttributes(rawValue: 1 << 7)
    public static let rstrip = TokenAttributes(rawValue: 1 << 8)
    public static let singleWord = TokenAttributes(rawValue: 1 << 9)

    /// From a GGUF `tokenizer.ggml.token_type` value (llama_token_type: 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte; anything else is undefined = no attribute).
    init(ggufTokenType t: Int) {
        switch t {
        case 1: self = .normal
        case 2: self = .unknown
        case 3: self = .control
        case 4: self = .userDefined
        case 5: self = .unused
        case 6: self = .byte
        default: self = []
        }
    }
}

/// Token texts, scores and attributes with a byte-exact text → id hash table (no `String` hashing:
/// Swift `String` equality is Unicode-canonical, a vocabulary must be matched byte for byte).
final class Vocabulary: @unchecked Sendable {
    let count: Int
    /// All token texts, concatenated; token `i` is `text[starts[i] ..< starts[i + 1]]`.
    private let text: UnsafeMutableBufferPointer<UInt8>
    private let starts: UnsafeMutableBufferPointer<Int>
    let scores: [Float]
    var attributes: [TokenAttributes]
    /// Open addressing, linear probing; -1 = empty.
    private let table: UnsafeMutableBufferPointer<Int32>
    private let mask: Int

    /// `texts` are the raw bytes of each token (empty texts become "[EMPTY_i]" as llama.cpp does).
    /// Later duplicates win, as in llama.cpp's `token_to_id[word] = i`.
    init(texts: [UnsafeRawBufferPointer], scores: [Float], attributes: [TokenAttributes]) {
        count = texts.count
        var total = 0
        var empties: [Int: [UInt8]] = [:]
        for (i, t) in texts.enumerated() {
            if t.isEmpty {
                let e = Array("[EMPTY_\(i)]".utf8)
                empties[i] = e
                total += e.count
            } else {
                total += t.count
            }
        }
        text = .allocate(capacity: max(total, 1))
        starts = .allocate(capacity: count + 1)
        var pos = 0
        for (i, t) in texts.enumerated() {
            starts[i] = pos
            if let e = empties[i] {
                for b in e { text[pos] = b; pos += 1 }
            } else {
                UnsafeMutableRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(text)[pos ..< pos + t.count]).copyMemory(from: t)
                pos += t.count
            }
        }
        starts[count] = pos
        self.scores = scores
        self.attributes = attributes
        var cap = 16
        while cap < count * 2 { cap <<= 1 }
        table = .allocate(capacity: cap)
        table.initialize(repeating: -1)
        mask = cap - 1
        for i in 0..<count {
            let s = starts[i], e = starts[i + 1]
            let key = UnsafeBufferPointer(rebasing: text[s ..< e])
            var slot = Int(truncatingIfNeeded: Vocabulary.hash(key)) & mask
            while true {
                let existing = table[slot]
                if existing < 0 { table[slot] = Int32(i); break }
                if bytesEqual(Int(existing), key) { table[slot] = Int32(i); break }
                slot = (slot + 1) & mask
            }
        }
    }

    deinit {
        text.deallocate()
        starts.deallocate()
        table.deallocate()
    }

    @inline(__always)
    static func hash(_ key: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in key { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h ^ (h >> 29)
    }

    @inline(__always)
    private func bytesEqual(_ id: Int, _ key: UnsafeBufferPointer<UInt8>) -> Bool {
        let s = starts[id], n = starts[id + 1] - s
        guard n == key.count else { return false }
        if n == 0 { return true }
        return memcmp(text.baseAddress! + s, key.baseAddress!, n) == 0
    }

    /// The id whose text is exactly `key`, or nil.
    @inline(__always)
    func id(of key: UnsafeBufferPointer<UInt8>) -> Int32? {
        var slot = Int(truncatingIfNeeded: Vocabulary.hash(key)) & mask
        while true {
            let existing = table[slot]
            if existing < 0 { return nil }
            if bytesEqual(Int(existing), key) { return existing }
            slot = (slot + 1) & mask
        }
    }

    func id(of bytes: [UInt8]) -> Int32? {
        bytes.withUnsafeBufferPointer { id(of: $0) }
    }

    /// Raw bytes of token `id`'s text (valid while the vocabulary lives).
    @inline(__always)
    /// Attributes of `id`; none for an id outside the vocabulary.
    func attributes(of id: Int32) -> TokenAttributes {
        id >= 0 && Int(id) < count ? attributes[Int(id)] : []
    }

    /// The vocabulary entry of `id` as text ("" outside the vocabulary).
    func piece(for id: Int32) -> String {
        guard id >= 0 && Int(id) < count else { return "" }
        return String(decoding: textBytes(Int(id)), as: UTF8.self)
    }

    func textBytes(_ id: Int) -> UnsafeBufferPointer<UInt8> {
        UnsafeBufferPointer(rebasing: text[starts[id] ..< starts[id + 1]])
    }

    func textArray(_ id: Int) -> [UInt8] { Array(textBytes(id)) }
}


/// Special-token ids and flags read from GGUF `tokenizer.ggml.*` keys, with llama.cpp's defaults.
struct SpecialTokens {
    var bos: Int32?
    var eos: Int32?
    var unk: Int32?
    var eot: Int32?
    var pad: Int32?
    var eog: Set<Int32> = []
    var addBOS: Bool
    var addEOS: Bool

    /// Reads `tokenizer.ggml.{bos,eos,unknown,eot,padding}_token_id` (ids out of range are ignored, as
    /// llama.cpp does with a warning) and `add_bos_token` / `add_eos_token`.
    static func read(from file: GGUFFile, count: Int, defaults: SpecialTokens) throws -> SpecialTokens {
        var s = defaults
        func id(_ key: String, _ current: Int32?) throws -> Int32? {
            var cur = current
            if let c = cur, c >= count { cur = nil }
            guard file.metadata[key] != nil else { return cur }
            let v = try file.uint(key)
            return v < count ? Int32(v) : cur
        }
        s.bos = try id("tokenizer.ggml.bos_token_id", s.bos)
        s.eos = try id("tokenizer.ggml.eos_token_id", s.eos)
        s.unk = try id("tokenizer.ggml.unknown_token_id", s.unk)
        s.eot = try id("tokenizer.ggml.eot_token_id", s.eot)
        s.pad = try id("tokenizer.ggml.padding_token_id", s.pad)
        if file.metadata["tokenizer.ggml.add_bos_token"] != nil { s.addBOS = try file.bool("tokenizer.ggml.add_bos_token") }
        if file.metadata["tokenizer.ggml.add_eos_token"] != nil { s.addEOS = try file.bool("tokenizer.ggml.add_eos_token") }
        return s
    }
}

/// Texts llama.cpp (llama_vocab::impl::load) treats as end-of-turn / end-of-generation / FIM tokens;
/// when present and not of control type, llama.cpp forces the control attribute on them.
let llamaCppEOTTexts: [String] = [
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
]
let llamaCppEOGTexts: [String] = [
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
]
let llamaCppFIMTexts: [String] = [
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>",
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>",
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>",
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>",
    "<|file_sep|>",
]

extension Vocabulary {
    /// Applies llama.cpp's text-based special-token detection: EOT/EOG/FIM-looking tokens get the
    /// control attribute; returns the EOG set (eos, eot and the EOG-looking tokens) and the eot id.
    func applyLlamaCppSpecialDetection(_ special: inout SpecialTokens) {
        for t in llamaCppEOTTexts + llamaCppFIMTexts {
            if let i = id(of: Array(t.utf8)) {
                attributes[Int(i)].insert(.control)
                if special.eot == nil && llamaCppEOTTexts.contains(t) { special.eot = i }
            }
        }
        var eog = Set<Int32>()
        for t in llamaCppEOGTexts {
            if let i = id(of: Array(t.utf8)) {
                eog.insert(i)
                attributes[Int(i)].insert(.control)
            }
        }
        if let e = special.eos { eog.insert(e) }
        if let e = special.eot { eog.insert(e) }
        special.eog = eog
    }

    /// Ids of control, user-defined and unknown tokens, longest text first (ties by id), as llama.cpp's
    /// `cache_special_tokens` (which sorts by length; its order among equal lengths is unspecified).
    func specialTokensByLength() -> [Int32] {
        var ids: [Int32] = []
        for i in 0..<count where !attributes[i].isDisjoint(with: [.control, .userDefined, .unknown]) {
            ids.append(Int32(i))
        }
        ids.sort { a, b in
            let la = textBytes(Int(a)).count, lb = textBytes(Int(b)).count
            return la != lb ? la > lb : a < b
        }
        return ids
    }
}
