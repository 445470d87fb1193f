/// Unicode character classes as llama.cpp's `unicode_cpt_flags` (src/unicode.h) uses them for
/// pre-tokenization: \p{L}, \p{N}, \p{P}, \p{S}, \p{M}, \s. Categories come from Swift's Unicode
/// tables (`Unicode.Scalar.Properties.generalCategory`); whitespace is llama.cpp's fixed set.
struct CharFlags: OptionSet {
    let rawValue: UInt16
    static let undefined = CharFlags(rawValue: 0x0001)
    static let number = CharFlags(rawValue: 0x0002)
    static let letter = CharFlags(rawValue: 0x0004)
    static let separator = CharFlags(rawValue: 0x0008)
    static let accentMark = CharFlags(rawValue: 0x0010)
    static let punctuation = CharFlags(rawValue: 0x0020)
    static let symbol = CharFlags(rawValue: 0x0040)
    static let control = CharFlags(rawValue: 0x0080)
    static let whitespace = CharFlags(rawValue: 0x0100)

    static let categories = CharFlags(rawValue: 0x00FF)

    static func of(_ cp: UInt32) -> CharFlags {
        guard let s = Unicode.Scalar(cp) else { return .undefined }
        var f: CharFlags
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: f = .letter
        case .nonspacingMark, .spacingMark, .enclosingMark: f = .accentMark
        case .decimalNumber, .letterNumber, .otherNumber: f = .number
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation: f = .punctuation
        case .mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol: f = .symbol
        case .spaceSeparator, .lineSeparator, .paragraphSeparator: f = .separator
        case .control, .format, .surrogate, .privateUse: f = .control
        case .unassigned: f = .undefined
        @unknown default: f = .undefined
        }
        switch cp {
        case 0x09...0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
            f.insert(.whitespace)
        default: break
        }
        return f
    }
}

/// The pre-tokenizers (text → words before BPE) of llama.cpp's `llm_tokenizer_bpe` for the
/// `tokenizer.ggml.pre` values Kvant supports, written out by hand instead of with a regex engine
/// (llama.cpp's `unicode_regex_split` and its custom splitters in src/unicode.cpp).
enum PreTokenizer: Equatable {
    /// `gpt-2` (and phi-2, …): 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    case gpt2
    /// `llama3` / `llama-bpe` / …: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    case llama3
    /// `default` (or missing): the chain [\p{P}\$\+<=>\^~\|]+ → gpt2 → \p{N}+ → [0-9][0-9][0-9].
    case `default`

    init?(name: String?) {
        switch name {
        case nil, "default": self = .default
        case "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano":
            self = .llama3
        case "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum":
            self = .gpt2
        default: return nil
        }
    }

    /// Splits `cpts` into words; returns word lengths in code points.
    func split(_ cpts: [UInt32]) -> [Int] {
        let flags = cpts.map(CharFlags.of)
        switch self {
        case .gpt2:
            return PreTokenizer.gpt2(cpts, flags, [cpts.count])
        case .llama3:
            return PreTokenizer.llama3(cpts, flags, [cpts.count])
        case .default:
            var offs = [cpts.count]
            offs = PreTokenizer.runs(cpts, offs) { i in
                let c = cpts[i]
                if c < 128 {
                    // ASCII \p{P} of llama.cpp's collapsed regex, plus $ + < = > ^ ~ |  (not the backtick)
                    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x5E)
                        || c == 0x5F || (c >= 0x7B && c <= 0x7E)
                }
                return !flags[i].contains(.whitespace) && flags[i].intersection(.categories) == .punctuation
            }
            offs = PreTokenizer.gpt2(cpts, flags, offs)
            offs = PreTokenizer.runs(cpts, offs) { i in
                let c = cpts[i]
                if c < 128 { return c >= 0x30 && c <= 0x39 }
                return !flags[i].contains(.whitespace) && flags[i].intersection(.categories) == .number
            }
            offs = PreTokenizer.asciiDigitTriples(cpts, offs)
            return offs
        }
    }

    /// Regex `[class]+` as llama.cpp's std::regex split: matches and the text between them become words.
    static func runs(_ cpts: [UInt32], _ offsets: [Int], _ inClass: (Int) -> Bool) -> [Int] {
        var out: [Int] = []
        var start = 0
        for len in offsets {
            let end = start + len
            var pos = start
            var prev = start
            while pos < end {
                if inClass(pos) {
                    let m = pos
                    while pos < end && inClass(pos) { pos += 1 }
                    if m > prev { out.append(m - prev) }
                    out.append(pos - m)
                    prev = pos
                } else {
                    pos += 1
                }
            }
            if end > prev { out.append(end - prev) }
            start = end
        }
        return out
    }

    /// Regex `[0-9][0-9][0-9]`: leftmost non-overlapping triples of ASCII digits.
    static func asciiDigitTriples(_ cpts: [UInt32], _ offsets: [Int]) -> [Int] {
        func digit(_ c: UInt32) -> Bool { c >= 0x30 && c <= 0x39 }
        var out: [Int] = []
        var start = 0
        for len in offsets {
            let end = start + len
            var pos = start, prev = start
            while pos + 3 <= end {
                if digit(cpts[pos]) && digit(cpts[pos + 1]) && digit(cpts[pos + 2]) {
                    if pos > prev { out.append(pos - prev) }
                    out.append(3)
                    pos += 3
                    prev = pos
                } else {
                    pos += 1
                }
            }
            if end > prev { out.append(end - prev) }
            start = end
        }
        return out
    }

    static func gpt2(_ cpts: [UInt32], _ allFlags: [CharFlags], _ offsets: [Int]) -> [Int] {
        var out: [Int] = []
        out.reserveCapacity(offsets.count)
        var start = 0
        for len in offsets {
            let ini = start, end = start + len
            start = end
            let OOR: UInt32 = 0xFFFF_FFFF
            func cpt(_ p: Int) -> UInt32 { (ini <= p && p < end) ? cpts[p] : OOR }
            func fl(_ p: Int) -> CharFlags { (ini <= p && p < end) ? allFlags[p] : [] }
            var prevEnd = ini
            @discardableResult func add(_ e: Int) -> Int {
                let l = e - prevEnd
                if l > 0 { out.append(l) }
                prevEnd = e
                return l
            }
            var pos = ini
            while pos < end {
                let c = cpt(pos)
                let f = fl(pos)
                if c == 0x27 && pos + 1 < end {
                    let n = cpt(pos + 1)
                    if n == 0x73 || n == 0x74 || n == 0x6D || n == 0x64 { pos += add(pos + 2); continue }
                    if pos + 2 < end {
                        let nn = cpt(pos + 2)
                        if (n == 0x72 && nn == 0x65) || (n == 0x76 && nn == 0x65) || (n == 0x6C && nn == 0x6C) {
                            pos += add(pos + 3); continue
                        }
                    }
                }
                var f2 = c == 0x20 ? fl(pos + 1) : f
                if f2.contains(.letter) {
                    if c == 0x20 { pos += 1 }
                    while f2.contains(.letter) { pos += 1; f2 = fl(pos) }
                    add(pos); continue
                }
                if f2.contains(.number) {
                    if c == 0x20 { pos += 1 }
                    while f2.contains(.number) { pos += 1; f2 = fl(pos) }
                    add(pos); continue
                }
                if f2.isDisjoint(with: [.whitespace, .letter, .number]) && !f2.isEmpty {
                    if c == 0x20 { pos += 1 }
                    while f2.isDisjoint(with: [.whitespace, .letter, .number]) && !f2.isEmpty { pos += 1; f2 = fl(pos) }
                    add(pos); continue
                }
                var ws = 0
                while fl(pos + ws).contains(.whitespace) { ws += 1 }
                if ws > 1 && cpt(pos + ws) != OOR { pos += ws - 1; add(pos); continue }
                if ws > 0 { pos += ws; add(pos); continue }
                pos += 1
                add(pos)
            }
        }
        return out
    }

    static func llama3(_ cpts: [UInt32], _ allFlags: [CharFlags], _ offsets: [Int]) -> [Int] {
        var out: [Int] = []
        out.reserveCapacity(offsets.count)
        var start = 0
        for len in offsets {
            let ini = start, end = start + len
            start = end
            let OOR: UInt32 = 0xFFFF_FFFF
            func cpt(_ p: Int) -> UInt32 { (ini <= p && p < end) ? cpts[p] : OOR }
            func fl(_ p: Int) -> CharFlags { (ini <= p && p < end) ? allFlags[p] : [] }
            func lower(_ c: UInt32) -> UInt32 { (c >= 0x41 && c <= 0x5A) ? c + 32 : c }
            var prevEnd = ini
            @discardableResult func add(_ e: Int) -> Int {
                let l = e - prevEnd
                if l > 0 { out.append(l) }
                prevEnd = e
                return l
            }
            var pos = ini
            while pos < end {
                let c = cpt(pos)
                let f = fl(pos)
                if c == 0x27 && pos + 1 < end {
                    let n = lower(cpt(pos + 1))
                    if n == 0x73 || n == 0x74 || n == 0x6D || n == 0x64 { pos += add(pos + 2); continue }
                    if pos + 2 < end {
                        let nn = lower(cpt(pos + 2))
                        if (n == 0x72 && nn == 0x65) || (n == 0x76 && nn == 0x65) || (n == 0x6C && nn == 0x6C) {
                            pos += add(pos + 3); continue
                        }
                    }
                }
                // [^\r\n\p{L}\p{N}]?\p{L}+
                if !(c == 0x0D || c == 0x0A || f.contains(.number)) {
                    if f.contains(.letter) || fl(pos + 1).contains(.letter) {
                        pos += 1
                        while fl(pos).contains(.letter) { pos += 1 }
                        add(pos); continue
                    }
                }
                // \p{N}{1,3}
                if f.contains(.number) {
                    var i0 = pos
                    while fl(pos).contains(.number) {
                        pos += 1
                        if pos - i0 >= 3 { add(pos); i0 = pos }
                    }
                    add(pos); continue
                }
                // <space>?[^\s\p{L}\p{N}]+[\r\n]*
                var f2 = c == 0x20 ? fl(pos + 1) : f
                if f2.isDisjoint(with: [.whitespace, .letter, .number]) && !f.isEmpty {
                    if c == 0x20 { pos += 1 }
                    while f2.isDisjoint(with: [.whitespace, .letter, .number]) && !f2.isEmpty { pos += 1; f2 = fl(pos) }
                    var c2 = cpt(pos)
                    while c2 == 0x0D || c2 == 0x0A { pos += 1; c2 = cpt(pos) }
                    add(pos); continue
                }
                var ws = 0
                var lastRN = 0
                while fl(pos + ws).contains(.whitespace) {
                    let c2 = cpt(pos + ws)
                    if c2 == 0x0D || c2 == 0x0A { lastRN = pos + ws + 1 }
                    ws += 1
                }
                if lastRN > 0 { pos = lastRN; add(pos); continue }
                if ws > 1 && cpt(pos + ws) != OOR { pos += ws - 1; add(pos); continue }
                if ws > 0 { pos += ws; add(pos); continue }
                pos += 1
                add(pos)
            }
        }
        return out
    }
}

/// GPT-2's byte ↔ printable-character mapping (bytes_to_unicode in OpenAI's encoder.py; llama.cpp's
/// unicode_byte_to_utf8_map): bytes 0x21–0x7E, 0xA1–0xAC, 0xAE–0xFF map to themselves, the other 68
/// bytes to U+0100 onwards in byte order.
enum ByteLevel {
    static let byteToScalar: [UInt32] = {
        var map = [UInt32](repeating: 0, count: 256)
        var n: UInt32 = 0
        for b in 0..<256 {
            if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
                map[b] = UInt32(b)
            } else {
                map[b] = 256 + n
                n += 1
            }
        }
        return map
    }()

    /// UTF-8 of each byte's mapped character.
    static let byteToUTF8: [[UInt8]] = byteToScalar.map { Array(String(Unicode.Scalar($0)!).utf8) }

    static let scalarToByte: [UInt32: UInt8] = {
        var m: [UInt32: UInt8] = [:]
        for (b, s) in byteToScalar.enumerated() { m[s] = UInt8(b) }
        return m
    }()
}
