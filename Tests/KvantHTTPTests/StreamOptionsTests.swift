import Foundation
import KvantTestSupport
import Testing

/// `stream_options` belongs to streamed requests: vLLM's `validate_stream_options` refuses a (non-empty) one
/// without `"stream": true` with "Stream options can only be defined when `stream=True`." (400).
@Suite("HTTP stream_options without stream")
struct StreamOptionsTests {
    @Test("stream_options without stream: true → 400 naming it, on both routes; null, {} and stream: true pass")
    func needsStream() async throws {
        let d = try TestHTTPDaemon(tag: "so")
        try await d.start()
        try await d.loadModel()
        let chat = #""messages": [{"role": "user", "content": "ok"}]"#
        for (path, start) in [("/v1/completions", #""prompt": "ok""#), ("/v1/chat/completions", chat)] {
            for extra in [#""stream_options": {"include_usage": true}"#, #""stream": false, "stream_options": {"include_usage": false}"#] {
                try await d.expectError("{\(start), \(extra)}", path: path, status: 400, param: "stream_options",
                                        contains: ["Stream options can only be defined when `stream=True`."])
            }
            for extra in [#""stream_options": null"#, #""stream_options": {}"#] {
                let r = try await d.request("POST", path, json: "{\(start), \(extra)}")
                #expect(r.status == 200, "\(path) \(extra) → \(r.text)")
            }
            let streamed = try await d.request("POST", path, json: #"{\#(start), "stream": true, "stream_options": {"include_usage": true}}"#)
            #expect(streamed.status == 200, "\(streamed.text)")
            let events = try parseSSE(streamed.text)
            #expect(events.last == "[DONE]")
            try #require(events.count >= 3, "\(events)")
            #expect(try jsonObject(events[events.count - 2])["usage"] is [String: Any], "\(events)")
        }
        try await d.stop()
    }
}
