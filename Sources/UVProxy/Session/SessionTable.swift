/// Limits that apply to sessions created from now on (a reload changes them for new ones).
public struct SessionSettings: Sendable {
    public var maxSessions = 10_000
    /// Most open sessions of one client address (0: no limit; SPEC §5).
    public var maxSessionsPerClient = 0
    public var bufferSize = 1_048_576
    public var idleTimeoutMs: UInt64 = 600_000
    public var lingerMs: UInt64 = 60_000
    /// How long a deleted session's queued input may still be written (SPEC §2, Delete).
    public var deleteDrainMs: UInt64 = 5_000
    public init() {}
}

/// Counters for `/metrics` and logs.
public struct SessionCounters {
    public var created: UInt64 = 0
    public var connectFailures: UInt64 = 0
    public var upstreamReceivedBytes: UInt64 = 0
    public var upstreamSentBytes: UInt64 = 0
    public var backpressurePauses: UInt64 = 0
    /// History bytes dropped to make room for new ones.
    public var evictedBytes: UInt64 = 0
    public var closeReasons: [String: UInt64] = [:]
}

/// Why a create failed (SPEC §2, Create).
public enum CreateError: Error, Equatable {
    case full              // 503
    case clientFull        // 429: max-sessions-per-client
    case failed(String)    // 502, with the libuv error name
    case timedOut          // 504
    case shuttingDown      // 503: the daemon is stopping
    case noDescriptors     // 503 + Retry-After: the process is out of file descriptors (EMFILE/ENFILE)

    /// What a failed connect means: out of descriptors is ours, not the target's.
    static func connect(_ code: Int32) -> CreateError {
        UVError(code, "connect").isOutOfDescriptors ? .noDescriptors : .failed(UVError.name(code))
    }
}

extension CreateError: CustomStringConvertible {
    /// As logs give it: the error's name for a failed connect (`ECONNREFUSED`), a word otherwise.
    public var description: String {
        switch self {
        case .full: return "max-sessions"
        case .clientFull: return "max-sessions-per-client"
        case .failed(let name): return name
        case .timedOut: return "timeout"
        case .shuttingDown: return "shutting down"
        case .noDescriptors: return "out of file descriptors"
        }
    }
}

/// Events worth a log line; the daemon turns them into log records.
public protocol SessionEventSink: AnyObject {
    func sessionOpened(_ session: Session)
    func sessionClosed(_ session: Session, reason: CloseReason)
    func sessionConnectFailed(target: Target, error: CreateError)
}

/// All sessions by id, their lifecycle and their timeouts.
///
/// Each session has one deadline in the shared `DeadlineQueue`, whose meaning follows its state:
/// connect timeout while connecting, idle timeout while open (checked lazily against
/// `lastTouched`, so a request never touches the heap), linger once closed, input drain once
/// deleted. Nothing here walks all sessions, except shutdown.
public final class SessionTable {
    public var settings: SessionSettings
    private let deadlines: DeadlineQueue
    private let clock: () -> UInt64
    private let makeLink: (Session) throws -> UpstreamLink
    private var sessions = SessionIndex()
    /// Open (and connecting) sessions per client address, while a per-client limit is set.
    private var perClient: [String: Int] = [:]
    /// Sessions still connecting, with whom to tell the outcome.
    private var pendingCreates: [ObjectIdentifier: (session: Session, completion: (Result<Session, CreateError>) -> Void)] = [:]
    /// Connecting or open: what `max-sessions` limits.
    public private(set) var openCount = 0
    public private(set) var closedCount = 0
    /// Target connections still delivering a closed session's input (a DELETE, a shutdown), the
    /// deleted sessions' too, which have left the table: a shutdown waits for them.
    public private(set) var draining = 0
    public var counters = SessionCounters()
    public weak var events: SessionEventSink?
    /// Whether the process's send queues are over their budget (the loop knows; tests: never).
    public var isOverSendBudget: () -> Bool = { false }
    var now: UInt64 { clock() }

    public init(settings: SessionSettings, deadlines: DeadlineQueue, clock: @escaping () -> UInt64,
                makeLink: @escaping (Session) throws -> UpstreamLink) {
        self.settings = settings
        self.deadlines = deadlines
        self.clock = clock
        self.makeLink = makeLink
    }

    public func session(_ id: SessionID) -> Session? { sessions.find(id) }

    /// New limits (a reload). `max-sessions` and `buffer-size` apply to new sessions; idle
    /// timeout and linger to every session at its next deadline.
    public func apply(_ new: SessionSettings) {
        let idleWasOff = settings.idleTimeoutMs == 0
        settings = new
        // Sessions opened while the idle timeout was off have no deadline to notice it (reloads
        // are rare, so walking the sessions is fine here).
        if idleWasOff, new.idleTimeoutMs > 0 {
            for session in sessions.all where session.state == .open { scheduleIdleCheck(session) }
        }
    }

    /// Bytes held in all session buffers.
    public internal(set) var bufferedBytes = 0

    public var allSessions: [Session] { sessions.all }

    // MARK: Create

    /// Connects a new session to `target`; `completion` runs once the outcome is known.
    /// `client` is what `max-sessions-per-client` counts by (nil: not counted); `origin` is the
    /// client's address (the session's `origin`: MNES, the PROXY header to the target).
    public func create(target: Target, client: String? = nil, origin: SocketAddress? = nil,
                       completion: @escaping (Result<Session, CreateError>) -> Void) {
        guard openCount < settings.maxSessions else {
            completion(.failure(.full))
            return
        }
        let limit = settings.maxSessionsPerClient
        if limit > 0, let client, perClient[client, default: 0] >= limit {
            completion(.failure(.clientFull))
            return
        }
        var id = SessionID.random()
        while sessions.find(id) != nil { id = SessionID.random() }
        let session = Session(id: id, target: target, bufferSize: settings.bufferSize, now: clock(), table: self)
        session.origin = origin?.endpoint?.unmapped  // before the link: a telnet link reads it (MNES)
        let link: UpstreamLink
        do {
            link = try makeLink(session)
        } catch {
            if let uv = error as? UVError, uv.isOutOfDescriptors {
                events?.sessionConnectFailed(target: target, error: .noDescriptors)
                completion(.failure(.noDescriptors))
                return
            }
            counters.connectFailures += 1
            completion(.failure(.failed("\(error)")))
            return
        }
        openCount += 1
        if limit > 0, let client {
            session.client = client
            perClient[client, default: 0] += 1
        }
        session.link = link
        pendingCreates[ObjectIdentifier(session)] = (session, completion)
        deadlines.schedule(session, at: clock() + target.connectTimeoutMs)
        link.connect(to: target.address)
    }

    func upstreamConnected(_ session: Session, status: Int32) {
        guard session.state == .connecting,
              let completion = pendingCreates.removeValue(forKey: ObjectIdentifier(session))?.completion else { return }
        deadlines.cancel(session)
        guard status == 0 else {
            failCreate(session, .connect(status), completion)
            return
        }
        session.connected()
        sessions.insert(session)
        counters.created += 1
        session.lastTouched = clock()
        session.openedAt = session.lastTouched
        scheduleIdleCheck(session)
        session.link?.resumeReading()
        events?.sessionOpened(session)
        completion(.success(session))
    }

    private func failCreate(_ session: Session, _ error: CreateError,
                            _ completion: (Result<Session, CreateError>) -> Void) {
        openCount -= 1
        releaseClientSlot(session)
        if error != .shuttingDown && error != .noDescriptors { counters.connectFailures += 1 }
        session.link?.close()
        session.link = nil
        if error != .shuttingDown { events?.sessionConnectFailed(target: session.target, error: error) }
        completion(.failure(error))
    }

    // MARK: Target events

    func upstreamEnded(_ session: Session, error: Int32) {
        switch session.state {
        case .connecting: upstreamConnected(session, status: error)
        case .open: close(session, reason: CloseReason(uvError: error))
        case .closed: upstreamFinished(session)  // a draining target hung up
        }
    }

    /// A closing session's input reached the target (or the target hung up): the connection can go.
    func upstreamFinished(_ session: Session) {
        guard session.closeReason != nil, session.link != nil else { return }
        finishDrain(session, now: clock())
    }

    /// Ends a closing session's connection: gracefully once its input is delivered, with a
    /// reset when the drain time ran out (SPEC: "for at most 5 seconds, then the connection closes").
    private func finishDrain(_ session: Session, now: UInt64, delivered: Bool = true) {
        if delivered { session.link?.close() } else { session.link?.abort() }
        session.link = nil
        draining -= 1
        if session.isRemoved {
            deadlines.cancel(session)
        } else {
            deadlines.schedule(session, at: session.closedAt + settings.lingerMs)
        }
    }

    // MARK: Closing and removal

    /// Closes the target connection; the bytes stay readable for `linger`.
    /// With `drain`, the connection ends gracefully: queued input is still delivered (FIN after
    /// it, never a reset that would discard it) for at most `deleteDrainMs`.
    public func close(_ session: Session, reason: CloseReason, drain: Bool = false) {
        guard session.state == .open else { return }
        session.markClosed(reason, now: clock())
        openCount -= 1
        releaseClientSlot(session)
        counters.closeReasons[reason.text, default: 0] += 1
        if !session.isRemoved { closedCount += 1 }
        if drain, let link = session.link {
            link.finish()
            draining += 1
            deadlines.schedule(session, at: clock() + settings.deleteDrainMs)
        } else {
            session.link?.close()
            session.link = nil
            if session.isRemoved {
                deadlines.cancel(session)
            } else {
                deadlines.schedule(session, at: session.closedAt + settings.lingerMs)
            }
        }
        events?.sessionClosed(session, reason: reason)
        // Last: an observer may answer now and run the client's next request, on this session too.
        session.notifyObservers()
        if let waiter = session.gmcpWaiter {  // a GMCP poll learns the end too (at the end of the turn)
            session.gmcpWaiter = nil
            waiter.gmcpArrived()
        }
    }

    /// The session no longer counts against its client's limit (it closed, or never opened).
    private func releaseClientSlot(_ session: Session) {
        guard let client = session.client else { return }
        session.client = nil
        let left = perClient[client, default: 1] - 1
        perClient[client] = left > 0 ? left : nil
    }

    /// DELETE: the id stops working now; queued input is still written for a while.
    public func delete(_ session: Session) {
        remove(session)
        close(session, reason: .deleted, drain: true)
    }

    private func remove(_ session: Session) {
        guard !session.isRemoved else { return }
        session.isRemoved = true
        sessions.remove(session.id)
        bufferedBytes -= session.ring.count + (session.gmcp?.heldBytes ?? 0)
        if session.closeReason != nil {
            closedCount -= 1
            deadlines.cancel(session)
        }
    }

    func sessionDeadlineReached(_ session: Session, now: UInt64) {
        switch session.state {
        case .connecting:
            guard let completion = pendingCreates.removeValue(forKey: ObjectIdentifier(session))?.completion else { return }
            failCreate(session, .timedOut, completion)
        case .open:
            if session.hasObservers { session.lastTouched = now }  // a waiting read counts as a touch
            if settings.idleTimeoutMs > 0, now >= session.lastTouched + settings.idleTimeoutMs {
                close(session, reason: .idleTimeout)
            } else {
                scheduleIdleCheck(session)
            }
        case .closed:
            if session.link != nil {
                finishDrain(session, now: now, delivered: false)  // drain time is over
            } else if !session.isRemoved {
                // A reload may have lengthened linger since this deadline was set.
                let due = session.closedAt + settings.lingerMs
                if now >= due { remove(session) } else { deadlines.schedule(session, at: due) }  // linger is over
            }
        }
    }

    private func scheduleIdleCheck(_ session: Session) {
        guard settings.idleTimeoutMs > 0 else { return }
        deadlines.schedule(session, at: session.lastTouched + settings.idleTimeoutMs)
    }

    /// Closes every open session with `reason` (shutdown), and fails creates still connecting.
    /// Returns how many target connections still deliver input (deleted sessions' included).
    @discardableResult
    public func closeAll(reason: CloseReason) -> Int {
        failPendingCreates(.shuttingDown)
        for session in sessions.all where session.state == .open {
            close(session, reason: reason, drain: true)
        }
        return draining
    }

    // MARK: In-place upgrade (SPEC §9)

    /// The old process's side: `session` now belongs to another process. It leaves the table
    /// as if it had never been here: no close, no event, no counter; its link, already closed by
    /// the caller, is dropped. Requests still holding the object read it as it was.
    public func release(_ session: Session) {
        guard !session.isRemoved else { return }
        deadlines.cancel(session)
        if session.link != nil, session.closeReason != nil { draining -= 1 }  // handed over mid-drain
        session.link = nil
        if session.state == .open {
            openCount -= 1
            releaseClientSlot(session)
        }
        session.isRemoved = true
        sessions.remove(session.id)
        bufferedBytes -= session.ring.count + (session.gmcp?.heldBytes ?? 0)
        if session.closeReason != nil { closedCount -= 1 }
    }

    /// Fails every create still connecting with `error` (an upgrade: the new process cannot
    /// take a half-open connection); the client creates again.
    public func failPendingCreates(_ error: CreateError) {
        let creates = pendingCreates
        pendingCreates.removeAll()
        for (session, completion) in creates.values {
            deadlines.cancel(session)
            failCreate(session, error, completion)
        }
    }

    /// Why `adopt` refused a session.
    public enum AdoptError: Error, Equatable {
        /// A session with this id is in the table already.
        case duplicateID
        /// An open session needs its target connection; a closed one takes none.
        case linkMismatch
    }

    /// Takes over a session that an older process handed over (SPEC §9): rebuilds it from its
    /// snapshot with `target` (the new configuration's target of that name) and `link`, the
    /// connection made from the handle received with it (nil for a closed, lingering session).
    ///
    /// The caller makes `link` first, restoring in it what the snapshot holds of the connection:
    /// the telnet filter (`TelnetFilter(restoring:)`) and `unwrittenOutput`, written to the
    /// stream as it is (already escaped) before anything else. Then this counts the session
    /// like one it created (`max-sessions` is not checked: an upgrade drops no session; a lower
    /// limit refuses creates until enough have ended), sets its deadline to the time that was
    /// left, and starts reading from the target unless the buffer was full.
    @discardableResult
    public func adopt(_ snapshot: SessionSnapshot, target: Target, link: UpstreamLink?) throws(AdoptError) -> Session {
        try adopt(snapshot, target: target) { _ in link }
    }

    /// `adopt`, with the link made by `makeLink` from the rebuilt session (a link that needs
    /// its session, as `Upstream` does). `makeLink` is called once, before anything is counted.
    @discardableResult
    func adopt(_ snapshot: SessionSnapshot, target: Target,
               makeLink: (Session) -> UpstreamLink?) throws(AdoptError) -> Session {
        guard sessions.find(snapshot.id) == nil else { throw .duplicateID }
        let isOpen = snapshot.status == .open
        let now = clock()
        let session = Session(restoring: snapshot, target: target, now: now, table: self)
        let link = makeLink(session)
        guard isOpen == (link != nil) else {
            link?.close()
            throw .linkMismatch
        }
        sessions.insert(session)
        bufferedBytes += session.ring.count + (session.gmcp?.heldBytes ?? 0)
        if isOpen {
            openCount += 1
            if settings.maxSessionsPerClient > 0, let client = session.client {
                perClient[client, default: 0] += 1
            } else {
                session.client = nil  // counted nowhere here
            }
            session.link = link
        } else {
            closedCount += 1
            session.client = nil
        }
        if let remaining = snapshot.deadlineInMs {
            deadlines.schedule(session, at: now + remaining)
        } else if isOpen {
            scheduleIdleCheck(session)
        } else {
            deadlines.schedule(session, at: session.closedAt + settings.lingerMs)
        }
        if let link {
            if session.readingPaused { link.pauseReading() } else { link.resumeReading() }
        }
        return session
    }
}
