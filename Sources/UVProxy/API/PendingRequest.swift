/// A connection's request that waits for a session: a long-poll read, or (later) an SSE stream.
/// One per client connection that ever waits, reused for every wait on it.
final class PendingRequest: SessionObserver, TurnTask {
    unowned(unsafe) let connection: HTTPConnection  // owns this object (attachment)
    unowned(unsafe) let api: ProxyAPI

    struct Read {
        let session: Session
        let since: UInt64
        let max: Int
        let compat: Bool
        let duplicate: Bool
    }

    var read: Read?
    /// The session changed or a newer read replaced this one: answer at the end of the turn
    /// (never inside the callback of the target or client that caused it).
    private var answerRequested = false
    var isQueuedForTurn = false

    init(connection: HTTPConnection, api: ProxyAPI) {
        self.connection = connection
        self.api = api
    }

    /// Ends the wait without answering (connection closing); returns the read if there was one.
    @discardableResult
    func cancel() -> Read? {
        guard let r = read else { return nil }
        read = nil
        answerRequested = false
        r.session.removeWaiter(self)
        api.longPolls -= 1
        return r
    }

    /// Answers the held read with whatever the session now has at its cursor.
    func answer() {
        guard let r = cancel() else { return }
        api.respondRead(connection, session: r.session, from: r.since, max: r.max, compat: r.compat, duplicate: r.duplicate)
    }

    private func answerThisTurn() {
        answerRequested = true
        connection.loop.turns.enqueue(self)
    }

    func runTurnTask() {
        guard answerRequested else { return }  // answered or cancelled meanwhile
        answer()
    }

    func sessionDidChange(_ session: Session) { answerThisTurn() }

    func sessionObserverReplaced(_ session: Session) { answerThisTurn() }
}
