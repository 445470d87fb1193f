import Foundation
import KvantTestSupport
import Testing
import KvantCore
import ModelFormats

/// Writes GGUF bytes by hand (little-endian), so tests can build valid and corrupt files.
struct GGUFBytes {
    var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func f32(_ v: Float) { u32(v.bitPattern) }
    mutating func f64(_ v: Double) { u64(v.bitPattern) }
    mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); bytes += Array(s.utf8) }

    mutating func header(version: UInt32 = 3, tensors: UInt64, kvs: UInt64) {
        bytes += Array("GGUF".utf8)
        u32(version)
        u64(tensors)
        u64(kvs)
    }
    /// KV with a UINT32 value.
    mutating func kvU32(_ key: String, _ v: UInt32) { str(key); u32(4); u32(v) }
    mutating func kvString(_ key: String, _ v: String) { str(key); u32(8); str(v) }
    mutating func tensorInfo(_ name: String, dims: [UInt64], type: UInt32, offset: UInt64) {
        str(name)
        u32(UInt32(dims.count))
        for d in dims { u64(d) }
        u32(type)
        u64(offset)
    }
    mutating func pad(to alignment: Int) {
        while bytes.count % alignment != 0 { bytes.append(0) }
    }
}

enum TestFiles {
    static let dir: String = {
        let d = NSTemporaryDirectory() + "kvant-modelformats-tests-\(getpid())"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()

    static func write(_ bytes: [UInt8], name: String) -> String {
        let p = dir + "/" + UUID().uuidString + "-" + name
        _ = FileManager.default.createFile(atPath: p, contents: Data(bytes))
        return p
    }

    static func fixture(_ name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/\(name)").path
    }

    /// The real model (KvantTestSupport's one locator); nil when absent (tests are then skipped with a reason).
    static var realModelPath: String? { RealModel.path }

    static var skipReason: Comment { RealModel.skipReason }

    static func realModel() -> String? { realModelPath }
}

/// FNV-1a 64-bit, the checksum the oracle script uses.
func fnv1a64<S: Sequence>(_ bytes: S) -> UInt64 where S.Element == UInt8 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes { h ^= UInt64(b); h = h &* 0x100_0000_01b3 }
    return h
}

/// The error `body` throws, as a KvantError (nil when it throws nothing or something else).
func kvantError(_ body: () throws -> Void) -> KvantError? {
    do { try body(); return nil } catch let e as KvantError { return e } catch { return nil }
}
