import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantTestSupport
import Logging
import Testing

/// Parallel sampling on the fake backend (on-demand slots, as the executor's blocks): the `n` choices of one
/// request share one prefill (one sequence's chunks in the event log), the others are forked from it by its last
/// chunk; a choice cancelled before the fork is not forked; when choice 0 is cancelled during its prefill, the
/// others are prefilled on their own; slots and sequences all come back.
@Suite("Scheduler: parallel sampling forks one prefill (FakeBackend)")
struct ParallelSamplingTests {
    func makeEngine(_ backend: FakeBackend, maxNumSeqs: Int = 4) async throws -> (Engine, FakeModel) {
        let dir = try makeTempDir("fork")
        let path = dir + "/fake.gguf"
        #expect(FileManager.default.createFile(atPath: path, contents: Data("fake".utf8)))
        let engine = Engine(backend: backend,
                            settings: .init(maxModelLen: 4096, maxNumSeqs: maxNumSeqs, maxNumBatchedTokens: 64),
                            logger: Logger(label: "test"))
        _ = try await engine.loadModel(path: path, kvCacheDType: nil, quantizationParamPath: nil, kvCacheBytes: nil, maxModelLen: nil)
        return (engine, try #require(backend.lastLoadedModel))
    }

    static func choices(_ tokens: [Int], n: Int, maxTokens: Int) -> [GenerateParams] {
        (0..<n).map { i in
            var p = GenerateParams(prompt: "", maxTokens: maxTokens, temperature: 0.5, seed: 9 + UInt64(i))
            p.promptTokenIDs = tokens
            p.ignoreEOS = true
            return p
        }
    }

    /// Prefill chunks in the event log: (sequence, tokens).
    static func chunks(_ model: FakeModel) -> [(Int, Int)] {
        model.events.compactMap { if case .prefill(let s, let t, _) = $0 { return (s, t) } else { return nil } }
    }

    @Test("n=3: the prompt is prefilled once (150 tokens in chunks of 64), every choice decodes its own tokens")
    func prefilledOnce() async throws {
        let (engine, model) = try await makeEngine(FakeBackend(tokenCapacity: 1000, onDemandBlocks: true))
        let prompt = (0..<150).map { 65 + $0 % 26 }
        let group = ParallelSampling(choices: Self.choices(prompt, n: 3, maxTokens: 5))
        let results = try await withThrowingTaskGroup(of: (Int, GenerateResult).self) { tasks in
            for i in 0..<3 { tasks.addTask { (i, try await engine.generate(choice: i, of: group) { _ in }) } }
            var out: [Int: GenerateResult] = [:]
            for try await (i, r) in tasks { out[i] = r }
            return out
        }
        let chunks = Self.chunks(model)
        #expect(chunks.map(\.1) == [64, 64, 22], "chunks \(chunks)")
        #expect(Set(chunks.map(\.0)).count == 1, "one sequence prefilled: \(chunks)")
        #expect(await engine.prefillWork.tokens == 150)
        for i in 0..<3 {
            // The fake echoes the prompt: every choice's 5 tokens are the prompt's first 5.
            #expect(results[i]?.tokens == Array(prompt.prefix(5)), "choice \(i)")
            #expect(results[i]?.finishReason == .length)
        }
        // Three sequences decoded (each 4 decode steps after its first token).
        let decodes = Dictionary(grouping: model.events.compactMap { if case .decode(let s) = $0 { return s } else { return nil } }) { $0 }
        #expect(decodes.count == 3 && decodes.values.allSatisfy { $0.count == 4 }, "\(decodes)")
        #expect(model.misuses.isEmpty, "\(model.misuses)")
        #expect(model.sequencesLive == 0 && model.slotsUsed == 0)
        let f = await engine.figures()
        #expect(f.requestsRunning == 0 && f.requestsWaiting == 0 && f.requestsServed == 3)
    }

    @Test("a choice cancelled while it waits is not forked; choice 0 cancelled during its prefill: the others prefill on their own")
    func cancellation() async throws {
        let gate = PrefillGate(minPromptLength: 100)
        let (engine, model) = try await makeEngine(FakeBackend(tokenCapacity: 2000, onDemandBlocks: true, prefillGate: gate))
        let prompt = (0..<150).map { 65 + $0 % 26 }
        let group = ParallelSampling(choices: Self.choices(prompt, n: 4, maxTokens: 3))
        let leader = Task { try await engine.generate(choice: 0, of: group) { _ in } }
        let one = Task { try await engine.generate(choice: 1, of: group) { _ in } }
        let two = Task { try await engine.generate(choice: 2, of: group) { _ in } }
        let three = Task { try await engine.generate(choice: 3, of: group) { _ in } }
        try await waitUntil("choice 0's first chunk is at the gate") { gate.waiting == 1 }
        // Choice 1 is cancelled while it waits for the fork, then choice 0 during its prefill. (Their releases run on
        // the compute lane, which the gated chunk holds: the gate opens before their results are awaited.)
        one.cancel()
        leader.cancel()
        gate.open()
        let r1 = try await one.value
        #expect(r1.finishReason == .cancelled && r1.tokens.isEmpty)
        let r0 = try await leader.value
        #expect(r0.finishReason == .cancelled && r0.tokens.isEmpty)
        let (r2, r3) = (try await two.value, try await three.value)
        #expect(r2.tokens == Array(prompt.prefix(3)) && r3.tokens == Array(prompt.prefix(3)))
        // Choices 2 and 3 were each prefilled on their own (from the start: the fake has no prefix cache).
        let bySequence = Dictionary(grouping: Self.chunks(model), by: \.0).mapValues { $0.map(\.1).reduce(0, +) }
        #expect(bySequence.values.filter { $0 == 150 }.count == 2, "\(bySequence)")
        #expect(model.misuses.isEmpty, "\(model.misuses)")
        #expect(model.sequencesLive == 0 && model.slotsUsed == 0)
        let f = await engine.figures()
        #expect(f.requestsRunning == 0 && f.requestsWaiting == 0)
    }

    @Test("two n=3 requests on 4 slots: each takes its 3 slots at once (no deadlock), the second waits for the first")
    func slotsTakenTogether() async throws {
        let (engine, model) = try await makeEngine(FakeBackend(tokenCapacity: 2000, onDemandBlocks: true), maxNumSeqs: 4)
        let prompt = Array(repeating: 66, count: 40)
        let a = ParallelSampling(choices: Self.choices(prompt, n: 3, maxTokens: 4))
        let b = ParallelSampling(choices: Self.choices(prompt, n: 3, maxTokens: 4))
        let all = try await withThrowingTaskGroup(of: GenerateResult.self) { tasks in
            for i in 0..<3 {
                tasks.addTask { try await engine.generate(choice: i, of: b) { _ in } }
                tasks.addTask { try await engine.generate(choice: i, of: a) { _ in } }
            }
            var out: [GenerateResult] = []
            for try await r in tasks { out.append(r) }
            return out
        }
        #expect(all.count == 6 && all.allSatisfy { $0.tokens == Array(prompt.prefix(4)) })
        #expect(Set(Self.chunks(model).map(\.0)).count == 2, "two prefills, one per request")
        #expect(model.peakSequences <= 4)
        #expect(model.misuses.isEmpty && model.sequencesLive == 0 && model.slotsUsed == 0)
    }
}
