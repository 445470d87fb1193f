import Kernels
import KVCache

/// LLaMA 2/3 and Mistral forward pass (llama.cpp `src/models/llama.cpp`): RMSNorm → Q/K/V → RoPE (llama.cpp
/// "normal" pairs `(2i, 2i+1)`: the GGUF converter permuted the Q/K rows) → causal attention with scale
/// 1/√head_dim and GQA (optionally a sliding window on every layer, Mistral) → output projection → residual;
/// RMSNorm → SwiGLU FFN → residual; final RMSNorm; output weight (or the tied embedding).
enum Llama {
    static func forward(_ s: ForwardSession, tokens: [Int32], start: Int, sequence: SequenceID, pool: KVCachePool) {
        let c = s.model.config, w = s.model.weights, ws = s.ws, mm = s.mm
        let T = tokens.count
        let H = c.hiddenSize, F = c.ffnSize

        // x: [T, hidden] = token_embd[tokens]
        s.embed(tokens, scale: 1)

        for l in 0..<c.numLayers {
            let L = w.layers[l]

            // ---- attention block
            s.rmsNormRows(ws.x, L.attnNorm, T: T, n: H, into: ws.xn)          // attn_norm [hidden]
            mm.multiply(L.wq, ws.xn, m: T, out: ws.q)                          // attn_q [numHeads·hd, hidden] → q [T, numHeads, hd]
            mm.multiply(L.wk, ws.xn, m: T, out: ws.k)                          // attn_k [numKVHeads·hd, hidden] → k [T, numKVHeads, hd]
            mm.multiply(L.wv, ws.xn, m: T, out: ws.v)                          // attn_v [numKVHeads·hd, hidden] → v [T, numKVHeads, hd]
            s.applyRope(T: T, start: start, base: c.ropeBase(layer: l))
            s.attention(layer: l, T: T, start: start, sequence: sequence, pool: pool)   // attn [T, numHeads, hd]
            mm.multiply(L.wo, ws.attn, m: T, out: ws.o)                        // attn_output [hidden, numHeads·hd] → o [T, hidden]
            Ops.add(ws.x, ws.o, n: T * H)                                      // residual

            // ---- feed-forward block (SwiGLU)
            s.rmsNormRows(ws.x, L.ffnNorm, T: T, n: H, into: ws.xn)           // ffn_norm [hidden]
            mm.multiply(L.wGate, ws.xn, m: T, out: ws.gate)                    // ffn_gate [ffn, hidden] → [T, ffn]
            mm.multiply(L.wUp, ws.xn, m: T, out: ws.up)                        // ffn_up [ffn, hidden] → [T, ffn]
            Ops.swiglu(gate: ws.gate, up: ws.up, n: T * F)                     // silu(gate) · up
            mm.multiply(L.wDown, ws.gate, m: T, out: ws.o)                     // ffn_down [hidden, ffn] → [T, hidden]
            Ops.add(ws.x, ws.o, n: T * H)                                      // residual
        }
        // The final output_norm and the output projection run in ForwardSession.outputHead.
    }
}
