import ControlProtocol
import Foundation
import HTTPTypes
import Hummingbird
import KvantCore
import KvantDaemon
import Logging
import NIOCore

/// The request context of the HTTP API: Hummingbird's, plus the connection's channel, whose close
/// cancels the request's generations (a client that goes away frees its KV blocks at once).
public struct KvantRequestContext: Hummingbird.RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// The OpenAI-compatible routes (vLLM's and llama.cpp's server shapes) over the engine's front
/// methods. Every route answers JSON; errors are `OpenAIError`s.
struct OpenAIAPI: Sendable {
    let engine: Engine
    /// True while the start-up model loads (routes that need the model answer 503 "loading").
    let isStartingUp: @Sendable () -> Bool
    let settings: HTTPSettings
    let templates: ChatTemplateResolver
    let tracker: GenerationTracker
    let metrics: MetricsExporter
    let logger: Logger
    /// Models whose chat-template origin was logged (once per model file).
    let templateLog = OnceSet()

    func makeRouter() -> Router<KvantRequestContext> {
        let router = Router(context: KvantRequestContext.self)
        // Middleware first: routes added later are wrapped by it (and so is the 404 of unknown routes).
        router.add(middleware: OpenAIErrorMiddleware())
        router.add(middleware: BearerAuthMiddleware(apiKey: settings.apiKey, openPaths: ["/health", "/metrics"]))
        router.add(middleware: DrainMiddleware(drain: tracker.drain, openPaths: ["/health", "/metrics"]))
        router.get("/health") { _, _ in try await health() }
        router.get("/metrics") { _, _ in await metricsResponse() }
        router.get("/v1/models") { _, _ in try await models() }
        router.get("/v1/models/{id}") { _, context in try await model(id: context.parameters.get("id") ?? "") }
        router.post("/v1/completions") { request, context in try await completions(request, context) }
        router.post("/v1/chat/completions") { request, context in try await chatCompletions(request, context) }
        router.post("/tokenize") { request, _ in try await tokenize(request) }
        router.post("/detokenize") { request, _ in try await detokenize(request) }
        // A known path with another method is 405 with `Allow` (as vLLM's FastAPI answers), not 404. HEAD and
        // OPTIONS too: FastAPI's routes (so vLLM's) add no HEAD to a GET route and no OPTIONS (vLLM's CORS
        // middleware answers only real preflights, with an Origin); a HEAD reply carries no body (swift-nio drops it).
        let routes: [(String, HTTPRequest.Method)] = [
            ("/health", .get), ("/metrics", .get), ("/v1/models", .get), ("/v1/models/{id}", .get),
            ("/v1/completions", .post), ("/v1/chat/completions", .post), ("/tokenize", .post), ("/detokenize", .post),
        ]
        for (path, allowed) in routes {
            for method in [HTTPRequest.Method.get, .head, .post, .put, .patch, .delete, .options] where method != allowed {
                router.on(RouterPath(path), method: method) { _, _ -> Response in
                    throw OpenAIError.methodNotAllowed(method, path: path, allowed: allowed)
                }
            }
        }
        return router
    }

    // MARK: Common

    /// The loaded model, or 503 while the start-up model loads or without a model.
    func requireModel() async throws -> ModelInfo {
        if isStartingUp() {
            throw OpenAIError(.serviceUnavailable, "the model is loading; retry shortly", retryAfterSeconds: 5)
        }
        guard let info = await engine.modelInfo else {
            throw OpenAIError(.serviceUnavailable, "no model is loaded; an operator loads one with 'kvantctl load-model'",
                              retryAfterSeconds: 30)
        }
        return info
    }

    /// The model id clients use: `served_model_name`, else the file's name without `.gguf`.
    func servedName(_ info: ModelInfo) -> String {
        if let name = settings.servedModelName { return name }
        let file = (info.path as NSString).lastPathComponent
        return file.hasSuffix(".gguf") ? String(file.dropLast(5)) : file
    }

    /// 404 when the request names another model (vLLM's message).
    func checkModel(_ fields: RequestFields, _ info: ModelInfo) throws {
        if let model = try fields.string("model"), model != servedName(info) {
            throw OpenAIError(.notFound, "The model `\(model)` does not exist; this server serves `\(servedName(info))`", param: "model")
        }
    }

    /// The request body, at most `max_request_body_bytes` (413 beyond).
    func readBody(_ request: Request) async throws -> RequestFields {
        let limit = settings.maxRequestBodyBytes
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit {
            throw OpenAIError(.contentTooLarge, "the request body is \(length) bytes, more than the limit \(limit) (max_request_body_bytes)")
        }
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: limit)
        } catch is NIOTooManyBytesError {
            throw OpenAIError(.contentTooLarge, "the request body is larger than the limit \(limit) bytes (max_request_body_bytes)")
        }
        return try RequestFields(body: Data(buffer.readableBytesView))
    }

    static func jsonResponse(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(bytes: encodeJSON(value))))
    }

    static func encodeJSON(_ value: JSONValue) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        return (try? encoder.encode(value)) ?? Data("null".utf8)
    }

    // MARK: Health, models, metrics

    /// 200 `{"status":"ok","model":…}` when a model serves; 503 `{"status":"loading"|"no_model"|"draining","message":…}`
    /// (`draining`: the `drain` method or graceful shutdown began; load balancers take the daemon out of rotation).
    func health() async throws -> Response {
        if let reason = tracker.drain.drainReason {
            let message = reason == .shutdown
                ? "the server is shutting down: requests in flight finish, new ones are refused"
                : "the server is draining (kvantctl drain): requests in flight finish, new ones are refused"
            return Self.jsonResponse(.object(["status": .string("draining"), "message": .string(message),
                                              "in_flight": .int(tracker.drain.inFlightCount)]), status: .serviceUnavailable)
        }
        if isStartingUp() {
            return Self.jsonResponse(.object(["status": .string("loading"),
                                              "message": .string("the start-up model is loading")]), status: .serviceUnavailable)
        }
        guard let info = await engine.modelInfo else {
            let failure = await engine.lastFailure
            var body: [String: JSONValue] = ["status": .string("no_model"), "message": .string("no model is loaded")]
            if let failure { body["last_error"] = .string(failure) }
            return Self.jsonResponse(.object(body), status: .serviceUnavailable)
        }
        return Self.jsonResponse(.object(["status": .string("ok"), "model": .string(servedName(info))]))
    }

    func models() async throws -> Response {
        Self.jsonResponse(.object(["object": .string("list"), "data": .array(await modelCards())]))
    }

    /// `GET /v1/models/{id}` (the openai client's `models.retrieve`): the card of the served model, 404 otherwise.
    func model(id: String) async throws -> Response {
        guard let card = await modelCards().first(where: { $0["id"] == .string(id) }) else {
            throw OpenAIError(.notFound, "The model `\(id.prefix(128))` does not exist.", param: "model")
        }
        return Self.jsonResponse(card)
    }

    /// The model cards of `/v1/models`: the loaded model's, none while starting or without a model.
    func modelCards() async -> [JSONValue] {
        var data: [JSONValue] = []
        if !isStartingUp(), let info = await engine.modelInfo {
            let template = await chatTemplateSource()
            data.append(.object([
                "id": .string(servedName(info)), "object": .string("model"), "created": .int(Self.now()),
                "owned_by": .string("kvant"), "root": .string(info.path), "parent": .null,
                "max_model_len": .int(info.maxModelLen), "kv_cache_dtype": .string(info.kvCacheDType.rawValue),
                "chat_template": .string(template),
            ]))
        }
        return data
    }

    /// Where the loaded model's chat prompts come from (see `ChatTemplateResolver.resolve`).
    func chatTemplateSource() async -> String {
        guard let source = await engine.chatTemplate else { return "none (no model)" }
        do { return try templates.resolve(source).source } catch { return "unusable: \(error)" }
    }

    func metricsResponse() async -> Response {
        let text = await metrics.scrape(engine: engine)
        return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                        body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func now() -> Int { Int(Date().timeIntervalSince1970) }

    // MARK: Tokenize (vLLM's shapes)

    /// `{"prompt": text, "add_special_tokens": true}` or `{"messages": […], "add_generation_prompt": true}` →
    /// `{"count", "max_model_len", "tokens", "token_strs"}`.
    func tokenize(_ request: Request) async throws -> Response {
        let fields = try await readBody(request)
        let info = try await requireModel()
        try checkModel(fields, info)
        let tokens: [Int]
        if fields.has("messages") {
            if fields.has("prompt") {
                throw OpenAIError.invalidField("prompt", "give either 'prompt' or 'messages', not both")
            }
            tokens = try await chatPromptTokens(fields)
        } else {
            guard let prompt = try fields.string("prompt") else {
                throw OpenAIError.invalidField("prompt", "required (a string), or give 'messages'")
            }
            tokens = try await engine.tokenize(prompt, addSpecialTokens: try fields.bool("add_special_tokens") ?? true)
        }
        var tokenStrings: JSONValue = .null
        if try fields.bool("return_token_strs") == true {
            var strings: [JSONValue] = []
            for token in tokens { strings.append(.string(try await engine.detokenize([token]))) }
            tokenStrings = .array(strings)
        }
        return Self.jsonResponse(.object([
            "count": .int(tokens.count), "max_model_len": .int(info.maxModelLen),
            "tokens": .array(tokens.map { .int($0) }), "token_strs": tokenStrings,
        ]))
    }

    /// `{"tokens": [ids]}` → `{"prompt": text}`.
    func detokenize(_ request: Request) async throws -> Response {
        let fields = try await readBody(request)
        let info = try await requireModel()
        try checkModel(fields, info)
        let tokens = try tokenIDs(fields, "tokens", vocabSize: info.vocabSize, allowEmpty: true)
        return Self.jsonResponse(.object(["prompt": .string(try await engine.detokenize(tokens))]))
    }

    /// An array of token ids in the vocabulary.
    func tokenIDs(_ fields: RequestFields, _ key: String, vocabSize: Int, allowEmpty: Bool = false) throws -> [Int] {
        guard let items = try fields.array(key) else { throw OpenAIError.invalidField(fields.name(key), "required (an array of token ids)") }
        if items.isEmpty && !allowEmpty { throw OpenAIError.invalidField(fields.name(key), "is empty") }
        return try Self.ids(items, field: fields.name(key), vocabSize: vocabSize)
    }

    /// Token ids of a JSON array; errors name `field[index]`.
    static func ids(_ items: [JSONValue], field: String, vocabSize: Int) throws -> [Int] {
        try items.enumerated().map { index, item in
            guard case .int(let id) = item else {
                throw OpenAIError.invalidField("\(field)[\(index)]", "expected a token id (an integer), got \(RequestFields.typeName(item))")
            }
            guard id >= 0, id < vocabSize else {
                throw OpenAIError.invalidField("\(field)[\(index)]", "token id \(id) is outside the vocabulary (0..<\(vocabSize))")
            }
            return id
        }
    }
}

/// `Authorization: Bearer <api_key>` on every route but `openPaths`, as vLLM's `--api-key` (401 otherwise).
struct BearerAuthMiddleware<Context: Hummingbird.RequestContext>: RouterMiddleware {
    let apiKey: String?
    let openPaths: Set<String>

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let apiKey, !openPaths.contains(request.uri.path) else { return try await next(request, context) }
        let header = request.headers[.authorization] ?? ""
        // The scheme is case-insensitive (RFC 7235 §2.1): "Bearer", "bearer", "BEARER".
        let scheme = "bearer "
        guard header.utf8.count >= scheme.utf8.count, header.prefix(scheme.count).lowercased() == scheme,
              Self.constantTimeEqual(Array(header.utf8.dropFirst(scheme.utf8.count)), Array(apiKey.utf8)) else {
            var error = OpenAIError(.unauthorized, header.isEmpty
                ? "missing API key: send 'Authorization: Bearer <api_key>'"
                : "invalid API key in the Authorization header")
            error.headers[.wwwAuthenticate] = "Bearer"
            throw error
        }
        return try await next(request, context)
    }

    /// Compares without an early exit on the first differing byte.
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var diff = UInt8(a.count == b.count ? 0 : 1)
        for i in 0..<max(a.count, b.count) {
            diff |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
        }
        return diff == 0
    }
}

/// While the daemon drains, every route but `openPaths` answers 503 with `Retry-After` (OpenAI's error
/// shape), before any work: HAProxy's `retry-on 503` resends such a request to another daemon.
struct DrainMiddleware<Context: Hummingbird.RequestContext>: RouterMiddleware {
    let drain: DrainState
    let openPaths: Set<String>

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if let reason = drain.drainReason, !openPaths.contains(request.uri.path) {
            throw GenerationTracker.drainingError(reason)
        }
        return try await next(request, context)
    }
}

/// Keys seen so far; `first(_:)` is true once per key. Thread-safe.
final class OnceSet: @unchecked Sendable {
    private let lock = NSLock()
    private var seen: Set<String> = []
    func first(_ key: String) -> Bool {
        lock.lock(); defer { lock.unlock() }
        return seen.insert(key).inserted
    }
}
