/// The stable error classes every layer of Kvant uses; the control protocol sends the
/// raw value as `reason` and `kvantctl` maps each to its own exit code.
public enum ErrorReason: String, Codable, Sendable, CaseIterable {
    case invalidArgument = "invalid_argument"
    case notFound = "not_found"
    case failedPrecondition = "failed_precondition"
    case resourceExhausted = "resource_exhausted"
    case unavailable
    case permissionDenied = "permission_denied"
    case cancelled
    case `internal`
}

/// An error with a stable reason and a message that names what was wrong and where
/// (file, field, layer, rank, …). Messages never echo file contents.
public struct KvantError: Error, CustomStringConvertible, Equatable, Sendable {
    public var reason: ErrorReason
    public var message: String

    public init(_ reason: ErrorReason, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { "\(reason.rawValue): \(message)" }
}

extension KvantError {
    /// Any error as a `KvantError`, the one normaliser every layer uses (engine, control server,
    /// request handler, HTTP): a `KvantError` keeps its reason and message (capped at
    /// `maxMessageCharacters`), cancellation becomes `.cancelled`, and errors of other types become
    /// `.internal` naming only their type, never details that could echo file contents.
    public static func normalized(_ error: any Error) -> KvantError {
        if let error = error as? KvantError { return error.capped }
        if error is CancellationError { return KvantError(.cancelled, "the request was cancelled") }
        return KvantError(.internal, "backend error: \(type(of: error))")
    }
}

extension KvantError {
    /// Longest message the daemon keeps or sends for one error, in characters (a message names a file,
    /// a field and a value; anything longer is a defect upstream that must not flood a reply or a log).
    public static let maxMessageCharacters = 4096

    /// `message` cut to `limit` characters with the length it had, so a stored or logged error stays small.
    public static func capped(_ message: String, limit: Int = maxMessageCharacters) -> String {
        guard message.count > limit else { return message }
        return String(message.prefix(limit)) + "… (message cut: \(message.utf8.count) bytes)"
    }

    /// The same error with its message capped (`capped(_:limit:)`).
    public var capped: KvantError { KvantError(reason, KvantError.capped(message)) }
}
