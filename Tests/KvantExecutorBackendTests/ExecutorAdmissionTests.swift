import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantExecutorBackend
import KvantTestSupport
import Logging
import Testing

/// Admission control through the real adapter (`ExecutorBackend`) and engine on the real model,
/// with a KV cache of 2 blocks (32 tokens at block_size 16).
@Suite(.serialized, .enabled(if: RealModel.path != nil, RealModel.skipReason))
struct ExecutorAdmissionTests {
    /// Gemma 3 270M, fp16 KV: 18 layers × (K + V) × 1 KV head × 256 × 2 bytes = 18432 bytes/token.
    static let blockBytes = 18 * 2 * 1 * 256 * 2 * 16

    func makeEngine() async throws -> Engine {
        let engine = Engine(backend: ExecutorBackend(),
                            settings: .init(kvCacheDType: .fp16, kvCacheBytes: 2 * Self.blockBytes, blockSize: 16,
                                            maxModelLen: 256, threads: 2, maxNumSeqs: 4),
                            logger: Logger(label: "test"))
        let loaded = try await engine.loadModel(path: try #require(RealModel.path), kvCacheDType: nil,
                                                quantizationParamPath: nil, kvCacheBytes: nil, maxModelLen: nil)
        #expect(loaded.model.kvCacheCapacityTokens == 32)
        return engine
    }

    @Test("prompt + max_tokens larger than the whole cache: resource_exhausted naming tokens, capacity and kv_cache_bytes")
    func tooLarge() async throws {
        let engine = try await makeEngine()
        do {
            _ = try await engine.generate(GenerateParams(prompt: "The capital of France is", maxTokens: 40, temperature: 0)) { _ in }
            Issue.record("a generate of 40+ tokens was admitted into a 32-token cache")
        } catch let error as KvantError {
            #expect(error.reason == .resourceExhausted)
            #expect(error.message.contains("capacity 32 tokens"), "\(error.message)")
            #expect(error.message.contains("kv_cache_bytes \(2 * Self.blockBytes)"), "\(error.message)")
            #expect(error.message.contains("max_tokens (40)"), "\(error.message)")
        }
        // A max_tokens past max_model_len (256) is capped for the budget; the refusal names the value sent.
        do {
            _ = try await engine.generate(GenerateParams(prompt: "The capital of France is", maxTokens: 100_000, temperature: 0)) { _ in }
            Issue.record("a generate of up to 256 tokens was admitted into a 32-token cache")
        } catch let error as KvantError {
            #expect(error.reason == .resourceExhausted)
            #expect(error.message.contains("max_tokens (100000, capped at max_model_len 256 − the prompt's 6 tokens = 250)"), "\(error.message)")
        }
        let stats = try await engine.stats()
        #expect(stats.kvCache["num_blocks_used"] == .int(0))
    }

    @Test("two requests that each fit (2 blocks) but not together: both complete, the second waited")
    func twoThatFitOneAtATime() async throws {
        let engine = try await makeEngine()
        let params = GenerateParams(prompt: "The capital of France is", maxTokens: 20, temperature: 0)
        async let first = engine.generate(params) { _ in }
        async let second = engine.generate(params) { _ in }
        let (a, b) = try await (first, second)
        for result in [a, b] {
            #expect(result.promptTokens + 20 > 16)   // needs both blocks
            #expect(result.finishReason == .length || result.finishReason == .stop)
            #expect(result.completionTokens >= 1)
        }
        #expect(a.text == b.text)   // greedy, same prompt
        let waited = max(a.timings.queueMs, b.timings.queueMs)
        let ran = min(a.timings.prefillMs + a.timings.decodeMs, b.timings.prefillMs + b.timings.decodeMs)
        #expect(waited >= ran * 0.5, "queue_ms \(a.timings.queueMs) / \(b.timings.queueMs)")
        let figures = await engine.figures()
        #expect(figures.requestsFailed == 0 && figures.requestsServed == 2)
        #expect(try await engine.stats().kvCache["num_blocks_used"] == .int(0))
    }

    @Test("static int8 without a scale file: load-model and set-kv-dtype replies carry the warning; stats.scale_warnings too")
    func noScaleFileWarning() async throws {
        let engine = try await makeEngine()
        let path = try #require(RealModel.path)
        let loaded = try await engine.loadModel(path: path, kvCacheDType: .int8PerTensor, quantizationParamPath: nil,
                                                kvCacheBytes: nil, maxModelLen: nil)
        let warning = try #require(loaded.model.warnings?.first)
        #expect(warning.contains("int8_pertensor") && warning.contains("no scale file: every scale is the default 1.0"))
        let stats = try await engine.stats()
        guard case .array(let warnings)? = stats.kvCache["scale_warnings"] else {
            Issue.record("no scale_warnings in \(stats.kvCache)")
            return
        }
        #expect(warnings.contains { $0.stringValue?.hasPrefix("no scale file: every scale is the default 1.0") == true })
        let fp16 = try await engine.setKVCacheDType(.fp16, quantizationParamPath: nil)
        #expect(fp16.warnings == nil)
        let perHead = try await engine.setKVCacheDType(.int8PerTensorPerHead, quantizationParamPath: nil)
        #expect(perHead.warnings?.first?.contains("no scale file") == true)
        // On the wire: the field is "warnings", additive (absent when there are none).
        let wire = try JSONValue(encoding: perHead)
        #expect(wire["warnings"]?.description.contains("no scale file") == true)
        #expect(try JSONValue(encoding: fp16)["warnings"] == nil)
    }

    @Test("a sequence that reaches max_model_len ends with finish_reason length and its text, not an error")
    func reachesMaxModelLen() async throws {
        let engine = Engine(backend: ExecutorBackend(),
                            settings: .init(kvCacheDType: .int8PerToken, kvCacheBytes: 4 * Self.blockBytes, blockSize: 16,
                                            maxModelLen: 24, threads: 2),
                            logger: Logger(label: "test"))
        _ = try await engine.loadModel(path: try #require(RealModel.path), kvCacheDType: nil, quantizationParamPath: nil,
                                       kvCacheBytes: nil, maxModelLen: nil)
        // max_tokens far beyond max_model_len 24.
        let result = try await engine.generate(GenerateParams(prompt: "Once upon a time", maxTokens: 500, temperature: 0.8,
                                                              repetitionPenalty: 1.3, seed: 7)) { _ in }
        // Seeded: deterministic; this prompt and seed run into the limit (no end-of-sequence token first).
        #expect(result.finishReason == .length)
        #expect(result.promptTokens + result.completionTokens == 24)
        #expect(!result.text.isEmpty)
        #expect(try await engine.stats().kvCache["num_blocks_used"] == .int(0))
    }

    @Test("sliding-window layers keep only their window: a prompt beyond the all-layers capacity is admitted and generates what a large cache generates")
    func longerThanAllLayersCapacity() async throws {
        let text = try String(contentsOfFile: "/usr/share/common-licenses/GPL-3", encoding: .utf8)
        let params = GenerateParams(prompt: String(text.prefix(5000)), maxTokens: 8, temperature: 0)
        func run(kvCacheBytes: Int) async throws -> (GenerateResult, Int) {
            let engine = Engine(backend: ExecutorBackend(),
                                settings: .init(kvCacheDType: .fp16, kvCacheBytes: kvCacheBytes, blockSize: 16,
                                                maxModelLen: 4096, threads: 2, maxNumSeqs: 4),
                                logger: Logger(label: "test"))
            let loaded = try await engine.loadModel(path: try #require(RealModel.path), kvCacheDType: nil,
                                                    quantizationParamPath: nil, kvCacheBytes: nil, maxModelLen: nil)
            let result = try await engine.generate(params) { _ in }
            #expect(try await engine.stats().kvCache["num_blocks_used"] == .int(0))
            return (result, loaded.model.kvCacheCapacityTokens)
        }
        // 64 blocks of every layer: 1024 tokens if every layer kept every position. With the 15 window layers
        // holding at most their window plus one prefill chunk (the engine's max_num_batched_tokens, 64): 3312 tokens
        // (chunk 3264..<3312: full group 207 blocks + 5 window groups × 35 = 382 of 384 three-layer blocks; with the
        // executor's 512-token micro-batch it was 1440).
        let (small, capacity) = try await run(kvCacheBytes: 64 * Self.blockBytes)
        #expect(capacity == 3312)
        #expect(small.promptTokens > 1024 && small.promptTokens + 8 <= capacity, "prompt \(small.promptTokens) tokens")
        let (large, _) = try await run(kvCacheBytes: 256 * Self.blockBytes)
        #expect(small.tokens == large.tokens && small.text == large.text)
        #expect(small.completionTokens == 8 || small.finishReason == .stop)
    }
}
