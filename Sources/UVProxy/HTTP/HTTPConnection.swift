/// What serves requests. Every request handed to `handle` must get exactly one response
/// (`respond…`, or a stream that ends), now or later; later means the connection is "held"
/// and pipelined requests behind it wait, in order.
public protocol HTTPHandler: AnyObject {
    func handle(_ request: HTTPRequest, on connection: HTTPConnection)
    /// The deadline set with `hold(until:)` passed: answer the held request now.
    func heldRequestTimedOut(on connection: HTTPConnection)
    /// The connection is going away; drop any reference to a held request.
    func connectionWillClose(_ connection: HTTPConnection)
    /// A streamed response's queued bytes reached the client's kernel: write more.
    func connectionDidDrain(_ connection: HTTPConnection)
}

extension HTTPHandler {
    public func connectionDidDrain(_ connection: HTTPConnection) {}
}

/// Limits of the HTTP layer (SPEC §2, "HTTP conformance and limits").
public struct HTTPLimits: Sendable {
    public var maxHeader = 8 * 1024
    public var maxBody = 64 * 1024
    public var headerTimeoutMs: UInt64 = 10_000
    public var keepAliveTimeoutMs: UInt64 = 75_000
    /// A request's body must be whole this long after its headers (else 408 and close).
    public var bodyTimeoutMs: UInt64 = 60_000
    /// Parse no further request of a client while more than this of its responses waits in
    /// user space (SPEC §5: "about 1 MiB plus one response"); its bytes wait unparsed, and past
    /// one request's worth the connection is not read (TCP holds the client back).
    public var maxQueuedResponseBytes = 1024 * 1024
    /// A connection that owes its client bytes is closed only after this long without any
    /// byte of them taken by the client (SPEC §5 `send-timeout`).
    public var sendTimeoutMs: UInt64 = 60_000
    /// How often a client owed bytes is looked at (it is cut off within about send-timeout plus
    /// twice this after its last progress): a quarter of send-timeout, 0.1 to 5 s.
    var stallCheckMs: UInt64 { min(5_000, max(100, sendTimeoutMs / 4)) }
    /// Most client connections held at once (SPEC §5 `max-connections`).
    public var maxConnections = 10_000
    /// Every connection starts with a PROXY protocol header, v1 or v2 (SPEC §6
    /// `--accept-proxy-protocol`): one without a valid header is closed.
    public var acceptProxyProtocol = false
    public init() {}
}

/// One client connection: bytes in → http_parser → one request at a time to the handler →
/// responses out, in request order.
/// What took a connection over after `101 Switching Protocols` (a WebSocket): every byte read
/// from then on goes to it, not to the HTTP parser.
public protocol ConnectionTakeover: AnyObject {
    /// Bytes from the client (valid during the call only).
    func connectionDidRead(_ bytes: UnsafeRawBufferPointer)
}

public final class HTTPConnection: TCPStreamDelegate, HTTPRequestParserDelegate, DeadlineOwner, TurnTask {
    let stream: TCPStream
    private let parser: HTTPRequestParser
    private unowned(unsafe) let server: HTTPServer  // the server outlives its connections
    private let limits: HTTPLimits
    /// The API's per-connection state (a long-poll, an event stream).
    var attachment = ConnectionAttachment.none
    /// Whether the request being answered asked to keep the connection.
    private var keepAlive = true
    private var isHTTP10 = false
    /// The current request is a `HEAD`: its response says the body's length but sends no body
    /// (RFC 9110 §9.3.2), whatever route or error answers it.
    private var isHead = false
    private var requestReady = false
    private var inParseLoop = false
    /// Requests this connection may still have answered in this loop turn: a client that
    /// pipelines thousands gets them answered a share per turn, so the loop never stalls on
    /// one client (the rest wait, parsed in its next turn task).
    private var turnShare = HTTPConnection.requestsPerTurn
    static let requestsPerTurn = 32
    /// A request was handed to the handler and not answered yet.
    public private(set) var awaitingResponse = false
    /// The response is a stream (SSE) whose head is sent and whose end is not.
    public private(set) var isStreaming = false
    /// After a `101`: the protocol that reads the connection now (`switchProtocols`).
    private var takeover: ConnectionTakeover?
    /// When the request being answered was dispatched (`EventLoop.hrtime`), and the status
    /// its response began with.
    private var requestStart: UInt64 = 0
    private var responseStatus = HTTPStatus.ok
    /// Bytes received while a request was outstanding, parsed once it is answered.
    private var unparsed: [UInt8] = []
    private var unparsedStart = 0
    private let head = OutputBuffer()
    private var lastActivity: UInt64
    /// Send progress (SPEC §5): what the client had taken at the last look, and when it last
    /// took a byte (or when it was last owed nothing).
    private var lastAcked: UInt64 = 0
    private var lastProgress: UInt64
    /// When the current hold ends (`hold(until:)`); the timer may fire before it to look at a
    /// stalled client.
    private var holdUntil: UInt64 = 0
    /// `stream.bytesToKernel` when the client was last found possibly owed bytes (`mayBeOwed`).
    private var bytesAtLastLook: UInt64 = 0
    /// A response larger than this may sit in the kernel for a client that stopped reading.
    static let largeResponse: UInt64 = 64 * 1024
    private enum Phase { case open, lingering, closed }
    private var closeWhenDrained = false
    private var phase = Phase.open
    private enum TimerKind { case idle, headers, body, held, linger, proxyHeader }
    /// With `acceptProxyProtocol`, until the connection's PROXY header is read.
    private var proxyHeader: ProxyHeaderParser?
    /// The client's address from the PROXY header (nil: the TCP peer is the client).
    public private(set) var proxiedAddress: SocketAddress?
    private var timerKind = TimerKind.idle
    public var deadline: UInt64 = 0
    public var deadlineSlot: Int = -1
    public var isQueuedForTurn = false

    init(stream: TCPStream, server: HTTPServer) {
        self.stream = stream
        self.server = server
        limits = server.limits
        parser = HTTPRequestParser(maxBody: limits.maxBody)
        lastActivity = stream.loop.now
        lastProgress = lastActivity
        parser.delegate = self
        stream.delegate = self
        stream.startReading()
        if limits.acceptProxyProtocol {
            proxyHeader = ProxyHeaderParser()
            schedule(.proxyHeader, at: lastActivity + limits.headerTimeoutMs)
        } else {
            schedule(.idle, at: lastActivity + limits.keepAliveTimeoutMs)
        }
    }

    public var isOpen: Bool { phase == .open }
    /// The request being answered (valid until its response is finished).
    public var request: HTTPRequest { parser.request }
    /// The client (SPEC §5 "client address"): the source of the PROXY header if there was one,
    /// else the TCP peer.
    public var peerAddress: SocketAddress? { proxiedAddress ?? stream.peerAddress }
    /// The TCP peer itself (with a PROXY header, the balancer in front of us).
    public var tcpPeerAddress: SocketAddress? { stream.peerAddress }
    var loop: EventLoop { stream.loop }
    /// When the client last sent a byte (or connected).
    public var lastRead: UInt64 { lastActivity }

    // MARK: Bytes in

    public func stream(_ stream: TCPStream, didRead input: UnsafeRawBufferPointer) {
        lastActivity = loop.now
        var bytes = input
        if proxyHeader != nil {
            guard let rest = readProxyHeader(input) else { return }
            bytes = rest
            if bytes.isEmpty { return }
        }
        if !isQueuedForTurn { turnShare = HTTPConnection.requestsPerTurn }
        switch phase {
        case .closed, .lingering:
            return  // lingering: read and discard until the peer closes
        case .open:
            break
        }
        if let takeover { return takeover.connectionDidRead(bytes) }
        if awaitingResponse || unparsed.count > unparsedStart {
            unparsed.append(contentsOf: bytes)
            if backlogIsFull { stream.stopReading() }  // enough queued; resume when parsed
            return
        }
        let consumed = parseLoop(bytes)
        if consumed < bytes.count, phase == .open {
            // Bytes that came with the request that switched protocols are the new protocol's.
            if let takeover { return takeover.connectionDidRead(UnsafeRawBufferPointer(rebasing: bytes[consumed...])) }
            unparsed.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[consumed...]))
            if backlogIsFull { stream.stopReading() }
        }
    }

    /// Feeds the PROXY header parser; returns the bytes after the header once it is complete,
    /// nil while it is not (or when it was invalid: the connection is closed).
    private func readProxyHeader(_ bytes: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        switch proxyHeader!.feed(bytes) {
        case .needMore:
            return nil
        case .invalid(let reason):
            proxyHeader = nil
            server.proxyHeaderRejected(self, reason: reason)
            close()
            return nil
        case .done(let header, let consumed):
            proxyHeader = nil
            // An IPv4 client through a dual-stack balancer comes as ::ffff:a.b.c.d: the same
            // client as a.b.c.d (logs, the per-client limit).
            if case .proxied(let source, _) = header { proxiedAddress = SocketAddress(source.unmapped) }
            schedule(.idle, at: lastActivity + limits.keepAliveTimeoutMs)
            return UnsafeRawBufferPointer(rebasing: bytes[consumed...])
        }
    }

    public func stream(_ stream: TCPStream, didEnd error: Int32) {
        if error == UVError.eof, phase != .closed, stream.queuedWriteBytes > 0 {
            // The client half-closed but may still read: deliver what is queued, then close.
            if phase == .open {
                phase = .lingering
                server.handler?.connectionWillClose(self)
            }
            closeWhenDrained = true
            schedule(.linger, at: loop.now + limits.keepAliveTimeoutMs)
            return
        }
        close()  // gone: a held request can no longer be answered
    }

    public func streamDidDrainWrites(_ stream: TCPStream) {
        if closeWhenDrained { return close() }
        if isStreaming { return server.handler?.connectionDidDrain(self) ?? () }
        if phase == .open, !awaitingResponse, unparsed.count > unparsedStart { parseUnparsed() }
    }

    /// Parses as many whole requests from `bytes` as can be answered now; returns bytes consumed.
    private func parseLoop(_ bytes: UnsafeRawBufferPointer) -> Int {
        inParseLoop = true
        defer { inParseLoop = false }
        var offset = 0
        while phase == .open, !awaitingResponse, offset < bytes.count, turnShare > 0, mayAnswerMore {
            switch parser.parse(UnsafeRawBufferPointer(rebasing: bytes[offset...])) {
            case .success(let n):
                offset += n
                if requestReady {
                    requestReady = false
                    turnShare -= 1
                    dispatch()
                } else if parser.inHeaders, timerKind != .headers {
                    schedule(.headers, at: loop.now + limits.headerTimeoutMs)
                } else if parser.inBody, timerKind != .body {
                    schedule(.body, at: loop.now + limits.bodyTimeoutMs)
                }
                if n == 0 && !awaitingResponse && phase == .open && !requestReady { return offset }
            case .failure(let error):
                fail(error)
                return bytes.count
            }
        }
        if turnShare == 0, offset < bytes.count, phase == .open, !awaitingResponse {
            loop.turns.enqueueNextTurn(self)  // its share of this turn is used: the rest next turn
        }
        return offset
    }

    /// Bytes received and not parsed yet are at most about one request (then the client is not
    /// read: TCP holds it back).
    private var backlogIsFull: Bool {
        unparsed.count - unparsedStart > limits.maxHeader + limits.maxBody + 4096
    }

    private func parseUnparsed() {
        guard unparsed.count > unparsedStart else { return }
        let consumed = unparsed.withUnsafeBytes { all in
            parseLoop(UnsafeRawBufferPointer(rebasing: all[unparsedStart...]))
        }
        unparsedStart += consumed
        if let takeover, phase == .open, unparsedStart < unparsed.count {
            let rest = Array(unparsed[unparsedStart...])
            unparsed = []
            unparsedStart = 0
            rest.withUnsafeBytes { takeover.connectionDidRead($0) }
            return
        }
        if unparsedStart >= unparsed.count {
            unparsed.removeAll(keepingCapacity: unparsed.capacity <= 16 * 1024)
            unparsedStart = 0
        } else if unparsedStart >= 16 * 1024 {
            unparsed.removeFirst(unparsedStart)  // a client that keeps the pipeline full
            unparsedStart = 0
        }
        if phase == .open, !stream.isReading, !backlogIsFull { stream.startReading() }
    }

    /// Whether another request may be answered now: the client is not too far behind in
    /// reading its responses, and the process is within its send-queue budget (over it, only
    /// clients that owe nothing are served).
    private var mayAnswerMore: Bool {
        let queued = stream.queuedWriteBytes
        return queued == 0 || (queued <= limits.maxQueuedResponseBytes && !loop.isOverSendBudget)
    }

    /// The client owes more than it may (`mayAnswerMore`'s rules: over one connection's
    /// `maxQueuedResponseBytes`, or anything while the process is over its send budget, SPEC
    /// §5): a protocol that answers what it reads (WebSocket pongs) stops reading.
    public var owesTooMuch: Bool { !mayAnswerMore }

    /// Whether a streamed response may write more now (same rules, with a stream's own limit).
    public func mayStreamMore(below highWater: Int) -> Bool {
        let queued = stream.queuedWriteBytes
        return queued == 0 || (queued < highWater && !loop.isOverSendBudget)
    }

    // MARK: Send progress (send-timeout)

    /// Looks at what the client has taken (`bytesToKernel` less what the kernel still holds,
    /// `SIOCOUTQ`): true if it owes the client bytes and none was taken for `send-timeout`.
    /// Progress counts the client's reading, not our write calls: the kernel may report a
    /// socket writable only once a third of a large send buffer is free.
    public func sendStalled(now: UInt64) -> Bool {
        let unsent = UInt64(stream.unsentBytes)
        let acked = stream.bytesToKernel &- unsent
        if acked != lastAcked || (unsent == 0 && stream.queuedWriteBytes == 0) {
            lastAcked = acked
            lastProgress = now
            return false
        }
        return now >= lastProgress + limits.sendTimeoutMs
    }

    /// Closes the connection (counted, logged) if its client has taken nothing it is owed for
    /// `send-timeout` (SPEC §5); returns whether it did.
    public func closeIfStalled(now: UInt64) -> Bool {
        guard sendStalled(now: now) else { return false }
        server.sendTimedOut(self)
        close()
        return true
    }

    /// Whether the client is owed bytes that are still in user space or in the kernel.
    private var owesBytes: Bool { stream.queuedWriteBytes > 0 || stream.unsentBytes > 0 }

    /// A response starts while nothing waits in user space: the stall clock starts now.
    @inline(__always) private func noteSendStart() {
        if stream.queuedWriteBytes == 0 { lastProgress = loop.now }
    }

    // MARK: Requests

    func parserDidCompleteHeaders(_ request: HTTPRequest) {
        if request.expectContinue, !request.isHTTP10, !awaitingResponse {
            head.removeAll()
            head.append(HTTPStatus.continue.statusLine)
            head.append("\r\n")
            stream.write(head.bytes)
        }
    }

    func parserDidCompleteRequest() {
        requestReady = true
    }

    private func dispatch() {
        requestStart = EventLoop.hrtime
        awaitingResponse = true
        keepAlive = parser.request.keepAlive
        isHTTP10 = parser.request.isHTTP10
        isHead = parser.request.method == .head
        server.handler?.handle(parser.request, on: self)
        parser.resume()
    }

    private func fail(_ error: HTTPParseError) {
        requestStart = EventLoop.hrtime
        keepAlive = false
        awaitingResponse = true
        switch error {
        case .malformed(let why): respondError(.badRequest, "malformed request: \(why)")
        case .versionNotSupported: respondError(.httpVersionNotSupported, "only HTTP/1.0 and HTTP/1.1 are served")
        case .codingNotImplemented: respondError(.notImplemented, "the only transfer coding taken is chunked")
        case .headersTooLarge: respondError(.headersTooLarge, "request line and headers exceed \(limits.maxHeader) bytes")
        case .bodyTooLarge: respondError(.payloadTooLarge, "request body exceeds \(limits.maxBody) bytes")
        case .unknownMethod(let target):
            // The router answers as for any method it does not allow (405 with Allow, or 404);
            // nothing else of the request was parsed, and the connection closes after the answer.
            let request = parser.request
            request.reset()
            request.method = .other
            request.keepAlive = false
            request.target.keep(target)
            isHead = false
            server.handler?.handle(request, on: self)
            if awaitingResponse { respondError(.methodNotAllowed, "method not allowed") }
        }
    }

    // MARK: Holding a request (long-poll, pending create)

    /// Keeps the current request open; `heldRequestTimedOut` is called at `until` (loop ms) if set.
    public func hold(until: UInt64?) {
        guard phase == .open, awaitingResponse else { return }  // already answered
        guard let until else { return cancelTimer() }
        holdUntil = until
        schedule(.held, at: stream.queuedWriteBytes > 0 ? min(until, loop.now + limits.stallCheckMs) : until)
    }

    /// A write left bytes waiting for the client: its stall clock is looked at soon, not only at
    /// the end of the current hold (a stream's keep-alive, a WebSocket's ping).
    @inline(__always) private func watchStall() {
        if timerKind == .held, deadline > loop.now + limits.stallCheckMs, mayBeOwed() {
            schedule(.held, at: loop.now + limits.stallCheckMs)
        }
    }

    /// Whether the client may not have taken what was written (some of it is still here, or
    /// more than a socket buffer's worth went to the kernel since the last time this said so):
    /// worth a look at its stall clock, which costs a system call.
    @inline(__always) private func mayBeOwed() -> Bool {
        guard stream.queuedWriteBytes > 0 || stream.bytesToKernel &- bytesAtLastLook > HTTPConnection.largeResponse else {
            return false
        }
        bytesAtLastLook = stream.bytesToKernel
        return true
    }

    // MARK: Responses

    /// A response's `Cache-Control`.
    public enum CacheControl: Sendable {
        /// Every API response (SPEC §2).
        case noStore
        /// The web client's files: kept, but revalidated with their ETag at each use.
        case noCache

        var headerLine: StaticString {
            switch self {
            case .noStore: return "Cache-Control: no-store\r\n"
            case .noCache: return "Cache-Control: no-cache\r\n"
            }
        }
    }

    /// Starts a response: the status line. Add headers with `header`, finish with `finish`.
    public func begin(_ status: HTTPStatus) {
        head.removeAll()
        head.append(status.statusLine)
        responseStatus = status
        server.metrics.statusCounts[status.rawValue] += 1
        if let cors = server.corsHeaders { head.append(cors) }
    }

    public func header(_ name: StaticString, _ value: StaticString) {
        head.append(name); head.append(": "); head.append(value); head.append("\r\n")
    }

    public func header(_ name: StaticString, _ value: UInt64) {
        head.append(name); head.append(": "); head.appendDecimal(value); head.append("\r\n")
    }

    public func header<C: Collection>(_ name: StaticString, bytes: C) where C.Element == UInt8 {
        head.append(name); head.append(": "); head.append(contentsOf: bytes); head.append("\r\n")
    }

    /// Named apart from the `StaticString` overload, which a literal would otherwise miss.
    public func header(_ name: StaticString, string value: String) {
        header(name, bytes: value.utf8)
    }

    /// Ends the head and sends it with a body of up to two parts (a ring buffer's two halves).
    /// Every API response is `no-store` (SPEC §2); only the web client's files differ.
    public func finish(contentType: StaticString?, _ a: UnsafeRawBufferPointer = .init(start: nil, count: 0),
                       _ b: UnsafeRawBufferPointer = .init(start: nil, count: 0), cacheControl: CacheControl = .noStore) {
        guard phase == .open, awaitingResponse else { return }
        if let contentType { header("Content-Type", contentType) }
        header("Content-Length", UInt64(a.count + b.count))
        endHead(cacheControl: cacheControl)
        noteSendStart()
        if isHead { stream.write(head.bytes) } else { stream.write(head.bytes, a, b) }
        responseDone()
    }

    public func finish(contentType: StaticString?, body: [UInt8], cacheControl: CacheControl = .noStore) {
        body.withUnsafeBytes { finish(contentType: contentType, $0, cacheControl: cacheControl) }
    }

    /// Ends a `304 Not Modified`: no body and no length (RFC 9110 §15.4.5).
    public func finishNotModified(cacheControl: CacheControl = .noStore) {
        guard phase == .open, awaitingResponse else { return }
        endHead(cacheControl: cacheControl)
        noteSendStart()
        stream.write(head.bytes)
        responseDone()
    }

    private func endHead(cacheControl: CacheControl = .noStore) {
        head.append(cacheControl.headerLine)
        if !keepAlive || !server.isAccepting {
            keepAlive = false
            head.append("Connection: close\r\n")
        } else if isHTTP10 {
            head.append("Connection: keep-alive\r\n")
        }
        head.append("\r\n")
    }

    // MARK: Streamed responses (SSE)

    /// Ends the head of a response whose body is written piece by piece: no length, so the
    /// connection closes when the stream ends. The request stays held (pipelined requests wait).
    /// `prefix` is the body's first bytes, sent with the head.
    public func startStream(contentType: StaticString, prefix: StaticString = "") {
        guard phase == .open, awaitingResponse, !isStreaming else { return }
        keepAlive = false
        header("Content-Type", contentType)
        endHead()
        head.append(prefix)
        isStreaming = true
        parser.releaseStorage()
        noteSendStart()
        stream.write(head.bytes)  // copied if the kernel does not take it all
        head.release()
    }

    /// Answers the request with `head` (a whole `101 Switching Protocols` head, its blank line
    /// included) and hands the connection to `takeover`: every byte read from now on, those
    /// that came after the request included, goes to it. Writes go through `writeStream`, and
    /// the connection stays held (`hold`, `heldRequestTimedOut`) until it closes.
    public func switchProtocols(head bytes: [UInt8], to takeover: ConnectionTakeover) {
        guard phase == .open, awaitingResponse, !isStreaming else { return }
        keepAlive = false
        responseStatus = .switchingProtocols
        server.metrics.statusCounts[HTTPStatus.switchingProtocols.rawValue] += 1
        isStreaming = true
        self.takeover = takeover
        parser.releaseStorage()
        head.release()
        cancelTimer()
        noteSendStart()
        bytes.withUnsafeBytes { _ = stream.write($0) }
        // Bytes that came behind a request answered later (`GET /ws` waits for its game): the
        // new protocol's, handed over at the end of the turn, before anything read after them.
        if !inParseLoop, unparsed.count > unparsedStart { loop.turns.enqueue(self) }
    }

    /// Reading from the client stops (input waits in TCP) until `resumeReading`.
    public func pauseReading() { stream.stopReading() }

    public func resumeReading() {
        if phase == .open, !stream.isReading { stream.startReading() }
    }

    public func writeStream(_ bytes: UnsafeRawBufferPointer) {
        guard phase == .open, isStreaming else { return }
        noteSendStart()
        stream.write(bytes)
        watchStall()
    }

    /// Two buffers, in order, as one write (a frame's header and its payload: no copy).
    public func writeStream(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) {
        guard phase == .open, isStreaming else { return }
        noteSendStart()
        stream.write(a, b)
        watchStall()
    }

    /// The largest request body (a WebSocket message may be no larger: SPEC §8).
    public var maxBody: Int { limits.maxBody }

    /// Bytes written that the client's kernel has not taken yet (a stream writes more only
    /// below a limit, so a slow client holds back its session instead of growing memory).
    public var queuedBytes: Int { stream.queuedWriteBytes }

    public func endStream() {
        guard isStreaming else { return }
        isStreaming = false
        responseDone(streamed: true)
    }

    /// A JSON error: `{"error": "…"}`.
    public func respondError(_ status: HTTPStatus, _ reason: String) {
        begin(status)
        finishError(reason)
    }

    /// Ends a response begun with an error status with the JSON error body.
    public func finishError(_ reason: String) {
        var body: [UInt8] = []
        body.append("{\"error\": ")
        body.appendJSONString(reason.utf8)
        body.append("}")
        finish(contentType: "application/json", body: body)
    }

    /// Tells the observer (metrics, access log) that the request's response has ended.
    private func reportFinished(streamed: Bool) {
        server.observer?.requestFinished(self, status: responseStatus, nanoseconds: EventLoop.hrtime &- requestStart,
                                         streamed: streamed)
    }

    private func responseDone(streamed: Bool = false) {
        awaitingResponse = false
        isHead = false  // an error the HTTP layer answers before the next dispatch has its body
        reportFinished(streamed: streamed)
        guard phase == .open else { return }  // the write failed and closed the connection
        if !keepAlive {
            startLingeringClose()
            return
        }
        // The idle deadline is lazy (checked against lastActivity when it fires): only arm it
        // if something else had replaced it.
        // A response the client may not have taken yet (some of it still here, or more than a
        // socket buffer's worth since the last one): its stall clock is looked at soon.
        if mayBeOwed() {
            schedule(.idle, at: loop.now + limits.stallCheckMs)
        } else if timerKind != .idle || deadlineSlot < 0 {
            schedule(.idle, at: lastActivity + limits.keepAliveTimeoutMs)
        }
        // A held request answered from elsewhere (a target's read, another client's request, a
        // timer): the next pipelined request runs at the end of the turn, in this connection's
        // own turn task, never inside the caller (`TurnQueue`).
        if !inParseLoop, unparsed.count > unparsedStart { loop.turns.enqueue(self) }
    }

    public func runTurnTask() {
        turnShare = HTTPConnection.requestsPerTurn
        if phase == .open, !awaitingResponse || takeover != nil { parseUnparsed() }
    }

    // MARK: Closing

    /// Half-closes after the response and discards input for a moment, so the client reads the
    /// response instead of a reset caused by unread request bytes.
    /// The 2 s start once the response has reached the kernel (FIN sent); a client that does
    /// not read it at all is cut off after the keep-alive timeout.
    private func startLingeringClose() {
        guard phase == .open else { return }
        phase = .lingering
        server.handler?.connectionWillClose(self)
        if !stream.isReading { stream.startReading() }
        schedule(.linger, at: loop.now + limits.keepAliveTimeoutMs)
        stream.shutdown { [unowned self] in
            if self.phase == .lingering { self.schedule(.linger, at: self.loop.now + 2_000) }
        }
    }

    /// Shutdown: close now if nothing is in flight, else once the response is delivered.
    func closeWhenIdle() {
        guard phase == .open, !awaitingResponse else { return }
        if stream.queuedWriteBytes > 0 { startLingeringClose() } else { close() }
    }

    public func close() {
        guard phase != .closed else { return }
        if phase == .open { server.handler?.connectionWillClose(self) }
        if isStreaming {  // the client ended the stream: it is still a request that was answered
            isStreaming = false
            reportFinished(streamed: true)
        }
        phase = .closed
        awaitingResponse = false
        takeover = nil
        cancelTimer()
        stream.close()
        server.connectionClosed(self)
        attachment = .none
    }

    // MARK: Timers

    private func schedule(_ kind: TimerKind, at: UInt64) {
        timerKind = kind
        loop.deadlines.schedule(self, at: at)
    }

    private func cancelTimer() {
        timerKind = .idle
        loop.deadlines.cancel(self)
    }

    /// A request the client did not finish in time: 408, and the connection closes after it.
    private func timeOut(_ reason: String) {
        keepAlive = false
        awaitingResponse = true
        requestStart = EventLoop.hrtime
        respondError(.requestTimeout, reason)
    }

    public func deadlineReached(now: UInt64) {
        switch timerKind {
        case .idle:
            guard phase == .open, !awaitingResponse else { return }
            if owesBytes {  // still sending: only a client that takes nothing is cut off
                if closeIfStalled(now: now) { return }
                return schedule(.idle, at: min(lastProgress + limits.sendTimeoutMs, now + limits.stallCheckMs))
            }
            let due = lastActivity + limits.keepAliveTimeoutMs
            if now >= due {
                close()
            } else if parser.inHeaders {
                schedule(.headers, at: lastActivity + limits.headerTimeoutMs)
            } else {
                schedule(.idle, at: due)
            }
        case .headers:
            guard phase == .open, !awaitingResponse else { return }
            guard parser.inHeaders else {  // headers done, body still coming: its own clock
                if parser.inBody { schedule(.body, at: now + limits.bodyTimeoutMs) }
                else { schedule(.idle, at: lastActivity + limits.keepAliveTimeoutMs) }
                return
            }
            timeOut("request headers not complete within \(limits.headerTimeoutMs / 1000) seconds")
        case .body:
            guard phase == .open, !awaitingResponse else { return }
            // The clock times the client: bytes we hold unparsed (its responses wait, the
            // process is over its send budget) are ours; the idle rules apply meanwhile, and
            // the clock starts again when they are parsed.
            guard parser.inBody, unparsed.count == unparsedStart else {
                return schedule(.idle, at: lastActivity + limits.keepAliveTimeoutMs)
            }
            timeOut("request body not complete within \(limits.bodyTimeoutMs / 1000) seconds")
        case .held:
            guard phase == .open, awaitingResponse else { return }
            if now < holdUntil {  // an early look at a client owed bytes (`watchStall`)
                if closeIfStalled(now: now) { return }
                return schedule(.held, at: owesBytes ? min(holdUntil, now + limits.stallCheckMs) : holdUntil)
            }
            timerKind = .idle
            server.handler?.heldRequestTimedOut(on: self)
        case .proxyHeader:
            guard phase == .open, proxyHeader != nil else { return }
            proxyHeader = nil
            server.proxyHeaderRejected(self, reason: "no complete PROXY header within \(limits.headerTimeoutMs / 1000) seconds")
            close()
        case .linger:
            // A last response still on its way to a slow reader is not cut off while it reads.
            if phase == .lingering, stream.queuedWriteBytes > 0, !closeIfStalled(now: now) {
                return schedule(.linger, at: lastProgress + limits.sendTimeoutMs)
            }
            close()
        }
    }
}
