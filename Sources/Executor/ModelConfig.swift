import KVCache
import KvantCore
import ModelFormats

/// The transformer architectures Kvant runs (GGUF `general.architecture`).
public enum Architecture: String, Sendable, CaseIterable {
    /// Gemma 3 (text): QK-norm, post-attention/post-FFN norms, GeGLU, sliding-window local layers.
    case gemma3
    /// LLaMA 2/3 and Mistral (and SmolLM2): RoPE, GQA, SwiGLU; optional Q/K/V biases.
    case llama
    /// Qwen 2 / 2.5: LLaMA's block with Q/K/V biases and NEOX RoPE.
    case qwen2
    /// Qwen 3 (dense): per-head RMSNorm of Q and K (QK-norm) before NEOX RoPE, no biases, head_dim from key_length.
    case qwen3
}

/// Model hyper-parameters read from GGUF metadata (`<arch>.*` keys, llama.cpp's names).
public struct ModelConfig: Sendable, Equatable {
    public var architecture: Architecture
    public var numLayers: Int
    /// hidden size (`embedding_length`).
    public var hiddenSize: Int
    public var ffnSize: Int
    public var numHeads: Int
    public var numKVHeads: Int
    /// head_dim (`attention.key_length`, default hidden/heads); value head dim must equal it.
    public var headDim: Int
    public var vocabSize: Int
    public var rmsNormEps: Float
    /// RoPE base of global (full-attention) layers (`rope.freq_base`).
    public var ropeBase: Float
    /// RoPE base of sliding-window layers (`rope.freq_base_swa`, Gemma 3 default 10 000).
    public var ropeBaseLocal: Float
    /// Sliding window in tokens for local layers (nil: every layer attends to the whole context).
    public var slidingWindow: Int?
    /// Every `slidingWindowPattern`-th layer (1-based) is global; the others use the window (Gemma 3: 6).
    public var slidingWindowPattern: Int
    /// NEOX-style RoPE (pairs `(i, i+d/2)`, Gemma) vs. llama.cpp "normal" (pairs `(2i, 2i+1)`, LLaMA).
    public var ropeNeox: Bool
    /// Multiplies q·k before the softmax.
    public var attentionScale: Float
    /// Gemma: embeddings are multiplied by √hidden.
    public var embeddingScale: Float
    /// Training context length (`context_length`).
    public var contextLength: Int
    /// Final logit soft-capping (`final_logit_softcapping`), nil when absent.
    public var finalLogitSoftcap: Float?

    /// True when layer `l` attends only within `slidingWindow`.
    public func isSlidingWindowLayer(_ l: Int) -> Bool {
        guard slidingWindow != nil else { return false }
        return slidingWindowPattern == 0 || (l % slidingWindowPattern) < slidingWindowPattern - 1
    }

    /// Attention window of layer `l` in tokens, nil for full attention.
    public func window(layer l: Int) -> Int? { isSlidingWindowLayer(l) ? slidingWindow : nil }

    /// RoPE base of layer `l`.
    public func ropeBase(layer l: Int) -> Float { isSlidingWindowLayer(l) ? ropeBaseLocal : ropeBase }

    /// The KV-cache spec this model needs (`[numLayers, numKVHeads, headDim]`, each layer's sliding window),
    /// so the cache keeps only the window of sliding-window layers.
    public func kvCacheSpec(dtype: KVCacheDType, blockSize: Int = 16) -> KVCacheSpec {
        KVCacheSpec(numLayers: numLayers, numKVHeads: numKVHeads, headDim: headDim, dtype: dtype, blockSize: blockSize,
                    layerWindows: slidingWindow == nil ? [] : (0..<numLayers).map { window(layer: $0) })
    }

    /// Reads the hyper-parameters of `file`.
    /// - Throws: `KvantError(.invalidArgument)` for an unsupported architecture or inconsistent values,
    ///   a missing required key or tensor (naming the key or tensor and the file): a bad model file.
    public init(file: GGUFFile) throws {
        let archName = try file.string("general.architecture")
        guard let arch = Architecture(rawValue: archName) else {
            throw KvantError(.invalidArgument, "\(file.path): general.architecture '\(archName)' is not supported (supported: \(Architecture.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        let p = archName + "."
        /// An optional key: nil when absent, its value (checked by `read`) when present.
        func opt<T>(_ key: String, _ read: (String) throws -> T) throws -> T? {
            file[key] == nil ? nil : try read(key)
        }
        architecture = arch
        numLayers = try file.uint(p + "block_count")
        hiddenSize = try file.uint(p + "embedding_length")
        ffnSize = try file.uint(p + "feed_forward_length")
        numHeads = try file.uint(p + "attention.head_count")
        numKVHeads = try opt(p + "attention.head_count_kv", file.uint) ?? numHeads
        guard numHeads > 0 else { throw KvantError(.invalidArgument, "\(file.path): \(p)attention.head_count is 0") }
        headDim = try opt(p + "attention.key_length", file.uint) ?? (hiddenSize / numHeads)
        let vdim = try opt(p + "attention.value_length", file.uint) ?? headDim
        rmsNormEps = try file.float(p + "attention.layer_norm_rms_epsilon")
        ropeBase = try opt(p + "rope.freq_base", file.float) ?? 10_000
        ropeBaseLocal = try opt(p + "rope.freq_base_swa", file.float) ?? 10_000
        contextLength = try opt(p + "context_length", file.uint) ?? 2048
        finalLogitSoftcap = try opt(p + "final_logit_softcapping", file.float)
        if finalLogitSoftcap == 0 { finalLogitSoftcap = nil }
        guard let embd = file.tensor(named: TensorName.tokenEmbedding), embd.dims.count == 2 else {
            throw KvantError(.invalidArgument, "\(file.path): tensor '\(TensorName.tokenEmbedding)' is missing or not 2-D")
        }
        vocabSize = embd.dims[1]
        switch arch {
        case .gemma3:
            let sw = try opt(p + "attention.sliding_window", file.uint)
            slidingWindow = (sw ?? 0) > 0 ? sw : nil
            slidingWindowPattern = try opt(p + "attention.sliding_window_pattern", file.uint) ?? 6
            ropeNeox = true
            // llama.cpp gemma3.cpp: 1/sqrt(head_dim), except the 27B (62 layers): 1/sqrt(hidden/heads).
            attentionScale = numLayers == 62 ? 1 / Float(hiddenSize / numHeads).squareRoot() : 1 / Float(headDim).squareRoot()
            embeddingScale = Float(hiddenSize).squareRoot()
        case .llama, .qwen2, .qwen3:
            if arch == .llama {
                let sw = try opt(p + "attention.sliding_window", file.uint)
                slidingWindow = (sw ?? 0) > 0 ? sw : nil
            } else {
                slidingWindow = nil   // llama.cpp's qwen2/qwen3 attend to the whole context (no SWA)
            }
            slidingWindowPattern = 0   // Mistral's window (when given) applies to every layer
            ropeBaseLocal = ropeBase
            // llama_model_rope_type: LLAMA_ROPE_TYPE_NORM for llama, NEOX for qwen2/qwen3
            ropeNeox = arch != .llama
            attentionScale = 1 / Float(headDim).squareRoot()
            embeddingScale = 1
            if let rot = try opt(p + "rope.dimension_count", file.uint), rot != headDim {
                throw KvantError(.invalidArgument, "\(file.path): \(p)rope.dimension_count \(rot) != head_dim \(headDim) (partial RoPE is not supported)")
            }
        }
        let limits: [(String, Int, ClosedRange<Int>)] = [
            ("block_count", numLayers, 1...1024), ("embedding_length", hiddenSize, 1...65536),
            ("feed_forward_length", ffnSize, 1...1 << 20), ("attention.head_count", numHeads, 1...1024),
            ("attention.head_count_kv", numKVHeads, 1...1024), ("attention.key_length", headDim, 2...4096),
        ]
        for (k, v, r) in limits where !r.contains(v) {
            throw KvantError(.invalidArgument, "\(file.path): \(p)\(k) = \(v) is out of range \(r)")
        }
        guard numHeads % numKVHeads == 0 else {
            throw KvantError(.invalidArgument, "\(file.path): head_count \(numHeads) is not a multiple of head_count_kv \(numKVHeads)")
        }
        guard vdim == headDim, headDim % 2 == 0 else {
            throw KvantError(.invalidArgument, "\(file.path): attention.value_length \(vdim) must equal key_length \(headDim) (even)")
        }
        guard rmsNormEps > 0, rmsNormEps < 1, ropeBase > 1, ropeBaseLocal > 1 else {
            throw KvantError(.invalidArgument, "\(file.path): rms epsilon \(rmsNormEps) or rope base \(ropeBase)/\(ropeBaseLocal) out of range")
        }
    }
}
