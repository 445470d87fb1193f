import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1

/// Hummingbird's HTTP/1 channel with HTTP/1.0's connection rules, which Hummingbird loses: it converts requests to
/// the version-free swift-http-types, so an HTTP/1.0 request (persistent only with `Connection: keep-alive`,
/// RFC 9112 §9.3) was kept open like HTTP/1.1 until `timeout_keep_alive`, and a streamed response came chunked,
/// which HTTP/1.0 clients cannot read. `HTTP10ConnectionHandler` sits between swift-nio's HTTP/1 codec and
/// Hummingbird's conversion, where the version is still known.
struct KvantHTTP1Channel: ServerChildChannel, HTTPChannelHandler {
    typealias Value = HTTP1Channel.Value
    let base: HTTP1Channel

    var responder: HTTPChannelHandler.Responder { base.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        base.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let decoder = try channel.pipeline.syncOperations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
            let http10 = HTTP10ConnectionHandler()
            try channel.pipeline.syncOperations.addHandler(http10, position: .after(decoder))
            if let idle = base.configuration.idleTimeout {
                let seconds = idle.nanoseconds / 1_000_000_000
                try channel.pipeline.syncOperations.addHandler(StalledRequestHandler(timeoutSeconds: seconds), position: .after(http10))
            }
            return value
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

extension HTTPServerBuilder {
    /// `.http1(configuration:)` with HTTP/1.0's connection rules (`KvantHTTP1Channel`).
    static func kvantHTTP1(configuration: HTTP1Channel.Configuration) -> HTTPServerBuilder {
        .init { responder in KvantHTTP1Channel(base: HTTP1Channel(responder: responder, configuration: configuration)) }
    }
}

/// HTTP/1.0 connection handling (RFC 9112 §9.3, RFC 9110 §7.6.1):
/// - a request without `Connection: keep-alive` gets its response and the connection is closed after it
///   (the request reaches Hummingbird with `Connection: close`, so it stops reading, and the response says `close`);
/// - with `Connection: keep-alive`, a response with a `Content-Length` says `Connection: keep-alive` and the
///   connection stays open; a response of unknown length (a stream) is sent as HTTP/1.0 without chunked
///   encoding, its end marked by closing the connection;
/// - responses to HTTP/1.0 requests carry the status line version HTTP/1.0.
/// HTTP/1.1 requests pass untouched.
final class HTTP10ConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Version and keep-alive of each request whose response has not ended, oldest first.
    private var requests: [(version: HTTPVersion, keepAlive: Bool)] = []
    /// The response being written ends the connection.
    private var closeAfterResponse = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        guard case .head(var head) = part else {
            context.fireChannelRead(data)
            return
        }
        requests.append((head.version, head.isKeepAlive))
        if head.version == .http1_0 && !head.isKeepAlive {
            head.headers.replaceOrAdd(name: "connection", value: "close")
            context.fireChannelRead(wrapInboundOut(.head(head)))
        } else {
            context.fireChannelRead(data)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var head) where head.status.code >= 200:
            guard let request = requests.first, request.version == .http1_0 else {
                context.write(data, promise: promise)
                return
            }
            head.version = .http1_0
            let bodyless = head.status == .noContent || head.status == .notModified
            let keepAlive = request.keepAlive && (bodyless || head.headers.contains(name: "content-length"))
            head.headers.remove(name: "transfer-encoding")
            head.headers.replaceOrAdd(name: "connection", value: keepAlive ? "keep-alive" : "close")
            closeAfterResponse = !keepAlive
            context.write(wrapOutboundOut(.head(head)), promise: promise)
        case .end:
            if !requests.isEmpty { requests.removeFirst() }
            guard closeAfterResponse else {
                context.write(data, promise: promise)
                return
            }
            closeAfterResponse = false
            let written = promise ?? context.eventLoop.makePromise()
            context.writeAndFlush(data, promise: written)
            let channel = context.channel
            written.futureResult.whenComplete { _ in channel.close(promise: nil) }
        default:
            context.write(data, promise: promise)
        }
    }
}
