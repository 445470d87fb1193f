import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantTestSupport
import Testing

/// Binds a Unix datagram socket (what systemd's NOTIFY_SOCKET is) and collects every datagram.
final class NotifyReceiver: @unchecked Sendable {
    let path: String
    private let fd: Int32
    private let lock = NSLock()
    private var received: [String] = []
    private var open = true

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw KvantError(.internal, "socket(AF_UNIX, SOCK_DGRAM) failed") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else { throw KvantError(.internal, "bind \(path) failed") }
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while isOpen {
                let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
                if count > 0 {
                    let text = String(decoding: buffer[0..<count], as: UTF8.self)
                    lock.lock(); received.append(text); lock.unlock()
                }
            }
            close(fd)
        }.start()
    }

    private var isOpen: Bool { lock.lock(); defer { lock.unlock() }; return open }

    var datagrams: [String] { lock.lock(); defer { lock.unlock() }; return received }

    /// Waits until a datagram satisfies `predicate` (polling, up to 5 s).
    func wait(for predicate: (String) -> Bool) async throws -> String? {
        for _ in 0..<500 {
            if let match = datagrams.first(where: predicate) { return match }
            try await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    func stop() {
        lock.lock(); open = false; lock.unlock()
    }
}

@Suite("systemd notifications (NOTIFY_SOCKET)", .serialized)
struct SystemdNotifyTests {
    @Test("READY after the start-up model, WATCHDOG, RELOADING + MONOTONIC_USEC, failed reload in STATUS, STOPPING")
    func notifySequence() async throws {
        let dir = try makeTempDir("notify")
        let receiver = try NotifyReceiver(path: dir + "/notify.sock")
        setenv("NOTIFY_SOCKET", receiver.path, 1)
        setenv("WATCHDOG_USEC", "200000", 1)
        defer {
            unsetenv("NOTIFY_SOCKET")
            unsetenv("WATCHDOG_USEC")
            receiver.stop()
            try? FileManager.default.removeItem(atPath: dir)
        }
        var scalesPath = ""
        var modelPath = ""
        let daemon = try TestDaemon(tag: "ntf", notifier: SystemdNotifier(enabled: true)) { config, allowed in
            modelPath = allowed + "/model.gguf"
            scalesPath = allowed + "/scales.json"
            try? "GGUF".write(toFile: modelPath, atomically: true, encoding: .utf8)
            try? #"{"layers": 2, "scales": [0.5, 0.25]}"#.write(toFile: scalesPath, atomically: true, encoding: .utf8)
            config.model = modelPath
            config.kvCacheDType = .int8PerTensor
            config.quantizationParamPath = scalesPath
        }
        try await daemon.start()

        let ready = try await receiver.wait { $0.hasPrefix("READY=1") }
        #expect(ready == "READY=1\nSTATUS=serving fake-echo kv_cache_dtype=int8_pertensor kv_cache=0.0% running=0 waiting=0")
        // Before READY: the start-up load extended the start timeout.
        let beforeReady = receiver.datagrams.prefix { !$0.hasPrefix("READY=1") }
        #expect(beforeReady.first == "EXTEND_TIMEOUT_USEC=90000000\nSTATUS=loading model \(modelPath)")
        #expect(beforeReady.contains("EXTEND_TIMEOUT_USEC=90000000\nSTATUS=loading model: reading \(modelPath)"))
        #expect(daemon.backend.loads.first?.quantizationParamPath == scalesPath)

        // Watchdog at half of WATCHDOG_USEC (100 ms).
        let watchdog = try await receiver.wait { $0 == "WATCHDOG=1" }
        #expect(watchdog != nil)

        // Reload (what SIGHUP triggers): RELOADING=1 with CLOCK_MONOTONIC µs, then READY=1.
        let before = SystemdNotifier.monotonicMicroseconds()
        daemon.reloads.yield()
        let reloading = try #require(try await receiver.wait { $0.hasPrefix("RELOADING=1") })
        let after = SystemdNotifier.monotonicMicroseconds()
        let lines = reloading.split(separator: "\n").map(String.init)
        #expect(lines.count == 3)
        #expect(lines.last == "STATUS=reloading scales")
        let usec = try #require(lines.count > 1 && lines[1].hasPrefix("MONOTONIC_USEC=") ? UInt64(lines[1].dropFirst(15)) : nil)
        #expect(usec >= before && usec <= after)
        let reloaded = try await receiver.wait { $0.hasPrefix("READY=1") && $0.contains("reloaded scales epoch 2") }
        #expect(reloaded != nil)

        // A broken scale file: the reload fails, READY=1 again, STATUS says so, old scales stay.
        try #"{"layers": 2}"#.write(toFile: scalesPath, atomically: true, encoding: .utf8)
        daemon.reloads.yield()
        let failed = try await receiver.wait { $0.hasPrefix("READY=1") && $0.contains("reload failed") }
        let failedText = try #require(failed)
        #expect(failedText.contains("serving with previous scales"))
        #expect(failedText.contains("'scales'"))
        #expect(receiver.datagrams.filter { $0.hasPrefix("RELOADING=1") }.count == 2)
        let shown = try await offPool { [socket = daemon.socketPath] in
            try ControlClient(socketPath: socket, timeout: 120).call(.scalesShow, EmptyParams(), as: ScalesShowResult.self)
        }
        #expect(shown.scales?.epoch == 2)

        try await daemon.stop()
        let stopping = try await receiver.wait { $0.hasPrefix("STOPPING=1") }
        #expect(stopping == "STOPPING=1\nSTATUS=stopping: draining requests")
        // Every datagram is one of the documented kinds.
        for datagram in receiver.datagrams {
            let key = datagram.split(separator: "=").first.map(String.init) ?? ""
            #expect(["READY", "STATUS", "RELOADING", "WATCHDOG", "STOPPING", "EXTEND_TIMEOUT_USEC"].contains(key), "\(datagram)")
        }
    }

    @Test("a disabled notifier sends nothing and reports no watchdog")
    func disabledNotifier() {
        #expect(SystemdNotifier.disabled.notify("READY=1") == false)
        #expect(SystemdNotifier.disabled.watchdogTimeoutMicroseconds() == nil)
    }
}
