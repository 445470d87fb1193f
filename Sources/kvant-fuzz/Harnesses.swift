import ChatTemplates
import ControlProtocol
import Foundation
import KVCache
import KvantCore
import KvantHTTP
import ModelFormats
import Tokenizers

/// The fuzz harnesses: each takes arbitrary bytes and feeds them to one parser of untrusted input. A
/// harness may throw (a clear error is the right answer to garbage) but must never crash, hang, leak or
/// run out of memory. `make fuzz` builds this target with libFuzzer (`-sanitize=fuzzer,address`) and runs
/// each harness for a bounded time over its seed corpus (fuzz/corpus/NAME); without libFuzzer the
/// executable replays files through a harness (`kvant-fuzz NAME FILE...`), which is how a crash found
/// by the fuzzer is reproduced.
enum Harness: String, CaseIterable {
    /// One JSON-RPC request line: the line framer, the JSON diagnosis and the request decoder.
    case lineCodec = "line-codec"
    /// A `kv_cache_scales.json`, loaded with vLLM's rules against a 4-layer, 2-KV-head model.
    case scaleFile = "scale-file"
    /// A GGUF file: header, metadata, tensor infos, then the model config and tokenizer built from it.
    case gguf
    /// Text through the BPE and SentencePiece tokenizers of the test fixtures: encode, then decode.
    case tokenizer
    /// A request body of /v1/completions and /v1/chat/completions: fields, sampling, messages, then the
    /// messages rendered with ChatML and with the Llama 3.1 template of the chat-template fixtures.
    case httpBody = "http-body"
    /// A chat template's source: parsed, then rendered over a fixed conversation under tight limits.
    case chatTemplate = "chat-template"

    func run(_ bytes: [UInt8]) {
        switch self {
        case .lineCodec:
            var framer = LineFramer(maxLineBytes: 4096)
            framer.append(bytes)
            while let event = framer.nextLine() {
                if case .line(let line) = event { _ = WireCodec.decodeRequest(line: line) }
            }
            if case .line(let line)? = framer.finish() { _ = WireCodec.decodeRequest(line: line) }
            _ = JSONDiagnosis.diagnose(bytes)
            _ = try? WireCodec.decodeServerMessage(line: bytes)
        case .scaleFile:
            let path = Harness.scratchFile("scales.json", bytes)
            for granularity in [2, 1] {
                _ = try? KVScales.load(path: path, expectedModelType: "llama", numLayers: 4, numKVHeads: granularity)
            }
        case .gguf:
            let path = Harness.scratchFile("model.gguf", bytes)
            if let file = try? GGUFFile(path: path) {
                _ = try? makeTokenizer(from: file)
                for tensor in file.tensors.prefix(64) { _ = file.data(of: tensor).count }
            }
        case .httpBody:
            // Parsed per input: a template held in a global until exit shows as a leak to LeakSanitizer (Swift
            // stores enum payload pointers with tag bits, which its scan does not recognise).
            _ = try? RequestParsing.check(body: bytes, template: Harness.llamaSource.flatMap { try? ChatTemplate(source: $0) })
        case .chatTemplate:
            let limits = ChatTemplate.Limits(maxTemplateBytes: 1 << 16, maxOutputBytes: 1 << 20, maxSteps: 200_000, maxDepth: 100)
            if let template = try? ChatTemplate(source: String(decoding: bytes, as: UTF8.self), limits: limits) {
                _ = try? template.render(messages: Harness.conversation, addGenerationPrompt: true, bosToken: "<s>", eosToken: "</s>",
                                         extraContext: ["enable_thinking": .bool(false)])
            }
        case .tokenizer:
            let text = String(decoding: bytes, as: UTF8.self)
            for tokenizer in Harness.tokenizers {
                let ids = tokenizer.encode(text, addSpecial: true)
                _ = tokenizer.decode(ids)
                _ = tokenizer.encode(text, addSpecial: false, parseSpecial: false)
            }
        }
    }

    /// The tokenizer fixtures of Tests/TokenizersTests/Fixtures (KVANT_FUZZ_FIXTURES overrides the directory).
    static let tokenizers: [any Tokenizer] = {
        let dir = ProcessInfo.processInfo.environment["KVANT_FUZZ_FIXTURES"]
            ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("Tests/TokenizersTests/Fixtures").path
        let names = ["tokenizer_bpe_default.gguf", "tokenizer_bpe_gpt-2.gguf", "tokenizer_spm_prefix.gguf"]
        return names.compactMap { try? makeTokenizer(from: GGUFFile(path: dir + "/" + $0)) }
    }()

    /// Tests/ChatTemplatesTests/Fixtures (KVANT_FUZZ_TEMPLATES overrides the directory).
    static let templateDirectory: String = ProcessInfo.processInfo.environment["KVANT_FUZZ_TEMPLATES"]
        ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Tests/ChatTemplatesTests/Fixtures/templates").path

    /// Llama 3.1's template (system prompt, tools, date): the richest of the fixtures.
    static let llamaSource: String? = FileManager.default.contents(atPath: templateDirectory + "/llama-3.1.jinja")
        .map { String(decoding: $0, as: UTF8.self) }

    static let conversation: [JinjaValue] = [
        .message(role: "system", content: "Be brief."), .message(role: "user", content: "Hi"),
        .message(role: "assistant", textParts: ["Hello", "there"]), .message(role: "user", content: "Bye"),
    ]

    /// Writes `bytes` to a per-process file in /dev/shm (or /tmp) for the parsers that read paths.
    static func scratchFile(_ name: String, _ bytes: [UInt8]) -> String {
        let dir = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let path = "\(dir)/kvant-fuzz-\(getpid())-\(name)"
        _ = bytes.withUnsafeBytes { FileManager.default.createFile(atPath: path, contents: Data($0)) }
        return path
    }

    /// The harness named by KVANT_FUZZ_TARGET.
    static var selected: Harness {
        guard let name = ProcessInfo.processInfo.environment["KVANT_FUZZ_TARGET"], let harness = Harness(rawValue: name) else {
            FileHandle.standardError.write(Data("kvant-fuzz: set KVANT_FUZZ_TARGET to one of: \(allCases.map(\.rawValue).joined(separator: ", "))\n".utf8))
            exit(64)
        }
        return harness
    }
}

#if KVANT_LIBFUZZER
/// libFuzzer's entry point for a program with its own `main` (SwiftPM renames an executable's main to
/// `<module>_main` and links that as `main`, so libFuzzer's own main is not used).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

private let harness = Harness.selected

@_cdecl("kvant_fuzz_main")
func kvantFuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { data, size in
        harness.run(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
        return 0
    }
}
#else
/// Replay: `kvant-fuzz NAME FILE_OR_DIR...` runs every file through the harness NAME.
@main
struct FuzzReplay {
    static func main() {
        let args = Array(CommandLine.arguments.dropFirst())
        guard let name = args.first, let harness = Harness(rawValue: name) else {
            print("usage: kvant-fuzz \(Harness.allCases.map(\.rawValue).joined(separator: "|")) FILE_OR_DIR...")
            exit(64)
        }
        var count = 0
        for arg in args.dropFirst() {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: arg, isDirectory: &isDirectory) else { continue }
            let files = isDirectory.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: arg)) ?? []).sorted().map { arg + "/" + $0 } : [arg]
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { continue }
                harness.run(Array(data))
                count += 1
            }
        }
        print("kvant-fuzz \(name): \(count) inputs replayed, no crash")
    }
}
#endif
