/// One open Server-Sent Events response (`GET /sessions/{id}/events`, SPEC §2).
///
/// It waits on its session like a long-poll (the session's waiter slot), and each time bytes
/// arrive writes them as one event: `id: <offset after the chunk>` and `data: <JSON string>`.
/// Bytes written count as acknowledged and delivered. It holds no buffer of its own (events are
/// built in the API's scratch buffer), so an idle stream costs what an idle long-poll costs.
final class EventStream: SessionObserver, TurnTask {
    unowned(unsafe) let connection: HTTPConnection  // owns this object (attachment)
    unowned(unsafe) let api: ProxyAPI
    private(set) var session: Session?
    /// The offset the next event starts at.
    private(set) var cursor: UInt64
    /// On a GMCP session (SPEC §7): the seq of the next GMCP message to send. GMCP events go out
    /// in arrival order among the text events (a message that came at offset N goes after the
    /// text before N), and every event's id is then `<offset>:<this>`, so `Last-Event-ID`
    /// resumes both. nil: a session without GMCP, whose ids are plain offsets.
    private(set) var gmcpCursor: UInt64?
    private var decoder: TextDecoder
    /// What the session asked for, done at the end of the turn (`TurnQueue`).
    private enum Wake { case none, pump, replaced }
    private var wake = Wake.none
    var isQueuedForTurn = false

    /// Write more only while the client has less than this queued: a slow client holds its
    /// session back (and, once the buffer fills, the target) instead of growing our memory.
    static let highWater = 64 * 1024
    static let keepAliveComment: [UInt8] = Array(": keep-alive\n\n".utf8)
    /// Largest event: bounds the scratch buffer.
    static let maxChunk: UInt64 = 32 * 1024

    /// `gmcpCursor`: on a GMCP session, the seq to start at (the API has checked that the log
    /// holds it, or that it is the next).
    init(connection: HTTPConnection, api: ProxyAPI, session: Session, cursor: UInt64, gmcpCursor: UInt64?) {
        self.connection = connection
        self.api = api
        self.session = session
        self.cursor = cursor
        self.gmcpCursor = gmcpCursor
        decoder = TextDecoder(charset: session.target.charset)
    }

    /// Writes what is buffered, then waits on the session (or ends, if it closed).
    func pump() {
        // `self.session`, not a local copy: a failed write closes the connection, which detaches
        // this stream (session = nil) in the middle of the loop.
        while let session, connection.mayStreamMore(below: EventStream.highWater), cursor < session.ring.end || hasGMCPDue {
            if let message = nextGMCP, message.offset <= cursor {
                writeGMCP(message)
                continue
            }
            guard session.ring.check(cursor) == .ok else {
                // Another client acknowledged past this stream and the history was evicted:
                // end, so the client reconnects and learns it with a 409.
                return end(event: nil)
            }
            var to = min(session.ring.end, cursor + EventStream.maxChunk)
            let message = nextGMCP
            if let message { to = min(to, message.offset) }  // the text before it first
            if session.target.charset == .utf8, session.isOpen || to < session.ring.end {
                to -= UInt64(session.ring.incompleteUTF8Tail(from: cursor, to: to))
            }
            guard to > cursor else {
                // Only part of a character before the next GMCP message: the message goes first
                // (its id keeps the text's cursor at the character's start, which the text after
                // the message may complete); else the character is still coming.
                if let message {  // here message.offset > cursor, and only a character's part lies between
                    writeGMCP(message)
                    continue
                }
                break
            }
            write(from: cursor, to: to)
        }
        guard let session else { return }  // a write failed and closed the connection
        if !session.isOpen, cursor == session.ring.end, !hasGMCPDue {
            if connection.mayStreamMore(below: EventStream.highWater) {
                end(event: session.closeReason)
            }  // else: connectionDidDrain comes back here
            return
        }
        session.setWaiter(self)
    }

    /// The next GMCP message to send, if the log holds one.
    private var nextGMCP: GMCPLog.Message? {
        guard let seq = gmcpCursor else { return nil }
        return session?.gmcp?.message(seq)
    }

    /// A GMCP message waits to be sent (its text before it is out, or goes first).
    private var hasGMCPDue: Bool { nextGMCP != nil }

    /// `event: gmcp`, its data `{"seq", "package", "data"}`, its id the text offset and the
    /// next seq.
    private func writeGMCP(_ message: GMCPLog.Message) {
        var out = api.scratch
        api.scratch = []
        out.clear()
        out.append("event: gmcp\n")
        EventStream.appendID(cursor, message.seq + 1, to: &out)
        out.append("data: ")
        message.appendJSON(into: &out, includeOffset: false)
        out.append("\n\n")
        out.withUnsafeBytes { connection.writeStream($0) }
        api.scratch = out
        guard session != nil else { return }  // the write failed and closed the connection
        gmcpCursor = message.seq + 1
        if let session, session.gmcp!.delivered < message.seq + 1 { session.gmcp!.delivered = message.seq + 1 }
    }

    private func write(from: UInt64, to: UInt64) {
        guard let session else { return }
        var out = api.scratch
        api.scratch = []  // keep the buffer uniquely referenced while we fill it
        out.clear()
        EventStream.appendID(to, gmcpCursor, to: &out)
        out.append("data: \"")
        session.ring.withBytes(from: from, max: Int(to - from)) { a, b in
            decoder.decode(a, into: &out)
            decoder.decode(b, into: &out)
        }
        decoder.finish(into: &out)  // a character cut at the end of a closed stream: U+FFFD
        out.append("\"\n\n")
        out.withUnsafeBytes { connection.writeStream($0) }
        api.scratch = out
        // The write failed and closed the connection (which detached this stream): nothing was
        // delivered.
        guard self.session != nil else { return }
        cursor = to
        session.delivered = to
        session.acknowledge(upTo: to)
    }

    /// `id: <offset>` or, on a GMCP session, `id: <offset>:<next gmcp seq>`, and its newline.
    private static func appendID(_ offset: UInt64, _ seq: UInt64?, to out: inout [UInt8]) {
        out.append("id: ")
        out.append(contentsOf: String(offset).utf8)  // a small string: no allocation
        if let seq {
            out.append(UInt8(ascii: ":"))
            out.append(contentsOf: String(seq).utf8)
        }
        out.append(UInt8(ascii: "\n"))
    }

    /// Ends the response: with a `close` event when the session closed, else silently.
    func end(event reason: CloseReason?) {
        if let reason {
            var out: [UInt8] = []
            out.append("event: close\n")
            // Every event's id is <offset>:<seq> on a GMCP session (SPEC §7), the close's too.
            if let gmcpCursor { EventStream.appendID(cursor, gmcpCursor, to: &out) }
            out.append("data: {\"reason\": ")
            out.appendJSONString(reason.text.utf8)
            out.append("}\n\n")
            out.withUnsafeBytes { connection.writeStream($0) }
        }
        detach()
        connection.endStream()
    }

    /// A comment line, so that proxies and browsers keep an idle stream open. A client that
    /// has taken no byte of what it is owed for `send-timeout` is cut off (SPEC §5): it would
    /// otherwise pin its session's buffer, even after a DELETE, for as long as TCP keeps the
    /// connection up.
    func keepAlive() {
        guard session != nil else { return }
        if connection.closeIfStalled(now: api.now) { return }
        if connection.queuedBytes == 0 {
            EventStream.keepAliveComment.withUnsafeBytes { connection.writeStream($0) }
        }
        connection.hold(until: api.now + api.settings.keepAliveMs)
    }

    /// The client took everything queued: it is reading; write more.
    func connectionDrained() {
        pump()
    }

    /// Stops watching the session (the connection is closing, or the stream ended).
    func detach() {
        guard let session else { return }
        self.session = nil
        session.removeWaiter(self)
        api.eventStreams -= 1
    }

    // MARK: SessionObserver

    func sessionDidChange(_ session: Session) {
        if wake == .none { wake = .pump }
        connection.loop.turns.enqueue(self)
    }

    /// A newer stream (or a long-poll) of the same session took over.
    func sessionObserverReplaced(_ session: Session) {
        wake = .replaced
        connection.loop.turns.enqueue(self)
    }

    func runTurnTask() {
        let what = wake
        wake = .none
        guard session != nil else { return }  // detached meanwhile
        switch what {
        case .none: break
        case .pump: pump()
        case .replaced: end(event: nil)
        }
    }
}
