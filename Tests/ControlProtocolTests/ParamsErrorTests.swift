import ControlProtocol
import Foundation
import KvantCore
import Testing

/// Bad params are reported in the protocol's words (field, expected values), never with Swift's
/// internal type names or the decoder's generic "not valid JSON".
@Suite("Params error messages")
struct ParamsErrorTests {
    func paramsError(_ line: String) throws -> KvantError? {
        guard case .success(let request) = WireCodec.decodeRequest(line: Array(line.utf8)) else {
            Issue.record("line not decoded: \(line)")
            return nil
        }
        do {
            switch request.method {
            case "set-kv-dtype": _ = try request.decodeParams(SetKVDTypeParams.self)
            case "load-model": _ = try request.decodeParams(LoadModelParams.self)
            case "perplexity": _ = try request.decodeParams(PerplexityParams.self)
            case "calibrate": _ = try request.decodeParams(CalibrateParams.self)
            default: _ = try request.decodeParams(GenerateParams.self)
            }
            return nil
        } catch let error as KvantError { return error }
    }

    @Test("unknown kv_cache_dtype: the message lists the valid values and no Swift type name")
    func badDType() throws {
        let e = try #require(try paramsError(#"{"jsonrpc":"2.0","id":1,"method":"set-kv-dtype","params":{"kv_cache_dtype":"bogus"}}"#))
        #expect(e.reason == .invalidArgument)
        #expect(e.message.contains("'kv_cache_dtype'"), "\(e.message)")
        #expect(e.message.contains("unknown kv_cache_dtype 'bogus'"), "\(e.message)")
        #expect(e.message.contains("auto, fp16, bf16, fp32, int8_pertensor, int8_pertensor_perhead, int8_pertoken"), "\(e.message)")
        #expect(!e.message.contains("KVCacheDType") && !e.message.contains("Cannot initialize"), "\(e.message)")
        let load = try #require(try paramsError(#"{"jsonrpc":"2.0","id":1,"method":"load-model","params":{"path":"/m","kv_cache_dtype":"int4"}}"#))
        #expect(load.message.contains("expected one of: auto"), "\(load.message)")
        // Valid values still decode.
        let ok = try JSONDecoder().decode([KVCacheDType].self, from: Data(#"["auto","int8_pertoken"]"#.utf8))
        #expect(ok == [.auto, .int8PerToken])
    }

    @Test("max_tokens that is not an integer (1e30, 2.5, 99999999999999999999): names the field, says integer", arguments: [
        "1e30", "2.5", "99999999999999999999",
    ])
    func nonIntegerMaxTokens(value: String) throws {
        let e = try #require(try paramsError(#"{"jsonrpc":"2.0","id":1,"method":"generate","params":{"prompt":"x","max_tokens":"# + value + "}}"))
        #expect(e.reason == .invalidArgument)
        #expect(e.message.contains("'max_tokens'"), "\(e.message)")
        #expect(e.message.contains("expected an integer"), "\(e.message)")
        #expect(!e.message.contains("not valid JSON"), "\(e.message)")
    }

    @Test("other integer fields: top_k, seed, kv_cache_bytes, max_model_len, ctx, num_tokens, tp_size")
    func otherIntegerFields() throws {
        let lines = [
            ("top_k", #"{"jsonrpc":"2.0","id":1,"method":"generate","params":{"prompt":"x","top_k":1.5}}"#),
            ("seed", #"{"jsonrpc":"2.0","id":1,"method":"generate","params":{"prompt":"x","seed":1e300}}"#),
            ("kv_cache_bytes", #"{"jsonrpc":"2.0","id":1,"method":"load-model","params":{"path":"/m","kv_cache_bytes":1e40}}"#),
            ("max_model_len", #"{"jsonrpc":"2.0","id":1,"method":"load-model","params":{"path":"/m","max_model_len":0.5}}"#),
            ("ctx", #"{"jsonrpc":"2.0","id":1,"method":"perplexity","params":{"path":"/t","ctx":512.5}}"#),
            ("num_tokens", #"{"jsonrpc":"2.0","id":1,"method":"calibrate","params":{"output":"/o","num_tokens":1e19}}"#),
            ("tp_size", #"{"jsonrpc":"2.0","id":1,"method":"calibrate","params":{"output":"/o","tp_size":2.5}}"#),
        ]
        for (field, line) in lines {
            let e = try #require(try paramsError(line))
            #expect(e.message.contains("'\(field)'") && e.message.contains("expected an integer"), "\(field): \(e.message)")
        }
        // A string is still a type mismatch naming the field.
        let s = try #require(try paramsError(#"{"jsonrpc":"2.0","id":1,"method":"generate","params":{"prompt":"x","max_tokens":"ten"}}"#))
        #expect(s.message.contains("'max_tokens' has the wrong type (expected an integer)"), "\(s.message)")
        // Integral numbers written as 64.0 are integers in JSON terms.
        #expect(try paramsError(#"{"jsonrpc":"2.0","id":1,"method":"generate","params":{"prompt":"x","max_tokens":64}}"#) == nil)
    }
}
