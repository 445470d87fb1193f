import CKernels
import Foundation

/// Element-wise and row-wise CPU operations of a transformer forward pass (fp32, in place where noted).
public enum Ops {
    /// RMSNorm of one row (Zhang & Sennrich 2019), as ggml's `rms_norm` followed by a multiply:
    /// `out[i] = x[i] / sqrt(mean(x²) + eps) · weight[i]`, `n` elements. `out` may alias `x`.
    /// (Gemma's GGUF norm weights already hold `1 + w`: llama.cpp's converter adds the 1.)
    @inline(__always)
    public static func rmsNorm(_ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, n: Int, eps: Float,
                               out: UnsafeMutablePointer<Float>) {
        var ss = 0.0      // ggml_float: the squares (fp32) summed in double, as ggml's rms_norm
        for i in 0..<n { ss += Double(x[i] * x[i]) }
        let mean = Float(ss / Double(n))
        let scale = 1 / (mean + eps).squareRoot()
        for i in 0..<n { out[i] = x[i] * scale * weight[i] }
    }

    /// RMSNorm applied to each of `count` consecutive rows of `n` elements (e.g. per-head QK-norm), in place.
    public static func rmsNormRows(_ x: UnsafeMutablePointer<Float>, count: Int, n: Int, weight: UnsafePointer<Float>, eps: Float) {
        for r in 0..<count { rmsNorm(x + r * n, weight: weight, n: n, eps: eps, out: x + r * n) }
    }

    /// Rotary position embedding tables for one position: `cos/sin[i] = cos/sin(position · base^(-2i/headDim))`,
    /// i in 0..<headDim/2 (RoFormer, Su et al. 2021; ggml `rope` with freq_scale 1, no YaRN). The angle is computed
    /// as ggml does (fp32, `theta_scale = powf(base, -2/headDim)` multiplied in repeatedly), not in double.
    public static func ropeTables(position: Int, headDim: Int, base: Float, cos: UnsafeMutablePointer<Float>,
                                  sin: UnsafeMutablePointer<Float>) {
        let half = headDim / 2
        // As ggml's rope_cache_init: theta_i = position · theta_scale^i by repeated fp32 multiplication,
        // theta_scale = powf(base, -2/headDim), then cosf/sinf.
        let thetaScale = powf(base, -2.0 / Float(headDim))
        var theta = Float(position)
        for i in 0..<half {
            cos[i] = cosf(theta)
            sin[i] = sinf(theta)
            theta *= thetaScale
        }
    }

    /// Applies RoPE in place to `heads` heads of `headDim` values.
    /// - `neox == true` (GPT-NeoX / Gemma): rotates pairs `(i, i + headDim/2)`.
    /// - `neox == false` (llama.cpp "normal", LLaMA GGUFs whose Q/K rows the converter permuted): pairs `(2i, 2i+1)`.
    public static func rope(_ x: UnsafeMutablePointer<Float>, heads: Int, headDim: Int, cos: UnsafePointer<Float>,
                            sin: UnsafePointer<Float>, neox: Bool) {
        let half = headDim / 2
        for h in 0..<heads {
            let v = x + h * headDim
            // Rounded as llama.cpp's ggml (GCC contracts `x0·cos - x1·sin` to fma(x0, cos, -(x1·sin)) and
            // `x0·sin + x1·cos` to fma(x0, sin, x1·cos)); checked bit for bit against its layer-0 Kcur/Qcur.
            if neox {
                for i in 0..<half {
                    let a = v[i], b = v[i + half]
                    v[i] = (-(b * sin[i])).addingProduct(a, cos[i])
                    v[i + half] = (b * cos[i]).addingProduct(a, sin[i])
                }
            } else {
                for i in 0..<half {
                    let a = v[2 * i], b = v[2 * i + 1]
                    v[2 * i] = (-(b * sin[i])).addingProduct(a, cos[i])
                    v[2 * i + 1] = (b * cos[i]).addingProduct(a, sin[i])
                }
            }
        }
    }

    /// Numerically stable softmax of `n` values in place (max subtracted).
    public static func softmax(_ x: UnsafeMutablePointer<Float>, n: Int) {
        guard n > 0 else { return }
        var m = -Float.infinity
        for i in 0..<n { m = max(m, x[i]) }
        var s: Float = 0
        for i in 0..<n { let e = expf(x[i] - m); x[i] = e; s += e }
        let inv = 1 / s
        for i in 0..<n { x[i] *= inv }
    }

    /// log-softmax value of index `k` among `n` logits (computed in Double).
    public static func logSoftmax(_ x: UnsafePointer<Float>, n: Int, index k: Int) -> Double {
        var m = -Float.infinity
        for i in 0..<n { m = max(m, x[i]) }
        var s = 0.0
        for i in 0..<n { s += exp(Double(x[i] - m)) }
        return Double(x[k] - m) - log(s)
    }

    /// GELU with the tanh approximation (Hendrycks & Gimpel 2016; ggml `gelu`):
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    @inline(__always) public static func gelu(_ x: Float) -> Float {
        let c: Float = 0.7978845608028654
        return 0.5 * x * (1 + tanhf(c * (x + 0.044715 * x * x * x)))
    }

    /// SiLU `x·σ(x)` (ggml `silu`).
    @inline(__always) public static func silu(_ x: Float) -> Float { x / (1 + expf(-x)) }

    /// GeGLU in place as llama.cpp computes it (ggml `geglu` with GGML_GELU_FP16): `gate[i] = g(gate[i]) · up[i]`,
    /// `g(x) = fp16(gelu(fp16(x)))` for -10 < x < 10 (a 65 536-entry fp16 table), `x` for x ≥ 10, 0 for x ≤ -10;
    /// `gelu` is the tanh approximation. n elements.
    public static func geglu(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, n: Int) {
        kvant_geglu_f16_table(gate, up, Int64(n))
    }

    /// SwiGLU in place: `gate[i] = silu(gate[i]) · up[i]`, n elements.
    public static func swiglu(gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, n: Int) {
        kvant_swiglu(gate, up, Int64(n))
    }

    /// `x[i] += y[i]`, n elements.
    @inline(__always) public static func add(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, n: Int) {
        for i in 0..<n { x[i] += y[i] }
    }

    /// `x[i] *= s`, n elements.
    @inline(__always) public static func scale(_ x: UnsafeMutablePointer<Float>, by s: Float, n: Int) {
        for i in 0..<n { x[i] *= s }
    }
}
