/// The log-probability of one token under the model's distribution at one position.
///
/// Values are natural logarithms of the softmax of the model's raw logits (before repetition,
/// presence and frequency penalties, temperature and the top-k/top-p/min-p filters), as vLLM
/// reports them by default (`logprobs_mode = raw_logprobs`).
public struct TokenLogprob: Codable, Equatable, Sendable {
    /// Token id.
    public var token: Int
    /// The token's text on its own (a piece of a multi-byte character renders as U+FFFD).
    public var text: String
    /// The token's raw bytes (OpenAI's `bytes`): for pieces of a UTF-8 character these are exact.
    public var bytes: [UInt8]
    /// ln p(token), ≤ 0.
    public var logprob: Double

    public init(token: Int, text: String, bytes: [UInt8], logprob: Double) {
        self.token = token
        self.text = text
        self.bytes = bytes
        self.logprob = logprob
    }
}

/// Log-probabilities at one position: the token that was chosen and the most likely alternatives.
public struct TokenLogprobs: Codable, Equatable, Sendable {
    /// The token at this position (sampled, or the prompt's token for prompt logprobs).
    public var chosen: TokenLogprob
    /// The `n` most likely tokens, most likely first (ties by token id); may include `chosen`.
    public var top: [TokenLogprob]

    public init(chosen: TokenLogprob, top: [TokenLogprob]) {
        self.chosen = chosen
        self.top = top
    }

    /// Most alternatives a request may ask for (OpenAI's and vLLM's default limit).
    public static let maxTopLogprobs = 20
}
