import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantTestSupport
import Testing

/// Requests that arrive while the start-up model loads (the client whose connection started kvantd
/// through socket activation, or one that connected before READY=1) wait for it; health and version
/// answer at once.
@Suite("start-up gate")
struct StartupGateTests {
    @Test("during the start-up load: health answers at once without the model, stats waits and sees the model")
    func requestsWaitForStartupModel() async throws {
        let daemon = try TestDaemon(tag: "gate", loadDelay: 1.5) { config, allowed in
            let model = allowed + "/model.gguf"
            try? "GGUF".write(toFile: model, atomically: true, encoding: .utf8)
            config.model = model
        }
        daemon.launch()
        // The socket listens before the model is loaded.
        let socket = daemon.socketPath
        var listening = false
        for _ in 0..<100 where !listening {
            listening = (try? ControlClient(socketPath: socket, timeout: 5)) != nil
            if !listening { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(listening)
        let started = Date()
        let health = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.health, EmptyParams(), as: HealthResult.self)
        }
        // Answered during the 1.5 s load (had it waited, the model would be loaded by now).
        #expect(health.modelLoaded == false)
        let stats = try await offPool {
            try ControlClient(socketPath: socket, timeout: 120).call(.stats, EmptyParams(), as: StatsResult.self)
        }
        #expect(stats.model?.path.hasSuffix("/model.gguf") == true)
        #expect(Date().timeIntervalSince(started) > 0.5)
        try await daemon.stop()
    }
}
