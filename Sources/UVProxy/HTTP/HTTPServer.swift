/// Counters of the HTTP layer, read by `/metrics`.
public struct HTTPMetrics {
    public var connections = 0
    /// Connections answered 503 and closed at once because `max-connections` were open.
    public var rejectedConnections: UInt64 = 0
    /// Responses by status code (index = code).
    public var statusCounts = [UInt64](repeating: 0, count: 600)
    /// Client connections that could not be accepted (out of descriptors, mostly).
    public var acceptErrors: UInt64 = 0
    /// Connections closed for a missing or invalid PROXY header (`--accept-proxy-protocol`).
    public var proxyHeaderErrors: UInt64 = 0
    /// Connections closed because their client took no byte it was owed for `send-timeout`.
    public var sendTimeouts: UInt64 = 0
}

/// Told of every response (metrics, access log).
public protocol HTTPServerObserver: AnyObject {
    /// `nanoseconds` from the request's dispatch to its response's end (a long-poll's wait
    /// included). `streamed`: the response was a stream (SSE), ended by either side.
    func requestFinished(_ connection: HTTPConnection, status: HTTPStatus, nanoseconds: UInt64, streamed: Bool)
    /// Accepts failed: `count` since the last call, the last with libuv error `error`. Called at
    /// most once per `HTTPServer.acceptWarningIntervalMs` (a warning line, not one per failure).
    func acceptsFailed(count: UInt64, error: Int32)
    /// Connections were closed for a missing or invalid PROXY header: `count` since the last
    /// call, the last from `peer` for `reason`. At most once per `acceptWarningIntervalMs`.
    func proxyHeadersRejected(count: UInt64, peer: SocketAddress?, reason: String)
    /// Connections were closed for `send-timeout`: `count` since the last call, the last one's
    /// client `client`. At most once per `acceptWarningIntervalMs`.
    func sendsTimedOut(count: UInt64, client: SocketAddress?)
}

extension HTTPServerObserver {
    public func acceptsFailed(count: UInt64, error: Int32) {}
    public func proxyHeadersRejected(count: UInt64, peer: SocketAddress?, reason: String) {}
    public func sendsTimedOut(count: UInt64, client: SocketAddress?) {}
}

/// Accepts client connections and gives each an `HTTPConnection`.
public final class HTTPServer {
    let loop: EventLoop
    /// Limits for connections accepted from now on (tests shorten timeouts here).
    public var limits: HTTPLimits
    /// Strong: the handler does not reference the server, and a weak load costs on every request.
    public var handler: HTTPHandler?
    /// Unowned: the daemon, which owns this server, observes it (strong would be a cycle, and a
    /// weak load costs on every response).
    public unowned(unsafe) var observer: HTTPServerObserver?
    private var listener: TCPListener?
    private var connections: [ObjectIdentifier: HTTPConnection] = [:]
    public internal(set) var metrics = HTTPMetrics()
    /// Extra header lines (CORS) written into every response.
    var corsHeaders: [UInt8]?
    public private(set) var isAccepting = false
    /// Failed accepts, rejected PROXY headers and send timeouts, told to the observer at most
    /// once per `acceptWarningIntervalMs` each (a client can cause them at will).
    private var acceptErrorReport = RateLimitedReport()
    private var proxyHeaderReport = RateLimitedReport()
    private var sendTimeoutReport = RateLimitedReport()
    public static let acceptWarningIntervalMs: UInt64 = 10_000

    public init(loop: EventLoop, limits: HTTPLimits, corsHeaders: [UInt8]? = nil) {
        self.loop = loop
        self.limits = limits
        self.corsHeaders = corsHeaders
        HTTPRequestParser.setMaxHeaderSize(limits.maxHeader)
    }

    /// Binds and listens; returns the address actually bound.
    @discardableResult
    public func listen(on address: SocketAddress) throws -> SocketAddress {
        try start(TCPListener(loop: loop, address: address, onAccept: { [unowned self] in self.accepted($0) }))
    }

    /// Serves on `fd`, a socket an older process listened on (SPEC §9), accepting nothing until
    /// `resumeAccepting()`. Returns its address.
    @discardableResult
    public func listen(adopting fd: Int32) throws -> SocketAddress {
        let address = try start(TCPListener(loop: loop, listening: fd, polling: false, onAccept: { [unowned self] in self.accepted($0) }))
        isAccepting = false
        return address
    }

    private func start(_ listener: TCPListener) -> SocketAddress {
        listener.onAcceptError = { [unowned self] error, count in self.acceptFailed(error: error, count: count) }
        self.listener = listener
        isAccepting = true
        return listener.localAddress
    }

    private func accepted(_ stream: TCPStream) {
        guard connections.count < limits.maxConnections else { return reject(stream) }
        let connection = HTTPConnection(stream: stream, server: self)
        connections[ObjectIdentifier(connection)] = connection
        metrics.connections = connections.count
    }

    /// The listening socket, while there is one.
    public var listenerDescriptor: Int32? { listener?.fileDescriptor }

    /// Accepts nothing for now (connections wait in the backlog); responses from now on close
    /// their connection, as after `stopAccepting`.
    public func pauseAccepting() {
        isAccepting = false
        listener?.pausePolling()
    }

    public func resumeAccepting() {
        guard let listener else { return }
        isAccepting = true
        listener.resumePolling()
    }

    /// Every open client connection (the upgrade answers what each one waits for).
    public var allConnections: [HTTPConnection] { Array(connections.values) }

    /// Counts failed accepts; tells the observer at most once per `acceptWarningIntervalMs`
    /// (the first failure at once, later ones summed until the interval has passed).
    private func acceptFailed(error: Int32, count: Int) {
        metrics.acceptErrors += UInt64(count)
        if let n = acceptErrorReport.add(UInt64(count), now: loop.now) { observer?.acceptsFailed(count: n, error: error) }
    }

    /// A connection without a valid PROXY header is being closed: counted, and the observer is
    /// told at most once per `acceptWarningIntervalMs` (a client can cause this at will).
    func proxyHeaderRejected(_ connection: HTTPConnection, reason: String) {
        metrics.proxyHeaderErrors += 1
        if let n = proxyHeaderReport.add(1, now: loop.now) {
            observer?.proxyHeadersRejected(count: n, peer: connection.tcpPeerAddress, reason: reason)
        }
    }

    /// `connection`'s client took nothing of what it is owed for `send-timeout`: it is closed
    /// (by the caller), counted, and logged at most once per `acceptWarningIntervalMs`.
    func sendTimedOut(_ connection: HTTPConnection) {
        metrics.sendTimeouts += 1
        if let n = sendTimeoutReport.add(1, now: loop.now) {
            observer?.sendsTimedOut(count: n, client: connection.proxiedAddress ?? connection.tcpPeerAddress)
        }
    }

    /// Over `max-connections`: a 503 the client can read at once, then the descriptor goes back
    /// (a connection past the limit holds nothing of ours).
    private func reject(_ stream: TCPStream) {
        metrics.rejectedConnections += 1
        HTTPServer.tooManyConnections.withUnsafeBytes { _ = stream.write($0) }
        stream.close()
    }

    static let tooManyConnections: [UInt8] = {
        let body = "{\"error\": \"too many connections; retry later\"}"
        return Array(("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            + "Cache-Control: no-store\r\nConnection: close\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body).utf8)
    }()

    /// Stops accepting; open connections answer what they have and close after it.
    public func stopAccepting() {
        isAccepting = false
        listener?.close()
        listener = nil
    }

    /// Closes every connection now.
    public func closeAll() {
        for connection in Array(connections.values) { connection.close() }
    }

    public var connectionCount: Int { connections.count }

    /// Closes connections that are between requests (their last response still gets delivered).
    func closeIdleConnections() {
        for connection in Array(connections.values) { connection.closeWhenIdle() }
    }

    func connectionClosed(_ connection: HTTPConnection) {
        connections[ObjectIdentifier(connection)] = nil
        metrics.connections = connections.count
    }
}

/// Events summed between reports, a report at most once per `HTTPServer.acceptWarningIntervalMs`
/// (the first at once): a log line per interval, not one per event.
struct RateLimitedReport {
    private var unreported: UInt64 = 0
    private var last: UInt64?

    /// Counts `n` more; returns the count to report now, or nil while the interval runs.
    mutating func add(_ n: UInt64, now: UInt64) -> UInt64? {
        unreported += n
        if let last, now - last < HTTPServer.acceptWarningIntervalMs { return nil }
        last = now
        defer { unreported = 0 }
        return unreported
    }
}
