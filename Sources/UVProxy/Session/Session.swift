/// Why a session's target connection is gone (`X-Close-Reason`).
public enum CloseReason: Equatable, Sendable {
    case eof, reset, error(String), idleTimeout, deleted, shutdown

    public init(uvError code: Int32) {
        if code == UVError.eof { self = .eof }
        else if code == UVError.connectionReset { self = .reset }
        else { self = .error(UVError.name(code)) }
    }

    public var text: String {
        switch self {
        case .eof: return "eof"
        case .reset: return "reset"
        case .error(let name): return "error: \(name)"
        case .idleTimeout: return "idle timeout"
        case .deleted: return "deleted"
        case .shutdown: return "shutdown"
        }
    }
}

/// The I/O a session drives: its target connection. `Upstream` is the real one; unit tests
/// use a fake, so the state machine runs without sockets.
public protocol UpstreamLink: AnyObject {
    /// Starts connecting; the outcome goes to `SessionTable.upstreamConnected`.
    func connect(to address: SocketAddress)
    /// Ends the connection gracefully: FIN after the queued input, discard what the target
    /// still sends; `SessionTable.upstreamFinished` is called once the input is delivered.
    func finish()
    /// Queues bytes for the target, in order.
    func send(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer)
    /// Bytes accepted by `send` that the target has not read yet.
    var queuedBytes: Int { get }
    func pauseReading()
    func resumeReading()
    func close()
    /// Closes with a reset: the drain time is over and undelivered input is dropped.
    func abort()
    /// What the connection holds of the session's state, for an in-place upgrade (SPEC §9):
    /// the telnet filter's state and the bytes owed to the target that the kernel has not
    /// taken. Valid until the loop runs again: take it in the turn that lets the connection go.
    func handOverState() -> UpstreamHandOver
    /// GMCP is on with the target (it offered it and we accepted: SPEC §7).
    var gmcpEnabled: Bool { get }
    /// A whole telnet command (a GMCP subnegotiation), written as it is.
    func sendTelnet(_ command: [UInt8])
    /// A GMCP subnegotiation from a client before the target has offered GMCP: kept, and written
    /// once GMCP is on (after our `DO` and `Core.Hello`). False, and dropped, past `maxHeldGMCP`.
    func holdGMCP(_ command: [UInt8]) -> Bool
    /// Bytes `holdGMCP` keeps.
    var heldGMCPBytes: Int { get }
}

extension UpstreamLink {
    public var gmcpEnabled: Bool { false }
    public func sendTelnet(_ command: [UInt8]) {}
    public func holdGMCP(_ command: [UInt8]) -> Bool { false }
    public var heldGMCPBytes: Int { 0 }
}

/// The part of a session's state that its connection holds (`UpstreamLink.handOverState`).
public struct UpstreamHandOver: Equatable, Sendable {
    /// Telnet mode: the filter's state.
    public var telnet: TelnetFilter.State?
    /// Bytes owed to the target (input, telnet replies, the PROXY header) that the kernel has
    /// not taken yet, as they go on the wire (input already escaped): the new process writes
    /// them first, as they are.
    public var unwrittenOutput: [UInt8]

    public init(telnet: TelnetFilter.State? = nil, unwrittenOutput: [UInt8] = []) {
        self.telnet = telnet
        self.unwrittenOutput = unwrittenOutput
    }
}

extension UpstreamLink {
    /// A link that holds no state of its own (test and fuzz fakes).
    public func handOverState() -> UpstreamHandOver { UpstreamHandOver() }
}

/// Someone waiting for a session to change: a held long-poll (an SSE stream, later).
public protocol SessionObserver: AnyObject {
    /// Bytes arrived, or the session closed.
    func sessionDidChange(_ session: Session)
    /// A newer read (or stream) of the same session took this one's place.
    func sessionObserverReplaced(_ session: Session)
}

/// One client's session: its target connection, the bytes the target sent, the client's
/// cursor state and input sequence. Owns no socket itself: it talks to an `UpstreamLink`.
public final class Session: DeadlineOwner {
    public enum State: Equatable { case connecting, open, closed(CloseReason) }

    public let id: SessionID
    public let target: Target
    public private(set) var state: State = .connecting
    public private(set) var ring: ByteRing
    /// Where a read without a cursor starts (SPEC §1).
    public var delivered: UInt64 = 0
    /// Highest input `seq` accepted.
    public private(set) var lastSeq: UInt64 = 0
    /// Loop time of the last request that touched the session.
    public var lastTouched: UInt64
    public private(set) var closedAt: UInt64 = 0
    /// Loop time the target connection opened (the session's lifetime in logs).
    public internal(set) var openedAt: UInt64 = 0
    /// The client address that created it, while it counts against `max-sessions-per-client`.
    var client: String?
    /// The client that created it (SPEC §5 "client address"): the source of the PROXY header
    /// sent to the target (SPEC §6), and MNES. Nil when unknown. An endpoint (address bytes and
    /// port), not a `SocketAddress`: a session keeps it for its whole life, and this is a tenth
    /// of the size (the sockaddr_storage alone is 128 bytes).
    public internal(set) var origin: ProxyProtocol.Endpoint?
    /// Its IP address as text without a port (`""` when unknown): what telnet mode tells the
    /// target (MNES `IPADDRESS`, SPEC §6). An IPv4-mapped address is given as IPv4.
    public var clientAddress: String { origin?.unmapped.addressText ?? "" }

    /// Input bytes queued for the target (logs).
    public private(set) var sentBytes: UInt64 = 0
    var link: UpstreamLink?
    private(set) var readingPaused = false
    /// Removed from the table (DELETE, linger over, shutdown): ids no longer find it.
    var isRemoved = false
    /// GMCP (SPEC §7): the target's messages, on a session whose target speaks it.
    public internal(set) var gmcp: GMCPLog?
    /// A `GET …/gmcp?wait=` held until a message arrives (one at a time: a newer one answers
    /// the older at once).
    var gmcpWaiter: GMCPWaiter?
    /// The held long-poll, if any.
    public private(set) var waiter: SessionObserver?
    public var deadline: UInt64 = 0
    public var deadlineSlot: Int = -1
    unowned(unsafe) let table: SessionTable  // the table outlives its sessions

    init(id: SessionID, target: Target, bufferSize: Int, now: UInt64, table: SessionTable) {
        self.id = id
        self.target = target
        self.ring = ByteRing(limit: bufferSize)
        self.lastTouched = now
        self.table = table
        if target.gmcp { gmcp = GMCPLog() }
    }

    public var isOpen: Bool { state == .open }
    public var closeReason: CloseReason? {
        if case .closed(let reason) = state { return reason }
        return nil
    }

    // MARK: Target → session

    /// Bytes from the target. The link never reads more than `readRoom`.
    public func receive(_ bytes: UnsafeRawBufferPointer) {
        guard state == .open else { return }
        let before = ring.count
        let base = ring.base
        ring.append(bytes)
        received(bytes.count, ringCountBefore: before, baseBefore: base, notify: true)
    }

    /// Telnet mode: what the target sent goes through `filter` and only its data reaches the
    /// ring, so offsets count the bytes clients read (SPEC §3). The filter's replies are the
    /// caller's to send. A read of nothing but negotiation wakes nobody. GMCP messages (SPEC
    /// §7) go to the session's log, each at the offset where it arrived.
    func receive(_ bytes: UnsafeRawBufferPointer, through filter: inout TelnetFilter) {
        guard state == .open else { return }
        let before = ring.count
        let base = ring.base
        let end = ring.end
        filter.receive(bytes) { ring.append($0) }
        var gmcpArrived = false
        if !filter.gmcpMessages.isEmpty {
            if gmcp != nil {
                let heldBefore = gmcp!.heldBytes
                for message in filter.gmcpMessages { gmcp!.append(message, offset: end + UInt64(message.position)) }
                if !isRemoved { table.bufferedBytes += gmcp!.heldBytes - heldBefore }
                gmcpArrived = true
            }
            filter.gmcpMessages.removeAll()
        }
        received(bytes.count, ringCountBefore: before, baseBefore: base, notify: ring.end != end || gmcpArrived)
        if gmcpArrived, let poll = gmcpWaiter {
            gmcpWaiter = nil
            poll.gmcpArrived()
        }
    }

    private func received(_ count: Int, ringCountBefore before: Int, baseBefore base: UInt64, notify: Bool) {
        if ring.base != base { table.counters.evictedBytes += ring.base - base }
        if !isRemoved { table.bufferedBytes += ring.count - before }
        table.counters.upstreamReceivedBytes += UInt64(count)
        if ring.room == 0 && !readingPaused {
            readingPaused = true
            table.counters.backpressurePauses += 1
            link?.pauseReading()
        }
        if notify { notifyObservers() }
    }

    /// How many bytes the next read from the target may bring.
    public var readRoom: Int { ring.room }

    /// Marks bytes before `offset` as acknowledged, resuming the target if it was paused.
    public func acknowledge(upTo offset: UInt64) {
        ring.acknowledge(upTo: offset)
        if readingPaused && ring.room > 0 {
            readingPaused = false
            if state == .open { link?.resumeReading() }
        }
    }

    // MARK: Client → target

    public enum InputResult: Equatable { case queued, duplicate, closed, full }

    /// Queues a command for the target (already terminated per the line-ending rule).
    public func sendInput(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, seq: UInt64?) -> InputResult {
        if let seq, seq <= lastSeq { return .duplicate }
        guard state == .open, let link else { return .closed }
        if isInputFull(link) { return .full }
        if let seq { lastSeq = seq }
        link.send(a, b)
        sentBytes += UInt64(a.count + b.count)
        table.counters.upstreamSentBytes += UInt64(a.count + b.count)
        return .queued
    }

    /// Queues a GMCP message for the target (the whole subnegotiation, SPEC §7): input like a
    /// command, held to the same limit.
    public func sendGMCP(_ frame: [UInt8]) -> InputResult {
        guard state == .open, let link else { return .closed }
        if isInputFull(link) { return .full }
        link.sendTelnet(frame)
        return .queued
    }

    /// The input limit (SPEC §2), and the process's send budget for a target that is behind.
    @inline(__always)
    private func isInputFull(_ link: UpstreamLink) -> Bool {
        link.queuedBytes > ring.limit || (link.queuedBytes > 0 && table.isOverSendBudget())
    }

    // MARK: Observers

    /// Registers a held read; an earlier held read is told it was replaced.
    public func setWaiter(_ observer: SessionObserver) {
        let old = waiter
        waiter = observer  // before telling the old one, which may start a newer wait itself
        if let old, old !== observer { old.sessionObserverReplaced(self) }
    }

    public func removeWaiter(_ observer: SessionObserver) {
        guard waiter === observer else { return }
        waiter = nil
        lastTouched = table.now  // a wait that just ended touched the session until now
    }

    public var hasObservers: Bool { waiter != nil }

    /// Tells the held read that the session changed. Callers finish their own
    /// bookkeeping first: an observer may answer at once and run the client's next request.
    func notifyObservers() {
        if let w = waiter {
            waiter = nil  // a long-poll is answered once
            lastTouched = table.now
            w.sessionDidChange(self)
        }
    }

    // MARK: Lifecycle (driven by SessionTable and the link)

    func connected() {
        guard state == .connecting else { return }
        state = .open
    }

    /// The target connection ended or is being ended: buffered bytes stay readable.
    /// Observers are not told here (see `notifyObservers`).
    func markClosed(_ reason: CloseReason, now: UInt64) {
        guard closeReason == nil else { return }
        state = .closed(reason)
        closedAt = now
        readingPaused = false
    }

    public func deadlineReached(now: UInt64) {
        table.sessionDeadlineReached(self, now: now)
    }

    // MARK: Hand-over (SPEC §9)

    /// The session's state as values (`SessionSnapshot`), with its link's part; nil while it
    /// is still connecting (such a session is in no table yet: its create has no answer).
    /// Times become ages and the deadline a remaining time, relative to `now`, so that a
    /// process with another loop clock can take them.
    public func snapshot(now: UInt64) -> SessionSnapshot? {
        let status: SessionSnapshot.Status
        switch state {
        case .connecting: return nil
        case .open: status = .open
        case .closed(let reason): status = .closed(reason, agoMs: now - min(closedAt, now))
        }
        let link = self.link?.handOverState() ?? UpstreamHandOver()
        return SessionSnapshot(
            id: id, targetName: target.name, status: status, ring: ring.snapshot(), delivered: delivered,
            lastSeq: lastSeq, lastTouchedAgoMs: now - min(lastTouched, now), openedAgoMs: now - min(openedAt, now),
            deadlineInMs: deadlineSlot >= 0 ? deadline - min(deadline, now) : nil,
            sentBytes: sentBytes, readingPaused: readingPaused, origin: origin, client: client,
            telnet: link.telnet, unwrittenOutput: link.unwrittenOutput, gmcp: gmcp?.snapshot(),
            target: target.endpoint.map {
                SessionSnapshot.TargetSettings(address: $0, telnet: target.telnet, gmcp: target.gmcp, charset: target.charset)
            })
    }

    /// A session rebuilt from a snapshot, with no link yet (`SessionTable.adopt` attaches it).
    /// Ages become loop times before `now` (at 0 at the earliest).
    init(restoring snapshot: SessionSnapshot, target: Target, now: UInt64, table: SessionTable) {
        self.id = snapshot.id
        self.target = target
        self.ring = ByteRing(restoring: snapshot.ring)
        self.table = table
        lastTouched = now - min(snapshot.lastTouchedAgoMs, now)
        openedAt = now - min(snapshot.openedAgoMs, now)
        switch snapshot.status {
        case .open:
            state = .open
            readingPaused = snapshot.readingPaused
        case .closed(let reason, let ago):
            state = .closed(reason)
            closedAt = now - min(ago, now)
        }
        delivered = snapshot.delivered
        lastSeq = snapshot.lastSeq
        sentBytes = snapshot.sentBytes
        origin = snapshot.origin
        client = snapshot.client
        if target.gmcp { gmcp = snapshot.gmcp.map { GMCPLog(restoring: $0) } ?? GMCPLog() }
    }
}
