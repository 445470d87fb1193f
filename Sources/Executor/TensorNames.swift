/// GGUF tensor names, the one table every architecture reads (llama.cpp `LLM_TENSOR_NAMES`, llama-arch.cpp).
public enum TensorName {
    /// `[vocab, hidden]` (GGUF dims `[hidden, vocab]`).
    public static let tokenEmbedding = "token_embd.weight"
    /// `[hidden]`.
    public static let outputNorm = "output_norm.weight"
    /// `[vocab, hidden]`; absent when the output is tied to `token_embd.weight`.
    public static let output = "output.weight"

    /// Per-layer tensors: `blk.<layer>.<name>.weight`.
    public enum Layer: String, CaseIterable, Sendable {
        case attnNorm = "attn_norm"
        case attnQ = "attn_q"
        case attnK = "attn_k"
        case attnV = "attn_v"
        case attnOutput = "attn_output"
        case attnQNorm = "attn_q_norm"
        case attnKNorm = "attn_k_norm"
        case postAttentionNorm = "post_attention_norm"
        case ffnNorm = "ffn_norm"
        case ffnGate = "ffn_gate"
        case ffnUp = "ffn_up"
        case ffnDown = "ffn_down"
        case postFFNNorm = "post_ffw_norm"
    }

    public static func layer(_ index: Int, _ t: Layer) -> String { "blk.\(index).\(t.rawValue).weight" }
    /// Per-layer biases: `blk.<layer>.<name>.bias` (Q/K/V of Qwen 2, `[rows]`).
    public static func layerBias(_ index: Int, _ t: Layer) -> String { "blk.\(index).\(t.rawValue).bias" }
}
