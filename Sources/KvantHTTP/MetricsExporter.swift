import ControlProtocol
import Foundation
import KvantDaemon
import Prometheus

/// `GET /metrics`: the Prometheus text format of one registry.
///
/// Counters and histograms (`EngineMetrics.Name`) are written by the engine through the swift-metrics
/// factory made by `makeMetricsFactory(registry:)`; the gauges below are read from the engine's
/// `stats` at scrape time, so `/metrics` and the control socket's `stats` show the same numbers:
///
/// | metric | type | meaning |
/// |---|---|---|
/// | `kvant:num_requests_running` | gauge | requests prefilling or decoding (`requests_running`) |
/// | `kvant:num_requests_waiting` | gauge | requests waiting for a sequence slot or KV blocks (`requests_waiting`) |
/// | `kvant:kv_cache_usage_perc` | gauge | fraction 0…1 of the KV blocks in use (vLLM's name; `Engine.kvCacheUsage`, as STATUS=) |
/// | `kvant:cache_config_info{cache_dtype, block_size, scale_source, scale_sha256}` | gauge = 1 | the KV cache in force |
/// | `kvant:kv_scale_epoch` | gauge | epoch of the installed static scales (0 when none) |
/// | `kvant:kv_scale_saturation_total{layer}` | counter | int8 values clipped at ±127, per layer |
/// | `kvant:kv_cache_bytes_per_token` | gauge | bytes of K and V each further token of a long sequence costs: full-attention layers only (`kv_cache.bytes_per_token`; all layers without sliding windows) |
/// | `kvant:prefix_cache_queries_total` | counter | prompt tokens looked up in the prefix cache (vLLM's `vllm:prefix_cache_queries`) |
/// | `kvant:prefix_cache_hits_total` | counter | of those, tokens served from the cache (vLLM's `vllm:prefix_cache_hits`) |
/// | `kvant:num_preemptions_total` | counter | sequences preempted because the KV cache ran out of blocks (`num_preemptions`; vLLM's `vllm:num_preemptions`) |
public final class MetricsExporter: @unchecked Sendable {
    public let registry: PrometheusCollectorRegistry
    private let lock = NSLock()
    private var infoGauge: Gauge?
    private var infoLabels: [(String, String)] = []
    private var saturationSeen: [Int: Int64] = [:]
    private var prefixSeen: [String: Int64] = [:]

    public init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    /// The swift-metrics factory the engine's `EngineMetrics` write through: vLLM's buckets per histogram.
    public static func makeMetricsFactory(registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = EngineMetrics.durationBuckets.mapValues { $0.map { Duration.nanoseconds(Int64($0 * 1e9)) } }
        let tokens = EngineMetrics.tokenBuckets()
        factory.valueHistogramBuckets = [EngineMetrics.Name.requestPromptTokens: tokens,
                                         EngineMetrics.Name.requestGenerationTokens: tokens]
        return factory
    }

    /// Refreshes the gauges from `engine.stats()` and renders the registry.
    public func scrape(engine: Engine) async -> String {
        let stats = try? await engine.stats()
        update(stats, usage: await engine.kvCacheUsage)
        return registry.emitToString()
    }

    /// A metric name as written (`kvant:…`), no unit suffix added: swift-prometheus joins the non-empty parts.
    private static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    private func gauge(_ name: String, _ help: String) -> Gauge { registry.makeGauge(descriptor: Self.descriptor(name, help)) }

    func update(_ stats: StatsResult?, usage: KVCacheUsage?) {
        lock.lock(); defer { lock.unlock() }
        let engine = stats?.engine
        gauge("kvant:num_requests_running", "Requests prefilling or decoding.").set(Double(engine?.requestsRunning ?? 0))
        gauge("kvant:num_requests_waiting", "Requests waiting for a sequence slot or KV-cache blocks.").set(Double(engine?.requestsWaiting ?? 0))
        let cache = stats?.kvCache ?? .null
        gauge("kvant:kv_cache_usage_perc", "Fraction of KV-cache blocks in use, 0 to 1.").set(usage?.fraction ?? 0)
        gauge("kvant:kv_cache_bytes_per_token", "Bytes of K and V per token of a long sequence: full-attention layers only (sliding-window layers hold just their window).").set(Double(cache["bytes_per_token"]?.doubleValue ?? 0))
        gauge("kvant:kv_scale_epoch", "Epoch of the installed static KV scales (0 when none).").set(Double(cache["scale_epoch"]?.doubleValue ?? 0))

        // Preemptions: the engine's cumulative count, added to the counter as it grows.
        let preemptions = registry.makeCounter(descriptor: Self.descriptor(
            "kvant:num_preemptions_total", "Sequences preempted because the KV cache ran out of blocks (freed, recomputed later)."))
        if let now = engine.map({ Int64($0.numPreemptions) }) {
            let seen = prefixSeen["num_preemptions"] ?? 0
            if now > seen { preemptions.increment(by: now - seen) }
            prefixSeen["num_preemptions"] = max(seen, now)
        }

        // Info gauge: one series with the labels in force; a change replaces it.
        var labels: [(String, String)] = []
        if let model = stats?.model {
            labels = [("cache_dtype", model.kvCacheDType.rawValue), ("block_size", String(model.blockSize)),
                      ("scale_source", cache["scale_source"]?.stringValue ?? "none"),
                      ("scale_sha256", cache["scale_sha256"]?.stringValue ?? "")]
        }
        if !labels.elementsEqual(infoLabels, by: { $0 == $1 }) {
            if let old = infoGauge { registry.unregisterGauge(old) }
            infoGauge = labels.isEmpty ? nil
                : registry.makeGauge(descriptor: Self.descriptor("kvant:cache_config_info", "The KV cache in force (value 1)."), labels: labels)
            infoGauge?.set(Double(1))
            infoLabels = labels
        }

        // Prefix-cache counters are cumulative per pool; a new pool (set-kv-dtype) starts again at 0.
        for (key, name, help) in [
            ("prefix_cache_queries", "kvant:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache."),
            ("prefix_cache_hits", "kvant:prefix_cache_hits_total", "Prompt tokens served from the prefix cache (their prefill skipped)."),
        ] {
            let counter = registry.makeCounter(descriptor: Self.descriptor(name, help))
            guard let now = cache[key]?.intValue.map(Int64.init) else { continue }
            let seen = prefixSeen[key] ?? 0
            let delta = now >= seen ? now - seen : now
            if delta > 0 { counter.increment(by: delta) }
            prefixSeen[key] = now
        }

        // Saturation counts are cumulative per pool; a new pool (set-kv-dtype) starts again at 0.
        if case .array(let counts)? = cache["saturation_counts"] {
            for (layer, value) in counts.enumerated() {
                let now = Int64(value.intValue ?? 0)
                let seen = saturationSeen[layer] ?? 0
                let delta = now >= seen ? now - seen : now
                let counter = registry.makeCounter(descriptor: Self.descriptor("kvant:kv_scale_saturation_total",
                                                                                   "int8 KV values clipped at ±127 by a static scale, per layer."),
                                                   labels: [("layer", String(layer))])
                if delta > 0 { counter.increment(by: delta) }
                saturationSeen[layer] = now
            }
        }
    }
}
