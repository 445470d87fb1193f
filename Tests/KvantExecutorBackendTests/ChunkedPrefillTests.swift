import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantExecutorBackend
import KvantTestSupport
import Logging
import Testing

/// Chunked prefill on the real model: a prompt longer than Gemma 3's 512-token sliding window, prefilled in
/// chunks of a small step budget (windows crossing chunk boundaries, a last chunk of one token), gives the
/// same tokens as one unchunked prefill, greedy and seeded, for fp16, int8_pertoken, a static int8 mode and
/// int4_pertoken (whose int8 residual rings follow the chunk: sized for 96 tokens in the chunked engine, for the
/// executor's 512-token micro-batch in the unchunked one); also while another sequence decodes in the same steps.
@Suite(.serialized, .enabled(if: RealModel.path != nil, RealModel.skipReason))
struct ChunkedPrefillTests {
    /// 673 tokens: chunks of 96 (the step budget) end at 96, 192, …, 672; the last chunk is one token at
    /// position 672, whose keys reach back past the window's start (a one-row pass, as a decode is).
    static let promptLength = 673

    func makeEngine(_ dtype: KVCacheDType, maxNumBatchedTokens: Int, scales: String? = nil) async throws -> Engine {
        let engine = Engine(backend: ExecutorBackend(),
                            settings: .init(kvCacheDType: dtype, kvCacheBytes: 32 << 20, blockSize: 16, maxModelLen: 2048,
                                            threads: 2, maxNumSeqs: 4, maxNumBatchedTokens: maxNumBatchedTokens,
                                            // Off: every run here must compute its whole prompt in chunks (with it
                                            // on, a repeated prompt would come from the prefix cache instead).
                                            enablePrefixCaching: false),
                            logger: Logger(label: "test"))
        _ = try await engine.loadModel(path: try #require(RealModel.path), kvCacheDType: nil, quantizationParamPath: scales,
                                       kvCacheBytes: nil, maxModelLen: nil)
        return engine
    }

    static func prompt(_ engine: Engine) async throws -> [Int] {
        let text = try String(contentsOfFile: "/usr/share/common-licenses/GPL-3", encoding: .utf8)
        let tokens = try await engine.tokenize(String(text.prefix(12_000)))
        try #require(tokens.count >= promptLength)
        return Array(tokens.prefix(promptLength))
    }

    static func requests(_ prompt: [Int]) -> [GenerateParams] {
        var greedy = GenerateParams(prompt: "", maxTokens: 24, temperature: 0)
        greedy.promptTokenIDs = prompt
        greedy.logprobs = 3   // the log-probabilities too: equal logits, not only equal argmaxes
        var seeded = GenerateParams(prompt: "", maxTokens: 24, temperature: 0.9, topP: 0.95, seed: 7)
        seeded.promptTokenIDs = prompt
        return [greedy, seeded]
    }

    /// Calibrated scales for the static int8 mode (256 tokens of the built-in text, per layer, K and V apart).
    static func calibratedScales() async throws -> String {
        let engine = try await ChunkedPrefillTests().makeEngine(.fp16, maxNumBatchedTokens: 256)
        let output = try makeTempDir("chunk-scales") + "/kv_cache_scales.json"
        _ = try await engine.calibrate(CalibrationRequest(textPath: nil, numTokens: 256, perHead: false, tpSize: 1,
                                                          percentile: nil, outputPath: output)) { _, _ in }
        return output
    }

    @Test("chunks of 96 tokens == one prefill, token for token (greedy and seeded)",
          arguments: [KVCacheDType.fp16, .int8PerToken, .int8PerTensor, .int4PerToken])
    func chunkedEqualsUnchunked(dtype: KVCacheDType) async throws {
        let scales = dtype.usesStaticScales ? try await Self.calibratedScales() : nil
        let whole = try await makeEngine(dtype, maxNumBatchedTokens: 4096, scales: scales)
        let chunked = try await makeEngine(dtype, maxNumBatchedTokens: 96, scales: scales)
        let prompt = try await Self.prompt(whole)
        for params in Self.requests(prompt) {
            let wholeLogprobs = Collected(), chunkedLogprobs = Collected()
            let a = try await whole.generate(params) { wholeLogprobs.append($0.logprobs) }
            let b = try await chunked.generate(params) { chunkedLogprobs.append($0.logprobs) }
            #expect(a.tokens.count == 24 && a.promptTokens == Self.promptLength)
            #expect(b.tokens == a.tokens, "\(dtype.rawValue) temperature \(params.temperature): chunked \(b.tokens) vs whole \(a.tokens)")
            #expect(b.text == a.text)
            if params.logprobs != nil {
                #expect(wholeLogprobs.items.count == 24 && wholeLogprobs.items.allSatisfy { $0 != nil })
                #expect(chunkedLogprobs.items == wholeLogprobs.items, "\(dtype.rawValue): log-probabilities differ")
            }
        }
        #expect(try await chunked.stats().kvCache["num_blocks_used"] == .int(0))
        if dtype == .int4PerToken {
            // Rings of 4 + 6 + 1 blocks + the sink slot (96-token chunks) vs 4 + 32 + 1 + 1 (512): 18 layers × 8 320 B.
            #expect(try await chunked.stats().kvCache["residual_bytes_per_sequence"] == .int(12 * 18 * 8320))
            #expect(try await whole.stats().kvCache["residual_bytes_per_sequence"] == .int(38 * 18 * 8320))
        }
    }

    @Test("a chunked prefill beside a decoding sequence, fused into its decode steps: both get the tokens (and log-probabilities) they get alone",
          arguments: [KVCacheDType.fp16, .int8PerToken, .int4PerToken])
    func chunkedBesideDecode(dtype: KVCacheDType) async throws {
        let engine = try await makeEngine(dtype, maxNumBatchedTokens: 100)   // chunks of 99 or 100, cut to 96
        let prompt = try await Self.prompt(engine)
        var greedyShort = GenerateParams(prompt: "The capital of France is", maxTokens: 48, temperature: 0)
        greedyShort.ignoreEOS = true
        greedyShort.logprobs = 2
        var seededShort = GenerateParams(prompt: "The capital of France is", maxTokens: 48, temperature: 0.9, topP: 0.95, seed: 11)
        seededShort.ignoreEOS = true
        // Greedy with log-probabilities (equal logits, not only equal argmaxes), then seeded.
        for (long, short) in zip(Self.requests(prompt), [greedyShort, seededShort]) {
            let longAloneLogprobs = Collected(), shortAloneLogprobs = Collected()
            let longAlone = try await engine.generate(long) { longAloneLogprobs.append($0.logprobs) }
            let shortAlone = try await engine.generate(short) { shortAloneLogprobs.append($0.logprobs) }
            let fusedBefore = try await engine.stats().engine.fusedSteps
            // The short one starts first; the long prompt is admitted while it decodes.
            let started = AsyncStream<Void>.makeStream()
            let longLogprobs = Collected(), shortLogprobs = Collected()
            async let shortTogether = engine.generate(short) {
                shortLogprobs.append($0.logprobs)
                started.continuation.yield()
            }
            var iterator = started.stream.makeAsyncIterator()
            _ = await iterator.next()
            let longTogether = try await engine.generate(long) { longLogprobs.append($0.logprobs) }
            let shortResult = try await shortTogether
            #expect(longTogether.tokens == longAlone.tokens, "\(dtype.rawValue) temperature \(long.temperature)")
            #expect(shortResult.tokens == shortAlone.tokens, "\(dtype.rawValue) temperature \(short.temperature)")
            #expect(longLogprobs.items == longAloneLogprobs.items && shortLogprobs.items == shortAloneLogprobs.items)
            // The long prompt's chunks ran in the short one's decode passes (7 chunks; the short one decodes 48 tokens,
            // so at least the first chunks after its first token share its steps, however the threads interleave).
            let fused = try await engine.stats().engine.fusedSteps - fusedBefore
            #expect(fused >= 1, "no step ran a chunk with the decode row: the test did not exercise the fused pass")
        }
        #expect(try await engine.stats().kvCache["num_blocks_used"] == .int(0))
    }
}

/// Log-probabilities collected from a generation's tokens, in order.
final class Collected: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [TokenLogprobs?] = []
    var items: [TokenLogprobs?] { lock.withLock { values } }
    func append(_ value: TokenLogprobs?) { lock.withLock { values.append(value) } }
}
