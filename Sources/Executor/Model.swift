import CKernels
import Dispatch
import Foundation
import Kernels
import KVCache
import KvantCore
import ModelFormats
import Tokenizers

/// A loaded model: the mmap'd GGUF, its hyper-parameters and validated weight views. Immutable and shareable;
/// run it with a `ForwardSession`.
public final class Model: @unchecked Sendable {
    public let file: GGUFFile
    public let config: ModelConfig
    public let weights: ModelWeights
    /// EOS plus end-of-turn ids (`<end_of_turn>` for Gemma, `<|eot_id|>`/`<|end_of_text|>` for LLaMA 3,
    /// `<|im_end|>`/`<|endoftext|>` for ChatML models: SmolLM2, Qwen) found in the GGUF vocabulary; the generator's
    /// default stop tokens.
    public let endOfGenerationTokenIDs: Set<Int32>

    /// Opens and validates a GGUF model (an `Architecture`: gemma3, llama, qwen2, qwen3; any supported weight type).
    /// - Throws: `KvantError` naming the file and the key/tensor at fault.
    public convenience init(path: String) throws {
        try self.init(file: GGUFFile(path: path))
    }

    public init(file: GGUFFile) throws {
        self.file = file
        self.config = try ModelConfig(file: file)
        self.weights = try ModelWeights(file: file, config: config)
        var ids = Set<Int32>()
        if let e = try? file.uint("tokenizer.ggml.eos_token_id") { ids.insert(Int32(truncatingIfNeeded: e)) }
        if let eot = try? file.uint("tokenizer.ggml.eot_token_id") { ids.insert(Int32(truncatingIfNeeded: eot)) }
        if let toks = try? file.stringArray("tokenizer.ggml.tokens") {
            for name in ["<end_of_turn>", "<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>"] {
                if let i = toks.firstIndex(of: name) { ids.insert(Int32(i)) }
            }
        }
        self.endOfGenerationTokenIDs = ids
    }

    /// BOS token id (`tokenizer.ggml.bos_token_id`), nil when absent.
    public var bosTokenID: Int32? { (try? file.uint("tokenizer.ggml.bos_token_id")).map { Int32(truncatingIfNeeded: $0) } }
    /// EOS token id (`tokenizer.ggml.eos_token_id`), nil when absent.
    public var eosTokenID: Int32? { (try? file.uint("tokenizer.ggml.eos_token_id")).map { Int32(truncatingIfNeeded: $0) } }
    /// Whether the tokenizer adds BOS (`tokenizer.ggml.add_bos_token`, else llama.cpp's default for the vocabulary:
    /// SentencePiece yes, BPE only for the llama3/tekken pre-tokenizers; see `ggufAddsBOS`).
    public var addsBOS: Bool { ggufAddsBOS(file) }
}

/// Which rows of a forward pass produce logits.
public enum LogitRows: Sendable, Equatable {
    /// Only the last token (prefill before sampling, decode).
    case last
    /// Every token.
    case all
    /// Tokens `range` (indices into the `tokens` argument), e.g. the scored half of a perplexity chunk.
    case range(Range<Int>)
}

/// Runs forward passes of one `Model` (scratch buffers, matmul workers). One session per thread of control;
/// not re-entrant. Attention goes through a `KVCachePool` built from `model.config.kvCacheSpec(dtype:)`.
public final class ForwardSession: @unchecked Sendable {
    public let model: Model
    public let threads: Int
    /// Tokens per micro-batch of a prefill (llama.cpp's n_ubatch); longer inputs run in several passes.
    public let maxBatch: Int
    let mm: MatMul
    var ws: Workspace
    /// Position and sequence of each row of the current micro-batch.
    var rowPositions: [Int] = []
    var rowSequences: [SequenceID] = []
    /// Whether each row of the current micro-batch splits its keys over the threads as a decode row does
    /// (split-K); prefill rows never do. A row's rounding depends only on this flag, its sequence's cached
    /// keys and its own activations, never on the other rows of the micro-batch (batch invariance).
    var rowSplitKeys: [Bool] = []

    /// Attention rounding over fp16 caches: `.fast` (default) or `.llamaCpp` (bit-identical to llama.cpp's CPU run with
    /// flash attention off, for comparisons; ~10 % slower prefill). See `KVAttentionNumerics`. `.llamaCpp` also
    /// rounds Q4_K/Q6_K products as llama.cpp's batched kernels do (they depend on the batch size); `.fast` keeps
    /// every row's rounding independent of the batch, so batched decode gives each sequence exactly the tokens
    /// it gets alone.
    public let attentionNumerics: KVAttentionNumerics

    /// - Parameters: threads: workers for matmuls and attention (≥ 1); maxBatch: micro-batch in tokens (1…4096);
    ///   attentionNumerics: see the property.
    public init(model: Model, threads: Int = 2, maxBatch: Int = 512, attentionNumerics: KVAttentionNumerics = .fast) {
        self.model = model
        self.attentionNumerics = attentionNumerics
        self.threads = max(1, threads)
        self.maxBatch = min(max(1, maxBatch), 4096)
        self.mm = MatMul(threads: self.threads)
        self.mm.llamaCppBatchRounding = attentionNumerics == .llamaCpp
        self.ws = Workspace(config: model.config, batch: self.maxBatch)
    }

    deinit { ws.deallocate() }

    /// Runs `tokens` at positions `startPosition ..< startPosition + tokens.count` of `sequence`: reserves the
    /// cache to that length, writes each layer's post-RoPE K/V and attends over the cached prefix. K/V of positions
    /// `< startPosition` must already be in `pool`. Calls `body(i, logits[vocab])` for each requested row `i`
    /// (index into `tokens`, ascending); the buffer is only valid during the call.
    /// The input runs in micro-batches of at most `min(maxBatch, pool.prefillChunk)` tokens: each micro-batch
    /// writes all its positions before attending any, and the pool's int4 residual rings (and its admission)
    /// hold only `prefillChunk` such positions, so a longer input is split rather than overflow them. With `.fast`
    /// numerics every row rounds the same in any micro-batch (a one-row micro-batch splits its keys unless
    /// `splitKeys` is off, as below), so the split changes no logit.
    /// `splitKeys: false` keeps a single-row call from splitting its keys over the threads (split-K): a prefill
    /// chunk of one token then rounds as the same row does in a larger chunk (chunked prefill gives the tokens
    /// of an unchunked one). Decode leaves it on. `decodeRowsFrom`: rows at that position or later split their keys
    /// as a decode row does whatever `splitKeys` says (recomputing generated tokens after a preemption: their K/V
    /// and the hidden states computed from them round as in the decode steps that first computed them).
    /// - Throws: `KvantError(.invalidArgument)` for an out-of-vocabulary token or a bad position,
    ///   `.resourceExhausted` when the pool has no free blocks now, `.failedPrecondition` for a pool whose spec
    ///   does not match the model; errors thrown by `body`.
    public func forward(tokens: [Int32], startPosition: Int, sequence: SequenceID, pool: KVCachePool,
                        logits rows: LogitRows = .last, splitKeys: Bool = true, decodeRowsFrom: Int? = nil,
                        body: (Int, UnsafeBufferPointer<Float>) throws -> Void) throws {
        let c = model.config
        guard !tokens.isEmpty else { return }
        try checkPool(pool)
        for (i, t) in tokens.enumerated() where t < 0 || Int(t) >= c.vocabSize {
            throw KvantError(.invalidArgument, "token \(t) at index \(i) is outside the vocabulary (size \(c.vocabSize))")
        }
        guard startPosition >= 0, startPosition <= pool.length(of: sequence) else {
            throw KvantError(.invalidArgument, "start position \(startPosition) is beyond the cached length \(pool.length(of: sequence)) of \(sequence)")
        }
        let earliest = pool.earliestRecomputablePosition(of: sequence)
        guard startPosition >= earliest else {
            throw KvantError(.invalidArgument, "start position \(startPosition) of \(sequence): the sliding-window layers no longer hold the keys before position \(earliest)")
        }
        let wanted: Range<Int>
        switch rows {
        case .last: wanted = (tokens.count - 1)..<tokens.count
        case .all: wanted = 0..<tokens.count
        case .range(let r): wanted = r.clamped(to: 0..<tokens.count)
        }
        // Micro-batches of at most the pool's `prefillChunk` too: a micro-batch writes all its positions before
        // any is attended, and the pool sized its int4 residual rings (and its admission) for that many.
        let micro = min(maxBatch, pool.prefillChunk)
        var b0 = 0
        var bodyError: Error?
        while b0 < tokens.count {
            let b1 = min(tokens.count, b0 + micro)
            let T = b1 - b0
            let batch = Array(tokens[b0..<b1])
            // Blocks per micro-batch: sliding-window layers free what the window left behind after each one
            // (`commit`), so a long prompt never holds more than window + micro-batch positions of them.
            let end = startPosition + b1
            switch pool.reserve(sequence, newLength: end) {
            case .ok: break
            case .later: throw KvantError(.resourceExhausted, "KV cache: no free blocks now for \(end) tokens of \(sequence)")
            case .never: throw KvantError(.resourceExhausted, "KV cache: \(end) tokens of \(sequence) can never fit in the pool")
            }
            rowPositions = Array((startPosition + b0)..<(startPosition + b1))
            rowSequences = Array(repeating: sequence, count: T)
            // A one-row micro-batch splits its keys unless `splitKeys` is off; recomputed decode rows always do.
            rowSplitKeys = rowPositions.map { (T == 1 && splitKeys) || $0 >= (decodeRowsFrom ?? Int.max) }
            runLayers(batch, pool: pool)
            pool.commit(sequence, tokens: batch, from: startPosition + b0)
            // Output head on the requested rows of this micro-batch, a few rows at a time. After an error from
            // `body` the remaining micro-batches still run, so every reserved position has its K/V in the cache.
            let lo = max(wanted.lowerBound, b0) - b0, hi = min(wanted.upperBound, b1) - b0
            if lo < hi, bodyError == nil {
                do { try outputHead(rows: lo..<hi, tokenOffset: b0, T: T, body: body) } catch { bodyError = error }
            }
            b0 = b1
        }
        if let e = bodyError { throw e }
    }

    /// One decode step for several sequences at once (continuous batching): row `i` runs `items[i].token` at
    /// `items[i].position` of `items[i].sequence`, all rows sharing each weight pass. Each sequence must appear at
    /// most once and `position` must be at most its length in the pool: the next position (the sequence grows by
    /// one), or a position already reserved ahead (admission control reserves prompt + max_tokens up front).
    /// Calls `body(i, logits[vocab])` for every row.
    /// - Throws: `KvantError(.invalidArgument)` for a bad token, a position beyond the sequence's length, a repeated
    ///   sequence or more than `maxBatch` rows; `.resourceExhausted` when a sequence cannot grow (no sequence is
    ///   grown then); `.failedPrecondition` for a mismatched pool; errors thrown by `body`.
    public func decode(_ items: [DecodeItem], pool: KVCachePool,
                       body: (Int, UnsafeBufferPointer<Float>) throws -> Void) throws {
        guard !items.isEmpty else { return }
        try checkPool(pool)
        guard items.count <= maxBatch else {
            throw KvantError(.invalidArgument, "decode batch of \(items.count) rows exceeds max batch \(maxBatch)")
        }
        guard Set(items.map(\.sequence)).count == items.count else {
            throw KvantError(.invalidArgument, "decode batch lists a sequence more than once")
        }
        try checkDecodeRows(items, pool: pool, label: "row")
        // Rows growing their sequence grow all together or none (their admissions' promised blocks first).
        let growing = items.filter { $0.position == pool.length(of: $0.sequence) }
        let st = pool.reserve(growing.map { ($0.sequence, $0.position + 1) })
        guard st == .ok else {
            throw KvantError(.resourceExhausted, "KV cache: no room to grow \(growing.count) sequences of the decode batch by one position (\(st.rawValue)); \(pool.freeBlocks) blocks free")
        }
        rowPositions = items.map(\.position)
        rowSequences = items.map(\.sequence)
        // Each decode row splits its keys as a single-row decode does, so a sequence's rounding does not depend
        // on how many others share its step.
        rowSplitKeys = Array(repeating: true, count: items.count)
        runLayers(items.map(\.token), pool: pool)
        for it in items { pool.commit(it.sequence, tokens: CollectionOfOne(it.token), from: it.position) }
        try outputHead(rows: 0..<items.count, tokenOffset: 0, T: items.count, body: body)
    }

    /// One scheduler step in one micro-batch (vLLM V1's mixed batch: decode tokens and chunked-prefill tokens
    /// share every pass over the weights). The rows are the decode items first (one token of a sequence at its
    /// next position, as `decode` runs them), then each chunk's tokens (several tokens of one sequence from its
    /// computed position, as `forward` runs them). Every row rounds exactly as it does in those calls: decode
    /// rows split their keys as a single decode does, chunk rows as prefill rows (no split-K; a chunk's rows at
    /// `decodeRowsFrom` or later as decode rows), and with `.fast` numerics no kernel mixes rows; so the logits,
    /// K/V and committed tokens are bit for bit those of `decode(items)` followed by `forward` of each chunk.
    /// Each chunk row attends over its own sequence's cached keys up to its own position, its chunk's earlier
    /// rows included (causal); rows of other sequences are never read.
    ///
    /// Reserves every row's positions at once (all or nothing), writes each layer's K/V, commits each sequence's
    /// tokens, then runs the output head once over all requested rows: every decode row and each chunk's
    /// `logits` rows. Calls `body(row, logits[vocab])` in row order; the buffer is only valid during the call.
    /// - Throws, before anything is computed, reserved or committed (so the caller may run the parts
    ///   separately instead): `KvantError(.invalidArgument)` for a bad token or position (as `decode` and
    ///   `forward` check them), an empty chunk, a chunk of more than `pool.prefillChunk` tokens (its positions
    ///   are all written before any is attended: more than the pool's int4 residual rings hold; run it through
    ///   `forward`, which splits it), a sequence listed twice (decode rows and chunks together), or
    ///   more than `maxBatch` rows; `.resourceExhausted` when the pool cannot hold every row's positions now;
    ///   `.failedPrecondition` for a pool whose spec does not match the model. Errors thrown by `body` are
    ///   rethrown after every row's K/V is committed.
    public func step(decode items: [DecodeItem], chunks: [PrefillChunk], pool: KVCachePool,
                     body: (StepRow, UnsafeBufferPointer<Float>) throws -> Void) throws {
        let c = model.config
        let total = items.count + chunks.reduce(0) { $0 + $1.tokens.count }
        guard total > 0 else { return }
        try checkPool(pool)
        guard total <= maxBatch else {
            throw KvantError(.invalidArgument, "step of \(items.count) decode rows and \(total - items.count) chunk tokens exceeds max batch \(maxBatch)")
        }
        let sequences = items.map(\.sequence) + chunks.map(\.sequence)
        guard Set(sequences).count == sequences.count else {
            throw KvantError(.invalidArgument, "step lists a sequence more than once (decode rows and chunks together)")
        }
        try checkDecodeRows(items, pool: pool, label: "decode row")
        for (j, ch) in chunks.enumerated() {
            guard !ch.tokens.isEmpty else { throw KvantError(.invalidArgument, "chunk \(j) of \(ch.sequence) has no tokens") }
            if let bad = ch.tokens.firstIndex(where: { $0 < 0 || Int($0) >= c.vocabSize }) {
                throw KvantError(.invalidArgument, "token \(ch.tokens[bad]) at index \(bad) of chunk \(j) is outside the vocabulary (size \(c.vocabSize))")
            }
            guard ch.startPosition >= 0, ch.startPosition <= pool.length(of: ch.sequence) else {
                throw KvantError(.invalidArgument, "chunk \(j): start position \(ch.startPosition) is beyond the cached length \(pool.length(of: ch.sequence)) of \(ch.sequence)")
            }
            // All of a chunk's positions are written before any is attended: at most what the pool was sized for
            // (its int4 residual rings hold that many; `forward` splits a longer input into micro-batches instead).
            guard ch.tokens.count <= pool.prefillChunk else {
                throw KvantError(.invalidArgument, "chunk \(j) of \(ch.sequence) has \(ch.tokens.count) tokens, more than the KV cache's prefill chunk of \(pool.prefillChunk) tokens (the most positions of one sequence a pass may write; the pool's int8 residual rings and admission are sized for it)")
            }
            let earliest = pool.earliestRecomputablePosition(of: ch.sequence)
            guard ch.startPosition >= earliest else {
                throw KvantError(.invalidArgument, "chunk \(j): start position \(ch.startPosition) of \(ch.sequence): the sliding-window layers no longer hold the keys before position \(earliest)")
            }
        }
        // Every row's positions, all or none (decode rows growing by one, each chunk to its end).
        let st = pool.reserve(items.map { ($0.sequence, $0.position + 1) }
                              + chunks.map { ($0.sequence, $0.startPosition + $0.tokens.count) })
        guard st == .ok else {
            throw KvantError(.resourceExhausted, "KV cache: no room for the step's \(items.count) decode rows and \(chunks.count) chunks (\(st.rawValue)); \(pool.freeBlocks) blocks free")
        }
        var tokens = items.map(\.token), positions = items.map(\.position), seqs = items.map(\.sequence)
        var split = Array(repeating: true, count: items.count)
        var wanted: [Int] = Array(0..<items.count)
        var rowOf: [StepRow] = (0..<items.count).map { .decode($0) }
        for (j, ch) in chunks.enumerated() {
            let base = tokens.count, n = ch.tokens.count
            tokens += ch.tokens
            positions += ch.startPosition..<(ch.startPosition + n)
            seqs += repeatElement(ch.sequence, count: n)
            split += (ch.startPosition..<(ch.startPosition + n)).map { $0 >= (ch.decodeRowsFrom ?? Int.max) }
            let rows: Range<Int>
            switch ch.logits {
            case .last: rows = (n - 1)..<n
            case .all: rows = 0..<n
            case .range(let r): rows = r.clamped(to: 0..<n)
            }
            wanted += rows.map { base + $0 }
            rowOf += (0..<n).map { .chunk(j, row: $0) }
        }
        rowPositions = positions
        rowSequences = seqs
        rowSplitKeys = split
        runLayers(tokens, pool: pool)
        for it in items { pool.commit(it.sequence, tokens: CollectionOfOne(it.token), from: it.position) }
        for ch in chunks { pool.commit(ch.sequence, tokens: ch.tokens, from: ch.startPosition) }
        try outputHead(rowsAt: wanted) { k, logits in try body(rowOf[wanted[k]], logits) }
    }

    /// Decode rows (`decode`, `step`): every token in the vocabulary, every position at most its sequence's next
    /// position and not before the keys its sliding-window layers still hold. `label` names a row in the errors.
    /// - Throws: `KvantError(.invalidArgument)` naming the row, its token or position and its sequence.
    private func checkDecodeRows(_ items: [DecodeItem], pool: KVCachePool, label: String) throws {
        let c = model.config
        for (i, it) in items.enumerated() {
            guard it.token >= 0, Int(it.token) < c.vocabSize else {
                throw KvantError(.invalidArgument, "token \(it.token) of \(label) \(i) is outside the vocabulary (size \(c.vocabSize))")
            }
            guard it.position >= 0, it.position <= pool.length(of: it.sequence) else {
                throw KvantError(.invalidArgument, "\(label) \(i): position \(it.position) is beyond the next position (\(pool.length(of: it.sequence))) of \(it.sequence)")
            }
        }
        for (i, it) in items.enumerated() where it.position < pool.earliestRecomputablePosition(of: it.sequence) {
            throw KvantError(.invalidArgument, "\(label) \(i): position \(it.position) of \(it.sequence) is before the keys its sliding-window layers still hold")
        }
    }

    private func checkPool(_ pool: KVCachePool) throws {
        let c = model.config, spec = pool.spec
        guard spec.numLayers == c.numLayers, spec.numKVHeads == c.numKVHeads, spec.headDim == c.headDim else {
            throw KvantError(.failedPrecondition, "KV cache spec [layers \(spec.numLayers), kv heads \(spec.numKVHeads), head_dim \(spec.headDim)] does not match the model [\(c.numLayers), \(c.numKVHeads), \(c.headDim)]")
        }
    }

    /// The architecture's layers over one micro-batch whose rows are described by `rowPositions`/`rowSequences`.
    private func runLayers(_ tokens: [Int32], pool: KVCachePool) {
        switch model.config.architecture {
        case .gemma3: Gemma3.forward(self, tokens: tokens, pool: pool)
        case .llama: Llama.forward(self, tokens: tokens, pool: pool)
        case .qwen2: Qwen2.forward(self, tokens: tokens, pool: pool)
        case .qwen3: Qwen3.forward(self, tokens: tokens, pool: pool)
        }
    }

    /// Logits of the last token (convenience for decode and tests).
    public func forwardLast(tokens: [Int32], startPosition: Int, sequence: SequenceID, pool: KVCachePool) throws -> [Float] {
        var out: [Float] = []
        try forward(tokens: tokens, startPosition: startPosition, sequence: sequence, pool: pool, logits: .last) { _, l in
            out = Array(l)
        }
        return out
    }

    /// Final RMSNorm and the vocabulary projection for `rows` of the micro-batch in `ws.x`.
    private func outputHead(rows: Range<Int>, tokenOffset: Int, T: Int, body: (Int, UnsafeBufferPointer<Float>) throws -> Void) throws {
        try outputHead(rowsAt: Array(rows)) { k, logits in try body(tokenOffset + rows.lowerBound + k, logits) }
    }

    /// Final RMSNorm and the vocabulary projection for the micro-batch rows `rows` (indices into `ws.x`), a few
    /// at a time (one pass over the output weights for up to `ws.logitRows` of them); `body(k, logits)` for the
    /// `k`-th of them, in order.
    private func outputHead(rowsAt rows: [Int], body: (Int, UnsafeBufferPointer<Float>) throws -> Void) throws {
        let c = model.config, H = c.hiddenSize, V = c.vocabSize
        let w = model.weights
        var k = 0
        while k < rows.count {
            let n = min(ws.logitRows, rows.count - k)
            for i in 0..<n {
                Ops.rmsNorm(ws.x + rows[k + i] * H, weight: w.outputNorm, n: H, eps: c.rmsNormEps, out: ws.xn + i * H)
            }
            mm.multiply(w.output, ws.xn, m: n, out: ws.logits)
            if let cap = c.finalLogitSoftcap {
                for e in 0..<(n * V) { ws.logits[e] = tanhf(ws.logits[e] / cap) * cap }
            }
            for i in 0..<n {
                try body(k + i, UnsafeBufferPointer(start: ws.logits + i * V, count: V))
            }
            k += n
        }
    }

    // MARK: shared steps of the forward passes

    /// Embedding lookup: `x[t] = token_embd[tokens[t]] · scale`, `x: [T, hidden]`.
    func embed(_ tokens: [Int32], scale: Float) {
        let H = model.config.hiddenSize
        for (t, id) in tokens.enumerated() {
            model.weights.tokenEmbedding.dequantizeRow(Int(id), into: ws.x + t * H)
            if scale != 1 { Ops.scale(ws.x + t * H, by: scale, n: H) }
        }
    }

    /// Adds the layer's Q/K/V biases (when it has them) to `q: [T, numHeads·hd]`, `k`, `v: [T, numKVHeads·hd]`, row by
    /// row in fp32 after the products (llama.cpp's `ggml_add(Qcur, wq_b)` in build_qkv).
    func addQKVBiases(_ L: LayerWeights, T: Int) {
        let c = model.config
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        for (bias, dst, n) in [(L.bq, ws.q, qDim), (L.bk, ws.k, kvDim), (L.bv, ws.v, kvDim)] {
            guard let bias else { continue }
            bias.withUnsafeBufferPointer { b in
                for t in 0..<T { Ops.add(dst + t * n, b.baseAddress!, n: n) }
            }
        }
    }

    /// Per-head RMSNorm of Q and K (QK-norm: Gemma 3, Qwen 3) with the layer's `attn_q_norm` / `attn_k_norm [hd]`.
    func qkNorm(_ L: LayerWeights, T: Int) {
        let c = model.config
        L.qNorm!.withUnsafeBufferPointer { Ops.rmsNormRows(ws.q, count: T * c.numHeads, n: c.headDim, weight: $0.baseAddress!, eps: c.rmsNormEps) }
        L.kNorm!.withUnsafeBufferPointer { Ops.rmsNormRows(ws.k, count: T * c.numKVHeads, n: c.headDim, weight: $0.baseAddress!, eps: c.rmsNormEps) }
    }

    /// RMSNorm of each of `T` rows of `src` into `dst` (`[T, n]`).
    func rmsNormRows(_ src: UnsafePointer<Float>, _ weight: [Float], T: Int, n: Int, into dst: UnsafeMutablePointer<Float>) {
        let eps = model.config.rmsNormEps
        weight.withUnsafeBufferPointer { w in
            for t in 0..<T { Ops.rmsNorm(src + t * n, weight: w.baseAddress!, n: n, eps: eps, out: dst + t * n) }
        }
    }

    /// RoPE tables for the rows' positions with `base` into `cos/sin: [T, headDim/2]` (cached per micro-batch).
    func ropeTables(T: Int, base: Float) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) {
        let hd = model.config.headDim
        let slot = base == model.config.ropeBase ? 0 : 1
        let key = RopeKey(positions: rowPositions, base: base)
        if ws.ropeKey[slot] != key {
            for t in 0..<T {
                Ops.ropeTables(position: rowPositions[t], headDim: hd, base: base,
                               cos: ws.ropeCos[slot] + t * hd / 2, sin: ws.ropeSin[slot] + t * hd / 2)
            }
            ws.ropeKey[slot] = key
        }
        return (ws.ropeCos[slot], ws.ropeSin[slot])
    }

    /// Applies RoPE to `q: [T, numHeads, headDim]` and `k: [T, numKVHeads, headDim]` at the rows' positions.
    func applyRope(T: Int, base: Float) {
        let c = model.config, hd = c.headDim
        let (cs, sn) = ropeTables(T: T, base: base)
        for t in 0..<T {
            Ops.rope(ws.q + t * c.numHeads * hd, heads: c.numHeads, headDim: hd, cos: cs + t * hd / 2, sin: sn + t * hd / 2, neox: c.ropeNeox)
            Ops.rope(ws.k + t * c.numKVHeads * hd, heads: c.numKVHeads, headDim: hd, cos: cs + t * hd / 2, sin: sn + t * hd / 2, neox: c.ropeNeox)
        }
    }

    /// Writes K/V of the `T` positions into `pool` and runs causal attention of each query position,
    /// parallel over positions: `attn[t] = attend(q[t])`, `[T, numHeads, headDim]`.
    func attention(layer l: Int, T: Int, pool: KVCachePool) {
        let c = model.config
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        let pos = rowPositions, seqs = rowSequences
        for t in 0..<T {
            pool.write(layer: l, sequence: seqs[t], position: pos[t], key: ws.k + t * kvDim, value: ws.v + t * kvDim)
        }
        var scale = c.attentionScale
        if pool.spec.dtype == .fp16 || pool.spec.dtype == .auto {
            // llama.cpp (flash attention off): Q scaled, then converted to the f16 of the K cache for KQ.
            Ops.scale(ws.q, by: scale, n: T * qDim)
            kvant_round_f16(ws.q, Int64(T * qDim))
            scale = 1
        }
        let window = c.window(layer: l), nh = c.numHeads, numerics = attentionNumerics
        let q = ws.q, out = ws.attn
        let workers = min(threads, T)
        // Decode rows split long contexts over the threads (split-K) exactly as a decode alone does (batch
        // invariance); prefill rows never (but recomputed decode rows do, `decodeRowsFrom`). `rowSplitKeys`.
        let split = rowSplitKeys, threads = self.threads
        if workers <= 1 {
            for t in 0..<T {
                pool.attend(layer: l, sequence: seqs[t], position: pos[t], query: q + t * qDim, numHeads: nh,
                            window: window, scale: scale, output: out + t * qDim,
                            threads: split[t] ? threads : 1, numerics: numerics)
            }
            return
        }
        // Rows in parallel, each over the keys of its own sequence up to its own position: a prefill chunk's row
        // sees the chunk's earlier rows (written above) and nothing later (causal), whatever else shares the batch.
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            var t = w
            while t < T {
                let rowThreads = split[t] ? threads : 1
                pool.attend(layer: l, sequence: seqs[t], position: pos[t], query: q + t * qDim, numHeads: nh,
                            window: window, scale: scale, output: out + t * qDim, threads: rowThreads, numerics: numerics)
                t += workers
            }
        }
    }
}

struct RopeKey: Equatable {
    var positions: [Int], base: Float
}

/// One row of a batched decode step: `token` at `position` (= the cached length) of `sequence`.
public struct DecodeItem: Sendable, Equatable {
    public var token: Int32
    public var position: Int
    public var sequence: SequenceID
    public init(token: Int32, position: Int, sequence: SequenceID) {
        self.token = token; self.position = position; self.sequence = sequence
    }
}

/// Several tokens of one sequence from its computed position, run as prefill rows of a `ForwardSession.step`:
/// a chunk of a prompt (chunked prefill) or of a preempted sequence's recompute.
public struct PrefillChunk: Sendable, Equatable {
    /// Token ids of positions `startPosition ..< startPosition + tokens.count`.
    public var tokens: [Int32]
    /// The first position; K/V of earlier positions must already be in the pool.
    public var startPosition: Int
    public var sequence: SequenceID
    /// Rows (indices into `tokens`) that produce logits: `.last` for a chunk that ends its prompt,
    /// `.range(0..<0)` for none, `.all` for prompt logprobs.
    public var logits: LogitRows
    /// Rows at this position or later split their keys as decode rows do (a recompute's generated tokens,
    /// as `forward(decodeRowsFrom:)`); nil = none.
    public var decodeRowsFrom: Int?

    public init(tokens: [Int32], startPosition: Int, sequence: SequenceID, logits: LogitRows, decodeRowsFrom: Int? = nil) {
        self.tokens = tokens; self.startPosition = startPosition; self.sequence = sequence
        self.logits = logits; self.decodeRowsFrom = decodeRowsFrom
    }
}

/// A row of a `ForwardSession.step` that produced logits.
public enum StepRow: Sendable, Equatable, Hashable {
    /// Decode item `i`.
    case decode(Int)
    /// Row `row` (index into its `tokens`) of chunk `chunk`.
    case chunk(Int, row: Int)
}

/// Scratch buffers of a session for micro-batches of up to `batch` tokens.
struct Workspace {
    let batch: Int
    let logitRows: Int
    var x, xn, q, k, v, attn, o, gate, up, logits: UnsafeMutablePointer<Float>
    var ropeCos: [UnsafeMutablePointer<Float>], ropeSin: [UnsafeMutablePointer<Float>]
    var ropeKey: [RopeKey?] = [nil, nil]

    init(config c: ModelConfig, batch T: Int) {
        func alloc(_ n: Int) -> UnsafeMutablePointer<Float> {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
            p.initialize(repeating: 0, count: max(n, 1))
            return p
        }
        batch = T
        // Logit rows computed together: bounded to ~64 MB of logits.
        logitRows = max(1, min(32, (16 << 20) / max(c.vocabSize, 1)))
        let H = c.hiddenSize, qd = c.numHeads * c.headDim, kvd = c.numKVHeads * c.headDim
        x = alloc(T * H); xn = alloc(T * max(H, qd)); q = alloc(T * qd); k = alloc(T * kvd); v = alloc(T * kvd)
        attn = alloc(T * qd); o = alloc(T * H); gate = alloc(T * c.ffnSize); up = alloc(T * c.ffnSize)
        logits = alloc(logitRows * c.vocabSize)
        ropeCos = [alloc(T * c.headDim / 2), alloc(T * c.headDim / 2)]
        ropeSin = [alloc(T * c.headDim / 2), alloc(T * c.headDim / 2)]
    }

    func deallocate() {
        for p in [x, xn, q, k, v, attn, o, gate, up, logits] + ropeCos + ropeSin { p.deallocate() }
    }
}
