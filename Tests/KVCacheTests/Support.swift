import Foundation
import KVCache
import KvantCore
import KvantTestSupport
import Testing


/// Straightforward fp64 attention of one query position (the definition, no tricks):
/// keys/values `[T][numKVHeads * headDim]`, query `[numHeads * headDim]`.
func referenceAttention(keys: [[Float]], values: [[Float]], query: [Float], numHeads: Int, numKVHeads: Int,
                        headDim: Int, position: Int, window: Int?, scale: Float) -> [Double] {
    let first = window.map { max(0, position - $0 + 1) } ?? 0
    let group = numHeads / numKVHeads
    var out = [Double](repeating: 0, count: numHeads * headDim)
    for h in 0..<numHeads {
        let g = h / group
        var scores: [Double] = []
        for t in first...position {
            var dot = 0.0
            for d in 0..<headDim { dot += Double(query[h * headDim + d]) * Double(keys[t][g * headDim + d]) }
            scores.append(dot * Double(scale))
        }
        let m = scores.max()!
        let e = scores.map { exp($0 - m) }
        let sum = e.reduce(0, +)
        for (i, t) in (first...position).enumerated() {
            for d in 0..<headDim { out[h * headDim + d] += e[i] / sum * Double(values[t][g * headDim + d]) }
        }
    }
    return out
}

/// Writes `keys`/`values` (one row per position) for `layer` of `seq`, reserving first.
func writeAll(_ pool: KVCachePool, _ seq: SequenceID, layer: Int, keys: [[Float]], values: [[Float]], from start: Int = 0) {
    if pool.length(of: seq) < keys.count {
        precondition(pool.reserve(seq, newLength: keys.count) == .ok)
    }
    for p in start..<keys.count {
        keys[p].withUnsafeBufferPointer { k in
            values[p].withUnsafeBufferPointer { v in
                let ok = pool.write(layer: layer, sequence: seq, position: p, key: k.baseAddress!, value: v.baseAddress!)
                #expect(ok, "write layer \(layer) position \(p)")
            }
        }
    }
}

/// Dequantized K and V of one position as the cache holds them.
func readBack(_ pool: KVCachePool, _ seq: SequenceID, layer: Int, position: Int) -> (k: [Float], v: [Float]) {
    let n = pool.spec.numKVHeads * pool.spec.headDim
    var k = [Float](repeating: .nan, count: n), v = [Float](repeating: .nan, count: n)
    k.withUnsafeMutableBufferPointer { kb in
        v.withUnsafeMutableBufferPointer { vb in
            pool.read(layer: layer, sequence: seq, position: position, key: kb.baseAddress!, value: vb.baseAddress!)
        }
    }
    return (k, v)
}

func attend(_ pool: KVCachePool, _ seq: SequenceID, layer: Int, position: Int, query: [Float], numHeads: Int,
            window: Int?, scale: Float, threads: Int = 1) -> [Float] {
    var out = [Float](repeating: .nan, count: numHeads * pool.spec.headDim)
    query.withUnsafeBufferPointer { q in
        out.withUnsafeMutableBufferPointer { o in
            pool.attend(layer: layer, sequence: seq, position: position, query: q.baseAddress!, numHeads: numHeads,
                        window: window, scale: scale, output: o.baseAddress!, threads: threads)
        }
    }
    return out
}

/// A fresh temporary directory for scale files.
func tempDir() -> String {
    let dir = NSTemporaryDirectory() + "kvcache-tests-\(UUID().uuidString)"
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

func writeFile(_ dir: String, _ name: String, _ text: String) -> String {
    let path = dir + "/" + name
    try! Data(text.utf8).write(to: URL(fileURLWithPath: path))
    return path
}

/// Error message of a throwing call (nil when it did not throw a KvantError).
func kvantError(_ body: () throws -> Void) -> KvantError? {
    do { try body(); return nil } catch let e as KvantError { return e } catch { return nil }
}

/// x -> (H_g / √g) x on each group of g values, H_g the Sylvester Hadamard matrix built entry by entry
/// (H[i][j] = (−1)^popcount(i & j)), in fp64: the reference for `kv_hadamard`.
func hadamardReference(_ x: [Double], group g: Int) -> [Double] {
    var y = [Double](repeating: 0, count: x.count)
    let norm = 1 / Double(g).squareRoot()
    for base in stride(from: 0, to: x.count, by: g) {
        for i in 0..<g {
            var acc = 0.0
            for j in 0..<g { acc += ((i & j).nonzeroBitCount % 2 == 0 ? 1 : -1) * x[base + j] }
            y[base + i] = acc * norm
        }
    }
    return y
}
