import ControlProtocol
import KvantCore

// The engine boundary: everything the daemon needs from a model executor, KV cache and
// tokenizer. An adapter over Executor/KVCache/Tokenizers implements these three protocols;
// the daemon never imports those targets' types directly.
//
// Threading contract (what the adapter may rely on):
// - `InferenceBackend.loadModel` and `validateScales` run on a dedicated loader thread and
//   may run while another model serves requests.
// - All other `LoadedModel` and `GenerationSequence` methods run on the engine's single
//   compute thread, one at a time: never two of them concurrently, for all models and
//   sequences together. They may block for as long as the work takes.
// - Exceptions: `LoadedModel.info`, `kvCacheStats()` and `currentScales()` may be called from
//   any thread at any time (for `stats`, `health`, `scales-show` during long work) and must
//   be thread-safe.
// - Errors: throw `KvantError` with the reason that fits (invalid_argument for bad input
//   files, not_found, resource_exhausted when the KV pool cannot hold a sequence,
//   failed_precondition for a dtype/scales mismatch); any other error is reported as `internal`.

/// A model loader: builds a `LoadedModel` (weights, tokenizer, KV-cache pool) from a file.
public protocol InferenceBackend: Sendable {
    /// Short name reported by `version` (e.g. `kvant-cpu`).
    var name: String { get }

    /// Loads the model at `request.path` and allocates its KV-cache pool.
    ///
    /// Blocking; runs on the loader thread. Call `progress` at least every few seconds with a
    /// short human-readable phase ("mapping weights", "allocating KV cache"): each call extends
    /// systemd's start-up timeout (`EXTEND_TIMEOUT_USEC`) and updates `STATUS=`.
    /// - Throws: `KvantError` — `.invalidArgument` for an unreadable/unsupported file (naming the
    ///   file and the field), `.resourceExhausted` when `kvCacheBytes` cannot hold one sequence of
    ///   one block, `.failedPrecondition` for a static int8 dtype without a usable scale file,
    ///   `.unavailable` when this build has no executor.
    func loadModel(_ request: ModelLoadRequest, progress: @escaping @Sendable (String) -> Void) throws -> any LoadedModel

    /// Reads and checks a scale file (vLLM `kv_cache_scales.json` schema) without installing it.
    /// With a model, also checks layer and KV-head counts against it; `epoch` of the report is nil.
    /// - Throws: `KvantError(.invalidArgument)` naming the file and the JSON field.
    func validateScales(path: String, for model: (any LoadedModel)?) throws -> ScalesReport
}

/// What `loadModel` is asked to build. Paths are already realpath'd and checked against `allowed_dirs`.
public struct ModelLoadRequest: Sendable, Equatable {
    /// GGUF model file.
    public var path: String
    public var kvCacheDType: KVCacheDType
    /// Scale file for `int8_pertensor` / `int8_pertensor_perhead`; nil otherwise (or to use unit scales).
    public var quantizationParamPath: String?
    /// KV-cache pool budget, bytes. The pool preallocates this much; capacity in tokens follows.
    public var kvCacheBytes: Int
    /// Token positions per KV block.
    public var blockSize: Int
    /// Longest sequence in tokens (prompt + generated); nil = the model's trained context length.
    public var maxModelLen: Int?
    /// Compute threads; 0 = one per core.
    public var threads: Int
    /// Automatic prefix caching (vLLM's `enable_prefix_caching`): prompts that start like an earlier one
    /// reuse its cached KV blocks and prefill only the rest.
    public var enablePrefixCaching: Bool
    /// Sequences live at once (`max_num_seqs`): an `int4_pertoken` pool sets aside the int8 residual rings of
    /// that many sequences out of `kvCacheBytes` (`KVCachePool.residualReserveBytes`).
    public var maxNumSeqs: Int
    /// The most prompt (or recomputed) tokens of one sequence the engine runs in one step (its
    /// `max_num_batched_tokens`, at least `max_num_seqs`): the pool sizes its prefill chunk to it (an
    /// `int4_pertoken` pool's int8 residual rings hold that many positions written before they are attended; the
    /// executor splits longer inputs). nil = the executor's own micro-batch (512 tokens).
    public var maxNumBatchedTokens: Int?

    public init(path: String, kvCacheDType: KVCacheDType, quantizationParamPath: String?, kvCacheBytes: Int,
                blockSize: Int, maxModelLen: Int?, threads: Int, enablePrefixCaching: Bool = true, maxNumSeqs: Int = 16,
                maxNumBatchedTokens: Int? = nil) {
        self.enablePrefixCaching = enablePrefixCaching
        self.maxNumSeqs = maxNumSeqs
        self.maxNumBatchedTokens = maxNumBatchedTokens
        self.path = path
        self.kvCacheDType = kvCacheDType
        self.quantizationParamPath = quantizationParamPath
        self.kvCacheBytes = kvCacheBytes
        self.blockSize = blockSize
        self.maxModelLen = maxModelLen
        self.threads = threads
    }
}

/// Sampling parameters of one sequence (vLLM `SamplingParams` meanings).
public struct SamplingConfig: Sendable, Equatable {
    /// 0 = greedy (argmax).
    public var temperature: Double
    /// Nucleus mass in (0, 1]; 1 = off.
    public var topP: Double
    /// Keep the k most likely tokens; 0 or -1 = off.
    public var topK: Int
    /// Drop tokens with probability < minP · p_max; 0 = off.
    public var minP: Double
    /// CTRL-style penalty on tokens already in prompt or output; 1 = off.
    public var repetitionPenalty: Double
    /// RNG seed; nil = nondeterministic.
    public var seed: UInt64?
    /// Subtracted once from the logit of every token already generated (output only); 0 = off.
    public var presencePenalty: Double = 0
    /// Subtracted from a token's logit per time it was generated (output only); 0 = off.
    public var frequencyPenalty: Double = 0
    /// End-of-sequence tokens are never sampled (llama.cpp's `ignore_eos`).
    public var ignoreEOS: Bool = false
    /// vLLM's `skip_special_tokens`: special tokens are left out of the generated text (default true).
    public var skipSpecialTokens: Bool = true
    /// Alternatives reported with each generated token's log-probability (0…20); nil = no logprobs.
    public var logprobs: Int?
    /// Alternatives reported with each prompt token's log-probability (0…20); nil = none.
    public var promptLogprobs: Int?

    public init(temperature: Double = 1, topP: Double = 1, topK: Int = 0, minP: Double = 0,
                repetitionPenalty: Double = 1, seed: UInt64? = nil) {
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.minP = minP
        self.repetitionPenalty = repetitionPenalty
        self.seed = seed
    }

    public init(_ params: GenerateParams) {
        self.init(temperature: params.temperature, topP: params.topP, topK: params.topK, minP: params.minP,
                  repetitionPenalty: params.repetitionPenalty, seed: params.seed)
        presencePenalty = params.presencePenalty
        frequencyPenalty = params.frequencyPenalty
        ignoreEOS = params.ignoreEOS
        skipSpecialTokens = params.skipSpecialTokens
        logprobs = params.logprobs
        promptLogprobs = params.promptLogprobs
    }
}

/// Thrown by `LoadedModel.makeSequence` when the KV cache cannot hold the sequence now but could
/// once running sequences release their blocks (`AllocationStatus.later`): back-pressure, not an
/// error. The engine keeps the request waiting and retries in arrival order; if nothing runs and it
/// still does not fit, it fails with `resource_exhausted` and `message`.
public struct KVCacheAdmissionLater: Error, Sendable, Equatable {
    /// Tokens the sequence needs reserved now (the prompt and the first decode position with on-demand blocks;
    /// prompt + max_tokens, capped at max_model_len, when everything is reserved up front).
    public var tokensNeeded: Int
    /// Why it does not fit, for the error when it never will (names tokens, capacity, kv_cache_bytes).
    public var message: String

    public init(tokensNeeded: Int, message: String) {
        self.tokensNeeded = tokensNeeded
        self.message = message
    }
}

/// How full a KV-cache pool is: blocks in use of all blocks.
public struct KVCacheUsage: Sendable, Equatable {
    /// Blocks held by live sequences.
    public var usedBlocks: Int
    /// Blocks in the pool.
    public var totalBlocks: Int

    public init(usedBlocks: Int, totalBlocks: Int) {
        self.usedBlocks = usedBlocks
        self.totalBlocks = totalBlocks
    }

    /// usedBlocks / totalBlocks in 0…1 (0 for an empty pool).
    public var fraction: Double { totalBlocks > 0 ? Double(usedBlocks) / Double(totalBlocks) : 0 }
}

/// One sampled token.
public struct GeneratedToken: Sendable, Equatable {
    /// Token id in the model's vocabulary.
    public var token: Int
    /// Its text piece (detokenized incrementally; may be "" when the token only starts a UTF-8 sequence).
    public var text: String
    /// True for an end-of-sequence / end-of-turn token; its text is not part of the output.
    public var isEndOfSequence: Bool
    /// Its log-probability and the top alternatives, when the sampling config asked for logprobs.
    public var logprobs: TokenLogprobs?

    public init(token: Int, text: String, isEndOfSequence: Bool, logprobs: TokenLogprobs? = nil) {
        self.token = token
        self.text = text
        self.isEndOfSequence = isEndOfSequence
        self.logprobs = logprobs
    }
}

/// Cancellation and progress for long operations (`perplexity`, `calibrate`).
public final class OperationControl: @unchecked Sendable {
    private let cancelledFlag: () -> Bool
    private let report: (Int, Int) -> Void

    public init(isCancelled: @escaping () -> Bool, progress: @escaping (Int, Int) -> Void) {
        self.cancelledFlag = isCancelled
        self.report = progress
    }

    /// Check between windows/chunks; when true, stop and throw `KvantError(.cancelled, …)`.
    public var isCancelled: Bool { cancelledFlag() }

    /// Report `done` of `total` tokens. Call at least every few seconds: it also feeds the
    /// systemd watchdog (`WATCHDOG=1` stops when the compute thread makes no progress).
    public func progress(done: Int, total: Int) { report(done, total) }
}

/// What `calibrate` is asked to do; paths are realpath'd and checked.
public struct CalibrationRequest: Sendable, Equatable {
    /// `num_tokens` when a request gives none.
    public static let defaultNumTokens = 2048

    /// Text file; nil = the backend's built-in calibration text.
    public var textPath: String?
    /// Tokens of text to run through the model.
    public var numTokens: Int
    /// One scale per (layer, KV head) instead of per layer.
    public var perHead: Bool
    /// Tensor-parallel size to write (vLLM schema: one scale map per TP rank).
    public var tpSize: Int
    /// Percentile of |x| used as amax, in (0, 100]: 100 = plain max (`amax / 127`), below 100 the
    /// clip is capped at that percentile; nil = the backend's default method (Kvant: the
    /// MSE-optimal shared K/V clip, `KVCalibrator.defaultMethod`).
    public var percentile: Double?
    /// Also derive and write separate K and V scales (`k_scaling_factor` / `v_scaling_factor`).
    public var separateKV: Bool
    /// File to write (`kv_cache_scales.json` schema); its directory exists.
    public var outputPath: String

    public init(textPath: String?, numTokens: Int, perHead: Bool, tpSize: Int, percentile: Double?,
                separateKV: Bool = true, outputPath: String) {
        self.separateKV = separateKV
        self.textPath = textPath
        self.numTokens = numTokens
        self.perHead = perHead
        self.tpSize = tpSize
        self.percentile = percentile
        self.outputPath = outputPath
    }
}

/// A loaded model with its tokenizer and KV-cache pool. See the threading contract above.
public protocol LoadedModel: AnyObject, Sendable {
    /// Hyper-parameters and KV-cache geometry; reflects the current dtype after `setKVCacheDType`. Thread-safe.
    var info: ModelInfo { get }

    /// Token ids of `text` (with the BOS token if the model adds one).
    func tokenize(_ text: String) throws -> [Int]

    /// Token ids of `text`; `addSpecialTokens: false` leaves out BOS/EOS (a chat prompt whose template
    /// writes them itself). Special tokens written in the text (`<|im_start|>`) are parsed either way.
    func tokenize(_ text: String, addSpecialTokens: Bool) throws -> [Int]

    /// The text of `tokens` (control tokens left out, invalid UTF-8 replaced by U+FFFD).
    /// - Throws: `.invalidArgument` naming the first id outside the vocabulary.
    func detokenize(_ tokens: [Int]) throws -> String

    /// The model's chat template (GGUF `tokenizer.chat_template`; nil when the file has none) and the
    /// texts of its BOS and EOS tokens, which templates refer to as `bos_token` / `eos_token`. Thread-safe.
    var chatTemplate: ChatTemplateSource { get }

    /// Creates a sequence for `prompt` (token ids) and has KV blocks promised to it (admission control; vLLM's
    /// `AllocStatus`): a backend that supports preemption (`GenerationSequence.supportsPreemption`) promises the
    /// prompt's blocks and takes the generated tokens' on demand (`reserveDecode`); one that does not promises
    /// the most it will hold while it grows to `min(prompt.count + maxTokens, max_model_len)` tokens, so its
    /// decoding never runs out of blocks. Sliding-window layers count only their window.
    /// - Parameter maxTokens: tokens the request may generate (its budget), >= 1.
    /// - Throws: `KVCacheAdmissionLater` when the blocks are not free now but would be once other
    ///   sequences release theirs (the engine queues the request); `KvantError(.resourceExhausted)`
    ///   when the whole pool is too small for it (naming the tokens needed, the capacity and
    ///   `kv_cache_bytes`).
    func makeSequence(prompt: [Int], maxTokens: Int, sampling: SamplingConfig) throws -> any GenerationSequence

    /// One decode step of several live sequences of this model at once (continuous batching: the
    /// rows share each pass over the weights). Results in the order given; one sequence's failure
    /// does not fail the others. Runs on the compute lane. The default decodes them one by one.
    func decodeBatch(_ sequences: [any GenerationSequence]) -> DecodeBatchOutcome

    /// One scheduler step of this model's sequences: a decode step of `decode` (as `decodeBatch`) and the
    /// prefill or recompute `chunks` (as `prefill(maxTokens:)` / `recompute(maxTokens:)` of each, in order),
    /// ideally in one forward pass (vLLM V1's mixed batch: the weights are read once for the decode rows and
    /// the chunks' tokens together). The results must be those of running the parts one after the other:
    /// the same tokens, and one sequence's failure fails no other. No sequence appears twice. Runs on the
    /// compute lane. The default runs them one after the other.
    func runStep(decode: [any GenerationSequence], chunks: [StepChunk]) -> StepOutcome

    /// The KV cache's statistics (blocks total/used, bytes, dtype, epoch, …) as any Encodable value
    /// that encodes to a JSON object; sent verbatim as `stats.kv_cache`. Thread-safe.
    func kvCacheStats() -> any Encodable & Sendable

    /// Blocks in use of the current pool (systemd's `STATUS=`, `kv_cache_usage_perc`). Thread-safe.
    func kvCacheUsage() -> KVCacheUsage

    /// The installed static scales, nil when the dtype uses none. Thread-safe.
    func currentScales() -> ScalesReport?

    /// Reads, validates and installs the scale file (a new epoch; live sequences keep theirs).
    /// - Returns: the report with the new `epoch`.
    /// - Throws: `.invalidArgument` for a bad file, `.failedPrecondition` when the dtype uses no static scales.
    func installScales(path: String) throws -> ScalesReport

    /// Switches the KV-cache dtype: a new pool for new sequences; live sequences keep the pool they started on.
    func setKVCacheDType(_ dtype: KVCacheDType, quantizationParamPath: String?) throws

    /// Perplexity of the text file over windows of `contextLength` tokens (llama.cpp `perplexity`
    /// method: score the second half of each window).
    func perplexity(path: String, contextLength: Int, control: OperationControl) throws -> PerplexityResult

    /// Runs text through the model recording K/V amax per (layer, KV head), writes the scale file.
    func calibrate(_ request: CalibrationRequest, control: OperationControl) throws -> CalibrateResult
}

/// What one `LoadedModel.decodeBatch` call did.
public struct DecodeBatchOutcome {
    /// One result per sequence, in the order given.
    public var results: [Result<GeneratedToken, Error>]
    /// Forward passes run: 1 when every row shared one pass, `results.count` when decoded one by one.
    public var passes: Int

    public init(results: [Result<GeneratedToken, Error>], passes: Int) {
        self.results = results
        self.passes = passes
    }
}

/// A chunk of a scheduler step: the next at most `maxTokens` (>= 1) positions of a sequence's prefill or of its
/// recompute after a preemption.
public struct StepChunk {
    public enum Kind: Sendable, Equatable {
        /// `GenerationSequence.prefill(maxTokens:)`.
        case prefill
        /// `GenerationSequence.recompute(maxTokens:)`.
        case recompute
    }
    public var sequence: any GenerationSequence
    public var kind: Kind
    public var maxTokens: Int
    /// Parallel sampling: the unforked choices a prefill chunk forks the sequence into if it is the prompt's last
    /// (`GenerationSequence.prefill(maxTokens:forks:)`); empty for a recompute.
    public var forks: [any GenerationSequence]

    public init(sequence: any GenerationSequence, kind: Kind, maxTokens: Int, forks: [any GenerationSequence] = []) {
        self.sequence = sequence
        self.kind = kind
        self.maxTokens = maxTokens
        self.forks = forks
    }
}

/// What one `LoadedModel.runStep` call did.
public struct StepOutcome {
    /// The decode rows' results and passes (as `decodeBatch` reports them).
    public var decode: DecodeBatchOutcome
    /// One per chunk, in the order given: after a prompt's last prefill chunk, the first generated token of the
    /// sequence and then of each of its forks (nil after an earlier chunk), nil for a recompute chunk, or the
    /// chunk's error.
    public var chunks: [Result<[GeneratedToken]?, Error>]
    /// Forward passes that ran decode rows and chunk tokens together (0 when the parts ran one after the other).
    public var fusedPasses: Int

    public init(decode: DecodeBatchOutcome, chunks: [Result<[GeneratedToken]?, Error>], fusedPasses: Int) {
        self.decode = decode
        self.chunks = chunks
        self.fusedPasses = fusedPasses
    }
}

extension LoadedModel {
    public func runStep(decode: [any GenerationSequence], chunks: [StepChunk]) -> StepOutcome {
        let decoded = decode.isEmpty ? DecodeBatchOutcome(results: [], passes: 0) : decodeBatch(decode)
        return StepOutcome(decode: decoded, chunks: chunks.map(\.separately), fusedPasses: 0)
    }
}

extension StepChunk {
    /// The chunk run on its own (`prefill(maxTokens:forks:)` or `recompute(maxTokens:)`).
    public var separately: Result<[GeneratedToken]?, Error> {
        switch kind {
        case .prefill: Result { try sequence.prefill(maxTokens: maxTokens, forks: forks) }
        case .recompute: Result { try sequence.recompute(maxTokens: maxTokens); return nil }
        }
    }
}

extension LoadedModel {
    public func decodeBatch(_ sequences: [any GenerationSequence]) -> DecodeBatchOutcome {
        DecodeBatchOutcome(results: sequences.map { sequence in Result { try sequence.decode() } }, passes: sequences.count)
    }
}

/// One sequence being generated. Methods run on the compute thread, one at a time.
public protocol GenerationSequence: AnyObject {
    /// Looks the prompt up in the prefix cache and takes the longest cached prefix, so the prefill starts
    /// after it (automatic prefix caching). Called once, before the first `prefill(maxTokens:)`, when the
    /// sequence is about to be prefilled (not at admission: the `n` choices of a request are admitted
    /// together, and the later ones find the first one's prompt blocks only once its prefill committed them).
    /// A no-op for backends without a prefix cache.
    func attachCachedPrefix()
    /// Prompt tokens whose K/V are not in the cache yet; 0 once the prefill sampled the first token. After
    /// `attachCachedPrefix`, a sequence whose prompt prefix was cached starts below the prompt length.
    var prefillRemaining: Int { get }
    /// Chunked prefill (vLLM's chunked prefill): runs the next at most `maxTokens` (>= 1) prompt tokens from
    /// the sequence's computed position (not from 0: chunks already run, or a cached prefix), writes their
    /// K/V, and samples the first token when this chunk reaches the end of the prompt. A backend may end a
    /// chunk early on a block boundary, but always runs at least one token. The outputs are those of one
    /// unchunked prefill, token for token.
    /// - Returns: the first generated token after the last chunk, nil after an earlier one.
    func prefill(maxTokens: Int) throws -> GeneratedToken?
    /// Decode: feeds the last sampled token, samples the next.
    /// - Throws: `.resourceExhausted` when no KV block is free for the next position.
    func decode() throws -> GeneratedToken
    /// Frees the sequence's KV blocks; called exactly once, also after errors and cancellation (also on a
    /// preempted sequence).
    func release()

    // MARK: On-demand blocks and preemption (vLLM V1's recompute preemption)

    /// True when the sequence can be preempted (`preempt`, `readmit`, `recompute`); false for backends that
    /// reserve every block up front (then `reserveDecode` always succeeds).
    var supportsPreemption: Bool { get }
    /// The KV cache the sequence's blocks live in (preempting a sequence of another cache frees none of this
    /// one's); nil when the backend has a single cache.
    var kvCacheIdentity: ObjectIdentifier? { get }
    /// Makes sure the KV cache holds a block for the position the next `decode` writes (on-demand blocks:
    /// admission promised only the prompt). False when no block is free now: the scheduler preempts a
    /// sequence and asks again. Nothing changes on false.
    func reserveDecode() -> Bool
    /// Preemption: frees every KV block the sequence holds (full blocks may stay in the prefix cache) and its
    /// admission, keeping its tokens (prompt and those generated) and its sampler (RNG state included), so it
    /// continues exactly where it was after `readmit` and a recompute. Not called on a released sequence.
    func preempt()
    /// After `preempt`: asks the KV cache again for the blocks the recompute needs (its prompt and the tokens
    /// generated so far, plus the next decode position). False when they are not free now (nothing changes).
    /// Then the scheduler calls `attachCachedPrefix` and runs `prefill(maxTokens:)` (preempted during its
    /// prefill) or `recompute(maxTokens:)` (preempted while decoding).
    func readmit() -> Bool
    /// Positions to compute again before decoding goes on (0 unless preempted while decoding and not yet
    /// recomputed); counts from the computed length (a cached prefix or chunks run).
    var recomputeRemaining: Int { get }
    /// Recomputes the next at most `maxTokens` (>= 1) positions of a sequence preempted while decoding: its
    /// prompt and generated tokens but the last (the next `decode` feeds that one). Samples nothing and does
    /// not touch the sampler; K/V come out as the original prefill and decode steps wrote them (generated
    /// positions round as decode rows do), so the following tokens are those of an undisturbed run.
    func recompute(maxTokens: Int) throws
    /// After `prefill`, when the sampling config asked for prompt logprobs: one entry per prompt token,
    /// the first nil. Nil otherwise.
    var promptLogprobs: [TokenLogprobs?]? { get }

    // MARK: Parallel sampling (`n > 1`: one prefill, forked blocks)

    /// A sibling of this sequence for parallel sampling (vLLM's `n`): the same prompt and token budget, its own
    /// sampler (`sampling`: seed, temperature, …). It holds no KV blocks and is not admitted: it gets them when
    /// this sequence's prefill forks it (`prefill(maxTokens:forks:)`: every block shared, copy-on-write of the
    /// partially filled last block at its first write), or, when it is never forked (this sequence ended
    /// before its last prefill chunk), through `readmit` like a sequence preempted during its prefill.
    /// nil when the backend cannot fork (the choices are then prefilled as sequences of their own).
    func makeFork(sampling: SamplingConfig) throws -> (any GenerationSequence)?
    /// `prefill(maxTokens:)` that, when this chunk reaches the end of the prompt, also samples the first token of
    /// each of `forks` (made by `makeFork`, not yet forked) from the same prompt logits with the fork's own
    /// sampler, and gives it all of this sequence's KV blocks (shared; reference counts; copy-on-write). Then
    /// the forks are prefilled sequences that decode, preempt and release on their own.
    /// - Returns: nil after an earlier chunk; after the last one, this sequence's first token followed by one per
    ///   fork, in the order given.
    func prefill(maxTokens: Int, forks: [any GenerationSequence]) throws -> [GeneratedToken]?
}

extension GenerationSequence {
    public var promptLogprobs: [TokenLogprobs?]? { nil }

    public var supportsPreemption: Bool { false }
    public var kvCacheIdentity: ObjectIdentifier? { nil }
    public func reserveDecode() -> Bool { true }
    public func preempt() {}
    public func readmit() -> Bool { true }
    public var recomputeRemaining: Int { 0 }
    public func recompute(maxTokens: Int) throws {}

    public func attachCachedPrefix() {}

    public func makeFork(sampling: SamplingConfig) throws -> (any GenerationSequence)? { nil }

    public func prefill(maxTokens: Int, forks: [any GenerationSequence]) throws -> [GeneratedToken]? {
        guard forks.isEmpty else { throw KvantError(.internal, "this inference backend cannot fork sequences") }
        return try prefill(maxTokens: maxTokens).map { [$0] }
    }

    /// Prefill in one go: takes the cached prefix, runs the whole remaining prompt and samples the first token.
    public func prefill() throws -> GeneratedToken {
        attachCachedPrefix()
        while true {
            if let first = try prefill(maxTokens: max(1, prefillRemaining)) { return first }
        }
    }
}

/// A model's chat template and the special-token texts it uses.
public struct ChatTemplateSource: Sendable, Equatable {
    /// Jinja source from GGUF `tokenizer.chat_template`; nil when the model has none.
    public var template: String?
    /// Text of the BOS token (`bos_token` in templates), "" when the vocabulary has none.
    public var bosToken: String
    /// Text of the EOS token (`eos_token` in templates), "" when the vocabulary has none.
    public var eosToken: String

    public init(template: String?, bosToken: String, eosToken: String) {
        self.template = template
        self.bosToken = bosToken
        self.eosToken = eosToken
    }
}

extension LoadedModel {
    /// Backends written before `addSpecialTokens` existed: special tokens are added as `tokenize(_:)` does.
    public func tokenize(_ text: String, addSpecialTokens: Bool) throws -> [Int] { try tokenize(text) }

    public func detokenize(_ tokens: [Int]) throws -> String {
        throw KvantError(.unavailable, "this inference backend cannot detokenize")
    }

    public var chatTemplate: ChatTemplateSource { ChatTemplateSource(template: nil, bosToken: "", eosToken: "") }
}
