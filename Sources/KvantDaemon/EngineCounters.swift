/// The engine's running totals since start-up, read by `stats` (`EngineFigures`). Plain values,
/// owned and mutated by the `Engine` actor only.
struct EngineCounters: Sendable {
    /// Requests that ran to an end (stop, length or cancelled).
    var served = 0
    /// Requests and long operations that failed with an error.
    var failed = 0
    /// Prompt tokens prefilled.
    var promptTokens = 0
    /// Tokens generated and streamed (end-of-sequence tokens excluded).
    var generatedTokens = 0
    /// Time spent in prefill, nanoseconds (all requests).
    var prefillNanos: UInt64 = 0
    /// Time from the end of prefill to the end of each request, nanoseconds (all requests).
    var decodeNanos: UInt64 = 0
    /// Decode steps run (tokens after the first of each request).
    var decodeTokens = 0
    /// Open control connections.
    var connections = 0

    /// Prompt tokens per second of prefill time, 0 before any prefill.
    var prefillTokensPerSecond: Double {
        prefillNanos > 0 ? Double(promptTokens) / (Double(prefillNanos) / 1e9) : 0
    }

    /// Decode steps per second of decode time, 0 before any decode.
    var decodeTokensPerSecond: Double {
        decodeNanos > 0 ? Double(decodeTokens) / (Double(decodeNanos) / 1e9) : 0
    }
}
