import KvantCore

// MARK: - Tokenize, perplexity, calibrate

/// `tokenize` params.
public struct TokenizeParams: Codable, Equatable, Sendable {
    public var text: String
    public init(text: String) { self.text = text }
}

/// `tokenize` result.
public struct TokenizeResult: Codable, Equatable, Sendable {
    public var tokens: [Int]
    public var count: Int
    public init(tokens: [Int]) {
        self.tokens = tokens
        self.count = tokens.count
    }
}

/// `perplexity` params: a text file under `allowed_dirs`, evaluated in windows of `ctx` tokens.
public struct PerplexityParams: Codable, Equatable, Sendable {
    public var path: String
    /// Context window in tokens (llama.cpp's `-c`); 0 or absent = the daemon's default (512).
    public var ctx: Int?

    public init(path: String, ctx: Int? = nil) {
        self.path = path
        self.ctx = ctx
    }

    enum CodingKeys: String, CodingKey { case path, ctx }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        path = try c.decode(String.self, forKey: .path)
        ctx = try c.decodeIntegerIfPresent(forKey: .ctx)
    }
}

/// `perplexity` result.
public struct PerplexityResult: Codable, Equatable, Sendable {
    /// exp(mean negative log-likelihood) over the scored tokens.
    public var perplexity: Double
    /// Mean negative log-likelihood per scored token, nats.
    public var meanNLL: Double
    /// Tokens scored.
    public var tokens: Int
    /// Windows evaluated.
    public var chunks: Int
    public var seconds: Double

    public init(perplexity: Double, meanNLL: Double, tokens: Int, chunks: Int, seconds: Double) {
        self.perplexity = perplexity
        self.meanNLL = meanNLL
        self.tokens = tokens
        self.chunks = chunks
        self.seconds = seconds
    }

    enum CodingKeys: String, CodingKey { case perplexity, meanNLL = "mean_nll", tokens, chunks, seconds }
}

/// `calibrate` params: record K/V amax over text and write a `kv_cache_scales.json` to `output`.
public struct CalibrateParams: Codable, Equatable, Sendable {
    /// Text file under `allowed_dirs`; absent = the daemon's built-in default calibration text.
    public var textPath: String?
    /// Tokens of the text to run (default 2048).
    public var numTokens: Int?
    /// One scale per (layer, KV head) instead of per layer.
    public var perHead: Bool?
    /// Tensor-parallel size to write scales for (vLLM schema `tp_size`; default 1).
    public var tpSize: Int?
    /// Percentile of |x| used as amax, in (0, 100]: 100 = plain max (amax/127); absent = the
    /// daemon's default clipping (Kvant: MSE-optimal shared K/V clip, docs/kv-cache.md).
    public var percentile: Double?
    /// Also write separate K and V scales (`k_scaling_factor` / `v_scaling_factor` beside the shared
    /// `scaling_factor`; vLLM ignores them); default true. false writes only vLLM's shared scale.
    public var separateKV: Bool?
    /// Output file; its directory must lie under `allowed_dirs`.
    public var output: String

    public init(textPath: String? = nil, numTokens: Int? = nil, perHead: Bool? = nil, tpSize: Int? = nil,
                percentile: Double? = nil, separateKV: Bool? = nil, output: String) {
        self.separateKV = separateKV
        self.textPath = textPath
        self.numTokens = numTokens
        self.perHead = perHead
        self.tpSize = tpSize
        self.percentile = percentile
        self.output = output
    }

    enum CodingKeys: String, CodingKey {
        case textPath = "text_path", numTokens = "num_tokens", perHead = "per_head", tpSize = "tp_size", percentile, output
        case separateKV = "separate_kv"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        textPath = try c.decodeIfPresent(String.self, forKey: .textPath)
        numTokens = try c.decodeIntegerIfPresent(forKey: .numTokens)
        perHead = try c.decodeIfPresent(Bool.self, forKey: .perHead)
        tpSize = try c.decodeIntegerIfPresent(forKey: .tpSize)
        percentile = try c.decodeIfPresent(Double.self, forKey: .percentile)
        separateKV = try c.decodeIfPresent(Bool.self, forKey: .separateKV)
        output = try c.decode(String.self, forKey: .output)
    }

    /// - Throws: `KvantError(.invalidArgument)` naming the field.
    public func validate() throws {
        if output.isEmpty { throw KvantError(.invalidArgument, "calibrate: 'output' is empty") }
        if let numTokens, numTokens < 1 { throw KvantError(.invalidArgument, "calibrate: 'num_tokens' must be at least 1, got \(numTokens)") }
        if let tpSize, tpSize < 1 { throw KvantError(.invalidArgument, "calibrate: 'tp_size' must be at least 1, got \(tpSize)") }
        if let percentile, !(percentile > 0 && percentile <= 100) {
            throw KvantError(.invalidArgument, "calibrate: 'percentile' must be in (0, 100], got \(percentile)")
        }
    }
}

/// `calibrate` result.
public struct CalibrateResult: Codable, Equatable, Sendable {
    /// The file written (realpath'd).
    public var output: String
    public var tokens: Int
    public var seconds: Double
    public var scales: ScalesReport

    public init(output: String, tokens: Int, seconds: Double, scales: ScalesReport) {
        self.output = output
        self.tokens = tokens
        self.seconds = seconds
        self.scales = scales
    }
}

/// Params of `calibrate.progress` and `perplexity.progress`.
public struct ProgressNotification: Codable, Equatable, Sendable {
    public var id: RPCID
    /// Tokens processed so far.
    public var done: Int
    /// Tokens to process in all.
    public var total: Int

    public init(id: RPCID, done: Int, total: Int) {
        self.id = id
        self.done = done
        self.total = total
    }
}
