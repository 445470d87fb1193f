import Foundation
import KvantCore

/// The line codec: one JSON-RPC 2.0 message per line, UTF-8, terminated by `\n` (LF).
///
/// A line must not contain a raw newline; JSON escapes newlines in strings, so an encoded
/// message never does. Lines may end in `\r\n` (the `\r` is ignored) for hand-typed input
/// with `socat`.
public enum WireCodec {
    /// The longest request line the daemon accepts, in bytes, newline excluded: 1 MiB.
    public static let maxRequestLineBytes = 1 << 20
    /// The longest line a client accepts from the daemon, in bytes (large `tokenize` replies).
    public static let maxResponseLineBytes = 64 << 20

    /// Shared encoder: compact, keys sorted (stable output for tests and diffs), no `\/` escaping.
    public static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    public static let decoder = JSONDecoder()

    /// Encodes a message as one line, `\n` included.
    public static func encodeLine<T: Encodable>(_ message: T) throws -> [UInt8] {
        var bytes = [UInt8](try encoder.encode(message))
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    /// Decodes one request line (without its `\n`).
    ///
    /// - Returns: the request, or the error response to send back (parse error with `id: null`,
    ///   or invalid request with the id when it could be read).
    public static func decodeRequest<Bytes: Collection>(line: Bytes) -> Result<RPCRequest, RPCResponseError> where Bytes.Element == UInt8 {
        let data = Data(trimmingCR(line))
        let raw: JSONValue
        do {
            raw = try decoder.decode(JSONValue.self, from: data)
        } catch {
            return .failure(parseFailure(Array(data)))
        }
        guard case .object(let object) = raw else {
            return .failure(.invalidRequest(id: nil, "a request must be a JSON object"))
        }
        var id: RPCID?
        if let rawID = object["id"] {
            switch rawID {
            case .int(let value): id = .number(value)
            case .string(let value): id = .string(value)
            case .null:
                // JSON-RPC 2.0 §4 discourages null ids; a silent "notification" would leave the client waiting.
                return .failure(.invalidRequest(id: nil, "'id' must be an integer or a string (null ids are not supported; leave 'id' out for a notification)"))
            default: return .failure(.invalidRequest(id: nil, "'id' must be an integer or a string"))
            }
        }
        guard object["jsonrpc"] == .string("2.0") else {
            return .failure(.invalidRequest(id: id, "'jsonrpc' must be \"2.0\""))
        }
        guard case .string(let method)? = object["method"] else {
            return .failure(.invalidRequest(id: id, "'method' must be a string"))
        }
        let params = object["params"]
        if let params {
            switch params {
            case .object, .null: break
            case .array: return .failure(RPCResponseError(id: id, error: RPCErrorObject(
                code: RPCErrorCode.invalidParams, message: "params of '\(method)' must be an object (by-name parameters)",
                reason: .invalidArgument)))
            default: return .failure(.invalidRequest(id: id, "'params' must be an object"))
            }
        }
        return .success(RPCRequest(id: id, method: method, params: params == .null ? nil : params))
    }

    /// The error reply for a line `JSONDecoder` refused, saying where and what (`JSONDiagnosis`): a
    /// parse error with its byte position, or, for valid JSON with a number out of range, an
    /// invalid-params error naming the field and keeping the request's id.
    static func parseFailure(_ bytes: [UInt8]) -> RPCResponseError {
        func parseError(_ message: String) -> RPCResponseError {
            RPCResponseError(id: nil, error: RPCErrorObject(code: RPCErrorCode.parseError, message: "parse error: \(message)",
                                                            reason: .invalidArgument))
        }
        switch JSONDiagnosis.diagnose(bytes) {
        case .syntax(let offset, let expected):
            let place = offset < bytes.count ? "at byte \(offset + 1) of \(bytes.count)" : "at the end of the line (\(bytes.count) bytes)"
            return parseError("the line is not valid JSON: \(place), expected \(expected)")
        case .notUTF8:
            return parseError("the line is not valid UTF-8 (\(bytes.count) bytes)")
        case .loneSurrogate(let offset, let path, let unit, let inKey, _):
            let whole = path == "(the whole line)"
            let place = inKey ? (whole ? "a top-level key" : "a key in '\(path)'") : (whole ? "the line" : "'\(path)'")
            return parseError("the line has a string that is no Unicode text: at byte \(offset + 1) of \(bytes.count), the string of \(place) has \(JSONDiagnosis.surrogateProblem(codeUnit: unit))")
        case .numberOutOfRange(let path, let literal, let id):
            let field = path.hasPrefix("params.") ? String(path.dropFirst("params.".count)) : path
            return RPCResponseError(id: id, error: RPCErrorObject(
                code: RPCErrorCode.invalidParams,
                message: "'\(field)' = \(literal) is out of range (numbers must fit a 64-bit float)", reason: .invalidArgument))
        case .valid:
            return parseError("the line is not valid JSON (\(bytes.count) bytes)")
        }
    }

    /// Decodes one line the daemon sent: a response (has `id` and `result`/`error`) or a notification.
    /// - Throws: `KvantError(.internal)` when the line is neither.
    public static func decodeServerMessage<Bytes: Collection>(line: Bytes) throws -> RPCServerMessage where Bytes.Element == UInt8 {
        let data = Data(trimmingCR(line))
        let raw: JSONValue
        do {
            raw = try decoder.decode(JSONValue.self, from: data)
        } catch {
            throw KvantError(.internal, "the daemon sent a line that is not JSON (\(data.count) bytes)")
        }
        guard case .object(let object) = raw else {
            throw KvantError(.internal, "the daemon sent a JSON value that is not an object")
        }
        do {
            if object["method"] != nil && object["id"] == nil {
                return .notification(try raw.decode(as: RPCNotification.self))
            }
            return .response(try raw.decode(as: RPCResponse.self))
        } catch let error as DecodingError {
            throw KvantError(.internal, "the daemon sent a malformed message: \(describe(error))")
        }
    }

    private static func trimmingCR<Bytes: Collection>(_ line: Bytes) -> [UInt8] where Bytes.Element == UInt8 {
        var bytes = Array(line)
        if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
        return bytes
    }
}

/// An error response decided while decoding a request line.
public struct RPCResponseError: Error, Equatable, Sendable {
    public var id: RPCID?
    public var error: RPCErrorObject

    public init(id: RPCID?, error: RPCErrorObject) {
        self.id = id
        self.error = error
    }

    static func invalidRequest(id: RPCID?, _ message: String) -> RPCResponseError {
        RPCResponseError(id: id, error: RPCErrorObject(code: RPCErrorCode.invalidRequest, message: "invalid request: \(message)",
                                                       reason: .invalidArgument))
    }

    public var response: RPCResponse { RPCResponse(id: id, error: error) }
}

/// Splits a byte stream into lines with a maximum length, for both ends of the socket.
///
/// Bytes are appended as they arrive; `nextLine()` returns complete lines (without `\n`).
/// When more than `maxLineBytes` bytes arrive without a newline, `nextLine()` reports
/// `.overlong` once and then discards bytes up to and including the next newline, so the
/// stream resynchronises on the following line and no memory grows with the bad line.
public struct LineFramer: Sendable {
    public enum Event: Equatable, Sendable {
        case line([UInt8])
        /// A line longer than the limit was dropped; `bytesSeen` counts the bytes read of it so far.
        case overlong(bytesSeen: Int)
    }

    public let maxLineBytes: Int
    private var buffer: [UInt8] = []
    private var scanned = 0
    private var discarding = false
    private var discardedCount = 0

    public init(maxLineBytes: Int) {
        self.maxLineBytes = maxLineBytes
    }

    /// At the end of the input (EOF or the peer's half-close): the bytes of a last line that had no
    /// newline, as a line (nil when nothing is pending or an over-long line was being discarded).
    public mutating func finish() -> Event? {
        defer { buffer.removeAll(); scanned = 0; discarding = false; discardedCount = 0 }
        guard !discarding, !buffer.isEmpty else { return nil }
        return .line(buffer)
    }

    /// Bytes buffered and not yet returned as a line.
    public var bufferedByteCount: Int { buffer.count }

    public mutating func append<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        buffer.append(contentsOf: bytes)
    }

    /// The next complete line or over-long event, or nil when more bytes are needed.
    public mutating func nextLine() -> Event? {
        while true {
            if discarding {
                if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                    buffer.removeSubrange(0...newline)
                    discarding = false
                    discardedCount = 0
                    scanned = 0
                    continue
                }
                discardedCount += buffer.count
                buffer.removeAll(keepingCapacity: true)
                return nil
            }
            if let newline = buffer[scanned...].firstIndex(of: UInt8(ascii: "\n")) {
                if newline > maxLineBytes {
                    buffer.removeSubrange(0...newline)
                    scanned = 0
                    return .overlong(bytesSeen: newline)
                }
                let line = Array(buffer[0..<newline])
                buffer.removeSubrange(0...newline)
                scanned = 0
                return .line(line)
            }
            if buffer.count > maxLineBytes {
                let seen = buffer.count
                buffer.removeAll(keepingCapacity: false)
                scanned = 0
                discarding = true
                discardedCount = seen
                return .overlong(bytesSeen: seen)
            }
            scanned = buffer.count
            return nil
        }
    }
}
