import CUV

/// Measures the loop's stalls: how long one turn of the loop runs callbacks (reads, writes,
/// checks, closes, timers, the turn queue) between two polls. While a turn runs, every other
/// connection waits, so the longest turn is the worst latency the loop added to anyone.
///
/// A turn starts when the poll returns and ends when the loop is about to poll again. libuv
/// sets the loop's clock right after the poll returns, before it runs any I/O callback; a
/// `uv_check` handle, which runs after those callbacks, reads it there (`uv_now`, no clock
/// call). The turn ends after the turn queue's drain (`TurnDrainer`, a `uv_prepare`, right
/// before the poll), which calls `turnEnded()`: one clock read per turn. Nothing wakes the
/// loop for this (no timer): an idle process stays idle, and time asleep in the poll is never
/// counted. (libuv's own `UV_METRICS_IDLE_TIME` would tell the same, but takes two clock reads
/// and two mutexes on every turn.)
///
/// Resolution: the start is the loop's millisecond clock, so a turn is known to within 1 ms.
/// One caveat: when more than 1,024 descriptors are ready at once libuv polls again without
/// blocking, resetting the clock, so the callbacks of the first batch are not counted.
public final class LoopLagMonitor: LoopHandle {
    /// The loop's clock (ms) when the current turn's poll returned; 0 before the first.
    private var pollReturned: UInt64 = 0
    /// The longest turn since `takeRecent()` last ran, in nanoseconds.
    public private(set) var recentMax: UInt64 = 0
    /// When that turn ended (`uv_hrtime`, the host's CLOCK_MONOTONIC, nanoseconds).
    public private(set) var recentMaxEnd: UInt64 = 0
    /// The longest turn since the monitor started, in nanoseconds.
    public private(set) var overallMax: UInt64 = 0
    /// Turns measured.
    public private(set) var turns: UInt64 = 0

    public init(loop: EventLoop) throws {
        super.init(loop: loop, byteCount: MemoryLayout<uv_check_t>.size)
        let check = raw.assumingMemoryBound(to: uv_check_t.self)
        var rc = uv_check_init(loop.raw, check)
        guard rc == 0 else { throw UVError(rc, "uv_check_init") }
        adopt()
        rc = uv_check_start(check) { check in
            LoopHandle.withOwner(UnsafeMutableRawPointer(check), as: LoopLagMonitor.self) { monitor in
                monitor.pollReturned = uv_now(monitor.loop.raw)
            }
        }
        guard rc == 0 else { close(); throw UVError(rc, "uv_check_start") }
        setReferenced(false)  // measuring does not keep the daemon running
        loop.lagMonitor = self
    }

    public override func close() {
        if loop.lagMonitor === self { loop.lagMonitor = nil }
        super.close()
    }

    /// The turn ends: called by the turn queue's drainer, after the drain, before the poll.
    func turnEnded() {
        // The first turn's start is unknown (the monitor started inside it): not measured.
        guard pollReturned != 0 else { return }
        let now = uv_hrtime()
        let start = pollReturned &* 1_000_000
        pollReturned = 0
        let busy = now > start ? now - start : 0
        turns &+= 1
        if busy > recentMax { recentMax = busy; recentMaxEnd = now }
        if busy > overallMax { overallMax = busy }
    }

    /// The longest turn since the previous call and when it ended (nanoseconds; the end on
    /// the monotonic clock, 0 if no turn was measured), and starts a new period.
    public func takeRecent() -> (longest: UInt64, end: UInt64) {
        defer { recentMax = 0; recentMaxEnd = 0 }
        return (recentMax, recentMaxEnd)
    }
}
