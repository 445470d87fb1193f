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
        func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
            let t = try info(name)
            guard t.dims == [cols, rows] else {
                throw KvantError(.invalidArgument, "\(file.path): tensor '\(name)' has dims \(t.dims), expected [\(cols), \(rows)]")
            }
            do {
                return try WeightMatrix(name: name, type: t.type, rows: rows, cols: cols, bytes: file.data(of: t))
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
        /// The output head, repacked at load into the `.q8_0x16` layout when it is Q8_0 in whole groups of 16 rows and
        /// the CPU has the kernels (`WeightMatrix.q8_0x16Available`): the head is half of a decode step's memory stream
        /// and, batched, most of its arithmetic (BENCHMARKS.md, "Output head repacked"). The file's pages become this
        /// process's private copy (same size); a file already repacked by an earlier model keeps its layout.
        func head(_ name: String) throws -> WeightMatrix {
            let m = try matrix(name, rows: c.vocabSize, cols: H)
            let t = try info(name)
            if !file.isRewritten(name) {
                guard WeightMatrix.q8_0x16Available, WeightMatrix.canRepackQ8_0x16(type: m.type, rows: m.rows, cols: m.cols) else { return m }
            }
            do {
                let bytes = try file.rewriteInPlace(t) { try WeightMatrix.repackQ8_0x16(name: name, rows: m.rows, cols: m.cols, bytes: $0) }
                return try WeightMatrix(name: name, type: m.type, rows: m.rows, cols: m.cols, bytes: bytes, layout: .q8_0x16)
            } catch let e as KvantError {
                throw KvantError(e.reason, "\(file.path): \(e.message)")
            }
        }
        if file.tensor(named: TensorName.output) != nil {
            tokenEmbedding = try matrix(TensorName.tokenEmbedding, rows: c.vocabSize, cols: H)
            output = try head(TensorName.output)
        } else {
            tokenEmbedding = try head(TensorName.tokenEmbedding)   // tied: the embedding lookup reads the repacked rows
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
