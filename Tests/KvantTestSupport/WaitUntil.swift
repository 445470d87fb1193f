import Foundation

/// The condition a test waited for never came true.
public struct GaveUpWaiting: Error, CustomStringConvertible {
    public let what: String
    public var description: String { "gave up waiting until \(what)" }
}

/// Polls `condition` every 2 ms until it is true: a wait on an event, not a duration. The bound
/// (about 2 minutes) only ends a test that would otherwise hang.
/// - Throws: `GaveUpWaiting` naming `what`.
public func waitUntil(_ what: String, _ condition: () async throws -> Bool) async throws {
    for _ in 0..<60_000 {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(2))
    }
    throw GaveUpWaiting(what: what)
}
