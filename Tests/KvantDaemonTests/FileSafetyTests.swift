import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantTestSupport
import Testing

/// Paths that are valid names but dangerous things: a FIFO (opening it blocks), an output path
/// that names a model, a socket path that a running daemon still serves.
@Suite("file safety: FIFOs, overwriting, a live socket")
struct FileSafetyTests {
    static func dir() throws -> String {
        let d = NSTemporaryDirectory() + "kvt-files-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    @Test("a FIFO is refused as 'not a regular file' before anything opens it")
    func fifoRefused() throws {
        let d = try Self.dir()
        let fifo = d + "/model.gguf"
        #expect(mkfifo(fifo, 0o600) == 0)
        let policy = try PathPolicy(allowedDirs: [d])
        do {
            _ = try policy.existingFile(fifo, field: "path")
            Issue.record("a FIFO was accepted as a model file")
        } catch let e as KvantError {
            #expect(e.reason == .invalidArgument)
            #expect(e.message.contains("not a regular file"))
            #expect(e.message.contains(fifo))
        }
    }

    @Test("allowed_dirs naming one directory several times (trailing slash, symlink, repeated) list it once")
    func allowedDirsOnce() throws {
        let d = try Self.dir()
        let other = try Self.dir()
        let link = other + "/link"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: d)
        let policy = try PathPolicy(allowedDirs: [d, d + "/", link, other, d])
        let real = { (path: String) in URL(fileURLWithPath: path).resolvingSymlinksInPath().path }
        #expect(policy.allowedDirs == [real(d), real(other)])
        do {
            _ = try policy.existingFile("/etc/hostname", field: "path")
            Issue.record("a file outside allowed_dirs was accepted")
        } catch let e as KvantError {
            #expect(e.reason == .permissionDenied)
            // Each directory once: "outside the allowed directories A, B (allowed_dirs)".
            let list = try #require(e.message.components(separatedBy: "outside the allowed directories ").last)
            #expect(list == policy.allowedDirs.joined(separator: ", ") + " (allowed_dirs)", "\(e.message)")
        }
    }

    @Test("a path with a NUL byte is refused whole (never cut at the NUL), for files read and files written")
    func nulByteRefused() throws {
        let d = try Self.dir()
        let good = d + "/good.json"
        try "{}".write(toFile: good, atomically: true, encoding: .utf8)
        let policy = try PathPolicy(allowedDirs: [d])
        for (path, write) in [(good + "\u{0}/../../outside.json", false), (good + "\u{0}zzz", false), (d + "/out.json\u{0}x", true)] {
            do {
                _ = write ? try policy.outputFile(path, field: "output") : try policy.existingFile(path, field: "path")
                Issue.record("a path with a NUL byte was accepted")
            } catch let e as KvantError {
                #expect(e.reason == .invalidArgument)
                #expect(e.message.contains(write ? "'output' contains a NUL byte" : "'path' contains a NUL byte"), "\(e.message)")
                #expect(!e.message.contains("\u{0}"))
            }
        }
        #expect(throws: KvantError.self) { try PathPolicy(allowedDirs: [d + "\u{0}/x"]) }
    }

    @Test("a symlink inside allowed_dirs that leads outside is refused naming the link and its target")
    func symlinkOutNamesTarget() throws {
        let d = try Self.dir()
        let outside = try Self.dir()
        let target = outside + "/secret.json"
        try "{}".write(toFile: target, atomically: true, encoding: .utf8)
        let link = d + "/link_out.json"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        let policy = try PathPolicy(allowedDirs: [d])
        let realTarget = URL(fileURLWithPath: target).resolvingSymlinksInPath().path
        do {
            _ = try policy.existingFile(link, field: "path")
            Issue.record("a symlink leading outside allowed_dirs was accepted")
        } catch let e as KvantError {
            #expect(e.reason == .permissionDenied)
            #expect(e.message.contains("'path': \(link) resolves to \(realTarget), which is outside the allowed directories"), "\(e.message)")
        }
    }

    @Test("calibrate output: an existing non-scale file (a model) is never overwritten; a scale file or an empty file may be")
    func outputNeverClobbersAModel() throws {
        let d = try Self.dir()
        let model = d + "/m.gguf"
        try Data([0x47, 0x47, 0x55, 0x46, 3, 0, 0, 0]).write(to: URL(fileURLWithPath: model))
        do {
            try PathPolicy.checkWritable(model, field: "output", method: "calibrate")
            Issue.record("calibrate would overwrite a GGUF file")
        } catch let e as KvantError {
            #expect(e.reason == .invalidArgument)
            #expect(e.message.contains("refusing to overwrite"))
        }
        #expect(FileManager.default.contents(atPath: model)?.count == 8)
        let scales = d + "/kv_cache_scales.json"
        try " {\"model_type\": \"gemma3\"}".write(toFile: scales, atomically: true, encoding: .utf8)
        try PathPolicy.checkWritable(scales, field: "output", method: "calibrate")
        let empty = d + "/empty.json"
        _ = FileManager.default.createFile(atPath: empty, contents: Data())
        try PathPolicy.checkWritable(empty, field: "output", method: "calibrate")
        try PathPolicy.checkWritable(d + "/new.json", field: "output", method: "calibrate")
    }

    @Test("a socket file with a live listener is live; a stale socket file and a regular file are not")
    func liveSocketDetected() throws {
        let d = try Self.dir()
        let path = d + "/s.sock"
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        #expect(fd >= 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() { raw[i] = b }
        }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        #expect(listen(fd, 4) == 0)
        #expect(ControlServer.socketIsLive(path))
        close(fd)
        #expect(!ControlServer.socketIsLive(path))     // stale: the file remains, nobody listens
        let regular = d + "/plain"
        _ = FileManager.default.createFile(atPath: regular, contents: Data("x".utf8))
        #expect(!ControlServer.socketIsLive(regular))
    }
}
