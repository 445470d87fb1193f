/// Indices `0..<count` grouped by `key` (nil: left out), groups in order of first appearance, indices
/// ascending within a group. Used to batch decode rows that share a KV pool.
public func orderedGroups<Key: Hashable>(count: Int, key: (Int) -> Key?) -> [[Int]] {
    var groups: [Key: Int] = [:]
    var out: [[Int]] = []
    for i in 0..<count {
        guard let k = key(i) else { continue }
        if let g = groups[k] { out[g].append(i) } else { groups[k] = out.count; out.append([i]) }
    }
    return out
}
