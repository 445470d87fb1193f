import Foundation
import KvantCore
import Logging

enum KvantErrorBridge {
    static func make(_ reason: ErrorReason, _ message: String) -> KvantError { KvantError(reason, message) }
}

/// A swift-log handler writing one line per record to stderr with the journald priority
/// prefix (`<3>` error … `<7>` debug, sd-daemon(3)), so journald stores the right level.
public struct JournalLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    private let label: String
    private static let lock = NSLock()

    public init(label: String, level: Logger.Level) {
        self.label = label
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// The sd-daemon priority of a swift-log level.
    public static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .critical: return 2
        case .error: return 3
        case .warning: return 4
        case .notice: return 5
        case .info: return 6
        case .debug, .trace: return 7
        }
    }

    public func log(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?,
                    source: String, file: String, function: String, line: UInt) {
        var merged = metadata
        if let explicit { merged.merge(explicit) { $1 } }
        var text = "<\(Self.priority(level))>\(label): \(message)"
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) { text += " \(key)=\(value)" }
        text = String(text.map { $0 == "\n" ? " " : $0 }) + "\n"
        Self.lock.lock()
        writeToStandardError(text)
        Self.lock.unlock()
    }
}

/// Writes `text` to fd 2 with write(2), retrying on EINTR and short writes, and ignoring every
/// other error: a closed stderr pipe (EPIPE; SIGPIPE is ignored by kvantd) must never end the
/// daemon, and `FileHandle.write` traps on such errors.
public func writeToStandardError(_ text: String) {
    let bytes = Array(text.utf8)
    var offset = 0
    bytes.withUnsafeBytes { raw in
        while offset < raw.count {
            let n = Glibc.write(2, raw.baseAddress! + offset, raw.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            if n == 0 { return }
            offset += n
        }
    }
}

/// Paths clients may name (models, scale files, texts, calibration outputs) must lie under one
/// of `allowed_dirs`, compared after `realpath(3)` so `..` and symlinks cannot escape.
public struct PathPolicy: Sendable {
    /// The allowed directories, realpath'd.
    public let allowedDirs: [String]

    /// - Throws: `KvantError(.invalidArgument)` naming a directory that does not exist.
    public init(allowedDirs: [String]) throws {
        self.allowedDirs = try allowedDirs.map { dir in
            guard let real = PathPolicy.realpath(dir) else {
                throw KvantError(.invalidArgument, "allowed_dirs entry '\(dir)' does not exist or is not accessible")
            }
            return real
        }
    }

    /// An existing file, realpath'd and checked.
    /// - Throws: `.notFound` if it does not exist, `.permissionDenied` if outside `allowed_dirs`.
    public func existingFile(_ path: String, field: String) throws -> String {
        guard !path.isEmpty else { throw KvantError(.invalidArgument, "'\(field)' is empty") }
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
            throw KvantError(.permissionDenied, "'\(field)': \(original) is outside the allowed directories \(list) (allowed_dirs)")
        }
    }

    static func realpath(_ path: String) -> String? {
        guard let resolved = Glibc.realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}

/// The credentials of the process at the other end of a Unix socket (`SO_PEERCRED`).
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    public var description: String { "pid=\(pid) uid=\(uid) gid=\(gid)" }
}

/// Who may call mutating methods: root, the daemon's own uid, and members of the socket group
/// (primary group from `SO_PEERCRED` or supplementary membership from the group database).
public struct AccessPolicy: Sendable {
    public let daemonUID: UInt32
    /// gid of `socket_group`, nil when none is configured.
    public let groupID: UInt32?

    public init(daemonUID: UInt32 = getuid(), groupID: UInt32?) {
        self.daemonUID = daemonUID
        self.groupID = groupID
    }

    public func mayMutate(_ peer: PeerCredentials) -> Bool {
        if peer.uid == 0 || peer.uid == daemonUID { return true }
        guard let groupID else { return false }
        if peer.gid == groupID { return true }
        return AccessPolicy.userIsMember(uid: peer.uid, primaryGID: peer.gid, of: groupID)
    }

    static func userIsMember(uid: UInt32, primaryGID: UInt32, of group: UInt32) -> Bool {
        guard let entry = getpwuid(uid), let name = entry.pointee.pw_name else { return false }
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: 64)
        if getgrouplist(name, primaryGID, &groups, &count) < 0 {
            guard count > 0, count <= 65536 else { return false }
            groups = [gid_t](repeating: 0, count: Int(count))
            guard getgrouplist(name, primaryGID, &groups, &count) >= 0 else { return false }
        }
        return groups.prefix(Int(count)).contains(group)
    }

    /// The gid of a group name or numeric id.
    /// - Throws: `KvantError(.invalidArgument)` naming the group.
    public static func groupID(named name: String) throws -> UInt32 {
        if let number = UInt32(name) { return number }
        guard let entry = getgrnam(name) else {
            throw KvantError(.invalidArgument, "socket_group '\(name)' does not exist")
        }
        return entry.pointee.gr_gid
    }
}
