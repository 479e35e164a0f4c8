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
/// else raw bytes. The messages of one read go to the target as one write, and the pongs they
/// ask for to the client as one (`InputBatch`): a client sending thousands of tiny frames costs
/// two system calls per read, not two per frame. A client is read once a loop turn (64 KiB at
/// most; then again in the next turn: its share, as pipelined HTTP requests get theirs), and
/// not at all while more than the connection's limit of answers (pongs) waits for it (SPEC §5:
/// a client that sends and never reads is held back by TCP).
///
/// Subprotocols (`Mode`): `binary` (websockify: binary frames both ways, offsets are byte
/// counts), `gmcp.mudstandards.org` (the bytes in binary frames; GMCP text frames when the
/// session speaks GMCP) and `terminal.mudstandards.org` or none (text frames decoded in the
/// target's charset, as SSE decodes them).
final class WebSocketStream: SessionObserver, TurnTask, ConnectionTakeover {
    enum Mode {
        case binary, gmcp, terminal

        /// The subprotocol the handshake chose (one of `subprotocols`; none is `terminal`).
        init(subprotocol: String?) {
            switch subprotocol {
            case "binary": self = .binary
            case "gmcp.mudstandards.org": self = .gmcp
            default: self = .terminal
            }
        }
    }

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
    /// Reading the client is stopped: its share of this turn is read (`resumer` starts it
    /// again in the next) …
    private var readPausedForTurn = false
    /// Made at the first full read: a turn task of its own, so that the session's wake-ups
    /// (this object's turn task) never wait behind the pause, nor the pause behind them.
    private var resumer: ReadResumer?
    /// … or more than the connection's limit of answers waits for it.
    private var readPausedForOutput = false
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

    /// `gmcpCursor`: the seq of the first GMCP message to send (`gmcp.mudstandards.org` on a GMCP
    /// session; `ProxyAPI` finds it from `since`).
    init(connection: HTTPConnection, api: ProxyAPI, session: Session, cursor: UInt64, gmcpCursor: UInt64?, subprotocol: String?) {
        self.connection = connection
        self.api = api
        self.session = session
        self.cursor = cursor
        mode = Mode(subprotocol: subprotocol)
        decoder = TextDecoder(charset: session.target.charset, escapesJSON: false)
        if mode == .gmcp { self.gmcpCursor = gmcpCursor }
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
        if connection.closeIfStalled(now: api.now) { return }
        if connection.queuedBytes == 0, api.now >= connection.lastRead + WebSocketStream.pingIntervalMs / 2 {
            var frame: [UInt8] = []
            WebSocketFrameEncoder.appendPing(to: &frame)
            frame.withUnsafeBytes { connection.writeStream($0) }
        }
        connection.hold(until: api.now + WebSocketStream.pingIntervalMs)
    }

    /// The client took everything queued: read it again if its answers held it back, and write
    /// more.
    func connectionDrained() {
        if readPausedForOutput {
            readPausedForOutput = false
            if !readPausedForTurn, !closeSent { connection.resumeReading() }
        }
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
        var batch = InputBatch()
        if let box = parserUnderWay {
            failure = box.parser.feed(bytes) { event in self.received(event, &batch) }
            if box.parser.isBetweenMessages { parserUnderWay = nil }
        } else {
            // A message is at most `max-body` (SPEC §8).
            var parser = WebSocketFrameParser(maxMessageSize: connection.maxBody)
            failure = parser.feed(bytes) { event in self.received(event, &batch) }
            if failure == nil, !parser.isBetweenMessages { parserUnderWay = ParserBox(parser) }
        }
        flush(&batch)
        if let failure { return sendClose(failure.code, failure.description) }
        if bytes.count >= EventLoop.readSlabSize, !closeSent {
            // A full read: libuv would read on in this turn. The client's share of this turn is
            // read; it is read again in the next (a shorter read ends the turn's reading anyway).
            readPausedForTurn = true
            connection.pauseReading()
            let task = resumer ?? ReadResumer(self)
            resumer = task
            connection.loop.turns.enqueueNextTurn(task)
        }
    }

    /// The turn after a full read: the client is read again (unless its answers pile up).
    fileprivate func resumeAfterTurn() {
        guard session != nil, readPausedForTurn else { return }  // detached: the connection may be gone
        readPausedForTurn = false
        if !readPausedForOutput, !closeSent { connection.resumeReading() }
    }

    /// What one read's messages send on: the target's input and the client's pongs, each as
    /// one write at the end of the read (or before a message that must follow them). The first
    /// message is kept as the parser handed it (one message per read, the usual case, is not
    /// copied); from a second one on they are gathered in the API's `wsInput`, and pongs in its
    /// `wsPongs` (shared by every WebSocket: each read empties them before it returns).
    private struct InputBatch {
        var first: [UInt8]?
        var firstKeep = 0
        var firstCRLF = false
        var gathered = false
        var pongs = false
    }

    private func add(_ message: [UInt8], command: Bool, to batch: inout InputBatch) {
        let (keep, crlf) = command ? LineEnding.terminate(message) : (message.count, false)
        if batch.first == nil && !batch.gathered {
            batch.first = message
            batch.firstKeep = keep
            batch.firstCRLF = crlf
            return
        }
        if let held = batch.first {
            batch.gathered = true
            api.wsInput.append(contentsOf: held[0..<batch.firstKeep])
            if batch.firstCRLF { api.wsInput.append(contentsOf: [13, 10]) }
            batch.first = nil
        }
        api.wsInput.append(contentsOf: message[0..<keep])
        if crlf { api.wsInput.append(contentsOf: [13, 10]) }
    }

    private func received(_ event: WebSocketFrameParser.Event, _ batch: inout InputBatch) {
        guard !closeSent else { return }
        switch event {
        case .text(let message) where mode == .gmcp:
            flushInput(&batch)  // GMCP follows the input before it
            sendGMCP(message)
        case .text(let message) where mode == .terminal:
            // A command in the target's charset, as its output is decoded from it.
            add(TextEncoder.encode(message, to: session?.target.charset ?? .utf8), command: true, to: &batch)
        case .text(let message), .binary(let message):  // binary mode: raw bytes, either way
            add(message, command: false, to: &batch)
        case .ping(let payload):
            batch.pongs = true
            WebSocketFrameEncoder.appendPong(payload, to: &api.wsPongs)
        case .pong:
            break
        case .close(let code, _):
            // The closing handshake (§5.5.1): echo the code, then end.
            flush(&batch)
            sendClose(code ?? WebSocket.CloseCode.normal, "")
        }
    }

    private func flush(_ batch: inout InputBatch) {
        flushInput(&batch)
        guard batch.pongs else { return }
        batch.pongs = false
        if !closeSent {
            api.wsPongs.withUnsafeBytes { connection.writeStream($0) }
            if connection.owesTooMuch {
                // Answers pile up: the client is not read until it has taken them.
                readPausedForOutput = true
                connection.pauseReading()
            }
        }
        api.wsPongs.removeAll(keepingCapacity: api.wsPongs.capacity <= 64 * 1024)
    }

    /// The batch's input to the target: one write (the line-ending rule already applied).
    private func flushInput(_ batch: inout InputBatch) {
        guard batch.first != nil || batch.gathered else { return }
        defer {
            if batch.gathered {
                batch.gathered = false
                api.wsInput.removeAll(keepingCapacity: api.wsInput.capacity <= 256 * 1024)
            }
        }
        guard let session, !closeSent else { batch.first = nil; return }
        session.lastTouched = api.now
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        let result: Session.InputResult
        if let first = batch.first {
            let crlf = UnsafeRawBufferPointer(start: UnsafeRawPointer(("\r\n" as StaticString).utf8Start), count: 2)
            result = first.withUnsafeBytes {
                session.sendInput(UnsafeRawBufferPointer(rebasing: $0[0..<batch.firstKeep]), batch.firstCRLF ? crlf : none,
                                  seq: nil)
            }
            batch.first = nil
        } else {
            result = api.wsInput.withUnsafeBytes { session.sendInput($0, none, seq: nil) }
        }
        closeIfFull(result)
    }

    /// More input waits for the target than the session may hold (SPEC §2's input limit): the
    /// client is told to come back later rather than held in memory.
    private func closeIfFull(_ result: Session.InputResult) {
        if result == .full { sendClose(WebSocket.CloseCode.tryAgainLater, "too much input is waiting for the target") }
    }

    /// `gmcp.mudstandards.org`: a text message is GMCP, `Package.Message[ <JSON>]`, to the game.
    /// One that comes before the game has offered GMCP waits for the offer (a client sends
    /// `Core.Supports.Set` as the socket opens, often before the game's greeting), a few KiB at
    /// most; one that is malformed, past that bound, or for a target without GMCP is dropped
    /// (as `POST …/gmcp` would answer it 400 or 409): the bytes stream goes on.
    private func sendGMCP(_ message: [UInt8]) {
        guard let session, session.isOpen, session.target.gmcp, let link = session.link,
              let parsed = try? GMCP.parseClientMessage(message) else { return }
        session.lastTouched = api.now
        var frame: [UInt8] = []
        GMCP.encode(package: parsed.package, payload: parsed.payload, into: &frame)
        if link.gmcpEnabled {
            closeIfFull(session.sendGMCP(frame))
        } else {
            _ = link.holdGMCP(frame)
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

/// `WebSocketStream.resumeAfterTurn` as a turn task of its own. Weak: it may wait in the queue
/// after its stream has gone.
private final class ReadResumer: TurnTask {
    weak var stream: WebSocketStream?
    var isQueuedForTurn = false
    init(_ stream: WebSocketStream) { self.stream = stream }
    func runTurnTask() { stream?.resumeAfterTurn() }
}
