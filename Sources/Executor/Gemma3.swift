import Kernels
import KVCache

/// Gemma 3 (text) forward pass, checked against llama.cpp `src/models/gemma3.cpp`:
///
/// - embeddings scaled by √hidden;
/// - per layer: RMSNorm → Q/K/V → per-head RMSNorm of Q and K (QK-norm) → NEOX RoPE (base `rope.freq_base`
///   on global layers, 10 000 / `rope.freq_base_swa` on local ones) → attention with scale 1/√head_dim over
///   a 512-token sliding window on local layers, the whole context on every 6th (global) layer, GQA →
///   output projection → post-attention RMSNorm → residual; RMSNorm → GeGLU FFN (tanh GELU) → post-FFN
///   RMSNorm → residual;
/// - final RMSNorm, output tied to the token embedding.
/// Norm weights are used as stored: llama.cpp's converter already added Gemma's `1 +` to them.
enum Gemma3 {
    /// Runs the layers over `tokens` (row t at `s.rowPositions[t]` of `s.rowSequences[t]`), leaving the final
    /// hidden states in `s.ws.x: [T, hidden]`.
    static func forward(_ s: ForwardSession, tokens: [Int32], pool: KVCachePool) {
        let c = s.model.config, w = s.model.weights, ws = s.ws, mm = s.mm
        let T = tokens.count
        let H = c.hiddenSize, F = c.ffnSize

        // x: [T, hidden] = token_embd[tokens] · √hidden
        s.embed(tokens, scale: c.embeddingScale)

        for l in 0..<c.numLayers {
            let L = w.layers[l]

            // ---- attention block
            s.rmsNormRows(ws.x, L.attnNorm, T: T, n: H, into: ws.xn)          // attn_norm [hidden]
            // attn_q [numHeads·hd, hidden] → q [T, numHeads, hd]; attn_k, attn_v [numKVHeads·hd, hidden] → k, v [T, numKVHeads, hd]
            mm.multiply([L.wq, L.wk, L.wv], ws.xn, m: T, outs: [ws.q, ws.k, ws.v])
            s.qkNorm(L, T: T)                                                  // attn_q_norm, attn_k_norm [hd]
            s.applyRope(T: T, base: c.ropeBase(layer: l))
            s.attention(layer: l, T: T, pool: pool)   // attn [T, numHeads, hd]
            mm.multiply(L.wo, ws.attn, m: T, out: ws.o)                        // attn_output [hidden, numHeads·hd] → o [T, hidden]
            s.rmsNormRows(ws.o, L.postAttentionNorm!, T: T, n: H, into: ws.o)  // post_attention_norm [hidden]
            Ops.add(ws.x, ws.o, n: T * H)                                      // residual

            // ---- feed-forward block (GeGLU)
            s.rmsNormRows(ws.x, L.ffnNorm, T: T, n: H, into: ws.xn)           // ffn_norm [hidden]
            // ffn_gate, ffn_up [ffn, hidden] → gate, up [T, ffn]
            mm.multiply([L.wGate, L.wUp], ws.xn, m: T, outs: [ws.gate, ws.up])
            Ops.geglu(gate: ws.gate, up: ws.up, n: T * F)                      // gelu_tanh(gate) · up
            mm.multiply(L.wDown, ws.gate, m: T, out: ws.o)                     // ffn_down [hidden, ffn] → [T, hidden]
            s.rmsNormRows(ws.o, L.postFFNNorm!, T: T, n: H, into: ws.o)        // post_ffw_norm [hidden]
            Ops.add(ws.x, ws.o, n: T * H)                                      // residual
        }
        // The final output_norm and the (tied) output projection run in ForwardSession.outputHead.
    }
}
