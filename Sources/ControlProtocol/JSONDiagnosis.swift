import Foundation

/// Why a line that `JSONDecoder` refused is not acceptable, found by a small JSON scanner (RFC 8259
/// grammar) so the reply can say where and what: a syntax error at a byte offset, or valid JSON with
/// a number no 64-bit float holds (`1e400`), which names the field. The scanner also picks out the
/// request's top-level `id` so such an error is sent with it.
public enum JSONDiagnosis: Equatable, Sendable {
    /// Not JSON: `offset` is the 0-based byte offset of the first bad byte (or the end), `expected`
    /// says what the grammar wanted there.
    case syntax(offset: Int, expected: String)
    /// Valid JSON, but the number at `path` (e.g. `params.max_tokens`, `params.stop[2]`) is out of the
    /// range of a 64-bit float; `literal` is the number as written (capped at 32 characters).
    case numberOutOfRange(path: String, literal: String, id: RPCID?)
    /// Valid JSON grammar, but a string (at `offset`, the 0-based byte offset of its `\u` escape) holds a lone UTF-16
    /// surrogate escape (`\ud800` without a low surrogate after it, or `\udc00` without a high one before it): no
    /// Unicode character, so no Swift (or UTF-8) string holds it. `path` is the field whose value or key it is in.
    case loneSurrogate(offset: Int, path: String, codeUnit: UInt16, inKey: Bool, id: RPCID?)
    /// The bytes are not UTF-8.
    case notUTF8
    /// The scanner found nothing wrong.
    case valid

    /// Deepest nesting the scanner follows (as deep as a request can sensibly be).
    static let maxDepth = 512

    public static func diagnose(_ bytes: [UInt8]) -> JSONDiagnosis {
        guard String(validating: bytes, as: UTF8.self) != nil else { return .notUTF8 }
        var scanner = Scanner(bytes: bytes)
        do throws(ScanError) {
            scanner.skipSpace()
            try scanner.value(depth: 0)
            scanner.skipSpace()
            if scanner.i < bytes.count { throw ScanError(offset: scanner.i, expected: "the end of the line after the JSON value") }
        } catch {
            return .syntax(offset: error.offset, expected: error.expected)
        }
        if let (offset, path, unit, inKey) = scanner.loneSurrogate {
            return .loneSurrogate(offset: offset, path: path, codeUnit: unit, inKey: inKey, id: scanner.topLevelID)
        }
        if let (path, literal) = scanner.outOfRange {
            return .numberOutOfRange(path: path, literal: literal, id: scanner.topLevelID)
        }
        return .valid
    }

    /// What is wrong with a lone surrogate escape, in words (no bytes of the input quoted).
    public static func surrogateProblem(codeUnit: UInt16) -> String {
        let hex = String(codeUnit, radix: 16, uppercase: true)
        if codeUnit >= 0xDC00 {
            return "a lone low surrogate escape (U+\(hex)): an escape in \\uDC00-\\uDFFF must follow a high surrogate escape \\uD800-\\uDBFF"
        }
        return "a lone high surrogate escape (U+\(hex)): an escape in \\uD800-\\uDBFF must be followed by a low surrogate escape \\uDC00-\\uDFFF"
    }

    struct ScanError: Error {
        var offset: Int
        var expected: String
    }

    struct Scanner {
        let bytes: [UInt8]
        var i = 0
        var path: [String] = []
        var outOfRange: (String, String)?
        var loneSurrogate: (Int, String, UInt16, Bool)?
        var topLevelID: RPCID?

        init(bytes: [UInt8]) { self.bytes = bytes }

        mutating func skipSpace() {
            while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x09 || bytes[i] == 0x0A || bytes[i] == 0x0D { i += 1 }
        }

        func fail(_ expected: String) -> ScanError { ScanError(offset: i, expected: expected) }

        mutating func expect(_ byte: UInt8, _ what: String) throws(ScanError) {
            guard i < bytes.count, bytes[i] == byte else { throw fail(what) }
            i += 1
        }

        mutating func value(depth: Int) throws(ScanError) {
            guard depth < JSONDiagnosis.maxDepth else { throw fail("less nesting (deeper than \(JSONDiagnosis.maxDepth) levels)") }
            guard i < bytes.count else { throw fail("a value") }
            switch bytes[i] {
            case UInt8(ascii: "{"): try object(depth: depth)
            case UInt8(ascii: "["): try array(depth: depth)
            case UInt8(ascii: "\""): _ = try string(isKey: false)
            case UInt8(ascii: "t"): try literal("true")
            case UInt8(ascii: "f"): try literal("false")
            case UInt8(ascii: "n"): try literal("null")
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): _ = try number()
            default: throw fail("a value (object, array, string, number, true, false or null)")
            }
        }

        mutating func literal(_ word: String) throws(ScanError) {
            for byte in word.utf8 {
                guard i < bytes.count, bytes[i] == byte else { throw fail("'\(word)'") }
                i += 1
            }
        }

        mutating func object(depth: Int) throws(ScanError) {
            i += 1
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return }
            while true {
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("a string key in double quotes") }
                let key = try string(isKey: true)
                skipSpace()
                try expect(UInt8(ascii: ":"), "':' after an object key")
                skipSpace()
                path.append(key)
                let start = i
                try value(depth: depth + 1)
                if depth == 0, key == "id" { topLevelID = Self.id(Array(bytes[start..<i])) }
                path.removeLast()
                skipSpace()
                guard i < bytes.count else { throw fail("',' or '}'") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; return }
                throw fail("',' or '}'")
            }
        }

        mutating func array(depth: Int) throws(ScanError) {
            i += 1
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return }
            var index = 0
            while true {
                skipSpace()
                path.append("[\(index)]")
                try value(depth: depth + 1)
                path.removeLast()
                skipSpace()
                guard i < bytes.count else { throw fail("',' or ']'") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; index += 1; continue }
                if bytes[i] == UInt8(ascii: "]") { i += 1; return }
                throw fail("',' or ']'")
            }
        }

        /// A string token; returns its text (escapes decoded only as far as keys need).
        mutating func string(isKey: Bool) throws(ScanError) -> String {
            let start = i
            i += 1
            while i < bytes.count {
                let byte = bytes[i]
                if byte == UInt8(ascii: "\"") {
                    i += 1
                    let token = Array(bytes[start..<i])
                    return (try? WireCodec.decoder.decode(String.self, from: Data(token))) ?? String(decoding: token, as: UTF8.self)
                }
                if byte < 0x20 { throw fail("no raw control character inside a string (escape it)") }
                if byte == UInt8(ascii: "\\") {
                    i += 1
                    guard i < bytes.count else { break }
                    switch bytes[i] {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                         UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                        i += 1
                    case UInt8(ascii: "u"):
                        let escape = i - 1
                        i += 1
                        for _ in 0..<4 {
                            guard i < bytes.count, Self.isHex(bytes[i]) else { throw fail("4 hex digits after \\u") }
                            i += 1
                        }
                        let unit = Self.hexValue(bytes[(i - 4)..<i])
                        if (0xD800...0xDBFF).contains(unit) {
                            if let low = Self.escapedUnit(bytes, at: i), (0xDC00...0xDFFF).contains(low) {
                                i += 6   // the pair is one character
                            } else if loneSurrogate == nil {
                                loneSurrogate = (escape, Self.render(path), unit, isKey)
                            }
                        } else if (0xDC00...0xDFFF).contains(unit), loneSurrogate == nil {
                            loneSurrogate = (escape, Self.render(path), unit, isKey)
                        }
                    default: throw fail("an escape (\\\", \\\\, \\/, \\b, \\f, \\n, \\r, \\t or \\uXXXX)")
                    }
                    continue
                }
                i += 1
            }
            throw fail("the closing '\"' of a string")
        }

        mutating func number() throws(ScanError) -> String {
            let start = i
            if bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard i < bytes.count, Self.isDigit(bytes[i]) else { throw fail("a digit") }
            if bytes[i] == UInt8(ascii: "0") { i += 1 } else { while i < bytes.count, Self.isDigit(bytes[i]) { i += 1 } }
            if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
                i += 1
                guard i < bytes.count, Self.isDigit(bytes[i]) else { throw fail("a digit after '.'") }
                while i < bytes.count, Self.isDigit(bytes[i]) { i += 1 }
            }
            if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
                i += 1
                if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
                guard i < bytes.count, Self.isDigit(bytes[i]) else { throw fail("a digit in the exponent") }
                while i < bytes.count, Self.isDigit(bytes[i]) { i += 1 }
            }
            let literal = String(decoding: bytes[start..<i], as: UTF8.self)
            if outOfRange == nil, !(Double(literal)?.isFinite ?? false) {
                let shown = literal.count > 32 ? String(literal.prefix(32)) + "…" : literal
                outOfRange = (Self.render(path), shown)
            }
            return literal
        }

        static func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

        /// The value of 4 hex digits.
        static func hexValue(_ digits: ArraySlice<UInt8>) -> UInt16 {
            digits.reduce(0) { value, b in
                let digit: UInt8 = isDigit(b) ? b - UInt8(ascii: "0") : (b | 0x20) - UInt8(ascii: "a") + 10
                return value << 4 | UInt16(digit)
            }
        }

        /// The code unit of a `\uXXXX` escape starting at `i`, nil when there is none.
        static func escapedUnit(_ bytes: [UInt8], at i: Int) -> UInt16? {
            guard i + 6 <= bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u"),
                  bytes[(i + 2)..<(i + 6)].allSatisfy(isHex) else { return nil }
            return hexValue(bytes[(i + 2)..<(i + 6)])
        }

        static func isHex(_ b: UInt8) -> Bool {
            isDigit(b) || (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "f")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "F"))
        }

        /// `params.stop[2]` from ["params", "stop", "[2]"].
        static func render(_ path: [String]) -> String {
            var out = ""
            for part in path {
                if part.hasPrefix("[") { out += part } else { out += out.isEmpty ? part : "." + part }
            }
            return out.isEmpty ? "(the whole line)" : out
        }

        /// The request id if the token is an integer or a string.
        static func id(_ token: [UInt8]) -> RPCID? {
            if let value = try? WireCodec.decoder.decode(Int.self, from: Data(token)) { return .number(value) }
            if let value = try? WireCodec.decoder.decode(String.self, from: Data(token)) { return .string(value) }
            return nil
        }
    }
}
