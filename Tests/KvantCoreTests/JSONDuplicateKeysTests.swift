import Foundation
import KvantCore
import Testing

@Suite("JSONDuplicateKeys")
struct JSONDuplicateKeysTests {
    func find(_ text: String) -> JSONDuplicateKeys.Duplicate? { JSONDuplicateKeys.find(in: Array(text.utf8)) }

    @Test("the first duplicate: its key, the path with array indices, the byte offset; escapes decoded")
    func duplicates() {
        #expect(find(#"{"a": 1, "b": 2, "a": 3}"#) == .init(path: [], key: "a", offset: 17))
        #expect(find(#"{"a": 1, "\u0061": 3}"#)?.key == "a")
        let nested = find(#"{"m": [{"r": 1}, {"x": [1, 2], "r": 1, "r": 2}]}"#)
        #expect(nested?.path == ["m", "[1]"])
        #expect(nested?.field == "m[1].r")
        #expect(find(#"{"o": {"k": {"z": 1, "z": 2}}}"#)?.field == "o.k.z")
        // Keys of string values, other objects and array elements are no duplicates.
        #expect(find(#"{"a": "a", "b": {"a": 1}, "c": ["a", "a"], "d": [{"a": 1}, {"a": 2}]}"#) == nil)
        #expect(find(#"{"a\"b": 1, "a\\b": 2}"#) == nil)
        // The tuple form KVScales uses.
        #expect(JSONDuplicateKeys.first(in: Data(#"{"s": {"0": {"1": 1, "1": 2}}}"#.utf8)).map { $0.path + [$0.key] } == ["s", "0", "1"])
    }
}
