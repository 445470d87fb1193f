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
