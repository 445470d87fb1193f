import Kernels
import KVCache

/// Qwen 3 (dense) forward pass, checked against llama.cpp `src/models/qwen3.cpp`:
///
/// - per layer: RMSNorm → Q/K/V (no biases; Q is `[numHeads·head_dim]` with head_dim from `attention.key_length`,
///   which may differ from hidden/heads) → per-head RMSNorm of Q and K (`attn_q_norm`, `attn_k_norm [head_dim]`)
///   → NEOX RoPE → causal attention with scale 1/√head_dim, GQA → output projection `[hidden, numHeads·head_dim]`
///   → residual; RMSNorm → SwiGLU FFN → residual;
/// - final RMSNorm; output weight, or the tied embedding when `output.weight` is absent.
enum Qwen3 {
    /// Runs the layers over `tokens` (row t at `s.rowPositions[t]` of `s.rowSequences[t]`), leaving the final
    /// hidden states in `s.ws.x: [T, hidden]`.
    static func forward(_ s: ForwardSession, tokens: [Int32], pool: KVCachePool) {
        let c = s.model.config, w = s.model.weights, ws = s.ws, mm = s.mm
        let T = tokens.count
        let H = c.hiddenSize, F = c.ffnSize

        s.embed(tokens, scale: 1)                                              // x: [T, hidden] = token_embd[tokens]

        for l in 0..<c.numLayers {
            let L = w.layers[l]

            // ---- attention block
            s.rmsNormRows(ws.x, L.attnNorm, T: T, n: H, into: ws.xn)          // attn_norm [hidden]
            // attn_q [numHeads·hd, hidden] → q [T, numHeads, hd]; attn_k, attn_v [numKVHeads·hd, hidden] → k, v [T, numKVHeads, hd]
            mm.multiply([L.wq, L.wk, L.wv], ws.xn, m: T, outs: [ws.q, ws.k, ws.v])
            s.qkNorm(L, T: T)                                                  // attn_q_norm, attn_k_norm [hd]
            s.applyRope(T: T, base: c.ropeBase(layer: l))                     // NEOX
            s.attention(layer: l, T: T, pool: pool)                            // attn [T, numHeads, hd]
            mm.multiply(L.wo, ws.attn, m: T, out: ws.o)                        // attn_output [hidden, numHeads·hd] → o [T, hidden]
            Ops.add(ws.x, ws.o, n: T * H)                                      // residual

            // ---- feed-forward block (SwiGLU)
            s.rmsNormRows(ws.x, L.ffnNorm, T: T, n: H, into: ws.xn)           // ffn_norm [hidden]
            mm.multiply([L.wGate, L.wUp], ws.xn, m: T, outs: [ws.gate, ws.up]) // ffn_gate, ffn_up [ffn, hidden] → [T, ffn]
            Ops.swiglu(gate: ws.gate, up: ws.up, n: T * F)                     // silu(gate) · up
            mm.multiply(L.wDown, ws.gate, m: T, out: ws.o)                     // ffn_down [hidden, ffn] → [T, hidden]
            Ops.add(ws.x, ws.o, n: T * H)                                      // residual
        }
        // The final output_norm and the output projection run in ForwardSession.outputHead.
    }
}
