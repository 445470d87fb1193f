import Foundation
import KvantCore

/// The protocol version reported by `version` (`protocol_version`). Bumped only for
/// incompatible changes; new methods and fields are additive and keep the version.
public let controlProtocolVersion = 1

/// A JSON-RPC 2.0 request id: a number or a string (JSON-RPC 2.0 §4). `null` ids are not used.
public enum RPCID: Codable, Hashable, Sendable, CustomStringConvertible {
    case number(Int)
    case string(String)

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let value = try? container.decode(Int.self) { self = .number(value); return }
        if let value = try? container.decode(String.self) { self = .string(value); return }
        throw DecodingError.dataCorruptedError(in: container, debugDescription: "id must be an integer or a string")
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .number(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        }
    }

    public var description: String {
        switch self {
        case .number(let value): return String(value)
        case .string(let value): return "\"\(value)\""
        }
    }
}

/// A request (`id` present) or a client notification (`id` absent): JSON-RPC 2.0 §4.
/// `params` stays raw here; `decodeParams(_:)` turns it into the method's typed parameters.
public struct RPCRequest: Codable, Equatable, Sendable {
    public var jsonrpc: String
    public var id: RPCID?
    public var method: String
    public var params: JSONValue?

    public init(id: RPCID?, method: String, params: JSONValue? = nil) {
        self.jsonrpc = "2.0"
        self.id = id
        self.method = method
        self.params = params
    }

    public init<P: Encodable>(id: RPCID?, method: RPCMethod, params: P) throws {
        self.init(id: id, method: method.rawValue, params: try JSONValue(encoding: params))
    }

    /// Decodes `params` as `P`. Absent params decode as an empty object, so methods whose
    /// fields are all optional accept both `{}` and no `params` at all. Unknown fields are
    /// ignored (the protocol grows by adding fields).
    /// - Throws: `KvantError(.invalidArgument)` naming the method and the failing field.
    public func decodeParams<P: Decodable>(_ type: P.Type) throws -> P {
        let raw = params ?? .object([:])
        guard case .object = raw else {
            throw KvantError(.invalidArgument, "params of '\(method)' must be a JSON object (by-name parameters)")
        }
        do {
            return try raw.decode(as: P.self)
        } catch let error as DecodingError {
            throw KvantError(.invalidArgument, "invalid params for '\(method)': \(describe(error))")
        }
    }
}

/// The error object of a failed request (JSON-RPC 2.0 §5.1): `code`, `message`, and
/// `data.reason` — the stable `ErrorReason` raw value (`invalid_argument`, `not_found`, …).
public struct RPCErrorObject: Codable, Equatable, Sendable, Error, CustomStringConvertible {
    public struct Data: Codable, Equatable, Sendable {
        public var reason: ErrorReason
        public init(reason: ErrorReason) { self.reason = reason }
    }

    public var code: Int
    public var message: String
    public var data: Data?

    public init(code: Int, message: String, reason: ErrorReason) {
        self.code = code
        self.message = message
        self.data = Data(reason: reason)
    }

    /// The error for a `KvantError` raised anywhere in the daemon; the one place the
    /// mapping `ErrorReason` → JSON-RPC code is applied.
    public init(_ error: KvantError) {
        self.init(code: RPCErrorCode.code(for: error.reason), message: error.message, reason: error.reason)
    }

    /// The reason, falling back to the code's meaning when `data` is absent (other servers).
    public var reason: ErrorReason { data?.reason ?? RPCErrorCode.reason(for: code) }

    /// This error as a `KvantError` (reason and message).
    public var kvantError: KvantError { KvantError(reason, message) }

    public var description: String { "\(reason.rawValue) (\(code)): \(message)" }
}

/// JSON-RPC 2.0 error codes (§5.1) and the server-defined range -32000…-32099 used for the
/// remaining `ErrorReason`s.
public enum RPCErrorCode {
    public static let parseError = -32700
    public static let invalidRequest = -32600
    public static let methodNotFound = -32601
    public static let invalidParams = -32602
    public static let internalError = -32603
    public static let notFound = -32001
    public static let failedPrecondition = -32002
    public static let resourceExhausted = -32003
    public static let unavailable = -32004
    public static let permissionDenied = -32005
    public static let cancelled = -32006

    /// The code sent for an application error of the given reason.
    public static func code(for reason: ErrorReason) -> Int {
        switch reason {
        case .invalidArgument: return invalidParams
        case .notFound: return notFound
        case .failedPrecondition: return failedPrecondition
        case .resourceExhausted: return resourceExhausted
        case .unavailable: return unavailable
        case .permissionDenied: return permissionDenied
        case .cancelled: return cancelled
        case .internal: return internalError
        }
    }

    /// The reason a code stands for (used only when an error object carries no `data.reason`).
    public static func reason(for code: Int) -> ErrorReason {
        switch code {
        case parseError, invalidRequest, invalidParams: return .invalidArgument
        case methodNotFound, notFound: return .notFound
        case failedPrecondition: return .failedPrecondition
        case resourceExhausted: return .resourceExhausted
        case unavailable: return .unavailable
        case permissionDenied: return .permissionDenied
        case cancelled: return .cancelled
        default: return .internal
        }
    }
}

/// A response (JSON-RPC 2.0 §5): exactly one of `result` and `error`. `id` is `nil` only for
/// errors about a line whose id could not be read (parse errors, over-long lines).
public struct RPCResponse: Codable, Equatable, Sendable {
    public var jsonrpc: String
    public var id: RPCID?
    public var result: JSONValue?
    public var error: RPCErrorObject?

    public init(id: RPCID?, result: JSONValue) {
        self.jsonrpc = "2.0"
        self.id = id
        self.result = result
        self.error = nil
    }

    public init(id: RPCID?, error: RPCErrorObject) {
        self.jsonrpc = "2.0"
        self.id = id
        self.result = nil
        self.error = error
    }

    enum CodingKeys: String, CodingKey { case jsonrpc, id, result, error }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        jsonrpc = try container.decode(String.self, forKey: .jsonrpc)
        id = try container.decodeIfPresent(RPCID.self, forKey: .id)
        error = try container.decodeIfPresent(RPCErrorObject.self, forKey: .error)
        if error == nil {
            guard container.contains(.result) else {
                throw DecodingError.keyNotFound(CodingKeys.result, .init(codingPath: [], debugDescription: "a response needs result or error"))
            }
            result = try container.decode(JSONValue.self, forKey: .result)
        } else {
            result = nil
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(jsonrpc, forKey: .jsonrpc)
        // JSON-RPC 2.0: id is required in a response, null when it could not be determined.
        if let id { try container.encode(id, forKey: .id) } else { try container.encodeNil(forKey: .id) }
        if let error { try container.encode(error, forKey: .error) } else { try container.encode(result ?? .null, forKey: .result) }
    }

    /// Decodes `result` as `R`, or throws the error object.
    public func decodeResult<R: Decodable>(_ type: R.Type) throws -> R {
        if let error { throw error }
        do {
            return try (result ?? .null).decode(as: R.self)
        } catch let error as DecodingError {
            throw KvantError(.internal, "malformed result from the daemon: \(describe(error))")
        }
    }
}

/// A server notification (no id): `generate.token`, `calibrate.progress`, `perplexity.progress`.
public struct RPCNotification: Codable, Equatable, Sendable {
    public var jsonrpc: String
    public var method: String
    public var params: JSONValue

    public init(method: String, params: JSONValue) {
        self.jsonrpc = "2.0"
        self.method = method
        self.params = params
    }

    public init<P: Encodable>(method: NotificationMethod, params: P) throws {
        self.init(method: method.rawValue, params: try JSONValue(encoding: params))
    }
}

/// What a client reads from the server: a response to one of its requests or a notification.
public enum RPCServerMessage: Equatable, Sendable {
    case response(RPCResponse)
    case notification(RPCNotification)
}

extension KeyedDecodingContainer {
    /// Decodes an optional integer field. A number that is not an integer or does not fit in `Int`
    /// (`2.5`, `1e30`, `99999999999999999999`) throws `DecodingError.dataCorrupted` naming the field
    /// and saying an integer is expected, instead of the decoder's generic message.
    public func decodeIntegerIfPresent(forKey key: Key) throws -> Int? {
        guard contains(key), !(try decodeNil(forKey: key)) else { return nil }
        if let value = try? decode(Int.self, forKey: key) { return value }
        if let number = try? decode(Double.self, forKey: key) {
            throw DecodingError.dataCorruptedError(
                forKey: key, in: self,
                debugDescription: "expected an integer in \(Int.min)...\(Int.max), got \(number)")
        }
        return try decode(Int.self, forKey: key)   // the type-mismatch error (string, bool, …)
    }
}

/// Human-readable description of a `DecodingError`: the dotted field path and what was wrong.
public func describe(_ error: DecodingError) -> String {
    func path(_ codingPath: [CodingKey]) -> String {
        let text = codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        return text.isEmpty ? "(top level)" : text
    }
    switch error {
    case .keyNotFound(let key, let context):
        let parent = path(context.codingPath)
        return "missing field '\(key.stringValue)'" + (context.codingPath.isEmpty ? "" : " in \(parent)")
    case .typeMismatch(let type, let context):
        return "field '\(path(context.codingPath))' has the wrong type (expected \(typeName(type)))"
    case .valueNotFound(let type, let context):
        return "field '\(path(context.codingPath))' is null (expected \(typeName(type)))"
    case .dataCorrupted(let context):
        return "field '\(path(context.codingPath))': \(context.debugDescription)"
    @unknown default:
        return "undecodable value"
    }
}

private func typeName(_ type: Any.Type) -> String {
    switch type {
    case is String.Type: return "a string"
    case is Int.Type, is Int64.Type, is Int32.Type, is UInt64.Type: return "an integer"
    case is Double.Type, is Float.Type: return "a number"
    case is Bool.Type: return "a boolean"
    case is [String].Type: return "an array of strings"
    default:
        let name = String(describing: type)
        if name.hasPrefix("Array") { return "an array" }
        if name.hasPrefix("Dictionary") { return "an object" }
        return name
    }
}
