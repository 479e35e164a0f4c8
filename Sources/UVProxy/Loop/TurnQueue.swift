import CUV

/// Work that must not run inside another client's callback: waking a held long-poll or an
/// event stream, answering one that a newer read replaced, parsing the next pipelined request
/// of a connection whose held request was just answered.
///
/// Such work is queued and run once per loop turn, right before the loop waits for I/O again
/// (a `uv_prepare` handle), as Redis runs unblocked clients in `beforeSleep`. So a chain of
/// connections that wake one another runs as a loop over this queue, never as nested calls,
/// and a target's read callback only marks its waiter.
public protocol TurnTask: AnyObject {
    /// Set while the task sits in the queue (a task is queued at most once).
    var isQueuedForTurn: Bool { get set }
    func runTurnTask()
}

/// The queue itself: plain Swift, no I/O (unit tests drain it by hand).
public final class TurnQueue {
    private var tasks: [TurnTask] = []
    private var running: [TurnTask] = []
    /// Tasks that used their share of a turn and go on only after the loop has polled once
    /// more for everyone else's I/O: queued while draining, they run in the next drain; queued
    /// from an I/O callback (after this turn's drain ran), in the one after it.
    private var afterNextPoll: [TurnTask] = []
    private var afterTwoPolls: [TurnTask] = []
    private var draining = false
    /// Drains so far (the loop's turns; tests count work per turn with it).
    public private(set) var drains: UInt64 = 0

    public init() {}

    public var isEmpty: Bool { tasks.isEmpty }
    /// Work is waiting for a later turn: the loop must not block in its poll.
    public var hasNextTurnWork: Bool { !afterNextPoll.isEmpty || !afterTwoPolls.isEmpty }

    /// Queues `task` to run after the loop's next poll (a client that had its share of this turn).
    public func enqueueNextTurn(_ task: TurnTask) {
        guard !task.isQueuedForTurn else { return }
        task.isQueuedForTurn = true
        if draining { afterNextPoll.append(task) } else { afterTwoPolls.append(task) }
    }

    @inline(__always)
    public func enqueue(_ task: TurnTask) {
        guard !task.isQueuedForTurn else { return }
        task.isQueuedForTurn = true
        tasks.append(task)
    }

    /// Runs every queued task; tasks queued meanwhile run in the same call, after them (a loop,
    /// not a recursion).
    public func drain() {
        drains &+= 1
        if tasks.isEmpty, afterNextPoll.isEmpty, afterTwoPolls.isEmpty { return }  // most turns
        draining = true
        defer { draining = false }
        if !afterNextPoll.isEmpty {
            tasks.append(contentsOf: afterNextPoll)
            afterNextPoll.removeAll(keepingCapacity: true)
        }
        swap(&afterNextPoll, &afterTwoPolls)
        while !tasks.isEmpty {
            swap(&tasks, &running)
            for task in running {
                task.isQueuedForTurn = false
                task.runTurnTask()
            }
            running.removeAll(keepingCapacity: true)
        }
    }
}

/// Drains the loop's `TurnQueue` before each poll. Unreferenced: it never keeps the loop alive.
/// While work waits for the next turn, its `NextTurnWaker` keeps the poll from blocking.
final class TurnDrainer: LoopHandle {
    private let queue: TurnQueue
    private let waker: NextTurnWaker

    init(loop: EventLoop, queue: TurnQueue) throws {
        self.queue = queue
        waker = try NextTurnWaker(loop: loop)
        super.init(loop: loop, byteCount: MemoryLayout<uv_prepare_t>.size)
        let prepare = raw.assumingMemoryBound(to: uv_prepare_t.self)
        var rc = uv_prepare_init(loop.raw, prepare)
        guard rc == 0 else { waker.close(); throw UVError(rc, "uv_prepare_init") }
        adopt()
        rc = uv_prepare_start(prepare) { prepare in
            LoopHandle.withOwner(UnsafeMutableRawPointer(prepare), as: TurnDrainer.self) { drainer in
                drainer.queue.drain()
                drainer.waker.set(active: drainer.queue.hasNextTurnWork)
                drainer.loop.lagMonitor?.turnEnded()  // the turn's last work is done
            }
        }
        guard rc == 0 else { close(); throw UVError(rc, "uv_prepare_start") }
        setReferenced(false)
    }

    override func close() {
        waker.close()
        super.close()
    }
}

/// A `uv_idle` handle that does nothing: while it is active, libuv polls without blocking, so
/// work left for the next turn runs right after the I/O that is ready now.
final class NextTurnWaker: LoopHandle {
    private var active = false

    init(loop: EventLoop) throws {
        super.init(loop: loop, byteCount: MemoryLayout<uv_idle_t>.size)
        let rc = uv_idle_init(loop.raw, raw.assumingMemoryBound(to: uv_idle_t.self))
        guard rc == 0 else { throw UVError(rc, "uv_idle_init") }
        adopt()
    }

    func set(active on: Bool) {
        guard on != active, !isClosing else { return }
        active = on
        let idle = raw.assumingMemoryBound(to: uv_idle_t.self)
        if on { uv_idle_start(idle) { _ in } } else { uv_idle_stop(idle) }
    }
}
