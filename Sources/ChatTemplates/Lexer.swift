/// Tokenizer following jinja2's `Lexer` (jinja2/lexer.py, 3.1) with transformers' settings:
/// `trim_blocks=True` (the first newline after `%}` / `#}` is dropped), `lstrip_blocks=True` (spaces and
/// tabs from the start of a line up to `{%` / `{#` are dropped), `keep_trailing_newline=False` (one
/// final newline of the template is dropped), newlines `\r\n` and `\r` normalized to `\n`.
/// `{%-`/`-%}` (and `{{-`, `{#-`, …) strip all whitespace on that side; `{%+` disables lstrip and `+%}`
/// disables trim for that tag.
struct Token {
    enum Kind: Equatable {
        case data, variableBegin, variableEnd, blockBegin, blockEnd, name, string, integer, float, op, eof
    }
    var kind: Kind
    var text: String = ""     // data text, name, decoded string, operator
    var int: Int = 0
    var double: Double = 0
    var offset: Int           // scalar offset in the normalized source

    /// How jinja2 describes a token in "expected …, got …" messages.
    var described: String {
        switch kind {
        case .data: return "template data"
        case .variableBegin: return "begin of print statement"
        case .variableEnd: return "end of print statement"
        case .blockBegin: return "begin of statement block"
        case .blockEnd: return "end of statement block"
        case .name: return ChatTemplateError.snippet(text)
        case .string: return "string"
        case .integer: return "integer"
        case .float: return "float"
        case .op: return text
        case .eof: return "end of template"
        }
    }
}

struct Lexer {
    let src: [Unicode.Scalar]
    private var pos = 0
    private var lineStarting = true
    private var tokens: [Token] = []
    private var balancing: [Unicode.Scalar] = []

    /// The normalized source (jinja2 splits on newlines, drops one trailing empty line, rejoins with `\n`).
    static func normalize(_ source: String) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(source.unicodeScalars.count)
        var it = source.unicodeScalars.makeIterator()
        var pending: Unicode.Scalar? = it.next()
        while let c = pending {
            pending = it.next()
            if c == "\r" {
                out.append("\n")
                if pending == "\n" { pending = it.next() }
            } else {
                out.append(c)
            }
        }
        if out.last == "\n" { out.removeLast() }
        return out
    }

    init(source: String) {
        src = Lexer.normalize(source)
    }

    static func tokenize(_ source: String) throws -> (tokens: [Token], source: [Unicode.Scalar]) {
        var lx = Lexer(source: source)
        try lx.run()
        return (lx.tokens, lx.src)
    }

    private func at(_ i: Int) -> Unicode.Scalar? { i < src.count ? src[i] : nil }

    private func matches(_ s: String, at i: Int) -> Bool {
        var j = i
        for c in s.unicodeScalars {
            guard j < src.count, src[j] == c else { return false }
            j += 1
        }
        return true
    }

    private func error(_ msg: String, _ offset: Int) -> TemplateSyntaxError {
        TemplateSyntaxError(message: msg, offset: offset)
    }

    private func skipSpaces(from i: Int) -> Int {
        var j = i
        while j < src.count, PyFormat.isSpace(src[j]) { j += 1 }
        return j
    }

    private enum TagKind { case variable, block, comment, raw }

    /// `{%(-|+|)\s*raw\s*(-%}\s*|%})` at `i`: returns (sign, end offset).
    private func rawBegin(at i: Int) -> (Unicode.Scalar?, Int)? {
        guard matches("{%", at: i) else { return nil }
        var j = i + 2
        var sign: Unicode.Scalar? = nil
        if let c = at(j), c == "-" || c == "+" { sign = c; j += 1 }
        j = skipSpaces(from: j)
        guard matches("raw", at: j) else { return nil }
        j = skipSpaces(from: j + 3)
        if matches("-%}", at: j) { return (sign, skipSpaces(from: j + 3)) }
        if matches("%}", at: j) { return (sign, j + 2) }
        return nil
    }

    /// Emits the data before a tag, applying `-` (strip all whitespace) or lstrip_blocks.
    private mutating func emitData(_ start: Int, _ end: Int, sign: Unicode.Scalar?, lstripEligible: Bool) {
        var hi = end
        if sign == "-" {
            while hi > start, PyFormat.isSpace(src[hi - 1]) { hi -= 1 }
        } else if sign != "+" && lstripEligible {
            var lpos = start
            var k = end
            while k > start {
                if src[k - 1] == "\n" { lpos = k; break }
                k -= 1
            }
            if lpos > start || lineStarting {
                if lpos < end && src[lpos..<end].allSatisfy({ PyFormat.isSpace($0) }) { hi = lpos }
            }
        }
        if hi > start {
            tokens.append(Token(kind: .data, text: PyFormat.fromScalars(src[start..<hi]), offset: start))
        }
    }

    private mutating func run() throws {
        while pos < src.count {
            // Find the next tag start: {{ {% {# (raw first at a {% position, as jinja2's alternation).
            var i = pos
            var found: (TagKind, Int, Unicode.Scalar?, Int)? = nil  // kind, tag offset, sign, body start
            while i + 1 < src.count {
                if src[i] == "{" {
                    let n = src[i + 1]
                    if n == "%", let (sign, end) = rawBegin(at: i) {
                        found = (.raw, i, sign, end)
                        break
                    }
                    if n == "{" || n == "%" || n == "#" {
                        var j = i + 2
                        var sign: Unicode.Scalar? = nil
                        if let c = at(j), c == "-" || c == "+" { sign = c; j += 1 }
                        found = (n == "{" ? .variable : (n == "%" ? .block : .comment), i, sign, j)
                        break
                    }
                }
                i += 1
            }
            guard let (kind, tagAt, sign, bodyStart) = found else {
                emitData(pos, src.count, sign: nil, lstripEligible: false)
                pos = src.count
                return
            }
            emitData(pos, tagAt, sign: sign, lstripEligible: kind != .variable)
            lineStarting = src[bodyStart - 1] == "\n"
            pos = bodyStart
            switch kind {
            case .comment: try lexComment(tagAt)
            case .raw: try lexRaw(tagAt)
            case .variable:
                tokens.append(Token(kind: .variableBegin, offset: tagAt))
                try lexTag(isBlock: false)
            case .block:
                tokens.append(Token(kind: .blockBegin, offset: tagAt))
                try lexTag(isBlock: true)
            }
        }
    }

    private mutating func lexComment(_ tagAt: Int) throws {
        var j = pos
        while j < src.count {
            if src[j] == "+", matches("#}", at: j + 1) { pos = j + 3; lineStarting = false; return }
            if src[j] == "-", matches("#}", at: j + 1) {
                pos = skipSpaces(from: j + 3)
                lineStarting = pos > j + 3 && src[pos - 1] == "\n"
                return
            }
            if matches("#}", at: j) {
                pos = j + 2
                if at(pos) == "\n" { pos += 1; lineStarting = true } else { lineStarting = false }
                return
            }
            j += 1
        }
        throw error("Missing end of comment tag", tagAt)
    }

    private mutating func lexRaw(_ tagAt: Int) throws {
        var j = pos
        while j < src.count {
            if matches("{%", at: j) {
                var k = j + 2
                var sign: Unicode.Scalar? = nil
                if let c = at(k), c == "-" || c == "+" { sign = c; k += 1 }
                k = skipSpaces(from: k)
                if matches("endraw", at: k) {
                    k = skipSpaces(from: k + 6)
                    var end: Int? = nil
                    if matches("+%}", at: k) { end = k + 3 } else if matches("-%}", at: k) {
                        end = skipSpaces(from: k + 3)
                    } else if matches("%}", at: k) {
                        end = k + 2
                        if at(k + 2) == "\n" { end = k + 3 }
                    }
                    if let end {
                        emitData(pos, j, sign: sign, lstripEligible: true)
                        pos = end
                        lineStarting = src[end - 1] == "\n"
                        return
                    }
                }
            }
            j += 1
        }
        throw error("Missing end of raw directive", tagAt)
    }

    private static let operators2: [String] = ["//", "**", "==", "!=", ">=", "<="]
    private static let operators1: Set<Unicode.Scalar> = ["+", "-", "/", "*", "%", "~", "[", "]", "(", ")", "{", "}",
                                                           ">", "<", "=", ".", ":", "|", ",", ";"]

    private mutating func lexTag(isBlock: Bool) throws {
        while true {
            if balancing.isEmpty {
                if isBlock {
                    if matches("+%}", at: pos) {
                        tokens.append(Token(kind: .blockEnd, offset: pos)); pos += 3; lineStarting = false; return
                    }
                    if matches("-%}", at: pos) {
                        tokens.append(Token(kind: .blockEnd, offset: pos))
                        let e = skipSpaces(from: pos + 3)
                        lineStarting = e > pos + 3 && src[e - 1] == "\n"
                        pos = e
                        return
                    }
                    if matches("%}", at: pos) {
                        tokens.append(Token(kind: .blockEnd, offset: pos))
                        pos += 2
                        if at(pos) == "\n" { pos += 1; lineStarting = true } else { lineStarting = false }
                        return
                    }
                } else {
                    if matches("-}}", at: pos) {
                        tokens.append(Token(kind: .variableEnd, offset: pos))
                        let e = skipSpaces(from: pos + 3)
                        lineStarting = e > pos + 3 && src[e - 1] == "\n"
                        pos = e
                        return
                    }
                    if matches("}}", at: pos) {
                        tokens.append(Token(kind: .variableEnd, offset: pos)); pos += 2; lineStarting = false; return
                    }
                }
            }
            guard pos < src.count else { return }  // the parser reports the missing end
            let c = src[pos]
            if PyFormat.isSpace(c) {
                let e = skipSpaces(from: pos)
                lineStarting = src[e - 1] == "\n"
                pos = e
                continue
            }
            lineStarting = false
            if let t = lexNumber() { tokens.append(t); continue }
            if isNameStart(c) {
                let s = pos
                pos += 1
                while pos < src.count, isNameContinue(src[pos]) { pos += 1 }
                tokens.append(Token(kind: .name, text: PyFormat.fromScalars(src[s..<pos]), offset: s))
                continue
            }
            if c == "'" || c == "\"" {
                if let t = try lexString(quote: c) { tokens.append(t); continue }
            }
            if let op = Lexer.operators2.first(where: { matches($0, at: pos) }) {
                tokens.append(Token(kind: .op, text: op, offset: pos))
                pos += 2
                continue
            }
            if Lexer.operators1.contains(c) {
                let s = pos
                pos += 1
                switch c {
                case "(": balancing.append(")")
                case "[": balancing.append("]")
                case "{": balancing.append("}")
                case ")", "]", "}":
                    guard let expected = balancing.popLast() else { throw error("unexpected '\(c)'", s) }
                    if expected != c { throw error("unexpected '\(c)', expected '\(expected)'", s) }
                default: break
                }
                tokens.append(Token(kind: .op, text: String(c), offset: s))
                continue
            }
            throw error("unexpected char \(PyFormat.stringRepr(String(c))) at \(pos)", pos)
        }
    }

    private func isNameStart(_ c: Unicode.Scalar) -> Bool {
        if c.isASCII { return c == "_" || (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") }
        return c.properties.isXIDStart
    }

    private func isNameContinue(_ c: Unicode.Scalar) -> Bool {
        if c.isASCII { return c == "_" || (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") }
        return c.properties.isXIDContinue
    }

    private func isDigit(_ i: Int, radix: Int = 10) -> Bool {
        guard let c = at(i) else { return false }
        switch radix {
        case 2: return c == "0" || c == "1"
        case 8: return c >= "0" && c <= "7"
        case 16: return (c >= "0" && c <= "9") || (c >= "a" && c <= "f") || (c >= "A" && c <= "F")
        default: return c >= "0" && c <= "9"
        }
    }

    /// `(_?D)+` style digit run; returns the end offset or nil when no digit follows.
    private func digitRun(_ i: Int, radix: Int, leadingUnderscore: Bool) -> Int? {
        var j = i
        var any = false
        while true {
            if leadingUnderscore || any, at(j) == "_", isDigit(j + 1, radix: radix) { j += 2; any = true; continue }
            if isDigit(j, radix: radix) { j += 1; any = true; continue }
            break
        }
        return any ? j : nil
    }

    /// jinja2's float_re then integer_re.
    private mutating func lexNumber() -> Token? {
        guard isDigit(pos) else { return nil }
        let s = pos
        // float: (\d+_)*\d+ ( (\.(\d+_)*\d+)? e[+-]?(\d+_)*\d+ | \.(\d+_)*\d+ ), not after a '.'
        if !(s > 0 && src[s - 1] == "."), let intEnd = digitRun(s, radix: 10, leadingUnderscore: false) {
            var j = intEnd
            var isFloat = false
            if at(j) == ".", let fracEnd = digitRun(j + 1, radix: 10, leadingUnderscore: false) {
                j = fracEnd
                isFloat = true
            }
            if at(j) == "e" || at(j) == "E" {
                var k = j + 1
                if at(k) == "+" || at(k) == "-" { k += 1 }
                if let expEnd = digitRun(k, radix: 10, leadingUnderscore: false) { j = expEnd; isFloat = true }
            }
            if isFloat {
                let text = PyFormat.fromScalars(src[s..<j]).replacingOccurrences(of: "_", with: "")
                pos = j
                return Token(kind: .float, text: text, double: Double(text) ?? .infinity, offset: s)
            }
        }
        // integer
        if src[s] == "0", let p = at(s + 1) {
            let radix: Int? = (p == "b" || p == "B") ? 2 : (p == "o" || p == "O") ? 8 : (p == "x" || p == "X") ? 16 : nil
            if let radix, let e = digitRun(s + 2, radix: radix, leadingUnderscore: true) {
                pos = e
                let digits = PyFormat.fromScalars(src[(s + 2)..<e]).replacingOccurrences(of: "_", with: "")
                return Token(kind: .integer, text: digits, int: Int(digits, radix: radix) ?? Int.max, offset: s)
            }
        }
        var j = s + 1
        if src[s] == "0" {
            while at(j) == "0" || (at(j) == "_" && at(j + 1) == "0") { j += at(j) == "_" ? 2 : 1 }
        } else {
            j = digitRun(s, radix: 10, leadingUnderscore: false) ?? s + 1
        }
        pos = j
        let text = PyFormat.fromScalars(src[s..<j]).replacingOccurrences(of: "_", with: "")
        return Token(kind: .integer, text: text, int: Int(text) ?? Int.max, offset: s)
    }

    /// A quoted string with Python's unicode-escape decoding; nil when unterminated.
    private mutating func lexString(quote: Unicode.Scalar) throws -> Token? {
        var j = pos + 1
        while j < src.count, src[j] != quote {
            j += src[j] == "\\" ? 2 : 1
        }
        guard j < src.count else { return nil }
        let body = Array(src[(pos + 1)..<j])
        let start = pos
        pos = j + 1
        return Token(kind: .string, text: try Lexer.unescape(body, offset: start), offset: start)
    }

    static func unescape(_ s: [Unicode.Scalar], offset: Int) throws -> String {
        var out = String.UnicodeScalarView()
        var i = 0
        func hex(_ n: Int, _ what: String) throws -> UInt32 {
            guard i + n <= s.count else {
                throw TemplateSyntaxError(message: "truncated \(what) escape", offset: offset)
            }
            var v: UInt32 = 0
            for k in 0..<n {
                guard let d = Int(String(s[i + k]), radix: 16) else {
                    throw TemplateSyntaxError(message: "truncated \(what) escape", offset: offset)
                }
                v = v * 16 + UInt32(d)
            }
            i += n
            return v
        }
        while i < s.count {
            let c = s[i]
            i += 1
            guard c == "\\", i < s.count else { out.append(c); continue }
            let e = s[i]
            i += 1
            switch e {
            case "\n": break
            case "\\": out.append("\\")
            case "'": out.append("'")
            case "\"": out.append("\"")
            case "a": out.append("\u{07}")
            case "b": out.append("\u{08}")
            case "f": out.append("\u{0C}")
            case "n": out.append("\n")
            case "r": out.append("\r")
            case "t": out.append("\t")
            case "v": out.append("\u{0B}")
            case "0"..."7":
                var v = e.value - 0x30
                var n = 1
                while n < 3, i < s.count, s[i] >= "0", s[i] <= "7" {
                    v = v * 8 + (s[i].value - 0x30)
                    i += 1
                    n += 1
                }
                out.append(Unicode.Scalar(v) ?? "\u{FFFD}")
            case "x": out.append(Unicode.Scalar(try hex(2, "\\xXX")) ?? "\u{FFFD}")
            case "u": out.append(Unicode.Scalar(try hex(4, "\\uXXXX")) ?? "\u{FFFD}")
            case "U":
                let v = try hex(8, "\\UXXXXXXXX")
                guard let sc = Unicode.Scalar(v), v <= 0x10FFFF else {
                    if v > 0x10FFFF { throw TemplateSyntaxError(message: "illegal Unicode character", offset: offset) }
                    out.append("\u{FFFD}")
                    continue
                }
                out.append(sc)
            case "N":
                throw TemplateSyntaxError(message: "\\N{...} escapes are not supported", offset: offset)
            default:
                out.append("\\")
                if e.isASCII {
                    out.append(e)
                } else {
                    // Python backslash-replaces non-ASCII first: "\é" becomes "\\xe9", i.e. "\" + "xe9".
                    let h = String(e.value, radix: 16)
                    let form = e.value < 0x100 ? "x" + String(repeating: "0", count: 2 - h.count) + h
                        : e.value < 0x10000 ? "u" + String(repeating: "0", count: 4 - h.count) + h
                        : "U" + String(repeating: "0", count: 8 - h.count) + h
                    out.append(contentsOf: form.unicodeScalars)
                }
            }
        }
        return String(out)
    }
}
