import CKernels
import Foundation
import Kernels
import KvantCore
import KvantTestSupport
import Testing

/// Fixture written by scripts/oracle/kernels_goldens.py: raw GGUF blocks + python gguf's dequantization.
struct DequantGolden: Decodable {
    struct Entry: Decodable {
        let source: String
        let type: String
        let typeId: UInt32
        let rows: Int
        let cols: Int
        let bytes: String
        let expected: [Float]
    }
    let entries: [Entry]

    static func load() throws -> DequantGolden {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/dequant_goldens.json")
        return try JSONDecoder().decode(DequantGolden.self, from: Data(contentsOf: url))
    }
}

extension DequantGolden.Entry {
    var raw: [UInt8] { [UInt8](Data(base64Encoded: bytes)!) }
    var ggmlType: GGMLType { GGMLType(rawValue: typeId)! }
}

@Suite struct DequantizeTests {
    @Test func fixtureCoversEveryWeightType() throws {
        let golden = try DequantGolden.load()
        let types = Set(golden.entries.map(\.ggmlType))
        #expect(types == WeightMatrix.supportedTypes)
    }

    @Test func dequantizationMatchesPythonGGUF() throws {
        let golden = try DequantGolden.load()
        for e in golden.entries {
            let raw = e.raw
            try raw.withUnsafeBytes { buf in
                let w = try WeightMatrix(name: e.source, type: e.ggmlType, rows: e.rows, cols: e.cols, bytes: buf)
                for r in 0..<e.rows {
                    let got = w.dequantizedRow(r)
                    var maxErr: Float = 0
                    var maxAbs: Float = 0
                    for c in 0..<e.cols {
                        let x = e.expected[r * e.cols + c]
                        maxErr = max(maxErr, abs(got[c] - x))
                        maxAbs = max(maxAbs, abs(x))
                    }
                    // Same formulas in fp32: equal up to one rounding of the scale product.
                    #expect(maxErr <= 1e-6 * max(maxAbs, 1e-30), "\(e.type) \(e.source) row \(r): max error \(maxErr) (max |x| \(maxAbs))")
                }
            }
        }
    }

    @Test func badShapesThrowNamingTheTensor() throws {
        let bytes = [UInt8](repeating: 0, count: 34)
        bytes.withUnsafeBytes { buf in
            #expect(throws: KvantError.self) { try WeightMatrix(name: "blk.0.attn_q.weight", type: .q8_0, rows: 1, cols: 16, bytes: buf) }
            #expect(throws: KvantError.self) { try WeightMatrix(name: "x", type: .q8_0, rows: 2, cols: 32, bytes: buf) }
            #expect(throws: KvantError.self) { try WeightMatrix(name: "x", type: .q2_K, rows: 1, cols: 256, bytes: buf) }
            do {
                _ = try WeightMatrix(name: "blk.7.ffn_up.weight", type: .q8_0, rows: 3, cols: 32, bytes: buf)
                Issue.record("expected an error")
            } catch let e as KvantError {
                #expect(e.reason == .invalidArgument)
                #expect(e.message.contains("blk.7.ffn_up.weight"))
            } catch { Issue.record("wrong error \(error)") }
        }
    }
}

/// Serialized: the tests force the process-wide int8 kernel variant.
@Suite(.serialized) struct MatMulTests {
    /// Builds an 11-row matrix by cycling the fixture rows (exercises row tiles and the 4-row activation groups).
    func check(_ e: DequantGolden.Entry, m: Int, threads: Int) throws {
        let rowBytes = e.raw.count / e.rows
        let nRows = 11
        var bytes: [UInt8] = []
        var deq: [Float] = []
        for r in 0..<nRows {
            let s = r % e.rows
            bytes += e.raw[(s * rowBytes)..<((s + 1) * rowBytes)]
            deq += e.expected[(s * e.cols)..<((s + 1) * e.cols)]
        }
        var rng = SplitMix64(seed: UInt64(e.typeId) &+ 77)
        let x: [Float] = (0..<(m * e.cols)).map { k in Float(rng.nextGaussian()) * ((k % 7 == 0) ? 3 : 1) }
        var fast = [Float](repeating: .nan, count: m * nRows)
        var ref = [Float](repeating: .nan, count: m * nRows)
        try bytes.withUnsafeBytes { buf in
            let w = try WeightMatrix(name: e.source, type: e.ggmlType, rows: nRows, cols: e.cols, bytes: buf)
            let mm = MatMul(threads: threads)
            mm.multiply(w, x, m: m, out: &fast)
            mm.multiplyReference(w, x, m: m, out: &ref)
        }
        // Activation blocks: 256 values for K-quant weights (llama.cpp's Q8_K), 32 otherwise.
        let format = QuantizedActivations.format(for: e.ggmlType)
        let L = format == KVANT_ACT_Q8_K ? 256 : 32
        for i in 0..<m {
            // Bound of the int8 activation error: per element |x - q·d| ≤ d/2 = amax(block)/254, plus for Q8_0
            // activations the fp16 rounding of d: 127·|d - fp16(d)| ≤ amax·2⁻¹¹.
            var amax = [Float](repeating: 0, count: e.cols / L)
            for k in 0..<e.cols { amax[k / L] = max(amax[k / L], abs(x[i * e.cols + k])) }
            let perAmax = 1.0 / 254 + (format == KVANT_ACT_Q8_0 ? 1.0 / 2048 : 0)
            for r in 0..<nRows {
                var exact = 0.0, absSum = 0.0, qBound = 0.0
                for k in 0..<e.cols {
                    let wv = Double(deq[r * e.cols + k]), xv = Double(x[i * e.cols + k])
                    exact += wv * xv
                    absSum += abs(wv * xv)
                    qBound += abs(wv) * Double(amax[k / L]) * perAmax
                }
                let refErr = abs(Double(ref[i * nRows + r]) - exact)
                #expect(refErr <= 1e-5 * absSum + 1e-6, "\(e.type) reference path row \(r) act \(i): \(ref[i * nRows + r]) vs \(exact)")
                let fastErr = abs(Double(fast[i * nRows + r]) - exact)
                let isInt8 = e.ggmlType != .f32 && e.ggmlType != .f16 && e.ggmlType != .bf16
                let tol = isInt8 ? qBound * 1.001 + 1e-5 * absSum + 1e-6 : 1e-5 * absSum + 1e-6
                #expect(fastErr <= tol, "\(e.type) fast path row \(r) act \(i): \(fast[i * nRows + r]) vs \(exact), tol \(tol)")
            }
        }
    }

    @Test func matvecAndMatmulMatchFp64ReferenceForEveryType() throws {
        let golden = try DequantGolden.load()
        var seen = Set<GGMLType>()
        // Every int8 kernel variant: AVX2 (maddubs) and, when the CPU has them, AVX-VNNI (vpdpbusd) and the AVX-512 tiles.
        for variant: Int32 in [0, 1, 2] {
            if kvant_force_int8_kernel_variant(variant) != 0 { print("int8 kernel variant \(variant) not available: skipped"); continue }
            seen = []
            for e in golden.entries where !seen.contains(e.ggmlType) {
                seen.insert(e.ggmlType)
                try check(e, m: 1, threads: 1)      // decode
                try check(e, m: 1, threads: 2)
                try check(e, m: 9, threads: 2)      // prefill: 8 + 1 activation rows
                try check(e, m: 20, threads: 2)     // 8 + 8 + 4
            }
            #expect(seen.count == 11)
        }
        _ = kvant_force_int8_kernel_variant(-1)
    }
}


/// The int8 kernels (every variant: AVX2, AVX-VNNI, AVX-512 tiles) against the fp32 reference path
/// (`kvant_matmul_f32` through `MatMul.multiplyReference`) on random weight blocks of each block type, fed the
/// dequantized activations (q·d of the very blocks the int8 path uses): the two must agree to fp32 rounding, for
/// weight-row counts and activation-row counts that are and are not multiples of the tiles (2 or 8 weight rows,
/// 8 activation rows).
extension MatMulTests {
    /// Random blocks with finite fp16 scales: (type, bytes per block, values per block, offsets of fp16 scale fields).
    static let layouts: [(GGMLType, Int, Int, [Int])] = [
        (.q4_0, 18, 32, [0]), (.q4_1, 20, 32, [0, 2]), (.q5_0, 22, 32, [0]), (.q5_1, 24, 32, [0, 2]),
        (.q8_0, 34, 32, [0]), (.q4_K, 144, 256, [0, 2]), (.q5_K, 176, 256, [0, 2]), (.q6_K, 210, 256, [208]),
    ]

    func check(type: GGMLType, blockBytes: Int, blockSize: Int, scaleOffsets: [Int], rows: Int, m: Int, threads: Int,
               rng: inout SplitMix64) throws {
        let cols = 512
        let nb = cols / blockSize
        var bytes = [UInt8](repeating: 0, count: rows * nb * blockBytes)
        for k in bytes.indices { bytes[k] = UInt8(truncatingIfNeeded: rng.next()) }
        for blk in 0..<(rows * nb) {
            for off in scaleOffsets {
                let v = Float16(Float(0.002 + 0.05 * rng.nextUniform()) * (rng.next() & 1 == 0 ? 1 : -1)).bitPattern
                bytes[blk * blockBytes + off] = UInt8(v & 0xFF)
                bytes[blk * blockBytes + off + 1] = UInt8(v >> 8)
            }
        }
        let x: [Float] = (0..<(m * cols)).map { k in Float(rng.nextGaussian()) * ((k % 11 == 0) ? 4 : 1) }
        var act = QuantizedActivations()
        act.quantize(x, count: m, cols: cols, format: QuantizedActivations.format(for: type))
        var xq = [Float](repeating: 0, count: m * cols)
        for b in 0..<(m * cols / 32) {
            let blk = act.blocks[b]
            withUnsafeBytes(of: blk.q) { q in
                for j in 0..<32 { xq[b * 32 + j] = Float(Int8(bitPattern: q[j])) * blk.d }
            }
        }
        var fast = [Float](repeating: .nan, count: m * rows)
        var batched = [Float](repeating: .nan, count: m * rows)
        var ref = [Float](repeating: .nan, count: m * rows)
        var absSum = [Double](repeating: 0, count: m * rows)
        try bytes.withUnsafeBytes { buf in
            let w = try WeightMatrix(name: "random \(type)", type: type, rows: rows, cols: cols, bytes: buf)
            #expect(w.hasInt8Path)
            let mm = MatMul(threads: threads)
            mm.multiply(w, x, m: m, out: &fast)
            mm.multiplyReference(w, xq, m: m, out: &ref)
            // Batch invariance (default rounding): each activation row alone gives bit-identical results.
            for i in 0..<m {
                var single = [Float](repeating: .nan, count: rows)
                x.withUnsafeBufferPointer { xb in mm.multiply(w, xb.baseAddress! + i * cols, m: 1, out: &single) }
                #expect(single == Array(fast[(i * rows)..<((i + 1) * rows)]),
                        "\(type) rows \(rows) m \(m): row \(i) alone differs from the batch")
            }
            // llama.cpp's batch-dependent rounding (K-quants in groups of 4 / 8+ rows): same values to fp32 rounding.
            let llama = MatMul(threads: threads)
            llama.llamaCppBatchRounding = true
            llama.multiply(w, x, m: m, out: &batched)
            for r in 0..<rows {
                let wr = w.dequantizedRow(r)
                for i in 0..<m {
                    var s = 0.0
                    for k in 0..<cols { s += abs(Double(wr[k]) * Double(xq[i * cols + k])) }
                    absSum[i * rows + r] = s
                }
            }
        }
        if type == .q4_1 || type == .q5_1 {
            // Q8_1 activations (llama.cpp's vec_dot_type for these) carry s = fp16(d·Σq), not d·Σq: the int8 path
            // computes Σ_b m_b·s_b for the offsets, so the reference gets Σ_b m_b·(s_b − d_b·Σq_b) added.
            for i in 0..<m {
                for r in 0..<rows {
                    var corr = 0.0
                    for b in 0..<nb {
                        let blk = act.blocks[i * nb + b]
                        let sumq = withUnsafeBytes(of: blk.q) { q in (0..<32).reduce(0) { $0 + Int(Int8(bitPattern: q[$1])) } }
                        let o = (r * nb + b) * blockBytes + 2
                        let mb = Float(Float16(bitPattern: UInt16(bytes[o]) | UInt16(bytes[o + 1]) << 8))
                        corr += Double(mb) * (Double(blk.s) - Double(blk.d) * Double(sumq))
                    }
                    ref[i * rows + r] = Float(Double(ref[i * rows + r]) + corr)
                }
            }
        }
        for i in 0..<m {
            for r in 0..<rows {
                let k = i * rows + r
                #expect(abs(Double(fast[k]) - Double(ref[k])) <= 2e-6 * absSum[k] + 1e-6,
                        "\(type) rows \(rows) m \(m) threads \(threads): int8 \(fast[k]) vs fp32 \(ref[k]) at act \(i) row \(r)")
                #expect(abs(Double(batched[k]) - Double(ref[k])) <= 2e-6 * absSum[k] + 1e-6,
                        "\(type) rows \(rows) m \(m), llama.cpp rounding: \(batched[k]) vs fp32 \(ref[k])")
            }
        }
    }

    @Test func int8KernelsMatchFp32ReferenceOnRandomBlocks() throws {
        var tested = 0
        for variant: Int32 in [0, 1, 2] {
            if kvant_force_int8_kernel_variant(variant) != 0 { print("int8 kernel variant \(variant) not available: skipped"); continue }
            var rng = SplitMix64(seed: 1234 + UInt64(variant))
            for (type, bb, bs, offs) in Self.layouts {
                for (rows, m) in [(1, 1), (2, 2), (3, 5), (7, 8), (8, 9), (4, 16), (9, 17), (17, 3), (5, 33)] {
                    try check(type: type, blockBytes: bb, blockSize: bs, scaleOffsets: offs, rows: rows, m: m,
                              threads: rows % 2 + 1, rng: &rng)
                }
            }
            tested += 1
        }
        _ = kvant_force_int8_kernel_variant(-1)
        #expect(tested >= 1)
    }
}

/// The int8 kernel variants promise bit-identical results (exact int32 lanes, the same FMA order as
/// ggml_vec_dot_q*_0_q8_0): AVX-512 (decode gemv with vpdpbusd, the batched-decode kernel for 2…16 rows, prefill
/// tiles beyond) against AVX2 (maddubs) on random Q4_0/Q5_0/Q8_0 blocks, for one activation row (decode), 2…16 (a
/// batched decode step, with a group remainder) and more (prefill tiles, with remainders). (Batch invariance, each row
/// of a batch equal to that row alone, is checked for every variant by `int8KernelsMatchFp32ReferenceOnRandomBlocks`.)
extension MatMulTests {
    @Test func avx512KernelsAreBitIdenticalToAVX2() throws {
        guard kvant_force_int8_kernel_variant(2) == 0 else {
            _ = kvant_force_int8_kernel_variant(-1)
            print("int8 kernel variant 2 (AVX-512 VNNI) not available: skipped")
            return
        }
        var rng = SplitMix64(seed: 99)
        for (type, bb, _, offs) in Self.layouts where [.q4_0, .q5_0, .q8_0].contains(type) {
            for (rows, m, cols) in [(5, 1, 512), (3, 1, 32), (9, 1, 8448), (7, 3, 512), (4, 9, 256), (6, 2, 640),
                                    (5, 8, 640), (3, 16, 256), (4, 17, 256), (2, 40, 128)] {
                let nb = cols / 32
                let bytes = Self.randomBlocks(count: rows * nb, blockBytes: bb, scaleOffsets: offs, rng: &rng)
                let x = Self.randomActivations(count: m * cols, rng: &rng)
                var out = [[Float]]()
                for variant: Int32 in [0, 2] {
                    _ = kvant_force_int8_kernel_variant(variant)
                    var o = [Float](repeating: .nan, count: m * rows)
                    try bytes.withUnsafeBytes { buf in
                        let w = try WeightMatrix(name: "random \(type)", type: type, rows: rows, cols: cols, bytes: buf)
                        MatMul(threads: 1).multiply(w, x, m: m, out: &o)
                    }
                    out.append(o)
                }
                #expect(out[0].map(\.bitPattern) == out[1].map(\.bitPattern),
                        "\(type) rows \(rows) m \(m) cols \(cols): AVX-512 \(out[1].prefix(4)) vs AVX2 \(out[0].prefix(4))")
                #expect(out[0].allSatisfy { $0.isFinite })
            }
        }
        _ = kvant_force_int8_kernel_variant(-1)
    }
}

extension MatMulTests {
    /// `count` weight blocks of `blockBytes` random bytes each, with a random fp16 scale (±0.002…0.052) at every
    /// offset of `scaleOffsets` in a block (random bytes there could be NaN or infinite).
    static func randomBlocks(count: Int, blockBytes bb: Int, scaleOffsets offs: [Int], rng: inout SplitMix64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count * bb)
        for k in bytes.indices { bytes[k] = UInt8(truncatingIfNeeded: rng.next()) }
        for blk in 0..<count {
            for off in offs {
                let v = Float16(Float(0.002 + 0.05 * rng.nextUniform()) * (rng.next() & 1 == 0 ? 1 : -1)).bitPattern
                bytes[blk * bb + off] = UInt8(v & 0xFF)
                bytes[blk * bb + off + 1] = UInt8(v >> 8)
            }
        }
        return bytes
    }

    /// `count` Gaussian activations, every 13th scaled by 8 (±127 after quantization), the first 32 zero (a zero block).
    static func randomActivations(count: Int, rng: inout SplitMix64) -> [Float] {
        var x: [Float] = (0..<count).map { k in Float(rng.nextGaussian()) * ((k % 13 == 0) ? 8 : 1) }
        for k in 0..<min(32, x.count) { x[k] = 0 }
        return x
    }
}

/// The K-quant kernels' activation tables (the Q4_K/Q5_K min term and final FMAs in vector lanes over the activation
/// rows, the Q6_K bsums read from a table) promise the same bits as the scalar code they replace: random Q4_K, Q5_K and
/// Q6_K blocks, 1 (decode) to 17 activation rows, both roundings (batch-invariant and llama.cpp's batched kernels).
extension MatMulTests {
    @Test func kquantTablesAreBitIdenticalToTheScalarCode() throws {
        var rng = SplitMix64(seed: 4242)
        for (type, bb, _, offs) in Self.layouts where [.q4_K, .q5_K, .q6_K].contains(type) {
            for (rows, m, cols) in [(3, 1, 256), (5, 1, 2048), (7, 3, 512), (9, 8, 1024), (4, 17, 768)] {
                let nb = cols / 256
                let bytes = Self.randomBlocks(count: rows * nb, blockBytes: bb, scaleOffsets: offs, rng: &rng)
                let x = Self.randomActivations(count: m * cols, rng: &rng)
                for batchRounding in [false, true] {
                    var out = [[Float]]()
                    for tables: Int32 in [0, 1] {
                        kvant_set_kquant_tables(tables)
                        var o = [Float](repeating: .nan, count: m * rows)
                        try bytes.withUnsafeBytes { buf in
                            let w = try WeightMatrix(name: "random \(type)", type: type, rows: rows, cols: cols, bytes: buf)
                            let mm = MatMul(threads: 1)
                            mm.llamaCppBatchRounding = batchRounding
                            mm.multiply(w, x, m: m, out: &o)
                        }
                        out.append(o)
                    }
                    kvant_set_kquant_tables(1)
                    #expect(out[0].map(\.bitPattern) == out[1].map(\.bitPattern),
                            "\(type) rows \(rows) m \(m) cols \(cols) batch rounding \(batchRounding): tables \(out[1].prefix(4)) vs scalar \(out[0].prefix(4))")
                    #expect(out[0].allSatisfy { $0.isFinite })
                }
            }
        }
    }
}
