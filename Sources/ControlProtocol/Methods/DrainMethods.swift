import KvantCore

/// `drain` params. Draining takes the daemon out of a load balancer's rotation without stopping it:
/// the HTTP API's `/health` answers 503 `draining` and new HTTP requests get 503 with `Retry-After`,
/// while the requests in flight run to their end. kvantd drains the same way on SIGTERM before it exits.
public struct DrainParams: Codable, Equatable, Sendable {
    /// Wait (at most `shutdown_timeout_seconds`) until no HTTP generation request is in flight; default true.
    public var wait: Bool?
    /// End a drain instead: `/health` answers 200 again and new requests are served. Refused
    /// (`failed_precondition`) once shutdown began.
    public var resume: Bool?

    public init(wait: Bool? = nil, resume: Bool? = nil) {
        self.wait = wait
        self.resume = resume
    }
}

/// `drain` result.
public struct DrainResult: Codable, Equatable, Sendable {
    /// True while the daemon refuses new HTTP requests.
    public var draining: Bool
    /// HTTP generation requests (completions, chat completions) still running or waiting when the reply was sent.
    public var inFlight: Int
    /// True when nothing is in flight any more (the daemon can be stopped without cutting a request).
    public var drained: Bool
    /// Why the daemon drains: `drain` (this method) or `shutdown` (SIGTERM); nil when not draining.
    public var reason: String?
    /// Only in the reply to `resume`: true when a drain was in force and has ended, false when there was none.
    public var resumed: Bool?

    public init(draining: Bool, inFlight: Int, drained: Bool, reason: String?, resumed: Bool? = nil) {
        self.draining = draining
        self.inFlight = inFlight
        self.drained = drained
        self.reason = reason
        self.resumed = resumed
    }

    enum CodingKeys: String, CodingKey {
        case draining, inFlight = "in_flight", drained, reason, resumed
    }
}
