/// GMCP's endpoints (SPEC §7): the session's messages (`GET …/gmcp`, long-polled like a read),
/// the latest data per package (`GET …/gmcp/state`) and messages to the game (`POST …/gmcp`).
/// The messages themselves come from the telnet filter into the session's `GMCPLog`.
extension ProxyAPI {
    /// The session's GMCP log, or a `409` when its target does not speak GMCP.
    private func gmcpLog(_ session: Session, _ connection: HTTPConnection) -> Bool {
        guard session.gmcp != nil else {
            error(connection, .conflict, "GMCP is not enabled for this session's target (gmcp: true in its configuration)")
            return false
        }
        return true
    }

    func gmcp(_ connection: HTTPConnection, _ session: Session, _ request: HTTPRequest, _ params: Parameters) {
        guard gmcpLog(session, connection) else { return }
        if request.method == .post { return gmcpSend(connection, session, request) }
        guard let (since, waitMs) = sinceAndWait(params, connection) else { return }
        session.lastTouched = now
        let from = since ?? session.gmcp!.delivered
        if case .ahead(let next) = session.gmcp!.since(from) { return gmcpAhead(connection, from, next: next) }
        if from == session.gmcp!.next, waitMs > 0, session.isOpen {
            let waiter = GMCPWaiter(connection: connection, api: self, session: session, since: from)
            if let older = session.gmcpWaiter {  // a newer poll answers the older one, at the end of the turn
                session.gmcpWaiter = nil
                older.gmcpArrived()
            }
            session.gmcpWaiter = waiter
            connection.attachment = .gmcpPoll(waiter)
            connection.hold(until: now + waitMs)
            return
        }
        respondGMCP(connection, session, from: from)
    }

    /// `409` with `X-Gmcp-Base`: message `seq` is no longer held (a read or a stream's resume).
    func gmcpEvicted(_ connection: HTTPConnection, _ seq: UInt64, base: UInt64) {
        connection.begin(.conflict)
        connection.header("X-Gmcp-Base", base)
        connection.finishError("GMCP message \(seq) was evicted; the oldest kept is \(base)")
    }

    /// `400`: no message has seq `seq` yet, nor will the next.
    func gmcpAhead(_ connection: HTTPConnection, _ seq: UInt64, next: UInt64) {
        error(connection, .badRequest, "GMCP seq \(seq) is beyond the next GMCP message (\(next))")
    }

    /// `{"next": K2, "messages": [...]}` from `from`, or `409` with `X-Gmcp-Base` when it was
    /// evicted. Answering counts as delivering: a read without `since` starts after it.
    func respondGMCP(_ connection: HTTPConnection, _ session: Session, from: UInt64) {
        guard let log = session.gmcp else { return respondEmpty(connection) }
        var body: [UInt8] = []
        switch log.since(from) {
        case .evicted(let base): return gmcpEvicted(connection, from, base: base)
        case .ahead(let next): return gmcpAhead(connection, from, next: next)
        case .messages(let messages):
            body.append("{\"next\": ")
            body.append(contentsOf: String(log.next).utf8)
            body.append(", \"messages\": [")
            for (i, message) in messages.enumerated() {
                if i > 0 { body.append(", ") }
                message.appendJSON(into: &body)
            }
            body.append("]}")
        }
        session.gmcp!.delivered = max(session.gmcp!.delivered, session.gmcp!.next)
        respond(connection, .ok, contentType: "application/json", body: body)
    }

    func gmcpState(_ connection: HTTPConnection, _ session: Session) {
        guard gmcpLog(session, connection) else { return }
        var body: [UInt8] = []
        session.gmcp!.appendStateJSON(into: &body)
        respond(connection, .ok, contentType: "application/json", body: body)
    }

    /// `POST …/gmcp`, body `Package.Message[ <JSON>]`: to the game, after the input before it.
    private func gmcpSend(_ connection: HTTPConnection, _ session: Session, _ request: HTTPRequest) {
        let message: (package: [UInt8], payload: [UInt8]?)
        do {
            let parsed = try GMCP.parseClientMessage(request.body)
            message = (Array(parsed.package), parsed.payload.map { Array($0) })
        } catch let failure {
            return error(connection, .badRequest, failure == .badPackage
                ? "the GMCP package must be [A-Za-z0-9_.-]+ (at most \(GMCP.maxPackageLength) bytes)"
                : "the GMCP payload is not JSON")
        }
        guard session.isOpen, let link = session.link else {
            return error(connection, .conflict, "session is closed (\(session.closeReason?.text ?? "closed"))")
        }
        guard link.gmcpEnabled else {
            return error(connection, .conflict, "GMCP is not enabled on this session yet (the game has not offered it)")
        }
        session.lastTouched = now
        var frame: [UInt8] = []
        GMCP.encode(package: message.package, payload: message.payload, into: &frame)
        guard session.sendGMCP(frame) == .queued else {
            return error(connection, .serviceUnavailable, "too much input is waiting for the target", retryAfter: true)
        }
        respondEmpty(connection)
    }
}

/// A `GET …/gmcp?wait=` waiting for the session's next GMCP message (the session's GMCP waiter
/// slot; text readers have their own). Answered at the end of the turn the message came in,
/// never inside the target's callback.
final class GMCPWaiter: TurnTask {
    unowned(unsafe) let connection: HTTPConnection  // owns this object (attachment)
    unowned(unsafe) let api: ProxyAPI
    private var session: Session?
    private let since: UInt64
    var isQueuedForTurn = false

    init(connection: HTTPConnection, api: ProxyAPI, session: Session, since: UInt64) {
        self.connection = connection
        self.api = api
        self.session = session
        self.since = since
    }

    /// A message arrived, the session closed, or a newer poll took the slot (the session has let
    /// go of this waiter): answer at the end of the turn, never inside another client's callback.
    func gmcpArrived() { connection.loop.turns.enqueue(self) }

    func runTurnTask() { answerNow() }

    /// Answers with what there is (nothing, at the wait's end).
    func answerNow() {
        guard let session = cancel() else { return }
        api.respondGMCP(connection, session, from: since)
    }

    /// Ends the wait without answering (the connection is closing); returns the session.
    @discardableResult
    func cancel() -> Session? {
        guard let session else { return nil }
        self.session = nil
        if session.gmcpWaiter === self { session.gmcpWaiter = nil }
        if case .gmcpPoll = connection.attachment { connection.attachment = .none }
        return session
    }
}
