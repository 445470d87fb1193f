import ControlProtocol
import Dispatch
import KvantCore

/// One sequence from prefill to its end: end-of-sequence, a stop string, the token budget or the
/// calling task's cancellation. A plain type over three steps (prefill, decode, emit), so the rules
/// of when a generation ends are testable without a model or an engine.
///
/// Stop strings follow vLLM: the output text is cut before the earliest stop string found in it
/// (`stop_reason` names it); the end-of-sequence token's text is never part of the output.
struct GenerationLoop {
    /// Stop strings (`stop`); the first occurrence of any ends the generation.
    var stops: [String]
    /// Tokens the request may generate, >= 1 (`max_tokens` capped at `max_model_len - prompt`).
    var budget: Int

    /// How a generation ended.
    struct Outcome: Equatable {
        var text = ""
        var tokens: [Int] = []
        var finishReason = FinishReason.length
        /// The stop string that ended it, or "eos"; nil otherwise.
        var stopReason: String?
        /// Decode steps run (tokens after the prefill's).
        var decodeSteps = 0
        /// True when the prefill ran.
        var prefilled = false
        /// Uptime (ns) at the end of the prefill (or of the start when it never ran).
        var prefillEnd: UInt64 = 0
    }

    /// Runs the generation. `prefill` runs the prompt and returns the first token (nil when the request
    /// was cancelled during its prefill), `decode` each next one; `emit` streams every output token in
    /// order (not the end-of-sequence token); `onPrefilled` runs once after the prefill (the engine starts
    /// counting the sequence as decoding there). Runs on the caller's actor, so the closures may use its state.
    /// - Throws: what `prefill` or `decode` throw; a generation cancelled before or during its prefill ends
    ///   with `finishReason == .cancelled` and no tokens.
    func run(isolation: isolated (any Actor)? = #isolation,
             prefill: () async throws -> GeneratedToken?,
             decode: () async throws -> GeneratedToken,
             onPrefilled: () async -> Void = {},
             emit: (GeneratedToken) async -> Void) async throws -> Outcome {
        var out = Outcome()
        if Task.isCancelled {
            out.prefillEnd = DispatchTime.now().uptimeNanoseconds
            out.finishReason = .cancelled
            return out
        }
        guard var next = try await prefill() else {
            out.prefillEnd = DispatchTime.now().uptimeNanoseconds
            out.finishReason = .cancelled
            return out
        }
        out.prefillEnd = DispatchTime.now().uptimeNanoseconds
        out.prefilled = true
        await onPrefilled()
        while true {
            if next.isEndOfSequence {
                out.finishReason = .stop
                out.stopReason = "eos"
                return out
            }
            out.tokens.append(next.token)
            out.text += next.text
            await emit(next)
            if let match = GenerationLoop.firstStop(in: out.text, stops: stops) {
                out.text = String(out.text[..<match.range.lowerBound])
                out.finishReason = .stop
                out.stopReason = match.stop
                return out
            }
            if out.tokens.count >= budget { out.finishReason = .length; return out }
            if Task.isCancelled { out.finishReason = .cancelled; return out }
            next = try await decode()
            out.decodeSteps += 1
        }
    }

    /// The earliest occurrence of any of `stops` in `text`.
    static func firstStop(in text: String, stops: [String]) -> (stop: String, range: Range<String.Index>)? {
        var best: (stop: String, range: Range<String.Index>)?
        for stop in stops {
            if let range = text.range(of: stop), best == nil || range.lowerBound < best!.range.lowerBound {
                best = (stop, range)
            }
        }
        return best
    }
}
