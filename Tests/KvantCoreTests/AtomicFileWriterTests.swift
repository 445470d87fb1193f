import Foundation
import KvantCore
import Testing

/// Issue 11: files are created without following symlinks and replace their target atomically.
@Suite("AtomicFileWriter")
struct AtomicFileWriterTests {
    let dir: String

    init() throws {
        dir = NSTemporaryDirectory() + "kvt-atomic-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    func read(_ path: String) -> String? { FileManager.default.contents(atPath: path).map { String(decoding: $0, as: UTF8.self) } }
    func entries() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() }

    @Test("writes the bytes, leaves no temporary file, and the target is untouched until commit")
    func writesAtomically() throws {
        let target = dir + "/out.json"
        _ = FileManager.default.createFile(atPath: target, contents: Data("old".utf8))
        let writer = try AtomicFileWriter(path: target, method: "test")
        #expect(read(target) == "old")
        #expect(entries().count == 2)   // the target and the hidden temporary file
        try writer.commit(Array("new".utf8))
        #expect(read(target) == "new")
        #expect(entries() == ["out.json"])
    }

    @Test("a symlink at the target is replaced by the new file, never written through")
    func symlinkTargetReplaced() throws {
        let victim = dir + "/victim"
        _ = FileManager.default.createFile(atPath: victim, contents: Data("precious".utf8))
        let target = dir + "/link.json"
        try FileManager.default.createSymbolicLink(atPath: target, withDestinationPath: victim)
        let writer = try AtomicFileWriter(path: target, method: "test")
        try writer.commit(Array("{}".utf8))
        #expect(read(victim) == "precious")
        #expect(read(target) == "{}")
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: target)) == nil)
    }

    @Test("a symlinked directory is refused; a directory target is invalid_argument; discard leaves nothing")
    func refusals() throws {
        let real = dir + "/real"
        try FileManager.default.createDirectory(atPath: real, withIntermediateDirectories: false)
        try FileManager.default.createSymbolicLink(atPath: dir + "/linkdir", withDestinationPath: real)
        #expect(throws: KvantError.self) { _ = try AtomicFileWriter(path: dir + "/linkdir/x.json", method: "test") }
        do {
            _ = try AtomicFileWriter(path: real, method: "test")
            Issue.record("a directory target was accepted")
        } catch let e as KvantError {
            #expect(e.reason == .invalidArgument)
            #expect(e.message == "test: \(real) is a directory; name a file to write")
        }
        let writer = try AtomicFileWriter(path: dir + "/never.json", method: "test")
        writer.discard()
        #expect(entries() == ["linkdir", "real"])
        #expect(throws: KvantError.self) { try writer.commit([1]) }
    }
}
