import Foundation
import KvantTestSupport
import Testing

/// A request whose body stops short of its Content-Length gets an answer before the connection closes.
@Suite("HTTP stalled request bodies")
struct StalledBodyTests {
    @Test("a body shorter than its Content-Length: 408 saying how much came, Connection: close, then EOF; the daemon serves on")
    func shortBody() async throws {
        let d = try TestHTTPDaemon(tag: "408") { c, _ in c.timeoutKeepAlive = 1 }
        try await d.start()
        try await d.loadModel()
        let port = d.port
        // 10 of 100 bytes, then nothing: the server's idle timeout (timeout_keep_alive) ends the wait.
        let (response, rest) = try await offPool { () -> (HTTPTestResponse, [UInt8]) in
            let c = try RawHTTPConnection(port: port)
            defer { c.close() }
            let head = "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            try c.sendRaw(Array((head + #"{"prompt":"#).utf8))
            let response = try c.readResponse()
            return (response, try c.readToEOF())
        }
        #expect(response.status == 408, "\(response.text)")
        #expect(response.headers["connection"] == "close")
        #expect(response.error["type"] as? String == "RequestTimeoutError")
        #expect(response.error["code"] as? Int == 408)
        #expect((response.error["message"] as? String)?.contains(
            "the request body is incomplete: 10 of the 100 bytes its Content-Length announced came, then nothing for timeout_keep_alive (1 s)") == true,
            "\(response.text)")
        #expect(rest.isEmpty, "the connection closes after the 408")
        let r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"ok"}"#)
        #expect(r.status == 200)
        try await d.stop()
    }
}
