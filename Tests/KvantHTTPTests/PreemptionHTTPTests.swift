import ControlProtocol
import Foundation
import KvantDaemon
import KvantTestSupport
import Testing

/// On-demand KV blocks with preemption through the whole daemon (FakeBackend with 40 on-demand token slots):
/// more concurrent requests than fit at once all complete with their exact text, the preemptions show in
/// `stats` and `/metrics` alike.
@Suite("Preemption (FakeBackend, 40 on-demand slots)")
struct PreemptionHTTPTests {
    @Test("6 concurrent completions of 8 + 20 tokens on 40 slots: all complete exactly, some were preempted and recomputed")
    func moreThanFitAllComplete() async throws {
        // Admission runs on the compute thread between steps, one request at a time, so how many sequences
        // overlap depends on how fast the request tasks reach the engine: on a loaded machine the first one
        // could finish before the second is admitted. Each fake decode row therefore sleeps 20 ms (the compute
        // thread gives the CPU away meanwhile), so a sequence lives ~0.4 s; two that overlap need 2 x 29 slots
        // of 40 and one is preempted. A round of six requests is repeated (at most 5 rounds) until one
        // preempted; every round's texts must be exact.
        let backend = FakeBackend(decodeDelay: 0.02, tokenCapacity: 40, onDemandBlocks: true)
        let d = try TestHTTPDaemon(tag: "preempt", backend: backend) { config, _ in config.maxNumSeqs = 6 }
        try await d.start()
        try await d.loadModel()
        let prompts = (0..<6).map { "p\($0)" + String(repeating: Character(UnicodeScalar(97 + $0)!), count: 6) }
        var rounds = 0
        var preemptions = 0
        repeat {
            rounds += 1
            let responses = try await withThrowingTaskGroup(of: (Int, HTTPTestResponse).self) { group in
                for (i, prompt) in prompts.enumerated() {
                    group.addTask {
                        (i, try await d.request("POST", "/v1/completions",
                                                json: #"{"prompt":"\#(prompt)","max_tokens":20,"ignore_eos":true,"temperature":0}"#))
                    }
                }
                var all = [HTTPTestResponse?](repeating: nil, count: prompts.count)
                for try await (i, r) in group { all[i] = r }
                return all.map { $0! }
            }
            for (prompt, r) in zip(prompts, responses) {
                #expect(r.status == 200, "\(r.text)")
                let choice = (r.json["choices"] as? [[String: Any]])?.first
                // The echo: the prompt's 8 bytes, then "." (ignore_eos): nothing repeated, nothing lost.
                #expect(choice?["text"] as? String == prompt + String(repeating: ".", count: 12), "\(r.text)")
                #expect(choice?["finish_reason"] as? String == "length")
            }
            preemptions = try await d.stats().engine.numPreemptions
        } while rounds < 5 && preemptions == 0
        let model = try #require(backend.lastLoadedModel)
        #expect(model.misuses.isEmpty, "\(model.misuses)")
        #expect(model.slotsUsed == 0 && model.sequencesLive == 0)
        let events = model.events
        let preempted = Set(events.compactMap { if case .preempt(let s) = $0 { s } else { nil } })
        let recomputed = Set(events.compactMap { if case .recompute(let s, _) = $0 { s } else { nil } })
        #expect(!preempted.isEmpty && recomputed.isSubset(of: preempted), "preempted \(preempted), recomputed \(recomputed)")
        let stats = try await d.stats()
        // Every preemption is a `.preempt` event; a sequence whose generation had ended when its slots were taken
        // (its client had not taken its last tokens yet) is freed the same way but is not counted as preempted.
        let preemptEvents = events.filter { if case .preempt = $0 { true } else { false } }.count
        #expect(stats.engine.numPreemptions >= 1 && stats.engine.numPreemptions <= preemptEvents,
                "num_preemptions \(stats.engine.numPreemptions), preempt events \(preemptEvents)")
        #expect(stats.engine.requestsFailed == 0 && stats.engine.requestsServed == 6 * rounds)
        let metrics = try await d.request("GET", "/metrics").text
        let line = metrics.split(separator: "\n").first { $0.hasPrefix("kvant:num_preemptions_total ") }
        #expect(line.flatMap { Double($0.split(separator: " ")[1]) } == Double(stats.engine.numPreemptions), "\(metrics)")
        try await d.stop()
    }
}
