/// A connection's request that waits for a session: a long-poll read, or (later) an SSE stream.
/// One per client connection that ever waits, reused for every wait on it.
final class PendingRequest: SessionObserver {
    unowned(unsafe) let connection: HTTPConnection  // owns this object (attachment)
    unowned(unsafe) let api: ProxyAPI

    struct Read {
        let session: Session
        let since: UInt64
        let max: Int
        let compat: Bool
    }

    var read: Read?

    init(connection: HTTPConnection, api: ProxyAPI) {
        self.connection = connection
        self.api = api
    }

    /// Ends the wait without answering (connection closing); returns the read if there was one.
    @discardableResult
    func cancel() -> Read? {
        guard let r = read else { return nil }
        read = nil
        r.session.removeWaiter(self)
        api.longPolls -= 1
        return r
    }

    /// Answers the held read with whatever the session now has at its cursor.
    func answer() {
        guard let r = cancel() else { return }
        api.respondRead(connection, session: r.session, from: r.since, max: r.max, compat: r.compat)
    }

    func sessionDidChange(_ session: Session) { answer() }

    func sessionObserverReplaced(_ session: Session) { answer() }
}
