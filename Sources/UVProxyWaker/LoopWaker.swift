import CUV
import Synchronization
import UVProxy

/// Wakes the loop from another thread (tests, embedding): the only way into the loop from
/// elsewhere.
///
/// It lives outside UVProxy on purpose. UVProxy is built with `-assume-single-threaded` in
/// release, so its reference counting is not atomic: an object whose count another thread
/// touches must never have it touched by UVProxy code. A `LoopWaker` is retained and released
/// by the threads that call `wake()`; so it is no `LoopHandle`, UVProxy holds no reference to
/// it, and all of its code (this module) is built with atomic reference counting. What it keeps
/// of UVProxy's is released on the loop thread: the action when it closes, the close hook with
/// the loop.
public final class LoopWaker: @unchecked Sendable {
    private let async: UnsafeMutablePointer<uv_async_t>
    /// Run on the loop thread; dropped (on the loop thread) when the waker closes.
    private var action: (() -> Void)?
    /// Closed: `wake()` does nothing (a handle being closed must not be signalled).
    private let closed = Mutex(false)

    /// Create on the loop thread. The waker does not keep the loop running, and closes with it.
    public init(loop: EventLoop, _ action: @escaping () -> Void) throws {
        async = .allocate(capacity: 1)
        UnsafeMutableRawPointer(async).initializeMemory(as: UInt8.self, repeating: 0,
                                                        count: MemoryLayout<uv_async_t>.size)
        self.action = action
        let rc = uv_async_init(loop.uvLoop, async) { async in
            let waker = Unmanaged<LoopWaker>.fromOpaque(async!.pointee.data).takeUnretainedValue()
            waker.action?()
        }
        guard rc == 0 else { throw UVError(rc, "uv_async_init") }  // deinit frees `async`
        // The handle keeps its owner alive until uv_close's callback.
        async.pointee.data = Unmanaged.passRetained(self).toOpaque()
        async.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { uv_unref($0) }
        loop.onClose { [weak self] in self?.close() }
    }

    /// Callable from any thread; several wakes before the loop turns may run the action once.
    public func wake() {
        closed.withLock { closed in
            if !closed { uv_async_send(async) }
        }
    }

    /// Loop thread only. Also done when the loop closes.
    public func close() {
        let first = closed.withLock { closed in
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        action = nil
        async.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { handle in
            uv_close(handle) { handle in
                Unmanaged<LoopWaker>.fromOpaque(handle!.pointee.data).release()
            }
        }
    }

    deinit { async.deallocate() }
}

extension ProxyDaemon {
    /// A thread-safe way to ask for shutdown (tests, embedding). Create on the loop thread,
    /// before `run()`.
    public func makeStopHandle() throws -> LoopWaker {
        try LoopWaker(loop: loop) { [unowned self] in self.shutdown() }
    }
}
