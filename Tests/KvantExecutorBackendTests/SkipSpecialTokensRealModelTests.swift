import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantExecutorBackend
import KvantTestSupport
import Logging
import Testing

/// `skip_special_tokens` through the real adapter and engine on Gemma 3 270M: the base model generates image markers
/// (`<start_of_image>`) after a prompt that announces a picture; by default (vLLM's true) they leave no text, with
/// false they do.
@Suite(.serialized, .enabled(if: RealModel.path != nil, RealModel.skipReason))
struct SkipSpecialTokensRealModelTests {
    static let markers = ["<start_of_image>", "<end_of_image>", "[multimodal]"]
    static let markerIDs: Set<Int> = [5, 255_999, 256_000]

    @Test("generated image markers: no text by default (streamed and final), their text with skip_special_tokens false")
    func generatedMarkers() async throws {
        let engine = Engine(backend: ExecutorBackend(),
                            settings: .init(kvCacheDType: .fp16, kvCacheBytes: 64 << 20, blockSize: 16, maxModelLen: 256, threads: 2),
                            logger: Logger(label: "test"))
        _ = try await engine.loadModel(path: try #require(RealModel.path), kvCacheDType: nil, quantizationParamPath: nil,
                                       kvCacheBytes: nil, maxModelLen: nil)
        // Gemma 3 270M (a base model) answers this plain prompt with image markers, greedy: the finding of a user trial.
        let prompt = "Here is a picture of a cat:"
        func run(skip: Bool) async throws -> (result: GenerateResult, tokens: [Int], streamed: String) {
            var params = GenerateParams(prompt: prompt, maxTokens: 6, temperature: 0)
            params.skipSpecialTokens = skip
            let collected = TokenCollector()
            let result = try await engine.generate(params) { await collected.add($0) }
            return (result, await collected.tokens, await collected.text)
        }
        let skipped = try await run(skip: true)
        let kept = try await run(skip: false)
        #expect(skipped.tokens == kept.tokens)   // only the text differs
        let markerCount = kept.tokens.filter { Self.markerIDs.contains($0) }.count
        #expect(markerCount > 0, "the model generated no image marker: \(kept.tokens)")
        for marker in Self.markers { #expect(!skipped.result.text.contains(marker), "\(skipped.result.text.debugDescription)") }
        #expect(skipped.streamed == skipped.result.text)
        #expect(Self.markers.reduce(0) { $0 + kept.result.text.components(separatedBy: $1).count - 1 } == markerCount,
                "\(kept.result.text.debugDescription)")
        let stripped = Self.markers.reduce(kept.result.text) { $0.replacingOccurrences(of: $1, with: "") }
        #expect(stripped == skipped.result.text)
    }
}

private actor TokenCollector {
    var tokens: [Int] = []
    var text = ""
    func add(_ token: GeneratedToken) {
        tokens.append(token.token)
        text += token.text
    }
}
