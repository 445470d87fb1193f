import Foundation
import Kernels
import Testing

@Suite struct OpsTests {
    @Test func rmsNormMatchesFormula() {
        let x: [Float] = [1, -2, 3, 0.5]
        let w: [Float] = [1, 2, 0.5, -1]
        var out = [Float](repeating: 0, count: 4)
        Ops.rmsNorm(x, weight: w, n: 4, eps: 1e-6, out: &out)
        let ms = (1.0 + 4 + 9 + 0.25) / 4
        for i in 0..<4 {
            let e = Double(x[i]) / (ms + 1e-6).squareRoot() * Double(w[i])
            #expect(abs(Double(out[i]) - e) < 1e-6)
        }
    }

    @Test func ropeNeoxRotatesHalvesAndNormalRotatesPairs() {
        let d = 8
        var c = [Float](repeating: 0, count: d / 2), s = [Float](repeating: 0, count: d / 2)
        Ops.ropeTables(position: 3, headDim: d, base: 10_000, cos: &c, sin: &s)
        // theta_i = 3 * 10000^(-2i/8)
        for i in 0..<d / 2 {
            let th = 3 * pow(10_000.0, -2.0 * Double(i) / Double(d))
            #expect(abs(Double(c[i]) - cos(th)) < 1e-6 && abs(Double(s[i]) - sin(th)) < 1e-6)
        }
        var v: [Float] = (0..<d).map { Float($0 + 1) }
        Ops.rope(&v, heads: 1, headDim: d, cos: c, sin: s, neox: true)
        // NEOX: pair (0, 4) = (1, 5)
        #expect(abs(Double(v[0]) - (1 * cos(3.0) - 5 * sin(3.0))) < 1e-5)
        #expect(abs(Double(v[4]) - (1 * sin(3.0) + 5 * cos(3.0))) < 1e-5)
        var u: [Float] = (0..<d).map { Float($0 + 1) }
        Ops.rope(&u, heads: 1, headDim: d, cos: c, sin: s, neox: false)
        // normal: pair (0, 1) = (1, 2)
        #expect(abs(Double(u[0]) - (1 * cos(3.0) - 2 * sin(3.0))) < 1e-5)
        #expect(abs(Double(u[1]) - (1 * sin(3.0) + 2 * cos(3.0))) < 1e-5)
    }

    @Test func softmaxAndActivations() {
        var x: [Float] = [1, 2, 3, 1000]
        Ops.softmax(&x, n: 3)
        let z = exp(1.0) + exp(2.0) + exp(3.0)
        #expect(abs(Double(x[2]) - exp(3.0) / z) < 1e-6)
        #expect(x[3] == 1000)
        // GELU tanh approximation and SiLU reference values (computed in fp64 from their formulas).
        let g1 = 0.5 * 1.0 * (1 + tanh(0.7978845608028654 * (1 + 0.044715)))
        #expect(abs(Double(Ops.gelu(1)) - g1) < 1e-6)
        #expect(abs(Double(Ops.gelu(-3)) - (-0.0036373920817729943)) < 1e-6)
        #expect(abs(Double(Ops.silu(1)) - 1 / (1 + exp(-1.0))) < 1e-6)
        // Vectorized GeGLU / SwiGLU against the fp64 formulas over a range of inputs (incl. the scalar tail and
        // GeGLU's ±10 cut-offs).
        let xs: [Float] = (0..<203).map { Float($0 - 101) * 0.07 } + [-10.5, -10, -9.99, 9.99, 10, 12.5, 0.3, -0.2]
        let ups: [Float] = xs.indices.map { 1 + Float($0 % 5) * 0.25 }
        var g = xs, s = xs
        Ops.geglu(gate: &g, up: ups, n: xs.count)
        Ops.swiglu(gate: &s, up: ups, n: xs.count)
        for i in xs.indices {
            let x = Double(xs[i]), u = Double(ups[i])
            // GeGLU as ggml with GGML_GELU_FP16: fp16(gelu(fp16(x))) · up inside (-10, 10), x · up above, 0 below.
            func gelu64(_ v: Double) -> Double { 0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))) }
            let g16 = gelu64(Double(Float(Float16(xs[i]))))
            let ge = x >= 10 ? x * u : x <= -10 ? 0 : Double(Float(Float16(g16))) * u
            // One fp16 step of the table value (its fp32 gelu may round to the neighbouring fp16).
            let ulp16 = x > -10 && x < 10 ? Double(Float(Float16(g16).ulp)) * u : 0
            let se = x / (1 + exp(-x)) * u
            #expect(abs(Double(g[i]) - ge) <= ulp16 + 1e-6 * max(1, abs(ge)), "geglu(\(x))")
            #expect(abs(Double(s[i]) - se) <= 2e-6 * max(1, abs(se)), "swiglu(\(x))")
        }
        let logits: [Float] = [0, log(3)]
        #expect(abs(Ops.logSoftmax(logits, n: 2, index: 1) - log(0.75)) < 1e-6)
    }
}
