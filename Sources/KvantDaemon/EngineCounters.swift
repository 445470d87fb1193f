import ControlProtocol

/// The engine's running totals since start-up, read by `stats` (`EngineFigures`). Plain values,
/// owned and mutated by the `Engine` actor only.
///
/// Prompt and generated tokens and finished requests are counted through the methods below, which
/// also feed `metrics` (the swift-metrics handlers `GET /metrics` exposes): one increment, two views,
/// so `stats` and `/metrics` cannot disagree.
struct EngineCounters: Sendable {
    /// Requests that ran to an end (stop, length or cancelled).
    var served = 0
    /// Requests and long operations that failed with an error.
    var failed = 0
    /// Prompt tokens prefilled.
    private(set) var promptTokens = 0
    /// Tokens generated and streamed (end-of-sequence tokens excluded).
    private(set) var generatedTokens = 0
    /// Time spent in prefill, nanoseconds (all requests).
    var prefillNanos: UInt64 = 0
    /// Time from the end of prefill to the end of each request, nanoseconds (all requests).
    var decodeNanos: UInt64 = 0
    /// Decode steps run (tokens after the first of each request).
    var decodeTokens = 0
    /// Open control connections.
    var connections = 0
    /// The metric handlers the counts above also go to.
    let metrics: EngineMetrics

    init(metrics: EngineMetrics = EngineMetrics()) { self.metrics = metrics }

    /// Prompt tokens per second of prefill time, 0 before any prefill.
    var prefillTokensPerSecond: Double {
        prefillNanos > 0 ? Double(promptTokens) / (Double(prefillNanos) / 1e9) : 0
    }

    /// Decode steps per second of decode time, 0 before any decode.
    var decodeTokensPerSecond: Double {
        decodeNanos > 0 ? Double(decodeTokens) / (Double(decodeNanos) / 1e9) : 0
    }

    /// A prompt of `count` tokens was prefilled.
    mutating func promptProcessed(_ count: Int) {
        promptTokens += count
        metrics.promptProcessed(count)
    }

    /// One token went to the client; `sinceArrival` (its first: time to first token) or `sincePrevious`
    /// (inter-token latency) in nanoseconds.
    mutating func tokenGenerated(sinceArrival: UInt64?, sincePrevious: UInt64?) {
        generatedTokens += 1
        metrics.tokenGenerated(sinceArrival: sinceArrival, sincePrevious: sincePrevious)
    }

    /// A request ended (stop, length or cancelled; not an error).
    func requestFinished(_ reason: FinishReason, promptTokens: Int, generationTokens: Int, latencyNanoseconds: UInt64) {
        metrics.requestFinished(reason, promptTokens: promptTokens, generationTokens: generationTokens,
                                latencyNanoseconds: latencyNanoseconds)
    }
}
