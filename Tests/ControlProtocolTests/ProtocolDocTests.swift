import ControlProtocol
import Foundation
import KvantCore
import Testing

/// Every example line of docs/protocol.md decodes with the typed params and results.
@Suite("docs/protocol.md examples")
struct ProtocolDocTests {
    static let docPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("docs/protocol.md").path

    /// The `->`/`<-` lines of the ```jsonrpc blocks.
    static func exampleLines() throws -> [(outgoing: Bool, line: String)] {
        let text = try String(contentsOfFile: docPath, encoding: .utf8)
        var inBlock = false
        var lines: [(Bool, String)] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("```jsonrpc") { inBlock = true; continue }
            if line.hasPrefix("```") { inBlock = false; continue }
            guard inBlock else { continue }
            if line.hasPrefix("-> ") { lines.append((true, String(line.dropFirst(3)))) }
            else if line.hasPrefix("<- ") { lines.append((false, String(line.dropFirst(3)))) }
            else if !line.isEmpty { Issue.record("unexpected line in a jsonrpc block: \(line)") }
        }
        return lines
    }

    static func decodeParams(_ request: RPCRequest) throws {
        switch RPCMethod(rawValue: request.method) {
        case .loadModel?: _ = try request.decodeParams(LoadModelParams.self)
        case .setKVDType?: _ = try request.decodeParams(SetKVDTypeParams.self)
        case .reloadScales?: _ = try request.decodeParams(ReloadScalesParams.self)
        case .scalesValidate?: _ = try request.decodeParams(ScalesValidateParams.self)
        case .generate?: _ = try request.decodeParams(GenerateParams.self)
        case .tokenize?: _ = try request.decodeParams(TokenizeParams.self)
        case .perplexity?: _ = try request.decodeParams(PerplexityParams.self)
        case .calibrate?: _ = try request.decodeParams(CalibrateParams.self)
        case .cancel?: _ = try request.decodeParams(CancelParams.self)
        case .drain?: _ = try request.decodeParams(DrainParams.self)
        case .health?, .version?, .stats?, .unloadModel?, .scalesShow?: _ = try request.decodeParams(EmptyParams.self)
        case nil: break   // an unknown-method example
        }
    }

    static func decodeResult(_ response: RPCResponse, method: RPCMethod) throws {
        switch method {
        case .loadModel: _ = try response.decodeResult(LoadModelResult.self)
        case .unloadModel: _ = try response.decodeResult(UnloadModelResult.self)
        case .health: _ = try response.decodeResult(HealthResult.self)
        case .version: _ = try response.decodeResult(VersionResult.self)
        case .setKVDType: _ = try response.decodeResult(ModelInfo.self)
        case .reloadScales, .scalesValidate: _ = try response.decodeResult(ScalesReport.self)
        case .scalesShow: _ = try response.decodeResult(ScalesShowResult.self)
        case .stats: _ = try response.decodeResult(StatsResult.self)
        case .generate: _ = try response.decodeResult(GenerateResult.self)
        case .tokenize: _ = try response.decodeResult(TokenizeResult.self)
        case .perplexity: _ = try response.decodeResult(PerplexityResult.self)
        case .calibrate: _ = try response.decodeResult(CalibrateResult.self)
        case .cancel: _ = try response.decodeResult(CancelResult.self)
        case .drain: _ = try response.decodeResult(DrainResult.self)
        }
    }

    @Test("every example decodes; every method has an example; errors carry a reason")
    func examplesDecode() throws {
        let lines = try Self.exampleLines()
        #expect(lines.count >= 30)
        var methodByID: [RPCID: String] = [:]
        var documented = Set<String>()
        var errorCount = 0
        for (outgoing, line) in lines {
            if outgoing {
                let request = try WireCodec.decodeRequest(line: Array(line.utf8)).get()
                #expect(request.id != nil, "\(line)")
                methodByID[request.id!] = request.method
                documented.insert(request.method)
                try Self.decodeParams(request)
                continue
            }
            switch try WireCodec.decodeServerMessage(line: Array(line.utf8)) {
            case .notification(let notification):
                switch notification.method {
                case "generate.token": _ = try notification.params.decode(as: GenerateTokenNotification.self)
                case "perplexity.progress", "calibrate.progress": _ = try notification.params.decode(as: ProgressNotification.self)
                default: Issue.record("undocumented notification \(notification.method)")
                }
            case .response(let response):
                if let error = response.error {
                    errorCount += 1
                    #expect(error.data?.reason != nil, "\(line)")
                    #expect(RPCErrorCode.reason(for: error.code) == error.reason || error.code == RPCErrorCode.invalidParams
                            || error.code == RPCErrorCode.invalidRequest || error.code == RPCErrorCode.parseError, "\(line)")
                    continue
                }
                let id = try #require(response.id)
                let method = try #require(methodByID[id].flatMap(RPCMethod.init(rawValue:)), "\(line)")
                try Self.decodeResult(response, method: method)
            }
        }
        #expect(errorCount >= 5)
        #expect(Set(RPCMethod.allCases.map(\.rawValue)).subtracting(documented).isEmpty,
                "methods without an example: \(Set(RPCMethod.allCases.map(\.rawValue)).subtracting(documented))")
    }

    @Test("the exit-code table of the doc matches ClientExitCode")
    func exitCodeTable() throws {
        let text = try String(contentsOfFile: Self.docPath, encoding: .utf8)
        for reason in ErrorReason.allCases {
            let row = text.split(separator: "\n").first { $0.hasPrefix("| `\(reason.rawValue)` |") }
            let cells = try #require(row, "no row for \(reason.rawValue)").split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            #expect(cells.last == String(ClientExitCode.code(for: reason)), "\(reason.rawValue)")
            #expect(cells[1].hasPrefix(String(RPCErrorCode.code(for: reason))), "\(reason.rawValue)")
        }
    }
}
