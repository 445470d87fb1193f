#if canImport(Glibc)
import Glibc
#endif

/// Reads a whole small file with POSIX calls on one descriptor (open, fstat, read): the size limit
/// is checked on the file actually read, and nothing is cached or leaked (Foundation's
/// `Data(contentsOf:)` leaked 4 KiB per call here, found by `make fuzz`).
public enum FileBytes {
    public enum Outcome: Equatable, Sendable {
        case bytes([UInt8])
        /// No such file (ENOENT, ENOTDIR).
        case missing
        /// A directory.
        case directory
        /// Not a regular file (FIFO, socket, device): never read, it could block.
        case notRegular
        /// Larger than the limit; the size in bytes.
        case tooLarge(Int)
        /// Any other failure, with the system's text (e.g. "Permission denied").
        case failed(String)
    }

    /// The contents of `path` if it is a regular file of at most `maxBytes` bytes.
    public static func read(_ path: String, maxBytes: Int) -> Outcome {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT || code == ENOTDIR { return .missing }
            return .failed(String(cString: strerror(code)))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return .failed(String(cString: strerror(errno))) }
        switch st.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: return .directory
        default: return .notRegular
        }
        let size = Int(st.st_size)
        guard size <= maxBytes else { return .tooLarge(size) }
        var out = [UInt8](repeating: 0, count: size)
        var done = 0
        while done < size {
            let n = out.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, size - done) }
            if n < 0 {
                if errno == EINTR { continue }
                return .failed(String(cString: strerror(errno)))
            }
            if n == 0 { break }   // the file shrank meanwhile
            done += n
        }
        if done < size { out.removeLast(size - done) }
        return .bytes(out)
    }
}
