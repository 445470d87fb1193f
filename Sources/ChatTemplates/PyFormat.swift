import Foundation

/// Python's text conventions that templates expose: `repr` of floats and strings, `str.isspace`,
/// `strftime`, and `json.dumps` (the `tojson` filter transformers installs).
public enum PyFormat {
    /// `repr(float)`: shortest round-trip digits; exponent form below 1e-4 and from 1e16 on
    /// (Swift's `description` follows the same rules), `inf`, `nan`.
    static func floatRepr(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        return d.description
    }

    /// `str.isspace()` (Unicode White_Space plus the ASCII separators 0x1C–0x1F).
    static func isSpace(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
            return true
        default:
            return false
        }
    }

    /// `str.isprintable()` for one character, as `repr` uses it.
    static func isPrintable(_ s: Unicode.Scalar) -> Bool {
        if s == " " { return true }
        switch s.properties.generalCategory {
        case .control, .format, .surrogate, .privateUse, .unassigned, .lineSeparator, .paragraphSeparator,
            .spaceSeparator:
            return false
        default:
            return true
        }
    }

    /// `repr(str)`: single quotes unless the text has a `'` and no `"`.
    public static func stringRepr(_ s: String) -> String {
        let useDouble = s.unicodeScalars.contains("'") && !s.unicodeScalars.contains("\"")
        let q: Unicode.Scalar = useDouble ? "\"" : "'"
        var out = String.UnicodeScalarView()
        out.append(q)
        for c in s.unicodeScalars {
            switch c {
            case "\\": out.append(contentsOf: "\\\\".unicodeScalars)
            case "\n": out.append(contentsOf: "\\n".unicodeScalars)
            case "\r": out.append(contentsOf: "\\r".unicodeScalars)
            case "\t": out.append(contentsOf: "\\t".unicodeScalars)
            default:
                if c == q {
                    out.append("\\")
                    out.append(c)
                } else if c.value < 0x20 || c.value == 0x7F || !isPrintable(c) {
                    let hex = String(c.value, radix: 16)
                    let (prefix, width) = c.value < 0x100 ? ("\\x", 2) : (c.value < 0x10000 ? ("\\u", 4) : ("\\U", 8))
                    out.append(contentsOf: (prefix + String(repeating: "0", count: width - hex.count) + hex).unicodeScalars)
                } else {
                    out.append(c)
                }
            }
        }
        out.append(q)
        return String(out)
    }

    /// Python's `str.strip/lstrip/rstrip` (whitespace when `chars` is nil).
    static func strip(_ s: String, chars: String?, left: Bool, right: Bool) -> String {
        let set: Set<UInt32>? = chars.map { Set($0.unicodeScalars.map { $0.value }) }
        func drop(_ c: Unicode.Scalar) -> Bool { set.map { $0.contains(c.value) } ?? isSpace(c) }
        let v = s.unicodeScalars
        var lo = v.startIndex
        var hi = v.endIndex
        if left { while lo < hi, drop(v[lo]) { lo = v.index(after: lo) } }
        if right {
            while hi > lo {
                let p = v.index(before: hi)
                guard drop(v[p]) else { break }
                hi = p
            }
        }
        if lo == v.startIndex && hi == v.endIndex { return s }
        return String(v[lo..<hi])
    }

    public static func fromScalars<S: Sequence>(_ s: S) -> String where S.Element == Unicode.Scalar {
        var v = String.UnicodeScalarView()
        v.append(contentsOf: s)
        return String(v)
    }

    // MARK: strftime (C locale, as Python's datetime.strftime on glibc)

    private static let days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    private static let months = ["January", "February", "March", "April", "May", "June", "July", "August",
                                 "September", "October", "November", "December"]

    /// `datetime.now().strftime(format)` for a naive local time: `%Z` and `%z` are empty. Supports
    /// a A b B c d D e F H I j m M p S T u w y Y Z z %; other directives are copied as-is.
    static func strftime(_ format: String, date: Date, timeZone: TimeZone) -> String {
        var cal = Calendar(identifier: .gregorian)
        cal.timeZone = timeZone
        let c = cal.dateComponents([.year, .month, .day, .hour, .minute, .second, .weekday], from: date)
        let year = c.year ?? 1970, month = c.month ?? 1, day = c.day ?? 1
        let hour = c.hour ?? 0, minute = c.minute ?? 0, second = c.second ?? 0
        let mondayBased = ((c.weekday ?? 1) + 5) % 7  // 0 = Monday
        let yday = cal.ordinality(of: .day, in: .year, for: date) ?? 1
        func pad(_ v: Int, _ w: Int = 2, _ fill: Character = "0") -> String {
            let s = String(v)
            return s.count >= w ? s : String(repeating: fill, count: w - s.count) + s
        }
        var out = ""
        var it = format.makeIterator()
        while let ch = it.next() {
            guard ch == "%" else { out.append(ch); continue }
            guard let d = it.next() else { out.append("%"); break }
            switch d {
            case "a": out += String(days[mondayBased].prefix(3))
            case "A": out += days[mondayBased]
            case "b", "h": out += String(months[month - 1].prefix(3))
            case "B": out += months[month - 1]
            case "c":
                out += "\(days[mondayBased].prefix(3)) \(months[month - 1].prefix(3)) \(pad(day, 2, " ")) "
                    + "\(pad(hour)):\(pad(minute)):\(pad(second)) \(year)"
            case "d": out += pad(day)
            case "D": out += "\(pad(month))/\(pad(day))/\(pad(year % 100))"
            case "e": out += pad(day, 2, " ")
            case "F": out += "\(year)-\(pad(month))-\(pad(day))"
            case "H": out += pad(hour)
            case "I": out += pad(hour % 12 == 0 ? 12 : hour % 12)
            case "j": out += pad(yday, 3)
            case "m": out += pad(month)
            case "M": out += pad(minute)
            case "p": out += hour < 12 ? "AM" : "PM"
            case "S": out += pad(second)
            case "T": out += "\(pad(hour)):\(pad(minute)):\(pad(second))"
            case "u": out += String(mondayBased + 1)
            case "w": out += String((mondayBased + 1) % 7)
            case "y": out += pad(year % 100)
            case "Y": out += String(year)
            case "Z", "z": break
            case "%": out += "%"
            default: out.append("%"); out.append(d)
            }
        }
        return out
    }
}

/// `json.dumps(x, ensure_ascii=…, indent=…, separators=…, sort_keys=…)` as transformers' `tojson`.
enum PyJSON {
    struct Options {
        var indent: String? = nil
        var itemSeparator = ", "
        var keySeparator = ": "
        var sortKeys = false
        var ensureASCII = false
    }

    static let maxDepth = 512

    static func dump(_ v: Value, into out: inout String, options: Options, level: Int) {
        try? dumpChecked(v, into: &out, options: options, level: level)
    }

    static func dumpChecked(_ v: Value, into out: inout String, options o: Options, level: Int) throws {
        guard level < maxDepth else { throw RenderError.value("tojson: value nested deeper than \(maxDepth) levels") }
        switch v {
        case .none: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d): out += floatJSON(d)
        case .string(let s): encodeString(s, into: &out, ensureASCII: o.ensureASCII)
        case .list(let xs), .tuple(let xs):
            if xs.isEmpty { out += "[]"; return }
            out += "["
            let (sep, close) = separators(o, level: level)
            for (i, x) in xs.enumerated() {
                out += i == 0 ? sep.first : sep.item
                try dumpChecked(x, into: &out, options: o, level: level + 1)
            }
            out += close + "]"
        case .dict(let d):
            if d.count == 0 { out += "{}"; return }
            var items = d.items
            if o.sortKeys {
                var failure: Error? = nil
                items.sort { a, b in
                    do { return (try Value.pyCompare(a.0, b.0, op: "<") ?? 0) < 0 } catch {
                        failure = error
                        return false
                    }
                }
                if let failure { throw failure }
            }
            out += "{"
            let (sep, close) = separators(o, level: level)
            for (i, (k, x)) in items.enumerated() {
                out += i == 0 ? sep.first : sep.item
                switch k {
                case .string(let s): encodeString(s, into: &out, ensureASCII: o.ensureASCII)
                case .int(let n): out += "\"\(n)\""
                case .double(let dd): out += "\"" + floatJSON(dd) + "\""
                case .bool(let b): out += b ? "\"true\"" : "\"false\""
                case .none: out += "\"null\""
                default: throw RenderError.type("keys must be str, int, float, bool or None, not \(k.typeName)")
                }
                out += o.keySeparator
                try dumpChecked(x, into: &out, options: o, level: level + 1)
            }
            out += close + "}"
        default:
            throw RenderError.type("Object of type \(v.typeName) is not JSON serializable")
        }
    }

    private static func separators(_ o: Options, level: Int) -> ((first: String, item: String), String) {
        guard let ind = o.indent else { return (("", o.itemSeparator), "") }
        let inner = "\n" + String(repeating: ind, count: level + 1)
        let outer = "\n" + String(repeating: ind, count: level)
        return ((inner, o.itemSeparator + inner), outer)
    }

    static func floatJSON(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
        return PyFormat.floatRepr(d)
    }

    static func encodeString(_ s: String, into out: inout String, ensureASCII: Bool) {
        out += "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if c.value < 0x20 || (ensureASCII && c.value > 0x7E) {
                    if c.value > 0xFFFF {
                        let v = c.value - 0x10000
                        out += hex4(0xD800 + (v >> 10)) + hex4(0xDC00 + (v & 0x3FF))
                    } else {
                        out += hex4(c.value)
                    }
                } else {
                    out.unicodeScalars.append(c)
                }
            }
        }
        out += "\""
    }

    private static func hex4(_ v: UInt32) -> String {
        let h = String(v, radix: 16)
        return "\\u" + String(repeating: "0", count: 4 - h.count) + h
    }
}
