import CUV

/// One libuv loop on one thread. Everything in UVProxy runs on it, through callbacks.
///
/// The loop also owns two things every handle shares: the read slab (reads are consumed
/// synchronously in their callback, so a single 64 KiB buffer serves every stream and idle
/// connections cost no read buffer at all) and the deadline queue (one uv timer for every
/// timeout in the process, see `DeadlineQueue`).
public final class EventLoop {
    let raw: UnsafeMutablePointer<uv_loop_t>
    let readSlab: UnsafeMutableRawPointer
    static let readSlabSize = 64 * 1024
    /// All timeouts of sessions and connections, driven by one uv timer.
    public private(set) var deadlines: DeadlineQueue!
    /// Wake-ups and pipelined requests, run once per turn before the loop polls (`TurnQueue`).
    public let turns = TurnQueue()
    /// Memory held by every stream's send queue (bytes the kernel refused), for the process-wide
    /// budget and /metrics.
    public internal(set) var sendQueueBytes = 0
    /// Over this, connections that already owe bytes get no more (`HTTPConnection`), event
    /// streams pause and input to busy targets is refused, until queues drain.
    public var sendQueueBudget = 256 * 1024 * 1024
    public var isOverSendBudget: Bool { sendQueueBytes > sendQueueBudget }
    private var drainer: TurnDrainer?
    /// Told by the drainer when each turn ends, if the daemon measures stalls.
    /// (Unowned: the monitor clears it when it closes, and a handle outlives its close.)
    unowned(unsafe) var lagMonitor: LoopLagMonitor?
    /// Run first by `close()`: how handles owned outside UVProxy (`LoopWaker`) close themselves.
    private var closeHooks: [() -> Void] = []

    public init() throws {
        raw = .allocate(capacity: 1)
        readSlab = .allocate(byteCount: EventLoop.readSlabSize, alignment: 16)
        let rc = uv_loop_init(raw)
        guard rc == 0 else { throw UVError(rc, "uv_loop_init") }  // deinit frees both
        raw.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        deadlines = DeadlineQueue(timer: try LoopTimer(loop: self), loop: self)
        drainer = try TurnDrainer(loop: self, queue: turns)
    }

    /// Runs until no handle is active, or `stop()` was called.
    public func run() {
        uv_run(raw, UV_RUN_DEFAULT)
    }

    public func stop() {
        uv_stop(raw)
    }

    /// The libuv loop, for the loop code outside this module built for one thread
    /// (UVProxyWaker's `LoopWaker`); nothing else uses it.
    package var uvLoop: UnsafeMutablePointer<uv_loop_t> { raw }

    /// `body` runs on the loop thread when the loop closes, before its handles are walked: a
    /// handle not owned by a `LoopHandle` (LoopWaker's async handle) must be closed there.
    package func onClose(_ body: @escaping () -> Void) { closeHooks.append(body) }

    /// Milliseconds of the loop's clock, cached at the start of each iteration.
    public var now: UInt64 { uv_now(raw) }
    /// Monotonic nanoseconds (request latency).
    public static var hrtime: UInt64 { uv_hrtime() }

    /// Closes what is left (handles closed by their owners first) and frees the loop.
    public func close() {
        let hooks = closeHooks
        closeHooks.removeAll()
        for hook in hooks { hook() }
        deadlines.shutdown()
        drainer?.close()
        drainer = nil
        // Give pending close callbacks their turn, then close stragglers.
        uv_run(raw, UV_RUN_NOWAIT)
        uv_walk(raw, { handle, _ in
            // Every open handle here is a LoopHandle's: the close hooks closed the others.
            guard let handle, uv_is_closing(handle) == 0, let data = handle.pointee.data else { return }
            Unmanaged<LoopHandle>.fromOpaque(data).takeUnretainedValue().close()
        }, nil)
        uv_run(raw, UV_RUN_DEFAULT)
        uv_loop_close(raw)
    }

    static func from(_ loop: UnsafeMutablePointer<uv_loop_t>?) -> EventLoop {
        Unmanaged<EventLoop>.fromOpaque(loop!.pointee.data).takeUnretainedValue()
    }

    deinit {
        readSlab.deallocate()
        raw.deallocate()
    }
}

/// A libuv error code with the call that returned it.
public struct UVError: Error, CustomStringConvertible {
    public let code: Int32
    public let call: String
    public init(_ code: Int32, _ call: String) {
        self.code = code
        self.call = call
    }
    /// libuv's short name, as `ECONNREFUSED`.
    public var name: String { UVError.name(code) }
    public var description: String { "\(call): \(message)" }
    /// libuv's message, as `address already in use`.
    public var message: String { String(cString: uv_strerror(code)) }

    public static func name(_ code: Int32) -> String { String(cString: uv_err_name(code)) }
    public static let eof = Int32(UV_EOF.rawValue)
    public static let connectionReset = Int32(UV_ECONNRESET.rawValue)
    public static let timedOut = Int32(UV_ETIMEDOUT.rawValue)
    public static let cancelled = Int32(UV_ECANCELED.rawValue)
    public static let again = Int32(UV_EAGAIN.rawValue)
    /// Out of file descriptors: the process's limit (`EMFILE`) or the system's (`ENFILE`).
    public static let processFileLimit = Int32(UV_EMFILE.rawValue)
    public static let systemFileLimit = Int32(UV_ENFILE.rawValue)
    public var isOutOfDescriptors: Bool { code == UVError.processFileLimit || code == UVError.systemFileLimit }
}
