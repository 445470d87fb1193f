/// Unicode character classes as llama.cpp's `unicode_cpt_flags` (src/unicode.h) uses them for
/// pre-tokenization: \p{L}, \p{N}, \p{P}, \p{S}, \p{M}, \s. The categories are llama.cpp's own table
/// (`unicode_ranges_flags` in src/unicode-data.cpp, copied into `UnicodeFlagsData` by
/// scripts/oracle/gen_unicode_flags.py), so every code point is classified as llama.cpp classifies it,
/// whatever Unicode version the Swift runtime has; whitespace is llama.cpp's fixed set.
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

    /// Flags of U+0000 … U+FFFF (128 KB), built once from the range table.
    private static let bmp: [UInt16] = {
        var t = [UInt16](repeating: 0, count: 0x10000)
        let starts = UnicodeFlagsData.rangeStarts, flags = UnicodeFlagsData.rangeFlags
        for i in 0..<starts.count where starts[i] < 0x10000 {
            let end = i + 1 < starts.count ? min(Int(starts[i + 1]), 0x10000) : 0x10000
            for cp in Int(starts[i])..<end { t[cp] = UInt16(flags[i]) }
        }
        for cp in UnicodeFlagsData.whitespace { t[Int(cp)] |= CharFlags.whitespace.rawValue }
        return t
    }()

    static func of(_ cp: UInt32) -> CharFlags {
        if cp < 0x10000 { return CharFlags(rawValue: bmp[Int(cp)]) }
        guard cp < 0x110000 else { return .undefined }
        // last range whose start <= cp (no whitespace above the BMP)
        let starts = UnicodeFlagsData.rangeStarts
        var lo = 0, hi = starts.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if starts[mid] <= cp { lo = mid } else { hi = mid - 1 }
        }
        return CharFlags(rawValue: UInt16(UnicodeFlagsData.rangeFlags[lo]))
    }

    /// The one category of a code point (llama.cpp's `category_flag()`).
    var category: CharFlags { intersection(.categories) }
}

/// A pre-tokenizer (text → words before BPE) of llama.cpp's `llm_tokenizer_bpe` (src/llama-vocab.cpp), chosen by
/// the GGUF `tokenizer.ggml.pre` value with llama.cpp's table of names, together with the two vocabulary flags
/// that table sets with it (`ignore_merges`, the default of `add_bos`).
///
/// llama.cpp applies a list of regexes one after the other, each splitting the words of the previous one
/// (`unicode_regex_split`, src/unicode.cpp). Some of them it runs with hand-written splitters (gpt2, llama3,
/// qwen2, qwen35); the others with `std::regex` (ECMAScript: leftmost match, alternatives in order, greedy
/// quantifiers that backtrack) over a "collapsed" text in which every code point ≥ 128 stands for its category
/// (so `\p{L}` is ASCII letters plus every non-ASCII letter, and `[^a-z]` is true for every non-ASCII letter),
/// or with `std::wregex` over the code points when a regex has no `\p{…}` (non-ASCII whitespace then becomes
/// U+000B). Kvant writes each of those regexes out by hand with exactly those semantics; the regex each case
/// follows is quoted on it.
struct PreTokenizer: Equatable, Sendable {
    /// The regex lists of llama.cpp's `llm_tokenizer_bpe` constructor.
    enum Kind: String, Sendable, CaseIterable {
        /// `LLAMA_VOCAB_PRE_TYPE_DEFAULT`: [\p{P}\$\+<=>\^~\|]+ → gpt2 → \p{N}+ → [0-9][0-9][0-9]
        case `default`
        /// `GPT2` (also MPT, OLMO, JAIS, TRILLION, GRANITE_DOCLING):
        /// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
        case gpt2
        /// `LLAMA3` (also DBRX, SMAUG): (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|
        /// \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
        case llama3
        /// `QWEN2` (also STABLELM2, HUNYUAN, SOLAR_OPEN): the llama3 regex with \p{N} instead of \p{N}{1,3}
        case qwen2
        /// `QWEN35`: the qwen2 regex with [\p{L}\p{M}]+ for letters and [^\s\p{L}\p{M}\p{N}] for the rest
        case qwen35
        /// `STARCODER` (also REFACT, COMMAND_R, SMOLLM, CODESHELL, EXAONE, MINERVA, MELLUM2): \p{N} → gpt2
        case starcoder
        /// `FALCON`: [\p{P}\$\+<=>\^~\|`]+ → gpt2 → [0-9][0-9][0-9]
        case falcon
        /// `DEEPSEEK_LLM`: [\r\n] → \s?[A-Za-zµÀ-Ö…]+ (Latin, Greek, Cyrillic, … letters) → \s?[!-/:-~！-／：-～‘-‟　-。]+ →
        /// \s+$ → [一-龥ࠀ-一가-퟿]+ → \p{N}+
        case deepseekLLM
        /// `DEEPSEEK_CODER`: [\r\n] → \s?\p{L}+ → \s?\p{P}+ → [一-龥ࠀ-一가-퟿]+ → \p{N}
        case deepseekCoder
        /// `GPT4O` (also MINIMAX_M2): [^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|…|'[dD])?|
        /// [^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|…|'[dD])?|\p{N}{1,3}|
        /// ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
        case gpt4o
        /// `TEKKEN`: the gpt4o regex without the contraction suffixes and with \p{N} instead of \p{N}{1,3}
        case tekken
        /// `BLOOM` (also PORO, GPT3_FINNISH): ` ?[^(\s|.,!?…。，、।۔،)]+`
        case bloom
        /// `VIKING`: ` ?[^(\s|.,!?…。，、।۔،)]+` → \p{N}
        case viking
    }

    /// The `tokenizer.ggml.pre` value (nil when the key is missing, which llama.cpp treats as "default").
    let name: String?
    let kind: Kind
    /// llama.cpp's `ignore_merges`: a word that is itself a token is emitted without merging.
    let ignoreMerges: Bool
    /// llama.cpp's default of `add_bos` for this value (`tokenizer.ggml.add_bos_token` overrides it).
    let addsBOSByDefault: Bool

    /// llama.cpp 0.3.36's `tokenizer.ggml.pre` table (llama_vocab::impl::load) for the regex lists Kvant has.
    /// Values whose entry also changes other vocabulary settings Kvant does not model (`add_sep`, a removed BOS
    /// id: jina-v1-en, roberta-bpe, chatglm-bpe, glm4, …) are left out, so they stay unsupported.
    static let table: [String: (Kind, ignoreMerges: Bool, addBOS: Bool)] = {
        var t: [String: (Kind, ignoreMerges: Bool, addBOS: Bool)] = ["default": (.default, false, false)]
        for n in ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"] {
            t[n] = (.llama3, true, true)
        }
        for n in ["dbrx", "smaug-bpe"] { t[n] = (.llama3, false, false) }
        t["deepseek-llm"] = (.deepseekLLM, false, false)
        t["deepseek-coder"] = (.deepseekCoder, false, false)
        t["falcon"] = (.falcon, false, false)
        for n in ["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
                  "modern-bert", "mpt", "olmo", "jais", "exaone4", "trillion", "granite-docling"] {
            t[n] = (.gpt2, false, false)
        }
        for n in ["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"] {
            t[n] = (.starcoder, false, false)
        }
        for n in ["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open"] {
            t[n] = (.qwen2, false, false)
        }
        t["qwen35"] = (.qwen35, false, false)
        for n in ["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"] { t[n] = (.gpt4o, false, false) }
        t["tekken"] = (.tekken, true, true)
        for n in ["bloom", "gpt3-finnish", "poro-chat"] { t[n] = (.bloom, false, false) }
        t["viking"] = (.viking, false, false)
        return t
    }()

    /// Every supported `tokenizer.ggml.pre` value, sorted (for error messages and the README).
    static var supportedNames: [String] { table.keys.sorted() }

    /// nil for a value llama.cpp 0.3.36 does not know or Kvant does not implement; a missing key (nil) is "default".
    init?(name: String?) {
        guard let e = PreTokenizer.table[name ?? "default"] else { return nil }
        self.name = name
        kind = e.0
        ignoreMerges = e.ignoreMerges
        addsBOSByDefault = e.addBOS
    }

    /// Splits `cpts` into words; returns word lengths in code points.
    func split(_ cpts: [UInt32]) -> [Int] {
        let s = Splitter(cpts)
        var offs = [cpts.count]
        switch kind {
        case .default:
            offs = s.runs(offs) { s.isPunctuationOrDefaultSymbol($0, backtick: false) }
            offs = s.gpt2(offs)
            offs = s.runs(offs) { s.flags[$0].category == .number }
            offs = s.asciiDigitTriples(offs)
        case .gpt2:
            offs = s.gpt2(offs)
        case .llama3:
            offs = s.llama3(offs, maxDigits: 3, marks: false)
        case .qwen2:
            offs = s.llama3(offs, maxDigits: 1, marks: false)
        case .qwen35:
            offs = s.llama3(offs, maxDigits: 1, marks: true)
        case .starcoder:
            offs = s.singles(offs) { s.flags[$0].category == .number }
            offs = s.gpt2(offs)
        case .falcon:
            offs = s.runs(offs) { s.isPunctuationOrDefaultSymbol($0, backtick: true) }
            offs = s.gpt2(offs)
            offs = s.asciiDigitTriples(offs)
        case .deepseekLLM:
            offs = s.singles(offs) { s.cpts[$0] == 0x0D || s.cpts[$0] == 0x0A }
            offs = s.optionalWhitespaceRuns(offs) { s.inRanges($0, Splitter.deepseekLetters) }
            offs = s.optionalWhitespaceRuns(offs) { s.inRanges($0, Splitter.deepseekPunctuation) }
            offs = s.trailingWhitespace(offs)
            offs = s.runs(offs) { s.inRanges($0, Splitter.deepseekCJK) }
            offs = s.runs(offs) { s.flags[$0].category == .number }
        case .deepseekCoder:
            offs = s.singles(offs) { s.cpts[$0] == 0x0D || s.cpts[$0] == 0x0A }
            offs = s.optionalWhitespaceRuns(offs) { s.flags[$0].category == .letter }
            offs = s.optionalWhitespaceRuns(offs) { s.flags[$0].category == .punctuation }
            offs = s.runs(offs) { s.inRanges($0, Splitter.deepseekCJK) }
            offs = s.singles(offs) { s.flags[$0].category == .number }
        case .gpt4o:
            offs = s.gpt4o(offs, contractions: true, maxDigits: 3)
        case .tekken:
            offs = s.gpt4o(offs, contractions: false, maxDigits: 1)
        case .bloom:
            offs = s.optionalSpaceRuns(offs) { !s.isBloomStop($0) }
        case .viking:
            offs = s.optionalSpaceRuns(offs) { !s.isBloomStop($0) }
            offs = s.singles(offs) { s.flags[$0].category == .number }
        }
        return offs
    }
}

/// The splitting steps over one text's code points. Each takes the word lengths of the previous step and splits
/// every word further (a regex never matches across the boundary of a word from an earlier step; `$`, `(?!\S)`
/// and the custom splitters' out-of-range checks see the word's end).
struct Splitter {
    let cpts: [UInt32]
    let flags: [CharFlags]

    init(_ cpts: [UInt32]) {
        self.cpts = cpts
        flags = cpts.map(CharFlags.of)
    }

    // MARK: classes (with llama.cpp's collapsed / wregex semantics)

    /// `\s`: llama.cpp's whitespace set (C `isspace` on the collapsed or wregex text, where every non-ASCII
    /// whitespace became U+000B).
    @inline(__always) func isSpace(_ i: Int) -> Bool { flags[i].contains(.whitespace) }

    /// `[\p{P}\$\+<=>\^~\|]` (default) or `[\p{P}\$\+<=>\^~\|`]` (falcon) on the collapsed text.
    func isPunctuationOrDefaultSymbol(_ i: Int, backtick: Bool) -> Bool {
        let c = cpts[i]
        if c < 128 {
            switch c {
            case 0x24, 0x2B, 0x3C, 0x3D, 0x3E, 0x5E, 0x7E, 0x7C: return true
            case 0x60: return backtick
            default: return flags[i].category == .punctuation
            }
        }
        return flags[i].category == .punctuation
    }

    /// A code point of the wregex text (non-ASCII whitespace as U+000B) within one of `ranges` (inclusive).
    func inRanges(_ i: Int, _ ranges: [(UInt32, UInt32)]) -> Bool {
        if flags[i].contains(.whitespace) { return false }   // none of the ranges holds U+000B or a space
        let c = cpts[i]
        for (lo, hi) in ranges where lo <= c && c <= hi { return true }
        return false
    }

    /// The characters `[^(\s|.,!?…。，、।۔،)]` excludes (bloom, viking).
    func isBloomStop(_ i: Int) -> Bool {
        if isSpace(i) { return true }
        switch cpts[i] {
        case 0x28, 0x29, 0x7C, 0x2E, 0x2C, 0x21, 0x3F, 0x2026, 0x3002, 0xFF0C, 0x3001, 0x0964, 0x06D4, 0x060C: return true
        default: return false
        }
    }

    /// deepseek-llm's letter class `[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]`
    static let deepseekLetters: [(UInt32, UInt32)] = [
        (0x41, 0x5A), (0x61, 0x7A), (0xB5, 0xB5), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x1BA), (0x1BC, 0x1BF), (0x1C4, 0x293),
        (0x295, 0x2AF), (0x370, 0x373), (0x376, 0x377), (0x37B, 0x37D), (0x37F, 0x37F), (0x386, 0x386), (0x388, 0x38A),
        (0x38C, 0x38C), (0x38E, 0x3A1), (0x3A3, 0x3F5), (0x3F7, 0x481), (0x48A, 0x52F), (0x531, 0x556), (0x10A0, 0x10C5),
        (0x13A0, 0x13F5), (0x13F8, 0x13FD), (0x1C90, 0x1CBA), (0x1CBD, 0x1CBF), (0x1D00, 0x1D2B), (0x1D6B, 0x1D77),
        (0x1D79, 0x1D9A), (0x1E00, 0x1F15), (0x1F18, 0x1F1D), (0x1F20, 0x1F45), (0x1F48, 0x1F4D), (0x1F50, 0x1F57),
        (0x1F59, 0x1F59), (0x1F5B, 0x1F5B), (0x1F5D, 0x1F5D), (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC),
        (0x1FBE, 0x1FBE), (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC), (0x1FD0, 0x1FD3), (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC),
        (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC), (0x2102, 0x2102), (0x2107, 0x2107), (0x210A, 0x2113), (0x2115, 0x2115),
        (0x2119, 0x211D), (0x2124, 0x2124), (0x2126, 0x2126), (0x2128, 0x2128), (0x212A, 0x212D), (0x212F, 0x2134),
        (0x2139, 0x2139), (0x213C, 0x213F), (0x2145, 0x2149), (0x214E, 0x214E), (0x2183, 0x2184), (0x2C00, 0x2C7B),
        (0x2C7E, 0x2CE4), (0x2CEB, 0x2CEE), (0x2CF2, 0x2CF3), (0xA640, 0xA66D), (0xA680, 0xA69B), (0xA722, 0xA76F),
        (0xA771, 0xA787), (0xA78B, 0xA78E), (0xAB70, 0xABBF), (0xFB00, 0xFB06), (0xFB13, 0xFB17), (0xFF21, 0xFF3A),
        (0xFF41, 0xFF5A), (0x10400, 0x1044F), (0x104B0, 0x104D3), (0x104D8, 0x104FB), (0x10C80, 0x10CB2),
        (0x10CC0, 0x10CF2), (0x118A0, 0x118DF), (0x1E900, 0x1E943),
    ]
    /// deepseek-llm's `[!-/:-~！-／：-～‘-‟　-。]`
    static let deepseekPunctuation: [(UInt32, UInt32)] = [
        (0x21, 0x2F), (0x3A, 0x7E), (0xFF01, 0xFF0F), (0xFF1A, 0xFF5E), (0x2018, 0x201F), (0x3000, 0x3002),
    ]
    /// deepseek's `[一-龥ࠀ-一가-퟿]`
    static let deepseekCJK: [(UInt32, UInt32)] = [(0x4E00, 0x9FA5), (0x800, 0x4E00), (0xAC00, 0xD7FF)]

    // MARK: generic std::regex splits (matches and the text between them become words)

    /// Applies `match(start, end, pos) -> end of a match starting at pos, or nil` as std::regex_iterator does
    /// over each word: the leftmost match from the current position, then on from its end; the text between
    /// matches is a word of its own. `match` must never return an empty match.
    private func regexSplit(_ offsets: [Int], _ match: (Int, Int, Int) -> Int?) -> [Int] {
        var out: [Int] = []
        out.reserveCapacity(offsets.count)
        var start = 0
        for len in offsets {
            let end = start + len
            var pos = start, prev = start
            while pos < end {
                if let e = match(start, end, pos) {
                    if pos > prev { out.append(pos - prev) }
                    out.append(e - pos)
                    pos = e
                    prev = e
                } else {
                    pos += 1
                }
            }
            if end > prev { out.append(end - prev) }
            start = end
        }
        return out
    }

    /// `[class]+`
    func runs(_ offsets: [Int], _ inClass: (Int) -> Bool) -> [Int] {
        regexSplit(offsets) { _, end, pos in
            guard inClass(pos) else { return nil }
            var e = pos + 1
            while e < end && inClass(e) { e += 1 }
            return e
        }
    }

    /// `[class]` (one code point per match), e.g. `\p{N}` or `[\r\n]`.
    func singles(_ offsets: [Int], _ inClass: (Int) -> Bool) -> [Int] {
        regexSplit(offsets) { _, _, pos in inClass(pos) ? pos + 1 : nil }
    }

    /// `\s?[class]+` (`class` never holds whitespace).
    func optionalWhitespaceRuns(_ offsets: [Int], _ inClass: (Int) -> Bool) -> [Int] {
        regexSplit(offsets) { _, end, pos in
            var p = pos
            if isSpace(p) && p + 1 < end && inClass(p + 1) { p += 1 } else if !inClass(p) { return nil }
            var e = p + 1
            while e < end && inClass(e) { e += 1 }
            return e
        }
    }

    /// ` ?[class]+` (a literal space; `class` never holds it).
    func optionalSpaceRuns(_ offsets: [Int], _ inClass: (Int) -> Bool) -> [Int] {
        regexSplit(offsets) { _, end, pos in
            var p = pos
            if cpts[p] == 0x20 && p + 1 < end && inClass(p + 1) { p += 1 } else if !inClass(p) { return nil }
            var e = p + 1
            while e < end && inClass(e) { e += 1 }
            return e
        }
    }

    /// `\s+$`: the whitespace at the end of each word (std::regex finds it as the leftmost position whose
    /// whitespace run reaches the end; computed directly so a long inner run costs no quadratic search).
    func trailingWhitespace(_ offsets: [Int]) -> [Int] {
        var out: [Int] = []
        out.reserveCapacity(offsets.count)
        var start = 0
        for len in offsets {
            let end = start + len
            var t = end
            while t > start && isSpace(t - 1) { t -= 1 }
            if t > start { out.append(t - start) }
            if end > t { out.append(end - t) }
            start = end
        }
        return out
    }

    /// `[0-9][0-9][0-9]`: leftmost non-overlapping triples of ASCII digits.
    func asciiDigitTriples(_ offsets: [Int]) -> [Int] {
        func digit(_ i: Int) -> Bool { cpts[i] >= 0x30 && cpts[i] <= 0x39 }
        return regexSplit(offsets) { _, end, pos in
            pos + 3 <= end && digit(pos) && digit(pos + 1) && digit(pos + 2) ? pos + 3 : nil
        }
    }

    // MARK: llama.cpp's hand-written splitters (unicode_regex_split_custom_*)

    /// `unicode_regex_split_custom_gpt2`.
    func gpt2(_ offsets: [Int]) -> [Int] {
        var out: [Int] = []
        out.reserveCapacity(offsets.count)
        var start = 0
        for len in offsets {
            let ini = start, end = start + len
            start = end
            let OOR: UInt32 = 0xFFFF_FFFF
            func cpt(_ p: Int) -> UInt32 { (ini <= p && p < end) ? cpts[p] : OOR }
            func fl(_ p: Int) -> CharFlags { (ini <= p && p < end) ? flags[p] : [] }
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

    /// `unicode_regex_split_custom_llama3` (maxDigits 3), `_qwen2` (maxDigits 1) and `_qwen35` (maxDigits 1,
    /// accent marks count as letters).
    func llama3(_ offsets: [Int], maxDigits: Int, marks: Bool) -> [Int] {
        var out: [Int] = []
        out.reserveCapacity(offsets.count)
        let letterish: CharFlags = marks ? [.letter, .accentMark] : .letter
        var start = 0
        for len in offsets {
            let ini = start, end = start + len
            start = end
            let OOR: UInt32 = 0xFFFF_FFFF
            func cpt(_ p: Int) -> UInt32 { (ini <= p && p < end) ? cpts[p] : OOR }
            func fl(_ p: Int) -> CharFlags { (ini <= p && p < end) ? flags[p] : [] }
            // unicode_tolower: only A-Z map onto the ASCII letters of the contractions
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
                // [^\r\n\p{L}\p{N}]?\p{L}+   (qwen35: [^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+)
                if !(c == 0x0D || c == 0x0A || f.contains(.number)) {
                    if !f.isDisjoint(with: letterish) || !fl(pos + 1).isDisjoint(with: letterish) {
                        pos += 1
                        while !fl(pos).isDisjoint(with: letterish) { pos += 1 }
                        add(pos); continue
                    }
                }
                // \p{N}{1,3}   (qwen2, qwen35: \p{N})
                if f.contains(.number) {
                    var i0 = pos
                    while fl(pos).contains(.number) {
                        pos += 1
                        if pos - i0 >= maxDigits { add(pos); i0 = pos }
                    }
                    add(pos); continue
                }
                // <space>?[^\s\p{L}\p{N}]+[\r\n]*   (qwen35: [^\s\p{L}\p{M}\p{N}])
                let excluded: CharFlags = CharFlags([.whitespace, .number]).union(letterish)
                var f2 = c == 0x20 ? fl(pos + 1) : f
                if f2.isDisjoint(with: excluded) && !f.isEmpty {
                    if c == 0x20 { pos += 1 }
                    while f2.isDisjoint(with: excluded) && !f2.isEmpty { pos += 1; f2 = fl(pos) }
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

    /// The gpt-4o regex (and tekken's variant) as `std::regex` runs it over the collapsed text, where
    /// `(?=[\p{L}])([^a-z])` ("upper") is an ASCII capital or any non-ASCII letter and `(?=[\p{L}])([^A-Z])`
    /// ("lower") an ASCII small letter or any non-ASCII letter. Alternatives in order at each position:
    ///  1. `P?U*W+C?`: P = `[^\r\n\p{L}\p{N}]`; the greedy U* backs off until a W follows;
    ///  2. `P?U+W*C?`;  3. `\p{N}{1,maxDigits}`;  4. ` ?[^\s\p{L}\p{N}]+[\r\n/]*`;
    ///  5. `\s*[\r\n]+` (to the last CR/LF of the whitespace run);  6. `\s+(?!\S)`;  7. `\s+`.
    /// C = `(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])` when `contractions`.
    func gpt4o(_ offsets: [Int], contractions: Bool, maxDigits: Int) -> [Int] {
        regexSplit(offsets) { _, end, pos in
            func isL(_ p: Int) -> Bool { p < end && flags[p].category == .letter }
            func isN(_ p: Int) -> Bool { p < end && flags[p].category == .number }
            func upper(_ p: Int) -> Bool { isL(p) && !(cpts[p] >= 0x61 && cpts[p] <= 0x7A) }
            func lower(_ p: Int) -> Bool { isL(p) && !(cpts[p] >= 0x41 && cpts[p] <= 0x5A) }
            func contraction(_ p: Int) -> Int {
                guard contractions, p + 1 < end, cpts[p] == 0x27 else { return 0 }
                func lc(_ c: UInt32) -> UInt32 { (c >= 0x41 && c <= 0x5A) ? c + 32 : c }
                let n = lc(cpts[p + 1])
                if n == 0x73 || n == 0x74 || n == 0x6D || n == 0x64 { return 2 }
                guard p + 2 < end else { return 0 }
                let nn = lc(cpts[p + 2])
                return (n == 0x72 && nn == 0x65) || (n == 0x76 && nn == 0x65) || (n == 0x6C && nn == 0x6C) ? 3 : 0
            }
            let c = cpts[pos]
            // 1 and 2: with the optional prefix P when pos is in it (then pos itself is no letter)
            let s = (c != 0x0D && c != 0x0A && !isL(pos) && !isN(pos)) ? pos + 1 : pos
            var m = 0
            while upper(s + m) { m += 1 }
            var k = m
            while k >= 0 && !lower(s + k) { k -= 1 }
            if k >= 0 {
                var e = s + k
                while lower(e) { e += 1 }
                return e + contraction(e)
            }
            if m > 0 { return s + m + contraction(s + m) }
            // 3
            if isN(pos) {
                var e = pos
                while isN(e) && e - pos < maxDigits { e += 1 }
                return e
            }
            // 4
            func other(_ p: Int) -> Bool { p < end && !isSpace(p) && !isL(p) && !isN(p) }
            let q = (c == 0x20 && other(pos + 1)) ? pos + 1 : pos
            if other(q) {
                var e = q
                while other(e) { e += 1 }
                while e < end && (cpts[e] == 0x0D || cpts[e] == 0x0A || cpts[e] == 0x2F) { e += 1 }
                return e
            }
            // 5, 6, 7
            var w = 0, lastRN = 0
            while pos + w < end && isSpace(pos + w) {
                if cpts[pos + w] == 0x0D || cpts[pos + w] == 0x0A { lastRN = pos + w + 1 }
                w += 1
            }
            if lastRN > 0 { return lastRN }
            if w == 0 { return nil }
            return pos + w == end ? end : pos + max(w - 1, 1)
        }
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
