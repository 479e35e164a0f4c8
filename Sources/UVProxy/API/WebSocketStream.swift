/// One WebSocket connection attached to a session (`GET /sessions/{id}/ws`, `GET /ws`, SPEC §8):
/// the thin attachment between a client connection and the pure values of `WebSocket/`.
///
/// Out, it works as an `EventStream` does: it waits on its session (the session's one waiter
/// slot: a newer reader ends it), and each time bytes arrive writes them from its cursor as one
/// frame, at most `maxChunk` bytes, and only while the client has less than `highWater` queued
/// (a client that does not read holds its session back, as an SSE client does, and is cut off
/// by `send-timeout`). Bytes written count as delivered and acknowledged. When the target has
/// closed and everything is sent: a close frame, 1000 with the close reason as its text.
///
/// In, every byte read goes to a `WebSocketFrameParser` (kept only while a message is under
/// way; at most one message, `max-body`, is held); each whole message is input to the target:
/// a text message in `terminal` mode is one command (the line-ending rule of Input), anything
/// else raw bytes.
///
/// Subprotocols (`Mode`): `binary` (websockify: binary frames both ways, offsets are byte
/// counts), `gmcp.mudstandards.org` (the bytes in binary frames; GMCP text frames when the
/// session speaks GMCP) and `terminal.mudstandards.org` or none (text frames decoded in the
/// target's charset, as SSE decodes them).
final class WebSocketStream: SessionObserver, TurnTask, ConnectionTakeover {
    enum Mode { case binary, gmcp, terminal }

    // Stored properties in an order that leaves little padding (one object per WebSocket).
    unowned(unsafe) let connection: HTTPConnection  // owns this object (attachment)
    unowned(unsafe) let api: ProxyAPI
    private(set) var session: Session?
    private(set) var cursor: UInt64
    /// `gmcp.mudstandards.org` on a GMCP session: the seq of the next GMCP message to send, as
    /// a text frame among the binary ones in arrival order (as SSE does).
    private var gmcpCursor: UInt64?
    let mode: Mode
    /// A close frame went out: nothing more is written, the connection ends once it is sent.
    private var closeSent = false
    private enum Wake { case none, pump, replaced }
    private var wake = Wake.none
    var isQueuedForTurn = false
    private var decoder: TextDecoder
    /// The frame parser, only while a frame or a fragmented message is under way: between
    /// messages a new parser reads on exactly as the old one would, so an idle WebSocket holds
    /// none (thousands of idle players: its 56 bytes each counted).
    private var parserUnderWay: ParserBox?
    private final class ParserBox {
        var parser: WebSocketFrameParser
        init(_ parser: WebSocketFrameParser) { self.parser = parser }
    }

    static let highWater = 64 * 1024
    /// Largest frame of session bytes.
    static let maxChunk: UInt64 = 32 * 1024
    /// An idle connection is pinged this often (SPEC §8: 30 s).
    static let pingIntervalMs: UInt64 = 30_000
    /// Our subprotocols, the most capable first: a client that offers several gets that one.
    static let subprotocols = ["gmcp.mudstandards.org", "binary", "terminal.mudstandards.org"]

    init(connection: HTTPConnection, api: ProxyAPI, session: Session, cursor: UInt64, subprotocol: String?) {
        self.connection = connection
        self.api = api
        self.session = session
        self.cursor = cursor
        switch subprotocol {
        case "binary": mode = .binary
        case "gmcp.mudstandards.org": mode = .gmcp
        default: mode = .terminal
        }
        decoder = TextDecoder(charset: session.target.charset, escapesJSON: false)
        if mode == .gmcp, let log = session.gmcp {
            var seq = log.next  // from the first message at or after the text's start
            while seq > log.base, let previous = log.message(seq - 1), previous.offset >= cursor { seq -= 1 }
            gmcpCursor = seq
        }
    }

    private var nextGMCP: GMCPLog.Message? {
        guard let seq = gmcpCursor else { return nil }
        return session?.gmcp?.message(seq)
    }

    /// A GMCP message as a text frame, `Package.Message <JSON>` as the game sent it (any
    /// invalid UTF-8 made U+FFFD: a text frame must be UTF-8).
    private func writeGMCP(_ message: GMCPLog.Message) {
        var text: [UInt8] = []
        var utf8 = TextDecoder(charset: .utf8, escapesJSON: false)
        message.package.withUnsafeBytes { utf8.decode($0, into: &text) }
        if let payload = message.payload {
            text.append(UInt8(ascii: " "))
            payload.withUnsafeBytes { utf8.decode($0, into: &text) }
        }
        utf8.finish(into: &text)
        var frame: [UInt8] = []
        WebSocketFrameEncoder.appendText(text, to: &frame)
        frame.withUnsafeBytes { connection.writeStream($0) }
        guard let session else { return }
        gmcpCursor = message.seq + 1
        if session.gmcp!.delivered < message.seq + 1 { session.gmcp!.delivered = message.seq + 1 }
    }

    // MARK: Out

    /// Writes what is buffered, then waits on the session (or closes, if it closed).
    func pump() {
        while let session, !closeSent, connection.mayStreamMore(below: WebSocketStream.highWater),
              cursor < session.ring.end || nextGMCP != nil {
            if let message = nextGMCP, message.offset <= cursor {
                writeGMCP(message)
                continue
            }
            guard session.ring.check(cursor) == .ok else {
                // Another reader acknowledged past this one and the history was evicted: the
                // client learns it with a 409 when it attaches again.
                return sendClose(WebSocket.CloseCode.policyViolation, "offset \(cursor) was evicted")
            }
            var to = min(session.ring.end, cursor + WebSocketStream.maxChunk)
            if let message = nextGMCP { to = min(to, message.offset) }  // the bytes before it first
            if mode == .terminal, session.target.charset == .utf8, session.isOpen || to < session.ring.end {
                to -= UInt64(session.ring.incompleteUTF8Tail(from: cursor, to: to))
            }
            guard to > cursor else { break }  // only part of a character so far
            write(from: cursor, to: to)
        }
        guard let session, !closeSent else { return }
        if !session.isOpen, cursor == session.ring.end, nextGMCP == nil {
            if connection.mayStreamMore(below: WebSocketStream.highWater) {
                sendClose(WebSocket.CloseCode.normal, session.closeReason?.text ?? "closed")
            }  // else: connectionDrained comes back here
            return
        }
        session.setWaiter(self)
    }

    private func write(from: UInt64, to: UInt64) {
        guard let session else { return }
        var payload = api.scratch
        api.scratch = []  // keep the buffer uniquely referenced while we fill it
        payload.clear()
        session.ring.withBytes(from: from, max: Int(to - from)) { a, b in
            if mode == .terminal {
                decoder.decode(a, into: &payload)
                decoder.decode(b, into: &payload)
            } else {
                payload.append(contentsOf: a)
                payload.append(contentsOf: b)
            }
        }
        if mode == .terminal { decoder.finish(into: &payload) }
        var header = api.frameHeader
        api.frameHeader = []
        header.clear()
        WebSocketFrameEncoder.appendHeader(opcode: mode == .terminal ? .text : .binary, payloadLength: payload.count,
                                           to: &header)
        header.withUnsafeBytes { h in payload.withUnsafeBytes { p in connection.writeStream(h, p) } }
        api.frameHeader = header
        api.scratch = payload
        guard self.session != nil else { return }  // the write failed and closed the connection
        cursor = to
        session.delivered = to
        session.acknowledge(upTo: to)
    }

    /// A close frame, then the end of the connection once it is sent (the client answers with
    /// its own close or not: it has nothing more to receive).
    func sendClose(_ code: UInt16, _ reason: String) {
        guard !closeSent else { return }
        closeSent = true
        var frame: [UInt8] = []
        WebSocketFrameEncoder.appendClose(code: code, reason: Array(reason.utf8), to: &frame)
        frame.withUnsafeBytes { connection.writeStream($0) }
        detach()
        connection.endStream()
    }

    /// Every `pingIntervalMs`: a client that has taken nothing of what it is owed for
    /// `send-timeout` is cut off (SPEC §5); an idle one is pinged.
    func keepAlive() {
        guard session != nil, !closeSent else { return }
        if connection.sendStalled(now: api.now) { return connection.close() }
        if connection.queuedBytes == 0, api.now >= connection.lastRead + WebSocketStream.pingIntervalMs / 2 {
            var frame: [UInt8] = []
            WebSocketFrameEncoder.appendPing(to: &frame)
            frame.withUnsafeBytes { connection.writeStream($0) }
        }
        connection.hold(until: api.now + WebSocketStream.pingIntervalMs)
    }

    /// The client took everything queued: write more.
    func connectionDrained() {
        pump()
    }

    /// Stops watching the session (the connection is closing, or the stream ended).
    func detach() {
        guard let session else { return }
        self.session = nil
        session.removeWaiter(self)
        api.webSockets -= 1
    }

    // MARK: In

    func connectionDidRead(_ bytes: UnsafeRawBufferPointer) {
        guard !closeSent else { return }  // closing: what the client still sends is dropped
        let failure: WebSocketFrameParser.Failure?
        if let box = parserUnderWay {
            failure = box.parser.feed(bytes) { event in self.received(event) }
            if box.parser.isBetweenMessages { parserUnderWay = nil }
        } else {
            // A message is at most `max-body` (SPEC §8).
            var parser = WebSocketFrameParser(maxMessageSize: connection.maxBody)
            failure = parser.feed(bytes) { event in self.received(event) }
            if failure == nil, !parser.isBetweenMessages { parserUnderWay = ParserBox(parser) }
        }
        if let failure { sendClose(failure.code, failure.description) }
    }

    private func received(_ event: WebSocketFrameParser.Event) {
        guard !closeSent else { return }
        switch event {
        case .text(let message) where mode == .gmcp:
            sendGMCP(message)
        case .text(let message):
            input(message, command: mode == .terminal)
        case .binary(let message):
            input(message, command: false)
        case .ping(let payload):
            var frame: [UInt8] = []
            WebSocketFrameEncoder.appendPong(payload, to: &frame)
            frame.withUnsafeBytes { connection.writeStream($0) }
        case .pong:
            break
        case .close(let code, _):
            // The closing handshake (§5.5.1): echo the code, then end.
            sendClose(code ?? WebSocket.CloseCode.normal, "")
        }
    }

    /// `gmcp.mudstandards.org`: a text message is GMCP, `Package.Message[ <JSON>]`, to the game.
    /// One that is malformed, or comes before the game has offered GMCP, is dropped (as `POST
    /// …/gmcp` would answer it 400 or 409): the bytes stream goes on.
    private func sendGMCP(_ message: [UInt8]) {
        guard let session, session.isOpen, let link = session.link, link.gmcpEnabled,
              let parsed = try? GMCP.parseClientMessage(message) else { return }
        session.lastTouched = api.now
        var frame: [UInt8] = []
        GMCP.encode(package: parsed.package, payload: parsed.payload, into: &frame)
        if session.sendGMCP(frame) == .full {
            sendClose(WebSocket.CloseCode.tryAgainLater, "too much input is waiting for the target")
        }
    }

    /// One client message to the target: a command (the line-ending rule of Input) or raw bytes.
    private func input(_ message: [UInt8], command: Bool) {
        guard let session else { return }
        session.lastTouched = api.now
        let result = message.withUnsafeBytes { bytes -> Session.InputResult in
            guard command else { return session.sendInput(bytes, .init(start: nil, count: 0), seq: nil) }
            let crlf = UnsafeRawBufferPointer(start: UnsafeRawPointer(("\r\n" as StaticString).utf8Start), count: 2)
            let (keep, append) = LineEnding.terminate(message)
            return session.sendInput(UnsafeRawBufferPointer(rebasing: bytes[0..<keep]),
                                     append ? crlf : .init(start: nil, count: 0), seq: nil)
        }
        if result == .full {
            // More input waits for the target than the session may hold (SPEC §2's input
            // limit): the client is told to come back later rather than held in memory.
            sendClose(WebSocket.CloseCode.tryAgainLater, "too much input is waiting for the target")
        }
    }

    // MARK: SessionObserver

    func sessionDidChange(_ session: Session) {
        if wake == .none { wake = .pump }
        connection.loop.turns.enqueue(self)
    }

    /// A newer reader of the same session took over.
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
        case .replaced: sendClose(WebSocket.CloseCode.replaced, "replaced by a newer reader")
        }
    }
}
