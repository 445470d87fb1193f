import KvantCore

// MARK: - Generate

/// `generate` params; defaults follow vLLM's `SamplingParams` (top_k 0 or -1 = off).
public struct GenerateParams: Codable, Equatable, Sendable {
    public var prompt: String
    /// Tokens to generate at most.
    public var maxTokens: Int
    /// 0 = greedy.
    public var temperature: Double
    public var topP: Double
    public var topK: Int
    public var minP: Double
    public var repetitionPenalty: Double
    public var seed: UInt64?
    /// Generation stops before the first occurrence of any of these strings (excluded from `text`).
    public var stop: [String]
    /// Send a `generate.token` notification per token before the response.
    public var stream: Bool
    /// OpenAI/vLLM presence penalty in [-2, 2]: subtracted once from the logit of every token already
    /// generated (output tokens only); 0 = off.
    public var presencePenalty: Double = 0
    /// OpenAI/vLLM frequency penalty in [-2, 2]: subtracted from a token's logit once per time it was
    /// generated (output tokens only); 0 = off.
    public var frequencyPenalty: Double = 0
    /// Keep generating past end-of-sequence tokens: they are never sampled (llama.cpp's `ignore_eos`),
    /// so generation ends only at `max_tokens`, `max_model_len` or a stop string.
    public var ignoreEOS: Bool = false
    /// vLLM's `skip_special_tokens` (default true): special tokens (control tokens such as `<end_of_turn>`, and
    /// markers such as Gemma's `<start_of_image>`) are left out of the text; false writes their text too.
    public var skipSpecialTokens: Bool = true
    /// Token ids to use as the prompt instead of tokenizing `prompt` (the HTTP API's token-id prompts and
    /// chat prompts tokenized without BOS). Not on the wire.
    public var promptTokenIDs: [Int]?
    /// Report the log-probability of each generated token and this many alternatives (0…20);
    /// nil = none. Not on the wire (the HTTP API reads them from `GeneratedToken.logprobs`).
    public var logprobs: Int?
    /// Report the log-probability of each prompt token (from the second on) and this many
    /// alternatives (0…20) in `GenerateResult.promptLogprobs`; nil = none. Not on the wire.
    public var promptLogprobs: Int?
    /// OpenAI/vLLM `n`: completions generated for the prompt (parallel sampling, 1…`maxN`). Choice `i` is the
    /// request `choice(i)` (seed `seed + i`); the engine prefills the prompt once and forks its KV blocks.
    public var n: Int = 1

    public static let maxStopStrings = 16
    public static let maxStopStringBytes = 256
    /// Most choices (`n`) of one request, on the control socket and the HTTP API alike.
    public static let maxN = 16

    public init(prompt: String, maxTokens: Int = 128, temperature: Double = 1.0, topP: Double = 1.0, topK: Int = 0,
                minP: Double = 0.0, repetitionPenalty: Double = 1.0, seed: UInt64? = nil, stop: [String] = [],
                stream: Bool = false) {
        self.prompt = prompt
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.minP = minP
        self.repetitionPenalty = repetitionPenalty
        self.seed = seed
        self.stop = stop
        self.stream = stream
    }

    enum CodingKeys: String, CodingKey {
        case prompt, maxTokens = "max_tokens", temperature, topP = "top_p", topK = "top_k", minP = "min_p"
        case repetitionPenalty = "repetition_penalty", seed, stop, stream
        case presencePenalty = "presence_penalty", frequencyPenalty = "frequency_penalty", ignoreEOS = "ignore_eos"
        case skipSpecialTokens = "skip_special_tokens", n
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(prompt, forKey: .prompt)
        try c.encode(maxTokens, forKey: .maxTokens)
        try c.encode(temperature, forKey: .temperature)
        try c.encode(topP, forKey: .topP)
        try c.encode(topK, forKey: .topK)
        try c.encode(minP, forKey: .minP)
        try c.encode(repetitionPenalty, forKey: .repetitionPenalty)
        try c.encodeIfPresent(seed, forKey: .seed)
        try c.encode(stop, forKey: .stop)
        try c.encode(stream, forKey: .stream)
        // Additive fields: only when set, so older daemons see the messages they know.
        if presencePenalty != 0 { try c.encode(presencePenalty, forKey: .presencePenalty) }
        if frequencyPenalty != 0 { try c.encode(frequencyPenalty, forKey: .frequencyPenalty) }
        if ignoreEOS { try c.encode(ignoreEOS, forKey: .ignoreEOS) }
        if !skipSpecialTokens { try c.encode(skipSpecialTokens, forKey: .skipSpecialTokens) }
        if n != 1 { try c.encode(n, forKey: .n) }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        prompt = try c.decode(String.self, forKey: .prompt)
        maxTokens = try c.decodeIntegerIfPresent(forKey: .maxTokens) ?? 128
        temperature = try c.decodeIfPresent(Double.self, forKey: .temperature) ?? 1.0
        topP = try c.decodeIfPresent(Double.self, forKey: .topP) ?? 1.0
        topK = try c.decodeIntegerIfPresent(forKey: .topK) ?? 0
        minP = try c.decodeIfPresent(Double.self, forKey: .minP) ?? 0.0
        repetitionPenalty = try c.decodeIfPresent(Double.self, forKey: .repetitionPenalty) ?? 1.0
        if let value = try c.decodeIntegerIfPresent(forKey: .seed) {
            guard value >= 0 else {
                throw DecodingError.dataCorruptedError(forKey: .seed, in: c, debugDescription: "must be an integer >= 0, got \(value)")
            }
            seed = UInt64(value)
        } else {
            seed = nil
        }
        stop = try c.decodeIfPresent([String].self, forKey: .stop) ?? []
        stream = try c.decodeIfPresent(Bool.self, forKey: .stream) ?? false
        presencePenalty = try c.decodeIfPresent(Double.self, forKey: .presencePenalty) ?? 0
        frequencyPenalty = try c.decodeIfPresent(Double.self, forKey: .frequencyPenalty) ?? 0
        ignoreEOS = try c.decodeIfPresent(Bool.self, forKey: .ignoreEOS) ?? false
        skipSpecialTokens = try c.decodeIfPresent(Bool.self, forKey: .skipSpecialTokens) ?? true
        n = try c.decodeIntegerIfPresent(forKey: .n) ?? 1
    }

    /// The request of choice `index` of a parallel-sampling request: these params with `n` 1 and seed
    /// `seed + index` (no seed stays none), as the HTTP API and vLLM derive each choice's seed, so every
    /// choice differs and each is reproducible alone. `validate()` (and the HTTP API, through
    /// `seedRangeProblem`) refuse a request whose last choice's seed would pass the largest seed, so
    /// this never wraps for an accepted request.
    public func choice(_ index: Int) -> GenerateParams {
        var p = self
        p.n = 1
        p.seed = seed.map { $0 &+ UInt64(index) }
        return p
    }

    /// Largest seed: vLLM's bound (a signed 64-bit integer).
    public static let maxSeed = Int64.max

    /// Why `seed` cannot serve `n` choices, or nil if it can: choice `i` is sampled with `seed + i`, so
    /// `seed + n - 1` must not pass `maxSeed` (it would wrap round to negative seeds). `seed` is the
    /// request's seed as a signed 64-bit integer's bit pattern (the HTTP API accepts negative seeds as vLLM
    /// does; the control socket only 0...`maxSeed`). Shared by the control socket and the HTTP API.
    public static func seedRangeProblem(seed: UInt64?, n: Int) -> String? {
        guard let seed, n > 1 else { return nil }
        let signed = Int64(bitPattern: seed)
        guard signed.addingReportingOverflow(Int64(n - 1)).overflow else { return nil }
        return "seed \(signed) + n \(n) - 1 exceeds the largest seed \(maxSeed) (choice i is sampled with seed + i); lower 'seed' or 'n'"
    }

    /// Range checks. - Throws: `KvantError(.invalidArgument)` naming the field and the allowed range.
    public func validate() throws {
        func bad(_ message: String) -> KvantError { KvantError(.invalidArgument, "generate: \(message)") }
        if maxTokens < 1 { throw bad("'max_tokens' must be at least 1, got \(maxTokens)") }
        if !(1...Self.maxN).contains(n) { throw bad("'n' must be in 1...\(Self.maxN), got \(n)") }
        if let problem = Self.seedRangeProblem(seed: seed, n: n) { throw bad("'seed': \(problem)") }
        if !(temperature >= 0 && temperature.isFinite) { throw bad("'temperature' must be a finite number >= 0, got \(temperature)") }
        if !(topP > 0 && topP <= 1) { throw bad("'top_p' must be in (0, 1], got \(topP)") }
        if topK < -1 { throw bad("'top_k' must be -1 or 0 (off) or a positive count, got \(topK)") }
        if !(minP >= 0 && minP <= 1) { throw bad("'min_p' must be in [0, 1], got \(minP)") }
        if !(repetitionPenalty > 0 && repetitionPenalty.isFinite) {
            throw bad("'repetition_penalty' must be a finite number > 0, got \(repetitionPenalty)")
        }
        if !(presencePenalty >= -2 && presencePenalty <= 2) { throw bad("'presence_penalty' must be in [-2, 2], got \(presencePenalty)") }
        if !(frequencyPenalty >= -2 && frequencyPenalty <= 2) { throw bad("'frequency_penalty' must be in [-2, 2], got \(frequencyPenalty)") }
        for (name, value) in [("logprobs", logprobs), ("prompt_logprobs", promptLogprobs)] {
            if let value, !(0...TokenLogprobs.maxTopLogprobs).contains(value) {
                throw bad("'\(name)' must be in 0...\(TokenLogprobs.maxTopLogprobs), got \(value)")
            }
        }
        if let ids = promptTokenIDs, ids.isEmpty { throw bad("the prompt has no tokens") }
        if stop.count > Self.maxStopStrings { throw bad("'stop' has \(stop.count) strings; at most \(Self.maxStopStrings)") }
        for (index, text) in stop.enumerated() {
            if text.isEmpty { throw bad("'stop[\(index)]' is empty") }
            if text.utf8.count > Self.maxStopStringBytes {
                throw bad("'stop[\(index)]' is \(text.utf8.count) bytes; at most \(Self.maxStopStringBytes)")
            }
        }
    }
}

/// Params of the `generate.token` notification.
public struct GenerateTokenNotification: Codable, Equatable, Sendable {
    /// The id of the `generate` request.
    public var id: RPCID
    /// The text piece of this token (may be empty for tokens that only complete a UTF-8 sequence later).
    public var text: String
    /// Token id.
    public var token: Int
    /// The choice this token belongs to (0..<n) when the request asked for `n > 1`; absent otherwise.
    public var index: Int?

    public init(id: RPCID, text: String, token: Int, index: Int? = nil) {
        self.id = id
        self.text = text
        self.token = token
        self.index = index
    }
}

/// Why a generation ended: vLLM's `stop` (end-of-sequence token or stop string) and `length`,
/// plus `cancelled` (by `cancel`, a closed connection or shutdown).
public enum FinishReason: String, Codable, Sendable {
    case stop
    case length
    case cancelled
}

/// Timings of one `generate`, milliseconds and tokens per second.
public struct GenerateTimings: Codable, Equatable, Sendable {
    /// Waiting for a sequence slot.
    public var queueMs: Double
    public var prefillMs: Double
    public var decodeMs: Double
    public var prefillTokensPerSecond: Double
    public var decodeTokensPerSecond: Double

    public init(queueMs: Double, prefillMs: Double, decodeMs: Double, prefillTokensPerSecond: Double,
                decodeTokensPerSecond: Double) {
        self.queueMs = queueMs
        self.prefillMs = prefillMs
        self.decodeMs = decodeMs
        self.prefillTokensPerSecond = prefillTokensPerSecond
        self.decodeTokensPerSecond = decodeTokensPerSecond
    }

    enum CodingKeys: String, CodingKey {
        case queueMs = "queue_ms", prefillMs = "prefill_ms", decodeMs = "decode_ms"
        case prefillTokensPerSecond = "prefill_tokens_per_second", decodeTokensPerSecond = "decode_tokens_per_second"
    }
}

/// `generate` result.
public struct GenerateResult: Codable, Equatable, Sendable {
    /// Generated text, without the stop string that ended it.
    public var text: String
    /// Generated token ids (including the token that completed a stop string, excluding an end-of-sequence token).
    public var tokens: [Int]
    public var promptTokens: Int
    public var completionTokens: Int
    public var finishReason: FinishReason
    /// The stop string matched, or `eos` for the end-of-sequence token; nil otherwise.
    public var stopReason: String?
    public var timings: GenerateTimings
    /// Log-probabilities of the prompt's tokens when `GenerateParams.promptLogprobs` asked for them:
    /// one entry per prompt token, the first nil (nothing precedes it). Not on the wire.
    public var promptLogprobs: [TokenLogprobs?]? = nil
    /// Every choice in order (`index` 0..<n) when the request asked for `n > 1`; absent (nil) for `n = 1`.
    /// The other fields then describe choice 0, so a reader of the `n = 1` reply sees the first choice.
    public var choices: [GenerateChoice]? = nil

    public init(text: String, tokens: [Int], promptTokens: Int, completionTokens: Int, finishReason: FinishReason,
                stopReason: String?, timings: GenerateTimings) {
        self.text = text
        self.tokens = tokens
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.finishReason = finishReason
        self.stopReason = stopReason
        self.timings = timings
    }

    enum CodingKeys: String, CodingKey {
        case text, tokens, promptTokens = "prompt_tokens", completionTokens = "completion_tokens"
        case finishReason = "finish_reason", stopReason = "stop_reason", timings, choices
    }

    /// The reply of a request with `n > 1`: choice 0's fields, and `choices` listing all of them (`results` in
    /// choice order, each the result of that choice's request). Nil `choices` for a single result (`n = 1`).
    public init(choices results: [GenerateResult]) {
        precondition(!results.isEmpty, "GenerateResult(choices:) needs at least one result")
        self = results[0]
        choices = results.count > 1 ? results.enumerated().map { GenerateChoice(index: $0.offset, $0.element) } : nil
    }
}

/// One choice of a `generate` with `n > 1` (`GenerateResult.choices`): the fields of a single reply but
/// `prompt_tokens` (shared), plus its `index`.
public struct GenerateChoice: Codable, Equatable, Sendable {
    /// 0..<n; choice `i` was sampled with seed `seed + i`.
    public var index: Int
    public var text: String
    public var tokens: [Int]
    public var completionTokens: Int
    public var finishReason: FinishReason
    public var stopReason: String?
    public var timings: GenerateTimings

    public init(index: Int, _ result: GenerateResult) {
        self.index = index
        text = result.text
        tokens = result.tokens
        completionTokens = result.completionTokens
        finishReason = result.finishReason
        stopReason = result.stopReason
        timings = result.timings
    }

    enum CodingKeys: String, CodingKey {
        case index, text, tokens, completionTokens = "completion_tokens", finishReason = "finish_reason"
        case stopReason = "stop_reason", timings
    }
}
