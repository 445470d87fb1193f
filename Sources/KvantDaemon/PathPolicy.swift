import Foundation
import KvantCore

/// Paths clients may name (models, scale files, texts, calibration outputs) must lie under one
/// of `allowed_dirs`, compared after `realpath(3)` so `..` and symlinks cannot escape.
public struct PathPolicy: Sendable {
    /// The allowed directories, realpath'd, each once (in the order first given).
    public let allowedDirs: [String]

    /// Entries naming the same directory (`/a` and `/a/`, a symlink to it, one given twice) count once, so
    /// errors list each directory once.
    /// - Throws: `KvantError(.invalidArgument)` naming a directory that does not exist.
    public init(allowedDirs: [String]) throws {
        var unique: [String] = []
        for dir in allowedDirs {
            try PathPolicy.refuseNUL(dir, field: "allowed_dirs")
            guard let real = PathPolicy.realpath(dir) else {
                throw KvantError(.invalidArgument, "allowed_dirs entry '\(dir)' does not exist or is not accessible")
            }
            if !unique.contains(real) { unique.append(real) }
        }
        self.allowedDirs = unique
    }

    /// An existing file, realpath'd and checked.
    /// - Throws: `.notFound` if it does not exist, `.permissionDenied` if outside `allowed_dirs`.
    public func existingFile(_ path: String, field: String) throws -> String {
        guard !path.isEmpty else { throw KvantError(.invalidArgument, "'\(field)' is empty") }
        try PathPolicy.refuseNUL(path, field: field)
        guard let real = PathPolicy.realpath(path) else {
            throw KvantError(.notFound, "'\(field)': \(path) does not exist or is not accessible")
        }
        try check(real, original: path, field: field)
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: real, isDirectory: &isDirectory), isDirectory.boolValue {
            throw KvantError(.invalidArgument, "'\(field)': \(path) is a directory, not a file")
        }
        // Checked before anything opens it: opening a FIFO or a device would block or never end.
        var st = stat()
        if stat(real, &st) == 0, (st.st_mode & S_IFMT) != S_IFREG {
            throw KvantError(.invalidArgument, "'\(field)': \(path) is not a regular file (a FIFO, socket or device)")
        }
        return real
    }

    /// A file to be written: its parent directory must exist and lie under `allowed_dirs`.
    public func outputFile(_ path: String, field: String) throws -> String {
        guard !path.isEmpty else { throw KvantError(.invalidArgument, "'\(field)' is empty") }
        try PathPolicy.refuseNUL(path, field: field)
        let url = URL(fileURLWithPath: path)
        let name = url.lastPathComponent
        guard !name.isEmpty, name != ".", name != ".." else {
            throw KvantError(.invalidArgument, "'\(field)': \(path) does not name a file")
        }
        let parent = url.deletingLastPathComponent().path
        guard let realParent = PathPolicy.realpath(parent) else {
            throw KvantError(.notFound, "'\(field)': directory \(parent) does not exist")
        }
        let real = realParent == "/" ? "/" + name : realParent + "/" + name
        try check(real, original: path, field: field)
        return real
    }

    /// Checks, before any work, that `path` (an `outputFile` result) can be written: it must not be
    /// an existing directory and its directory must be writable by this process.
    /// - Throws: `.invalidArgument` "is a directory", `.permissionDenied` naming the directory.
    public static func checkWritable(_ path: String, field: String, method: String) throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            throw KvantError(.invalidArgument, "\(method): '\(field)' \(path) is a directory; name a file to write")
        }
        let directory = (path as NSString).deletingLastPathComponent
        let dir = directory.isEmpty ? "." : directory
        if access(dir, W_OK) != 0 {
            let reason = String(cString: strerror(errno))
            throw KvantError(.permissionDenied,
                             "\(method): '\(field)': directory \(dir) is not writable by kvantd (uid \(getuid())): \(reason)")
        }
        // An existing file is replaced only if it is a scale file (JSON object, small): a mistyped
        // output path must never destroy a model or anything else.
        if access(path, F_OK) == 0 {
            var st = stat()
            let isRegular = stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG
            let head = isRegular && st.st_size <= 16 << 20 ? FileManager.default.contents(atPath: path) : nil
            let firstByte = head?.first { !($0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09) }
            guard isRegular, st.st_size == 0 || firstByte == UInt8(ascii: "{") else {
                throw KvantError(.invalidArgument,
                                 "\(method): '\(field)' \(path) exists and is not a kv_cache_scales.json; refusing to overwrite it (name a new file)")
            }
        }
        if access(path, F_OK) == 0, access(path, W_OK) != 0 {
            let reason = String(cString: strerror(errno))
            throw KvantError(.permissionDenied, "\(method): '\(field)': \(path) exists and is not writable by kvantd: \(reason)")
        }
    }

    private func check(_ real: String, original: String, field: String) throws {
        let inside = allowedDirs.contains { dir in dir == "/" || real == dir || real.hasPrefix(dir + "/") }
        guard inside else {
            let list = allowedDirs.isEmpty ? "(none configured)" : allowedDirs.joined(separator: ", ")
            // A symlink (or `..`) inside an allowed directory names the file it leads to, so the
            // operator sees both the path given and where it ends.
            let resolved = real == original ? "" : " resolves to \(real), which"
            throw KvantError(.permissionDenied, "'\(field)': \(original)\(resolved) is outside the allowed directories \(list) (allowed_dirs)")
        }
    }

    /// A path holding a NUL byte would be cut there by every C call (`realpath`, `open`), so
    /// `good.json\0/../../outside.json` would silently name `good.json`: refused whole instead.
    /// - Throws: `KvantError(.invalidArgument)` naming the field and the byte offset of the NUL.
    static func refuseNUL(_ path: String, field: String) throws {
        if let i = path.utf8.firstIndex(of: 0) {
            let offset = path.utf8.distance(from: path.utf8.startIndex, to: i)
            throw KvantError(.invalidArgument, "'\(field)' contains a NUL byte (at byte \(offset)); a path cannot hold one")
        }
    }

    static func realpath(_ path: String) -> String? {
        guard let resolved = Glibc.realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
