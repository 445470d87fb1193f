import Foundation

/// Any JSON value, for fields whose shape is owned by another layer (e.g. the KV-cache stats
/// object the backend reports) and for the raw `params` of a request before it is decoded
/// into its typed form.
///
/// Integers that fit in `Int` decode as `.int`, every other number as `.double`.
public enum JSONValue: Codable, Equatable, Sendable, CustomStringConvertible {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null; return }
        if let value = try? container.decode(Bool.self) { self = .bool(value); return }
        if let value = try? container.decode(Int.self) { self = .int(value); return }
        if let value = try? container.decode(Double.self) { self = .double(value); return }
        if let value = try? container.decode(String.self) { self = .string(value); return }
        if let value = try? container.decode([JSONValue].self) { self = .array(value); return }
        if let value = try? container.decode([String: JSONValue].self) { self = .object(value); return }
        throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a JSON value")
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .int(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// Converts any `Encodable` value into a `JSONValue` (through its JSON encoding).
    public init<T: Encodable>(encoding value: T) throws {
        let data = try WireCodec.encoder.encode(value)
        self = try WireCodec.decoder.decode(JSONValue.self, from: data)
    }

    /// Decodes this value as `T`; throws `DecodingError` naming the failing field.
    public func decode<T: Decodable>(as type: T.Type) throws -> T {
        let data = try WireCodec.encoder.encode(self)
        return try WireCodec.decoder.decode(T.self, from: data)
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    public var intValue: Int? {
        switch self {
        case .int(let value): return value
        case .double(let value) where value == value.rounded() && abs(value) < 9e15: return Int(value)
        default: return nil
        }
    }

    public var doubleValue: Double? {
        switch self {
        case .int(let value): return Double(value)
        case .double(let value): return value
        default: return nil
        }
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    public var description: String {
        guard let data = try? WireCodec.encoder.encode(self), let text = String(data: data, encoding: .utf8) else {
            return "<unencodable>"
        }
        return text
    }
}
