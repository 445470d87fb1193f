import Kernels
import KvantCore
import ModelFormats

/// Weights of one transformer block. Matrices are views into the mmap'd GGUF (block format kept);
/// norm vectors are small fp32 copies.
public struct LayerWeights: @unchecked Sendable {
    public var attnNorm: [Float]               // [hidden]
    public var wq: WeightMatrix                // [numHeads·headDim, hidden]
    public var wk: WeightMatrix                // [numKVHeads·headDim, hidden]
    public var wv: WeightMatrix                // [numKVHeads·headDim, hidden]
    public var wo: WeightMatrix                // [hidden, numHeads·headDim]
    public var bq: [Float]?                    // [numHeads·headDim]   (Qwen 2; optional for LLaMA, as in llama.cpp)
    public var bk: [Float]?                    // [numKVHeads·headDim]
    public var bv: [Float]?                    // [numKVHeads·headDim]
    public var qNorm: [Float]?                 // [headDim]   (Gemma 3, Qwen 3)
    public var kNorm: [Float]?                 // [headDim]   (Gemma 3, Qwen 3)
    public var postAttentionNorm: [Float]?     // [hidden]    (Gemma 3)
    public var ffnNorm: [Float]                // [hidden]
    public var wGate: WeightMatrix             // [ffn, hidden]
    public var wUp: WeightMatrix               // [ffn, hidden]
    public var wDown: WeightMatrix             // [hidden, ffn]
    public var postFFNNorm: [Float]?           // [hidden]    (Gemma 3)
}

/// All weights of a model, validated against its `ModelConfig`.
public struct ModelWeights: @unchecked Sendable {
    public var tokenEmbedding: WeightMatrix    // [vocab, hidden]
    public var outputNorm: [Float]             // [hidden]
    public var output: WeightMatrix            // [vocab, hidden] (= tokenEmbedding when tied)
    public var layers: [LayerWeights]

    /// Loads and validates every tensor `config` needs from `file`.
    /// - Throws: `KvantError(.invalidArgument)` for a missing tensor (a bad model file), a wrong shape or an
    ///   unsupported type, both naming the tensor and the file.
    public init(file: GGUFFile, config c: ModelConfig) throws {
        func info(_ name: String) throws -> GGUFTensorInfo {
            guard let t = file.tensor(named: name) else {
                throw KvantError(.invalidArgument, "\(file.path): tensor '\(name)' is missing (architecture \(c.architecture.rawValue))")
            }
            return t
        }
        /// A weight matrix; Q8_0 and Q5_0 matrices in whole groups of 16 rows are repacked at load into the `.x16`
        /// layout when the CPU has its kernels (`WeightMatrix.x16Available`; `repack: false` for the embedding table of
        /// an untied model, which is only looked up): the same bytes, interleaved so one instruction multiplies 16 rows
        /// (BENCHMARKS.md, "Weights repacked 16 rows at a time"). The file's pages become this process's private copy
        /// (same size); a tensor already repacked through this file object by an earlier model keeps its layout.
        func matrix(_ name: String, rows: Int, cols: Int, repack: Bool = true) throws -> WeightMatrix {
            let t = try info(name)
            guard t.dims == [cols, rows] else {
                throw KvantError(.invalidArgument, "\(file.path): tensor '\(name)' has dims \(t.dims), expected [\(cols), \(rows)]")
            }
            do {
                let m = try WeightMatrix(name: name, type: t.type, rows: rows, cols: cols, bytes: file.data(of: t))
                if !file.isRewritten(name) {
                    guard repack, WeightMatrix.x16Available, WeightMatrix.canRepackX16(type: m.type, rows: rows, cols: cols) else { return m }
                }
                let bytes = try file.rewriteInPlace(t) { try WeightMatrix.repackX16(name: name, type: m.type, rows: rows, cols: cols, bytes: $0) }
                return try WeightMatrix(name: name, type: m.type, rows: rows, cols: cols, bytes: bytes, layout: .x16)
            } catch let e as KvantError {
                throw KvantError(e.reason, "\(file.path): \(e.message)")
            }
        }
        /// An optional vector (a bias): nil when the tensor is absent, validated like `vector` when present.
        func optionalVector(_ name: String, count: Int) throws -> [Float]? {
            file.tensor(named: name) == nil ? nil : try vector(name, count: count)
        }
        func vector(_ name: String, count: Int) throws -> [Float] {
            let t = try info(name)
            guard t.dims == [count] else {
                throw KvantError(.invalidArgument, "\(file.path): tensor '\(name)' has dims \(t.dims), expected [\(count)]")
            }
            guard t.type == .f32 || t.type == .f16 || t.type == .bf16 else {
                throw KvantError(.invalidArgument, "\(file.path): tensor '\(name)' has type \(t.type), expected F32, F16 or BF16")
            }
            let m = try WeightMatrix(name: name, type: t.type, rows: 1, cols: count, bytes: file.data(of: t))
            return m.dequantizedRow(0)
        }
        let H = c.hiddenSize, qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        if file.tensor(named: TensorName.output) != nil {
            tokenEmbedding = try matrix(TensorName.tokenEmbedding, rows: c.vocabSize, cols: H, repack: false)
            output = try matrix(TensorName.output, rows: c.vocabSize, cols: H)
        } else {
            tokenEmbedding = try matrix(TensorName.tokenEmbedding, rows: c.vocabSize, cols: H)   // tied: the lookup reads the repacked rows
            output = tokenEmbedding
        }
        outputNorm = try vector(TensorName.outputNorm, count: H)
        let gemma = c.architecture == .gemma3
        let qkNorm = gemma || c.architecture == .qwen3
        // llama.cpp's create_tensor_qkv: Q/K/V biases are optional (TENSOR_NOT_REQUIRED) for llama and qwen2; the
        // Qwen 2 converter always writes them, Qwen 3 has none. Gemma 3 has none either.
        let biases = c.architecture == .llama || c.architecture == .qwen2
        layers = try (0..<c.numLayers).map { l in
            func n(_ t: TensorName.Layer) -> String { TensorName.layer(l, t) }
            func b(_ t: TensorName.Layer, _ count: Int) throws -> [Float]? {
                biases ? try optionalVector(TensorName.layerBias(l, t), count: count) : nil
            }
            return LayerWeights(
                attnNorm: try vector(n(.attnNorm), count: H),
                wq: try matrix(n(.attnQ), rows: qDim, cols: H),
                wk: try matrix(n(.attnK), rows: kvDim, cols: H),
                wv: try matrix(n(.attnV), rows: kvDim, cols: H),
                wo: try matrix(n(.attnOutput), rows: H, cols: qDim),
                bq: try b(.attnQ, qDim),
                bk: try b(.attnK, kvDim),
                bv: try b(.attnV, kvDim),
                qNorm: qkNorm ? try vector(n(.attnQNorm), count: c.headDim) : nil,
                kNorm: qkNorm ? try vector(n(.attnKNorm), count: c.headDim) : nil,
                postAttentionNorm: gemma ? try vector(n(.postAttentionNorm), count: H) : nil,
                ffnNorm: try vector(n(.ffnNorm), count: H),
                wGate: try matrix(n(.ffnGate), rows: c.ffnSize, cols: H),
                wUp: try matrix(n(.ffnUp), rows: c.ffnSize, cols: H),
                wDown: try matrix(n(.ffnDown), rows: H, cols: c.ffnSize),
                postFFNNorm: gemma ? try vector(n(.postFFNNorm), count: H) : nil)
        }
    }
}
