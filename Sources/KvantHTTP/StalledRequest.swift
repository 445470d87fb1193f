import Foundation
import NIOCore
import NIOHTTP1

/// Answers a request whose body stalls, instead of closing without a word: when the connection is closed while a
/// request's body is still being read and no response has begun (Hummingbird closes it once no byte came for
/// `timeout_keep_alive`, e.g. a body shorter than its `Content-Length`), the client first gets
/// `408 Request Timeout` with `Connection: close` and an OpenAI error body saying how many of the announced bytes
/// came (RFC 9110 §15.5.9; nginx answers 408 after `client_body_timeout` likewise). uvicorn, which vLLM runs on,
/// applies no timeout to a request body at all and waits until the client goes.
///
/// Sits between swift-nio's HTTP/1 codec and Hummingbird's conversion (`KvantHTTP1Channel`), where the response
/// can still be written in HTTP/1 parts and the connection state handler's `close` passes through it.
final class StalledRequestHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// `timeout_keep_alive` in seconds, for the message.
    let timeoutSeconds: Int64
    /// A request's head has come and its end not yet.
    private var reading = false
    /// Its `Content-Length`, nil for a chunked body.
    private var expectedBytes: Int?
    private var receivedBytes = 0
    /// Requests begun minus responses ended: 1 when only the stalled request is open (a pipelined request
    /// behind an earlier response in progress gets no 408 in the middle of that response).
    private var open = 0
    /// A response's head is written and its end not yet.
    private var responding = false
    private var inputClosed = false

    init(timeoutSeconds: Int64) { self.timeoutSeconds = timeoutSeconds }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            reading = true
            open += 1
            expectedBytes = head.headers.first(name: "content-length").flatMap { Int($0) }
            receivedBytes = 0
        case .body(let buffer):
            receivedBytes += buffer.readableBytes
        case .end:
            reading = false
        }
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { inputClosed = true }
        context.fireUserInboundEventTriggered(event)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head) where head.status.code >= 200: responding = true
        case .end: responding = false; open -= 1
        default: break
        }
        context.write(data, promise: promise)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all, reading, open == 1, !responding, !inputClosed, context.channel.isActive else {
            context.close(mode: mode, promise: promise)
            return
        }
        reading = false
        open -= 1
        let announced = expectedBytes.map { "\(receivedBytes) of the \($0) bytes its Content-Length announced" }
            ?? "\(receivedBytes) bytes of a chunked body without its last chunk"
        let error = OpenAIError(.requestTimeout,
                                "the request body is incomplete: \(announced) came, then nothing for timeout_keep_alive (\(timeoutSeconds) s); the connection is closed")
        let body = error.body
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(body.count))
        headers.add(name: "connection", value: "close")
        headers.add(name: "server", value: "kvantd")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .requestTimeout, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: written)
        written.futureResult.whenComplete { _ in context.close(mode: mode, promise: promise) }
    }
}
