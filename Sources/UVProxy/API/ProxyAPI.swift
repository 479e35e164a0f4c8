/// Settings of the HTTP API that a reload may change.
public struct APISettings: Sendable {
    public var defaultTarget: Target
    public var targets: [String: Target]
    public var token: String?
    public var corsOrigin: String?
    public var maxWaitMs: UInt64 = 60_000
    /// How often an idle SSE stream gets a comment line.
    public var keepAliveMs: UInt64 = 15_000
    public var serveWebPage = false
    /// Set when requests must pass the DNS rebinding check (no token, loopback listen address).
    public var hostCheck: HostCheck?
    /// `NAME-` with `--node-id` (SPEC §9), else empty: the start of every session id's text.
    public var idPrefix: [UInt8] = []

    public init(defaultTarget: Target, targets: [String: Target] = [:]) {
        self.defaultTarget = defaultTarget
        self.targets = targets
    }

    func target(named name: String?) -> Target? {
        guard let name, name != ProxyConfig.defaultTargetName, name != defaultTarget.name else { return defaultTarget }
        return targets[name]
    }
}

/// The `/sessions` and `/mud` API over a `SessionTable` (SPEC §2). Plain request → response
/// logic: it sees requests and an `HTTPConnection` to answer on, never a socket.
public final class ProxyAPI: HTTPHandler {
    public var settings: APISettings {
        didSet {  // a reload may change them
            tokenBytes = settings.token.map { Array($0.utf8) }
            hostCheck = settings.hostCheck
            idPrefix = settings.idPrefix
            allowedHostSeen.clear()
        }
    }
    public let table: SessionTable
    private let clock: () -> UInt64
    /// Held long-polls right now.
    public internal(set) var longPolls = 0
    public internal(set) var eventStreams = 0
    public internal(set) var webSockets = 0
    var metricsText: (() -> [UInt8])?
    /// Told of each session created (the daemon logs it with the client's address).
    var sessionCreated: ((Session, HTTPConnection) -> Void)?
    /// The client address of a request (SPEC §5), for `max-sessions-per-client`, and the
    /// session's `clientAddress` (`origin`).
    var clientAddress: (HTTPConnection) -> String = { $0.peerAddress?.host ?? "-" }
    /// The same client as an address (a session's origin: the PROXY header sent to its target).
    var clientOrigin: (HTTPConnection) -> SocketAddress? = { $0.peerAddress }
    private var tokenBytes: [UInt8]?
    /// Where SSE events are built, shared by every stream (one thread).
    var scratch: [UInt8] = []
    /// Where WebSocket frame headers are built, shared the same way (no allocation per frame).
    var frameHeader: [UInt8] = []
    /// A WebSocket read's input when it holds more than one message, and its pongs (each read
    /// empties them before it returns: `WebSocketStream.InputBatch`).
    var wsInput: [UInt8] = []
    var wsPongs: [UInt8] = []
    var now: UInt64 { clock() }

    public init(settings: APISettings, table: SessionTable, clock: @escaping () -> UInt64) {
        self.settings = settings
        self.table = table
        self.clock = clock
        tokenBytes = settings.token.map { Array($0.utf8) }
        hostCheck = settings.hostCheck
        idPrefix = settings.idPrefix
    }

    /// The last `Host` value the check allowed: nearly every request of a daemon carries the same
    /// one, so it is judged once and then compared (`HostCheck` is pure; a reload clears this).
    private var allowedHostSeen: [UInt8] = []
    /// `settings.hostCheck` and `settings.idPrefix`, kept apart so a request does not copy the
    /// settings to read them.
    private var hostCheck: HostCheck?
    private var idPrefix: [UInt8] = []
    /// SIGUSR1 (SPEC §9): creates answer 503 and /healthz `503 draining`; sessions go on.
    public var draining = false

    @inline(__always) private func hostAllowed(_ request: HTTPRequest) -> Bool {
        if !request.host.isEmpty, request.host.sameBytes(as: allowedHostSeen) { return true }
        return judgeHost(request.host)
    }

    @inline(never) private func judgeHost(_ host: [UInt8]) -> Bool {
        guard let hostCheck, hostCheck.allows(host) else { return hostCheck == nil }
        allowedHostSeen.keep(host)
        return true
    }

    // MARK: HTTPHandler

    public func handle(_ request: HTTPRequest, on connection: HTTPConnection) {
        let (path, query) = Router.split(request.target)
        if hostCheck != nil, !hostAllowed(request), Router.route(path: path) != .healthz {
            return error(connection, .forbidden, "Host not allowed: without --token only localhost, loopback addresses "
                         + "and --allowed-host names are served (DNS rebinding protection)")
        }
        if request.method == .options, settings.corsOrigin != nil {
            respondPreflight(connection)
            return
        }
        // Without --node-id the prefix is empty: the plain parse, nothing retained (every request).
        guard let route = idPrefix.isEmpty ? Router.route(path: path) : Router.route(path: path, idPrefix: idPrefix) else {
            return error(connection, .notFound, "no such path")
        }
        if route.isWebClient, !settings.serveWebPage {
            return error(connection, .notFound, "no such path (the web client is served with --web)")
        }
        guard route.allows(request.method) else {
            return error(connection, .methodNotAllowed, "method not allowed", allow: route.allow)
        }
        // The page and its files are public (they hold no secret; the page asks the player for the
        // token), and so is the API's description.
        if route != .healthz, route != .openAPI, !route.isWebClient, let tokenBytes,
           !bearerMatches(request.authorization, token: tokenBytes), !queryTokenAllowed(route, query, tokenBytes) {
            connection.begin(.unauthorized)
            connection.header("WWW-Authenticate", "Bearer")
            return connection.finishError("missing or wrong bearer token")
        }
        let params = Parameters(query: query, form: request.hasFormBody ? request.body[...] : nil)
        switch route {
        case .sessions:
            create(connection, params, compat: false)
        case .session(let id):
            guard let session = lookup(id, connection) else { return }
            if request.method == .delete {
                table.delete(session)
                respondEmpty(connection)
            } else {
                read(connection, session, params, compat: false)
            }
        case .input(let id):
            guard let session = lookup(id, connection) else { return }
            input(connection, session, request, params, respond: true)
        case .events(let id):
            guard let session = lookup(id, connection) else { return }
            events(connection, session, request, params)
        case .webSocket(let id):
            guard let handshake = webSocketHandshake(connection, request) else { return }
            guard let session = lookup(id, connection) else { return }
            attachWebSocket(connection, session, params, handshake, sessionID: nil)
        case .webSocketCreate:
            guard let handshake = webSocketHandshake(connection, request) else { return }
            // A malformed `since` is 400 before a session exists; one past the end (the game has
            // said less) is 400 after, and the session goes again (SPEC §2: no session exists
            // after a failed create), as it does when the 101 cannot be written.
            if let since = params.bytes("since"), ProxyAPI.resumePoint(since[...]) == nil {
                return error(connection, .badRequest, ProxyAPI.malformedWebSocketSince)
            }
            createSession(connection, params, compat: false) { [unowned self] session, id in
                if !attachWebSocket(connection, session, params, handshake, sessionID: id) { table.delete(session) }
            }
        case .gmcp(let id):
            guard let session = lookup(id, connection) else { return }
            gmcp(connection, session, request, params)
        case .gmcpState(let id):
            guard let session = lookup(id, connection) else { return }
            gmcpState(connection, session)
        case .mud:
            mud(connection, request, params)
        case .healthz:
            if draining {  // a balancer's health check takes this node out of the rotation
                error(connection, .serviceUnavailable, "draining")  // an error body is JSON (SPEC §2)
            } else {
                respond(connection, .ok, contentType: "text/plain", body: Array("ok".utf8))
            }
        case .metrics:
            respond(connection, .ok, contentType: "text/plain; version=0.0.4", body: metricsText?() ?? [])
        case .openAPI:
            serve(WebAsset.openAPI, request, connection)
        case .webPage:
            serve(WebAsset.page, request, connection)
        case .webScript:
            serve(WebAsset.script, request, connection)
        case .webStyle:
            serve(WebAsset.style, request, connection)
        }
    }

    public func heldRequestTimedOut(on connection: HTTPConnection) {
        switch connection.attachment {
        case .eventStream(let stream): stream.keepAlive()
        case .webSocket(let socket): socket.keepAlive()
        case .gmcpPoll(let waiter): waiter.answerNow()
        case .longPoll(let pending): pending.answer()
        case .none: break
        }
    }

    public func connectionWillClose(_ connection: HTTPConnection) {
        switch connection.attachment {
        case .eventStream(let stream): stream.detach()
        case .webSocket(let socket): socket.detach()
        case .gmcpPoll(let waiter): waiter.cancel()
        case .longPoll(let pending): pending.cancel()
        case .none: break
        }
    }

    /// An upgrade has handed every session to a new process (SPEC §9): the connection gets what
    /// it waits for now (a held read is answered with what its session has, an event stream
    /// ends silently; the client resumes at the new process with its cursor) and closes after
    /// its current response (the server accepts no more, so every response says `close`).
    public func releaseForUpgrade(_ connection: HTTPConnection) {
        switch connection.attachment {
        case .eventStream(let stream): stream.end(event: nil)
        case .webSocket(let socket): socket.sendClose(WebSocket.CloseCode.goingAway, "the proxy is being upgraded: connect again")
        case .gmcpPoll(let waiter): waiter.answerNow()
        case .longPoll(let pending): pending.answer()
        case .none: break
        }
        connection.closeWhenIdle()
    }

    public func connectionDidDrain(_ connection: HTTPConnection) {
        switch connection.attachment {
        case .eventStream(let stream): stream.connectionDrained()
        case .webSocket(let socket): socket.connectionDrained()
        default: break
        }
    }

    // MARK: Create

    private func create(_ connection: HTTPConnection, _ params: Parameters, compat: Bool) {
        createSession(connection, params, compat: compat) { session, id in
            if compat {
                connection.begin(.ok)
                connection.header("X-Session-Id", bytes: id)
                connection.finish(contentType: "text/plain", body: id)
            } else {
                var body: [UInt8] = []
                body.append("{\"id\": ")
                body.appendJSONString(id)
                body.append(", \"target\": ")
                body.appendJSONString(session.target.name.utf8)
                body.append(", \"state\": ")
                body.append(session.isOpen ? "\"open\"}" : "\"closed\"}")
                connection.begin(.created)
                connection.header("Location", bytes: Array("/sessions/".utf8) + id)
                connection.finish(contentType: "application/json", body: body)
            }
        }
    }

    /// Creates a session on the target the request names and calls `created` with it and its id
    /// text; answers the failures itself (SPEC §2, Create).
    private func createSession(_ connection: HTTPConnection, _ params: Parameters, compat: Bool,
                               created: @escaping (Session, [UInt8]) -> Void) {
        if draining {
            return error(connection, .serviceUnavailable, "the proxy is draining: create the session again (another node takes it)",
                         retryAfter: true)
        }
        let name = compat ? nil : params.string("target")
        guard let target = settings.target(named: name) else {
            return error(connection, .badRequest, "unknown target '\(name ?? "")'")
        }
        connection.hold(until: nil)
        let client = table.settings.maxSessionsPerClient > 0 ? clientAddress(connection) : nil
        table.create(target: target, client: client, origin: clientOrigin(connection)) { [unowned self] result in
            switch result {
            case .success(let session) where !connection.isOpen:
                // The client left before it could learn the id: nobody can ever use this session.
                table.delete(session)
            case .success(let session):
                sessionCreated?(session, connection)
                var id: [UInt8] = []
                session.id.write(to: &id, prefix: idPrefix)
                created(session, id)
            case .failure(.full):
                error(connection, .serviceUnavailable, "session limit reached (\(table.settings.maxSessions) open)",
                      retryAfter: true)
            case .failure(.clientFull):
                error(connection, .tooManyRequests,
                      "session limit per client reached (\(table.settings.maxSessionsPerClient) open)", retryAfter: true)
            case .failure(.failed(let why)):
                error(connection, .badGateway, "cannot connect to target '\(target.name)': \(why)")
            case .failure(.shuttingDown):
                error(connection, .serviceUnavailable, "the proxy is shutting down", retryAfter: true)
            case .failure(.noDescriptors):
                error(connection, .serviceUnavailable, "the proxy is out of file descriptors", retryAfter: true)
            case .failure(.timedOut):
                error(connection, .gatewayTimeout,
                      "no connection to target '\(target.name)' within \(target.connectTimeoutMs / 1000) s")
            }
        }
    }

    // MARK: WebSocket (SPEC §8)

    /// The upgrade request's checks (RFC 6455 §4.2.1); answers 400 or 426 itself and returns nil.
    private func webSocketHandshake(_ connection: HTTPConnection, _ request: HTTPRequest) -> (accept: [UInt8], subprotocol: String?)? {
        if let hostCheck, !request.origin.isEmpty, !originAllowed(request.origin, hostCheck) {
            error(connection, .forbidden, "a WebSocket from a page of another site (Origin \(String(decoding: request.origin, as: UTF8.self))) is refused while the proxy has no token: set a token, or name the site with allowed-host or cors-origin")
            return nil
        }
        func value(_ v: [UInt8]) -> [UInt8]? { v.isEmpty ? nil : v }
        let handshake = WebSocketHandshake.Request(
            upgrade: value(request.upgrade), connection: value(request.connection),
            version: value(request.webSocketVersion), key: value(request.webSocketKey),
            protocols: value(request.webSocketProtocol), extensions: value(request.webSocketExtensions))
        switch WebSocketHandshake.evaluate(handshake, subprotocols: WebSocketStream.subprotocols) {
        case .accept(let accept, let subprotocol):
            guard !request.isHTTP10 else {
                error(connection, .badRequest, "a WebSocket upgrade needs HTTP/1.1")
                return nil
            }
            return (accept, subprotocol)
        case .badRequest(let why):
            error(connection, .badRequest, "not a WebSocket upgrade: \(why)")
        case .upgradeRequired:
            connection.begin(.upgradeRequired)
            connection.header("Sec-WebSocket-Version", "13")
            connection.finishError("only WebSocket version 13 is served")
        }
        return nil
    }

    /// Answers 101 and attaches a `WebSocketStream` at the start offset (the rules of Stream:
    /// `since`, else `delivered`; 400/409 before the upgrade). `sessionID`: the id of a session
    /// created by this request (`GET /ws`), sent as `X-Session-Id`.
    /// Returns whether the socket is attached.
    @discardableResult
    private func attachWebSocket(_ connection: HTTPConnection, _ session: Session, _ params: Parameters,
                                 _ handshake: (accept: [UInt8], subprotocol: String?), sessionID: [UInt8]?) -> Bool {
        var start = session.delivered
        var gmcpSeq: UInt64?
        if let since = params.bytes("since") {
            guard let point = ProxyAPI.resumePoint(since[...]) else {
                error(connection, .badRequest, ProxyAPI.malformedWebSocketSince)
                return false
            }
            (start, gmcpSeq) = point
        }
        guard isReadable(start, session, connection) else { return false }
        // GMCP text frames (`gmcp.mudstandards.org`) resume at the seq named, as SSE's do.
        var gmcpCursor: UInt64?
        if WebSocketStream.Mode(subprotocol: handshake.subprotocol) == .gmcp {
            guard let cursor = gmcpStart(session, start, gmcpSeq, connection) else { return false }
            gmcpCursor = cursor
        }
        session.lastTouched = clock()
        session.acknowledge(upTo: start)
        var extra: [(String, String)] = [("Cache-Control", "no-store")]  // SPEC §2: every response, the 101 too
        if let sessionID { extra.append(("X-Session-Id", String(decoding: sessionID, as: UTF8.self))) }
        if let cors = settings.corsOrigin { extra.append(("Access-Control-Allow-Origin", cors)) }
        let head = WebSocketHandshake.responseHead(accept: handshake.accept, subprotocol: handshake.subprotocol,
                                                   extraHeaders: extra)
        let socket = WebSocketStream(connection: connection, api: self, session: session, cursor: start,
                                     gmcpCursor: gmcpCursor, subprotocol: handshake.subprotocol)
        connection.switchProtocols(head: head, to: socket)
        // The head's write can fail (the client reset) and close the connection at once.
        guard connection.isStreaming else { return false }
        connection.attachment = .webSocket(socket)
        webSockets += 1
        connection.hold(until: clock() + WebSocketStream.pingIntervalMs)
        socket.pump()
        return true
    }

    /// Without a token on a loopback address (the Host check is on), a browser's WebSocket is
    /// taken from the pages of the names that check allows and of `cors-origin` only: browsers
    /// let any page open a WebSocket anywhere (no same-origin rule holds it back, as it does a
    /// page's HTTP requests), and the proxy would let any site play through a player's proxy.
    /// `Origin` is `scheme://host[:port]`; `null` (a sandboxed or local page) is refused.
    private func originAllowed(_ origin: [UInt8], _ hostCheck: HostCheck) -> Bool {
        if let cors = settings.corsOrigin, origin.count == cors.utf8.count,
           zip(origin, cors.utf8).allSatisfy({ asciiLower($0) == asciiLower($1) }) { return true }
        guard let colon = origin.firstIndex(of: UInt8(ascii: ":")), origin[colon...].starts(with: "://".utf8) else {
            return false
        }
        let authority = origin[(colon + 3)...]
        return !authority.isEmpty && hostCheck.allows(Array(authority))
    }

    /// A WebSocket may carry the token as `token` in the query (browsers cannot set headers on
    /// one), on its two paths only (SPEC §8).
    private func queryTokenAllowed(_ route: Route, _ query: ArraySlice<UInt8>, _ tokenBytes: [UInt8]) -> Bool {
        switch route {
        case .webSocket, .webSocketCreate: break
        default: return false
        }
        guard let token = Parameters(query: query, form: nil).rawQuery("token") else { return false }
        return constantTimeEquals(Parameters.decode(token), tokenBytes)
    }

    // MARK: Read

    /// A read's `since` and `wait` (capped at `max-wait`), the same for text and GMCP; nil after
    /// answering `400` for a bad one.
    @inline(__always)
    func sinceAndWait(_ params: Parameters, _ connection: HTTPConnection) -> (since: UInt64?, waitMs: UInt64)? {
        var since: UInt64?
        var waitMs: UInt64 = 0
        switch params.unsigned("since") {
        case .failure(let e)?: error(connection, .badRequest, e.reason); return nil
        case .success(let n)?: since = n
        case nil: break
        }
        switch params.milliseconds("wait") {
        case .failure(let e)?: error(connection, .badRequest, e.reason); return nil
        case .success(let ms)?: waitMs = min(ms, settings.maxWaitMs)
        case nil: break
        }
        return (since, waitMs)
    }

    /// `duplicate`: `/mud`'s command was a `seq` already taken (`X-Duplicate: 1` on the answer).
    private func read(_ connection: HTTPConnection, _ session: Session, _ params: Parameters, compat: Bool,
                      duplicate: Bool = false) {
        guard let (since, waitMs) = sinceAndWait(params, connection) else { return }
        var max = Int.max
        switch params.unsigned("max", atLeast: 1) {
        case .failure(let e)?: return error(connection, .badRequest, e.reason)
        case .success(let n)?:
            max = Int(clamping: n)
        case nil: break
        }
        let offset = since ?? session.delivered
        guard isReadable(offset, session, connection) else { return }
        let now = clock()
        session.lastTouched = now
        session.acknowledge(upTo: offset)
        if offset < session.ring.end || !session.isOpen || waitMs == 0 {
            return respondRead(connection, session: session, from: offset, max: max, compat: compat, duplicate: duplicate)
        }
        let pending = pendingRequest(for: connection)
        pending.read = PendingRequest.Read(session: session, since: offset, max: max, compat: compat, duplicate: duplicate)
        longPolls += 1
        // Hold first: replacing an older waiter can run that client's next request, which may
        // in turn supersede (and answer) this one before setWaiter returns.
        connection.hold(until: now + waitMs)
        session.setWaiter(pending)
    }

    func respondRead(_ connection: HTTPConnection, session: Session, from offset: UInt64, max: Int, compat: Bool,
                     duplicate: Bool = false) {
        // Evicted is only possible if history was evicted while the read waited.
        guard isReadable(offset, session, connection) else { return }
        let length = Int(min(session.ring.end - offset, UInt64(max)))
        session.delivered = offset + UInt64(length)
        connection.begin(.ok)
        connection.header("X-Offset", offset)
        connection.header("X-Next-Offset", offset + UInt64(length))
        if let reason = session.closeReason {
            connection.header("X-Session-State", "closed")
            connection.header("X-Close-Reason", string: reason.text)
        } else {
            connection.header("X-Session-State", "open")
        }
        if duplicate { connection.header("X-Duplicate", "1") }
        session.ring.withBytes(from: offset, max: length) { a, b in
            connection.finish(contentType: compat ? "text/plain" : "application/octet-stream", a, b)
        }
    }

    // MARK: Stream (SSE)

    private func events(_ connection: HTTPConnection, _ session: Session, _ request: HTTPRequest, _ params: Parameters) {
        var start = session.delivered
        var gmcpSeq: UInt64?
        // A malformed `since` is 400 even when Last-Event-ID wins over it (SPEC §2).
        var since: UInt64?
        switch params.unsigned("since") {
        case .failure(let e)?: return error(connection, .badRequest, e.reason)
        case .success(let n)?: since = n
        case nil: break
        }
        if !request.lastEventID.isEmpty {  // EventSource reconnecting: resume where it was
            // `<offset>`, or `<offset>:<next gmcp seq>` on a GMCP session (SPEC §7).
            guard let point = ProxyAPI.resumePoint(request.lastEventID[...]) else {
                return error(connection, .badRequest, "Last-Event-ID must be an offset, or offset:seq (decimal numbers)")
            }
            (start, gmcpSeq) = point
        } else if let since {
            start = since
        }
        guard isReadable(start, session, connection), let gmcpCursor = gmcpStart(session, start, gmcpSeq, connection) else { return }
        session.lastTouched = clock()
        if !session.isOpen, start == session.ring.end, gmcpCursor == session.gmcp?.next {
            return respondEmpty(connection)  // nothing more will come: 204 stops EventSource
        }
        session.acknowledge(upTo: start)
        connection.begin(.ok)
        connection.header("X-Accel-Buffering", "no")  // reverse proxies: do not buffer the stream
        // EventSource waits ~3 s before reconnecting by default; a dropped player wants 1 s.
        connection.startStream(contentType: "text/event-stream", prefix: "retry: 1000\n\n")
        // The head's write can fail (the client reset) and close the connection at once, and
        // `connectionWillClose` has then run already: no stream may be attached after it.
        guard connection.isStreaming else { return }
        let stream = EventStream(connection: connection, api: self, session: session, cursor: start, gmcpCursor: gmcpCursor)
        connection.attachment = .eventStream(stream)
        eventStreams += 1
        connection.hold(until: clock() + settings.keepAliveMs)
        stream.pump()
    }

    /// Whether a read or stream may start at `offset`; if not, answers 400 (past the end) or
    /// 409 with `X-Offset-Base` (evicted).
    private func isReadable(_ offset: UInt64, _ session: Session, _ connection: HTTPConnection) -> Bool {
        switch session.ring.check(offset) {
        case .ok:
            return true
        case .beyondEnd:
            error(connection, .badRequest, "offset \(offset) is beyond the end of the stream (\(session.ring.end))")
        case .evicted:
            connection.begin(.conflict)
            connection.header("X-Offset-Base", session.ring.base)
            connection.finishError("bytes before offset \(session.ring.base) were evicted")
        }
        return false
    }

    static let malformedWebSocketSince = "since must be an offset, or offset:seq (decimal numbers)"

    /// `<offset>` or `<offset>:<next GMCP seq>`: an SSE event's id (`Last-Event-ID`) and a
    /// WebSocket's `since` (SPEC §7: a stream resumes text and GMCP together). nil if malformed.
    static func resumePoint(_ text: ArraySlice<UInt8>) -> (offset: UInt64, seq: UInt64?)? {
        guard let colon = text.firstIndex(of: UInt8(ascii: ":")) else {
            return Parameters.parseUnsigned(text).map { ($0, nil) }
        }
        guard let offset = Parameters.parseUnsigned(text[..<colon]), let seq = Parameters.parseUnsigned(text[(colon + 1)...]) else {
            return nil
        }
        return (offset, seq)
    }

    /// Where a stream from text offset `start` starts in the session's GMCP log: at `seq` when
    /// the client names one (else `409` with `X-Gmcp-Base` if evicted, `400` if past the next,
    /// as `GET …/gmcp`: answered here, and the result is nil), otherwise at the first message at
    /// or after `start`. `.some(nil)`: the session has no GMCP (plain offsets, a seq ignored).
    private func gmcpStart(_ session: Session, _ start: UInt64, _ seq: UInt64?, _ connection: HTTPConnection) -> UInt64?? {
        guard let log = session.gmcp else { return .some(nil) }
        guard let seq else { return log.first(atOrAfter: start) }
        switch log.since(seq) {
        case .evicted(let base): gmcpEvicted(connection, seq, base: base); return nil
        case .ahead(let next): gmcpAhead(connection, seq, next: next); return nil
        case .messages: return seq
        }
    }

    private func pendingRequest(for connection: HTTPConnection) -> PendingRequest {
        if case .longPoll(let p) = connection.attachment { return p }
        let p = PendingRequest(connection: connection, api: self)
        connection.attachment = .longPoll(p)
        return p
    }

    // MARK: Input

    /// Sends the command of `request` to `session`. With `respond`, answers 204; otherwise
    /// answers only errors and returns nil when the caller may not go on, else whether the
    /// command was a duplicate `seq` (not sent again).
    @discardableResult
    private func input(_ connection: HTTPConnection, _ session: Session, _ request: HTTPRequest,
                       _ params: Parameters, respond: Bool) -> Bool? {
        var seq: UInt64?
        switch params.unsigned("seq", atLeast: 1) {
        case .failure(let e)?: error(connection, .badRequest, e.reason); return nil
        case .success(let n)?:
            seq = n
        case nil: break
        }
        var raw = false
        switch params.boolean("raw") {
        case .failure(let e)?: error(connection, .badRequest, e.reason); return nil
        case .success(let b)?: raw = b
        case nil: break
        }
        session.lastTouched = clock()
        let command: [UInt8]
        if let q = params.rawQuery("cmd") {
            command = Parameters.decode(q)
        } else if let f = params.rawForm("cmd") {
            command = Parameters.decode(f)
        } else if respond {
            command = request.body
        } else {
            return false  // /mud without cmd: a plain read
        }
        let result = command.withUnsafeBytes { bytes -> Session.InputResult in
            let crlf = UnsafeRawBufferPointer(start: UnsafeRawPointer(("\r\n" as StaticString).utf8Start), count: 2)
            if raw { return session.sendInput(bytes, .init(start: nil, count: 0), seq: seq) }
            let (keep, append) = LineEnding.terminate(command)
            return session.sendInput(UnsafeRawBufferPointer(rebasing: bytes[0..<keep]),
                                     append ? crlf : .init(start: nil, count: 0), seq: seq)
        }
        switch result {
        case .queued, .duplicate:
            if respond {
                connection.begin(.noContent)
                if result == .duplicate { connection.header("X-Duplicate", "1") }
                connection.finish(contentType: nil)
            }
            return result == .duplicate
        case .closed:
            error(connection, .conflict, "session is closed (\(session.closeReason?.text ?? "closed"))")
        case .full:
            error(connection, .serviceUnavailable, "too much input is waiting for the target", retryAfter: true)
        }
        return nil
    }

    // MARK: /mud

    private func mud(_ connection: HTTPConnection, _ request: HTTPRequest, _ params: Parameters) {
        guard let idBytes = params.raw("id") else {
            return create(connection, params, compat: true)
        }
        // Ids are base64url: they never need percent-decoding.
        let id = idPrefix.isEmpty ? SessionID(text: idBytes) : SessionID(text: idBytes, prefix: idPrefix)
        guard let session = lookup(id, connection) else { return }
        var duplicate = false
        if params.has("cmd") {
            guard let wasDuplicate = input(connection, session, request, params, respond: false) else { return }
            duplicate = wasDuplicate
        }
        read(connection, session, params, compat: true, duplicate: duplicate)
    }

    // MARK: Helpers

    /// The session a request names; the request touches it, whatever comes of it (SPEC §1's
    /// idle timeout counts requests, a refused one too).
    func lookup(_ id: SessionID?, _ connection: HTTPConnection) -> Session? {
        if let id, let session = table.session(id) {
            session.lastTouched = clock()
            return session
        }
        error(connection, .notFound, "unknown session")
        return nil
    }

    func respondEmpty(_ connection: HTTPConnection) {
        connection.begin(.noContent)
        connection.finish(contentType: nil)
    }

    func respond(_ connection: HTTPConnection, _ status: HTTPStatus, contentType: StaticString, body: [UInt8]) {
        connection.begin(status)
        connection.finish(contentType: contentType, body: body)
    }

    /// One of the web client's files (docs/DESIGN.md, "The web client"), or the OpenAPI document:
    /// `no-store` as every response (SPEC §2), with an ETag that `If-None-Match` is answered `304`
    /// for; the Content-Security-Policy and `nosniff` on all of them.
    private func serve(_ asset: WebAsset, _ request: HTTPRequest, _ connection: HTTPConnection) {
        let unchanged = !request.ifNoneMatch.isEmpty && WebAsset.matches(ifNoneMatch: request.ifNoneMatch, etag: asset.etag)
        connection.begin(unchanged ? .notModified : .ok)
        connection.header("ETag", bytes: asset.etag)
        connection.header("Content-Security-Policy", WebAsset.contentSecurityPolicy)
        connection.header("X-Content-Type-Options", "nosniff")
        if unchanged {
            connection.finishNotModified(cacheControl: .noStore)
        } else {  // a HEAD gets the same head, without the body (HTTPConnection)
            connection.finish(contentType: asset.contentType, body: asset.body, cacheControl: .noStore)
        }
    }

    private func respondPreflight(_ connection: HTTPConnection) {
        connection.begin(.noContent)
        connection.header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
        connection.header("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID")
        connection.header("Access-Control-Max-Age", "86400")
        connection.finish(contentType: nil)
    }

    func error(_ connection: HTTPConnection, _ status: HTTPStatus, _ reason: String,
               allow: StaticString? = nil, retryAfter: Bool = false) {
        connection.begin(status)
        if let allow { connection.header("Allow", allow) }
        if retryAfter { connection.header("Retry-After", "1") }
        connection.finishError(reason)
    }

}

/// Compares without an early exit, so the time taken does not reveal how much matched.
func constantTimeEquals(_ a: some RandomAccessCollection<UInt8>, _ b: [UInt8]) -> Bool {
    var diff = UInt8(a.count == b.count ? 0 : 1)
    var i = a.startIndex
    for x in b {
        if i != a.endIndex {
            diff |= a[i] ^ x
            i = a.index(after: i)
        } else {
            diff |= x | 1
        }
    }
    return diff == 0
}

/// `Authorization: Bearer <token>` (RFC 6750 §2.1): the scheme in any case (RFC 9110 §11.1), one
/// or more spaces, then the token, compared in constant time.
func bearerMatches(_ header: [UInt8], token: [UInt8]) -> Bool {
    guard header.count > 7, header[0..<6].equalsIgnoringCase("bearer"), header[6] == 0x20 else { return false }
    var i = 7
    while i < header.count, header[i] == 0x20 { i += 1 }
    return constantTimeEquals(header[i...], token)
}
