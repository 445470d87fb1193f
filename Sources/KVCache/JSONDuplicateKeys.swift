import Foundation

/// Finds a key that appears twice in one JSON object. Foundation's decoders keep one of the two
/// silently (and Python's `json`, which vLLM uses, keeps the other), so a scale file with a
/// duplicated rank or layer would mean different scales in Kvant and in vLLM: it is refused.
enum JSONDuplicateKeys {
    /// The first duplicated key and the keys of the objects enclosing it (outermost first); nil
    /// when every object's keys are distinct. Keys are compared as written (escapes not decoded).
    /// Runs in one pass over the bytes; assumes nothing about validity (the decoder checks that).
    static func first(in data: Data) -> (path: [String], key: String)? {
        struct Container { var isObject: Bool; var keys: Set<String> = []; var expectKey: Bool; var lastKey: String? }
        let b = [UInt8](data)
        var stack: [Container] = []
        var i = 0
        while i < b.count {
            switch b[i] {
            case UInt8(ascii: "{"):
                stack.append(Container(isObject: true, expectKey: true))
            case UInt8(ascii: "["):
                stack.append(Container(isObject: false, expectKey: false))
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                _ = stack.popLast()
            case UInt8(ascii: ","):
                if let top = stack.indices.last, stack[top].isObject { stack[top].expectKey = true }
            case UInt8(ascii: "\""):
                var j = i + 1
                while j < b.count, b[j] != UInt8(ascii: "\"") { j += b[j] == UInt8(ascii: "\\") ? 2 : 1 }
                if let top = stack.indices.last, stack[top].isObject, stack[top].expectKey {
                    let key = String(decoding: b[(i + 1)..<min(j, b.count)], as: UTF8.self)
                    if stack[top].keys.contains(key) {
                        return (stack.dropLast().compactMap(\.lastKey), key)
                    }
                    stack[top].keys.insert(key)
                    stack[top].expectKey = false
                    stack[top].lastKey = key
                }
                i = j
            default:
                break
            }
            i += 1
        }
        return nil
    }
}
