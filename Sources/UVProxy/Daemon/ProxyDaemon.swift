import Logging
#if canImport(Glibc)
import Glibc
#endif

/// The whole daemon on one loop: HTTP server, session table, API, optional demo game, signals.
///
/// Its life cycle has a file per path, beside this one: start (`init`, `run`, here), reload
/// (SIGHUP, `Reload.swift`), drain (SIGUSR1, `Drain.swift`), upgrade in place, both the old
/// process's side and the new one's (SIGUSR2, `Upgrade.swift`), shutdown (SIGINT/SIGTERM,
/// `Shutdown.swift`); what it tells and counts: `Events.swift` (sessions, accept failures),
/// `AccessLog.swift` (requests, client addresses), `Metrics.swift` (`/metrics`),
/// `SystemdNotify.swift` (readiness to systemd).
public final class ProxyDaemon: SessionEventSink, HTTPServerObserver {
    public let loop: EventLoop
    /// The config in force (a reload replaces it).
    public internal(set) var config: ProxyConfig
    var logger: Logger {
        didSet { logsRequests = logger.logLevel <= .debug }
    }
    /// The access line is on (`debug`): a stored flag, since asking the logger goes through
    /// its handler on every request.
    var logsRequests = false
    /// Reads the config again (file, environment, the original flags) on SIGHUP. Synchronous: it
    /// runs on the loop thread.
    public var configLoader: (() throws -> ProxyConfig)?
    public let server: HTTPServer
    public let table: SessionTable
    public let api: ProxyAPI
    var demo: DemoGame?
    var signals: [SignalWatcher] = []
    var shutdownTimer: LoopTimer?
    var shutdownStarted: UInt64 = 0
    /// SIGUSR1: watches for the last session to end (`Drain.swift`).
    var drainTimer: LoopTimer?
    var drainStarted: UInt64 = 0
    public internal(set) var listenAddress: SocketAddress?
    public internal(set) var demoAddress: SocketAddress?
    let startedAt: UInt64
    let metrics = ProxyMetrics()
    /// The loop's longest turns (`uvproxyd_loop_lag_seconds`).
    let lag: LoopLagMonitor
    /// A reload is waiting for its host name lookups.
    var reloading = false
    public var isReloading: Bool { reloading }
    /// The hard open-file limit, once `run()` has raised the soft one to it.
    var fileLimit: UInt64 = 0
    /// Requests get the DNS rebinding check while there is no token (`listen` needs a restart).
    let listenIsLoopback: Bool
    /// SIGUSR2 (`Upgrade.swift`): the old process's side of an upgrade in progress, and the new
    /// one's while it takes over (`takeOverChannel`: its end of the channel, until `run`).
    var upgradeOut: UpgradeOut?
    var takeOverIn: TakeOverIn?
    private var takeOverChannel: Int32?
    /// What an upgrade starts: this binary's path as it was at start, and its arguments.
    public var executablePath = ProxyDaemon.ownExecutablePath()
    public var arguments = CommandLine.arguments
    /// How long the new process has to say `ready`, and then `taken` (10 s; tests shorten it).
    var upgradeTimeoutMs: UInt64 = 10_000
    /// Most hand-over records in flight at once (`Upgrade.swift`). Each holds a second
    /// descriptor for its target connection until the kernel has it, and a descriptor in flight
    /// counts against the open-file limit too: batches keep the hand-over within a process's
    /// spare descriptors, however many sessions it has.
    var handOverBatch = 1024
    /// Creates that failed for lack of descriptors since the last warning about it.
    var descriptorFailures: UInt64 = 0
    var lastDescriptorWarning: UInt64?

    /// What a new process takes over from an old one (SPEC §9): its end of the channel and the
    /// listening socket, as descriptors (`UVPROXYD_TAKE_OVER`, `Upgrade.swift`).
    public struct TakeOver: Sendable {
        public var channel: Int32
        public var listener: Int32
        public init(channel: Int32, listener: Int32) {
            self.channel = channel
            self.listener = listener
        }

        /// `UVPROXYD_TAKE_OVER`'s value, `CHANNEL,LISTENER`.
        public init?(parsing text: String) {
            let parts = text.split(separator: ",")
            guard parts.count == 2, let channel = Int32(parts[0]), let listener = Int32(parts[1]),
                  channel >= 3, listener >= 3, channel != listener else { return nil }
            self.init(channel: channel, listener: listener)
        }
    }

    /// Builds everything and binds (with `takeOver`, takes the old process's listening socket
    /// instead, accepting on it once the sessions are in). Throws `ConfigError`/`UVError` with
    /// a one-line message.
    public init(config: ProxyConfig, logger: Logger, takeOver: TakeOver? = nil) throws {
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
        if let takeOver {
            guard !config.demo else { throw ConfigError("an upgrade cannot take over a daemon with the demo game") }
            let inherited = try server.listen(adopting: takeOver.listener)
            self.listenAddress = inherited
            takeOverChannel = takeOver.channel
            if !ProxyDaemon.sameListenAddress(inherited, listenAddress) {
                logger.warning("listen changed to \(config.listen); the upgrade keeps the listening socket \(inherited) (a change of listen needs a restart)")
            }
            return
        }
        do {
            self.listenAddress = try server.listen(on: listenAddress)
        } catch let error as UVError {
            throw ConfigError("cannot listen on \(config.listen): \(error.message)")
        }
    }

    /// Whether a socket bound to `actual` serves `configured` (whose port 0 means any).
    static func sameListenAddress(_ actual: SocketAddress, _ configured: SocketAddress) -> Bool {
        actual.host == configured.host && (configured.port == 0 || actual.port == configured.port)
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
        if let w = try? SignalWatcher(loop: loop, signal: SIGUSR1, { [unowned self] _ in self.drain() }) {
            signals.append(w)
        }
        if let w = try? SignalWatcher(loop: loop, signal: SIGUSR2, { [unowned self] _ in self.upgrade() }) {
            signals.append(w)
        }
        if let channel = takeOverChannel {
            takeOverChannel = nil
            logger.notice("uvproxyd taking over on \(listenAddress!) (upgrade)")
            startTakeOver(channel: channel)
        } else {
            logger.notice("uvproxyd ready: listening on \(listenAddress!)")
            SystemdNotify.send("READY=1")
        }
        loop.run()
        finish()
    }

    /// Warnings about limits that cannot hold `max-sessions`.
    func warnAboutLimits() {
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

    // MARK: Process set-up

    static func corsHeaders(_ origin: String?) -> [UInt8]? {
        guard let origin else { return nil }
        return Array(("Access-Control-Allow-Origin: \(origin)\r\n"
            + "Access-Control-Expose-Headers: X-Offset, X-Next-Offset, X-Session-State, X-Close-Reason, "
            + "X-Offset-Base, X-Session-Id, X-Duplicate, X-Gmcp-Base, Location, Retry-After\r\n"
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
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" })
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
