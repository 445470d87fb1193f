import CKernels
import Foundation
import KvantTestSupport
import Testing

/// The int4 KV row formats (kv_q4.c; docs/kv-cache.md "4-bit KV: measurements") against an fp64 reference:
/// every stored code is the nearest of the group's 16 levels (computed in fp64 from the stored fp16 scale and
/// minimum), the scale and minimum are the fp16 of the fp64 group statistics, nibbles pack two per byte.
struct Int4FormatTests {
    /// Random rows with a spread of magnitudes, an outlier channel, a constant group and a zero group.
    static func rows(headDim n: Int, count: Int, seed: UInt64) -> [[Float]] {
        var rng = SplitMix64(seed: seed &+ 0x9E37_79B9_7F4A_7C15)
        return (0..<count).map { r in
            let scale = Float(pow(10.0, Double(rng.next() % 5) - 2))   // 0.01 ... 100
            var x = (0..<n).map { _ in Float(rng.nextGaussian()) * scale }
            x[Int(rng.next() % UInt64(n))] *= 20                        // outlier channel
            if r % 5 == 1 { for i in 0..<32 { x[i] = 0.75 * scale } }   // constant K group
            if r % 7 == 2 { for i in 0..<64 { x[i] = 0 } }              // zero V group
            return x
        }
    }

    static func halfBits(_ p: UnsafePointer<UInt8>) -> Float {
        Float(Float16(bitPattern: UInt16(p[0]) | UInt16(p[1]) << 8))
    }

    /// fp16 ulp of a value (for the check that stored scales are the fp16 rounding of the fp64 statistic).
    static func ulp16(_ x: Double) -> Double { Double(Float16(x).ulp) }

    @Test("row sizes: K 20 bytes per 32 values, V 34 per 64; 296 B per token per KV head at head_dim 256 = 0.289x fp16",
          arguments: [64, 128, 256])
    func sizes(headDim n: Int) {
        #expect(Int(kv_q4k_row_bytes(Int32(n))) == n / 32 * 20)
        #expect(Int(kv_q4v_row_bytes(Int32(n))) == n / 64 * 34)
        let ratio = Double(kv_q4k_row_bytes(Int32(n)) + kv_q4v_row_bytes(Int32(n))) / Double(4 * n)
        #expect(abs(ratio - 74.0 / 256) < 1e-9)
    }

    @Test("K (asymmetric, groups of 32): nearest level in fp64, fp16 scale and min of the group", arguments: [64, 128, 256])
    func keyRoundTrip(headDim n: Int) {
        let bytes = Int(kv_q4k_row_bytes(Int32(n)))
        for (r, x) in Self.rows(headDim: n, count: 60, seed: UInt64(n)).enumerated() {
            var packed = [UInt8](repeating: 0xAA, count: bytes + 1)
            var back = [Float](repeating: .nan, count: n)
            kv_store_row_q4k(x, &packed, Int32(n))
            kv_load_row_q4k(packed, &back, Int32(n))
            #expect(packed[bytes] == 0xAA, "row \(r): wrote past the row")
            for g in 0..<(n / 32) {
                let xs = x[(g * 32)..<(g * 32 + 32)].map(Double.init)
                let lo = xs.min()!, hi = xs.max()!
                let base = g * 20
                let (d, m) = packed.withUnsafeBufferPointer { p in
                    (Double(Self.halfBits(p.baseAddress! + base)), Double(Self.halfBits(p.baseAddress! + base + 2)))
                }
                #expect(abs(d - (hi - lo) / 15) <= Self.ulp16((hi - lo) / 15), "row \(r) group \(g): d \(d) vs \((hi - lo) / 15)")
                #expect(abs(m - lo) <= Self.ulp16(lo), "row \(r) group \(g): min \(m) vs \(lo)")
                for i in 0..<32 {
                    let j = i % 16, byte = packed[base + 4 + j]
                    let q = Double(i < 16 ? byte & 15 : byte >> 4)
                    let xhat = m + q * d
                    #expect(abs(Double(back[g * 32 + i]) - xhat) <= 1e-6 * max(abs(xhat), abs(m) + 15 * d),
                            "row \(r) value \(g * 32 + i): read \(back[g * 32 + i]) vs m + q·d = \(xhat)")
                    // Nearest of the 16 levels (ties either way, fp32 arithmetic in the kernel: 1e-4 step slack).
                    let best = (0...15).map { abs(xs[i] - (m + Double($0) * d)) }.min()!
                    #expect(abs(xs[i] - xhat) <= best + 1e-4 * max(d, 1e-30), "row \(r) value \(g * 32 + i): q \(q) not the nearest level")
                    if d == 0 { #expect(back[g * 32 + i] == Float(m)) }
                }
            }
        }
    }

    @Test("V (symmetric q4_0 rule, groups of 64): nearest level in fp64, the extreme value maps to -8·d", arguments: [64, 128, 256])
    func valueRoundTrip(headDim n: Int) {
        let bytes = Int(kv_q4v_row_bytes(Int32(n)))
        for (r, x) in Self.rows(headDim: n, count: 60, seed: 1000 + UInt64(n)).enumerated() {
            var packed = [UInt8](repeating: 0xAA, count: bytes + 1)
            var back = [Float](repeating: .nan, count: n)
            kv_store_row_q4v(x, &packed, Int32(n))
            kv_load_row_q4v(packed, &back, Int32(n))
            #expect(packed[bytes] == 0xAA, "row \(r): wrote past the row")
            for g in 0..<(n / 64) {
                let xs = x[(g * 64)..<(g * 64 + 64)].map(Double.init)
                var v = 0.0
                for e in xs where abs(e) > abs(v) { v = e }
                let base = g * 34
                let d = packed.withUnsafeBufferPointer { Double(Self.halfBits($0.baseAddress! + base)) }
                #expect(abs(d - v / -8) <= Self.ulp16(v / -8), "row \(r) group \(g): d \(d) vs \(v / -8)")
                for i in 0..<64 {
                    let j = i % 32, byte = packed[base + 2 + j]
                    let q = Double(Int(i < 32 ? byte & 15 : byte >> 4) - 8)
                    let xhat = q * d
                    #expect(Double(back[g * 64 + i]) == xhat, "row \(r) value \(g * 64 + i): read \(back[g * 64 + i]) vs q·d = \(xhat)")
                    let best = (-8...7).map { abs(xs[i] - Double($0) * d) }.min()!
                    #expect(abs(xs[i] - xhat) <= best + 1e-4 * abs(d), "row \(r) value \(g * 64 + i): q \(q) not the nearest level")
                    if xs[i] == v && d != 0 { #expect(q == -8, "row \(r) group \(g): the extreme value got q \(q), expected -8") }
                    if d == 0 { #expect(back[g * 64 + i] == 0) }
                }
            }
        }
    }
}
