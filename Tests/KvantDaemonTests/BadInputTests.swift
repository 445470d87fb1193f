import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantTestSupport
import Testing

@Suite("Bad input gets an error reply and the daemon keeps serving")
struct BadInputTests {
    @Test("issue 11: a last request without a newline before a half-close is answered; 1e400 names the field and keeps the id")
    func lastLineAndHugeNumber() async throws {
        let daemon = try TestDaemon(tag: "lastline")
        try await daemon.start()
        let socket = daemon.socketPath
        let (huge, last) = try await offPool { () -> (RPCResponse, RPCResponse) in
            let client = try ControlClient(socketPath: socket, timeout: 120)
            let huge = try exchange(client, #"{"jsonrpc":"2.0","id":1,"method":"generate","params":{"prompt":"x","max_tokens":1e400}}"#)
            try client.sendRaw(Array(#"{"jsonrpc":"2.0","id":2,"method":"version"}"#.utf8))   // no newline
            client.finishWriting()
            guard case .response(let last) = try client.readMessage() else { throw KvantError(.internal, "expected a response") }
            return (huge, last)
        }
        #expect(huge.id == .number(1))
        #expect(huge.error?.code == RPCErrorCode.invalidParams)
        #expect(huge.error?.message.contains("'max_tokens' = 1e400 is out of range") == true, "\(String(describing: huge.error))")
        #expect(last.id == .number(2))
        #expect(last.result?["protocol_version"] == .int(controlProtocolVersion))
        try await daemon.stop()
    }

    @Test("over-long line, invalid JSON, unknown method, bad params: errors on one connection that keeps working")
    func badLinesOnOneConnection() async throws {
        let daemon = try TestDaemon(tag: "bad")
        try await daemon.start()
        let socket = daemon.socketPath
        let replies = try await offPool { () -> [RPCResponse] in
            let client = try ControlClient(socketPath: socket, timeout: 120)
            var replies: [RPCResponse] = []
            // 1 MiB + 1 byte of JSON-looking text without a newline, then the newline.
            var long = Array(#"{"jsonrpc":"2.0","id":1,"method":"tokenize","params":{"text":""#.utf8)
            long += [UInt8](repeating: UInt8(ascii: "a"), count: WireCodec.maxRequestLineBytes + 1)
            long += Array("\"}}\n".utf8)
            try client.sendRaw(long)
            if case .response(let response) = try client.readMessage() { replies.append(response) }
            replies.append(try exchange(client, #"{"jsonrpc":"2.0","id":2,"method":"version"}"#))
            replies.append(try exchange(client, #"{"jsonrpc":"2.0","id":3,"method":"version""#))          // truncated JSON
            replies.append(try exchange(client, #"{"jsonrpc":"2.0","id":4,"method":"launch-missiles"}"#))
            replies.append(try exchange(client, #"{"jsonrpc":"2.0","id":5,"method":"generate","params":{"prompt":"x","max_tokens":"ten"}}"#))
            replies.append(try exchange(client, #"{"jsonrpc":"2.0","id":6,"method":"generate","params":{"max_tokens":3}}"#))
            replies.append(try exchange(client, #"{"jsonrpc":"2.0","id":7,"method":"generate","params":{"prompt":"x","top_p":0}}"#))
            replies.append(try exchange(client, #"{"jsonrpc":"1.0","id":8,"method":"version"}"#))
            replies.append(try exchange(client, #"[1,2,3]"#))
            replies.append(try exchange(client, #"{"jsonrpc":"2.0","id":9,"method":"stats","params":[1]}"#))
            replies.append(try exchange(client, #"{"jsonrpc":"2.0","id":10,"method":"health"}"#))
            return replies
        }
        try #require(replies.count == 11)
        // Over-long: invalid request, id unknown (null), reason invalid_argument, the limit named.
        #expect(replies[0].id == nil)
        #expect(replies[0].error?.code == RPCErrorCode.invalidRequest)
        #expect(replies[0].error?.reason == .invalidArgument)
        #expect(replies[0].error?.message.contains("\(WireCodec.maxRequestLineBytes) bytes") == true)
        // The connection resynchronised on the next line.
        #expect(replies[1].id == .number(2))
        #expect(replies[1].result?["protocol_version"] == .int(controlProtocolVersion))
        #expect(replies[2].id == nil)
        #expect(replies[2].error?.code == RPCErrorCode.parseError)
        #expect(replies[3].id == .number(4))
        #expect(replies[3].error?.code == RPCErrorCode.methodNotFound)
        #expect(replies[3].error?.message.contains("'launch-missiles'") == true)
        #expect(replies[4].error?.code == RPCErrorCode.invalidParams)
        #expect(replies[4].error?.message.contains("'max_tokens'") == true)
        #expect(replies[5].error?.message.contains("missing field 'prompt'") == true)
        #expect(replies[6].error?.reason == .invalidArgument)
        #expect(replies[6].error?.message.contains("'top_p'") == true)
        #expect(replies[7].id == .number(8))
        #expect(replies[7].error?.code == RPCErrorCode.invalidRequest)
        #expect(replies[8].error?.code == RPCErrorCode.invalidRequest)
        #expect(replies[9].error?.code == RPCErrorCode.invalidParams)
        #expect(replies[10].result?["status"] == .string("ok"))

        // Another client is served normally meanwhile.
        let health = try await offPool { try ControlClient(socketPath: socket, timeout: 120).call(.health, EmptyParams(), as: HealthResult.self) }
        #expect(health.status == "ok")
        try await daemon.stop()
    }

    @Test("paths outside allowed_dirs, through symlinks or missing are refused without reading them")
    func pathPolicy() async throws {
        let daemon = try TestDaemon(tag: "path")
        try await daemon.start()
        let outside = daemon.dir + "/secret.gguf"
        try "TOP SECRET CONTENT".write(toFile: outside, atomically: true, encoding: .utf8)
        let link = daemon.allowed + "/link.gguf"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: outside)
        let dotdot = daemon.allowed + "/../secret.gguf"
        let missing = daemon.allowed + "/missing.gguf"
        let socket = daemon.socketPath
        func loadError(_ path: String) async throws -> RPCErrorObject? {
            try await offPool { () -> RPCErrorObject? in
                do {
                    _ = try ControlClient(socketPath: socket, timeout: 120).call(.loadModel, LoadModelParams(path: path), as: LoadModelResult.self)
                    return nil
                } catch let error as RPCErrorObject { return error }
            }
        }
        for path in [outside, link, dotdot, "/etc/passwd"] {
            let error = try await loadError(path)
            #expect(error?.reason == .permissionDenied, "\(path)")
            #expect(error?.message.contains("allowed_dirs") == true)
            #expect(error?.message.contains("TOP SECRET") == false)
        }
        let notFound = try await loadError(missing)
        #expect(notFound?.reason == .notFound)
        #expect(notFound?.message.contains(missing) == true)
        #expect(daemon.backend.loads.isEmpty)
        // Calibration output outside the allowed dirs is refused too.
        let output = try await offPool { () -> RPCErrorObject? in
            do {
                _ = try ControlClient(socketPath: socket, timeout: 120).call(.calibrate, CalibrateParams(output: "/tmp/evil.json"), as: CalibrateResult.self)
                return nil
            } catch let error as RPCErrorObject { return error }
        }
        #expect(output?.reason == .permissionDenied)
        try await daemon.stop()
    }

    @Test("the socket is created with mode 0660 by default")
    func socketMode() async throws {
        let daemon = try TestDaemon(tag: "mode")
        try await daemon.start()
        var info = stat()
        #expect(stat(daemon.socketPath, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o660)
        #expect(info.st_mode & S_IFMT == S_IFSOCK)
        try await daemon.stop()
    }

    @Test("a peer outside the socket group may read but not mutate (setpriv to uid 65534)")
    func permissionDeniedForOtherUser() async throws {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else {
            Issue.record("this test needs root and /usr/bin/setpriv to run a client as another uid")
            return
        }
        let daemon = try TestDaemon(tag: "perm") { config, _ in config.socketMode = 0o666 }
        try await daemon.start()
        let model = try daemon.writeAllowed("model.gguf", "GGUF")
        let script = """
        import socket, sys
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(sys.argv[1])
        f = s.makefile("rwb")
        for line in sys.argv[2:]:
            f.write(line.encode() + b"\\n"); f.flush()
            sys.stdout.write(f.readline().decode())
        """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/env", "python3", "-c", script,
                             daemon.socketPath,
                             #"{"jsonrpc":"2.0","id":1,"method":"load-model","params":{"path":"\#(model)"}}"#,
                             #"{"jsonrpc":"2.0","id":2,"method":"health"}"#]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = try await offPool { () -> Data in
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return data
        }
        let lines = String(decoding: output, as: UTF8.self).split(separator: "\n").map(String.init)
        try #require(lines.count == 2, "client output: \(lines)")
        let denied = try WireCodec.decoder.decode(RPCResponse.self, from: Data(lines[0].utf8))
        #expect(denied.error?.reason == .permissionDenied)
        #expect(denied.error?.code == RPCErrorCode.permissionDenied)
        #expect(denied.error?.message.contains("uid 65534") == true)
        let health = try WireCodec.decoder.decode(RPCResponse.self, from: Data(lines[1].utf8))
        #expect(health.result?["status"] == .string("ok"))
        #expect(daemon.backend.loads.isEmpty)
        try await daemon.stop()
    }

    @Test("AccessPolicy: root, own uid and group members may mutate")
    func accessPolicy() {
        let policy = AccessPolicy(daemonUID: 990, groupID: 991)
        #expect(policy.mayMutate(PeerCredentials(pid: 1, uid: 0, gid: 0)))
        #expect(policy.mayMutate(PeerCredentials(pid: 1, uid: 990, gid: 5)))
        #expect(policy.mayMutate(PeerCredentials(pid: 1, uid: 1234, gid: 991)))
        #expect(!policy.mayMutate(PeerCredentials(pid: 1, uid: 65534, gid: 65534)))
        #expect(!AccessPolicy(daemonUID: 990, groupID: nil).mayMutate(PeerCredentials(pid: 1, uid: 1234, gid: 991)))
    }
}
