import Foundation
import KvantTestSupport
import Testing

/// A string with a lone UTF-16 surrogate escape (`"\ud800"` with no low surrogate after it, `"\udc00"` with no
/// high one before it) is JSON by the grammar but no Unicode text: a 400 that says so, with the byte offset of
/// the escape and the field, quoting none of the body.
@Suite("HTTP JSON bodies: lone surrogate escapes")
struct SurrogateBodyTests {
    @Test("a lone surrogate escape → 400 with what is wrong, the byte offset and the field; a valid pair passes")
    func loneSurrogates() async throws {
        let d = try TestHTTPDaemon(tag: "sur")
        try await d.start()
        try await d.loadModel()
        let high = "a lone high surrogate escape (U+D800): an escape in \\uD800-\\uDBFF must be followed by a low surrogate escape \\uDC00-\\uDFFF"
        try await d.expectError(#"{"prompt": "\ud800"}"#, status: 400, param: "prompt",
                                contains: ["at byte 12 of 20, the string of 'prompt' has " + high])
        try await d.expectError(#"{"prompt": "ab\udc00"}"#, status: 400, param: "prompt",
                                contains: ["at byte 14 of 22, the string of 'prompt' has a lone low surrogate escape (U+DC00): an escape in \\uDC00-\\uDFFF must follow a high surrogate escape"])
        // A high surrogate followed by an escape that is no low surrogate.
        try await d.expectError(#"{"prompt": "\ud800\u0041"}"#, status: 400, param: "prompt", contains: ["at byte 12 of 26", "U+D800"])
        try await d.expectError(#"{"messages": [{"role": "user", "content": "hi \ud83d"}]}"#, path: "/v1/chat/completions", status: 400,
                                param: "messages[0].content", contains: ["at byte 46 of 56, the string of 'messages[0].content' has a lone high surrogate escape (U+D83D)"])
        let key = try await d.expectError(#"{"prompt": "x", "\udc00": 1}"#, status: 400, param: nil,
                                          contains: ["at byte 17 of 28, the string of a top-level key has a lone low surrogate escape (U+DC00)"])
        #expect(key.error["param"] is NSNull, "\(key.text)")
        // A pair is one character (U+1F600): served.
        let r = try await d.request("POST", "/v1/completions", json: #"{"prompt": "ok \ud83d\ude00"}"#)
        #expect(r.status == 200, "\(r.text)")
        try await d.stop()
    }
}
