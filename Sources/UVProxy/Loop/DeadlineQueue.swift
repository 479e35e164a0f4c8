/// Something with at most one pending deadline: a session (connect timeout, idle timeout,
/// linger, drain) or an HTTP connection (header timeout, keep-alive, long-poll wait,
/// lingering close). The object stores its own heap slot, so scheduling allocates nothing.
public protocol DeadlineOwner: AnyObject {
    /// Loop time (ms) of the pending deadline; written by the queue.
    var deadline: UInt64 { get set }
    /// Slot in the queue's heap, -1 when not scheduled; written by the queue.
    var deadlineSlot: Int { get set }
    /// Called once when the deadline passes (the owner is no longer scheduled).
    func deadlineReached(now: UInt64)
}

/// A binary min-heap of deadlines, driven by one uv timer armed at the earliest.
///
/// Every timeout in the daemon goes through here, so a timer tick costs O(log n) per expired
/// deadline and nothing per live session; schedule, reschedule and cancel are O(log n).
public final class DeadlineQueue {
    private var heap: [DeadlineOwner] = []
    private let timer: LoopTimer?
    private unowned let loop: EventLoop?
    private var armedAt: UInt64 = .max
    private var firing = false

    init(timer: LoopTimer?, loop: EventLoop?) {
        self.timer = timer
        self.loop = loop
        timer?.setReferenced(false)
        timer?.onFire = { [unowned self] in
            self.armedAt = .max
            self.fire(now: self.loop!.now)
        }
    }

    /// A queue with no timer, for unit tests: call `fire(now:)` by hand.
    public static func manual() -> DeadlineQueue { DeadlineQueue(timer: nil, loop: nil) }

    public var count: Int { heap.count }

    /// Schedules (or moves) `owner`'s deadline to `at`.
    public func schedule(_ owner: DeadlineOwner, at: UInt64) {
        if owner.deadlineSlot >= 0 {
            let old = owner.deadline
            owner.deadline = at
            if at < old { siftUp(owner.deadlineSlot) } else { siftDown(owner.deadlineSlot) }
        } else {
            owner.deadline = at
            owner.deadlineSlot = heap.count
            heap.append(owner)
            siftUp(heap.count - 1)
        }
        rearm()
    }

    public func cancel(_ owner: DeadlineOwner) {
        let slot = owner.deadlineSlot
        guard slot >= 0 else { return }
        owner.deadlineSlot = -1
        let last = heap.removeLast()
        if slot < heap.count {
            heap[slot] = last
            last.deadlineSlot = slot
            siftDown(slot)
            siftUp(last.deadlineSlot)
        }
        rearm()
    }

    /// Calls every owner whose deadline is at or before `now`.
    public func fire(now: UInt64) {
        firing = true
        while let first = heap.first, first.deadline <= now {
            cancel(first)
            first.deadlineReached(now: now)
        }
        firing = false
        rearm()
    }

    func shutdown() {
        for owner in heap { owner.deadlineSlot = -1 }
        heap.removeAll()
        timer?.stop()
        timer?.close()
    }

    private func rearm() {
        guard !firing, let timer, let loop else { return }
        guard let next = heap.first?.deadline else {
            if armedAt != .max { timer.stop(); armedAt = .max }
            return
        }
        guard next != armedAt else { return }
        armedAt = next
        let now = loop.now
        timer.start(after: next > now ? next - now : 0)
    }

    private func siftUp(_ start: Int) {
        var i = start
        let item = heap[i]
        while i > 0 {
            let parent = (i - 1) / 2
            guard item.deadline < heap[parent].deadline else { break }
            heap[i] = heap[parent]
            heap[i].deadlineSlot = i
            i = parent
        }
        heap[i] = item
        item.deadlineSlot = i
    }

    private func siftDown(_ start: Int) {
        var i = start
        let item = heap[i]
        let n = heap.count
        while true {
            let left = 2 * i + 1
            guard left < n else { break }
            var child = left
            if left + 1 < n && heap[left + 1].deadline < heap[left].deadline { child = left + 1 }
            guard heap[child].deadline < item.deadline else { break }
            heap[i] = heap[child]
            heap[i].deadlineSlot = i
            i = child
        }
        heap[i] = item
        item.deadlineSlot = i
    }
}
