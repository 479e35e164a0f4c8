import CUV

/// A uv timer. The process has few: `DeadlineQueue` multiplexes every timeout onto one.
public final class LoopTimer: LoopHandle {
    /// What the timer does when it fires; set once, so arming allocates nothing.
    public var onFire: (() -> Void)?

    public init(loop: EventLoop) throws {
        super.init(loop: loop, byteCount: MemoryLayout<uv_timer_t>.size)
        let rc = uv_timer_init(loop.raw, raw.assumingMemoryBound(to: uv_timer_t.self))
        guard rc == 0 else { throw UVError(rc, "uv_timer_init") }
        adopt()
    }

    /// Fires `onFire` after `milliseconds`, then every `interval` ms if not 0 (replaces any earlier arming).
    public func start(after milliseconds: UInt64, repeat interval: UInt64 = 0) {
        guard !isClosing else { return }
        uv_timer_start(raw.assumingMemoryBound(to: uv_timer_t.self), { timer in
            LoopHandle.owner(UnsafeMutableRawPointer(timer), as: LoopTimer.self).onFire?()
        }, milliseconds, interval)
    }

    public func stop() {
        guard !isClosing else { return }
        uv_timer_stop(raw.assumingMemoryBound(to: uv_timer_t.self))
    }

    override func didClose() { onFire = nil }
}

/// A uv signal watcher.
public final class SignalWatcher: LoopHandle {
    private var action: ((Int32) -> Void)?

    public init(loop: EventLoop, signal: Int32, _ action: @escaping (Int32) -> Void) throws {
        super.init(loop: loop, byteCount: MemoryLayout<uv_signal_t>.size)
        let sig = raw.assumingMemoryBound(to: uv_signal_t.self)
        var rc = uv_signal_init(loop.raw, sig)
        guard rc == 0 else { throw UVError(rc, "uv_signal_init") }
        adopt()
        self.action = action
        rc = uv_signal_start(sig, { sig, signum in
            LoopHandle.owner(UnsafeMutableRawPointer(sig), as: SignalWatcher.self).action?(signum)
        }, signal)
        guard rc == 0 else { close(); throw UVError(rc, "uv_signal_start") }
        setReferenced(false)  // a signal watcher alone does not keep the daemon running
    }

    override func didClose() { action = nil }
}
