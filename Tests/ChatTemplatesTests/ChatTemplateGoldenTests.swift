import Foundation
import Testing
import ChatTemplates

/// Fixtures written by scripts/oracle/chat_template_goldens.py (Python jinja2 in transformers'
/// apply_chat_template environment). Expected values come from that oracle only.
enum Fixtures {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

    static func text(_ relative: String) throws -> String {
        try String(contentsOf: dir.appendingPathComponent(relative), encoding: .utf8)
    }

    static func json(_ relative: String) throws -> JinjaValue {
        try JinjaValue(jsonBytes: Array(try Data(contentsOf: dir.appendingPathComponent(relative))))
    }

    /// The instant the oracle's strftime_now returned (naive local time there; UTC here).
    static func now(_ goldens: JinjaValue) -> Date {
        guard case .string(let iso)? = goldens["now"] else { return Date(timeIntervalSince1970: 0) }
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withFullDate, .withTime, .withColonSeparatorInTime, .withDashSeparatorInDate]
        f.timeZone = TimeZone(identifier: "UTC")
        return f.date(from: iso) ?? Date(timeIntervalSince1970: 0)
    }

    static let utc = TimeZone(identifier: "UTC")!
}

extension JinjaValue {
    var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    var arrayValue: [JinjaValue] { if case .array(let a) = self { return a } else { return [] } }
    var objectValue: JinjaObject { if case .object(let o) = self { return o } else { return JinjaObject() } }
}

/// First difference between two strings, for failure messages (escaped, short).
func firstDifference(_ a: String, _ b: String) -> String {
    let x = Array(a.unicodeScalars), y = Array(b.unicodeScalars)
    var i = 0
    while i < x.count, i < y.count, x[i] == y[i] { i += 1 }
    func around(_ s: [Unicode.Scalar]) -> String {
        let lo = max(0, i - 20), hi = min(s.count, i + 30)
        return String(PyFormat.stringRepr(PyFormat.fromScalars(s[lo..<hi])))
    }
    return "at scalar \(i) (lengths \(x.count) vs \(y.count)): got \(around(x)) expected \(around(y))"
}

@Suite struct ChatTemplateGoldenTests {
    let goldens: JinjaValue

    init() throws {
        goldens = try Fixtures.json("chat_template_goldens.json")
    }

    /// Every real template x every fixture conversation renders byte-identically to jinja2, or fails
    /// where jinja2 fails (raise_exception with the same message; other errors: any error).
    @Test func realTemplatesRenderLikeTransformers() throws {
        let templates = goldens["templates"]!.objectValue
        #expect(templates.count >= 8)
        var conversations: [String: JinjaValue] = [:]
        for c in try Fixtures.json("conversations.json").arrayValue { conversations[c["name"]!.stringValue!] = c }
        #expect(conversations.count >= 30)
        let now = Fixtures.now(goldens)

        var parsed: [String: ChatTemplate] = [:]
        for (name, meta) in templates {
            parsed[name] = try ChatTemplate(source: try Fixtures.text(meta["file"]!.stringValue!))
        }
        var passed = 0, outputs = 0, errors = 0
        let renders = goldens["renders"]!.arrayValue
        for r in renders {
            let tname = r["template"]!.stringValue!, cname = r["conversation"]!.stringValue!
            let meta = templates[tname]!, conv = conversations[cname]!
            var extra: [String: JinjaValue] = [:]
            for (k, v) in conv["chat_template_kwargs"]?.objectValue ?? JinjaObject() { extra[k] = v }
            let result = Result {
                try parsed[tname]!.render(
                    messages: conv["messages"]!.arrayValue,
                    addGenerationPrompt: conv["add_generation_prompt"] == .bool(true),
                    bosToken: meta["bos_token"]?.stringValue, eosToken: meta["eos_token"]?.stringValue,
                    tools: conv["tools"].map { $0.arrayValue }, documents: conv["documents"].map { $0.arrayValue },
                    extraContext: extra, now: now, timeZone: Fixtures.utc)
            }
            let label = "\(tname) x \(cname)"
            if let expected = r["output"]?.stringValue {
                outputs += 1
                switch result {
                case .success(let got):
                    if got == expected && got.utf8.elementsEqual(expected.utf8) { passed += 1 } else {
                        Issue.record("\(label): \(firstDifference(got, expected))")
                    }
                case .failure(let e): Issue.record("\(label): expected output, got error \(e)")
                }
            } else {
                errors += 1
                let err = r["error"]!
                switch result {
                case .success(let got):
                    Issue.record("\(label): expected \(err["type"]!.stringValue!) '\(err["message"]!.stringValue!)', got output of \(got.count) characters")
                case .failure(let e as ChatTemplateError):
                    if err["type"]?.stringValue == "TemplateError" {
                        if e.kind == .raised && e.message == err["message"]?.stringValue { passed += 1 } else {
                            Issue.record("\(label): expected raise_exception '\(err["message"]!.stringValue!)', got \(e)")
                        }
                    } else {
                        if e.kind != .raised { passed += 1 } else { Issue.record("\(label): expected \(err), got \(e)") }
                    }
                case .failure(let e): Issue.record("\(label): unexpected error type \(e)")
                }
            }
        }
        print("chat-template goldens: \(passed)/\(renders.count) renders match (\(outputs) outputs, \(errors) errors) over \(templates.count) templates x \(conversations.count) conversations")
        #expect(passed == renders.count)
    }

    /// Small templates for lexer, parser and evaluator edge cases, expected values from jinja2.
    @Test func edgeCasesMatchJinja2() throws {
        let now = Fixtures.now(goldens)
        var passed = 0
        let cases = goldens["cases"]!.arrayValue
        for c in cases {
            let name = c["name"]!.stringValue!
            var context: [String: JinjaValue] = [:]
            for (k, v) in c["context"]!.objectValue { context[k] = v }
            let result = Result {
                try ChatTemplate(source: c["template"]!.stringValue!).render(context: context, now: now, timeZone: Fixtures.utc)
            }
            if let expected = c["output"]?.stringValue {
                switch result {
                case .success(let got):
                    if got.utf8.elementsEqual(expected.utf8) { passed += 1 } else {
                        Issue.record("case \(name): \(firstDifference(got, expected))")
                    }
                case .failure(let e): Issue.record("case \(name): expected \(PyFormat.stringRepr(expected)), got error \(e)")
                }
            } else {
                let err = c["error"]!
                let type = err["type"]!.stringValue!
                switch result {
                case .success(let got):
                    Issue.record("case \(name): expected \(type) '\(err["message"]!.stringValue!)', got \(PyFormat.stringRepr(got))")
                case .failure(let e as ChatTemplateError):
                    var ok = true
                    switch type {
                    case "TemplateSyntaxError":
                        ok = e.kind == .syntax && e.line == (err["line"].flatMap { if case .int(let l) = $0 { return l } else { return nil } } ?? -1)
                        if !ok { Issue.record("case \(name): expected syntax error at line \(err["line"]!) '\(err["message"]!.stringValue!)', got \(e)") }
                    case "TemplateError":
                        ok = e.kind == .raised && e.message == err["message"]!.stringValue!
                        if !ok { Issue.record("case \(name): expected raise_exception '\(err["message"]!.stringValue!)', got \(e)") }
                    case "UndefinedError":
                        ok = e.kind == .undefined && e.message == err["message"]!.stringValue!
                        if !ok { Issue.record("case \(name): expected UndefinedError '\(err["message"]!.stringValue!)', got \(e)") }
                    case "SecurityError":
                        ok = e.kind == .security
                        if !ok { Issue.record("case \(name): expected SecurityError, got \(e)") }
                    default:
                        ok = e.kind != .raised && e.kind != .undefined
                        if !ok { Issue.record("case \(name): expected \(type) '\(err["message"]!.stringValue!)', got \(e)") }
                    }
                    if ok { passed += 1 }
                case .failure(let e): Issue.record("case \(name): unexpected error type \(e)")
                }
            }
        }
        print("chat-template edge cases: \(passed)/\(cases.count) match jinja2")
        #expect(passed == cases.count)
    }
}
