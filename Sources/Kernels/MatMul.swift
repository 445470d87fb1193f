import CKernels
import Dispatch
import KvantCore

/// Matrix products with GGUF weight blocks: `out[i, r] = Σ_k W[r, k] · x[i, k]` for a `[rows, cols]` weight and
/// `m` activation rows `x: [m, cols]`, giving `out: [m, rows]` (row stride `outStride`, default `rows`).
///
/// Block types use the int8 path (activations quantized once to blocks of 32, AVX2 `maddubs` dot products, as in
/// llama.cpp's `ggml_vec_dot_*_q8_*`); F32/F16/BF16 use fp32 FMA dot products. Work is split over weight rows
/// across `threads` workers with `DispatchQueue.concurrentPerform`. Not thread-safe: one `MatMul` per caller.
public final class MatMul: @unchecked Sendable {
    public let threads: Int
    /// Q4_K/Q6_K rounding: false (default) rounds every activation row the same way whatever `m` (batch-invariant:
    /// a row's result never depends on the other rows, so batched decode equals single decode); true rounds as
    /// llama.cpp's batched kernels do (bit-identical to its prefill; `kvant_matmul_q8a_rounding`).
    public var llamaCppBatchRounding = false
    private var act = QuantizedActivations()
    private var scratch: UnsafeMutablePointer<Float>?
    private var scratchCols = 0

    /// - Parameter threads: worker count (≥ 1).
    public init(threads: Int) {
        self.threads = max(1, threads)
    }

    deinit { scratch?.deallocate() }

    /// Decode (m = 1) / prefill (m > 1) product through the fast path (int8 for block types).
    public func multiply(_ w: WeightMatrix, _ x: UnsafePointer<Float>, m: Int, out: UnsafeMutablePointer<Float>,
                         outStride: Int? = nil) {
        let stride = outStride ?? w.rows
        let rounding: Int32 = llamaCppBatchRounding ? 1 : 0
        if w.layout == .x16 {
            multiplyRepacked(w, x, m: m, out: out, outStride: stride)
        } else if w.hasInt8Path {
            act.quantize(x, count: m, cols: w.cols, format: QuantizedActivations.format(for: w.type))
            act.blocks.withUnsafeBufferPointer { ab in
                let a = ab.baseAddress!
                parallelRows(w.rows, work: Double(m) * Double(w.rows) * Double(w.cols)) { r0, r1, _ in
                    _ = kvant_matmul_q8a_rounding(Int32(w.type.rawValue), w.base, w.rowBytes, Int64(w.cols), Int64(r0), Int64(r1),
                                                  a, Int64(m), out, Int64(stride), rounding)
                }
            }
        } else {
            multiplyReference(w, x, m: m, out: out, outStride: stride)
        }
    }

    /// Several products sharing one input (Q/K/V, or gate/up): `outs[j] = x · W_jᵀ`, each `[m, W_j.rows]`.
    /// The activations are quantized once and all rows run in one parallel region (fewer thread wake-ups in
    /// decode). Falls back to separate products when the weights differ in `cols` or path.
    public func multiply(_ ws: [WeightMatrix], _ x: UnsafePointer<Float>, m: Int, outs: [UnsafeMutablePointer<Float>]) {
        precondition(ws.count == outs.count)
        guard let first = ws.first else { return }
        let format = QuantizedActivations.format(for: first.type)
        guard ws.allSatisfy({ $0.cols == first.cols && $0.hasInt8Path && QuantizedActivations.format(for: $0.type) == format }) else {
            for (w, o) in zip(ws, outs) { multiply(w, x, m: m, out: o) }
            return
        }
        act.quantize(x, count: m, cols: first.cols, format: format)
        let rounding: Int32 = llamaCppBatchRounding ? 1 : 0
        var starts = [0]
        for w in ws { starts.append(starts.last! + w.rows) }
        let total = starts.last!
        act.blocks.withUnsafeBufferPointer { ab in
            let a = ab.baseAddress!
            parallelRows(total, work: Double(m) * Double(total) * Double(first.cols)) { r0, r1, _ in
                for j in 0..<ws.count {
                    let lo = max(r0, starts[j]), hi = min(r1, starts[j + 1])
                    if lo >= hi { continue }
                    let w = ws[j]
                    if w.layout == .x16 {
                        // whole groups of 16: each worker's bounds rounded up the same way, so the workers still
                        // partition the matrix's rows
                        let g0 = (lo - starts[j] + 15) / 16 * 16, g1 = min(w.rows, (hi - starts[j] + 15) / 16 * 16)
                        if g0 < g1 {
                            Self.multiplyX16(w, rows: g0..<g1, a, m: m, out: outs[j], outStride: w.rows, lanes: rounding)
                        }
                        continue
                    }
                    _ = kvant_matmul_q8a_rounding(Int32(w.type.rawValue), w.base, w.rowBytes, Int64(w.cols),
                                                  Int64(lo - starts[j]), Int64(hi - starts[j]), a, Int64(m), outs[j], Int64(w.rows),
                                                  rounding)
                }
            }
        }
    }

    /// An `.x16` matrix (Q8_0 or Q5_0 repacked 16 rows at a time): activations quantized as for Q8_0, rows split over
    /// the workers in whole groups of 16. Default rounding: one exact int32 sum and one FMA per block of 32
    /// (batch-invariant); `llamaCppBatchRounding`: ggml's 8 lanes per block, bit-identical to the unpacked kernels
    /// (`kvant_matmul_q0x16`).
    private func multiplyRepacked(_ w: WeightMatrix, _ x: UnsafePointer<Float>, m: Int, out: UnsafeMutablePointer<Float>,
                                  outStride: Int) {
        let lanes: Int32 = llamaCppBatchRounding ? 1 : 0
        act.quantize(x, count: m, cols: w.cols, format: QuantizedActivations.format(for: w.type))
        act.blocks.withUnsafeBufferPointer { ab in
            let a = ab.baseAddress!
            parallelRows(w.rows / 16, work: Double(m) * Double(w.rows) * Double(w.cols)) { g0, g1, _ in
                Self.multiplyX16(w, rows: 16 * g0..<16 * g1, a, m: m, out: out, outStride: outStride, lanes: lanes)
            }
        }
    }

    /// Rows `rows` (bounds multiples of 16) of an `.x16` product.
    private static func multiplyX16(_ w: WeightMatrix, rows: Range<Int>, _ a: UnsafePointer<kvant_block_q8a>, m: Int,
                                    out: UnsafeMutablePointer<Float>, outStride: Int, lanes: Int32) {
        let rc = kvant_matmul_q0x16(Int32(w.type.rawValue), w.base, Int64(w.cols), Int64(rows.lowerBound), Int64(rows.upperBound),
                                    a, Int64(m), out, Int64(outStride), lanes)
        precondition(rc == 0, "kvant_matmul_q0x16 refused rows \(rows) of a \(w.rows) × \(w.cols) \(w.type) product")
    }

    /// The fp32-activation reference path for every type (block rows dequantized to fp32, then FMA dots).
    public func multiplyReference(_ w: WeightMatrix, _ x: UnsafePointer<Float>, m: Int, out: UnsafeMutablePointer<Float>,
                                  outStride: Int? = nil) {
        let stride = outStride ?? w.rows
        if scratchCols < w.cols {
            scratch?.deallocate()
            scratch = .allocate(capacity: w.cols * threads)
            scratchCols = w.cols
        }
        let s = scratch!, sc = scratchCols
        if w.layout != .ggml {
            // A repacked matrix: each row dequantized (the same floats as the unpacked row), then fp32 dots.
            parallelRows(w.rows, work: Double(m) * Double(w.rows) * Double(w.cols)) { r0, r1, t in
                let row = s + t * sc
                for r in r0..<r1 {
                    w.dequantizeRow(r, into: row)
                    // the dequantized row as a one-row F32 matrix: the reference path's own dot products
                    _ = kvant_matmul_f32(Int32(GGMLType.f32.rawValue), row, w.cols * 4, Int64(w.cols), 0, 1, x, Int64(m),
                                         out + r, Int64(stride), row)   // F32 rows need no scratch
                }
            }
            return
        }
        parallelRows(w.rows, work: Double(m) * Double(w.rows) * Double(w.cols)) { r0, r1, t in
            _ = kvant_matmul_f32(Int32(w.type.rawValue), w.base, w.rowBytes, Int64(w.cols), Int64(r0), Int64(r1),
                                 x, Int64(m), out, Int64(stride), s + t * sc)
        }
    }

    /// Splits `rows` into `threads` contiguous chunks (one worker when the work is tiny).
    private func parallelRows(_ rows: Int, work: Double, _ body: (Int, Int, Int) -> Void) {
        let n = (threads == 1 || work < 100_000) ? 1 : min(threads, rows)
        if n == 1 { body(0, rows, 0); return }
        DispatchQueue.concurrentPerform(iterations: n) { t in
            let r0 = rows * t / n, r1 = rows * (t + 1) / n
            if r1 > r0 { body(r0, r1, t) }
        }
    }
}
