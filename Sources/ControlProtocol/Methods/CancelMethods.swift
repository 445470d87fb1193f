import KvantCore

/// `cancel` params: the id of a request sent earlier on the same connection.
public struct CancelParams: Codable, Equatable, Sendable {
    public var id: RPCID
    public init(id: RPCID) { self.id = id }
}

/// `cancel` result: false when no such request was running (already finished or never sent).
public struct CancelResult: Codable, Equatable, Sendable {
    public var cancelled: Bool
    public init(cancelled: Bool) { self.cancelled = cancelled }
}
