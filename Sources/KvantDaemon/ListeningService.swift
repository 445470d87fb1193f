import ServiceLifecycle

/// A service beside the control server that must accept connections before READY=1 — the HTTP API.
/// Passed to `Daemon.makeServiceGroup(listeners:)`: it starts after the control server and is shut
/// down after the supervisor (STOPPING=1) and before the control server drains.
public protocol ListeningService: Service {
    /// Returns once the service listens, or as soon as the calling task is cancelled or graceful
    /// shutdown begins (the supervisor then stops without READY=1).
    func waitUntilListening() async
}

/// A one-shot "now listening" signal whose waiters leave on cancellation or graceful shutdown.
public final class ListeningSignal: Sendable {
    private let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    public init() {
        (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Marks the service as listening (idempotent).
    public func signal() {
        continuation.yield()
        continuation.finish()
    }

    /// Returns after `signal()`, on cancellation, or when graceful shutdown begins.
    public func wait() async {
        for await _ in stream.cancelOnGracefulShutdown() { break }
    }
}
