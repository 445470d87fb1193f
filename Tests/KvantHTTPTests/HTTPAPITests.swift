import ControlProtocol
import Foundation
import KvantCore
import KvantDaemon
import KvantHTTP
import KvantTestSupport
import Testing

/// The HTTP API end to end: an in-process daemon with the fake echo backend, real sockets.
@Suite("HTTP API (fake backend)")
struct HTTPAPITests {
    static func body(_ object: [String: Any]) -> String {
        String(decoding: try! JSONSerialization.data(withJSONObject: object), as: UTF8.self)
    }

    @Test("health, models and unknown routes before and after a model is loaded")
    func healthModelsRoutes() async throws {
        let d = try TestHTTPDaemon(tag: "health")
        try await d.start()
        var r = try await d.request("GET", "/health")
        #expect(r.status == 503)
        #expect(r.json["status"] as? String == "no_model")
        r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"x"}"#)
        #expect(r.status == 503)
        #expect((r.error["message"] as? String)?.contains("no model is loaded") == true)
        #expect(r.headers["retry-after"] != nil)
        r = try await d.request("GET", "/v1/models")
        #expect(r.status == 200)
        #expect((r.json["data"] as? [Any])?.isEmpty == true)

        try await d.loadModel()
        r = try await d.request("GET", "/health")
        #expect(r.status == 200)
        #expect(r.json["status"] as? String == "ok")
        #expect(r.json["model"] as? String == "model")
        r = try await d.request("GET", "/v1/models")
        let model = (r.json["data"] as? [[String: Any]])?.first
        #expect(model?["id"] as? String == "model")
        #expect(model?["object"] as? String == "model")
        #expect(model?["max_model_len"] as? Int == 256)
        #expect((model?["chat_template"] as? String)?.hasPrefix("chatml (default") == true)
        // models.retrieve(id): the card of the served model; another id is 404 naming it.
        r = try await d.request("GET", "/v1/models/model")
        #expect(r.status == 200)
        #expect(r.json["id"] as? String == "model" && r.json["max_model_len"] as? Int == 256)
        r = try await d.request("GET", "/v1/models/gpt-4")
        #expect(r.status == 404)
        #expect((r.error["message"] as? String)?.contains("`gpt-4` does not exist") == true)

        r = try await d.request("GET", "/v1/nothing")
        #expect(r.status == 404)
        #expect(r.error["type"] as? String == "NotFoundError")
        #expect(r.error["code"] as? Int == 404)
        // A known path with the wrong method: 405 naming the allowed one, with `Allow`.
        r = try await d.request("GET", "/v1/completions")
        #expect(r.status == 405)
        #expect(r.headers["allow"] == "POST")
        #expect(r.error["message"] as? String == "/v1/completions accepts POST, not GET")
        r = try await d.request("DELETE", "/health")
        #expect(r.status == 405 && r.headers["allow"] == "GET")
        r = try await d.request("POST", "/v1/models/model", json: "{}")
        #expect(r.status == 405 && r.headers["allow"] == "GET")
        r = try await d.request("OPTIONS", "/v1/models")
        #expect(r.status == 405 && r.headers["allow"] == "GET")
        r = try await d.request("OPTIONS", "/v1/chat/completions")
        #expect(r.status == 405 && r.headers["allow"] == "POST")
        // HEAD: 405 with Allow, as vLLM (FastAPI) answers, and no body: the next request on the connection reads clean.
        let port = d.port
        let (head, headPost, next) = try await offPool { () -> (HTTPTestResponse, HTTPTestResponse, HTTPTestResponse) in
            let c = try RawHTTPConnection(port: port)
            defer { c.close() }
            try c.send(method: "HEAD", path: "/health", body: nil)
            let (status, headers) = try c.readHead()
            try c.send(method: "HEAD", path: "/v1/completions", body: nil)
            let (status2, headers2) = try c.readHead()
            try c.send(method: "GET", path: "/health", body: nil)
            return (HTTPTestResponse(status: status, headers: headers, body: Data()),
                    HTTPTestResponse(status: status2, headers: headers2, body: Data()), try c.readResponse())
        }
        #expect(head.status == 405 && head.headers["allow"] == "GET", "\(head.headers)")
        #expect(headPost.status == 405 && headPost.headers["allow"] == "POST", "\(headPost.headers)")
        #expect(next.status == 200 && next.json["status"] as? String == "ok", "\(next.text)")
        // /tokenize takes a prompt or messages, not both.
        r = try await d.request("POST", "/tokenize", json: #"{"prompt":"a","messages":[{"role":"user","content":"b"}]}"#)
        #expect(r.status == 400 && r.error["param"] as? String == "prompt")
        try await d.stop()
    }

    @Test("completions: plain, budget, token-id prompt, echo, n, several prompts")
    func completions() async throws {
        let d = try TestHTTPDaemon(tag: "compl")
        try await d.start()
        try await d.loadModel()
        var r = try await d.request("POST", "/v1/completions", json: #"{"model":"model","prompt":"Hello","max_tokens":3,"temperature":0}"#)
        #expect(r.status == 200, "\(r.text)")
        #expect(r.json["object"] as? String == "text_completion")
        #expect((r.json["id"] as? String)?.hasPrefix("cmpl-") == true)
        var choices = r.json["choices"] as? [[String: Any]] ?? []
        #expect(choices.first?["text"] as? String == "Hel")
        #expect(choices.first?["finish_reason"] as? String == "length")
        let usage = r.json["usage"] as? [String: Int]
        #expect(usage == ["prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8])

        r = try await d.request("POST", "/v1/completions", json: #"{"prompt":[72,105]}"#)
        choices = r.json["choices"] as? [[String: Any]] ?? []
        #expect(choices.first?["text"] as? String == "Hi")
        #expect(choices.first?["finish_reason"] as? String == "stop")
        #expect(choices.first?["stop_reason"] is NSNull)

        r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"Hi","echo":true}"#)
        #expect((r.json["choices"] as? [[String: Any]])?.first?["text"] as? String == "HiHi")

        r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"Hi","n":3,"temperature":0.7,"seed":5}"#)
        choices = r.json["choices"] as? [[String: Any]] ?? []
        #expect(choices.map { $0["index"] as? Int } == [0, 1, 2])
        #expect(choices.map { $0["text"] as? String } == ["Hi", "Hi", "Hi"])
        #expect((r.json["usage"] as? [String: Int])?["completion_tokens"] == 6)
        #expect((r.json["usage"] as? [String: Int])?["prompt_tokens"] == 2)

        r = try await d.request("POST", "/v1/completions", json: #"{"prompt":["ab","cde"],"n":2}"#)
        choices = r.json["choices"] as? [[String: Any]] ?? []
        #expect(choices.map { $0["text"] as? String } == ["ab", "ab", "cde", "cde"])
        #expect((r.json["usage"] as? [String: Int])?["prompt_tokens"] == 5)

        r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"ab","ignore_eos":true,"max_tokens":5}"#)
        #expect((r.json["choices"] as? [[String: Any]])?.first?["text"] as? String == "ab...")
        try await d.stop()
    }

    @Test("completion logprobs, with and without echo")
    func completionLogprobs() async throws {
        let d = try TestHTTPDaemon(tag: "lp")
        try await d.start()
        try await d.loadModel()
        var r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"Hi","logprobs":2}"#)
        var lp = (r.json["choices"] as? [[String: Any]])?.first?["logprobs"] as? [String: Any] ?? [:]
        #expect(lp["tokens"] as? [String] == ["H", "i"])
        #expect(lp["token_logprobs"] as? [Double] == [-0.25, -0.25])
        #expect(lp["text_offset"] as? [Int] == [0, 1])
        let top = lp["top_logprobs"] as? [[String: Double]] ?? []
        #expect(top.count == 2)
        #expect(top.first == ["H": -0.25, "I": -1, "J": -2])   // the chosen H = 72, then alternatives 73, 74

        // logprobs: 0 still gives the chosen token's entry (OpenAI's "up to logprobs + 1 elements").
        r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"Hi","logprobs":0,"max_tokens":2}"#)
        lp = (r.json["choices"] as? [[String: Any]])?.first?["logprobs"] as? [String: Any] ?? [:]
        #expect(lp["top_logprobs"] as? [[String: Double]] == [["H": -0.25], ["i": -0.25]])

        r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"Hi","logprobs":1,"echo":true,"max_tokens":1}"#)
        let choice = (r.json["choices"] as? [[String: Any]])?.first ?? [:]
        #expect(choice["text"] as? String == "HiH")
        lp = choice["logprobs"] as? [String: Any] ?? [:]
        #expect(lp["tokens"] as? [String] == ["H", "i", "H"])
        let values = lp["token_logprobs"] as? [Any] ?? []
        #expect(values.count == 3)
        #expect(values.first is NSNull)
        #expect(values.dropFirst().compactMap { $0 as? Double } == [-0.25, -0.25])
        #expect(lp["text_offset"] as? [Int] == [0, 1, 2])

        r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"Hi","logprobs":21}"#)
        #expect(r.status == 400)
        #expect(r.error["param"] as? String == "logprobs")
        try await d.stop()
    }

    @Test("streamed chat and completions: SSE framing, role first, usage chunk, [DONE] last, same text as unstreamed")
    func streaming() async throws {
        let d = try TestHTTPDaemon(tag: "sse")
        try await d.start()
        try await d.loadModel()
        let messages = #"[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hello"},{"type":"text","text":"there"}]}]"#
        let plain = try await d.request("POST", "/v1/chat/completions", json: #"{"messages":\#(messages)}"#)
        #expect(plain.status == 200, "\(plain.text)")
        #expect(plain.json["object"] as? String == "chat.completion")
        let message = (plain.json["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any]
        let expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello\nthere<|im_end|>\n<|im_start|>assistant\n"
        #expect(message?["role"] as? String == "assistant")
        #expect(message?["content"] as? String == expected)

        let r = try await d.request("POST", "/v1/chat/completions",
                                    json: #"{"messages":\#(messages),"stream":true,"stream_options":{"include_usage":true}}"#)
        #expect(r.status == 200)
        #expect(r.headers["content-type"] == "text/event-stream")
        let events = try parseSSE(r.text)
        #expect(events.last == "[DONE]")
        #expect(events.filter { $0 == "[DONE]" }.count == 1)
        let chunks = try events.dropLast().map(jsonObject)
        let first = (chunks.first?["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any]
        #expect(first?["role"] as? String == "assistant")
        var content = ""
        var finish: [String] = []
        for chunk in chunks.dropLast() {
            #expect(chunk["object"] as? String == "chat.completion.chunk")
            #expect(chunk["usage"] is NSNull)
            for choice in chunk["choices"] as? [[String: Any]] ?? [] {
                content += (choice["delta"] as? [String: Any])?["content"] as? String ?? ""
                if let reason = choice["finish_reason"] as? String { finish.append(reason) }
            }
        }
        #expect(content == expected)
        #expect(finish == ["stop"])
        let last = chunks.last ?? [:]
        #expect((last["choices"] as? [Any])?.isEmpty == true)
        let usage = last["usage"] as? [String: Int]
        #expect(usage?["completion_tokens"] == expected.utf8.count)
        #expect(usage?["prompt_tokens"] == expected.utf8.count)

        let c = try await d.request("POST", "/v1/completions", json: #"{"prompt":"stream me","stream":true,"n":2}"#)
        let cEvents = try parseSSE(c.text)
        #expect(cEvents.last == "[DONE]")
        var texts = ["", ""]
        for chunk in try cEvents.dropLast().map(jsonObject) {
            #expect(chunk["usage"] == nil)   // only with include_usage
            for choice in chunk["choices"] as? [[String: Any]] ?? [] {
                texts[choice["index"] as! Int] += choice["text"] as? String ?? ""
            }
        }
        #expect(texts == ["stream me", "stream me"])
        try await d.stop()
    }

    @Test("stop strings: cut before the stop, never streamed, stop_reason names it")
    func stopStrings() async throws {
        let d = try TestHTTPDaemon(tag: "stop")
        try await d.start()
        try await d.loadModel()
        var r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"hello world, hello moon","stop":["o w","zz"]}"#)
        var choice = (r.json["choices"] as? [[String: Any]])?.first ?? [:]
        #expect(choice["text"] as? String == "hell")
        #expect(choice["finish_reason"] as? String == "stop")
        #expect(choice["stop_reason"] as? String == "o w")

        r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"hello world, hello moon","stop":"o w","stream":true}"#)
        var text = ""
        for chunk in try parseSSE(r.text).dropLast().map(jsonObject) {
            for c in chunk["choices"] as? [[String: Any]] ?? [] { text += c["text"] as? String ?? "" }
        }
        #expect(text == "hell")

        r = try await d.request("POST", "/v1/chat/completions",
                                json: #"{"messages":[{"role":"user","content":"abc"}],"stop":["\nab"],"stream":true}"#)
        text = ""
        for chunk in try parseSSE(r.text).dropLast().map(jsonObject) {
            for c in chunk["choices"] as? [[String: Any]] ?? [] { text += (c["delta"] as? [String: Any])?["content"] as? String ?? "" }
        }
        #expect(text == "<|im_start|>user")
        choice = [:]
        try await d.stop()
    }

    @Test("errors: OpenAI shape, status, the field named; the daemon keeps serving")
    func errors() async throws {
        let d = try TestHTTPDaemon(tag: "err", backend: FakeBackend(tokenCapacity: 100)) { c, _ in c.kvCacheBytes = 6400 }   // 100 tokens
        try await d.start()
        try await d.loadModel()
        func check(_ json: String, path: String = "/v1/completions", status: Int, param: String?, contains: String) async throws {
            let r = try await d.request("POST", path, json: json)
            #expect(r.status == status, "\(json) → \(r.status) \(r.text)")
            #expect(r.error["code"] as? Int == status)
            #expect((r.error["message"] as? String)?.contains(contains) == true, "\(json) → \(r.text)")
            if let param { #expect(r.error["param"] as? String == param, "\(r.text)") }
            #expect(r.error["type"] is String)
        }
        try await check(#"{"prompt": "x","#, status: 400, param: nil, contains: "not valid JSON")
        try await check(#"[1,2]"#, status: 400, param: nil, contains: "must be a JSON object")
        try await check(#"{"prompt": 5}"#, status: 400, param: "prompt", contains: "expected a string or an array of token ids")
        try await check(#"{"prompt": "x", "max_tokens": "many"}"#, status: 400, param: "max_tokens", contains: "expected an integer, got a string")
        try await check(#"{"prompt": "x", "max_tokens": 0}"#, status: 400, param: "max_tokens", contains: "must be in 1...")
        try await check(#"{"prompt": "x", "temperature": -1}"#, status: 400, param: "temperature", contains: "must be in [0.0, 100.0]")
        try await check(#"{"prompt": "x", "stop": [1]}"#, status: 400, param: "stop[0]", contains: "expected a string")
        try await check(#"{"prompt": "x", "skip_special_tokens": 1}"#, status: 400, param: "skip_special_tokens", contains: "expected a boolean")
        try await check(#"{"prompt": [72, 999]}"#, status: 400, param: "prompt[1]", contains: "outside the vocabulary")
        try await check(#"{"prompt": "x", "model": "gpt-4"}"#, status: 404, param: "model", contains: "`gpt-4` does not exist")
        try await check(#"{"messages": []}"#, path: "/v1/chat/completions", status: 400, param: "messages", contains: "is empty")
        try await check(#"{"messages": [{"role": "robot", "content": "hi"}]}"#, path: "/v1/chat/completions", status: 400,
                        param: "messages[0].role", contains: "unknown role 'robot'")
        try await check(#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#, path: "/v1/chat/completions",
                        status: 400, param: "messages[0].content[0].type", contains: "not supported")
        try await check(#"{"messages": [{"role": "user"}]}"#, path: "/v1/chat/completions", status: 400,
                        param: "messages[0].content", contains: "required")
        try await check(#"{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]}]}"#, path: "/v1/chat/completions",
                        status: 400, param: "messages[0].tool_calls", contains: "not supported")
        try await check(#"{"prompt": "x", "response_format": {"type": "json_object"}}"#, status: 400, param: "response_format.type",
                        contains: "'json_object' is not supported")
        // Valid JSON with a number no double holds: the field is named (as on the control socket).
        try await check(#"{"prompt": "x", "max_tokens": 1e400}"#, status: 400, param: "max_tokens", contains: "1e400 is out of range")
        try await check(#"{"prompt": "x", "temperature": NaN}"#, status: 400, param: nil, contains: "at byte 31")
        let long = String(repeating: "a", count: 300)
        try await check(#"{"prompt": "\#(long)"}"#, status: 400, param: "prompt",
                        contains: "maximum context length is 256 tokens. However, your request has 300 input tokens")
        let mid = String(repeating: "a", count: 200)
        try await check(#"{"prompt": "\#(mid)", "max_tokens": 100}"#, status: 400, param: "max_tokens",
                        contains: "you requested 300 tokens (200 in the input, 100 in the completion)")
        try await check(#"{"prompt": "\#(String(repeating: "b", count: 60))", "max_tokens": 50}"#, status: 400, param: "max_tokens",
                        contains: "needs 110 tokens of KV cache, more than its capacity of 100 tokens")
        // Still serving.
        let r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"ok"}"#)
        #expect(r.status == 200)
        #expect((r.json["choices"] as? [[String: Any]])?.first?["text"] as? String == "ok")
        try await d.stop()
    }

    @Test("a chat template over a rendering limit is blamed on the template and the model, not on messages")
    func templateLimitNamesTemplate() async throws {
        let path = "/tmp/kvh-runaway-\(UUID().uuidString.prefix(8)).jinja"
        try "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let d = try TestHTTPDaemon(tag: "tlimit") { c, _ in c.chatTemplate = path }
        try await d.start()
        try await d.loadModel()
        let r = try await d.request("POST", "/v1/chat/completions", json: #"{"messages": [{"role": "user", "content": "hi"}]}"#)
        #expect(r.status == 400)
        let message = r.error["message"] as? String ?? ""
        #expect(message.hasPrefix("the chat template of model 'model' (file \(path)) went over a rendering limit: "), "\(message)")
        #expect(message.contains("nested more than 100 levels deep"), "\(message)")
        #expect(message.contains("the template is at fault, not the messages"), "\(message)")
        #expect(r.error["param"] is NSNull, "\(r.text)")
        // /tokenize renders the same way.
        let t = try await d.request("POST", "/tokenize", json: #"{"messages": [{"role": "user", "content": "hi"}]}"#)
        #expect(t.status == 400 && (t.error["message"] as? String)?.contains("(file \(path))") == true, "\(t.text)")
        // A too-deep chat_template_kwargs value is the request's fault, and named as such.
        var deep = "1"
        for _ in 0..<150 { deep = "[" + deep + "]" }
        let k = try await d.request("POST", "/v1/chat/completions",
                                    json: #"{"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {"x": \#(deep)}}"#)
        #expect(k.status == 400 && k.error["param"] as? String == "chat_template_kwargs", "\(k.text)")
        try await d.stop()
    }

    @Test("HTTP/1.0: closed after the response without keep-alive, kept open with it; a stream ends by closing, unchunked")
    func http10KeepAlive() async throws {
        // timeout_keep_alive far above the socket's 30 s receive timeout: only the HTTP/1.0 rules can close early.
        let d = try TestHTTPDaemon(tag: "h10") { c, _ in c.timeoutKeepAlive = 300 }
        try await d.start()
        try await d.loadModel()
        let port = d.port
        // Without keep-alive: the response, then the connection closes.
        let (plain, plainLine, rest) = try await offPool { () -> (HTTPTestResponse, String, [UInt8]) in
            let c = try RawHTTPConnection(port: port)
            defer { c.close() }
            try c.sendRaw(Array("GET /v1/models HTTP/1.0\r\n\r\n".utf8))
            let r = try c.readResponse()
            return (r, c.statusLine, try c.readToEOF())
        }
        #expect(plain.status == 200 && plain.json["object"] as? String == "list")
        #expect(plainLine.hasPrefix("HTTP/1.0 200"), "\(plainLine)")
        #expect(plain.headers["connection"]?.lowercased() == "close", "\(plain.headers)")
        #expect(rest.isEmpty)
        // With keep-alive: the response says so and a second request is served on the same connection; then a
        // stream, which has no length: HTTP/1.0 without chunked encoding, its end is the connection's close.
        let body = #"{"prompt": "abc", "max_tokens": 8, "stream": true}"#
        let (kept, streamHead, streamBody) = try await offPool { () -> ([HTTPTestResponse], [String: String], String) in
            let c = try RawHTTPConnection(port: port)
            defer { c.close() }
            var kept: [HTTPTestResponse] = []
            for _ in 0..<2 {
                try c.sendRaw(Array("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".utf8))
                kept.append(try c.readResponse())
            }
            try c.sendRaw(Array(("POST /v1/completions HTTP/1.0\r\nConnection: keep-alive\r\nContent-Type: application/json\r\n"
                                 + "Content-Length: \(body.utf8.count)\r\n\r\n\(body)").utf8))
            let (_, headers) = try c.readHead()
            return (kept, headers, String(decoding: try c.readToEOF(), as: UTF8.self))
        }
        for r in kept {
            #expect(r.status == 200 && r.json["status"] as? String == "ok")
            #expect(r.headers["connection"]?.lowercased() == "keep-alive", "\(r.headers)")
        }
        #expect(streamHead["transfer-encoding"] == nil && streamHead["connection"]?.lowercased() == "close", "\(streamHead)")
        let events = try parseSSE(streamBody)
        #expect(events.last == "[DONE]", "\(events)")
        let text = try events.dropLast().map(jsonObject).compactMap { (($0["choices"] as? [[String: Any]])?.first?["text"] as? String) }
        #expect(text.joined() == "abc", "\(events)")
        // HTTP/1.1 is unchanged: persistent by default.
        let (lines, responses) = try await offPool { () -> ([String], [HTTPTestResponse]) in
            let c = try RawHTTPConnection(port: port)
            defer { c.close() }
            var lines: [String] = [], responses: [HTTPTestResponse] = []
            for _ in 0..<2 {
                try c.send(method: "GET", path: "/health", body: nil)
                responses.append(try c.readResponse())
                lines.append(c.statusLine)
            }
            return (lines, responses)
        }
        #expect(lines.allSatisfy { $0.hasPrefix("HTTP/1.1 200") } && responses.allSatisfy { $0.headers["connection"] == nil }, "\(lines)")
        try await d.stop()
    }

    @Test("a body over max_request_body_bytes gets 413; the next request is served")
    func bodyLimit() async throws {
        let d = try TestHTTPDaemon(tag: "413") { c, _ in c.maxRequestBodyBytes = 1024 }
        try await d.start()
        try await d.loadModel()
        let big = #"{"prompt":"\#(String(repeating: "x", count: 2000))"}"#
        var r = try await d.request("POST", "/v1/completions", json: big)
        #expect(r.status == 413)
        #expect(r.error["type"] as? String == "RequestTooLargeError")
        #expect((r.error["message"] as? String)?.contains("1024") == true)
        r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"fine"}"#)
        #expect(r.status == 200)
        try await d.stop()
    }

    @Test("api_key: 401 without or with a wrong key, served with it; /health and /metrics open")
    func auth() async throws {
        let d = try TestHTTPDaemon(tag: "auth") { c, _ in c.apiKey = "sekret-1" }
        try await d.start()
        try await d.loadModel()
        var r = try await d.request("GET", "/v1/models")
        #expect(r.status == 401)
        #expect(r.error["type"] as? String == "AuthenticationError")
        #expect(r.headers["www-authenticate"] == "Bearer")
        r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"x"}"#, headers: ["Authorization": "Bearer sekret-2"])
        #expect(r.status == 401)
        r = try await d.request("POST", "/tokenize", json: #"{"prompt":"x"}"#)
        #expect(r.status == 401)
        r = try await d.request("GET", "/v1/models", headers: ["Authorization": "Bearer sekret-1"])
        #expect(r.status == 200)
        // The scheme is case-insensitive (RFC 7235); the key is not.
        r = try await d.request("GET", "/v1/models", headers: ["Authorization": "bearer sekret-1"])
        #expect(r.status == 200)
        r = try await d.request("GET", "/v1/models", headers: ["Authorization": "bearer SEKRET-1"])
        #expect(r.status == 401)
        r = try await d.request("GET", "/health")
        #expect(r.status == 200)
        r = try await d.request("GET", "/metrics")
        #expect(r.status == 200)
        try await d.stop()
    }

    @Test("over capacity: 429 with Retry-After while max_num_seqs + max_queued_requests sequences are in flight")
    func overCapacity() async throws {
        let d = try TestHTTPDaemon(tag: "429", backend: FakeBackend(decodeDelay: 0.2)) { c, _ in
            c.maxNumSeqs = 1
            c.maxQueuedRequests = 1
        }
        try await d.start()
        try await d.loadModel()
        let port = d.port
        // Two slow streams take the capacity (one runs, one waits) until the test closes them: 200 tokens of
        // 200 ms each, so on a loaded machine too the first is still running when the third request arrives
        // (the compute thread must stay free: the third request is tokenized on it).
        let prompt = String(repeating: "s", count: 20)
        let body = Data(#"{"prompt":"\#(prompt)","stream":true,"max_tokens":200,"ignore_eos":true}"#.utf8)
        let a = try RawHTTPConnection(port: port)
        try a.send(method: "POST", path: "/v1/completions", body: body)
        let b = try RawHTTPConnection(port: port)
        try b.send(method: "POST", path: "/v1/completions", body: body)
        _ = try await d.waitForStats("one running, one waiting") { $0.engine.requestsRunning == 1 && $0.engine.requestsWaiting == 1 }
        let r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"x"}"#)
        #expect(r.status == 429)
        #expect(r.headers["retry-after"] == "1")
        #expect(r.error["type"] as? String == "RateLimitError")
        #expect((r.error["message"] as? String)?.contains("max_num_seqs + max_queued_requests") == true)
        a.close()
        b.close()
        _ = try await d.waitForStats("both cancelled") { $0.engine.requestsRunning == 0 && $0.engine.requestsWaiting == 0 }
        let ok = try await d.request("POST", "/v1/completions", json: #"{"prompt":"x"}"#)
        #expect(ok.status == 200)
        try await d.stop()
    }

    @Test("a client that disconnects mid-stream (or before a non-streamed reply) frees its KV blocks at once")
    func disconnectFreesBlocks() async throws {
        let d = try TestHTTPDaemon(tag: "disc", backend: FakeBackend(decodeDelay: 0.05))
        try await d.start()
        try await d.loadModel()
        // A short prompt leaves a budget of ~180 steps of 50 ms (max_model_len 256): still running when we leave,
        // even on a loaded machine where noticing the disconnect takes a while.
        let prompt = String(repeating: "d", count: 20)
        let port = d.port
        try await offPool {
            let c = try RawHTTPConnection(port: port)
            try c.send(method: "POST", path: "/v1/chat/completions",
                       body: Data(#"{"messages":[{"role":"user","content":"\#(prompt)"}],"stream":true}"#.utf8))
            let head = try c.readHead()
            guard head.status == 200 else { throw TestFailure("status \(head.status)") }
            _ = try c.readChunk()   // the role chunk: the sequence runs
            c.close()
        }
        var stats = try await d.waitForStats("stream's blocks freed") { s in
            s.engine.requestsRunning == 0 && s.kvCache["used_blocks"]?.intValue == 0 && s.engine.requestsServed == 1
        }
        #expect(stats.engine.generatedTokens < 150)
        // Non-streamed: leave before the reply.
        let c = try RawHTTPConnection(port: port)
        try c.send(method: "POST", path: "/v1/completions", body: Data(#"{"prompt":"\#(prompt)","max_tokens":200}"#.utf8))
        _ = try await d.waitForStats("second request running") { $0.engine.requestsRunning == 1 }
        c.close()
        stats = try await d.waitForStats("request's blocks freed") { s in
            s.engine.requestsRunning == 0 && s.kvCache["used_blocks"]?.intValue == 0 && s.engine.requestsServed == 2
        }
        #expect(stats.engine.generatedTokens < 350)
        let metrics = try await d.request("GET", "/metrics")
        #expect(metrics.text.contains(#"kvant:request_success_total{finished_reason="abort"} 2"#), "\(metrics.text)")
        try await d.stop()
    }

    @Test("/metrics and stats read the same counters; they move by exactly the tokens of a request")
    func metricsMatchStats() async throws {
        let d = try TestHTTPDaemon(tag: "metrics")
        try await d.start()
        try await d.loadModel()
        func value(_ text: String, _ name: String) -> Double? {
            for line in text.split(separator: "\n") where line.hasPrefix(name + " ") { return Double(line.split(separator: " ")[1]) }
            return nil
        }
        let before = try await d.request("GET", "/metrics").text
        #expect(before.contains("# TYPE kvant:num_requests_running gauge"))
        let p0 = value(before, "kvant:prompt_tokens_total") ?? 0
        let g0 = value(before, "kvant:generation_tokens_total") ?? 0
        let r = try await d.request("POST", "/v1/completions", json: #"{"prompt":"abcd","max_tokens":3}"#)
        #expect(r.status == 200)
        let after = try await d.request("GET", "/metrics")
        #expect(after.headers["content-type"]?.hasPrefix("text/plain; version=0.0.4") == true)
        #expect(value(after.text, "kvant:prompt_tokens_total") == p0 + 4)
        #expect(value(after.text, "kvant:generation_tokens_total") == g0 + 3)
        #expect(after.text.contains(#"kvant:request_success_total{finished_reason="length"} 1"#))
        #expect(value(after.text, "kvant:e2e_request_latency_seconds_count") == 1)
        #expect(value(after.text, "kvant:time_to_first_token_seconds_count") == 1)
        #expect(value(after.text, "kvant:inter_token_latency_seconds_count") == 2)
        #expect(value(after.text, "kvant:request_prompt_tokens_sum") == 4)
        #expect(value(after.text, "kvant:request_generation_tokens_sum") == 3)
        #expect(value(after.text, "kvant:num_requests_running") == 0)
        #expect(value(after.text, "kvant:kv_cache_usage_perc") == 0)
        #expect(value(after.text, "kvant:kv_cache_bytes_per_token") == 64)
        #expect(after.text.contains(#"kvant:cache_config_info{"#) && after.text.contains(#"cache_dtype="auto""#))
        let stats = try await d.stats()
        #expect(Double(stats.engine.promptTokens) == value(after.text, "kvant:prompt_tokens_total"))
        #expect(Double(stats.engine.generatedTokens) == value(after.text, "kvant:generation_tokens_total"))
        try await d.stop()
    }

    @Test("/tokenize and /detokenize in vLLM's shapes")
    func tokenize() async throws {
        let d = try TestHTTPDaemon(tag: "tok")
        try await d.start()
        try await d.loadModel()
        var r = try await d.request("POST", "/tokenize", json: #"{"prompt":"Hi"}"#)
        #expect(r.json["count"] as? Int == 2)
        #expect(r.json["tokens"] as? [Int] == [72, 105])
        #expect(r.json["max_model_len"] as? Int == 256)
        r = try await d.request("POST", "/tokenize", json: #"{"prompt":"Hi","return_token_strs":true}"#)
        #expect(r.json["token_strs"] as? [String] == ["H", "i"])
        r = try await d.request("POST", "/tokenize", json: #"{"messages":[{"role":"user","content":"Hi"}]}"#)
        #expect(r.json["count"] as? Int == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n".utf8.count)
        r = try await d.request("POST", "/detokenize", json: #"{"tokens":[72,105]}"#)
        #expect(r.json["prompt"] as? String == "Hi")
        r = try await d.request("POST", "/detokenize", json: #"{"tokens":[72,"i"]}"#)
        #expect(r.status == 400)
        #expect(r.error["param"] as? String == "tokens[1]")
        try await d.stop()
    }

    @Test("graceful shutdown: a stream still running at the deadline ends with finish_reason abort and [DONE]")
    func shutdownEndsStreams() async throws {
        let d = try TestHTTPDaemon(tag: "shut", backend: FakeBackend(decodeDelay: 0.05)) { c, _ in c.shutdownTimeoutSeconds = 0.3 }
        try await d.start()
        try await d.loadModel()
        let prompt = String(repeating: "g", count: 100)   // at least 5 s of decoding
        let c = try RawHTTPConnection(port: d.port)
        try c.send(method: "POST", path: "/v1/completions", body: Data(#"{"prompt":"\#(prompt)","stream":true,"max_tokens":100}"#.utf8))
        let head = try await offPool { try c.readHead() }
        #expect(head.status == 200)
        await d.beginStop()
        let body = try await offPool { () -> String in
            var bytes: [UInt8] = []
            while let chunk = try c.readChunk() { bytes += chunk }
            return String(decoding: bytes, as: UTF8.self)
        }
        c.close()
        let events = try parseSSE(body)
        #expect(events.last == "[DONE]")
        let final = try jsonObject(events[events.count - 2])
        let choice = (final["choices"] as? [[String: Any]])?.first
        #expect(choice?["finish_reason"] as? String == "abort")
        try await d.waitStopped()
    }

    /// Reads a stream to its end; returns the concatenated `text` of its chunks and the last finish_reason.
    static func readStream(_ c: RawHTTPConnection) async throws -> (text: String, finish: String?, events: [String]) {
        let body = try await offPool { () -> String in
            var bytes: [UInt8] = []
            while let chunk = try c.readChunk() { bytes += chunk }
            return String(decoding: bytes, as: UTF8.self)
        }
        let events = try parseSSE(body)
        var text = ""
        var finish: String?
        for event in events where event != "[DONE]" {
            for choice in try jsonObject(event)["choices"] as? [[String: Any]] ?? [] {
                text += choice["text"] as? String ?? ""
                if let reason = choice["finish_reason"] as? String { finish = reason }
            }
        }
        return (text, finish, events)
    }

    /// Polls /health until it answers `status` (an event; the bound only ends a failing test).
    static func waitForHealth(_ d: TestHTTPDaemon, _ status: String) async throws -> HTTPTestResponse {
        for _ in 0..<2000 {
            let r = try await d.request("GET", "/health")
            if r.json["status"] as? String == status { return r }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw TestFailure("/health never answered \(status)")
    }

    @Test("graceful shutdown drains: /health 503 draining, a new request 503 + Retry-After, the stream in flight completes with all its tokens")
    func shutdownDrains() async throws {
        let gate = DecodeGate(holdAt: 3)
        let d = try TestHTTPDaemon(tag: "drain", backend: FakeBackend(gate: gate)) { c, _ in c.shutdownTimeoutSeconds = 60 }
        try await d.start()
        try await d.loadModel()
        let prompt = "drain-me-please"
        let c = try RawHTTPConnection(port: d.port)
        defer { c.close() }
        try c.send(method: "POST", path: "/v1/completions", body: Data(#"{"prompt":"\#(prompt)","stream":true,"max_tokens":64}"#.utf8))
        let head = try await offPool { try c.readHead() }
        #expect(head.status == 200)
        _ = try await d.waitForStats("the stream held at the gate") { _ in gate.waiting == 1 }

        await d.beginStop()
        let health = try await Self.waitForHealth(d, "draining")
        #expect(health.status == 503)
        #expect((health.json["message"] as? String)?.contains("shutting down") == true)
        #expect(health.json["in_flight"] as? Int == 1)
        for path in ["/v1/completions", "/v1/chat/completions"] {
            let refused = try await d.request("POST", path, json: #"{"prompt":"x","messages":[{"role":"user","content":"x"}]}"#)
            #expect(refused.status == 503, "\(path)")
            #expect(refused.headers["retry-after"] == "5", "\(path)")
            #expect(refused.error["type"] as? String == "ServiceUnavailableError", "\(path)")
            #expect(refused.error["code"] as? Int == 503, "\(path)")
            #expect((refused.error["message"] as? String)?.contains("draining") == true, "\(path)")
        }
        #expect(try await d.request("GET", "/v1/models").status == 503)
        #expect(try await d.request("GET", "/metrics").status == 200)

        gate.open()
        let stream = try await Self.readStream(c)
        #expect(stream.text == prompt)
        #expect(stream.finish == "stop")
        #expect(stream.events.last == "[DONE]")
        try await d.waitStopped()
    }

    @Test("drain method: /health 503 draining, new requests 503, in-flight stream completes; drain waits for it; resume serves again")
    func drainMethod() async throws {
        let gate = DecodeGate(holdAt: 2)
        let d = try TestHTTPDaemon(tag: "drainm", backend: FakeBackend(gate: gate)) { c, _ in c.shutdownTimeoutSeconds = 60 }
        try await d.start()
        try await d.loadModel()
        let c = try RawHTTPConnection(port: d.port)
        defer { c.close() }
        try c.send(method: "POST", path: "/v1/completions", body: Data(#"{"prompt":"abcdef","stream":true}"#.utf8))
        #expect(try await offPool { try c.readHead() }.status == 200)
        _ = try await d.waitForStats("the stream held at the gate") { _ in gate.waiting == 1 }

        let socketPath = d.socketPath
        let noWait = try await offPool {
            try ControlClient(socketPath: socketPath, timeout: 120).call(.drain, DrainParams(wait: false), as: DrainResult.self)
        }
        #expect(noWait == DrainResult(draining: true, inFlight: 1, drained: false, reason: "drain"))
        let health = try await d.request("GET", "/health")
        #expect(health.status == 503)
        #expect(health.json["status"] as? String == "draining")
        let control = try await offPool { try ControlClient(socketPath: socketPath, timeout: 120).call(.health, EmptyParams(), as: HealthResult.self) }
        #expect(control.status == "draining")
        let refused = try await d.request("POST", "/v1/completions", json: #"{"prompt":"x"}"#)
        #expect(refused.status == 503)
        #expect(refused.headers["retry-after"] != nil)

        // A waiting drain returns once the stream is done.
        let waiter = Task { try await offPool {
            try ControlClient(socketPath: socketPath, timeout: 60).call(.drain, DrainParams(), as: DrainResult.self)
        } }
        gate.open()
        let stream = try await Self.readStream(c)
        #expect(stream.text == "abcdef")
        #expect(stream.finish == "stop")
        #expect(try await waiter.value == DrainResult(draining: true, inFlight: 0, drained: true, reason: "drain"))

        let resumed = try await offPool {
            try ControlClient(socketPath: socketPath, timeout: 120).call(.drain, DrainParams(resume: true), as: DrainResult.self)
        }
        #expect(resumed.draining == false)
        #expect(try await d.request("GET", "/health").status == 200)
        let served = try await d.request("POST", "/v1/completions", json: #"{"prompt":"xyz"}"#)
        #expect(served.status == 200)
        #expect(((served.json["choices"] as? [[String: Any]])?.first?["text"] as? String) == "xyz")
        try await d.stop()
    }

    @Test("the API on a Unix socket (http_unix_socket)")
    func unixSocket() async throws {
        let d = try TestHTTPDaemon(tag: "unix", tcp: false) { c, dir in c.httpUnixSocket = dir + "/http.sock" }
        try await d.start()
        try await d.loadModel()
        let path = d.dir + "/http.sock"
        let r = try await offPool { () -> HTTPTestResponse in
            let c = try RawHTTPConnection(unixPath: path)
            defer { c.close() }
            try c.send(method: "POST", path: "/v1/completions", body: Data(#"{"prompt":"unix"}"#.utf8))
            return try c.readResponse()
        }
        #expect(r.status == 200)
        #expect((r.json["choices"] as? [[String: Any]])?.first?["text"] as? String == "unix")
        try await d.stop()
        #expect(!FileManager.default.fileExists(atPath: path))
    }
}

@Suite("HTTP helpers")
struct HTTPHelperTests {
    @Test("stop-string hold-back: a tail that may become a stop string waits, a complete one ends the text")
    func holdBack() {
        var h = StopStringHoldBack(stops: ["o w"])
        #expect(h.append("he") == "he")
        #expect(h.append("llo") == "ll")      // "o" may start "o w"
        #expect(h.append(" ") == "")           // "o " too
        #expect(h.append("world") == "")       // "o w" complete: nothing more
        #expect(h.finish(finalText: "hell") == "")
        var k = StopStringHoldBack(stops: ["END"])
        #expect(k.append("abcE") == "abc")
        #expect(k.append("N") == "")
        #expect(k.append("x") == "ENx")
        #expect(k.finish(finalText: "abcENxyz") == "yz")
        var none = StopStringHoldBack(stops: [])
        #expect(none.append("é") == "é")
    }

    @Test("HTTP configuration keys and their errors")
    func configuration() throws {
        let c = try DaemonConfiguration.parse(toml: """
            http_host = "0.0.0.0"
            http_port = 9000
            http_unix_socket = "/run/kvant/http.sock"
            api_key = "k"
            served_model_name = "m"
            chat_template = "/t.jinja"
            max_request_body_bytes = 4096
            max_queued_requests = 3
            max_num_seqs = 2
            shutdown_timeout_seconds = 1.5
            """, file: "k.toml")
        let s = HTTPSettings(c)
        #expect(s.host == "0.0.0.0" && s.port == 9000 && s.unixSocket == "/run/kvant/http.sock")
        #expect(s.apiKey == "k" && s.servedModelName == "m" && s.chatTemplatePath == "/t.jinja")
        #expect(s.maxRequestBodyBytes == 4096 && s.maxQueuedRequests == 3 && s.maxNumSeqs == 2)
        #expect(s.shutdownTimeout == .milliseconds(1500))
        #expect(HTTPSettings(DaemonConfiguration()).port == 8000)
        var off = DaemonConfiguration()
        off.httpPort = 0
        #expect(!HTTPSettings(off).isEnabled)
        for (line, expected) in [("http_port = 70000", "key 'http_port' = 70000 is out of range 0...65535"),
                                 ("api_key = \"\"", "key 'api_key' is empty"),
                                 ("http_port = \"80\"", "key 'http_port' must be an integer"),
                                 ("max_request_body_bytes = 10", "out of range 1024...")] {
            #expect(throws: KvantError.self) { try DaemonConfiguration.parse(toml: line, file: "k.toml") }
            do { _ = try DaemonConfiguration.parse(toml: line, file: "k.toml") } catch let e as KvantError {
                #expect(e.message.contains(expected), "\(e.message)")
            }
        }
    }

    @Test("chat templates: ChatML without a template, the GGUF's own template, the override file's name when given")
    func templates() throws {
        let none = try ChatTemplateResolver(overridePath: nil)
        #expect(try none.resolve(ChatTemplateSource(template: nil, bosToken: "", eosToken: "")).source.hasPrefix("chatml (default"))
        // The model's own template is rendered by the Jinja subset, with its BOS text.
        let gguf = try none.resolve(ChatTemplateSource(
            template: "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content | trim }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
            bosToken: "<s>", eosToken: "</s>"))
        #expect(gguf.source == "gguf tokenizer.chat_template")
        #expect(try gguf.renderer.render(messages: [.init(role: "system", content: " Be brief. "), .init(role: "user", content: "Hi")],
                                         addGenerationPrompt: true, bosToken: "<s>", eosToken: "</s>", extraContext: [:])
            == "<s>[system] Be brief.\n[user] Hi\n[assistant]")
        // A template that raises is a 400 naming the template's message; kwargs reach the template.
        let raising = try none.resolve(ChatTemplateSource(
            template: "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with user') }}{% endif %}{{ greeting }}",
            bosToken: "", eosToken: ""))
        #expect(try raising.renderer.render(messages: [.init(role: "user", content: "x")], addGenerationPrompt: false,
                                            bosToken: "", eosToken: "", extraContext: ["greeting": .string("hello")]) == "hello")
        do {
            _ = try raising.renderer.render(messages: [.init(role: "assistant", content: "x")], addGenerationPrompt: false,
                                            bosToken: "", eosToken: "", extraContext: [:])
            Issue.record("expected raise_exception to refuse")
        } catch let e as OpenAIError {
            #expect(e.status == .badRequest)
            #expect(e.message.contains("Conversations must start with user"), "\(e.message)")
        }
        // A model template that does not parse is a clear error with its position.
        do {
            _ = try none.resolve(ChatTemplateSource(template: "{% for m in messages %}{{ m.content }", bosToken: "", eosToken: ""))
            Issue.record("expected a parse error")
        } catch let e as KvantError {
            #expect(e.message.contains("gguf tokenizer.chat_template") && e.message.contains("line 1"), "\(e.message)")
        }
        let path = "/tmp/kvh-template-\(UUID().uuidString.prefix(8)).jinja"
        try "{{ messages | length }}".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try ChatTemplateResolver(overridePath: path).resolve(ChatTemplateSource(template: "{{ x }}", bosToken: "", eosToken: ""))
        #expect(file.source == "file \(path)")
        #expect(try file.renderer.render(messages: [.init(role: "user", content: "a"), .init(role: "user", content: "b")],
                                         addGenerationPrompt: false, bosToken: "", eosToken: "", extraContext: [:]) == "2")
        #expect(throws: KvantError.self) { try ChatTemplateResolver(overridePath: path + ".missing") }
        #expect(throws: KvantError.self) { try ChatTemplateResolver(overridePath: "/tmp") }
        let text = try JinjaChatRenderer.chatML.render(messages: [.init(role: "user", content: "Hi")], addGenerationPrompt: true,
                                                       bosToken: "", eosToken: "", extraContext: [:])
        #expect(text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    }
}
