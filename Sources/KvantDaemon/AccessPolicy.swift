import Foundation
import KvantCore

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
