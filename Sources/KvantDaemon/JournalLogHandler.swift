import Foundation
import KvantCore
import Logging

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

    public func log(event: LogEvent) {
        let level = event.level, message = event.message, explicit = event.metadata
        var merged = metadata
        if let explicit { merged.merge(explicit) { $1 } }
        var text = "<\(Self.priority(level))>\(label): \(message)"
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) { text += " \(key)=\(value)" }
        // One journal line per record, never a flood: a record is cut at 16 KiB.
        text = KvantError.capped(String(text.map { $0 == "\n" ? " " : $0 }), limit: 16_384) + "\n"
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
