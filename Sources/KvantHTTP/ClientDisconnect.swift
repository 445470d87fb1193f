import Foundation
import NIOCore

/// Tells a connection's requests when its client went away: the input closed (the client closed or
/// half-closed its socket; HTTP clients send nothing more while they wait for a reply, so an end of
/// input means they are gone, as uvicorn and llama.cpp's server take it) or the connection closed.
/// One per connection, after the HTTP decoder; requests find it with `ClientDisconnectHandler.of(_:)`.
final class ClientDisconnectHandler: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = NIOAny

    private let lock = NSLock()
    private var gone = false
    private var callbacks: [Int: @Sendable () -> Void] = [:]
    private var nextKey = 0

    /// Calls `callback` once when the client is gone (at once if it is gone already); returns a key for `remove`.
    func onDisconnect(_ callback: @escaping @Sendable () -> Void) -> Int {
        lock.lock()
        if gone {
            lock.unlock()
            callback()
            return -1
        }
        let key = nextKey
        nextKey += 1
        callbacks[key] = callback
        lock.unlock()
        return key
    }

    func remove(_ key: Int) {
        lock.lock(); callbacks[key] = nil; lock.unlock()
    }

    private func fire() {
        lock.lock()
        gone = true
        let all = Array(callbacks.values)
        callbacks.removeAll()
        lock.unlock()
        for callback in all { callback() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { fire() }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fire()
        context.fireChannelInactive()
    }

    /// The handler of `channel`'s pipeline, nil when it has none (e.g. a test channel).
    static func of(_ channel: any Channel) async -> ClientDisconnectHandler? {
        try? await channel.pipeline.handler(type: ClientDisconnectHandler.self).get()
    }
}
