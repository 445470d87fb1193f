import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantTestSupport
import Logging
import Testing

/// Admission control: a generate reserves KV blocks for prompt + max_tokens up front; when they are
/// not free it waits (back-pressure) instead of failing, and only a request larger than the whole
/// cache is refused.
@Suite("KV admission control (FakeBackend with 40 token slots)")
struct AdmissionTests {
    @Test("6 concurrent generates of 20 tokens each on 40 slots: all complete, some waited, none failed")
    func moreThanFitAllComplete() async throws {
        let daemon = try TestDaemon(tag: "adm", decodeDelay: 0.005, tokenCapacity: 40) { config, _ in config.maxNumSeqs = 6 }
        try await daemon.start()
        _ = try await daemon.loadModel()
        let socket = daemon.socketPath
        // Each: 10 prompt tokens + max_tokens 10 = 20 slots; at most 2 fit at once.
        let prompts = (0..<6).map { "req\($0)-" + String(repeating: Character(UnicodeScalar(97 + $0)!), count: 5) }
        let results = Array(zip(prompts, try await daemon.generateConcurrently(prompts.map { GenerateParams(prompt: $0, maxTokens: 10) })))
        #expect(results.count == 6)
        for (prompt, result) in results {
            #expect(result.text == prompt)
            #expect(result.finishReason == .length)
        }
        // 11 steps × 5 ms ≥ 55 ms per generation; with 2 at a time the later ones queued for a while.
        let queued = results.map(\.1.timings.queueMs).sorted()
        #expect(queued.last! > 40, "queue_ms \(queued)")
        #expect(daemon.backend.peakSequencesOfLastModel == 2)
        let stats = try await offPool { try ControlClient(socketPath: socket, timeout: 120).call(.stats, EmptyParams(), as: StatsResult.self) }
        #expect(stats.engine.requestsFailed == 0)
        #expect(stats.engine.requestsServed == 6)
        #expect(stats.engine.requestsRunning == 0 && stats.engine.requestsWaiting == 0)
        try await daemon.stop()
    }

    @Test("a request larger than the whole cache fails at once with resource_exhausted naming the capacity")
    func largerThanCapacityFails() async throws {
        let daemon = try TestDaemon(tag: "adm2", decodeDelay: 0.005, tokenCapacity: 40)
        try await daemon.start()
        _ = try await daemon.loadModel()
        let socket = daemon.socketPath
        // Nothing else runs, so a request that waited instead of failing would never be answered
        // within the client's timeout: the resource_exhausted reply itself shows it failed at once.
        let error = try await offPool { () -> RPCErrorObject? in
            do {
                _ = try ControlClient(socketPath: socket, timeout: 120).call(
                    .generate, GenerateParams(prompt: String(repeating: "z", count: 30), maxTokens: 20), as: GenerateResult.self)
                return nil
            } catch let error as RPCErrorObject { return error }
        }
        #expect(error?.reason == .resourceExhausted)
        #expect(error?.code == RPCErrorCode.resourceExhausted)
        #expect(error?.message.contains("50 tokens needed, capacity 40") == true, "\(String(describing: error))")
        try await daemon.stop()
    }

    @Test("a waiting request cancelled by its client ends with finish_reason cancelled; the queue moves on")
    func cancelWhileWaiting() async throws {
        // The long generate (15 tokens at 200 ms) holds 30 slots; the second (20 slots) waits, then is cancelled.
        let daemon = try TestDaemon(tag: "adm3", decodeDelay: 0.2, tokenCapacity: 40)
        try await daemon.start()
        _ = try await daemon.loadModel()
        let socket = daemon.socketPath
        let long = Task {
            try await offPool {
                try ControlClient(socketPath: socket, timeout: 120).call(
                    .generate, GenerateParams(prompt: String(repeating: "l", count: 15), maxTokens: 15), as: GenerateResult.self)
            }
        }
        try await waitUntil("the long generate runs") { try await daemon.stats().engine.requestsRunning == 1 }
        let waited = try await offPool { () -> (GenerateResult, Int) in
            let client = try ControlClient(socketPath: socket, timeout: 120)
            let observer = try ControlClient(socketPath: socket, timeout: 120)
            try client.send(try RPCRequest(id: .number(5), method: .generate,
                                           params: GenerateParams(prompt: "0123456789", maxTokens: 10)))
            var waiting = 0
            for _ in 0..<24_000 {   // an event: the request queued; the bound only ends a failing test
                waiting = try observer.call(.stats, EmptyParams(), as: StatsResult.self).engine.requestsWaiting
                if waiting == 1 { break }
                Thread.sleep(forTimeInterval: 0.005)
            }
            try client.sendCancel(of: .number(5))
            while true {
                if case .response(let response) = try client.readMessage(), response.id == .number(5) {
                    return (try response.decodeResult(GenerateResult.self), waiting)
                }
            }
        }
        #expect(waited.1 == 1)
        #expect(waited.0.finishReason == .cancelled)
        #expect(waited.0.completionTokens == 0)
        let longResult = try await long.value
        #expect(longResult.text == String(repeating: "l", count: 15))
        try await daemon.stop()
    }
}

@Suite("Slot queue (max_num_seqs) and cancellation")
struct SlotQueueTests {
    @Test("a request waiting for a sequence slot that is cancelled replies at once with finish_reason cancelled")
    func cancelWhileWaitingForSlot() async throws {
        let dir = try makeTempDir("slot")
        let model = dir + "/m.gguf"
        _ = FileManager.default.createFile(atPath: model, contents: Data("GGUF".utf8))
        let engine = Engine(backend: FakeBackend(decodeDelay: 0.05),
                            settings: .init(kvCacheBytes: 1 << 20, maxNumSeqs: 1), logger: Logger(label: "test"))
        _ = try await engine.loadModel(path: model, kvCacheDType: nil, quantizationParamPath: nil, kvCacheBytes: nil, maxModelLen: nil)
        // A: 100 echo tokens at 50 ms each holds the only slot for ~5 s.
        let first = Task { try await engine.generate(GenerateParams(prompt: String(repeating: "a", count: 100), maxTokens: 100)) { _ in } }
        while await engine.figures().requestsRunning < 1 { try await Task.sleep(for: .milliseconds(5)) }
        let second = Task { try await engine.generate(GenerateParams(prompt: "b", maxTokens: 5)) { _ in } }
        while await engine.figures().requestsWaiting < 1 { try await Task.sleep(for: .milliseconds(5)) }
        second.cancel()
        let cancelled = try await second.value
        #expect(cancelled.finishReason == .cancelled && cancelled.completionTokens == 0)
        // The queue is empty again and the first request is still generating: B did not wait for A's slot.
        let figures = await engine.figures()
        #expect(figures.requestsWaiting == 0 && figures.requestsRunning == 1)
        first.cancel()
        _ = try await first.value
        try? FileManager.default.removeItem(atPath: dir)
    }
}
