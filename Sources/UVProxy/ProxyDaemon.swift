import Logging
#if canImport(Glibc)
import Glibc
#endif

/// The whole daemon on one loop: HTTP server, session table, API, optional demo game, signals.
public final class ProxyDaemon: SessionEventSink, HTTPServerObserver {
    public let loop: EventLoop
    /// The config in force (a reload replaces it).
    public private(set) var config: ProxyConfig
    var logger: Logger {
        didSet { logsRequests = logger.logLevel <= .debug }
    }
    /// The access line is on (`debug`): a stored flag, since asking the logger goes through
    /// its handler on every request.
    private var logsRequests = false
    /// Reads the config again (file, environment, the original flags) on SIGHUP. Synchronous: it
    /// runs on the loop thread.
    public var configLoader: (() throws -> ProxyConfig)?
    public let server: HTTPServer
    public let table: SessionTable
    public let api: ProxyAPI
    private var demo: DemoGame?
    private var signals: [SignalWatcher] = []
    private var shutdownTimer: LoopTimer?
    private var shutdownStarted: UInt64 = 0
    public private(set) var listenAddress: SocketAddress?
    public private(set) var demoAddress: SocketAddress?
    private let startedAt: UInt64
    let metrics = ProxyMetrics()
    /// The loop's longest turns (`uvproxyd_loop_lag_seconds`).
    let lag: LoopLagMonitor
    /// A reload is waiting for its host name lookups.
    private var reloading = false
    public var isReloading: Bool { reloading }
    /// The hard open-file limit, once `run()` has raised the soft one to it.
    private var fileLimit: UInt64 = 0
    /// Requests get the DNS rebinding check while there is no token (`listen` needs a restart).
    private let listenIsLoopback: Bool
    /// Creates that failed for lack of descriptors since the last warning about it.
    private var descriptorFailures: UInt64 = 0
    private var lastDescriptorWarning: UInt64?

    /// Builds everything and binds. Throws `ConfigError`/`UVError` with a one-line message.
    public init(config: ProxyConfig, logger: Logger) throws {
        try config.validate()
        self.config = config
        self.logger = logger
        logsRequests = logger.logLevel <= .debug
        let listenAddress: SocketAddress
        do { listenAddress = try SocketAddress(parsing: config.listen) } catch { throw ConfigError("listen: \(error)") }
        listenIsLoopback = listenAddress.isLoopback
        // Resolve targets before binding anything, so a bad one stops start-up cleanly.
        if !config.demo { _ = try config.apiSettings() }

        loop = try EventLoop()
        let loop = self.loop
        lag = try LoopLagMonitor(loop: loop)
        var limits = HTTPLimits()
        limits.maxBody = 64 * 1024
        limits.maxHeader = 8 * 1024
        limits.sendTimeoutMs = ProxyConfig.ms(config.sendTimeout)
        limits.maxConnections = config.maxConnections
        limits.acceptProxyProtocol = config.acceptProxyProtocol
        server = HTTPServer(loop: loop, limits: limits, corsHeaders: ProxyDaemon.corsHeaders(config.corsOrigin))
        table = SessionTable(settings: config.sessionSettings, deadlines: loop.deadlines, clock: { loop.now }) { session in
            try Upstream(loop: loop, session: session)
        }
        var demoTarget: SocketAddress?
        if config.demo {
            let demo = DemoGame(loop: loop)
            demoTarget = try demo.start(on: try SocketAddress(host: "127.0.0.1", port: 0))
            self.demo = demo
            demoAddress = demoTarget
        }
        api = ProxyAPI(settings: try config.apiSettings(defaultAddress: demoTarget, listenIsLoopback: listenIsLoopback),
                       table: table, clock: { loop.now })
        startedAt = loop.now
        server.handler = api
        table.isOverSendBudget = { loop.isOverSendBudget }
        server.observer = self
        table.events = self
        api.sessionCreated = { [unowned self] session, connection in
            self.logger.info("session created", metadata: [
                "session": "\(ProxyDaemon.shortID(session.id))", "target": "\(session.target.name)",
                "client": "\(self.clientAddress(connection))",
            ])
        }
        api.metricsText = { [unowned self] in self.metricsText() }
        api.clientAddress = { [unowned self] connection in self.clientHost(connection) }
        api.clientOrigin = { [unowned self] connection in self.clientOrigin(connection) }
        do {
            self.listenAddress = try server.listen(on: listenAddress)
        } catch let error as UVError {
            throw ConfigError("cannot listen on \(config.listen): \(error.message)")
        }
    }

    /// Logs the start-up lines, installs signal handlers and runs until shut down.
    public func run() {
        ProxyDaemon.ignoreSIGPIPE()
        let (before, soft, hard) = ProxyDaemon.raiseFileLimit()
        logger.info("open-file limit", metadata: ["was": "\(before)", "now": "\(soft)", "hard": "\(hard)"])
        fileLimit = hard
        warnAboutLimits()
        if let demoAddress { logger.info("demo game listening on \(demoAddress) (default target)") }
        for sig in [SIGINT, SIGTERM] {
            if let w = try? SignalWatcher(loop: loop, signal: sig, { [unowned self] signum in
                self.logger.notice("signal \(signum): shutting down")
                self.shutdown()
            }) { signals.append(w) }
        }
        if let w = try? SignalWatcher(loop: loop, signal: SIGHUP, { [unowned self] _ in self.reload() }) {
            signals.append(w)
        }
        logger.notice("uvproxyd ready: listening on \(listenAddress!)")
        loop.run()
        finish()
    }

    /// Warnings about limits that cannot hold `max-sessions`.
    private func warnAboutLimits() {
        if fileLimit != 0, Int(fileLimit) < config.maxSessions + 64 {
            logger.warning("max-sessions may not fit the open-file limit: each session uses one descriptor, each client connection another",
                           metadata: ["max-sessions": "\(config.maxSessions)", "limit": "\(fileLimit)"])
        }
        if let ports = ProxyDaemon.localPortRange(), (ports.upperBound - ports.lowerBound + 1) / 2 < config.maxSessions {
            logger.warning("""
                net.ipv4.ip_local_port_range \(ports.lowerBound)-\(ports.upperBound) gives connect() about \
                \((ports.upperBound - ports.lowerBound + 1) / 2) fast ports per target; sessions past that connect slowly. \
                Widen it (e.g. 1024 65535) for max-sessions \(config.maxSessions)
                """)
        }
    }

    // MARK: Reload

    /// SIGHUP: reads the config again, looks its target host names up off the loop, then puts
    /// it in force; on any error the running config stays.
    public func reload() {
        guard shutdownTimer == nil, let configLoader else { return }
        guard !reloading else { return logger.warning("config reload already in progress: this SIGHUP is ignored") }
        let new: ProxyConfig
        do {
            new = try configLoader()
            try new.validate()
        } catch {
            return logger.warning("config reload failed, the running config stays in force: \(error)")
        }
        reloading = true
        AddressResolver.resolve(new.targetAddresses, loop: loop) { [unowned self] resolved in
            self.reloading = false
            guard self.shutdownTimer == nil else { return }
            do {
                try self.apply(new, resolved: resolved)
            } catch {
                self.logger.warning("config reload failed, the running config stays in force: \(error)")
            }
        }
    }

    /// Puts `new` in force. Targets, token, CORS, the web page, `max-wait`, `max-sessions` and
    /// `buffer-size` apply to requests and sessions from now on; `send-timeout`,
    /// `max-connections` and `accept-proxy-protocol` to connections accepted from now on; idle timeout and linger to every
    /// session at its next deadline. Open sessions keep their connection, bytes and buffer size.
    /// `listen`, `demo` and `log-format` need a restart. Throws, changing nothing, if `new` is
    /// invalid or a target does not resolve.
    public func apply(_ new: ProxyConfig, resolved: [String: Result<SocketAddress, AddressError>] = [:]) throws {
        try new.validate()
        var next = new
        let restartOnly = new.changedKeys(from: config).filter { ["listen", "demo", "log-format"].contains($0) }
        next.listen = config.listen
        next.demo = config.demo
        next.logFormat = config.logFormat
        // Resolve every target before changing anything, so a bad one leaves the old config in force.
        let apiSettings = try next.apiSettings(defaultAddress: demoAddress, resolved: resolved,
                                               listenIsLoopback: listenIsLoopback)
        let changed = next.changedKeys(from: config)
        let maxSessionsChanged = next.maxSessions != config.maxSessions
        config = next
        api.settings = apiSettings
        table.apply(next.sessionSettings)
        server.corsHeaders = ProxyDaemon.corsHeaders(next.corsOrigin)
        // Connections accepted from now on.
        server.limits.sendTimeoutMs = ProxyConfig.ms(next.sendTimeout)
        server.limits.maxConnections = next.maxConnections
        server.limits.acceptProxyProtocol = next.acceptProxyProtocol
        if let level = Logger.Level(rawValue: next.logLevel.lowercased()) { logger.logLevel = level }

        let names = ["default"] + next.targets.keys.sorted()
        logger.notice("""
            config reloaded: \(names.count) target\(names.count == 1 ? "" : "s") (\(names.joined(separator: ", "))); \
            changed: \(changed.isEmpty ? "nothing" : changed.joined(separator: ", "))
            """)
        if !restartOnly.isEmpty {
            logger.warning("config: \(restartOnly.joined(separator: ", ")) changed; ignored until restart")
        }
        if maxSessionsChanged { warnAboutLimits() }
    }

    /// Graceful shutdown: stop accepting, close sessions with reason `shutdown` (answering waiting
    /// reads), let queued input reach targets, then stop within `shutdown-timeout`.
    public func shutdown() {
        guard shutdownTimer == nil else { return }
        shutdownStarted = loop.now
        server.stopAccepting()
        table.closeAll(reason: .shutdown)
        server.closeIdleConnections()
        demo?.stop()
        guard let timer = try? LoopTimer(loop: loop) else { return stopNow() }
        shutdownTimer = timer
        timer.onFire = { [unowned self] in
            let draining = self.table.allSessions.contains { $0.link != nil }
            let waited = self.loop.now - self.shutdownStarted
            if (self.server.connectionCount == 0 && !draining) || waited >= ProxyConfig.ms(self.config.shutdownTimeout) {
                self.stopNow()
            }
        }
        timer.start(after: 10, repeat: 20)
    }

    private func stopNow() {
        shutdownTimer?.close()
        server.closeAll()
        for w in signals { w.close() }
        signals.removeAll()
        lag.close()
        loop.stop()
    }

    private func finish() {
        loop.close()
        logger.notice("uvproxyd stopped")
    }

    // MARK: Session events

    public func sessionOpened(_ session: Session) {}  // logged by the API, which knows the client

    public func sessionClosed(_ session: Session, reason: CloseReason) {
        let lifetime = Double(loop.now - session.openedAt) / 1000
        logger.info("session closed", metadata: [
            "session": "\(ProxyDaemon.shortID(session.id))", "target": "\(session.target.name)",
            "reason": "\(reason.text)", "received_bytes": "\(session.ring.end)", "sent_bytes": "\(session.sentBytes)",
            "lifetime_s": "\((lifetime * 10).rounded() / 10)",
        ])
    }

    public func sessionConnectFailed(target: Target, error: CreateError) {
        if error == .noDescriptors {
            // Out of descriptors, every create fails: one line per 10 s, with the count.
            descriptorFailures += 1
            let now = loop.now
            if let last = lastDescriptorWarning, now - last < HTTPServer.acceptWarningIntervalMs { return }
            lastDescriptorWarning = now
            logger.warning("creates failed: out of file descriptors", metadata: [
                "count": "\(descriptorFailures)", "error": "EMFILE", "target": "\(target.name)",
            ])
            descriptorFailures = 0
            return
        }
        logger.warning("connect to target failed", metadata: ["target": "\(target.name)", "error": "\(error)"])
    }

    /// Accepts failed (out of descriptors, mostly): the server calls this at most once per 10 s.
    public func acceptsFailed(count: UInt64, error: Int32) {
        logger.warning("accepts failed: \(count) client connection\(count == 1 ? "" : "s") closed unserved since the last warning", metadata: [
            "count": "\(count)", "error": "\(UVError.name(error))", "reason": "\(UVError(error, "accept").message)",
        ])
    }

    public func proxyHeadersRejected(count: UInt64, peer: SocketAddress?, reason: String) {
        logger.warning("PROXY header missing or invalid: \(count) connection\(count == 1 ? "" : "s") closed since the last warning", metadata: [
            "count": "\(count)", "peer": "\(peer?.description ?? "-")", "reason": "\(reason)",
        ])
    }

    // MARK: Requests: latency histogram, access log

    public func requestFinished(_ connection: HTTPConnection, status: HTTPStatus, nanoseconds: UInt64, streamed: Bool) {
        #if !UVPROXYD_NO_REQUEST_METRICS  // scripts/bench-metrics builds without it, to measure its cost
        // A stream's duration is how long a player stayed, not how fast we answered.
        if !streamed { metrics.requestDuration.record(nanoseconds: nanoseconds) }
        #endif
        guard logsRequests else { return }  // nothing is formatted unless it is logged
        let request = connection.request
        logger.debug("request", metadata: [
            "client": "\(clientAddress(connection))",
            "method": "\(String(describing: request.method).uppercased())",
            "path": "\(ProxyDaemon.loggablePath(request.target))",
            "status": "\(status.rawValue)",
            "duration_us": "\(nanoseconds / 1000)",
            "stream": "\(streamed)",
        ])
    }

    /// The client's address for logs (SPEC §5): the TCP peer with its port, or with
    /// `--trust-proxy` the last `X-Forwarded-For` entry (the one the reverse proxy in front of
    /// us appended; earlier ones are whatever the client wrote).
    func clientAddress(_ connection: HTTPConnection) -> String {
        forwardedClient(connection) ?? connection.peerAddress?.description ?? "-"
    }

    /// The same without the peer's port: what `max-sessions-per-client` counts by.
    func clientHost(_ connection: HTTPConnection) -> String {
        forwardedClient(connection) ?? connection.peerAddress?.host ?? "-"
    }

    /// The same as an address, for the PROXY header a target gets (SPEC §6). A forwarded client
    /// has no port we know (0); one that is not an IP address is unknown (nil).
    func clientOrigin(_ connection: HTTPConnection) -> SocketAddress? {
        guard let forwarded = forwardedClient(connection) else { return connection.peerAddress }
        return SocketAddress(literal: forwarded, port: 0)
    }

    private func forwardedClient(_ connection: HTTPConnection) -> String? {
        let forwarded = connection.request.forwardedFor
        guard config.trustProxy, !forwarded.isEmpty else { return nil }
        let last = forwarded.lastIndex(of: UInt8(ascii: ",")).map { forwarded[($0 + 1)...] } ?? forwarded[...]
        return String(decoding: last, as: UTF8.self).trimmingSpaces
    }

    /// Logs carry the first 8 characters of a session id: enough to follow a session through
    /// the log, not enough to take it over (the id is the player's only secret).
    static func shortID(_ id: SessionID) -> String { String("\(id)".prefix(8)) }

    /// The path without its query (which may hold commands, passwords included) and with
    /// session ids shortened.
    static func loggablePath(_ target: [UInt8]) -> String {
        var path = String(decoding: target.prefix { $0 != UInt8(ascii: "?") }, as: UTF8.self)
        if path.hasPrefix("/sessions/") {
            let rest = path.dropFirst(10)
            let id = rest.prefix { $0 != "/" }
            path = "/sessions/" + id.prefix(8) + (id.count > 8 ? "…" : "") + rest.dropFirst(id.count)
        }
        return path
    }

    // MARK: Metrics

    /// Copies the loop's counts into the metrics library and renders the exposition.
    func metricsText() -> [UInt8] {
        let c = table.counters
        metrics.gauge("uvproxyd_sessions", [("state", "open")], table.openCount)
        metrics.gauge("uvproxyd_sessions", [("state", "closed")], table.closedCount)
        metrics.count("uvproxyd_sessions_created_total", total: c.created)
        metrics.count("uvproxyd_upstream_connect_failures_total", total: c.connectFailures)
        metrics.count("uvproxyd_accept_errors_total", total: server.metrics.acceptErrors)
        metrics.count("uvproxyd_proxy_header_errors_total", total: server.metrics.proxyHeaderErrors)
        metrics.count("uvproxyd_upstream_received_bytes_total", total: c.upstreamReceivedBytes)
        metrics.count("uvproxyd_upstream_sent_bytes_total", total: c.upstreamSentBytes)
        for (code, n) in server.metrics.statusCounts.enumerated() where n > 0 {
            metrics.count("uvproxyd_http_requests_total", [("code", String(code))], total: n)
        }
        metrics.gauge("uvproxyd_http_connections", server.connectionCount)
        metrics.gauge("uvproxyd_long_polls", api.longPolls)
        metrics.gauge("uvproxyd_event_streams", api.eventStreams)
        metrics.gauge("uvproxyd_buffered_bytes", max(table.bufferedBytes, 0))
        metrics.gauge("uvproxyd_loop_lag_seconds", seconds: lag.takeRecent())
        metrics.gauge("uvproxyd_loop_lag_max_seconds", seconds: lag.overallMax)
        metrics.count("uvproxyd_backpressure_pauses_total", total: c.backpressurePauses)
        metrics.count("uvproxyd_history_evicted_bytes_total", total: c.evictedBytes)
        metrics.gauge("uvproxyd_send_queue_bytes", loop.sendQueueBytes)
        metrics.count("uvproxyd_connections_rejected_total", total: server.metrics.rejectedConnections)
        for (reason, n) in c.closeReasons {
            metrics.count("uvproxyd_sessions_closed_total", [("reason", reason)], total: n)
        }
        return metrics.render()
    }

    // MARK: Process set-up

    static func corsHeaders(_ origin: String?) -> [UInt8]? {
        guard let origin else { return nil }
        return Array(("Access-Control-Allow-Origin: \(origin)\r\n"
            + "Access-Control-Expose-Headers: X-Offset, X-Next-Offset, X-Session-State, X-Close-Reason, "
            + "X-Offset-Base, X-Session-Id, X-Duplicate, Location, Retry-After\r\n"
            + (origin == "*" ? "" : "Vary: Origin\r\n")).utf8)
    }

    public static func ignoreSIGPIPE() { signal(SIGPIPE, SIG_IGN) }

    /// Linux's ephemeral port range: connect() prefers its even ports, so about half of it can
    /// be used quickly toward one target.
    static func localPortRange() -> ClosedRange<Int>? {
        guard let file = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r") else { return nil }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 64)
        guard fgets(&line, 64, file) != nil else { return nil }
        let parts = String(cString: line).split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" })
        guard parts.count == 2, let low = Int(parts[0]), let high = Int(parts[1]), low <= high else { return nil }
        return low...high
    }

    /// Raises the soft open-file limit to the hard one; returns the soft limit before, and
    /// (soft, hard) after.
    @discardableResult
    public static func raiseFileLimit() -> (UInt64, UInt64, UInt64) {
        var limit = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        guard getrlimit(resource, &limit) == 0 else { return (0, 0, 0) }
        let before = UInt64(limit.rlim_cur)
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(resource, &raised) == 0 { limit = raised }
        }
        return (before, UInt64(limit.rlim_cur), UInt64(limit.rlim_max))
    }
}
