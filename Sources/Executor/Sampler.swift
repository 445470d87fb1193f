import Foundation
import KvantCore

/// Sampling settings of one request (names as in llama.cpp / vLLM).
public struct SamplingParameters: Sendable, Equatable, Codable {
    /// 0 (or below) = greedy (argmax).
    public var temperature: Float
    /// Keep the `topK` most likely tokens; 0 = off.
    public var topK: Int
    /// Keep the smallest set of most likely tokens whose probability sum reaches `topP`; 1 = off.
    public var topP: Float
    /// Drop tokens whose probability is below `minP × p(max)`; 0 = off.
    public var minP: Float
    /// CTRL-style repetition penalty (Keskar et al. 2019; llama.cpp `penalty_repeat`) over the last
    /// `repetitionWindow` tokens: logit / penalty when positive, × penalty when negative; 1 = off.
    public var repetitionPenalty: Float
    public var repetitionWindow: Int
    /// Same seed, same logits → same tokens. nil = a random seed.
    public var seed: UInt64?
    /// OpenAI/vLLM presence penalty: logit − presencePenalty for every token that occurs in the output
    /// so far (`history[outputStart...]`); 0 = off.
    public var presencePenalty: Float = 0
    /// OpenAI/vLLM frequency penalty: logit − frequencyPenalty × (times the token occurs in the output); 0 = off.
    public var frequencyPenalty: Float = 0
    /// Tokens never sampled (their logits are −∞), e.g. end-of-generation tokens for `ignore_eos`.
    public var suppressedTokens: [Int32] = []

    public init(temperature: Float = 0, topK: Int = 0, topP: Float = 1, minP: Float = 0,
                repetitionPenalty: Float = 1, repetitionWindow: Int = 64, seed: UInt64? = nil,
                presencePenalty: Float = 0, frequencyPenalty: Float = 0, suppressedTokens: [Int32] = []) {
        self.temperature = temperature; self.topK = topK; self.topP = topP; self.minP = minP
        self.repetitionPenalty = repetitionPenalty; self.repetitionWindow = repetitionWindow; self.seed = seed
        self.presencePenalty = presencePenalty; self.frequencyPenalty = frequencyPenalty
        self.suppressedTokens = suppressedTokens
    }

    /// Greedy decoding.
    public static let greedy = SamplingParameters()

    /// - Throws: `KvantError(.invalidArgument)` naming the field out of range.
    public func validate() throws {
        guard temperature.isFinite, temperature >= 0, temperature <= 100 else { throw KvantError(.invalidArgument, "temperature \(temperature) must be in [0, 100]") }
        guard topK >= 0 else { throw KvantError(.invalidArgument, "top_k \(topK) must be ≥ 0") }
        guard topP > 0, topP <= 1 else { throw KvantError(.invalidArgument, "top_p \(topP) must be in (0, 1]") }
        guard minP >= 0, minP <= 1 else { throw KvantError(.invalidArgument, "min_p \(minP) must be in [0, 1]") }
        guard repetitionPenalty.isFinite, repetitionPenalty > 0 else { throw KvantError(.invalidArgument, "repetition_penalty \(repetitionPenalty) must be > 0") }
        guard repetitionWindow >= 0 else { throw KvantError(.invalidArgument, "repetition window \(repetitionWindow) must be ≥ 0") }
        guard presencePenalty.isFinite, abs(presencePenalty) <= 2 else { throw KvantError(.invalidArgument, "presence_penalty \(presencePenalty) must be in [-2, 2]") }
        guard frequencyPenalty.isFinite, abs(frequencyPenalty) <= 2 else { throw KvantError(.invalidArgument, "frequency_penalty \(frequencyPenalty) must be in [-2, 2]") }
    }
}

/// xoshiro256** (Blackman & Vigna), seeded through SplitMix64: a reproducible generator.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)
    public init(seed: UInt64) {
        var x = seed
        func splitmix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s = (splitmix(), splitmix(), splitmix(), splitmix())
    }
    public mutating func next() -> UInt64 {
        let r = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3; s.2 ^= t
        s.3 = (s.3 << 45) | (s.3 >> 19)
        return r
    }
    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}

/// Picks the next token from logits. Chain (llama.cpp's default order): suppressed tokens → repetition
/// penalty → presence/frequency penalties → greedy if temperature ≤ 0 → top-k → top-p → min-p (on the
/// temperature-1 distribution) → temperature → draw.
public struct Sampler: Sendable {
    public let parameters: SamplingParameters
    private var rng: SeededGenerator

    /// - Throws: `KvantError(.invalidArgument)` for parameters out of range.
    public init(_ parameters: SamplingParameters) throws {
        try parameters.validate()
        self.parameters = parameters
        self.rng = SeededGenerator(seed: parameters.seed ?? UInt64.random(in: .min ... .max))
    }

    /// The candidate tokens and their probabilities after penalty and filters, most likely first (the
    /// distribution `sample` draws from). `history`: previous tokens (prompt and generated);
    /// `outputStart`: index in `history` of the first generated token (presence/frequency penalties
    /// count only those, as OpenAI and vLLM do).
    public func candidates(logits: UnsafeBufferPointer<Float>, history: [Int32], outputStart: Int = 0) -> [(token: Int32, p: Double)] {
        let p = parameters
        var l = Array(logits)
        for t in p.suppressedTokens where t >= 0 && Int(t) < l.count { l[Int(t)] = -.infinity }
        if p.repetitionPenalty != 1, p.repetitionWindow > 0 {
            var seen = Set<Int32>()
            for t in history.suffix(p.repetitionWindow) where t >= 0 && Int(t) < l.count && seen.insert(t).inserted {
                l[Int(t)] = l[Int(t)] > 0 ? l[Int(t)] / p.repetitionPenalty : l[Int(t)] * p.repetitionPenalty
            }
        }
        if p.presencePenalty != 0 || p.frequencyPenalty != 0 {
            var counts: [Int32: Int] = [:]
            for t in history[min(max(0, outputStart), history.count)...] where t >= 0 && Int(t) < l.count { counts[t, default: 0] += 1 }
            for (t, n) in counts { l[Int(t)] -= p.presencePenalty + p.frequencyPenalty * Float(n) }
        }
        @inline(__always) func logit(_ i: Int) -> Float { l[i] }
        var maxL = -Float.infinity
        var arg = 0
        for i in 0..<l.count where l[i] > maxL { maxL = l[i]; arg = i }
        if p.temperature <= 0 || p.topK == 1 { return [(Int32(arg), 1)] }
        // Tokens more than 40 nats below the maximum (p < 4e-18 relative) are never candidates.
        var cand: [(Int32, Float)] = []
        let floor = maxL - 40
        for i in 0..<l.count where l[i] >= floor { cand.append((Int32(i), l[i])) }
        cand.sort { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0 < $1.0 }
        if p.topK > 0, cand.count > p.topK { cand.removeLast(cand.count - p.topK) }
        // Probabilities at temperature 1 for top-p / min-p.
        var probs = cand.map { exp(Double($0.1 - maxL)) }
        var z = probs.reduce(0, +)
        if p.topP < 1 {
            var acc = 0.0, keep = probs.count
            for (i, q) in probs.enumerated() {
                acc += q / z
                if acc >= Double(p.topP) { keep = i + 1; break }
            }
            cand.removeLast(cand.count - keep); probs.removeLast(probs.count - keep)
            z = probs.reduce(0, +)
        }
        if p.minP > 0 {
            let threshold = Double(p.minP) * probs[0]
            let keep = max(1, probs.firstIndex { $0 < threshold } ?? probs.count)
            cand.removeLast(cand.count - keep); probs.removeLast(probs.count - keep)
        }
        // Temperature.
        let invT = 1 / Double(p.temperature)
        var w = cand.map { exp(Double($0.1 - maxL) * invT) }
        z = w.reduce(0, +)
        for i in w.indices { w[i] /= z }
        return zip(cand, w).map { ($0.0.0, $0.1) }
    }

    /// Draws the next token. Greedy ignores the seed; otherwise the seeded generator makes runs reproducible.
    public mutating func sample(logits: UnsafeBufferPointer<Float>, history: [Int32], outputStart: Int = 0) -> Int32 {
        let c = candidates(logits: logits, history: history, outputStart: outputStart)
        if c.count == 1 { return c[0].token }
        let u = rng.nextUnit()
        var acc = 0.0
        for (t, p) in c {
            acc += p
            if u < acc { return t }
        }
        return c[c.count - 1].token
    }

    public mutating func sample(logits: [Float], history: [Int32]) -> Int32 {
        logits.withUnsafeBufferPointer { sample(logits: $0, history: history) }
    }
}

extension Sampler {
    /// Log-probabilities under the raw logits (log-softmax, before penalties, temperature and filters; vLLM's
    /// default `raw_logprobs`): of `chosen`, and the `top` most likely tokens, most likely first (ties by id).
    /// - Parameters: logits: [vocab]; top: 0…20 alternatives.
    /// - Returns: ln p of `chosen` (−∞ for an id outside the logits) and the alternatives as (token, ln p).
    public static func logprobs(logits: UnsafeBufferPointer<Float>, chosen: Int32, top: Int)
        -> (chosen: Double, top: [(token: Int32, logprob: Double)]) {
        guard !logits.isEmpty else { return (-.infinity, []) }
        var maxL = -Float.infinity
        for x in logits where x > maxL { maxL = x }
        var z = 0.0
        for x in logits { z += exp(Double(x - maxL)) }
        let logZ = Double(maxL) + log(z)
        // Top-n by a small insertion-sorted list: one pass over the vocabulary.
        var best: [(token: Int32, logit: Float)] = []
        let n = max(0, top)
        if n > 0 {
            best.reserveCapacity(n + 1)
            for i in 0..<logits.count {
                let x = logits[i]
                if best.count == n, x <= best[n - 1].logit { continue }
                var j = best.count
                while j > 0, best[j - 1].logit < x { j -= 1 }
                best.insert((Int32(i), x), at: j)
                if best.count > n { best.removeLast() }
            }
        }
        let c = Int(chosen)
        let chosenLP = c >= 0 && c < logits.count ? Double(logits[c]) - logZ : -.infinity
        return (chosenLP, best.map { ($0.token, Double($0.logit) - logZ) })
    }
}
