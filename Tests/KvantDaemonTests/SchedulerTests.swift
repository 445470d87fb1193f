import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantTestSupport
import Logging
import Testing

/// The scheduler's steps on the fake backend: a long prompt is prefilled in chunks of the step's token
/// budget (`max_num_batched_tokens`) while running sequences keep decoding, one token per step; a request
/// cancelled during its prefill is released between two chunks. Every wait is on an event (the fake's
/// event log, its prefill gate, token counts), never on time.
@Suite("Scheduler: chunked prefill between decode steps (FakeBackend)")
struct SchedulerTests {
    func makeEngine(_ backend: FakeBackend, maxNumBatchedTokens: Int) async throws -> (Engine, FakeModel) {
        let dir = try makeTempDir("sched")
        let path = dir + "/fake.gguf"
        #expect(FileManager.default.createFile(atPath: path, contents: Data("fake".utf8)))
        let engine = Engine(backend: backend,
                            settings: .init(maxModelLen: 4096, maxNumSeqs: 4, maxNumBatchedTokens: maxNumBatchedTokens),
                            logger: Logger(label: "test"))
        _ = try await engine.loadModel(path: path, kvCacheDType: nil, quantizationParamPath: nil, kvCacheBytes: nil, maxModelLen: nil)
        return (engine, try #require(backend.lastLoadedModel))
    }

    /// Waits (polling, no deadline of its own but a 120 s guard that only ends a failing test) until `condition`.
    static func params(_ tokens: [Int], maxTokens: Int, ignoreEOS: Bool = false) -> GenerateParams {
        var p = GenerateParams(prompt: "", maxTokens: maxTokens, temperature: 0)
        p.promptTokenIDs = tokens
        p.ignoreEOS = ignoreEOS
        return p
    }

    @Test("a 1000-token prompt admitted beside a running stream: chunks of the budget left after the decode row, one decode of the stream before every chunk")
    func chunksInterleaveWithDecodeSteps() async throws {
        let gate = PrefillGate(minPromptLength: 500)
        let (engine, model) = try await makeEngine(FakeBackend(prefillGate: gate), maxNumBatchedTokens: 64)
        // A: a running stream. Its client takes the first token and then stalls until released, so the scheduler
        // decodes A ahead of it only up to its lookahead; it then has no decode step to run.
        let received = Counter()
        let stalled = Latch()
        let a = Task {
            try await engine.generate(Self.params([97], maxTokens: 200, ignoreEOS: true)) { _ in
                if received.increment() == 1 { await stalled.wait() }
            }
        }
        func decodes(_ seq: Int) -> Int { model.events.filter { $0 == .decode(sequence: seq) }.count }
        // The scheduler decodes a running sequence at most 32 tokens ahead of its client (its lookahead).
        let lookahead = 32
        try await waitUntil("A was decoded \(lookahead) tokens ahead of its stalled client") { decodes(1) == lookahead && received.value == 1 }
        // B: a 1000-token prompt. Its first chunk holds the compute lane at the gate.
        let b = Task { try await engine.generate(Self.params(Array(repeating: 120, count: 1000), maxTokens: 1)) { _ in } }
        try await waitUntil("B's first chunk is at the gate") { gate.waiting == 1 }
        // A's client takes everything decoded so far; A now waits for the next step's token.
        await stalled.open()
        try await waitUntil("A's client took every token decoded ahead") { received.value == 1 + lookahead }
        gate.open()
        let bResult = try await b.value
        let aResult = try await a.value

        #expect(bResult.tokens == [120] && bResult.finishReason == .length)
        #expect(aResult.tokens == [97] + Array(repeating: 46, count: 199))
        let events = model.events
        let chunks = events.compactMap { event -> (tokens: Int, last: Bool)? in
            if case .prefill(2, let tokens, let last) = event { return (tokens, last) } else { return nil }
        }
        // The first chunk had the whole budget (A had no decode step then); every later one the budget minus
        // A's decode row: 64 + 14 × 63 + 54 = 1000.
        #expect(chunks.map(\.tokens) == [64] + Array(repeating: 63, count: 14) + [54])
        #expect(chunks.map(\.last) == Array(repeating: false, count: 15) + [true])
        // From B's first chunk to its last, the steps alternate: A's decode, then B's chunk.
        let first = try #require(events.firstIndex(of: .prefill(sequence: 2, tokens: 64, last: false)))
        let last = try #require(events.firstIndex(of: .prefill(sequence: 2, tokens: 54, last: true)))
        let between = Array(events[(first + 1)...last])
        let expected = (0..<15).flatMap { i -> [FakeModel.Event] in
            [.decode(sequence: 1), .prefill(sequence: 2, tokens: i == 14 ? 54 : 63, last: i == 14)]
        }
        #expect(between == expected)
        #expect(model.misuses.isEmpty, "\(model.misuses)")
        #expect(model.sequencesLive == 0)
    }

    @Test("a request cancelled during its prefill is released between two chunks; no later chunk runs and the engine serves on")
    func cancelBetweenChunks() async throws {
        let gate = PrefillGate(minPromptLength: 500)
        let (engine, model) = try await makeEngine(FakeBackend(prefillGate: gate), maxNumBatchedTokens: 64)
        let b = Task { try await engine.generate(Self.params(Array(repeating: 120, count: 1000), maxTokens: 8)) { _ in } }
        try await waitUntil("B's first chunk is at the gate") { gate.waiting == 1 }
        gate.give(1)
        try await waitUntil("B's second chunk is at the gate") { gate.passed == 1 && gate.waiting == 1 }
        #expect(model.sequencesLive == 1)
        b.cancel()   // a client disconnect or Ctrl-C
        gate.open()  // the chunk running now completes; no other runs
        let result = try await b.value
        #expect(result.finishReason == .cancelled)
        #expect(result.tokens.isEmpty && result.completionTokens == 0)
        #expect(model.sequencesLive == 0, "the cancelled sequence's KV blocks are free once generate returned")
        let chunks = model.events.filter { if case .prefill(1, _, _) = $0 { return true } else { return false } }
        #expect(chunks == [.prefill(sequence: 1, tokens: 64, last: false), .prefill(sequence: 1, tokens: 64, last: false)])
        let figures = await engine.figures()
        #expect(figures.requestsRunning == 0 && figures.requestsWaiting == 0)
        // The engine serves the next request as usual.
        let next = try await engine.generate(Self.params([104, 105], maxTokens: 4)) { _ in }
        #expect(next.tokens == [104, 105] && next.finishReason == .stop)
        #expect(model.misuses.isEmpty, "\(model.misuses)")
        #expect(model.sequencesLive == 0)
    }

    @Test("without chunking (a budget above the prompt) the prompt is one chunk; outputs are the same")
    func oneChunkWhenTheBudgetHoldsThePrompt() async throws {
        let (engine, model) = try await makeEngine(FakeBackend(), maxNumBatchedTokens: 2048)
        let result = try await engine.generate(Self.params(Array(repeating: 120, count: 1000), maxTokens: 3)) { _ in }
        #expect(result.tokens == [120, 120, 120])
        #expect(model.events.first == .prefill(sequence: 1, tokens: 1000, last: true))
        let (chunked, chunkedModel) = try await makeEngine(FakeBackend(), maxNumBatchedTokens: 100)
        let again = try await chunked.generate(Self.params(Array(repeating: 120, count: 1000), maxTokens: 3)) { _ in }
        #expect(again.tokens == result.tokens && again.text == result.text)
        #expect(chunkedModel.events.filter { if case .prefill = $0 { return true } else { return false } }.count == 10)
    }
}

/// A thread-safe counter.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var value: Int { lock.withLock { count } }
    func increment() -> Int { lock.withLock { count += 1; return count } }
}

/// Suspends tasks until opened.
actor Latch {
    private var opened = false
    private var waiters: [CheckedContinuation<Void, Never>] = []
    func wait() async {
        if opened { return }
        await withCheckedContinuation { waiters.append($0) }
    }
    func open() {
        opened = true
        for w in waiters { w.resume() }
        waiters = []
    }
}
