import CKernels
import Foundation
import KvantTestSupport
import Testing

/// The AVX-512 int4 attention kernel (kv_attention_q4.c) equals, bit for bit, the kernel it replaced
/// (kv_attention_q4_ref.c, kept verbatim): same products, same summation order, so the perplexity figures measured
/// with the old kernel (BENCHMARKS.md "4-bit KV") still hold exactly. Outputs (normalized and split-K partials with
/// their maxima and sums) are compared as bit patterns over random 4-bit blocks: head_dim 64/128/192/256/512 (every
/// path of the scale gathering), 1–4 query heads per KV head, 1–3 KV heads, block sizes 8/16/64 (chunks that end at
/// a block boundary or at 32 positions), ranges starting and ending inside blocks, a zero row and large values.
/// The fp64 references of the pool's int4 attention are in Int4CacheTests.
@Suite("int4 attention kernel: bit-identical to the previous kernel", .enabled(if: kv_cpu_has_avx512() != 0, "needs AVX-512"))
struct Int4KernelIdentityTests {
    struct Case: CustomStringConvertible, Sendable {
        var headDim: Int, numKVHeads: Int, blockSize: Int, positions: Int
        var description: String { "d\(headDim) kv\(numKVHeads) b\(blockSize) T\(positions)" }
    }

    static let cases: [Case] = [
        .init(headDim: 256, numKVHeads: 1, blockSize: 16, positions: 700),   // Gemma 3 270M
        .init(headDim: 64, numKVHeads: 3, blockSize: 16, positions: 300),    // SmolLM2-135M
        .init(headDim: 128, numKVHeads: 2, blockSize: 8, positions: 200),
        .init(headDim: 192, numKVHeads: 1, blockSize: 64, positions: 300),   // scalar scale path
        .init(headDim: 512, numKVHeads: 2, blockSize: 16, positions: 150),   // two 8-group batches per row
    ]

    @Test("outputs, maxima and sums equal the previous kernel's bit for bit", arguments: cases)
    func bitIdentical(_ c: Case) throws {
        let D = c.headDim, H = c.numKVHeads, B = c.blockSize
        let krow = Int(kv_q4k_row_bytes(Int32(D))), vrow = Int(kv_q4v_row_bytes(Int32(D)))
        let vOffset = H * B * krow
        let blockStride = (vOffset + H * B * vrow + 63) & ~63
        let numBlocks = (c.positions + B - 1) / B
        var rng = SplitMix64(seed: UInt64(D * 31 + H * 7 + B))
        // A shuffled block table, as the pool's.
        var ids = (0..<Int32(numBlocks)).map { $0 }
        for i in stride(from: numBlocks - 1, to: 0, by: -1) { ids.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        let mem = UnsafeMutableRawPointer.allocate(byteCount: blockStride * numBlocks + 64, alignment: 64)
        defer { mem.deallocate() }
        memset(mem, 0, blockStride * numBlocks + 64)
        for p in 0..<c.positions {
            let blk = mem + Int(ids[p / B]) * blockStride
            for h in 0..<H {
                let mag = Float([0.01, 1, 30][p % 3])
                var k = rng.floats(D, scale: mag), v = rng.floats(D, scale: mag)
                if p == 5 { k = [Float](repeating: 0, count: D); v = k }   // a zero row
                k[(p * 7) % D] *= 40                                       // an outlier channel
                kv_store_row_q4k(k, blk + (h * B + p % B) * krow, Int32(D))
                kv_store_row_q4v(v, blk + vOffset + (h * B + p % B) * vrow, Int32(D))
            }
        }
        var checked = 0
        try ids.withUnsafeBufferPointer { idp in
            var view = kv_layer_view(
                base: UnsafePointer(mem.assumingMemoryBound(to: UInt8.self)), block_stride: blockStride, v_offset: vOffset,
                ks_offset: 0, vs_offset: 0, static_scales: nil, static_v_scales: nil, block_ids: idp.baseAddress,
                dtype: Int32(KV_DT_Q4), num_kv_heads: Int32(H), head_dim: Int32(D), block_size: Int32(B),
                use_avx512: 1, numerics: Int32(KV_NUMERICS_DEFAULT))
            let T = c.positions
            let ranges = [(0, T - 1), (0, 0), (3, 40), (B - 1, B), (B, 3 * B - 1), (1, T - 2), (T / 2 + 1, T - 1)]
            for (first, last) in ranges where first <= last && last < T {
                for nl in 1...4 {
                    let queries = (0..<4).map { _ in rng.floats(D, scale: 2) }
                    for g in 0..<H {
                        for partial in [false, true] {
                            var outNew = [Float](repeating: .nan, count: 4 * D), outRef = outNew
                            var mlNew = [Float](repeating: .nan, count: 8), mlRef = mlNew
                            try withQueryPointers(queries) { q in
                                outNew.withUnsafeMutableBufferPointer { o in
                                    mlNew.withUnsafeMutableBufferPointer { m in
                                        kv_attend_group_q4(&view, Int32(g), Int32(nl), Int32(first), Int32(last), q, 0.125,
                                                           o.baseAddress, partial ? m.baseAddress : nil)
                                    }
                                }
                                outRef.withUnsafeMutableBufferPointer { o in
                                    mlRef.withUnsafeMutableBufferPointer { m in
                                        kv_attend_group_q4_reference(&view, Int32(g), Int32(nl), Int32(first), Int32(last), q,
                                                                     0.125, o.baseAddress, partial ? m.baseAddress : nil)
                                    }
                                }
                            }
                            let n = nl * D
                            let differing = (0..<n).filter { outNew[$0].bitPattern != outRef[$0].bitPattern }
                            #expect(differing.isEmpty,
                                    "\(c) keys \(first)...\(last) nl \(nl) head \(g) partial \(partial): \(differing.count) of \(n) outputs differ, first at \(differing.first ?? -1): \(differing.first.map { outNew[$0] } ?? 0) vs \(differing.first.map { outRef[$0] } ?? 0)")
                            #expect(outNew[0..<n].allSatisfy { $0.isFinite })
                            if partial {
                                for j in 0..<nl {
                                    #expect(mlNew[j].bitPattern == mlRef[j].bitPattern && mlNew[4 + j].bitPattern == mlRef[4 + j].bitPattern,
                                            "\(c) keys \(first)...\(last) nl \(nl): max/sum of head \(j) differ")
                                }
                            }
                            checked += 1
                        }
                    }
                }
            }
        }
        #expect(checked >= 40)
    }

    /// Calls `body` with a `const float *const *` of the four query rows.
    func withQueryPointers(_ rows: [[Float]], _ body: (UnsafePointer<UnsafePointer<Float>?>) throws -> Void) throws {
        let flat = rows.flatMap { $0 }
        let D = rows[0].count
        try flat.withUnsafeBufferPointer { f in
            let ptrs: [UnsafePointer<Float>?] = (0..<rows.count).map { f.baseAddress! + $0 * D }
            try ptrs.withUnsafeBufferPointer { try body($0.baseAddress!) }
        }
    }
}
