#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KvantCore
import Synchronization

/// One tensor of a GGUF file, as described by its tensor info.
public struct GGUFTensorInfo: Sendable, Equatable {
    /// Tensor name, e.g. `blk.3.attn_q.weight`.
    public let name: String
    /// ggml dimensions, `ne0` first: `dims[0]` is the row length (contiguous elements).
    public let dims: [Int]
    public let type: GGMLType
    /// Absolute byte offset of the tensor data in the file (data section start + relative offset).
    public let offset: Int
    /// Bytes of tensor data (`type.byteCount(elements: elementCount)`).
    public let byteCount: Int
    /// Product of `dims` (1 for a tensor with no dimensions).
    public let elementCount: Int

    public init(name: String, dims: [Int], type: GGMLType, offset: Int, byteCount: Int, elementCount: Int) {
        self.name = name
        self.dims = dims
        self.type = type
        self.offset = offset
        self.byteCount = byteCount
        self.elementCount = elementCount
    }
}

/// A GGUF model file, memory-mapped read-only (versions 2 and 3).
///
/// Source: the GGUF spec (ggml/docs/gguf.md) and llama.cpp's reader (ggml/src/gguf.cpp). Layout:
/// magic `GGUF`, version (u32), tensor count (u64), metadata KV count (u64), the KV pairs, the tensor
/// infos, padding to `general.alignment` (default 32), then the tensor data; tensor offsets are
/// relative to that aligned data section start. All little-endian.
///
/// Everything is validated at `init`: every read is bounds-checked, counts are checked against the
/// bytes that remain before anything is reserved, tensor data must lie inside the file and be aligned.
/// Errors are `KvantError`s naming the file and the field:
/// `.notFound` (no such file), `.permissionDenied`, `.invalidArgument` (malformed file).
public final class GGUFFile: @unchecked Sendable {
    /// GGUF magic, the bytes "GGUF" read as a little-endian u32.
    public static let magic: UInt32 = 0x4655_4747
    /// Default alignment of the data section and tensor data, in bytes.
    public static let defaultAlignment = 32
    /// Largest number of dimensions of a tensor (GGML_MAX_DIMS).
    public static let maxDims = 4
    /// Deepest nesting of arrays accepted in metadata.
    public static let maxArrayDepth = 16
    /// Most elements accepted in one metadata array (2^24; real vocabularies have < 2^20 entries).
    /// Each element becomes a `GGUFValue`, so this bounds memory independently of the file size.
    public static let maxArrayCount = 1 << 24

    public let path: String
    public let version: Int
    /// Alignment of the data section and of every tensor's data, in bytes (a power of two).
    public let alignment: Int
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    /// Tensor infos in file order.
    public let tensors: [GGUFTensorInfo]
    /// Absolute byte offset of the (aligned) data section.
    public let dataOffset: Int
    /// File size in bytes.
    public let fileSize: Int

    private let base: UnsafeRawPointer?
    private let mappedLength: Int
    private let tensorIndex: [String: Int]
    /// Tensors rewritten in place by `rewriteInPlace` (their bytes are no longer the file's).
    private let rewritten = Mutex<Set<String>>([])
    /// File offset of each metadata value (just after its type id), for raw access.
    private let valueOffsets: [String: Int]

    /// Opens and validates `path`. Throws `KvantError` naming the file and the field on any problem.
    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            let msg = String(cString: strerror(e))
            switch e {
            case ENOENT: throw KvantError(.notFound, "\(path): cannot open GGUF file: \(msg)")
            case EACCES, EPERM: throw KvantError(.permissionDenied, "\(path): cannot open GGUF file: \(msg)")
            default: throw KvantError(.invalidArgument, "\(path): cannot open GGUF file: \(msg)")
            }
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw KvantError(.invalidArgument, "\(path): cannot stat GGUF file: \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw KvantError(.invalidArgument, "\(path): not a regular file")
        }
        let size = Int(st.st_size)
        guard size > 0 else {
            throw KvantError(.invalidArgument, "\(path): truncated: the file is empty (a GGUF header needs 24 bytes)")
        }
        guard let m = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), m != MAP_FAILED else {
            throw KvantError(.invalidArgument, "\(path): cannot mmap GGUF file (\(size) bytes): \(String(cString: strerror(errno)))")
        }
        let base = UnsafeRawPointer(m)
        do {
            var parser = GGUFParser(path: path, base: base, size: size)
            let parsed = try parser.parse()
            self.base = base
            self.mappedLength = size
            self.fileSize = size
            self.version = parsed.version
            self.alignment = parsed.alignment
            self.metadata = parsed.metadata
            self.metadataKeys = parsed.metadataKeys
            self.tensors = parsed.tensors
            self.dataOffset = parsed.dataOffset
            self.valueOffsets = parsed.valueOffsets
            var index: [String: Int] = [:]
            index.reserveCapacity(parsed.tensors.count)
            for (i, t) in parsed.tensors.enumerated() { index[t.name] = i }
            self.tensorIndex = index
        } catch {
            munmap(m, size)
            throw error
        }
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), mappedLength) }
    }

    /// The tensor info called `name`, or nil.
    public func tensor(named name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    /// The bytes of `tensor`'s data, pointing into the mapping (valid while this `GGUFFile` lives).
    /// Bounds were checked at `init`; `tensor` must come from this file.
    public func data(of tensor: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        precondition(tensor.offset >= 0 && tensor.byteCount >= 0 && tensor.offset <= fileSize - tensor.byteCount,
                     "\(path): tensor '\(tensor.name)' is not from this file")
        return UnsafeRawBufferPointer(start: base! + tensor.offset, count: tensor.byteCount)
    }

    /// Rewrites a tensor's bytes in this process's private copy of the mapping, once per file object: the first call
    /// makes the tensor's pages writable (copy-on-write: the file on disk never changes; the rewritten pages become
    /// anonymous memory of the same size, the file's pages are no longer mapped) and runs `body` on them; later calls
    /// for the same tensor do not run `body` again, so every model built from this file sees the same rewritten bytes.
    /// Used to repack weights at load into a kernel's layout (Q8_0 and Q5_0 weights: `WeightMatrix.Layout.x16`).
    /// - Returns: the tensor's bytes after the rewrite.
    /// - Throws: `KvantError(.internal)` when the pages cannot be made writable (mprotect's errno), or what `body` throws
    ///   (the tensor is then not marked rewritten; a partial rewrite leaves it unusable, so callers fail the load).
    public func rewriteInPlace(_ tensor: GGUFTensorInfo, _ body: (UnsafeMutableRawBufferPointer) throws -> Void) throws -> UnsafeRawBufferPointer {
        let bytes = data(of: tensor)
        try rewritten.withLock { (done: inout Set<String>) throws -> Void in
            guard !done.contains(tensor.name) else { return }
            let page = Int(sysconf(Int32(_SC_PAGESIZE)))
            let start = Int(bitPattern: bytes.baseAddress!) & ~(page - 1)
            let end = (Int(bitPattern: bytes.baseAddress!) + bytes.count + page - 1) & ~(page - 1)
            guard mprotect(UnsafeMutableRawPointer(bitPattern: start), end - start, PROT_READ | PROT_WRITE) == 0 else {
                throw KvantError(.internal, "\(path): tensor '\(tensor.name)': cannot make its \(bytes.count) bytes writable for repacking: \(String(cString: strerror(errno)))")
            }
            defer { _ = mprotect(UnsafeMutableRawPointer(bitPattern: start), end - start, PROT_READ) }
            try body(UnsafeMutableRawBufferPointer(mutating: bytes))
            done.insert(tensor.name)
        }
        return bytes
    }

    /// True when `rewriteInPlace` has rewritten the tensor named `name`.
    public func isRewritten(_ name: String) -> Bool { rewritten.withLock { $0.contains(name) } }

    /// The whole mapped file.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: fileSize) }

    // MARK: typed metadata accessors

    private func value(_ key: String) throws -> GGUFValue {
        guard let v = metadata[key] else {
            // A required key the file lacks makes it a bad model file, not a missing file.
            throw KvantError(.invalidArgument, "\(path): metadata key '\(key)' is missing")
        }
        return v
    }

    private func wrongType(_ key: String, _ v: GGUFValue, _ expected: String) -> KvantError {
        KvantError(.invalidArgument, "\(path): metadata key '\(key)' has type \(v.typeName), expected \(expected)")
    }

    /// The metadata value for `key`, or nil.
    public subscript(key: String) -> GGUFValue? { metadata[key] }

    /// An integer value (any GGUF integer type) that is >= 0. Throws `.invalidArgument` when missing,
    /// of another type or negative (use the subscript for optional keys).
    public func uint(_ key: String) throws -> Int {
        let v = try value(key)
        guard let i = v.intValue else { throw wrongType(key, v, "an unsigned integer") }
        guard i >= 0 else { throw KvantError(.invalidArgument, "\(path): metadata key '\(key)' is negative (\(i))") }
        return i
    }

    /// An integer value of any GGUF integer type (may be negative).
    public func int(_ key: String) throws -> Int {
        let v = try value(key)
        guard let i = v.intValue else { throw wrongType(key, v, "an integer") }
        return i
    }

    /// A FLOAT32 or FLOAT64 value.
    public func float(_ key: String) throws -> Float {
        let v = try value(key)
        guard let f = v.floatValue else { throw wrongType(key, v, "FLOAT32 or FLOAT64") }
        return f
    }

    public func bool(_ key: String) throws -> Bool {
        let v = try value(key)
        guard let b = v.boolValue else { throw wrongType(key, v, "BOOL") }
        return b
    }

    public func string(_ key: String) throws -> String {
        let v = try value(key)
        guard let s = v.stringValue else { throw wrongType(key, v, "STRING") }
        return s
    }

    /// An ARRAY of STRING.
    public func stringArray(_ key: String) throws -> [String] {
        let v = try value(key)
        guard case .array(let a) = v else { throw wrongType(key, v, "ARRAY of STRING") }
        var out: [String] = []
        out.reserveCapacity(a.count)
        for (i, e) in a.enumerated() {
            guard case .string(let s) = e else {
                throw KvantError(.invalidArgument, "\(path): metadata key '\(key)'[\(i)] has type \(e.typeName), expected STRING")
            }
            out.append(s)
        }
        return out
    }

    /// An ARRAY of STRING as the raw bytes of each string, pointing into the mapping (valid while this
    /// `GGUFFile` lives). Unlike `stringArray`, bytes that are not valid UTF-8 are kept as they are
    /// (tokenizer vocabularies must be matched byte for byte).
    public func rawStringArray(_ key: String) throws -> [UnsafeRawBufferPointer] {
        let v = try value(key)
        guard case .array(let a) = v, let start = valueOffsets[key], let base else {
            throw wrongType(key, v, "ARRAY of STRING")
        }
        if let bad = a.firstIndex(where: { $0.stringValue == nil }) {
            throw KvantError(.invalidArgument, "\(path): metadata key '\(key)'[\(bad)] has type \(a[bad].typeName), expected STRING")
        }
        // Layout (validated at init): u32 element type, u64 count, then (u64 length, bytes) per string.
        var pos = start + 12
        var out: [UnsafeRawBufferPointer] = []
        out.reserveCapacity(a.count)
        for _ in 0..<a.count {
            let len = Int(UInt64(littleEndian: base.loadUnaligned(fromByteOffset: pos, as: UInt64.self)))
            pos += 8
            out.append(UnsafeRawBufferPointer(start: base + pos, count: len))
            pos += len
        }
        return out
    }

    /// An ARRAY of FLOAT32/FLOAT64.
    public func floatArray(_ key: String) throws -> [Float] {
        let v = try value(key)
        guard case .array(let a) = v else { throw wrongType(key, v, "ARRAY of FLOAT32") }
        var out: [Float] = []
        out.reserveCapacity(a.count)
        for (i, e) in a.enumerated() {
            guard let f = e.floatValue else {
                throw KvantError(.invalidArgument, "\(path): metadata key '\(key)'[\(i)] has type \(e.typeName), expected FLOAT32")
            }
            out.append(f)
        }
        return out
    }

    /// An ARRAY of any GGUF integer type.
    public func intArray(_ key: String) throws -> [Int] {
        let v = try value(key)
        guard case .array(let a) = v else { throw wrongType(key, v, "ARRAY of integers") }
        var out: [Int] = []
        out.reserveCapacity(a.count)
        for (i, e) in a.enumerated() {
            guard let n = e.intValue else {
                throw KvantError(.invalidArgument, "\(path): metadata key '\(key)'[\(i)] has type \(e.typeName), expected an integer")
            }
            out.append(n)
        }
        return out
    }
}

// MARK: - Parser

private struct GGUFParsed {
    var version: Int
    var alignment: Int
    var metadata: [String: GGUFValue]
    var metadataKeys: [String]
    var tensors: [GGUFTensorInfo]
    var dataOffset: Int
    var valueOffsets: [String: Int]
}

/// Bounds-checked little-endian reader over the mapping.
private struct GGUFParser {
    let path: String
    let base: UnsafeRawPointer
    let size: Int
    var pos = 0

    init(path: String, base: UnsafeRawPointer, size: Int) {
        self.path = path
        self.base = base
        self.size = size
    }

    var remaining: Int { size - pos }

    func fail(_ message: String) -> KvantError {
        KvantError(.invalidArgument, "\(path): \(message)")
    }

    mutating func need(_ n: Int, _ field: @autoclosure () -> String) throws {
        if n > remaining {
            throw fail("truncated: \(field()) needs \(n) bytes at offset \(pos), but the file has \(size) bytes")
        }
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ field: @autoclosure () -> String) throws -> T {
        let n = MemoryLayout<T>.size
        if n > remaining {
            throw fail("truncated: \(field()) needs \(n) bytes at offset \(pos), but the file has \(size) bytes")
        }
        let v = base.loadUnaligned(fromByteOffset: pos, as: T.self)
        pos += n
        return T(littleEndian: v)
    }

    /// Longest metadata key accepted, bytes (real keys are a few dozen; a corrupted length field
    /// would otherwise turn megabytes of the file into a "key").
    static let maxKeyBytes = 65_535
    /// Longest tensor name accepted, bytes: ggml's `GGML_MAX_NAME` (64) less the terminating NUL, as llama.cpp's gguf reader.
    static let maxTensorNameBytes = 63

    /// A name read from the file as errors show it: quoted, control characters, quotes and invalid UTF-8
    /// (U+FFFD) escaped, cut at 48 characters of output with the full length (UTF-8 bytes after
    /// decoding) named, so an error never carries file bytes in bulk.
    static func quoted(_ s: String) -> String { quotedName(s) }

    /// Reads a length-prefixed string.
    /// - Parameter limit: longest accepted length in bytes (keys and tensor names); nil for values.
    mutating func readString(_ field: @autoclosure () -> String, limit: Int? = nil) throws -> String {
        let len = try read(UInt64.self, "\(field()) length")
        if let limit, len > UInt64(limit) {
            throw fail("\(field()): length \(len) at offset \(pos - 8) exceeds the limit of \(limit) bytes (a corrupted length field?)")
        }
        guard len <= UInt64(remaining) else {
            throw fail("\(field()): string length \(len) at offset \(pos - 8) runs past the end of the file (\(size) bytes)")
        }
        let n = Int(len)
        let s = String(decoding: UnsafeRawBufferPointer(start: base + pos, count: n), as: UTF8.self)
        pos += n
        return s
    }

    /// Smallest encoded size of one value of GGUF type `t` (for count checks), or nil for an unknown type.
    static func minSize(ofType t: UInt32) -> Int? {
        switch t {
        case 0, 1, 7: return 1
        case 2, 3: return 2
        case 4, 5, 6: return 4
        case 10, 11, 12: return 8
        case 8: return 8        // u64 length
        case 9: return 12       // u32 type + u64 count
        default: return nil
        }
    }

    mutating func readValue(type t: UInt32, _ field: @autoclosure () -> String, depth: Int) throws -> GGUFValue {
        switch t {
        case 0: return .uint8(try read(UInt8.self, field()))
        case 1: return .int8(try read(Int8.self, field()))
        case 2: return .uint16(try read(UInt16.self, field()))
        case 3: return .int16(try read(Int16.self, field()))
        case 4: return .uint32(try read(UInt32.self, field()))
        case 5: return .int32(try read(Int32.self, field()))
        case 6: return .float32(Float(bitPattern: try read(UInt32.self, field())))
        case 7:
            let at = pos
            let b = try read(UInt8.self, field())
            guard b <= 1 else { throw fail("\(field()): BOOL value \(b) at offset \(at) is neither 0 nor 1") }
            return .bool(b == 1)
        case 8: return .string(try readString(field()))
        case 9:
            guard depth < GGUFFile.maxArrayDepth else {
                throw fail("\(field()): arrays nested deeper than \(GGUFFile.maxArrayDepth) levels")
            }
            let et = try read(UInt32.self, "\(field()) array element type")
            guard let minSize = Self.minSize(ofType: et) else {
                throw fail("\(field()): unknown array element type \(et)")
            }
            let count = try read(UInt64.self, "\(field()) array count")
            guard count <= UInt64(remaining / minSize) else {
                throw fail("\(field()): array count \(count) needs at least \(count.multipliedReportingOverflow(by: UInt64(minSize)).overflow ? "more than 2^64" : String(count * UInt64(minSize))) bytes, but only \(remaining) remain in the file (\(size) bytes)")
            }
            guard count <= UInt64(GGUFFile.maxArrayCount) else {
                throw fail("\(field()): array count \(count) exceeds the limit of \(GGUFFile.maxArrayCount) elements")
            }
            let n = Int(count)
            var items: [GGUFValue] = []
            items.reserveCapacity(n)
            for i in 0..<n {
                items.append(try readValue(type: et, "\(field())[\(i)]", depth: depth + 1))
            }
            return .array(items)
        case 10: return .uint64(try read(UInt64.self, field()))
        case 11: return .int64(try read(Int64.self, field()))
        case 12: return .float64(Double(bitPattern: try read(UInt64.self, field())))
        default:
            throw fail("\(field()): unknown metadata value type \(t)")
        }
    }

    mutating func parse() throws -> GGUFParsed {
        let magic = try read(UInt32.self, "header magic")
        guard magic == GGUFFile.magic else {
            let b = withUnsafeBytes(of: magic.littleEndian) { Array($0) }
            let hex = b.map { String($0, radix: 16) }.joined(separator: " ")
            throw fail("wrong magic: expected 'GGUF' (47 47 55 46), found bytes \(hex); not a GGUF file")
        }
        let version = try read(UInt32.self, "header version")
        guard version == 2 || version == 3 else {
            if version.byteSwapped == 2 || version.byteSwapped == 3 {
                throw fail("big-endian GGUF (version \(version.byteSwapped) with swapped bytes) is not supported")
            }
            throw fail("unknown GGUF version \(version) (supported: 2, 3)")
        }
        let tensorCount = try read(UInt64.self, "header tensor count")
        let kvCount = try read(UInt64.self, "header metadata KV count")
        // A KV pair needs >= 8 (key length) + 4 (type) + 1 bytes; a tensor info >= 8 + 4 + 4 + 8 bytes.
        guard kvCount <= UInt64(remaining / 13) else {
            throw fail("header metadata KV count \(kvCount) is impossible: each pair needs at least 13 bytes and only \(remaining) bytes remain in the file (\(size) bytes)")
        }
        guard tensorCount <= UInt64(remaining / 24) else {
            throw fail("header tensor count \(tensorCount) is impossible: each tensor info needs at least 24 bytes and only \(remaining) bytes remain in the file (\(size) bytes)")
        }

        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        var valueOffsets: [String: Int] = [:]
        metadata.reserveCapacity(Int(kvCount))
        valueOffsets.reserveCapacity(Int(kvCount))
        keys.reserveCapacity(Int(kvCount))
        for i in 0..<Int(kvCount) {
            let key = try readString("metadata KV #\(i) key", limit: GGUFParser.maxKeyBytes)
            let t = try read(UInt32.self, "metadata \(GGUFParser.quoted(key)) value type")
            valueOffsets[key] = pos
            let v = try readValue(type: t, "metadata \(GGUFParser.quoted(key))", depth: 0)
            guard metadata[key] == nil else { throw fail("metadata key \(GGUFParser.quoted(key)) appears twice") }
            metadata[key] = v
            keys.append(key)
        }

        var alignment = GGUFFile.defaultAlignment
        if let a = metadata["general.alignment"] {
            guard case .uint32(let av) = a else {
                throw fail("metadata 'general.alignment' has type \(a.typeName), expected UINT32")
            }
            guard av > 0, av & (av - 1) == 0 else {
                throw fail("metadata 'general.alignment' = \(av) is not a power of two")
            }
            alignment = Int(av)
        }

        struct RawTensor { var name: String; var dims: [Int]; var type: GGMLType; var rel: UInt64; var elements: Int; var bytes: Int }
        var raw: [RawTensor] = []
        raw.reserveCapacity(Int(tensorCount))
        var seen = Set<String>()
        seen.reserveCapacity(Int(tensorCount))
        for i in 0..<Int(tensorCount) {
            let name = try readString("tensor info #\(i) name", limit: GGUFParser.maxTensorNameBytes)
            guard seen.insert(name).inserted else { throw fail("tensor \(GGUFParser.quoted(name)) appears twice") }
            let nDims = try read(UInt32.self, "tensor \(GGUFParser.quoted(name)) n_dims")
            guard nDims <= UInt32(GGUFFile.maxDims) else {
                throw fail("tensor \(GGUFParser.quoted(name)): n_dims \(nDims) exceeds the maximum of \(GGUFFile.maxDims)")
            }
            var dims: [Int] = []
            dims.reserveCapacity(Int(nDims))
            var elements = 1
            for d in 0..<Int(nDims) {
                let ne = try read(UInt64.self, "tensor \(GGUFParser.quoted(name)) dims[\(d)]")
                guard ne <= UInt64(Int64.max) else {
                    throw fail("tensor \(GGUFParser.quoted(name)): dims[\(d)] = \(ne) is out of range")
                }
                let (p, o) = elements.multipliedReportingOverflow(by: Int(ne))
                guard !o else { throw fail("tensor \(GGUFParser.quoted(name)): element count overflows (dims[\(d)] = \(ne))") }
                elements = p
                dims.append(Int(ne))
            }
            let rawType = try read(UInt32.self, "tensor \(GGUFParser.quoted(name)) type")
            guard let type = GGMLType(rawValue: rawType) else {
                throw fail("tensor \(GGUFParser.quoted(name)): unknown tensor type \(rawType)")
            }
            let rowLength = dims.first ?? 1
            guard rowLength % type.blockSize == 0 else {
                throw fail("tensor \(GGUFParser.quoted(name)): row length dims[0] = \(rowLength) is not a multiple of the \(type) block size \(type.blockSize)")
            }
            guard let bytes = type.byteCount(elements: elements) else {
                throw fail("tensor \(GGUFParser.quoted(name)): byte size of \(elements) \(type) elements is out of range")
            }
            let rel = try read(UInt64.self, "tensor \(GGUFParser.quoted(name)) offset")
            guard rel % UInt64(alignment) == 0 else {
                throw fail("tensor \(GGUFParser.quoted(name)): data offset \(rel) is not aligned to \(alignment) bytes")
            }
            raw.append(RawTensor(name: name, dims: dims, type: type, rel: rel, elements: elements, bytes: bytes))
        }

        // Data section starts at the next multiple of `alignment`.
        let infoEnd = pos
        let dataOffset = (infoEnd + alignment - 1) / alignment * alignment
        if !raw.isEmpty && dataOffset > size {
            throw fail("truncated: the data section starts at offset \(dataOffset), past the end of the file (\(size) bytes)")
        }
        var tensors: [GGUFTensorInfo] = []
        tensors.reserveCapacity(raw.count)
        for t in raw {
            guard t.rel <= UInt64(size - min(dataOffset, size)) else {
                throw fail("tensor \(GGUFParser.quoted(t.name)): data offset \(t.rel) (absolute \(UInt64(dataOffset) &+ t.rel)) is past the end of the file (\(size) bytes)")
            }
            let abs = dataOffset + Int(t.rel)
            guard t.bytes <= size - abs else {
                throw fail("tensor \(GGUFParser.quoted(t.name)): data [\(abs), \(UInt(abs) + UInt(t.bytes))) ends past the end of the file (\(size) bytes)")
            }
            tensors.append(GGUFTensorInfo(name: t.name, dims: t.dims, type: t.type, offset: abs,
                                          byteCount: t.bytes, elementCount: t.elements))
        }
        // Tensor data regions must not overlap (a writer lays them out one after another).
        let byOffset = tensors.indices.sorted { (tensors[$0].offset, $0) < (tensors[$1].offset, $1) }
        for (a, b) in zip(byOffset, byOffset.dropFirst()) {
            let ta = tensors[a], tb = tensors[b]
            if ta.byteCount > 0 && tb.byteCount > 0 && ta.offset + ta.byteCount > tb.offset {
                throw fail("tensor \(GGUFParser.quoted(tb.name)): data [\(tb.offset), \(tb.offset + tb.byteCount)) overlaps tensor \(GGUFParser.quoted(ta.name)) [\(ta.offset), \(ta.offset + ta.byteCount))")
            }
        }
        return GGUFParsed(version: Int(version), alignment: alignment, metadata: metadata, metadataKeys: keys,
                          tensors: tensors, dataOffset: dataOffset, valueOffsets: valueOffsets)
    }
}
