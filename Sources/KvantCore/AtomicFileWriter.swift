#if canImport(Glibc)
import Glibc
#endif

/// Writes one file atomically without ever following a symlink: the directory is opened once
/// (`O_DIRECTORY | O_NOFOLLOW`), a temporary file is created in it with
/// `openat(O_CREAT | O_EXCL | O_NOFOLLOW)` under a fresh random name, and `commit` writes the
/// bytes, `fsync`s, `renameat`s the temporary over the target and `fsync`s the directory.
/// A planted symlink at the temporary name makes the create fail (never a write through it); a
/// symlink at the target name is replaced by the new file, never written through. Until `commit`
/// the target is untouched; `discard` (or deinit) removes the temporary file.
///
/// Create it before long work so an unwritable destination fails at once.
/// - Throws: `KvantError(.permissionDenied)` naming `path` and the system's reason when the directory
///   cannot be opened (missing, not a directory, a symlink) or written; `.invalidArgument` when the
///   target is a directory.
public final class AtomicFileWriter {
    /// The destination, as given.
    public let path: String
    private let directoryFD: Int32
    private let name: String
    private let temporaryName: String
    private var fd: Int32
    private let method: String

    /// - Parameters:
    ///   - path: an absolute or relative file path whose directory exists (already checked by policy).
    ///   - method: the operation named in errors (e.g. `calibrate`).
    ///   - mode: permission bits of the new file.
    public init(path: String, method: String, mode: mode_t = 0o644) throws {
        self.path = path
        self.method = method
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        guard !name.isEmpty, name != ".", name != ".." else {
            throw KvantError(.invalidArgument, "\(method): '\(path)' does not name a file")
        }
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard dfd >= 0 else {
            let code = errno
            throw KvantError(.permissionDenied,
                             "\(method): cannot write '\(path)': directory \(directory): \(String(cString: strerror(code)))")
        }
        // The target itself (not followed if a symlink) must not be a directory: the rename would fail
        // only at the end.
        var st = stat()
        if fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
            close(dfd)
            throw KvantError(.invalidArgument, "\(method): \(path) is a directory; name a file to write")
        }
        directoryFD = dfd
        var created: Int32 = -1
        var tried = ""
        for _ in 0..<8 {
            tried = ".\(name).partial-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            created = openat(dfd, tried, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
            if created >= 0 || errno != EEXIST { break }
        }
        guard created >= 0 else {
            let code = errno
            close(dfd)
            throw KvantError(.permissionDenied, "\(method): cannot write '\(path)': \(String(cString: strerror(code)))")
        }
        fd = created
        temporaryName = tried
    }

    /// Writes `bytes` to the temporary file, flushes it to disk and renames it over the destination.
    /// - Throws: `KvantError(.permissionDenied)` naming the destination and the system's reason
    ///   (e.g. "No space left on device"); the destination is then unchanged.
    public func commit(_ bytes: [UInt8]) throws {
        guard fd >= 0 else { throw KvantError(.internal, "\(method): '\(path)' was already written or discarded") }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                throw failure()
            }
            offset += n
        }
        guard fsync(fd) == 0 else { throw failure() }
        close(fd)
        fd = -1
        guard renameat(directoryFD, temporaryName, directoryFD, name) == 0 else {
            let error = failure()
            unlinkat(directoryFD, temporaryName, 0)
            throw error
        }
        _ = fsync(directoryFD)
    }

    /// Removes the temporary file; the destination stays as it was. Safe to call more than once.
    public func discard() {
        guard fd >= 0 else { return }
        close(fd)
        fd = -1
        unlinkat(directoryFD, temporaryName, 0)
    }

    private func failure() -> KvantError {
        KvantError(.permissionDenied, "\(method): cannot write '\(path)': \(String(cString: strerror(errno)))")
    }

    deinit {
        discard()
        close(directoryFD)
    }
}
