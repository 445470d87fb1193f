import Foundation
import KvantTestSupport
import Testing

/// Request bodies that are JSON by the grammar but have no single meaning: a key given twice in one object
/// (parsers disagree on which value wins).
@Suite("HTTP JSON bodies: duplicate keys")
struct DuplicateKeyBodyTests {
    @Test("a key twice in one object → 400 naming the key, where it is and the byte offset; the daemon serves on")
    func duplicateKeys() async throws {
        let d = try TestHTTPDaemon(tag: "dup")
        try await d.start()
        try await d.loadModel()
        try await d.expectError(#"{"prompt": "x", "seed": 1, "seed": 2}"#, status: 400, param: "seed",
                                contains: ["'seed': the key appears twice in one object (the second at byte 27 of 37)"])
        // Escapes are decoded before comparing: "\u0073eed" is "seed".
        try await d.expectError(#"{"prompt": "x", "seed": 1, "\u0073eed": 2}"#, status: 400, param: "seed", contains: ["'seed': the key appears twice"])
        // Nested: the message's field path, with the array index.
        try await d.expectError(#"{"messages": [{"role": "user", "content": "a"}, {"role": "user", "role": "system", "content": "b"}]}"#,
                                path: "/v1/chat/completions", status: 400, param: "messages[1].role",
                                contains: ["'messages[1].role': the key appears twice in one object"])
        try await d.expectError(#"{"prompt": "x", "stream": true, "stream_options": {"include_usage": true, "include_usage": false}}"#,
                                status: 400, param: "stream_options.include_usage", contains: ["appears twice"])
        // The same key in different objects is no duplicate.
        let r = try await d.request("POST", "/v1/chat/completions",
                                    json: #"{"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "ok"}]}"#)
        #expect(r.status == 200, "\(r.text)")
        try await d.stop()
    }
}
