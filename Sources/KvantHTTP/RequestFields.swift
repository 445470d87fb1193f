import ControlProtocol
import Foundation
import KvantCore

/// The JSON object of a request body with typed getters whose errors name the field (400).
///
/// JSON `null` counts as absent (clients send `"stop": null`); unknown fields are ignored, as vLLM does.
struct RequestFields {
    let object: [String: JSONValue]
    /// Prefix of field names in errors (`messages[2].`).
    let path: String

    /// Parses a request body. - Throws: 400 for invalid JSON or a body that is not a JSON object.
    init(body: Data) throws {
        guard !body.isEmpty else { throw OpenAIError(.badRequest, "the request body is empty; expected a JSON object") }
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: body)
        } catch {
            throw Self.diagnosis(body, error)
        }
        guard case .object(let object) = value else {
            throw OpenAIError(.badRequest, "the request body must be a JSON object, got \(Self.typeName(value))")
        }
        // The decoder kept one of a key's values silently; which one differs between parsers (Python's json, as
        // vLLM uses, keeps the last): refused rather than guessed.
        if let duplicate = JSONDuplicateKeys.find(in: [UInt8](body)) {
            let field = Self.shown(duplicate.field)
            throw OpenAIError(.badRequest,
                              "'\(field)': the key appears twice in one object (the second at byte \(duplicate.offset) of \(body.count)); give each key once",
                              param: field)
        }
        self.init(object, path: "")
    }

    /// A field name from the request as an error shows it: control characters escaped, at most 64 characters.
    static func shown(_ name: String) -> String {
        var out = ""
        for scalar in name.unicodeScalars {
            if scalar.properties.generalCategory == .control || scalar.properties.generalCategory == .format {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out.count > 64 ? String(out.prefix(64)) + "…" : out
    }

    init(_ object: [String: JSONValue], path: String) {
        self.object = object
        self.path = path
    }

    /// Why `JSONDecoder` refused `body`, said as precisely as the control socket says it (JSONDiagnosis):
    /// the byte offset and what was expected, the field whose number no 64-bit float holds, the field and byte
    /// offset of a lone surrogate escape (`"\ud800"`), or not UTF-8.
    static func diagnosis(_ body: Data, _ error: Error) -> OpenAIError {
        switch JSONDiagnosis.diagnose([UInt8](body)) {
        case .syntax(let offset, let expected):
            return OpenAIError(.badRequest, "the request body is not valid JSON: at byte \(offset) of \(body.count), expected \(expected)")
        case .numberOutOfRange(let path, let literal, _):
            return OpenAIError(.badRequest, "'\(path)': \(literal) is out of range (numbers must fit a 64-bit float)", param: path)
        case .notUTF8:
            return OpenAIError(.badRequest, "the request body is not UTF-8 text (\(body.count) bytes)")
        case .loneSurrogate(let offset, let path, let unit, let inKey, _):
            let field = shown(path)
            let whole = path == "(the whole line)"
            let place = inKey ? (whole ? "a top-level key" : "a key of '\(field)'") : (whole ? "the body" : "'\(field)'")
            return OpenAIError(.badRequest,
                               "the request body has a string that is no Unicode text: at byte \(offset) of \(body.count), the string of \(place) has \(JSONDiagnosis.surrogateProblem(codeUnit: unit))",
                               param: inKey || whole ? nil : field)
        case .valid:
            return OpenAIError(.badRequest, "the request body is not valid JSON (\(body.count) bytes)\(position(error))")
        }
    }

    private static func position(_ error: Error) -> String {
        let description = "\((error as NSError).userInfo[NSDebugDescriptionErrorKey] ?? "")"
        guard let range = description.range(of: #"(line \d+, column \d+|around (line|character) \d+[^.]*)"#, options: .regularExpression)
        else { return "" }
        return " near \(description[range])"
    }

    /// JSON's name of a value's type, for error messages.
    static func typeName(_ value: JSONValue) -> String {
        switch value {
        case .null: return "null"
        case .bool: return "a boolean"
        case .int: return "an integer"
        case .double: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    func name(_ key: String) -> String { path + key }

    subscript(key: String) -> JSONValue? {
        guard let value = object[key], value != .null else { return nil }
        return value
    }

    func has(_ key: String) -> Bool { self[key] != nil }

    func wrongType(_ key: String, _ expected: String, _ value: JSONValue) -> OpenAIError {
        .invalidField(name(key), "expected \(expected), got \(Self.typeName(value))")
    }

    func string(_ key: String) throws -> String? {
        guard let value = self[key] else { return nil }
        guard case .string(let text) = value else { throw wrongType(key, "a string", value) }
        return text
    }

    func bool(_ key: String) throws -> Bool? {
        guard let value = self[key] else { return nil }
        guard case .bool(let flag) = value else { throw wrongType(key, "a boolean", value) }
        return flag
    }

    /// An integer (a JSON number without a fraction: `5`, `5.0`, `1e3`), in `range` (default: a signed 64-bit
    /// integer, -2^63...2^63-1, vLLM's bound for `seed`).
    /// - Throws: 400 naming the field: "expected an integer, got a string" for another type, "expected an integer,
    ///   got 1.5" for a fraction, "must be in LOW...HIGH, got 1e+30" for a whole number out of `range`
    ///   (also one no 64-bit integer holds, as `2**64` or `1e30`, which JSON carries as a float).
    func int(_ key: String, in range: ClosedRange<Int>? = nil) throws -> Int? {
        guard let value = self[key] else { return nil }
        let bounds = range ?? Int.min...Int.max
        let outOfRange = { (shown: String) in
            OpenAIError.invalidField(self.name(key), "must be in \(bounds.lowerBound)...\(bounds.upperBound), got \(shown)")
        }
        let number: Int
        switch value {
        case .int(let n): number = n
        case .double(let d) where d.isFinite && d == d.rounded():
            // Int(exactly:) holds every whole double below 2^63 in magnitude (2^53 and up are whole and exact).
            guard let n = Int(exactly: d) else { throw outOfRange("\(d)") }
            number = n
        case .double(let d): throw OpenAIError.invalidField(name(key), "expected an integer in \(bounds.lowerBound)...\(bounds.upperBound), got \(d)")
        default: throw wrongType(key, "an integer", value)
        }
        if !bounds.contains(number) { throw outOfRange("\(number)") }
        return number
    }

    /// A finite number, in `range` when given.
    func double(_ key: String, in range: ClosedRange<Double>? = nil, exclusiveLower: Bool = false) throws -> Double? {
        guard let value = self[key] else { return nil }
        guard let number = value.doubleValue, number.isFinite else { throw wrongType(key, "a number", value) }
        if let range {
            let lowOK = exclusiveLower ? number > range.lowerBound : number >= range.lowerBound
            if !lowOK || number > range.upperBound {
                let low = exclusiveLower ? "(\(range.lowerBound)" : "[\(range.lowerBound)"
                throw OpenAIError.invalidField(name(key), "must be in \(low), \(range.upperBound)], got \(number)")
            }
        }
        return number
    }

    func object(_ key: String) throws -> RequestFields? {
        guard let value = self[key] else { return nil }
        guard case .object(let object) = value else { throw wrongType(key, "an object", value) }
        return RequestFields(object, path: name(key) + ".")
    }

    func array(_ key: String) throws -> [JSONValue]? {
        guard let value = self[key] else { return nil }
        guard case .array(let array) = value else { throw wrongType(key, "an array", value) }
        return array
    }

    /// `stream_options.include_usage` (default false). `stream_options` without `"stream": true` is refused as
    /// vLLM's `validate_stream_options` does (a non-empty object; `null` and `{}` pass), with its words.
    func streamOptionsIncludeUsage(stream: Bool) throws -> Bool {
        guard let options = try object("stream_options") else { return false }
        if !stream && !options.object.isEmpty {
            throw OpenAIError.invalidField(name("stream_options"), "Stream options can only be defined when `stream=True`.")
        }
        return try options.bool("include_usage") ?? false
    }

    /// `stop`: a string or a list of strings.
    func stringOrStrings(_ key: String) throws -> [String] {
        guard let value = self[key] else { return [] }
        switch value {
        case .string(let text): return [text]
        case .array(let items):
            return try items.enumerated().map { index, item in
                guard case .string(let text) = item else {
                    throw OpenAIError.invalidField("\(name(key))[\(index)]", "expected a string, got \(Self.typeName(item))")
                }
                return text
            }
        default: throw wrongType(key, "a string or an array of strings", value)
        }
    }
}
