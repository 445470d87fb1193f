import Foundation
import KvantTestSupport
import Testing

/// Integer fields out of range or not whole, as vLLM's pydantic models judge them: a whole float is an integer
/// (`2.0`, `1e3`), `seed` takes any signed 64-bit integer (-1 included), and a value out of range — also one
/// JSON carries as a float because no 64-bit integer holds it (`1e30`, `2**64`) — is a 400 naming the field and
/// the accepted range, not "expected an integer, got a number".
@Suite("HTTP integer fields: range errors")
struct IntegerFieldTests {
    static let int64Range = "-9223372036854775808...9223372036854775807"

    @Test("seed, max_tokens, n, top_k, logprobs, top_logprobs: out of range → 400 with the field and its range")
    func ranges() async throws {
        let d = try TestHTTPDaemon(tag: "intf")
        try await d.start()
        try await d.loadModel()
        // seed: vLLM's bound is torch.long's, [-2^63, 2^63 - 1].
        try await d.expectError(#"{"prompt": "x", "seed": 1e30}"#, status: 400, param: "seed",
                                contains: ["'seed': must be in \(Self.int64Range), got 1e+30"])
        try await d.expectError(#"{"prompt": "x", "seed": 18446744073709551616}"#, status: 400, param: "seed",
                                contains: ["must be in \(Self.int64Range), got 1.8446744073709552e+19"])
        try await d.expectError(#"{"prompt": "x", "seed": 9223372036854775808}"#, status: 400, param: "seed",
                                contains: ["must be in \(Self.int64Range)"])
        try await d.expectError(#"{"prompt": "x", "seed": -1e19}"#, status: 400, param: "seed", contains: ["must be in \(Self.int64Range)"])
        try await d.expectError(#"{"prompt": "x", "seed": 1.5}"#, status: 400, param: "seed",
                                contains: ["expected an integer in \(Self.int64Range), got 1.5"])
        try await d.expectError(#"{"prompt": "x", "seed": "7"}"#, status: 400, param: "seed", contains: ["expected an integer, got a string"])
        // The other integer fields: the same shape with their own range.
        try await d.expectError(#"{"prompt": "x", "max_tokens": 1e30}"#, status: 400, param: "max_tokens",
                                contains: ["must be in 1...2147483647, got 1e+30"])
        try await d.expectError(#"{"prompt": "x", "max_tokens": 2.5}"#, status: 400, param: "max_tokens",
                                contains: ["expected an integer in 1...2147483647, got 2.5"])
        try await d.expectError(#"{"prompt": "x", "n": 18446744073709551616}"#, status: 400, param: "n", contains: ["must be in 1...16, got 1.8"])
        try await d.expectError(#"{"prompt": "x", "top_k": -1e30}"#, status: 400, param: "top_k", contains: ["must be in -1...2147483647, got -1e+30"])
        try await d.expectError(#"{"prompt": "x", "logprobs": 1e30}"#, status: 400, param: "logprobs", contains: ["must be in 0...20, got 1e+30"])
        try await d.expectError(#"{"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 1e30}"#,
                                path: "/v1/chat/completions", status: 400, param: "top_logprobs", contains: ["must be in 0...20, got 1e+30"])
        try await d.expectError(#"{"prompt": "x", "best_of": 1e30}"#, status: 400, param: "best_of", contains: ["must be in \(Self.int64Range)"])
        // seed + n - 1 past the largest seed: choice n - 1's seed would wrap, so the request is refused.
        try await d.expectError(#"{"prompt": "x", "seed": 9223372036854775807, "n": 2}"#, status: 400, param: "seed",
                                contains: ["seed 9223372036854775807 + n 2 - 1 exceeds the largest seed 9223372036854775807"])
        try await d.expectError(#"{"messages": [{"role": "user", "content": "x"}], "seed": 9223372036854775800, "n": 9}"#,
                                path: "/v1/chat/completions", status: 400, param: "seed", contains: ["exceeds the largest seed"])
        // Accepted as vLLM accepts them: any 64-bit seed (negative too), a whole float as an integer.
        for body in [#"{"prompt": "ok", "seed": -1}"#, #"{"prompt": "ok", "seed": 9223372036854775807}"#,
                     #"{"prompt": "ok", "seed": -9223372036854775808}"#, #"{"prompt": "ok", "seed": 9223372036854775806, "n": 2}"#, #"{"prompt": "ok", "seed": 1e18}"#,
                     #"{"prompt": "ok", "max_tokens": 2.0}"#, #"{"prompt": "ok", "max_tokens": 1e1}"#] {
            let r = try await d.request("POST", "/v1/completions", json: body)
            #expect(r.status == 200, "\(body) → \(r.text)")
        }
        try await d.stop()
    }
}
