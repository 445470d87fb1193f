import ControlProtocol
import Foundation
import KvantCore
import Testing

@Suite("Wire codec")
struct CodecTests {
    func roundTrip<T: Codable & Equatable>(_ value: T) throws -> T {
        let line = try WireCodec.encodeLine(value)
        #expect(line.last == UInt8(ascii: "\n"))
        #expect(!line.dropLast().contains(UInt8(ascii: "\n")))
        return try WireCodec.decoder.decode(T.self, from: Data(line.dropLast()))
    }

    @Test("params and results round-trip")
    func roundTrips() throws {
        let load = LoadModelParams(path: "/m/a.gguf", kvCacheDType: .int8PerTensorPerHead, quantizationParamPath: "/m/s.json",
                                   kvCacheBytes: 1 << 27, maxModelLen: 2048)
        #expect(try roundTrip(load) == load)
        let generate = GenerateParams(prompt: "line1\nline2 \u{1F600}", maxTokens: 7, temperature: 0.5, topP: 0.9, topK: 40,
                                      minP: 0.05, repetitionPenalty: 1.1, seed: 42, stop: ["\n\n"], stream: true)
        #expect(try roundTrip(generate) == generate)
        let result = GenerateResult(text: "é", tokens: [1, 2], promptTokens: 3, completionTokens: 2, finishReason: .cancelled,
                                    stopReason: nil, timings: GenerateTimings(queueMs: 0, prefillMs: 1, decodeMs: 2,
                                                                              prefillTokensPerSecond: 3, decodeTokensPerSecond: 4))
        #expect(try roundTrip(result) == result)
        let stats = StatsResult(engine: EngineFigures(requestsServed: 3, rssBytes: 1 << 30), model: nil,
                                kvCache: .object(["usage": .double(0.25), "blocks": .array([.int(1), .null, .bool(true)])]))
        #expect(try roundTrip(stats) == stats)
        let scales = ScalesReport(path: nil, layers: 18, perHead: true, min: 0.001, max: 0.5, sha256: "ab", epoch: nil, warnings: ["w"])
        #expect(try roundTrip(scales) == scales)
        let split = ScalesReport(path: "/s", layers: 2, perHead: false, min: 0.001, max: 0.5, sha256: "ab", epoch: 3, warnings: [],
                                 layerScales: [[0.5], [0.4]], layerKeyScales: [[0.001], [0.002]], layerValueScales: [[0.5], [0.4]])
        #expect(try roundTrip(split) == split)
        #expect(try JSONValue(encoding: split)["layer_k_scales"] == .array([.array([.double(0.001)]), .array([.double(0.002)])]))
        let calibrate = CalibrateParams(textPath: "/t", numTokens: 10, perHead: true, tpSize: 2, percentile: 99.9, separateKV: false, output: "/o")
        #expect(try roundTrip(calibrate) == calibrate)
        #expect(try JSONValue(encoding: calibrate)["separate_kv"] == .bool(false))
        let request = try RPCRequest(id: .string("abc"), method: .cancel, params: CancelParams(id: .number(5)))
        #expect(try roundTrip(request) == request)
        let error = RPCResponse(id: .number(1), error: RPCErrorObject(KvantError(.resourceExhausted, "KV cache full")))
        #expect(try roundTrip(error) == error)
    }

    @Test("snake_case field names on the wire")
    func fieldNames() throws {
        let json = try JSONValue(encoding: LoadModelParams(path: "/p", kvCacheDType: .fp16, kvCacheBytes: 5))
        #expect(json == .object(["path": .string("/p"), "kv_cache_dtype": .string("fp16"), "kv_cache_bytes": .int(5)]))
        let figures = try JSONValue(encoding: EngineFigures())
        guard case .object(let object) = figures else { Issue.record("not an object"); return }
        #expect(object.keys.sorted() == ["connections", "decode_batch_mean", "decode_tokens_per_second", "fused_steps", "generated_tokens",
                                         "num_preemptions", "prefill_tokens_per_second", "prompt_tokens", "requests_failed", "requests_running",
                                         "requests_served", "requests_waiting", "rss_bytes", "uptime_seconds"])
    }

    @Test("generate defaults follow vLLM and validation names the field")
    func generateDefaultsAndValidation() throws {
        let request = try WireCodec.decodeRequest(line: Array(#"{"jsonrpc":"2.0","id":1,"method":"generate","params":{"prompt":"hi"}}"#.utf8)).get()
        let params = try request.decodeParams(GenerateParams.self)
        #expect(params == GenerateParams(prompt: "hi"))
        #expect(params.maxTokens == 128 && params.temperature == 1 && params.topP == 1 && params.topK == 0)
        #expect(params.stream == false && params.stop.isEmpty && params.seed == nil)
        let bad: [(GenerateParams, String)] = [
            (GenerateParams(prompt: "", maxTokens: 0), "'max_tokens'"),
            (GenerateParams(prompt: "", temperature: -1), "'temperature'"),
            (GenerateParams(prompt: "", temperature: .nan), "'temperature'"),
            (GenerateParams(prompt: "", topP: 1.5), "'top_p'"),
            (GenerateParams(prompt: "", topK: -2), "'top_k'"),
            (GenerateParams(prompt: "", minP: 2), "'min_p'"),
            (GenerateParams(prompt: "", repetitionPenalty: 0), "'repetition_penalty'"),
            (GenerateParams(prompt: "", stop: Array(repeating: "x", count: 17)), "'stop'"),
            (GenerateParams(prompt: "", stop: [""]), "'stop[0]'"),
            (GenerateParams(prompt: "", stop: [String(repeating: "y", count: 257)]), "'stop[0]'"),
        ]
        for (params, field) in bad {
            #expect { try params.validate() } throws: { error in
                guard let error = error as? KvantError else { return false }
                return error.reason == .invalidArgument && error.message.contains(field)
            }
        }
        #expect(throws: Never.self) { try GenerateParams(prompt: "", topK: -1).validate() }
    }

    @Test("n (parallel sampling): wire field only when > 1, the reply's choices, each choice's seed, range check")
    func parallelSamplingFields() throws {
        // n = 1 stays off the wire (older daemons see the messages they know); n > 1 round-trips.
        var one = GenerateParams(prompt: "p", seed: 9)
        #expect(try JSONValue(encoding: one)["n"] == nil)
        one.n = 3
        #expect(try JSONValue(encoding: one)["n"] == .int(3))
        #expect(try roundTrip(one) == one)
        let request = try WireCodec.decodeRequest(line: Array(#"{"jsonrpc":"2.0","id":1,"method":"generate","params":{"prompt":"x","n":4}}"#.utf8)).get()
        #expect(try request.decodeParams(GenerateParams.self).n == 4)
        let fractional = try WireCodec.decodeRequest(line: Array(#"{"jsonrpc":"2.0","id":1,"method":"generate","params":{"prompt":"x","n":2.5}}"#.utf8)).get()
        #expect { _ = try fractional.decodeParams(GenerateParams.self) } throws: { error in
            (error as? KvantError)?.message.contains("field 'n'") == true
        }
        // Choice i: n 1, seed + i (wrapping), no seed stays none; every other field kept.
        let c2 = one.choice(2)
        #expect(c2.n == 1 && c2.seed == 11 && c2.prompt == "p")
        #expect(GenerateParams(prompt: "p", seed: .max).choice(1).seed == 0)
        #expect(GenerateParams(prompt: "p").choice(5).seed == nil)
        // Range: 1...16, as the HTTP API's `n`.
        for bad in [0, -1, 17] {
            var p = GenerateParams(prompt: "p")
            p.n = bad
            #expect { try p.validate() } throws: { error in
                (error as? KvantError)?.message == "generate: 'n' must be in 1...16, got \(bad)"
            }
        }
        var sixteen = GenerateParams(prompt: "p")
        sixteen.n = 16
        #expect(throws: Never.self) { try sixteen.validate() }
        // seed + n - 1 must not pass the largest seed (Int64.max): choice i's seed would wrap.
        var top = GenerateParams(prompt: "p", seed: UInt64(Int64.max))
        top.n = 2
        #expect { try top.validate() } throws: { error in
            let m = (error as? KvantError)?.message ?? ""
            return m.contains("'seed'") && m.contains("seed 9223372036854775807 + n 2 - 1 exceeds the largest seed 9223372036854775807")
        }
        top.n = 1
        #expect(throws: Never.self) { try top.validate() }
        var below = GenerateParams(prompt: "p", seed: UInt64(Int64.max - 15))
        below.n = 16
        #expect(throws: Never.self) { try below.validate() }
        below.seed = UInt64(Int64.max - 14)
        #expect(throws: KvantError.self) { try below.validate() }
        // Negative seeds (the HTTP API's, as a bit pattern) count up through zero without passing Int64.max.
        #expect(GenerateParams.seedRangeProblem(seed: UInt64(bitPattern: -1), n: 16) == nil)

        // The reply: n = 1 has no `choices` (the shape of before); n > 1 lists every choice, choice 0 at the top.
        func result(_ text: String, _ tokens: [Int], _ finish: FinishReason, stop: String? = nil) -> GenerateResult {
            GenerateResult(text: text, tokens: tokens, promptTokens: 4, completionTokens: tokens.count, finishReason: finish,
                           stopReason: stop, timings: GenerateTimings(queueMs: 0, prefillMs: 1, decodeMs: 2,
                                                                     prefillTokensPerSecond: 3, decodeTokensPerSecond: 4))
        }
        let single = GenerateResult(choices: [result("a", [1], .length)])
        #expect(single.choices == nil)
        guard case .object(let singleObject) = try JSONValue(encoding: single) else { Issue.record("not an object"); return }
        #expect(singleObject["choices"] == nil)
        let many = GenerateResult(choices: [result("a", [1], .length), result("b c", [2, 3], .stop, stop: "eos")])
        #expect(try roundTrip(many) == many)
        #expect(many.text == "a" && many.tokens == [1])
        guard case .array(let wire)? = try JSONValue(encoding: many)["choices"], wire.count == 2 else {
            Issue.record("no choices array of 2"); return
        }
        #expect(wire[1]["index"] == .int(1))
        #expect(wire[1]["text"] == .string("b c"))
        #expect(wire[1]["completion_tokens"] == .int(2))
        #expect(wire[1]["stop_reason"] == .string("eos"))
        #expect(wire[0]["finish_reason"] == .string("length"))
        #expect(wire[0]["prompt_tokens"] == nil)
        // A reply of an older daemon (no choices) still decodes.
        let old = Data(#"{"completion_tokens":1,"finish_reason":"length","prompt_tokens":4,"text":"a","timings":{"decode_ms":2,"decode_tokens_per_second":4,"prefill_ms":1,"prefill_tokens_per_second":3,"queue_ms":0},"tokens":[1]}"#.utf8)
        #expect(try WireCodec.decoder.decode(GenerateResult.self, from: old) == single)

        // generate.token names its choice only for n > 1.
        let indexed = GenerateTokenNotification(id: .number(7), text: "a", token: 97, index: 2)
        #expect(try roundTrip(indexed) == indexed)
        #expect(try JSONValue(encoding: indexed)["index"] == .int(2))
        #expect(try JSONValue(encoding: GenerateTokenNotification(id: .number(7), text: "a", token: 97))["index"] == nil)
    }

    @Test("request decoding errors")
    func requestErrors() throws {
        func failure(_ line: String) -> RPCResponseError? {
            if case .failure(let error) = WireCodec.decodeRequest(line: Array(line.utf8)) { return error }
            return nil
        }
        #expect(failure("{")?.error.code == RPCErrorCode.parseError)
        #expect(failure("{")?.id == nil)
        #expect(failure("\u{FF}")?.error.code == RPCErrorCode.parseError)
        #expect(failure("42")?.error.code == RPCErrorCode.invalidRequest)
        #expect(failure(#"{"jsonrpc":"2.0","id":3}"#)?.error.message.contains("'method'") == true)
        #expect(failure(#"{"jsonrpc":"2.0","id":3}"#)?.id == .number(3))
        #expect(failure(#"{"id":3,"method":"x"}"#)?.error.message.contains("'jsonrpc'") == true)
        #expect(failure(#"{"jsonrpc":"2.0","id":[1],"method":"x"}"#)?.error.message.contains("'id'") == true)
        // "id": null is answered (invalid request, id null), never taken for a silent notification.
        let nullID = failure(#"{"jsonrpc":"2.0","id":null,"method":"health"}"#)
        #expect(nullID?.error.code == RPCErrorCode.invalidRequest && nullID?.id == nil)
        #expect(nullID?.error.message.contains("null ids are not supported") == true)
        #expect(failure(#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#)?.error.code == RPCErrorCode.invalidParams)
        #expect(failure(#"{"jsonrpc":"2.0","id":1,"method":"x","params":5}"#)?.error.code == RPCErrorCode.invalidRequest)
        // CR LF line endings are accepted.
        let ok = try WireCodec.decodeRequest(line: Array("{\"jsonrpc\":\"2.0\",\"id\":\"a\",\"method\":\"health\"}\r".utf8)).get()
        #expect(ok.id == .string("a"))
        #expect(ok.method == "health")
        // A notification (no id).
        #expect(try WireCodec.decodeRequest(line: Array(#"{"jsonrpc":"2.0","method":"health"}"#.utf8)).get().id == nil)
    }

    @Test("params errors name the method and the field")
    func paramsErrors() throws {
        let cases: [(String, String)] = [
            (#"{"prompt":1}"#, "field 'prompt' has the wrong type (expected a string)"),
            (#"{}"#, "missing field 'prompt'"),
            (#"{"prompt":"x","stop":"s"}"#, "field 'stop' has the wrong type"),
            (#"{"prompt":"x","seed":-1}"#, "field 'seed'"),
        ]
        for (params, expected) in cases {
            let line = #"{"jsonrpc":"2.0","id":1,"method":"generate","params":"# + params + "}"
            let request = try WireCodec.decodeRequest(line: Array(line.utf8)).get()
            #expect { _ = try request.decodeParams(GenerateParams.self) } throws: { error in
                guard let error = error as? KvantError else { return false }
                return error.reason == .invalidArgument && error.message.contains("'generate'") && error.message.contains(expected)
            }
        }
        let badDType = try WireCodec.decodeRequest(line: Array(#"{"jsonrpc":"2.0","id":1,"method":"set-kv-dtype","params":{"kv_cache_dtype":"int4"}}"#.utf8)).get()
        #expect(throws: KvantError.self) { _ = try badDType.decodeParams(SetKVDTypeParams.self) }
    }

    @Test("server messages: responses, notifications, garbage")
    func serverMessages() throws {
        let notification = try WireCodec.decodeServerMessage(
            line: Array(#"{"jsonrpc":"2.0","method":"generate.token","params":{"id":7,"text":"a","token":97}}"#.utf8))
        guard case .notification(let n) = notification else { Issue.record("not a notification"); return }
        #expect(try n.params.decode(as: GenerateTokenNotification.self) == GenerateTokenNotification(id: .number(7), text: "a", token: 97))
        let error = try WireCodec.decodeServerMessage(
            line: Array(#"{"jsonrpc":"2.0","id":1,"error":{"code":-32003,"message":"full"}}"#.utf8))
        guard case .response(let response) = error else { Issue.record("not a response"); return }
        #expect(response.error?.reason == .resourceExhausted)   // from the code when data is absent
        #expect(throws: RPCErrorObject.self) { _ = try response.decodeResult(HealthResult.self) }
        #expect(throws: KvantError.self) { _ = try WireCodec.decodeServerMessage(line: Array("nope".utf8)) }
        #expect(throws: KvantError.self) { _ = try WireCodec.decodeServerMessage(line: Array(#"{"jsonrpc":"2.0","id":1}"#.utf8)) }
        // A response with a null id encodes the id explicitly.
        let line = String(decoding: try WireCodec.encodeLine(RPCResponse(id: nil, error: RPCErrorObject(KvantError(.invalidArgument, "x")))), as: UTF8.self)
        #expect(line.contains(#""id":null"#))
    }

    @Test("error codes and exit codes are distinct per reason and map back")
    func errorCodes() {
        let codes = ErrorReason.allCases.map(RPCErrorCode.code(for:))
        #expect(Set(codes).count == ErrorReason.allCases.count)
        for reason in ErrorReason.allCases {
            #expect(RPCErrorCode.reason(for: RPCErrorCode.code(for: reason)) == reason)
        }
        let exits = ErrorReason.allCases.map(ClientExitCode.code(for:))
        #expect(Set(exits).count == ErrorReason.allCases.count)
        #expect(!exits.contains(0) && !exits.contains(1) && !exits.contains(ClientExitCode.usage))
    }

    @Test("line framer: lines, partial input, over-long lines resync")
    func framer() {
        var framer = LineFramer(maxLineBytes: 8)
        framer.append(Array("abc\nde".utf8))
        #expect(framer.nextLine() == .line(Array("abc".utf8)))
        #expect(framer.nextLine() == nil)
        framer.append(Array("f\n".utf8))
        #expect(framer.nextLine() == .line(Array("def".utf8)))
        // 12 bytes without a newline: reported once, bytes dropped until the newline.
        framer.append(Array("0123456789ab".utf8))
        #expect(framer.nextLine() == .overlong(bytesSeen: 12))
        #expect(framer.bufferedByteCount == 0)
        framer.append(Array("cdef".utf8))
        #expect(framer.nextLine() == nil)
        #expect(framer.bufferedByteCount == 0)
        framer.append(Array("gh\nok\n".utf8))
        #expect(framer.nextLine() == .line(Array("ok".utf8)))
        // An over-long line that arrives whole with its newline.
        framer.append(Array("0123456789\nx\n".utf8))
        #expect(framer.nextLine() == .overlong(bytesSeen: 10))
        #expect(framer.nextLine() == .line(Array("x".utf8)))
        // Exactly the limit is fine.
        framer.append(Array("12345678\n".utf8))
        #expect(framer.nextLine() == .line(Array("12345678".utf8)))
    }

    @Test("a lone UTF-16 surrogate escape: the byte position (1-based), the field and what is wrong; a pair decodes")
    func loneSurrogate() throws {
        func failure(_ line: String) -> RPCResponseError? {
            if case .failure(let error) = WireCodec.decodeRequest(line: Array(line.utf8)) { return error }
            return nil
        }
        let lone = failure(#"{"jsonrpc":"2.0","id":3,"method":"generate","params":{"prompt":"\udfff"}}"#)
        #expect(lone?.error.code == RPCErrorCode.parseError)
        #expect(lone?.error.message == "parse error: the line has a string that is no Unicode text: at byte 65 of 73, the string of 'params.prompt' has a lone low surrogate escape (U+DFFF): an escape in \\uDC00-\\uDFFF must follow a high surrogate escape \\uD800-\\uDBFF")
        #expect(JSONDiagnosis.diagnose(Array(#"["\ud800x"]"#.utf8)) == .loneSurrogate(offset: 2, path: "[0]", codeUnit: 0xD800, inKey: false, id: nil))
        #expect(JSONDiagnosis.diagnose(Array(#"{"\uDBFF":1}"#.utf8)) == .loneSurrogate(offset: 2, path: "(the whole line)", codeUnit: 0xDBFF, inKey: true, id: nil))
        #expect(JSONDiagnosis.diagnose(Array(#"{"a":"\ud83d\ude00"}"#.utf8)) == .valid)
        #expect(JSONDiagnosis.diagnose(Array(#"{"a":"\u00e9\u20AC"}"#.utf8)) == .valid)
    }

    @Test("issue 11: parse errors give the byte position; a number out of range names the field and keeps the id")
    func parseErrorDetails() throws {
        func failure(_ line: String) -> RPCResponseError? {
            if case .failure(let error) = WireCodec.decodeRequest(line: Array(line.utf8)) { return error }
            return nil
        }
        // Valid JSON whose number no Double holds: invalid params naming the field, with the request's id.
        let huge = failure(#"{"jsonrpc":"2.0","id":7,"method":"generate","params":{"prompt":"x","max_tokens":1e400}}"#)
        #expect(huge?.id == .number(7))
        #expect(huge?.error.code == RPCErrorCode.invalidParams)
        #expect(huge?.error.message == "'max_tokens' = 1e400 is out of range (numbers must fit a 64-bit float)")
        let nested = failure(#"{"jsonrpc":"2.0","id":"a","method":"generate","params":{"stop":["x"],"seed":-2e308}}"#)
        #expect(nested?.id == .string("a"))
        #expect(nested?.error.message.hasPrefix("'seed' = -2e308 is out of range") == true, "\(String(describing: nested))")
        // Syntax errors: the position (1-based byte) and what was expected there.
        #expect(failure(#"{"jsonrpc":"2.0","id":1,"method" "health"}"#)?.error.message
                == "parse error: the line is not valid JSON: at byte 34 of 42, expected ':' after an object key")
        #expect(failure("{")?.error.message == "parse error: the line is not valid JSON: at the end of the line (1 bytes), expected a string key in double quotes")
        #expect(failure(#"{"a":tru}"#)?.error.message == "parse error: the line is not valid JSON: at byte 9 of 9, expected 'true'")
        #expect(failure(#"{"a":1}x"#)?.error.message
                == "parse error: the line is not valid JSON: at byte 8 of 8, expected the end of the line after the JSON value")
        if case .failure(let bad) = WireCodec.decodeRequest(line: [UInt8(ascii: "{"), 0xFF, UInt8(ascii: "}")]) {
            #expect(bad.error.message == "parse error: the line is not valid UTF-8 (3 bytes)")
        } else {
            Issue.record("invalid UTF-8 was accepted")
        }
        let deep = String(repeating: "[", count: 600) + String(repeating: "]", count: 600)
        #expect(failure(deep)?.error.code == RPCErrorCode.parseError)
    }

    @Test("issue 11: a last line without a newline is returned at the end of the input")
    func framerFinish() {
        var framer = LineFramer(maxLineBytes: 8)
        framer.append(Array("ab\ncd".utf8))
        #expect(framer.nextLine() == .line(Array("ab".utf8)))
        #expect(framer.nextLine() == nil)
        #expect(framer.finish() == .line(Array("cd".utf8)))
        #expect(framer.finish() == nil)
        // A line being discarded as over-long is not returned.
        framer.append(Array("0123456789".utf8))
        #expect(framer.nextLine() == .overlong(bytesSeen: 10))
        framer.append(Array("xy".utf8))
        #expect(framer.nextLine() == nil)
        #expect(framer.finish() == nil)
    }
}
