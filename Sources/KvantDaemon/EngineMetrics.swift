import ControlProtocol
import CoreMetrics
import Foundation

/// The engine's request and token metrics as swift-metrics handlers (kvantd's factory is
/// swift-prometheus', exposed at `GET /metrics`). `EngineCounters` calls these with every count it
/// makes for `stats`, so `stats` and `/metrics` move together. Names follow vLLM's (`vllm:` → `kvant:`):
///
/// | metric | type | unit | counted |
/// |---|---|---|---|
/// | `kvant:prompt_tokens_total` | counter | tokens | at prefill, per request |
/// | `kvant:generation_tokens_total` | counter | tokens | per token handed to the client (end-of-sequence tokens excluded) |
/// | `kvant:request_success_total{finished_reason}` | counter | requests | `stop`, `length`, `abort` (cancelled) |
/// | `kvant:time_to_first_token_seconds` | histogram | s | arrival → first token |
/// | `kvant:inter_token_latency_seconds` | histogram | s | between consecutive tokens of a request |
/// | `kvant:e2e_request_latency_seconds` | histogram | s | arrival → finish |
/// | `kvant:request_prompt_tokens` | histogram | tokens | per finished request |
/// | `kvant:request_generation_tokens` | histogram | tokens | per finished request |
///
/// Thread-safe. Without a factory the handlers are no-ops; `finishedRequests()` counts either way.
public final class EngineMetrics: @unchecked Sendable {
    /// Metric names (Prometheus text format; counters carry their `_total` suffix).
    public enum Name {
        public static let promptTokens = "kvant:prompt_tokens_total"
        public static let generationTokens = "kvant:generation_tokens_total"
        public static let requestSuccess = "kvant:request_success_total"
        public static let timeToFirstToken = "kvant:time_to_first_token_seconds"
        public static let interTokenLatency = "kvant:inter_token_latency_seconds"
        public static let e2eRequestLatency = "kvant:e2e_request_latency_seconds"
        public static let requestPromptTokens = "kvant:request_prompt_tokens"
        public static let requestGenerationTokens = "kvant:request_generation_tokens"
    }

    /// vLLM's histogram buckets (seconds), by metric name, for the factory's duration histograms.
    public static let durationBuckets: [String: [Double]] = [
        Name.timeToFirstToken: [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                                10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0],
        Name.interTokenLatency: [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                                 10.0, 20.0, 40.0, 80.0],
        Name.e2eRequestLatency: [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                                 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0],
    ]

    /// vLLM's 1-2-5 token buckets up to `maxModelLen` (its `build_1_2_5_buckets`), for the token histograms.
    public static func tokenBuckets(maxModelLen: Int = 1 << 17) -> [Double] {
        var buckets: [Double] = []
        var exponent = 1.0
        while true {
            for mantissa in [1.0, 2.0, 5.0] {
                let value = mantissa * exponent
                if value > Double(maxModelLen) { return buckets }
                buckets.append(value)
            }
            exponent *= 10
        }
    }

    /// `finished_reason` label of a finish reason (vLLM's words: a cancelled request is `abort`).
    public static func label(_ reason: FinishReason) -> String {
        switch reason {
        case .stop: return "stop"
        case .length: return "length"
        case .cancelled: return "abort"
        }
    }

    private let lock = NSLock()
    private var requestSuccess: [String: Int] = [:]

    private let factory: any MetricsFactory
    private let promptTokensCounter: Counter
    private let generationTokensCounter: Counter
    private var successCounters: [String: Counter] = [:]
    private let ttft: CoreMetrics.Timer
    private let itl: CoreMetrics.Timer
    private let e2e: CoreMetrics.Timer
    private let requestPromptTokens: Recorder
    private let requestGenerationTokens: Recorder

    /// - Parameter factory: where the metric handlers come from; the default keeps only the totals.
    public init(factory: any MetricsFactory = NOOPMetricsHandler.instance) {
        self.factory = factory
        promptTokensCounter = Counter(label: Name.promptTokens, factory: factory)
        generationTokensCounter = Counter(label: Name.generationTokens, factory: factory)
        ttft = CoreMetrics.Timer(label: Name.timeToFirstToken, factory: factory)
        itl = CoreMetrics.Timer(label: Name.interTokenLatency, factory: factory)
        e2e = CoreMetrics.Timer(label: Name.e2eRequestLatency, factory: factory)
        requestPromptTokens = Recorder(label: Name.requestPromptTokens, aggregate: true, factory: factory)
        requestGenerationTokens = Recorder(label: Name.requestGenerationTokens, aggregate: true, factory: factory)
        // Every reason exists from the start (0), as dashboards expect.
        for reason in ["stop", "length", "abort"] {
            successCounters[reason] = Counter(label: Name.requestSuccess, dimensions: [("finished_reason", reason)], factory: factory)
            requestSuccess[reason] = 0
        }
    }

    /// A prompt of `count` tokens was prefilled (called by `EngineCounters`).
    func promptProcessed(_ count: Int) {
        promptTokensCounter.increment(by: count)
    }

    /// One token went to the client. `sincePrevious`: nanoseconds since the request's previous token
    /// (nil for its first); `sinceArrival` for the first: nanoseconds since the request arrived (TTFT).
    func tokenGenerated(sinceArrival: UInt64?, sincePrevious: UInt64?) {
        generationTokensCounter.increment(by: 1)
        if let sinceArrival { ttft.recordNanoseconds(Int64(clamping: sinceArrival)) }
        if let sincePrevious { itl.recordNanoseconds(Int64(clamping: sincePrevious)) }
    }

    /// A request finished (also when cancelled; not when it failed with an error).
    func requestFinished(_ reason: FinishReason, promptTokens prompt: Int, generationTokens generated: Int,
                                latencyNanoseconds: UInt64) {
        let label = Self.label(reason)
        lock.lock(); defer { lock.unlock() }
        requestSuccess[label, default: 0] += 1
        successCounters[label]?.increment(by: 1)
        e2e.recordNanoseconds(Int64(clamping: latencyNanoseconds))
        requestPromptTokens.record(prompt)
        requestGenerationTokens.record(generated)
    }

    /// Finished requests by `finished_reason` (`stop`, `length`, `abort`) so far.
    public func finishedRequests() -> [String: Int] {
        lock.lock(); defer { lock.unlock() }
        return requestSuccess
    }
}
