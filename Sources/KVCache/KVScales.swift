import Foundation
import KvantCore

/// Static int8 KV-cache scales: one per layer (`int8_pertensor`) or one per (layer, KV head)
/// (`int8_pertensor_perhead`), shared by K and V. Loaded from vLLM's `kv_cache_scales.json`
/// (`{"model_type":…, "kv_cache":{"dtype":…, "scaling_factor":{"<tp_rank>":{"<layer>": scale | [per-head list]}}}}`,
/// vLLM `QuantParamSchema` rules) and encoded back to it for calibration.
///
/// Kvant extension (optional, both or neither): `kv_cache.k_scaling_factor` and
/// `kv_cache.v_scaling_factor`, in the same form as `scaling_factor`, give K and V their own scales.
/// When present Kvant uses them (and still validates `scaling_factor`); vLLM's schema ignores
/// unknown keys and keeps reading the shared `scaling_factor`, so such a file stays a valid vLLM
/// file. `calibrate` writes them because one scale cannot fit K and V whose ranges differ by up
/// to 30× (docs/kv-cache.md).
///
/// Policy (see docs/kv-cache.md): `model_type: null` (or missing) is accepted with a warning;
/// the `dtype` string is recorded, never refused; several TP ranks merge into one process —
/// per-tensor values by max over ranks (conservative: no rank's values clip more than in its own
/// process), per-head lists by concatenation in rank order (`num_kv_heads / tp_size` per rank;
/// when tp_size > num_kv_heads each rank holds one replicated head and replicas merge by max).
public struct KVScales: Sendable, Equatable {
    public enum Granularity: String, Sendable, Codable {
        case perTensor = "per_tensor"
        case perHead = "per_head"
    }

    public let granularity: Granularity
    public let numLayers: Int
    /// 1 for per-tensor, num_kv_heads for per-head.
    public let headsPerLayer: Int
    /// `[numLayers, headsPerLayer]`, row-major, finite and positive: `scaling_factor`, shared by K and V.
    public let values: [Float]
    /// The scales K and V are quantized with, `[numLayers, headsPerLayer]` each: `values` for a
    /// vLLM file, `k_scaling_factor` / `v_scaling_factor` when the file has them.
    public private(set) var keyValues: [Float]
    public private(set) var valueValues: [Float]
    /// True when K and V have their own scales (the Kvant extension).
    public private(set) var hasSeparateKV = false
    /// model_type of the file (nil when null/missing or not from a file).
    public internal(set) var modelType: String?
    /// `kv_cache.dtype` string of the file, recorded as is (vLLM files say float8_e4m3fn even for int8).
    public internal(set) var fileDType: String?
    /// Path of the file the scales were loaded from.
    public internal(set) var path: String?
    /// Lowercase hex SHA-256 of the file's bytes.
    public internal(set) var sha256: String?
    /// Number of TP ranks in the file (1 when not from a file).
    public internal(set) var tpSize: Int = 1
    /// Non-fatal findings (e.g. null model_type) for the daemon to log.
    public internal(set) var warnings: [String] = []

    /// Per-tensor scales, one per layer. Throws `KvantError(.invalidArgument)` naming the layer for a
    /// non-finite, zero or negative scale, or for an empty list.
    public init(perTensor: [Float]) throws {
        guard !perTensor.isEmpty else { throw KvantError(.invalidArgument, "KV scales: no layers") }
        for (l, s) in perTensor.enumerated() { try Self.check(s, "KV scales", "layer \(l)") }
        granularity = .perTensor; numLayers = perTensor.count; headsPerLayer = 1; values = perTensor
        keyValues = values; valueValues = values
    }

    /// Per-head scales `[numLayers][numKVHeads]`. Throws `KvantError(.invalidArgument)` for ragged
    /// rows or a bad value, naming the layer and head.
    public init(perHead: [[Float]]) throws {
        guard let first = perHead.first, !first.isEmpty else { throw KvantError(.invalidArgument, "KV scales: no layers or no heads") }
        for (l, row) in perHead.enumerated() {
            guard row.count == first.count else {
                throw KvantError(.invalidArgument, "KV scales: layer \(l) has \(row.count) head scales; expected \(first.count)")
            }
            for (h, s) in row.enumerated() { try Self.check(s, "KV scales", "layer \(l) head \(h)") }
        }
        granularity = .perHead; numLayers = perHead.count; headsPerLayer = first.count; values = perHead.flatMap { $0 }
        keyValues = values; valueValues = values
    }

    /// These scales (the shared `scaling_factor`) with separate K and V scales of the same form.
    /// Throws `KvantError(.invalidArgument)` when `key` or `value` differs in granularity, layers or heads.
    public func withSeparateKV(key: KVScales, value: KVScales) throws -> KVScales {
        for (name, o) in [("K", key), ("V", value)] {
            guard o.granularity == granularity, o.numLayers == numLayers, o.headsPerLayer == headsPerLayer else {
                throw KvantError(.invalidArgument, "KV scales: \(name) scales are \(o.granularity.rawValue) with \(o.numLayers) layers × \(o.headsPerLayer); expected \(granularity.rawValue) with \(numLayers) layers × \(headsPerLayer) like scaling_factor")
            }
        }
        var r = self
        r.keyValues = key.values; r.valueValues = value.values; r.hasSeparateKV = true
        return r
    }

    /// Only the shared `scaling_factor` (drops separate K/V scales): what vLLM reads from the file.
    public var sharedOnly: KVScales {
        var r = self
        r.keyValues = values; r.valueValues = values; r.hasSeparateKV = false
        return r
    }

    /// `fileValue`: the number as written in the file, shown instead of its fp32 conversion (1e39
    /// overflows fp32 to inf, 1e-50 underflows to 0: the message says so rather than "inf" / "0.0").
    private static func check(_ s: Float, _ src: String, _ where_: String, fileValue: Double? = nil) throws {
        if let d = fileValue, d.isFinite, d > 0, !s.isFinite {
            throw KvantError(.invalidArgument, "\(src): \(where_): scale \(d) overflows fp32 (largest \(Float.greatestFiniteMagnitude)); expected a finite positive number")
        }
        if let d = fileValue, d > 0, s == 0 {
            throw KvantError(.invalidArgument, "\(src): \(where_): scale \(d) underflows fp32 to 0; expected a normal positive number (at least \(Float.leastNormalMagnitude))")
        }
        guard s.isFinite, s > 0 else {
            throw KvantError(.invalidArgument, "\(src): \(where_): scale \(fileValue.map { "\($0)" } ?? "\(s)"); expected a finite positive number")
        }
        guard s.isNormal else {
            throw KvantError(.invalidArgument, "\(src): \(where_): scale \(s) is subnormal in fp32 (below \(Float.leastNormalMagnitude)); expected a normal positive number")
        }
    }

    /// Scales outside this range are accepted but reported: an int8 step of `s` covers |x| up to
    /// `127·s`, and post-RoPE K / V of real models stay within about 1e-3…1e5 (amax), so a scale
    /// below 1e-5 clips nearly everything and one above 1e3 rounds nearly everything to 0.
    public static let plausibleScales: ClosedRange<Float> = 1e-5...1e3

    /// Warnings for implausible scales (see `plausibleScales`): at most one per layer and field, naming the
    /// field and whether it scales K, V or both. With separate K/V scales the shared `scaling_factor` is
    /// checked too: Kvant does not use it, but vLLM reads only that one.
    func plausibilityWarnings(source src: String) -> [String] {
        var fields: [(name: String, role: String, row: (Int) -> [Float])] = []
        if hasSeparateKV {
            fields = [("k_scaling_factor", "K", keyLayerScales), ("v_scaling_factor", "V", valueLayerScales),
                      ("scaling_factor", "K and V in vLLM; not used by Kvant with separate K/V scales", layerScales)]
        } else {
            fields = [("scaling_factor", "K and V", layerScales)]
        }
        var out: [String] = []
        for l in 0..<numLayers {
            for field in fields {
                guard let bad = field.row(l).first(where: { !Self.plausibleScales.contains($0) }) else { continue }
                let effect = bad < Self.plausibleScales.lowerBound
                    ? "|x| above \(127 * bad) is clipped (watch saturation_counts)" : "|x| below \(bad / 2) is stored as 0"
                out.append("\(src): layer \(l): \(field.name) (\(field.role)) \(bad) is outside the plausible range \(Self.plausibleScales.lowerBound)…\(Self.plausibleScales.upperBound); \(effect)")
            }
        }
        return out
    }

    /// The shared scale (`scaling_factor`) of (layer, KV head); per-tensor scales ignore the head.
    public func scale(layer: Int, head: Int) -> Float {
        values[layer * headsPerLayer + (granularity == .perTensor ? 0 : head)]
    }

    /// The scale K of (layer, KV head) is quantized with (`scale` unless the file has separate K/V scales).
    public func keyScale(layer: Int, head: Int) -> Float {
        keyValues[layer * headsPerLayer + (granularity == .perTensor ? 0 : head)]
    }

    /// The scale V of (layer, KV head) is quantized with.
    public func valueScale(layer: Int, head: Int) -> Float {
        valueValues[layer * headsPerLayer + (granularity == .perTensor ? 0 : head)]
    }

    /// The shared scales of one layer (1 or headsPerLayer values).
    public func layerScales(_ layer: Int) -> [Float] {
        Array(values[(layer * headsPerLayer)..<((layer + 1) * headsPerLayer)])
    }

    /// The K scales of one layer (1 or headsPerLayer values).
    public func keyLayerScales(_ layer: Int) -> [Float] {
        Array(keyValues[(layer * headsPerLayer)..<((layer + 1) * headsPerLayer)])
    }

    /// The V scales of one layer (1 or headsPerLayer values).
    public func valueLayerScales(_ layer: Int) -> [Float] {
        Array(valueValues[(layer * headsPerLayer)..<((layer + 1) * headsPerLayer)])
    }

    /// Largest accepted scale file (bytes).
    public static let maxFileBytes = 16 << 20

    /// Loads and validates a `kv_cache_scales.json`.
    /// - Parameters:
    ///   - path: the file.
    ///   - expectedModelType: the running model's model_type (nil = don't check).
    ///   - numLayers: layers every rank must list, exactly 0..<numLayers.
    ///   - numKVHeads: total KV heads (per-head lists have `numKVHeads / tp_size` entries per rank).
    ///   - tpSize: when given, the number of ranks the file must have; otherwise the ranks present
    ///     (which must be 0..<n).
    /// - Throws: `KvantError` naming the file, and the rank/layer and what was expected:
    ///   `.notFound` (missing file), `.invalidArgument` (bad JSON, non-integer key, missing rank or
    ///   layer, wrong entry count or list length, mixed scalar/list, non-finite/zero/negative scale,
    ///   model_type mismatch, file too large).
    public static func load(path: String, expectedModelType: String?, numLayers: Int, numKVHeads: Int,
                            tpSize: Int? = nil) throws -> KVScales {
        let src = "scale file '\(path)'"
        let data: Data
        switch FileBytes.read(path, maxBytes: maxFileBytes) {
        case .bytes(let bytes): data = Data(bytes)
        case .missing, .directory: throw KvantError(.notFound, "\(src): no such file")
        case .notRegular: throw KvantError(.invalidArgument, "\(src): not a regular file (a FIFO, socket or device)")
        case .tooLarge(let size): throw KvantError(.invalidArgument, "\(src): \(size) bytes; expected at most \(maxFileBytes)")
        case .failed(let reason): throw KvantError(.permissionDenied, "\(src): cannot be read (\(reason))")
        }
        var s = try decode(data: data, source: src, expectedModelType: expectedModelType,
                           numLayers: numLayers, numKVHeads: numKVHeads, tpSize: tpSize)
        s.path = path
        s.sha256 = SHA256.hex(data)
        return s
    }

    /// Hugging Face `model_type` names that files from the vendor pipeline (TensorRT-LLM, then vLLM's
    /// `extract_scales.py`) carry for a GGUF `general.architecture`; accepted as equal to it.
    public static let modelTypeAliases: [String: Set<String>] = [
        "gemma3": ["gemma3_text"],
        "llama": ["mistral"],
    ]

    /// Validates and merges the JSON of a scale file; `source` names it in errors. Same rules as `load`.
    public static func decode(data: Data, source src: String, expectedModelType: String?, numLayers: Int,
                              numKVHeads: Int, tpSize: Int? = nil) throws -> KVScales {
        guard numLayers >= 1, numKVHeads >= 1 else {
            throw KvantError(.invalidArgument, "\(src): num_layers \(numLayers) and num_kv_heads \(numKVHeads) must be positive")
        }
        if let dup = JSONDuplicateKeys.first(in: data) {
            let at = dup.path.isEmpty ? "at top level" : "in " + dup.path.map(quotedName).joined(separator: " → ")
            throw KvantError(.invalidArgument,
                             "\(src): key \(quotedName(dup.key)) appears twice \(at); expected each TP rank and layer once (vLLM would silently keep the last)")
        }
        let file: ScaleFile
        do { file = try JSONDecoder().decode(ScaleFile.self, from: data) } catch let e as DecodingError {
            if case .dataCorrupted(let c) = e, c.codingPath.isEmpty {
                throw KvantError(.invalidArgument, "\(src): not valid JSON\(syntaxDetail(data)); note that NaN and Infinity are not JSON numbers")
            }
            throw KvantError(.invalidArgument, "\(src): \(describe(e))")
        } catch {
            throw KvantError(.invalidArgument, "\(src): not valid JSON")
        }
        var warnings: [String] = []
        if let expected = expectedModelType {
            if let mt = file.modelType {
                guard mt == expected || (modelTypeAliases[expected]?.contains(mt) ?? false) else {
                    let accepted = ([expected] + (modelTypeAliases[expected].map { Array($0).sorted() } ?? [])).map(quotedName).joined(separator: " or ")
                    throw KvantError(.invalidArgument, "\(src): model_type \(quotedName(mt)) does not match the running model (expected \(accepted))")
                }
            } else {
                warnings.append("\(src): model_type is null; accepted for model_type \(quotedName(expected)) (fix the file to make it checkable)")
            }
        }
        var (result, tp) = try parseFactor(file.kvCache.scalingFactor, field: "scaling_factor", src: src,
                                           numLayers: numLayers, numKVHeads: numKVHeads, tpSize: tpSize)
        switch (file.kvCache.keyScalingFactor, file.kvCache.valueScalingFactor) {
        case (nil, nil):
            break
        case (let k?, let v?):
            let (ks, _) = try parseFactor(k, field: "k_scaling_factor", src: src, numLayers: numLayers, numKVHeads: numKVHeads, tpSize: tp)
            let (vs, _) = try parseFactor(v, field: "v_scaling_factor", src: src, numLayers: numLayers, numKVHeads: numKVHeads, tpSize: tp)
            for (name, o) in [("k_scaling_factor", ks), ("v_scaling_factor", vs)] where o.granularity != result.granularity {
                throw KvantError(.invalidArgument, "\(src): kv_cache.\(name) has \(o.granularity == .perHead ? "per-head lists" : "single per-layer scales") but scaling_factor has \(result.granularity == .perHead ? "per-head lists" : "single per-layer scales"); expected the same form")
            }
            result = try result.withSeparateKV(key: ks, value: vs)
        case (.some, nil):
            throw KvantError(.invalidArgument, "\(src): kv_cache.k_scaling_factor is given without kv_cache.v_scaling_factor; expected both (separate K and V scales) or neither")
        case (nil, .some):
            throw KvantError(.invalidArgument, "\(src): kv_cache.v_scaling_factor is given without kv_cache.k_scaling_factor; expected both (separate K and V scales) or neither")
        }
        result.modelType = file.modelType
        result.fileDType = file.kvCache.dtype
        result.tpSize = tp
        result.warnings = warnings + result.plausibilityWarnings(source: src)
        return result
    }

    /// One `{"<tp_rank>": {"<layer>": scale | [per-head list]}}` object (`kv_cache.<field>`) validated
    /// with vLLM's rules and merged over TP ranks (per-tensor by max, per-head by concatenation).
    private static func parseFactor(_ factor: [String: [String: ScaleEntry]], field: String, src: String, numLayers: Int,
                                    numKVHeads: Int, tpSize: Int?) throws -> (KVScales, Int) {
        let at = "kv_cache.\(field): "
        // Ranks.
        var ranks: [Int: [String: ScaleEntry]] = [:]
        for (key, layers) in factor {
            guard let r = Int(key), r >= 0 else {
                throw KvantError(.invalidArgument, "\(src): TP rank key \(quotedName(key)) in kv_cache.\(field) is not a non-negative integer (expected \"0\", \"1\", …)")
            }
            guard ranks[r] == nil else { throw KvantError(.invalidArgument, "\(src): \(at)TP rank \(r) appears twice") }
            ranks[r] = layers
        }
        let tp = tpSize ?? ranks.count
        guard tp >= 1 else { throw KvantError(.invalidArgument, "\(src): kv_cache.\(field) has no TP ranks; expected ranks 0..<\(tpSize ?? 1)") }
        for r in 0..<tp where ranks[r] == nil {
            throw KvantError(.invalidArgument, "\(src): TP rank \(r) missing from kv_cache.\(field); expected ranks 0..<\(tp) (tp_size \(tp))")
        }
        if let extra = ranks.keys.filter({ $0 >= tp }).min() {
            throw KvantError(.invalidArgument, "\(src): \(at)unexpected TP rank \(extra); expected ranks 0..<\(tp) (tp_size \(tp))")
        }
        // Layers per rank; granularity from the first layer of rank 0.
        var granularity: Granularity? = nil
        var formSetBy = "" 
        var perRank: [[ScaleEntry]] = []
        for r in 0..<tp {
            var layers: [Int: ScaleEntry] = [:]
            for (key, entry) in ranks[r]! {
                guard let l = Int(key) else {
                    throw KvantError(.invalidArgument, "\(src): \(at)rank \(r): layer key \(quotedName(key)) is not an integer; expected layers 0..<\(numLayers)")
                }
                guard l >= 0, l < numLayers else {
                    throw KvantError(.invalidArgument, "\(src): \(at)rank \(r): layer \(l) out of range; expected exactly layers 0..<\(numLayers)")
                }
                guard layers[l] == nil else { throw KvantError(.invalidArgument, "\(src): \(at)rank \(r): layer \(l) appears twice") }
                layers[l] = entry
            }
            for l in 0..<numLayers where layers[l] == nil {
                throw KvantError(.invalidArgument, "\(src): \(at)rank \(r): layer \(l) missing; expected exactly \(numLayers) layers 0..<\(numLayers)")
            }
            var row: [ScaleEntry] = []
            for l in 0..<numLayers {
                let e = layers[l]!
                let g: Granularity = { if case .list = e { return .perHead } else { return .perTensor } }()
                if case .list(let ds) = e, ds.isEmpty {
                    throw KvantError(.invalidArgument, "\(src): \(at)rank \(r) layer \(l): empty per-head list; expected one scale per KV head of the rank")
                }
                if granularity == nil { granularity = g; formSetBy = "rank \(r) layer \(l)" }
                guard g == granularity else {
                    throw KvantError(.invalidArgument, "\(src): \(at)rank \(r) layer \(l): \(g == .perHead ? "a per-head list" : "a single scale"), but \(formSetBy) has \(granularity == .perHead ? "a per-head list" : "a single scale"); expected the same form for every layer")
                }
                switch e {
                case .scalar(let d):
                    try check(Float(d), src, "\(at)rank \(r) layer \(l)", fileValue: d)
                case .list(let ds):
                    for (i, d) in ds.enumerated() { try check(Float(d), src, "\(at)rank \(r) layer \(l) entry \(i)", fileValue: d) }
                }
                row.append(e)
            }
            perRank.append(row)
        }
        // Merge ranks.
        if granularity == .perTensor {
            var merged = [Float](repeating: 0, count: numLayers)
            for r in 0..<tp {
                for l in 0..<numLayers { if case .scalar(let d) = perRank[r][l] { merged[l] = max(merged[l], Float(d)) } }
            }
            return (try KVScales(perTensor: merged), tp)
        } else {
            guard numKVHeads % tp == 0 || tp % numKVHeads == 0 else {
                throw KvantError(.invalidArgument, "\(src): num_kv_heads \(numKVHeads) cannot be split over tp_size \(tp)")
            }
            let each = max(1, numKVHeads / tp)
            var merged = [[Float]](repeating: [Float](repeating: 0, count: numKVHeads), count: numLayers)
            for r in 0..<tp {
                for l in 0..<numLayers {
                    guard case .list(let ds) = perRank[r][l] else { continue }
                    guard ds.count == each else {
                        throw KvantError(.invalidArgument, "\(src): \(at)rank \(r) layer \(l): per-head list has \(ds.count) entries; expected \(each) (num_kv_heads \(numKVHeads) / tp_size \(tp))")
                    }
                    for (i, d) in ds.enumerated() {
                        let head = tp <= numKVHeads ? r * each + i : r / (tp / numKVHeads)
                        merged[l][head] = max(merged[l][head], Float(d))
                    }
                }
            }
            return (try KVScales(perHead: merged), tp)
        }
    }

    /// Encodes the scales in vLLM's schema. Per-tensor: every rank gets the same per-layer value
    /// (per-head scales are reduced by max over heads). Per-head: the heads are split over the ranks
    /// in order, `numKVHeads / tpSize` each (one replicated head per rank when tpSize > numKVHeads).
    /// Separate K/V scales are written as `k_scaling_factor` / `v_scaling_factor` beside
    /// `scaling_factor` (same form) unless `separateKV` is false.
    /// - Throws: `KvantError(.invalidArgument)` for tpSize < 1, per-head output from per-tensor
    ///   scales, or heads that don't split over tpSize.
    public func encode(modelType: String?, tpSize: Int, perHead: Bool, dtype: String = "int8", separateKV: Bool = true) throws -> Data {
        guard tpSize >= 1, tpSize <= 4096 else { throw KvantError(.invalidArgument, "KV scales encode: tp_size \(tpSize) out of range 1...4096") }
        let H = headsPerLayer
        if perHead {
            guard granularity == .perHead else {
                throw KvantError(.invalidArgument, "KV scales encode: per-tensor scales have no per-head values")
            }
            guard H % tpSize == 0 || tpSize % H == 0 else {
                throw KvantError(.invalidArgument, "KV scales encode: num_kv_heads \(H) cannot be split over tp_size \(tpSize)")
            }
        }
        func str(_ s: String?) -> String {
            guard let s else { return "null" }
            return String(data: try! JSONEncoder().encode(s), encoding: .utf8)!
        }
        func num(_ f: Float) -> String { "\(Double(f))" }
        func factor(_ v: [Float]) -> String {
            var out = "{"
            for r in 0..<tpSize {
                out += (r > 0 ? ", " : "") + "\"\(r)\": {"
                for l in 0..<numLayers {
                    out += (l > 0 ? ", " : "") + "\"\(l)\": "
                    let row = Array(v[(l * H)..<((l + 1) * H)])
                    if perHead {
                        let heads: [Int] = tpSize <= H ? Array((r * (H / tpSize))..<((r + 1) * (H / tpSize))) : [r / (tpSize / H)]
                        out += "[" + heads.map { num(row[$0]) }.joined(separator: ", ") + "]"
                    } else {
                        out += num(row.max()!)
                    }
                }
                out += "}"
            }
            return out + "}"
        }
        var out = "{\"model_type\": \(str(modelType)), \"kv_cache\": {\"dtype\": \(str(dtype)), \"scaling_factor\": \(factor(values))"
        if hasSeparateKV && separateKV {
            out += ", \"k_scaling_factor\": \(factor(keyValues)), \"v_scaling_factor\": \(factor(valueValues))"
        }
        out += "}}\n"
        return Data(out.utf8)
    }

    /// The parser's account of a JSON syntax error (position included where Foundation gives one).
    private static func syntaxDetail(_ data: Data) -> String {
        do { _ = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]); return "" } catch {
            let e = error as NSError
            let text = (e.userInfo[NSDebugDescriptionErrorKey] as? String) ?? e.localizedDescription
            return text.isEmpty ? "" : " (\(text))"
        }
    }

    private static func describe(_ e: DecodingError) -> String {
        /// A key of the path as messages show it: schema words and numbers as they are, anything else
        /// (a TP rank or layer key read from the file) through `quotedName`.
        func shown(_ k: String) -> String {
            k.count <= 48 && k.unicodeScalars.allSatisfy { ($0.isASCII && ($0.properties.isAlphabetic || $0.properties.numericType != nil)) || $0 == "_" || $0 == "-" }
                ? k : quotedName(k)
        }
        func path(_ p: [CodingKey]) -> String {
            let keys = p.map { $0.intValue.map(String.init) ?? $0.stringValue }.map(shown)
            var s = keys.isEmpty ? "top level" : keys.joined(separator: ".")
            let factors: Set<String> = ["scaling_factor", "k_scaling_factor", "v_scaling_factor"]
            if keys.count >= 4, keys[0] == "kv_cache", factors.contains(keys[1]) {
                s += " (rank \(keys[2]), layer \(keys[3]))"
            } else if keys.count == 3, keys[0] == "kv_cache", factors.contains(keys[1]) {
                s += " (rank \(keys[2]))"
            }
            return s
        }
        /// The JSON type a Swift type stands for, for messages.
        func jsonType(_ t: Any.Type) -> String {
            switch t {
            case is [String: Any].Type, is [String: [String: ScaleEntry]].Type, is [String: ScaleEntry].Type: return "an object"
            case is [Any].Type, is [Double].Type: return "a list"
            case is String.Type: return "a string"
            case is Double.Type, is Float.Type, is Int.Type: return "a number"
            default:
                let name = "\(t)"
                return name.hasPrefix("Dictionary") ? "an object" : name.hasPrefix("Array") ? "a list" : "a value of type \(name)"
            }
        }
        /// What stands at a path in the schema.
        func expected(_ p: [CodingKey]) -> String {
            let keys = p.map { $0.intValue.map(String.init) ?? $0.stringValue }
            let factors: Set<String> = ["scaling_factor", "k_scaling_factor", "v_scaling_factor"]
            if keys.count == 2, keys[0] == "kv_cache", factors.contains(keys[1]) { return " ({\"<tp_rank>\": {\"<layer>\": scale}})" }
            if keys.count == 3, keys[0] == "kv_cache", factors.contains(keys[1]) { return " ({\"<layer>\": scale})" }
            return ""
        }
        switch e {
        case .dataCorrupted(let c):
            return c.codingPath.isEmpty ? "not valid JSON" : "at \(path(c.codingPath)): \(c.debugDescription)"
        case .keyNotFound(let k, let c):
            return "missing key '\(k.stringValue)' at \(path(c.codingPath)); expected {\"model_type\", \"kv_cache\": {\"dtype\", \"scaling_factor\"}}"
        case .typeMismatch(let t, let c):
            if c.debugDescription.hasPrefix("expected a scale") { return "at \(path(c.codingPath)): \(c.debugDescription)" }
            return "at \(path(c.codingPath)): expected \(jsonType(t))\(expected(c.codingPath)), found something else"
        case .valueNotFound(let t, let c):
            return "at \(path(c.codingPath)): expected \(jsonType(t))\(expected(c.codingPath)), found null"
        @unknown default:
            return "not a valid scale file"
        }
    }
}

private struct ScaleFile: Decodable {
    var modelType: String?
    var kvCache: Section
    enum CodingKeys: String, CodingKey { case modelType = "model_type", kvCache = "kv_cache" }
    struct Section: Decodable {
        var dtype: String?
        var scalingFactor: [String: [String: ScaleEntry]]
        var keyScalingFactor: [String: [String: ScaleEntry]]?
        var valueScalingFactor: [String: [String: ScaleEntry]]?
        enum CodingKeys: String, CodingKey {
            case dtype, scalingFactor = "scaling_factor"
            case keyScalingFactor = "k_scaling_factor", valueScalingFactor = "v_scaling_factor"
        }
    }
}

private enum ScaleEntry: Decodable {
    case scalar(Double)
    case list([Double])
    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let d = try? c.decode(Double.self) { self = .scalar(d); return }
        if let l = try? c.decode([Double].self) { self = .list(l); return }
        throw DecodingError.typeMismatch(Double.self, .init(codingPath: decoder.codingPath,
            debugDescription: "expected a scale (a positive number within fp32's range) or a per-head list of them"))
    }
}
