import CUV

/// Measures the loop's stalls: how long one turn of the loop runs callbacks (timers, reads,
/// writes, checks, closes) between two polls. While a turn runs, every other connection waits,
/// so the longest turn is the worst latency the loop added to anyone.
///
/// A `uv_prepare` handle runs right before each poll. With `UV_METRICS_IDLE_TIME` libuv counts
/// the time spent blocked in the poll, so one turn's busy time is
/// `(hrtime now - hrtime at the last prepare) - (idle time now - idle time at the last prepare)`.
/// Nothing wakes the loop for this (no timer): an idle process stays idle, and the turn that
/// ends a long sleep counts only what it ran.
public final class LoopLagMonitor: LoopHandle {
    private var lastTurn: UInt64
    private var lastIdle: UInt64
    private var started = false
    /// The longest turn since `takeRecent()` last ran, in nanoseconds.
    public private(set) var recentMax: UInt64 = 0
    /// The longest turn since the monitor started, in nanoseconds.
    public private(set) var overallMax: UInt64 = 0
    /// Turns measured.
    public private(set) var turns: UInt64 = 0

    public init(loop: EventLoop) throws {
        var rc = cuv_loop_enable_idle_time(loop.raw)
        guard rc == 0 else { throw UVError(rc, "uv_loop_configure") }
        lastTurn = uv_hrtime()
        lastIdle = uv_metrics_idle_time(loop.raw)
        super.init(loop: loop, byteCount: MemoryLayout<uv_prepare_t>.size)
        let prepare = raw.assumingMemoryBound(to: uv_prepare_t.self)
        rc = uv_prepare_init(loop.raw, prepare)
        guard rc == 0 else { throw UVError(rc, "uv_prepare_init") }
        adopt()
        rc = uv_prepare_start(prepare) { prepare in
            LoopHandle.withOwner(UnsafeMutableRawPointer(prepare), as: LoopLagMonitor.self) { $0.turnEnded() }
        }
        guard rc == 0 else { close(); throw UVError(rc, "uv_prepare_start") }
        setReferenced(false)  // measuring does not keep the daemon running
    }

    private func turnEnded() {
        let now = uv_hrtime()
        let idle = uv_metrics_idle_time(loop.raw)
        defer { lastTurn = now; lastIdle = idle }
        // The first turn's clock started when the daemon was being built: not a stall.
        guard started else { started = true; return }
        let elapsed = now &- lastTurn
        let slept = idle &- lastIdle
        let busy = elapsed > slept ? elapsed - slept : 0
        turns &+= 1
        if busy > recentMax { recentMax = busy }
        if busy > overallMax { overallMax = busy }
    }

    /// The longest turn since the previous call (nanoseconds), and starts a new period.
    public func takeRecent() -> UInt64 {
        defer { recentMax = 0 }
        return recentMax
    }
}
