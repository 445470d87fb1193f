import Foundation

/// Finds a key that appears twice in one JSON object. Foundation's decoders keep one of the two
/// silently (and Python's `json`, which vLLM uses, keeps the last), so a scale file with a duplicated
/// rank or layer would mean different scales in Kvant and in vLLM, and a request body with `seed` twice
/// could mean different sampling: both are refused (KVCache's `KVScales`, KvantHTTP's request bodies).
public enum JSONDuplicateKeys {
    /// A key found twice in one object.
    public struct Duplicate: Equatable, Sendable {
        /// Where the object is: the keys of the enclosing objects and `[i]` for the elements of the enclosing
        /// arrays, outermost first (`["messages", "[1]"]`); empty for the top-level object.
        public var path: [String]
        /// The key, escapes decoded (`"\u0061"` is `a`).
        public var key: String
        /// 0-based byte offset of the second occurrence's opening quote.
        public var offset: Int

        public init(path: [String], key: String, offset: Int) {
            self.path = path
            self.key = key
            self.offset = offset
        }

        /// `messages[1].role`: the path and the key in the OpenAI API's spelling of a field.
        public var field: String {
            var out = ""
            for part in path + [key] {
                if part.hasPrefix("[") { out += part } else { out += out.isEmpty ? part : "." + part }
            }
            return out
        }
    }

    /// The first duplicated key: its key and the keys of the objects enclosing it (outermost first; array
    /// elements as `[i]`); nil when every object's keys are distinct.
    public static func first(in data: Data) -> (path: [String], key: String)? {
        find(in: [UInt8](data)).map { ($0.path, $0.key) }
    }

    /// The first duplicated key with its position. Keys are compared with their escapes decoded, as a JSON
    /// parser sees them. Runs in one pass over the bytes; assumes nothing about validity (a decoder checks that).
    public static func find(in b: [UInt8]) -> Duplicate? {
        struct Container { var isObject: Bool; var keys: Set<String> = []; var expectKey: Bool; var lastKey: String?; var index = 0 }
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
                if let top = stack.indices.last {
                    if stack[top].isObject { stack[top].expectKey = true } else { stack[top].index += 1 }
                }
            case UInt8(ascii: "\""):
                var j = i + 1
                var escaped = false
                while j < b.count, b[j] != UInt8(ascii: "\"") {
                    if b[j] == UInt8(ascii: "\\") { escaped = true; j += 2 } else { j += 1 }
                }
                if let top = stack.indices.last, stack[top].isObject, stack[top].expectKey {
                    let raw = b[(i + 1)..<min(j, b.count)]
                    let key = escaped ? decodeEscapes(raw) : String(decoding: raw, as: UTF8.self)
                    if stack[top].keys.contains(key) {
                        let path = stack.dropLast().map { $0.isObject ? ($0.lastKey ?? "") : "[\($0.index)]" }
                        return Duplicate(path: path, key: key, offset: i)
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

    /// A key's text with its escapes decoded; as written when they do not decode (the decoder reports that).
    private static func decodeEscapes(_ raw: ArraySlice<UInt8>) -> String {
        let token = Data([UInt8(ascii: "\"")] + raw + [UInt8(ascii: "\"")])
        if let text = try? JSONDecoder().decode(String.self, from: token) { return text }
        return String(decoding: raw, as: UTF8.self)
    }
}
