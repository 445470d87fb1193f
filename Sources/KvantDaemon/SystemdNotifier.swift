import CSystemd
import Dispatch
import Foundation
import KvantCore
import Logging

/// Talks to the service manager with libsystemd's `sd_notify(3)`: readiness, reload, status,
/// watchdog and stop notifications of a `Type=notify` service.
///
/// `sd_notify` sends to the datagram socket named by `NOTIFY_SOCKET`; without that variable it
/// does nothing. A disabled notifier never calls it (tests run several daemons in one process).
public struct SystemdNotifier: Sendable {
    public let isEnabled: Bool

    /// Enabled when `NOTIFY_SOCKET` is set in the environment.
    public static func fromEnvironment() -> SystemdNotifier {
        SystemdNotifier(enabled: ProcessInfo.processInfo.environment["NOTIFY_SOCKET"] != nil)
    }

    public static let disabled = SystemdNotifier(enabled: false)

    public init(enabled: Bool) {
        self.isEnabled = enabled
    }

    /// Sends `state` (newline-separated `KEY=value` assignments) as one datagram.
    @discardableResult
    public func notify(_ state: String) -> Bool {
        guard isEnabled else { return false }
        return sd_notify(0, state) > 0
    }

    /// `READY=1` with the current status.
    public func ready(status: String) { notify("READY=1\nSTATUS=\(Self.clean(status))") }

    /// `STATUS=…` (one line).
    public func status(_ text: String) { notify("STATUS=\(Self.clean(text))") }

    /// `RELOADING=1` + `MONOTONIC_USEC=` (CLOCK_MONOTONIC, µs), as systemd 253+ expects for reloads.
    public func reloading(status: String) {
        notify("RELOADING=1\nMONOTONIC_USEC=\(Self.monotonicMicroseconds())\nSTATUS=\(Self.clean(status))")
    }

    /// `STOPPING=1`.
    public func stopping(status: String) { notify("STOPPING=1\nSTATUS=\(Self.clean(status))") }

    /// `WATCHDOG=1`.
    public func watchdog() { notify("WATCHDOG=1") }

    /// `EXTEND_TIMEOUT_USEC=…`: the start/reload/stop timeout is extended to at least `microseconds` from now.
    public func extendTimeout(microseconds: UInt64, status: String) {
        notify("EXTEND_TIMEOUT_USEC=\(microseconds)\nSTATUS=\(Self.clean(status))")
    }

    /// The watchdog timeout from `WATCHDOG_USEC` (`sd_watchdog_enabled`), in microseconds; nil when off.
    public func watchdogTimeoutMicroseconds() -> UInt64? {
        guard isEnabled else { return nil }
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return usec
    }

    /// CLOCK_MONOTONIC now, microseconds.
    public static func monotonicMicroseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
    }

    /// STATUS must be one line.
    static func clean(_ text: String) -> String {
        String(text.map { $0 == "\n" || $0 == "\r" ? " " : $0 })
    }
}

/// Socket activation: the listening sockets passed by systemd (`sd_listen_fds(3)`).
public enum SocketActivation {
    /// The first passed file descriptor (SD_LISTEN_FDS_START = 3) when systemd passed exactly one or more,
    /// after `sd_is_socket_unix` confirms it is a listening Unix stream socket; nil otherwise.
    /// Unsets `LISTEN_FDS`/`LISTEN_PID` so children do not inherit them.
    public static func listeningSocket() throws -> Int32? {
        let count = sd_listen_fds(1)
        if count < 0 {
            throw KvantError(.internal, "sd_listen_fds failed: \(String(cString: strerror(-count)))")
        }
        guard count >= 1 else { return nil }
        let fd = Int32(SD_LISTEN_FDS_START)
        guard sd_is_socket_unix(fd, Int32(SOCK_STREAM.rawValue), 1, nil, 0) > 0 else {
            throw KvantError(.invalidArgument,
                                        "socket activation passed fd \(fd), which is not a listening Unix stream socket (check ListenStream= in kvantd.socket)")
        }
        return fd
    }
}
