import CKernels
import Kernels
import KvantCore
import KvantTestSupport
import Testing

/// Q8_0 and Q5_0 weights repacked 16 rows at a time (`WeightMatrix.Layout.x16`, Sources/CKernels/q0x16.c), on random
/// blocks of both types: rows dequantize to the same floats; with llama.cpp's rounding the products are bit-identical
/// to the unpacked matrix's AVX2 kernel; with the default rounding (one exact int32 sum and one FMA per block) it agrees with the fp32
/// reference to fp32 rounding, and every activation row gives the same bits alone, in any batch and on any number of
/// threads (a sequence decodes the same tokens alone or batched).
extension MatMulTests {
    static let x16Types: [GGMLType] = [.q8_0, .q5_0]

    /// Random rows of `type`, unpacked and repacked (the repack runs in place on the copy, as the loader does on the file).
    static func x16Pair(_ type: GGMLType, rows: Int, cols: Int, rng: inout SplitMix64) throws -> (unpacked: [UInt8], packed: [UInt8]) {
        let bytes = Self.randomBlocks(count: rows * cols / 32, blockBytes: type == .q8_0 ? 34 : 22, scaleOffsets: [0], rng: &rng)
        var packed = bytes
        try packed.withUnsafeMutableBytes { try WeightMatrix.repackX16(name: "random", type: type, rows: rows, cols: cols, bytes: $0) }
        return (bytes, packed)
    }

    @Test(.enabled(if: kvant_q0x16_available() != 0, "needs AVX-512 VNNI (the x16 kernels)"))
    func repackedRowsMatchTheUnpackedRows() throws {
        var rng = SplitMix64(seed: 1616)
        for type in Self.x16Types {
        for (rows, cols) in [(16, 32), (48, 640), (32, 576), (16, 8448)] {
            let (raw, packed) = try Self.x16Pair(type, rows: rows, cols: cols, rng: &rng)
            #expect(raw != packed, "the repack changed nothing")
            try raw.withUnsafeBytes { rb in
                try packed.withUnsafeBytes { pb in
                    let w = try WeightMatrix(name: "raw", type: type, rows: rows, cols: cols, bytes: rb)
                    let p = try WeightMatrix(name: "packed", type: type, rows: rows, cols: cols, bytes: pb, layout: .x16)
                    for r in [0, 1, 15, rows - 1] {
                        #expect(w.dequantizedRow(r) == p.dequantizedRow(r), "\(type) rows \(rows) cols \(cols): row \(r) dequantizes differently")
                    }
                }
            }
        }
        }
    }

    @Test(.enabled(if: kvant_q0x16_available() != 0, "needs AVX-512 VNNI (the x16 kernels)"))
    func repackedWithLlamaCppRoundingIsBitIdenticalToAVX2() throws {
        var rng = SplitMix64(seed: 1617)
        defer { _ = kvant_force_int8_kernel_variant(-1) }
        for type in Self.x16Types {
        for (rows, m, cols) in [(16, 1, 640), (32, 2, 576), (48, 8, 640), (16, 9, 256), (32, 17, 640), (16, 40, 128)] {
            let (raw, packed) = try Self.x16Pair(type, rows: rows, cols: cols, rng: &rng)
            let x = Self.randomActivations(count: m * cols, rng: &rng)
            var ref = [Float](repeating: .nan, count: m * rows), got = ref
            _ = kvant_force_int8_kernel_variant(0)   // the AVX2 (maddubs) kernel on the ggml layout
            try raw.withUnsafeBytes { b in
                MatMul(threads: 1).multiply(try WeightMatrix(name: "raw", type: type, rows: rows, cols: cols, bytes: b), x, m: m, out: &ref)
            }
            _ = kvant_force_int8_kernel_variant(-1)
            try packed.withUnsafeBytes { b in
                let mm = MatMul(threads: 2)
                mm.llamaCppBatchRounding = true
                mm.multiply(try WeightMatrix(name: "packed", type: type, rows: rows, cols: cols, bytes: b, layout: .x16), x, m: m, out: &got)
            }
            #expect(ref.allSatisfy { $0.isFinite })
            #expect(got.map(\.bitPattern) == ref.map(\.bitPattern),
                    "\(type) rows \(rows) m \(m) cols \(cols): repacked \(got.prefix(3)) vs AVX2 \(ref.prefix(3))")
        }
        }
    }

    @Test(.enabled(if: kvant_q0x16_available() != 0, "needs AVX-512 VNNI (the x16 kernels)"))
    func repackedIsBatchInvariantAndAgreesWithTheReference() throws {
        var rng = SplitMix64(seed: 1618)
        for type in Self.x16Types {
        for (rows, m, cols) in [(16, 1, 640), (64, 8, 640), (48, 16, 576), (32, 17, 640), (16, 40, 256)] {
            let (raw, packed) = try Self.x16Pair(type, rows: rows, cols: cols, rng: &rng)
            let x = Self.randomActivations(count: m * cols, rng: &rng)
            // The fp32 reference of the quantized activations (the products the int8 path computes exactly).
            var act = QuantizedActivations()
            act.quantize(x, count: m, cols: cols, format: QuantizedActivations.format(for: .q8_0))
            var xq = [Float](repeating: 0, count: m * cols)
            for b in 0..<(m * cols / 32) {
                withUnsafeBytes(of: act.blocks[b].q) { q in
                    for j in 0..<32 { xq[b * 32 + j] = Float(Int8(bitPattern: q[j])) * act.blocks[b].d }
                }
            }
            var batch = [Float](repeating: .nan, count: m * rows), ref = batch, refPacked = batch, twoThreads = batch
            try raw.withUnsafeBytes { rb in
                try packed.withUnsafeBytes { pb in
                    let w = try WeightMatrix(name: "raw", type: type, rows: rows, cols: cols, bytes: rb)
                    let p = try WeightMatrix(name: "packed", type: type, rows: rows, cols: cols, bytes: pb, layout: .x16)
                    MatMul(threads: 1).multiply(p, x, m: m, out: &batch)
                    MatMul(threads: 2).multiply(p, x, m: m, out: &twoThreads)
                    MatMul(threads: 1).multiplyReference(w, xq, m: m, out: &ref)
                    MatMul(threads: 2).multiplyReference(p, xq, m: m, out: &refPacked)
                    for i in 0..<m {
                        var single = [Float](repeating: .nan, count: rows)
                        x.withUnsafeBufferPointer { xb in MatMul(threads: 2).multiply(p, xb.baseAddress! + i * cols, m: 1, out: &single) }
                        #expect(single.map(\.bitPattern) == batch[(i * rows)..<((i + 1) * rows)].map(\.bitPattern),
                                "rows \(rows) m \(m): activation row \(i) alone differs from the batch")
                    }
                    for r in 0..<rows {
                        let wr = w.dequantizedRow(r)
                        for i in 0..<m {
                            var absSum = 0.0
                            for k in 0..<cols { absSum += abs(Double(wr[k]) * Double(xq[i * cols + k])) }
                            let k = i * rows + r
                            #expect(abs(Double(batch[k]) - Double(ref[k])) <= 2e-6 * absSum + 1e-6,
                                    "rows \(rows) m \(m): repacked \(batch[k]) vs fp32 reference \(ref[k]) at act \(i) row \(r)")
                        }
                    }
                }
            }
            #expect(twoThreads.map(\.bitPattern) == batch.map(\.bitPattern), "rows \(rows) m \(m): 2 threads differ from 1")
            #expect(refPacked.map(\.bitPattern) == ref.map(\.bitPattern), "\(type) rows \(rows) m \(m): the reference path reads the repacked rows differently")
        }
        }
    }

    /// Q/K/V-style products sharing one input (`MatMul.multiply(_ ws:)`, one parallel region over the concatenated rows):
    /// repacked members are split between the workers in whole groups of 16 and give the bits of their own products.
    @Test(.enabled(if: kvant_q0x16_available() != 0, "needs AVX-512 VNNI (the x16 kernels)"))
    func repackedMembersOfASharedInputProductMatchTheirOwnProducts() throws {
        var rng = SplitMix64(seed: 1619)
        let cols = 640, m = 3
        let shapes: [(GGMLType, Int, Bool)] = [(.q5_0, 48, true), (.q8_0, 16, true), (.q5_0, 40, false), (.q8_0, 32, true)]
        var buffers = [[UInt8]]()
        for (type, rows, packed) in shapes {
            buffers.append(packed ? try Self.x16Pair(type, rows: rows, cols: cols, rng: &rng).packed
                                  : Self.randomBlocks(count: rows * cols / 32, blockBytes: 22, scaleOffsets: [0], rng: &rng))
        }
        let x = Self.randomActivations(count: m * cols, rng: &rng)
        var fused = shapes.map { [Float](repeating: .nan, count: m * $0.1) }
        var alone = fused
        let ptrs = buffers.map { b -> UnsafeMutableRawBufferPointer in
            let p = UnsafeMutableRawBufferPointer.allocate(byteCount: b.count, alignment: 64)
            p.copyBytes(from: b)
            return p
        }
        defer { ptrs.forEach { $0.deallocate() } }
        let ws = try shapes.indices.map { k in
            try WeightMatrix(name: "w\(k)", type: shapes[k].0, rows: shapes[k].1, cols: cols, bytes: UnsafeRawBufferPointer(ptrs[k]),
                             layout: shapes[k].2 ? .x16 : .ggml)
        }
        for threads in [1, 2] {
            let mm = MatMul(threads: threads)
            let outs = fused.indices.map { k in UnsafeMutablePointer<Float>.allocate(capacity: m * shapes[k].1) }
            defer { outs.forEach { $0.deallocate() } }
            mm.multiply(ws, x, m: m, outs: outs)
            for k in ws.indices {
                fused[k] = Array(UnsafeBufferPointer(start: outs[k], count: m * shapes[k].1))
                mm.multiply(ws[k], x, m: m, out: &alone[k])
                #expect(fused[k].map(\.bitPattern) == alone[k].map(\.bitPattern),
                        "threads \(threads): member \(k) (\(shapes[k].0), \(shapes[k].2 ? "x16" : "ggml")) differs in the shared product")
                #expect(fused[k].allSatisfy { $0.isFinite })
            }
        }
    }

    @Test func repackRefusesWhatItCannotGroup() throws {
        var bytes = [UInt8](repeating: 0, count: 15 * 34)
        let e = #expect(throws: KvantError.self) {
            try bytes.withUnsafeMutableBytes { try WeightMatrix.repackX16(name: "head", type: .q8_0, rows: 15, cols: 32, bytes: $0) }
        }
        #expect(e?.reason == .invalidArgument && e?.message.contains("'head'") == true && e?.message.contains("15") == true)
        let e2 = #expect(throws: KvantError.self) {
            try bytes.withUnsafeBytes { _ = try WeightMatrix(name: "head", type: .q4_0, rows: 16, cols: 32, bytes: UnsafeRawBufferPointer(rebasing: $0[0..<(16 * 18)]), layout: .x16) }
        }
        #expect(e2?.message.contains("x16") == true)
    }
}
