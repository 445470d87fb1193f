/// A JSON-shaped value handed to a chat template: what the HTTP layer builds from a request's
/// `messages`, `tools`, `documents` and `chat_template_kwargs`, passed to the template as-is (as
/// transformers' `apply_chat_template` passes Python dicts and lists).
///
/// Objects keep their keys in insertion order (Python dicts do, and templates iterate them, e.g.
/// `tool.items()` or `tojson`). Integers are 64-bit; a JSON number without fraction or exponent
/// that fits in `Int` parses as `.int`, anything else as `.double` (Python's `json.loads` keeps
/// arbitrarily large integers exact: beyond 64 bits Kvant's rendering of `tojson` differs).
public enum JinjaValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JinjaValue])
    case object(JinjaObject)

    /// A chat message `{"role": role, "content": content}`.
    public static func message(role: String, content: String) -> JinjaValue {
        .object(JinjaObject([("role", .string(role)), ("content", .string(content))]))
    }

    /// A chat message whose content is the array-of-parts form `[{"type": "text", "text": …}, …]`.
    public static func message(role: String, textParts: [String]) -> JinjaValue {
        let parts = textParts.map { JinjaValue.object(JinjaObject([("type", .string("text")), ("text", .string($0))])) }
        return .object(JinjaObject([("role", .string(role)), ("content", .array(parts))]))
    }

    /// The value at `key` when this is an object.
    public subscript(key: String) -> JinjaValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }
}

/// An insertion-ordered string-keyed map (a JSON object). Setting an existing key keeps its position.
public struct JinjaObject: Equatable, Sendable, Sequence {
    public private(set) var keys: [String] = []
    private var storage: [String: JinjaValue] = [:]

    public init() {}

    /// Builds from pairs in order; a repeated key keeps its first position and its last value (as JSON
    /// parsers and Python dicts do).
    public init(_ pairs: [(String, JinjaValue)]) {
        for (k, v) in pairs { self[k] = v }
    }

    public var count: Int { keys.count }
    public var isEmpty: Bool { keys.isEmpty }

    public subscript(key: String) -> JinjaValue? {
        get { storage[key] }
        set {
            if let newValue {
                if storage.updateValue(newValue, forKey: key) == nil { keys.append(key) }
            } else if storage.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    public func makeIterator() -> AnyIterator<(key: String, value: JinjaValue)> {
        var i = 0
        return AnyIterator {
            guard i < keys.count else { return nil }
            defer { i += 1 }
            return (keys[i], storage[keys[i]]!)
        }
    }

    public static func == (a: JinjaObject, b: JinjaObject) -> Bool {
        a.keys.count == b.keys.count && a.storage == b.storage
    }
}

extension JinjaValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: JinjaValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JinjaValue)...) { self = .object(JinjaObject(elements)) }
    public init(nilLiteral: ()) { self = .null }
}

// MARK: - JSON

/// Error parsing JSON text into a `JinjaValue`: names the byte offset and what was expected, and never
/// quotes the input.
public struct JinjaJSONError: Error, CustomStringConvertible, Equatable, Sendable {
    public let offset: Int
    public let reason: String
    public var description: String { "invalid JSON at byte \(offset): \(reason)" }
}

extension JinjaValue {
    /// Parses JSON text (RFC 8259). Nesting deeper than `maxDepth` is rejected (the parser recurses).
    public init(json: String, maxDepth: Int = 256) throws {
        self = try JinjaValue(jsonBytes: Array(json.utf8), maxDepth: maxDepth)
    }

    /// Parses UTF-8 JSON bytes. Invalid UTF-8 inside strings is replaced with U+FFFD, as are lone
    /// surrogate escapes (Python would keep them; Swift strings cannot hold them).
    public init(jsonBytes: [UInt8], maxDepth: Int = 256) throws {
        var p = JSONParser(bytes: jsonBytes, maxDepth: maxDepth)
        p.skipWhitespace()
        let v = try p.parseValue(depth: 0)
        p.skipWhitespace()
        if p.pos != jsonBytes.count { throw p.error("unexpected data after the JSON value") }
        self = v
    }

    /// Serializes as Python's `json.dumps(x, ensure_ascii=False)` does (separators `", "` and `": "`),
    /// which is what a template's `tojson` produces.
    public var jsonString: String {
        var out = ""
        PyJSON.dump(ChatTemplates.Value(self), into: &out, options: PyJSON.Options(), level: 0)
        return out
    }
}

struct JSONParser {
    let bytes: [UInt8]
    let maxDepth: Int
    var pos = 0

    init(bytes: [UInt8], maxDepth: Int) {
        self.bytes = bytes
        self.maxDepth = maxDepth
    }

    func error(_ reason: String) -> JinjaJSONError { JinjaJSONError(offset: pos, reason: reason) }

    mutating func skipWhitespace() {
        while pos < bytes.count, bytes[pos] == 0x20 || bytes[pos] == 0x0A || bytes[pos] == 0x0D || bytes[pos] == 0x09 {
            pos += 1
        }
    }

    mutating func parseValue(depth: Int) throws -> JinjaValue {
        guard depth < maxDepth else { throw error("nesting deeper than \(maxDepth) levels") }
        guard pos < bytes.count else { throw error("unexpected end of input, expected a value") }
        switch bytes[pos] {
        case UInt8(ascii: "{"):
            pos += 1
            var obj = JinjaObject()
            skipWhitespace()
            if pos < bytes.count, bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(obj) }
            while true {
                skipWhitespace()
                guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else { throw error("expected a string key") }
                let key = try parseString()
                skipWhitespace()
                guard pos < bytes.count, bytes[pos] == UInt8(ascii: ":") else { throw error("expected ':'") }
                pos += 1
                skipWhitespace()
                obj[key] = try parseValue(depth: depth + 1)
                skipWhitespace()
                guard pos < bytes.count else { throw error("unexpected end of input, expected ',' or '}'") }
                if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
                if bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(obj) }
                throw error("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            pos += 1
            var arr: [JinjaValue] = []
            skipWhitespace()
            if pos < bytes.count, bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(arr) }
            while true {
                skipWhitespace()
                arr.append(try parseValue(depth: depth + 1))
                skipWhitespace()
                guard pos < bytes.count else { throw error("unexpected end of input, expected ',' or ']'") }
                if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
                if bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(arr) }
                throw error("expected ',' or ']'")
            }
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"):
            try literal("true"); return .bool(true)
        case UInt8(ascii: "f"):
            try literal("false"); return .bool(false)
        case UInt8(ascii: "n"):
            try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return try parseNumber()
        default:
            throw error("expected a value")
        }
    }

    mutating func literal(_ word: String) throws {
        let w = Array(word.utf8)
        guard pos + w.count <= bytes.count, Array(bytes[pos..<pos + w.count]) == w else {
            throw error("expected '\(word)'")
        }
        pos += w.count
    }

    mutating func parseNumber() throws -> JinjaValue {
        let start = pos
        var isInteger = true
        if bytes[pos] == UInt8(ascii: "-") { pos += 1 }
        func digits() -> Int {
            let s = pos
            while pos < bytes.count, bytes[pos] >= 0x30, bytes[pos] <= 0x39 { pos += 1 }
            return pos - s
        }
        guard pos < bytes.count else { throw error("expected digits") }
        if bytes[pos] == UInt8(ascii: "0") { pos += 1 } else if digits() == 0 { throw error("expected digits") }
        if pos < bytes.count, bytes[pos] == UInt8(ascii: ".") {
            isInteger = false
            pos += 1
            if digits() == 0 { throw error("expected digits after '.'") }
        }
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "e") || bytes[pos] == UInt8(ascii: "E") {
            isInteger = false
            pos += 1
            if pos < bytes.count, bytes[pos] == UInt8(ascii: "+") || bytes[pos] == UInt8(ascii: "-") { pos += 1 }
            if digits() == 0 { throw error("expected exponent digits") }
        }
        let text = String(decoding: bytes[start..<pos], as: UTF8.self)
        if isInteger, let i = Int(text) { return .int(i) }
        guard let d = Double(text) else { throw error("number out of range") }
        return .double(d)
    }

    mutating func hex4() throws -> UInt32 {
        guard pos + 4 <= bytes.count else { throw error("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[pos]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw error("invalid \\u escape")
            }
            v = v * 16 + d
            pos += 1
        }
        return v
    }

    mutating func parseString() throws -> String {
        pos += 1  // opening quote
        var out: [UInt8] = []
        var scalars = String.UnicodeScalarView()
        func flush() {
            if !out.isEmpty {
                scalars.append(contentsOf: String(decoding: out, as: UTF8.self).unicodeScalars)
                out.removeAll(keepingCapacity: true)
            }
        }
        while true {
            guard pos < bytes.count else { throw error("unterminated string") }
            let c = bytes[pos]
            if c == UInt8(ascii: "\"") { pos += 1; break }
            if c < 0x20 { throw error("control character in string") }
            if c != UInt8(ascii: "\\") { out.append(c); pos += 1; continue }
            pos += 1
            guard pos < bytes.count else { throw error("unterminated escape") }
            let e = bytes[pos]
            pos += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                flush()
                var code = try hex4()
                if code >= 0xD800 && code < 0xDC00, pos + 1 < bytes.count, bytes[pos] == UInt8(ascii: "\\"),
                    bytes[pos + 1] == UInt8(ascii: "u")
                {
                    let save = pos
                    pos += 2
                    let low = try hex4()
                    if low >= 0xDC00 && low < 0xE000 {
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    } else {
                        pos = save
                    }
                }
                scalars.append(Unicode.Scalar(code) ?? "\u{FFFD}")
            default:
                throw error("invalid escape")
            }
        }
        flush()
        return String(scalars)
    }
}
