import ControlProtocol
import Foundation
import HTTPTypes
import Hummingbird
import KvantCore
import NIOCore
import NIOHTTP1

/// An error as the OpenAI API (and vLLM, llama.cpp's server) sends it:
/// `{"error": {"message", "type", "param", "code"}}` with an HTTP status. `code` repeats the status
/// number, as vLLM does; `type` is vLLM's class name for the status (`BadRequestError`, …).
///
/// The one place where HTTP errors are made: engine errors (`KvantError`) map by `reason`
/// (see `init(_:)`); Hummingbird's own errors (404, 413, parse errors) by status.
public struct OpenAIError: Error, HTTPResponseError, Sendable, Equatable {
    public var status: HTTPResponse.Status
    public var message: String
    /// The request field at fault, when one is (`"max_tokens"`, `"messages[2].content"`).
    public var param: String?
    /// Extra response headers (`Retry-After` for 429 and 503).
    public var headers: HTTPFields

    public init(_ status: HTTPResponse.Status, _ message: String, param: String? = nil, retryAfterSeconds: Int? = nil) {
        self.status = status
        self.message = message
        self.param = param
        self.headers = [:]
        if let retryAfterSeconds { headers[.retryAfter] = String(retryAfterSeconds) }
    }

    /// 405 for a known path asked with another method, with the `Allow` header (RFC 9110 §15.5.6).
    public static func methodNotAllowed(_ method: HTTPRequest.Method, path: String, allowed: HTTPRequest.Method) -> OpenAIError {
        var error = OpenAIError(.methodNotAllowed, "\(path) accepts \(allowed.rawValue), not \(method.rawValue)")
        error.headers[.allow] = allowed.rawValue
        return error
    }

    /// 400 naming the field.
    public static func invalidField(_ field: String, _ message: String) -> OpenAIError {
        OpenAIError(.badRequest, "'\(field)': \(message)", param: field)
    }

    /// An engine error by its reason: invalid_argument, failed_precondition and resource_exhausted (a
    /// request that can never fit) → 400; not_found → 404; permission_denied → 403; unavailable → 503;
    /// cancelled → 503 (shutting down); internal → 500.
    public init(_ error: KvantError) {
        switch error.reason {
        case .invalidArgument, .failedPrecondition, .resourceExhausted: self.init(.badRequest, error.message)
        case .notFound: self.init(.notFound, error.message)
        case .permissionDenied: self.init(.forbidden, error.message)
        case .unavailable, .cancelled: self.init(.serviceUnavailable, error.message, retryAfterSeconds: 1)
        case .internal: self.init(.internalServerError, error.message)
        }
    }

    /// Any error thrown while handling a request, as the client should see it.
    public static func from(_ error: Error) -> OpenAIError {
        switch error {
        case let error as OpenAIError: return error
        case let error as KvantError: return OpenAIError(error)
        case is NIOTooManyBytesError:
            return OpenAIError(.contentTooLarge, "the request body is larger than the limit (max_request_body_bytes)")
        case let error as HTTPError:
            let text = error.body ?? (error.status == .notFound ? "no such route" : error.status.reasonPhrase)
            return OpenAIError(error.status, text)
        case let error as any HTTPResponseError:
            return OpenAIError(error.status, error.status.reasonPhrase)
        case is HTTPParserError:
            return OpenAIError(.badRequest, "the request is not valid HTTP/1.1 (a body shorter than its Content-Length, or a bad chunk)")
        case is CancellationError:
            return OpenAIError(.serviceUnavailable, "the request was cancelled (the server is shutting down)", retryAfterSeconds: 1)
        default:
            return OpenAIError(.internalServerError, "internal error: \(Swift.type(of: error))")
        }
    }

    /// vLLM's error type names by status.
    public var type: String {
        switch status.code {
        case 400: return "BadRequestError"
        case 401: return "AuthenticationError"
        case 403: return "PermissionDeniedError"
        case 404: return "NotFoundError"
        case 405: return "MethodNotAllowedError"
        case 408: return "RequestTimeoutError"
        case 413: return "RequestTooLargeError"
        case 429: return "RateLimitError"
        case 503: return "ServiceUnavailableError"
        default: return status.code >= 500 ? "InternalServerError" : "Error"
        }
    }

    struct Body: Encodable {
        struct Detail: Encodable {
            var message: String
            var type: String
            var param: String?
            var code: Int
            func encode(to encoder: Encoder) throws {
                var c = encoder.container(keyedBy: CodingKeys.self)
                try c.encode(message, forKey: .message)
                try c.encode(type, forKey: .type)
                try c.encode(param, forKey: .param)   // null when absent, as OpenAI sends it
                try c.encode(code, forKey: .code)
            }
            enum CodingKeys: String, CodingKey { case message, type, param, code }
        }
        var error: Detail
    }

    /// The JSON body.
    public var body: Data {
        (try? JSONEncoder().encode(Body(error: .init(message: message, type: type, param: param, code: status.code)))) ?? Data()
    }

    public func response(from request: Request, context: some Hummingbird.RequestContext) throws -> Response {
        response()
    }

    public func response() -> Response {
        var headers = self.headers
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    public static func == (a: OpenAIError, b: OpenAIError) -> Bool {
        a.status == b.status && a.message == b.message && a.param == b.param
    }
}

/// Turns every error of the routes below it (and Hummingbird's 404 for unknown routes) into an
/// OpenAI error response, and logs server-side failures.
struct OpenAIErrorMiddleware<Context: Hummingbird.RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            let openAI = OpenAIError.from(error)
            if openAI.status.code >= 500 && openAI.status != .serviceUnavailable {
                context.logger.error("HTTP request failed", metadata: ["path": "\(request.uri.path)", "error": "\(openAI.message)"])
            } else {
                context.logger.debug("HTTP request refused", metadata: ["path": "\(request.uri.path)", "status": "\(openAI.status.code)",
                                                                        "error": "\(openAI.message)"])
            }
            return openAI.response()
        }
    }
}
