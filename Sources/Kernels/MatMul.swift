import CKernels
import Dispatch
import KvantCore

/// Matrix products with GGUF weight blocks: `out[i, r] = Σ_k W[r, k] · x[i, k]` for a `[rows, cols]` weight and
/// `m` activation rows `x: [m, cols]`, giving `out: [m, rows]` (row stride `outStride`, default `rows`).
///
/// Block types use the int8 path (activations quantized once to blocks of 32, AVX2 `maddubs` dot products, as in
/// llama.cpp's `ggml_vec_dot_*_q8_*`); F32/F16/BF16 use fp32 FMA dot products. The fast path splits the weight rows
/// into tasks (chunks of whole 8-row tiles, at least ~256 K multiply-adds each, at most 64 per thread in decode and 4
/// in prefill) claimed by the `threads` threads of a `WorkerPool`; the reference path splits them in `threads` parts
/// with `DispatchQueue.concurrentPerform`. Not thread-safe: one `MatMul` per caller.
public final class MatMul: @unchecked Sendable {
    public let threads: Int
    /// The `threads` threads the products run on; the caller's other parallel loops (decode attention) may use it
    /// between products, from the same thread.
    public let pool: WorkerPool
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
        self.pool = WorkerPool(threads: self.threads)
    }

    deinit { scratch?.deallocate() }

    /// Decode (m = 1) / prefill (m > 1) product through the fast path (int8 for block types).
    public func multiply(_ w: WeightMatrix, _ x: UnsafePointer<Float>, m: Int, out: UnsafeMutablePointer<Float>,
                         outStride: Int? = nil) {
        let stride = outStride ?? w.rows
        let rounding: Int32 = llamaCppBatchRounding ? 1 : 0
        if w.hasInt8Path {
            act.quantize(x, count: m, cols: w.cols, format: QuantizedActivations.format(for: w.type))
            act.blocks.withUnsafeBufferPointer { ab in
                let a = ab.baseAddress!
                parallelTasks(w.rows, work: Double(m) * Double(w.rows) * Double(w.cols)) { r0, r1 in
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
            parallelTasks(total, work: Double(m) * Double(total) * Double(first.cols)) { r0, r1 in
                for j in 0..<ws.count {
                    let lo = max(r0, starts[j]), hi = min(r1, starts[j + 1])
                    if lo >= hi { continue }
                    let w = ws[j]
                    _ = kvant_matmul_q8a_rounding(Int32(w.type.rawValue), w.base, w.rowBytes, Int64(w.cols),
                                                  Int64(lo - starts[j]), Int64(hi - starts[j]), a, Int64(m), outs[j], Int64(w.rows),
                                                  rounding)
                }
            }
        }
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
        parallelRows(w.rows, work: Double(m) * Double(w.rows) * Double(w.cols)) { r0, r1, t in
            _ = kvant_matmul_f32(Int32(w.type.rawValue), w.base, w.rowBytes, Int64(w.cols), Int64(r0), Int64(r1),
                                 x, Int64(m), out, Int64(stride), s + t * sc)
        }
    }

    /// Splits `rows` into tasks of whole 8-row tiles on the pool: ~256 K multiply-adds or more each, at most 64 per
    /// thread for decode-sized work (a few activation rows) and 4 for prefill (claimed dynamically, so a late worker's
    /// share is taken by the others); one task when the work is tiny.
    private func parallelTasks(_ rows: Int, work: Double, _ body: (Int, Int) -> Void) {
        if threads == 1 || work < 100_000 { body(0, rows); return }
        let tiles = (rows + 7) / 8
        // Decode (one activation row per 8-row tile of work): many small tasks; prefill: a few per thread, since
        // each call sets up per-activation-block tables.
        let maxTasks = work / Double(rows) < 8 * 4096 ? 64 * threads : 4 * threads
        let n = max(1, min(tiles, maxTasks, max(threads, Int(work / 262_144))))
        pool.run(n) { t in
            let r0 = min(rows, tiles * t / n * 8), r1 = min(rows, tiles * (t + 1) / n * 8)
            if r1 > r0 { body(r0, r1) }
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
