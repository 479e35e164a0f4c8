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

    public init() {}

    public var isEmpty: Bool { tasks.isEmpty }

    @inline(__always)
    public func enqueue(_ task: TurnTask) {
        guard !task.isQueuedForTurn else { return }
        task.isQueuedForTurn = true
        tasks.append(task)
    }

    /// Runs every queued task; tasks queued meanwhile run in the same call, after them (a loop,
    /// not a recursion).
    public func drain() {
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
final class TurnDrainer: LoopHandle {
    private let queue: TurnQueue

    init(loop: EventLoop, queue: TurnQueue) throws {
        self.queue = queue
        super.init(loop: loop, byteCount: MemoryLayout<uv_prepare_t>.size)
        let prepare = raw.assumingMemoryBound(to: uv_prepare_t.self)
        var rc = uv_prepare_init(loop.raw, prepare)
        guard rc == 0 else { throw UVError(rc, "uv_prepare_init") }
        adopt()
        rc = uv_prepare_start(prepare) { prepare in
            LoopHandle.withOwner(UnsafeMutableRawPointer(prepare), as: TurnDrainer.self) { $0.queue.drain() }
        }
        guard rc == 0 else { close(); throw UVError(rc, "uv_prepare_start") }
        setReferenced(false)
    }
}
