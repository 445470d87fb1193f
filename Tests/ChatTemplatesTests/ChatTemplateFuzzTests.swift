import Foundation
import Testing
import ChatTemplates

/// SplitMix64: a small seeded generator, so every run mutates the same way.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Templates are untrusted input: thousands of mutated real templates must each either parse and
/// render or fail with a `ChatTemplateError`, never crash or hang. Time is bounded by the limits
/// (steps, depth, output), not asserted.
@Suite struct ChatTemplateFuzzTests {
    static let fragments: [String] = [
        "{%", "%}", "{{", "}}", "{#", "#}", "{%-", "-%}", "{{-", "-}}", "{%+", "+%}", "(", ")", "[", "]", "{", "}",
        "'", "\"", "\\", "\n", "\r\n", " ", "|", "~", "**", "//", "%", ".", ",", ":", "=", "==", "!=", "<", ">",
        " for x in messages ", " endfor ", " if ", " elif ", " else ", " endif ", " set ns.a = ", " macro m(a) ",
        " endmacro ", " call m(1) ", " endcall ", " raw ", " endraw ", " recursive ", " break ", " continue ",
        " loop.index ", " loop(messages) ", "namespace(a=1)", "range(99999)", "messages * 99999",
        "'x' * 1000000", "|tojson(indent=2)", "|map(attribute='role')", "|selectattr('role', 'eq', 'user')",
        "|join", "|int", "|trim", " is defined ", " is not none ", " not ", " and ", " or ", " in ",
        "[::-1]", "[1:]", "[-1]", ".strip()", ".split('x')", "raise_exception('boom')", "strftime_now('%Y')",
        "9223372036854775807", "1e308", "-0.0", "0x", "1_", "é", "😀", "\u{0}", "\u{7f}", "caller()",
    ]

    static func mutate(_ s: String, _ rng: inout SplitMix64) -> String {
        var u = Array(s.unicodeScalars)
        let ops = Int.random(in: 1...4, using: &rng)
        for _ in 0..<ops {
            let n = u.count
            let i = n == 0 ? 0 : Int.random(in: 0...n, using: &rng)
            let j = min(n, i + Int.random(in: 0...12, using: &rng))
            switch Int.random(in: 0..<6, using: &rng) {
            case 0: u.removeSubrange(i..<j)                                  // delete a span
            case 1: u.insert(contentsOf: fragments.randomElement(using: &rng)!.unicodeScalars, at: i)
            case 2: u.insert(contentsOf: u[i..<j], at: min(u.count, j))       // duplicate a span
            case 3: if i < n { u[i] = Unicode.Scalar(UInt8.random(in: 0x20...0x7E, using: &rng)) }
            case 4: u = Array(u[..<i])                                         // truncate
            default:                                                           // swap two spans
                let k = n == 0 ? 0 : Int.random(in: 0...n, using: &rng)
                let l = min(n, k + Int.random(in: 0...12, using: &rng))
                if j <= k {
                    let a = Array(u[i..<j]), b = Array(u[k..<l])
                    u.replaceSubrange(k..<l, with: a)
                    u.replaceSubrange(i..<j, with: b)
                }
            }
        }
        return PyFormat.fromScalars(u)
    }

    @Test func mutatedTemplatesNeverCrash() throws {
        var seeds: [String] = []
        let dir = Fixtures.dir.appendingPathComponent("templates")
        for f in try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() where f.hasSuffix(".jinja") {
            seeds.append(try String(contentsOf: dir.appendingPathComponent(f), encoding: .utf8))
        }
        for c in try Fixtures.json("chat_template_goldens.json")["cases"]!.arrayValue {
            seeds.append(c["template"]!.stringValue!)
        }
        let messages: [JinjaValue] = [
            .message(role: "system", content: "sys"), .message(role: "user", content: "hi <think>x</think>"),
            .message(role: "assistant", content: "ok"), .message(role: "user", textParts: ["a", "b"]),
        ]
        var limits = ChatTemplate.Limits()
        limits.maxSteps = 20_000
        limits.maxOutputBytes = 200_000
        var rng = SplitMix64(state: 0x4B76_616E_7421)
        var parsed = 0, rendered = 0, syntaxErrors = 0, renderErrors = 0
        for _ in 0..<2000 {
            let source = Self.mutate(seeds.randomElement(using: &rng)!, &rng)
            let template: ChatTemplate
            do {
                template = try ChatTemplate(source: source, limits: limits)
                parsed += 1
            } catch let e as ChatTemplateError {
                #expect(e.kind == .syntax || e.kind == .limit, "\(e)")
                #expect(e.line >= 1)
                syntaxErrors += 1
                continue
            }
            do {
                let out = try template.render(messages: messages, addGenerationPrompt: true, bosToken: "<s>",
                                              eosToken: "</s>", tools: [["type": "function", "function": ["name": "f"]]],
                                              now: Date(timeIntervalSince1970: 0), timeZone: Fixtures.utc)
                #expect(out.utf8.count <= limits.maxOutputBytes)
                rendered += 1
            } catch let e as ChatTemplateError {
                #expect(e.kind != .syntax && e.kind != .invalidArgument, "\(e)")
                #expect(e.description.count < 600)
                renderErrors += 1
            }
        }
        print("chat-template fuzz: 2000 mutated templates: \(parsed) parsed (\(rendered) rendered, \(renderErrors) render errors), \(syntaxErrors) syntax errors")
        // The mutations must exercise both the parser's errors and the evaluator.
        #expect(rendered > 200)
        #expect(syntaxErrors > 200)
        #expect(renderErrors > 50)
    }
}
