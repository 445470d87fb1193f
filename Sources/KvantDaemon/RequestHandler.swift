import ControlProtocol
import Foundation
import KvantCore
import Logging

/// What a request handler knows about the request's origin and how it streams.
public struct RequestContext: Sendable {
    /// `SO_PEERCRED` of the connection; nil when it could not be read (then mutating methods are refused).
    public var peer: PeerCredentials?
    /// Sends a notification on the request's connection; false when the connection is gone.
    public var notify: @Sendable (RPCNotification) async -> Bool

    public init(peer: PeerCredentials?, notify: @escaping @Sendable (RPCNotification) async -> Bool) {
        self.peer = peer
        self.notify = notify
    }
}

/// Decodes a request's params, checks permissions and paths, calls the engine and encodes the
/// reply. The one place engine errors become wire errors (`RPCErrorObject(KvantError)`).
/// `cancel` is handled by the connection (it needs the connection's in-flight table).
public final class RequestHandler: Sendable {
    public let engine: Engine
    public let paths: PathPolicy
    public let access: AccessPolicy
    public let daemonVersion: String
    private let logger: Logger
    /// Called after the model, dtype or scales changed (refreshes systemd's STATUS=).
    private let stateChanged: @Sendable () async -> Void
    /// Phase messages of a running model load (EXTEND_TIMEOUT_USEC / STATUS=).
    private let loadProgress: @Sendable (String) -> Void
    /// Returns once the start-up model is loaded (or its load failed).
    private let waitForStartup: @Sendable () async -> Void
    /// Draining state (`drain`, `health`).
    public let drain: DrainState
    /// Longest wait of `drain` for the requests in flight (`shutdown_timeout_seconds`).
    private let drainTimeout: Duration

    /// - Parameter waitForStartup: every method except `health`, `version` and `drain` waits for it first, so a
    ///   client that connects while the start-up model loads (e.g. the one whose connection started
    ///   kvantd through socket activation) is served with the model rather than `no model loaded`.
    public init(engine: Engine, paths: PathPolicy, access: AccessPolicy, daemonVersion: String, logger: Logger,
                stateChanged: @escaping @Sendable () async -> Void = {},
                loadProgress: @escaping @Sendable (String) -> Void = { _ in },
                waitForStartup: @escaping @Sendable () async -> Void = {},
                drain: DrainState = DrainState(), drainTimeout: Duration = .seconds(30)) {
        self.drain = drain
        self.drainTimeout = drainTimeout
        self.engine = engine
        self.paths = paths
        self.access = access
        self.daemonVersion = daemonVersion
        self.logger = logger
        self.stateChanged = stateChanged
        self.loadProgress = loadProgress
        self.waitForStartup = waitForStartup
    }

    /// Handles one request and returns its response (for notifications the caller drops it).
    public func handle(_ request: RPCRequest, context: RequestContext) async -> RPCResponse {
        guard let method = RPCMethod(rawValue: request.method) else {
            return RPCResponse(id: request.id, error: RPCErrorObject(
                code: RPCErrorCode.methodNotFound,
                message: "unknown method '\(String(request.method.prefix(64)))'; methods: \(RPCMethod.allCases.map(\.rawValue).joined(separator: ", "))",
                reason: .notFound))
        }
        if method != .health && method != .version && method != .drain { await waitForStartup() }
        do {
            if method.isMutating {
                try authorize(method, context.peer)
            }
            let result = try await call(method, request, context)
            return RPCResponse(id: request.id, result: result)
        } catch {
            let error = KvantError.normalized(error)
            if method == .loadModel || method == .reloadScales || method == .setKVDType {
                // Operator actions that change what is served: failures belong in the journal.
                logger.error("\(method.rawValue) failed", metadata: ["reason": "\(error.reason.rawValue)", "error": "\(error.message)"])
            } else if error.reason == .internal {
                logger.error("request failed", metadata: ["method": "\(method.rawValue)", "error": "\(error.message)"])
            } else {
                logger.debug("request refused", metadata: ["method": "\(method.rawValue)", "reason": "\(error.reason.rawValue)"])
            }
            return RPCResponse(id: request.id, error: RPCErrorObject(error))
        }
    }

    private func authorize(_ method: RPCMethod, _ peer: PeerCredentials?) throws {
        guard let peer else {
            throw KvantError(.permissionDenied, "\(method.rawValue): the caller's credentials (SO_PEERCRED) are unknown")
        }
        guard access.mayMutate(peer) else {
            let group = access.groupID.map { "members of gid \($0)" } ?? "no group (socket_group unset)"
            throw KvantError(.permissionDenied,
                             "\(method.rawValue) is allowed only for root, uid \(access.daemonUID) and \(group); caller has uid \(peer.uid) gid \(peer.gid)")
        }
    }

    private func call(_ method: RPCMethod, _ request: RPCRequest, _ context: RequestContext) async throws -> JSONValue {
        switch method {
        case .health:
            _ = try request.decodeParams(EmptyParams.self)
            var health = await engine.health()
            if drain.isDraining { health.status = "draining" }
            return try JSONValue(encoding: health)
        case .version:
            _ = try request.decodeParams(EmptyParams.self)
            return try JSONValue(encoding: VersionResult(
                protocolVersion: controlProtocolVersion, daemonVersion: daemonVersion, backend: engine.backend.name,
                methods: RPCMethod.allCases.map(\.rawValue)))
        case .stats:
            _ = try request.decodeParams(EmptyParams.self)
            return try JSONValue(encoding: try await engine.stats())
        case .loadModel:
            let params = try request.decodeParams(LoadModelParams.self)
            try params.validate()
            let path: String
            let scales: String?
            do {
                path = try paths.existingFile(params.path, field: "path")
                scales = try params.quantizationParamPath.map { try paths.existingFile($0, field: "quantization_param_path") }
            } catch {
                // Refused paths count as failed loads for health/last_error, like failures of the load itself.
                await engine.recordFailure("load-model \(params.path): \(KvantError.normalized(error).message)")
                throw error
            }
            let result = try await engine.loadModel(path: path, kvCacheDType: params.kvCacheDType,
                                                    quantizationParamPath: scales, kvCacheBytes: params.kvCacheBytes,
                                                    maxModelLen: params.maxModelLen, progress: loadProgress)
            await stateChanged()
            return try JSONValue(encoding: result)
        case .unloadModel:
            _ = try request.decodeParams(EmptyParams.self)
            let result = await engine.unloadModel()
            await stateChanged()
            return try JSONValue(encoding: result)
        case .setKVDType:
            let params = try request.decodeParams(SetKVDTypeParams.self)
            let scales = try params.quantizationParamPath.map { try paths.existingFile($0, field: "quantization_param_path") }
            let info = try await engine.setKVCacheDType(params.kvCacheDType, quantizationParamPath: scales)
            await stateChanged()
            return try JSONValue(encoding: info)
        case .reloadScales:
            let params = try request.decodeParams(ReloadScalesParams.self)
            let path: String?
            do {
                path = try params.path.map { try paths.existingFile($0, field: "path") }
            } catch {
                await engine.recordFailure("reload-scales \(params.path ?? ""): \(KvantError.normalized(error).message)")
                throw error
            }
            let report = try await engine.reloadScales(path: path)
            await stateChanged()
            return try JSONValue(encoding: report)
        case .scalesShow:
            _ = try request.decodeParams(EmptyParams.self)
            return try JSONValue(encoding: try await engine.scalesShow())
        case .scalesValidate:
            let params = try request.decodeParams(ScalesValidateParams.self)
            let path = try paths.existingFile(params.path, field: "path")
            return try JSONValue(encoding: try await engine.validateScales(path: path))
        case .tokenize:
            let params = try request.decodeParams(TokenizeParams.self)
            return try JSONValue(encoding: TokenizeResult(tokens: try await engine.tokenize(params.text)))
        case .generate:
            let params = try request.decodeParams(GenerateParams.self)
            let id = request.id
            let stream = params.stream && id != nil
            // n > 1: every choice's tokens are streamed, each notification naming its choice (`index`).
            let indexed = params.n > 1
            let results = try await engine.generate(choices: params) { choice, token in
                guard stream, let id else { return }
                guard let notification = try? RPCNotification(
                    method: .generateToken,
                    params: GenerateTokenNotification(id: id, text: token.text, token: token.token, index: indexed ? choice : nil))
                else { return }
                if await !context.notify(notification) {
                    // The client is gone: stop generating (this choice; the connection's close cancels the others).
                    withUnsafeCurrentTask { $0?.cancel() }
                }
            }
            return try JSONValue(encoding: GenerateResult(choices: results))
        case .perplexity:
            let params = try request.decodeParams(PerplexityParams.self)
            let path = try paths.existingFile(params.path, field: "path")
            let ctx = params.ctx == 0 ? nil : params.ctx
            let progress = progressSender(.perplexityProgress, id: request.id, context: context)
            let result: PerplexityResult
            do {
                result = try await engine.perplexity(path: path, contextLength: ctx, onProgress: progress.report)
            } catch {
                await progress.flush()
                throw error
            }
            await progress.flush()
            return try JSONValue(encoding: result)
        case .calibrate:
            let params = try request.decodeParams(CalibrateParams.self)
            try params.validate()
            let text = try params.textPath.map { try paths.existingFile($0, field: "text_path") }
            let output = try paths.outputFile(params.output, field: "output")
            // Up front: a run takes minutes, its output must not fail only at the end. This is the one
            // policy check (the backend then creates its temporary file before any compute).
            try PathPolicy.checkWritable(output, field: "output", method: "calibrate")
            let calibration = CalibrationRequest(
                textPath: text, numTokens: params.numTokens ?? CalibrationRequest.defaultNumTokens, perHead: params.perHead ?? false,
                tpSize: params.tpSize ?? 1, percentile: params.percentile, separateKV: params.separateKV ?? true,
                outputPath: output)
            let progress = progressSender(.calibrateProgress, id: request.id, context: context)
            let result: CalibrateResult
            do {
                result = try await engine.calibrate(calibration, onProgress: progress.report)
            } catch {
                await progress.flush()
                throw error
            }
            await progress.flush()
            return try JSONValue(encoding: result)
        case .drain:
            let params = try request.decodeParams(DrainParams.self)
            if params.resume == true {
                let wasDraining = drain.isDraining
                guard drain.resume() else {
                    throw KvantError(.failedPrecondition, "drain resume: kvantd is shutting down; that drain cannot be ended")
                }
                if wasDraining { logger.notice("drain ended: new HTTP requests are served again") }
                let n = drain.inFlightCount
                return try JSONValue(encoding: DrainResult(draining: false, inFlight: n, drained: n == 0, reason: nil,
                                                           resumed: wasDraining))
            }
            if !drain.isDraining {
                drain.begin(.drain)
                logger.notice("draining: /health answers 503, new HTTP requests get 503", metadata: ["in_flight": "\(drain.inFlightCount)"])
            }
            if params.wait ?? true { _ = await drain.waitUntilIdle(timeout: drainTimeout) }
            let n = drain.inFlightCount
            return try JSONValue(encoding: DrainResult(draining: drain.isDraining, inFlight: n, drained: n == 0,
                                                       reason: drain.drainReason?.rawValue))
        case .cancel:
            throw KvantError(.internal, "cancel must be handled by the connection")
        }
    }

    /// Progress callbacks come from the compute thread; they are forwarded as notifications, in
    /// order, and all of them are written before the response (`flush` is awaited first).
    private func progressSender(_ method: NotificationMethod, id: RPCID?, context: RequestContext)
        -> (report: @Sendable (Int, Int) -> Void, flush: @Sendable () async -> Void) {
        guard let id else { return ({ _, _ in }, {}) }
        let (stream, continuation) = AsyncStream<ProgressNotification>.makeStream(bufferingPolicy: .bufferingNewest(64))
        let forwarder = Task {
            for await progress in stream {
                if let notification = try? RPCNotification(method: method, params: progress) {
                    _ = await context.notify(notification)
                }
            }
        }
        return ({ done, total in continuation.yield(ProgressNotification(id: id, done: done, total: total)) },
                { continuation.finish(); await forwarder.value })
    }
}
