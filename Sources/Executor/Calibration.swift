import Foundation
import KVCache
import KvantCore

/// Built-in KV-cache calibration: runs text through the model with an fp32 KV cache and records
/// the amax of post-RoPE K and of V per (layer, KV head) as the cache is written (`KVAmaxRecorder`),
/// and their |x| histograms, then turns them into static scales `clip / 127`: the shared scale of
/// vLLM's schema (`clip = max(amax_K, amax_V)` for `.max`, or a clipping value from the histograms,
/// `KVClipMethod`) and, unless `separateKV` is false, separate K and V scales chosen the same way
/// per tensor (the `k_scaling_factor` / `v_scaling_factor` extension, see `KVScales`).
///
/// This replaces the vendor guide's pipeline (TensorRT-LLM `convert_checkpoint.py --int8_kv_cache`,
/// then vLLM `examples/fp8/extract_scales.py`, then a hand-edited `model_type`): the keys are
/// recorded after RoPE, as attention reads them, on the model actually served.
public enum KVCalibrator {
    /// The clipping method of `calibrate` when none is asked for (see docs/kv-cache.md for the
    /// measurements behind the choice).
    public static let defaultMethod: KVClipMethod = .mse(keyWeight: 4)

    /// What one calibration run measured.
    public struct Result: Sendable {
        /// The scales, per layer or per (layer, KV head); with separate K/V scales when asked.
        public var scales: KVScales
        /// Tokens run through the model.
        public var tokens: Int
        /// amax of K and of V per layer (max over KV heads), before any clipping: `[numLayers]`.
        public var keyAmax: [Float]
        public var valueAmax: [Float]
        /// The clipping method used.
        public var method: KVClipMethod
        /// Fraction of the calibration text's K and V values per layer that the scales in force (the
        /// K and V scales; the shared one without `separateKV`) saturate (beyond ±127·s; max over
        /// heads for per-head), at histogram resolution: `[numLayers]`.
        public var keySaturation: [Double]
        public var valueSaturation: [Double]
        /// Root mean square of K and of V per layer (all heads), from the histograms: `[numLayers]`.
        public var keyRMS: [Float]
        public var valueRMS: [Float]
    }

    /// Runs `tokens` through the model in windows of `window` tokens (each window starts with BOS
    /// when the model adds one, as a request would) and derives static scales.
    /// - Parameters:
    ///   - tokens: the calibration text's token ids (at least 2).
    ///   - window: tokens per forward window (≥ 2); longer texts run in several windows.
    ///   - perHead: one scale per (layer, KV head) instead of per layer.
    ///   - percentile: cap each layer's clipping value at this percentile of |K| and |V| (in (0, 100));
    ///     100 = the plain max (`amax / 127`). Ignored when `method` is given.
    ///   - method: how the clipping value is chosen; when both are nil, `defaultMethod`.
    ///   - separateKV: also derive separate K and V scales (written as `k_scaling_factor` /
    ///     `v_scaling_factor`); false gives only the shared scale of vLLM's schema.
    ///   - isCancelled: checked between windows; when true the run throws `KvantError(.cancelled)`.
    ///   - progress: `(tokensDone, tokensTotal)` after each window.
    /// - Throws: `.invalidArgument` for too few tokens or a bad window/percentile, `.cancelled`,
    ///   forward-pass errors.
    public static func run(session: ForwardSession, tokens: [Int32], window: Int = 512, perHead: Bool,
                           percentile: Double? = nil, method: KVClipMethod? = nil, separateKV: Bool = true,
                           isCancelled: () -> Bool = { false },
                           progress: (Int, Int) -> Void = { _, _ in }) throws -> Result {
        guard tokens.count >= 2 else {
            throw KvantError(.invalidArgument, "calibration needs at least 2 tokens of text, got \(tokens.count)")
        }
        guard window >= 2 else { throw KvantError(.invalidArgument, "calibration window must be ≥ 2 tokens, got \(window)") }
        if let percentile, !(percentile > 0 && percentile <= 100) {
            throw KvantError(.invalidArgument, "calibration percentile must be in (0, 100], got \(percentile)")
        }
        let method = method ?? percentile.map { $0 < 100 ? .percentile($0) : .max } ?? defaultMethod
        if case .percentile(let p) = method, !(p > 0 && p < 100) {
            throw KvantError(.invalidArgument, "calibration percentile must be in (0, 100), got \(p)")
        }
        if case .mse(let w) = method, !(w > 0 && w.isFinite) {
            throw KvantError(.invalidArgument, "calibration key weight must be positive, got \(w)")
        }
        let config = session.model.config
        let spec = config.kvCacheSpec(dtype: .fp32)
        let pool = try KVCachePool(spec: spec, byteBudget: spec.bytesPerToken * (window + 2 * spec.blockSize))
        let recorder = try KVAmaxRecorder(numLayers: config.numLayers, numKVHeads: config.numKVHeads,
                                          histogram: true)
        pool.amaxRecorder = recorder
        let bos = session.model.addsBOS ? session.model.bosTokenID : nil
        var done = 0
        while done < tokens.count {
            if isCancelled() { throw KvantError(.cancelled, "calibration cancelled after \(done) of \(tokens.count) tokens") }
            var chunk = Array(tokens[done..<min(tokens.count, done + window)])
            if let bos, done > 0 { chunk[0] = bos }
            let seq = pool.createSequence()
            defer { pool.free(seq) }
            _ = try session.forwardLast(tokens: chunk, startPosition: 0, sequence: seq, pool: pool)
            done += chunk.count
            progress(done, tokens.count)
        }
        let scales = try recorder.scales(perHead: perHead, method: method, separateKV: separateKV)
        let keyAmax = (0..<config.numLayers).map { l in (0..<config.numKVHeads).map { recorder.keyAmax(layer: l, head: $0) }.max()! }
        let valueAmax = (0..<config.numLayers).map { l in (0..<config.numKVHeads).map { recorder.valueAmax(layer: l, head: $0) }.max()! }
        let H = config.numKVHeads
        func saturation(_ l: Int, keys: Bool) -> Double {
            (0..<H).map { h in
                let s = keys ? scales.keyScale(layer: l, head: h) : scales.valueScale(layer: l, head: h)
                return recorder.saturationFraction(layer: l, head: h, ofKeys: keys, clip: s * 127) ?? 0
            }.max()!
        }
        return Result(scales: scales, tokens: tokens.count, keyAmax: keyAmax, valueAmax: valueAmax, method: method,
                      keySaturation: (0..<config.numLayers).map { saturation($0, keys: true) },
                      valueSaturation: (0..<config.numLayers).map { saturation($0, keys: false) },
                      keyRMS: (0..<config.numLayers).map { recorder.rms(layer: $0, ofKeys: true) ?? 0 },
                      valueRMS: (0..<config.numLayers).map { recorder.rms(layer: $0, ofKeys: false) ?? 0 })
    }
}
