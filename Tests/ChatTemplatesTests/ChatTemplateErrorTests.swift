import Foundation
import Testing
import ChatTemplates

/// Errors, resource limits and the public API. Expected positions and messages are worked out by hand
/// from the templates (or are jinja2's wording, see the golden cases).
@Suite struct ChatTemplateErrorTests {
    private func renderError(_ source: String, _ context: [String: JinjaValue] = [:],
                             limits: ChatTemplate.Limits = .default,
                             sourceLocation: SourceLocation = #_sourceLocation) -> ChatTemplateError?
    {
        do {
            let out = try ChatTemplate(source: source, limits: limits).render(context: context)
            Issue.record("expected an error, got \(out.count) characters", sourceLocation: sourceLocation)
            return nil
        } catch let e as ChatTemplateError {
            return e
        } catch {
            Issue.record("expected ChatTemplateError, got \(error)", sourceLocation: sourceLocation)
            return nil
        }
    }

    private func thrownError(_ body: () throws -> Any) -> ChatTemplateError? {
        do { _ = try body(); return nil } catch { return error as? ChatTemplateError }
    }

    @Test func syntaxErrorNamesLineColumnAndWhatWasExpected() throws {
        // "{{ 1 + }}" on line 3: the expression ends at "}}", column 8.
        let e = try #require(renderError("line1\n{% if true %}x{% endif %}\n{{ 1 + }}"))
        #expect(e.kind == .syntax)
        #expect(e.line == 3)
        #expect(e.column == 8)
        #expect(e.message == "unexpected 'end of print statement'")
        #expect(e.description == "chat template line 3, column 8: syntax error: unexpected 'end of print statement'")

        let unclosed = try #require(renderError("{% for m in messages %}\n{{ m }}\n"))
        #expect(unclosed.kind == .syntax)
        #expect(unclosed.message == "Unexpected end of template. Jinja was looking for the following tags: 'endfor' or 'else'. The innermost block that needs to be closed is 'for'.")

        let mismatch = try #require(renderError("{% if x %}\n  {% endfor %}"))
        #expect(mismatch.line == 2)
        #expect(mismatch.column == 6)
        #expect(mismatch.message.hasPrefix("Encountered unknown tag 'endfor'. Jinja was looking for the following tags: 'elif' or 'else' or 'endif'."), "\(mismatch.message)")

        let include = try #require(renderError("{% include 'other.jinja' %}"))
        #expect(include.kind == .syntax)
        #expect(include.message.contains("cannot load or extend other templates"), "\(include.message)")
    }

    @Test func raiseExceptionCarriesTheTemplatesMessage() throws {
        let source = "{% if messages[0]['role'] != 'user' %}\n  {{ raise_exception('First message must be from the user, not ' ~ messages[0]['role']) }}\n{% endif %}"
        let t = try ChatTemplate(source: source)
        let e = try #require(thrownError {
            try t.render(messages: [.message(role: "assistant", content: "hi")], addGenerationPrompt: true,
                         bosToken: nil, eosToken: nil)
        })
        #expect(e.kind == .raised)
        #expect(e.message == "First message must be from the user, not assistant")
        #expect(e.line == 2)
        #expect(e.description == "chat template line 2, column 6: the template raised an exception: First message must be from the user, not assistant")
        #expect(try t.render(messages: [.message(role: "user", content: "hi")], addGenerationPrompt: true,
                             bosToken: nil, eosToken: nil) == "")
    }

    @Test func runtimeErrorsNameTheConstruct() throws {
        let undefinedAttr = try #require(renderError("{{ 'a' }}\n{{ nope.attr }}"))
        #expect(undefinedAttr.kind == .undefined)
        #expect(undefinedAttr.message == "'nope' is undefined")
        #expect(undefinedAttr.construct == "attribute '.attr'")
        #expect(undefinedAttr.description == "chat template line 2, column 8 (attribute '.attr'): undefined error: 'nope' is undefined")

        let concat = try #require(renderError("{{ 'a' + messages }}", ["messages": [1]]))
        #expect(concat.kind == .runtime)
        #expect(concat.message == "can only concatenate str (not \"list\") to str")
        #expect(concat.construct == "operator '+'")
        #expect(concat.description == "chat template line 1, column 8 (operator '+'): runtime error: can only concatenate str (not \"list\") to str")

        let unsafe = try #require(renderError("{% set xs = [] %}{{ xs.append(1) }}"))
        #expect(unsafe.kind == .security)
        #expect(unsafe.message == "access to attribute 'append' of 'list' object is unsafe.")

        let tojson = try #require(renderError("{{ namespace()|tojson }}"))
        #expect(tojson.construct == "filter 'tojson'")
    }

    @Test func errorsNeverQuoteLongOrRawInput() throws {
        let longName = String(repeating: "a", count: 5000)
        let e1 = try #require(renderError("{% \(longName) %}"))
        #expect(e1.description.count < 200, "\(e1.description)")
        #expect(e1.description.contains("…"))

        let e2 = try #require(renderError("{{ x[k].y }}", ["x": ["a": 1], "k": .string("key\u{1}\n" + String(repeating: "z", count: 3000))]))
        #expect(e2.description.count < 300, "\(e2.description)")
        #expect(!(e2.description.unicodeScalars.contains { $0.value < 0x20 }), "\(e2.description)")

        let huge = String(repeating: "boom\n", count: 10_000)
        let e3 = try #require(renderError("{{ raise_exception(m) }}", ["m": .string(huge)]))
        #expect(e3.message == huge)                 // the message is verbatim...
        #expect(e3.description.count < 500)         // ...its description is capped and escaped
        #expect(!(e3.description.contains("\n")))
    }

    @Test func limitsStopRunawayTemplates() throws {
        var small = ChatTemplate.Limits()
        small.maxOutputBytes = 1000
        let out = try #require(renderError("{% for i in range(100) %}{{ 'x' * 50 }}{% endfor %}", limits: small))
        #expect(out.kind == .limit)
        #expect(out.message == "the rendered text grew past 1000 bytes")

        var fewSteps = ChatTemplate.Limits()
        fewSteps.maxSteps = 10_000
        let loops = try #require(renderError("{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}", limits: fewSteps))
        #expect(loops.kind == .limit)
        #expect(loops.message.contains("10000"), "\(loops.message)")

        // Unbounded recursion, with the default limits, ends in an error (not a stack overflow).
        let recursion = try #require(renderError("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"))
        #expect(recursion.kind == .limit)
        #expect(recursion.message.contains("nested more than 100"), "\(recursion.message)")

        let recursiveLoop = try #require(renderError("{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}"))
        #expect(recursiveLoop.kind == .limit)

        // Big allocations are refused before they happen.
        #expect(renderError("{{ 'x' * 1000000000000 }}")?.kind == .limit)
        #expect(renderError("{{ [1, 2] * 1000000000000 }}")?.kind == .limit)
        #expect(renderError("{{ 'x'|center(1000000000000) }}")?.kind == .limit)
        #expect(renderError("{{ range(100001)|length }}")?.message
                == "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).")

        // Values that live across loop iterations (namespace attributes) cannot form cycles or grow deep.
        #expect(renderError("{% set ns = namespace() %}{% set ns.me = ns %}")?.kind == .limit)
        #expect(renderError("{% set ns = namespace() %}{% set ns.me = [1, {'a': ns}] %}")?.kind == .limit)
        #expect(renderError("{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}")?.kind == .limit)

        // Integers are 64-bit: overflow is an error, never a trap.
        #expect(renderError("{{ 2 ** 64 }}")?.kind == .runtime)
        #expect(renderError("{{ 9223372036854775807 + 1 }}")?.kind == .runtime)
        #expect(renderError("{{ -(-9223372036854775807 - 1) }}")?.kind == .runtime)
        #expect(renderError("{{ (-9223372036854775807 - 1) // -1 }}")?.kind == .runtime)
        #expect(renderError("{{ 1e300|int }}")?.kind == .runtime)
        #expect(renderError("{{ 99999999999999999999 }}")?.kind == .syntax)

        // Input nested deeper than maxDepth is refused before it is converted (recursively) or printed.
        var deep = JinjaValue.int(1)
        for _ in 0..<1000 { deep = .array([deep]) }
        let deepInput = try #require(renderError("{{ x }}", ["x": deep]))
        #expect(deepInput.kind == .invalidArgument)   // the caller's value, not the template, is at fault
        #expect(deepInput.message == "the value of 'x' is nested more than 100 levels deep")

        var tiny = ChatTemplate.Limits()
        tiny.maxTemplateBytes = 10
        #expect(thrownError { try ChatTemplate(source: String(repeating: "x", count: 11), limits: tiny) }?.kind == .limit)
    }

    @Test func deeplyNestedSourceIsASyntaxErrorNotACrash() throws {
        for source in [String(repeating: "(", count: 20_000) + "1" + String(repeating: ")", count: 20_000),
                       "{{ " + String(repeating: "[", count: 20_000) + String(repeating: "]", count: 20_000) + " }}",
                       "{{ " + String(repeating: "not ", count: 20_000) + "x }}",
                       "{{ " + String(repeating: "-", count: 20_000) + "1 }}",
                       String(repeating: "{% if x %}", count: 5_000) + String(repeating: "{% endif %}", count: 5_000)]
        {
            let src = source.hasPrefix("(") ? "{{ " + source + " }}" : source
            let error = thrownError { try ChatTemplate(source: src) }
            #expect(error?.kind == .syntax)
            #expect(error?.message.contains("nested more deeply than 100") ?? false, "\(String(describing: error))")
        }
        #expect(throws: JinjaJSONError.self) { try JinjaValue(json: String(repeating: "[", count: 100_000)) }
    }

    /// The deepest parse and render the default limits allow (an expression nested to maxDepth, and macro
    /// recursion until the depth limit stops it) on a thread with a small stack: 512 KiB in release
    /// builds (the size of a Swift concurrency thread's stack), 4 MiB in debug builds (10x the frames).
    @Test func deepestAllowedRenderFitsInASmallStack() async throws {
        let nestedExpr = "{{ " + String(repeating: "(", count: 49) + "1" + String(repeating: ")", count: 49) + " }}"
        let recursion = "{% macro f(n) %}{% if n > 0 %}{% for i in [1] %}{{ f(n - 1) }}{% endfor %}{% endif %}{% endmacro %}{{ f(1000) }}"
        final class Box: @unchecked Sendable { var results: [String] = [] }
        let box = Box()
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let thread = Thread {
                for src in [nestedExpr, recursion] {
                    do {
                        box.results.append(try ChatTemplate(source: src).render(context: [:]))
                    } catch {
                        box.results.append("error: \((error as? ChatTemplateError)?.kind.rawValue ?? "\(error)")")
                    }
                }
                done.resume()
            }
            #if DEBUG
            thread.stackSize = 4 << 20
            #else
            thread.stackSize = 512 << 10
            #endif
            thread.start()
        }
        #expect(box.results == ["1", "error: limit"])
    }

    @Test func chatMLDefaultIsTheCheckedFixture() throws {
        let fixture = try Fixtures.text("templates/chatml-default.jinja")
        #expect(ChatTemplate.chatML == fixture)
        let t = try ChatTemplate(source: ChatTemplate.chatML)
        let out = try t.render(messages: [.message(role: "system", content: "S"), .message(role: "user", textParts: ["a", "b"])],
                               addGenerationPrompt: true, bosToken: nil, eosToken: nil)
        #expect(out == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\n")
    }

    @Test func contextFollowsTransformers() throws {
        let t = try ChatTemplate(source: "{{ bos_token is defined }} {{ eos_token }} {{ tools is none }} {{ tools is defined }} {{ documents is none }} {{ add_generation_prompt }} {{ enable_thinking }}")
        #expect(try t.render(messages: [], addGenerationPrompt: false, bosToken: nil, eosToken: "</s>",
                             extraContext: ["enable_thinking": false])
                == "False </s> True True True False False")
        #expect(try t.render(messages: [], addGenerationPrompt: true, bosToken: "<s>", eosToken: nil,
                             tools: [["type": "function"]])
                == "True  False True True True ")
        #expect(thrownError {
            try t.render(messages: [], addGenerationPrompt: true, bosToken: nil, eosToken: nil, extraContext: ["messages": []])
        }?.kind == .invalidArgument)
    }

    @Test func strftimeNowUsesTheInjectedClockAndZone() throws {
        let t = try ChatTemplate(source: "{{ strftime_now('%Y-%m-%d %H:%M %a %b %j') }}")
        let instant = Date(timeIntervalSince1970: 1_767_225_600)  // 2026-01-01 00:00:00 UTC
        #expect(try t.render(context: [:], now: instant, timeZone: TimeZone(identifier: "UTC")!) == "2026-01-01 00:00 Thu Jan 001")
        #expect(try t.render(context: [:], now: instant, timeZone: TimeZone(identifier: "America/New_York")!)
                == "2025-12-31 19:00 Wed Dec 365")
    }

    @Test func renderIsSafeConcurrently() throws {
        let t = try ChatTemplate(source: try Fixtures.text("templates/qwen-3.jinja"))
        let messages: [JinjaValue] = [.message(role: "user", content: "hi"), .message(role: "assistant", content: "<think>x</think>ok"),
                                      .message(role: "user", content: "again")]
        let expected = try t.render(messages: messages, addGenerationPrompt: true, bosToken: nil, eosToken: "<|im_end|>")
        let results = UnsafeMutableBufferPointer<Bool>.allocate(capacity: 64)
        defer { results.deallocate() }
        DispatchQueue.concurrentPerform(iterations: 64) { i in
            results[i] = (try? t.render(messages: messages, addGenerationPrompt: true, bosToken: nil, eosToken: "<|im_end|>")) == expected
        }
        #expect(results.allSatisfy { $0 })
    }

    @Test func jSONRoundTripsLikePython() throws {
        // Expected strings are Python's json.dumps(json.loads(src), ensure_ascii=False).
        let src = #"{"b": [1, 2.5, -0.0, 1e20, true, null, "é\"\\\n\u0001"], "a": {"x": {}}, "n": 12345678901234, "s": "\ud83d\ude00"}"#
        let v = try JinjaValue(json: src)
        #expect(v.jsonString == #"{"b": [1, 2.5, -0.0, 1e+20, true, null, "é\"\\\n\u0001"], "a": {"x": {}}, "n": 12345678901234, "s": "😀"}"#)
        #expect(v["n"] == .int(12345678901234))
        #expect(v["b"]?.arrayValue[1] == .double(2.5))
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "01", "\"\\x\"", "tru", "1 2", "\"a\u{1}\""] {
            do {
                _ = try JinjaValue(json: bad)
                Issue.record("accepted invalid JSON \(PyFormat.stringRepr(bad))")
            } catch let error as JinjaJSONError {
                #expect(error.description.hasPrefix("invalid JSON at byte "))
            } catch {
                Issue.record("unexpected error \(error)")
            }
        }
    }
}
