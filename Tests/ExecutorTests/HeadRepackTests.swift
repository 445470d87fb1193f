import Executor
import KVCache
import Kernels
import KvantCore
import ModelFormats
import KvantTestSupport
import Testing

/// Weights repacked at load (`WeightMatrix.Layout.x16`: the Q8_0 output head and the Q5_0 / Q8_0 layer matrices), on
/// Gemma 3 270M (a tied 262 144 × 640 Q8_0 embedding): the repack happens once per file object, so a second model built from the same `GGUFFile` reads the same
/// repacked bytes (repacking twice would scramble them); the embedding lookup reads the repacked rows as the file's.
extension Gemma3Tests {
    @Test func outputHeadIsRepackedOnceAndBothModelsAgree() throws {
        let file = try GGUFFile(path: Fixtures.realModelPath!)
        let t = file.tensor(named: "token_embd.weight")!
        let fileRows = try WeightMatrix(name: "raw", type: t.type, rows: t.dims[1], cols: t.dims[0], bytes: file.data(of: t))
        let raw = [0, 2, 1000, 262_143].map { fileRows.dequantizedRow($0) }   // read before the repack
        let m1 = try Model(file: file)
        let m2 = try Model(file: file)
        let expected: WeightMatrix.Layout = WeightMatrix.x16Available ? .x16 : .ggml
        #expect(m1.weights.output.layout == expected && m2.weights.output.layout == expected)
        #expect(m1.weights.tokenEmbedding.layout == expected, "tied: the embedding is the head")
        #expect(m1.weights.layers[0].wq.type == .q5_0 && m1.weights.layers[0].wq.layout == expected)
        #expect(m1.weights.layers.allSatisfy { $0.wo.layout == .ggml }, "K-quants keep the file's layout")
        #expect(file.isRewritten("token_embd.weight") == (expected == .x16))
        for (k, r) in [0, 2, 1000, 262_143].enumerated() {
            #expect(m2.weights.tokenEmbedding.dequantizedRow(r) == raw[k], "embedding row \(r) after the repack")
        }
        let tokens: [Int32] = [2, 818, 5279, 529, 7001, 563]
        var logits = [[Float]]()
        for m in [m1, m2] {
            let spec = m.config.kvCacheSpec(dtype: .fp16)
            let pool = try KVCachePool(spec: spec, byteBudget: 256 * spec.bytesPerToken)
            logits.append(try ForwardSession(model: m, threads: 2).forwardLast(tokens: tokens, startPosition: 0,
                                                                               sequence: pool.createSequence(), pool: pool))
        }
        #expect(logits[0].count == 262_144 && logits[0].allSatisfy { $0.isFinite })
        #expect(logits[0].map(\.bitPattern) == logits[1].map(\.bitPattern))
    }
}
