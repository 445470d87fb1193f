import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantTestSupport
import Testing

@Suite("Connection lifecycle: id reuse, disconnects")
struct ConnectionLifecycleTests {
    @Test("an id is free again as soon as its reply was read: 30 × (streamed generate id 9, then health id 9)",
          arguments: [false, true])
    func idReuseAfterStreamedGenerate(busy: Bool) async throws {
        let daemon = try TestDaemon(tag: "reuse")
        try await daemon.start()
        _ = try await daemon.loadModel()
        let socket = daemon.socketPath
        // Other clients keep the daemon's tasks busy (the race is between the reply and the id's release).
        let stop = CancelToken()
        let noise = (0..<(busy ? 3 : 0)).map { _ in
            Task {
                try await offPool {
                    let client = try ControlClient(socketPath: socket, timeout: 120)
                    while !stop.isSet { _ = try client.call(.stats, EmptyParams(), as: StatsResult.self) }
                }
            }
        }
        defer { stop.set() }
        let refusals = try await offPool { () -> [String] in
            let client = try ControlClient(socketPath: socket, timeout: 120)
            var refusals: [String] = []
            for round in 0..<30 {
                let result = try client.call(.generate, GenerateParams(prompt: "ab\(round)", maxTokens: 8, stream: true),
                                             as: GenerateResult.self, id: .number(9))
                #expect(result.text == "ab\(round)")
                do {
                    let health = try client.call(.health, EmptyParams(), as: HealthResult.self, id: .number(9))
                    #expect(health.modelLoaded)
                } catch let error as RPCErrorObject {
                    refusals.append("round \(round): \(error.message)")
                }
            }
            return refusals
        }
        #expect(refusals.isEmpty, "\(refusals)")
        stop.set()
        for task in noise { try await task.value }
        try await daemon.stop()
    }

    @Test("a client that disconnects mid-generate (not streaming) has its request cancelled: running 0 soon after")
    func disconnectCancels() async throws {
        // 100 tokens × 50 ms = 5 s if it ran to the end (fake max_model_len is 256).
        let daemon = try TestDaemon(tag: "disc", decodeDelay: 0.05)
        try await daemon.start()
        _ = try await daemon.loadModel()
        let socket = daemon.socketPath
        let prompt = String(repeating: "y", count: 100)
        try await offPool {
            let client = try ControlClient(socketPath: socket, timeout: 120)
            try client.send(try RPCRequest(id: .number(1), method: .generate,
                                           params: GenerateParams(prompt: prompt, maxTokens: 150)))
            let observer = try ControlClient(socketPath: socket, timeout: 120)
            var running = 0
            for _ in 0..<200 {
                running = try observer.call(.stats, EmptyParams(), as: StatsResult.self).engine.requestsRunning
                if running == 1 { break }
                Thread.sleep(forTimeInterval: 0.01)
            }
            #expect(running == 1)
            client.close()
        }
        let closed = ContinuousClock.now
        var stats: StatsResult?
        for _ in 0..<100 {
            stats = try await offPool { try ControlClient(socketPath: socket, timeout: 120).call(.stats, EmptyParams(), as: StatsResult.self) }
            if stats?.engine.requestsRunning == 0 { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(stats?.engine.requestsRunning == 0)
        // Cut short, not run to max_tokens (a wall-clock bound would be flaky on a loaded machine).
        #expect((stats?.engine.generatedTokens ?? 150) < 150)
        _ = closed
        #expect(stats?.kvCache["used_blocks"] == .int(0))
        try await daemon.stop()
    }
}

final class CancelToken: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    func set() { lock.lock(); value = true; lock.unlock() }
}

/// The count logged as "connection closed by the client; cancelled its running requests": a request whose
/// work is done and whose reply is being written when the close is seen (a client that read the reply and
/// closed at once) was not cancelled; one whose work still runs was.
@Suite("connection close: only requests still running count as cancelled")
struct ConnectionCloseCountTests {
    @Test("a request writing its reply when the client closes is not counted; one still working is")
    func closeCountsOnlyRunningWork() async {
        let session = ConnectionSession()
        let (replyStarted, started) = AsyncStream<Void>.makeStream()
        let (gate, open) = AsyncStream<Void>.makeStream()
        // Work done at once; the reply write is held until the gate opens.
        let accepted = await session.start(id: .number(1), { RPCResponse(id: .number(1), result: .null) }, reply: { _ in
            started.yield()
            for await _ in gate { break }
        })
        #expect(accepted)
        var replies = replyStarted.makeAsyncIterator()
        _ = await replies.next()
        #expect(await session.connectionClosed() == 0)
        open.finish()
        await session.waitUntilIdle()

        // Work still running when the close is seen: cancelled and counted.
        let busy = ConnectionSession()
        _ = await busy.start(id: .number(2), {
            try? await Task.sleep(for: .seconds(3600))
            return RPCResponse(id: .number(2), result: .null)
        }, reply: { _ in })
        #expect(await busy.connectionClosed() == 1)
        await busy.waitUntilIdle()
        #expect(await busy.runningCount == 0)
    }
}

@Suite("calibrate checks its output up front")
struct CalibrateOutputTests {
    func calibrate(_ daemon: TestDaemon, output: String) async throws -> (RPCErrorObject?, Int) {
        let socket = daemon.socketPath
        return try await offPool { () -> (RPCErrorObject?, Int) in
            var progress = 0
            do {
                _ = try ControlClient(socketPath: socket, timeout: 120).call(
                    .calibrate, CalibrateParams(numTokens: 1024, output: output), as: CalibrateResult.self) { _ in progress += 1 }
                return (nil, progress)
            } catch let error as RPCErrorObject { return (error, progress) }
        }
    }

    @Test("output is an existing directory: invalid_argument 'is a directory', before any work")
    func outputIsDirectory() async throws {
        let daemon = try TestDaemon(tag: "calo")
        try await daemon.start()
        _ = try await daemon.loadModel()
        let dir = daemon.allowed + "/scales"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let (error, progress) = try await calibrate(daemon, output: dir)
        #expect(error?.reason == .invalidArgument)
        #expect(error?.message.contains("\(dir) is a directory") == true, "\(String(describing: error))")
        #expect(progress == 0)
        try await daemon.stop()
    }

    @Test("output directory not writable: permission_denied naming the directory, before any work")
    func outputDirectoryNotWritable() async throws {
        // Root may write anywhere except on a read-only file system: /proc/sys is one.
        let readOnly = "/proc/sys/kernel"
        let daemon = try TestDaemon(tag: "calw") { config, _ in
            if geteuid() == 0 { config.allowedDirs.append("/proc/sys") }
        }
        try await daemon.start()
        _ = try await daemon.loadModel()
        let dir: String
        if geteuid() == 0 {
            try #require(access(readOnly, W_OK) != 0, "\(readOnly) is writable here")
            dir = readOnly
        } else {
            dir = daemon.allowed + "/ro"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            chmod(dir, 0o555)
        }
        let (error, progress) = try await calibrate(daemon, output: dir + "/kv_cache_scales.json")
        #expect(error?.reason == .permissionDenied)
        #expect(error?.message.contains("directory \(dir) is not writable") == true, "\(String(describing: error))")
        #expect(progress == 0)
        try await daemon.stop()
    }

    @Test("after SIGTERM an idle connection answers unavailable while another connection's generate drains")
    func idleConnectionAnswersDuringDrain() async throws {
        // The grace is far longer than needed: the test waits for events, the long grace never slows it.
        let daemon = try TestDaemon(tag: "drain", decodeDelay: 0.03) { config, _ in config.shutdownTimeoutSeconds = 600 }
        try await daemon.start()
        _ = try await daemon.loadModel()
        let socket = daemon.socketPath
        let idle = try daemon.client()   // connected before the signal, then idle
        let prompt = String(repeating: "x", count: 100)   // 100 echo steps of 30 ms: the drain lasts seconds
        let (started, startedContinuation) = AsyncStream<Void>.makeStream()
        let generation = Task {
            try await offPool {
                try ControlClient(socketPath: socket, timeout: 120).call(
                    .generate, GenerateParams(prompt: prompt, maxTokens: 150, stream: true), as: GenerateResult.self) { _ in
                    startedContinuation.yield()
                }
            }
        }
        for await _ in started { break }
        let stopping = Task { try await daemon.stop() }
        // Ask on the idle connection until the daemon says it is shutting down (an error reply); a
        // dropped connection ("closed the connection", EPIPE: a KvantError) is the defect guarded against.
        var refusal: RPCErrorObject?
        var dropped: KvantError?
        for _ in 0..<100_000 {
            do {
                _ = try await offPool { try idle.call(.health, EmptyParams(), as: HealthResult.self) }
            } catch let e as RPCErrorObject {
                refusal = e
                break
            } catch let e as KvantError {
                dropped = e
                break
            }
        }
        #expect(dropped == nil, "\(String(describing: dropped))")
        #expect(refusal?.reason == .unavailable)
        #expect(refusal?.message == "kvantd is shutting down", "\(String(describing: refusal))")
        let result = try await generation.value
        #expect(result.text == prompt)
        #expect(result.finishReason == .stop)
        try await stopping.value
    }
}
