import CUV

/// Base of every Swift object that owns a uv handle.
///
/// The handle's `data` field holds a +1 retain of its owner from `adopt()` until the
/// `uv_close` callback, so the object (and the handle memory it owns) outlives every callback
/// libuv can still make. The last release happens in the close callback, never before.
public class LoopHandle {
    public unowned(unsafe) let loop: EventLoop  // a loop outlives its handles (EventLoop.close)
    let raw: UnsafeMutableRawPointer
    public private(set) var isClosing = false
    private var adopted = false

    init(loop: EventLoop, byteCount: Int) {
        self.loop = loop
        raw = .allocate(byteCount: byteCount, alignment: 16)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
    }

    var handle: UnsafeMutablePointer<uv_handle_t> { raw.assumingMemoryBound(to: uv_handle_t.self) }

    /// Called by subclasses once `uv_*_init` succeeded: from here on the handle keeps `self` alive.
    func adopt() {
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        adopted = true
    }

    /// Starts closing; `didClose()` runs in the close callback, after every pending callback.
    public func close() {
        guard beginClose() else { return }
        uv_close(handle, LoopHandle.closed)
    }

    /// Marks the handle closing; false if it already was (or never opened).
    func beginClose() -> Bool {
        guard !isClosing else { return false }
        isClosing = true
        return adopted
    }

    /// The close callback of every handle: the owner's last reference goes here.
    static let closed: uv_close_cb = { handle in
        let owner = Unmanaged<LoopHandle>.fromOpaque(handle!.pointee.data).takeRetainedValue()
        owner.didClose()
    }

    /// Override to drop references to delegates (breaking cycles) once libuv is done.
    func didClose() {}

    /// Whether the handle keeps the loop alive.
    public func setReferenced(_ on: Bool) {
        if on { uv_ref(handle) } else { uv_unref(handle) }
    }

    deinit { raw.deallocate() }
}

extension LoopHandle {
    static func owner<T: LoopHandle>(_ pointer: UnsafeMutableRawPointer?, as: T.Type) -> T {
        let handle = pointer!.assumingMemoryBound(to: uv_handle_t.self)
        return Unmanaged<T>.fromOpaque(handle.pointee.data).takeUnretainedValue()
    }

    /// Calls `body` with the owner without retaining it: the handle's own +1 keeps it alive
    /// for the whole callback (hot paths: every read).
    @inline(__always)
    static func withOwner<T: LoopHandle, R>(_ pointer: UnsafeMutableRawPointer?, as: T.Type, _ body: (T) -> R) -> R {
        let handle = pointer!.assumingMemoryBound(to: uv_handle_t.self)
        return Unmanaged<T>.fromOpaque(handle.pointee.data)._withUnsafeGuaranteedRef(body)
    }
}
