/// Everything the daemon is configured with (SPEC §4), from flags, `UVPROXYD_*` variables and the
/// config file (UVProxyConfig's `ConfigLoader` reads them into this).
public struct ProxyConfig: Sendable, Equatable {
    public var listen = "127.0.0.1:8181"
    public var upstream = "127.0.0.1:9000"
    /// Named targets (flags `NAME=HOST:PORT`, or the config file's `targets` map).
    public var targets: [String: TargetConfig] = [:]
    public var maxSessions = 10_000
    public var bufferSize = 1_048_576
    public var idleTimeout: Double = 600
    public var linger: Double = 60
    public var maxWait: Double = 60
    public var connectTimeout: Double = 10
    public var token: String?
    public var corsOrigin: String?
    public var telnet = false
    /// The default target's charset, and that of named targets that do not set one.
    public var charset = Charset.utf8
    public var logLevel = "info"
    /// `text` (logfmt lines) or `json` (one object per line).
    public var logFormat = "text"
    /// Log the client as the last `X-Forwarded-For` address (behind a reverse proxy you run).
    public var trustProxy = false
    /// Start the demo game on a loopback port and make it the default target.
    public var demo = false
    /// Serve the web client page at `/`.
    public var web = false
    public var shutdownTimeout: Double = 10
    /// Seconds between keep-alive comments on idle SSE streams (SPEC: 15; tests shorten it).
    public var sseKeepAlive: Double = 15
    /// SPEC §5: most client connections held at once (beyond: 503 and close).
    public var maxConnections = 10_000
    /// SPEC §5: most open sessions per client address (0: no limit); beyond: 429.
    public var maxSessionsPerClient = 0
    /// SPEC §5: seconds a connection may go without any byte of its queued responses taken.
    public var sendTimeout: Double = 60
    /// SPEC §5: `Host` names accepted besides localhost and loopback addresses when there is no
    /// token and the listen address is loopback (DNS rebinding).
    public var allowedHosts: [String] = []
    /// SPEC §6: every client connection starts with a PROXY header (v1 or v2).
    public var acceptProxyProtocol = false
    /// SPEC §6: the PROXY header sent first to the default target (named targets set their own).
    public var proxyProtocol: ProxyProtocol.Version?
    /// GMCP with the default target (SPEC §7: `--gmcp`; implies telnet for it).
    public var gmcp = false
    /// SPEC §9: every session id starts with `NAME-` (`[a-z0-9]{1,16}`), so a front proxy routes
    /// a request to the daemon that owns its session by the id alone.
    public var nodeId: String?
    /// SPEC §9: seconds a drain (SIGUSR1) waits for the last session before it closes the rest.
    public var drainTimeout: Double = 3600

    public init() {}

    /// Rejects values no daemon could run with; the message names the setting.
    /// Every `HOST:PORT` text the targets use (what a reload looks up).
    var targetAddresses: Set<String> {
        Set(targets.values.map(\.address) + (demo ? [] : [upstream]))
    }

    public func validate() throws {
        // Durations are capped at a year so that deadline arithmetic can never overflow.
        let year = 31_536_000.0
        func positive(_ name: String, _ v: Double) throws {
            guard v.isFinite, v > 0, v <= year else {
                throw ConfigError("\(name): must be a positive number of seconds up to \(Int(year)), got \(v)")
            }
        }
        func nonNegative(_ name: String, _ v: Double) throws {
            guard v.isFinite, v >= 0, v <= year else {
                throw ConfigError("\(name): must be 0 to \(Int(year)) seconds, got \(v)")
            }
        }
        guard (1...10_000_000).contains(maxSessions) else {
            throw ConfigError("max-sessions: must be 1 to 10000000, got \(maxSessions)")
        }
        guard bufferSize >= 1024 else { throw ConfigError("buffer-size: must be at least 1024 bytes, got \(bufferSize)") }
        guard bufferSize <= 1 << 30 else { throw ConfigError("buffer-size: must be at most 1 GiB, got \(bufferSize)") }
        try nonNegative("idle-timeout", idleTimeout)
        try nonNegative("linger", linger)
        try nonNegative("max-wait", maxWait)
        try positive("connect-timeout", connectTimeout)
        try positive("shutdown-timeout", shutdownTimeout)
        try positive("sse-keep-alive", sseKeepAlive)
        try positive("send-timeout", sendTimeout)
        try positive("drain-timeout", drainTimeout)
        if let nodeId, !ProxyConfig.isNodeID(nodeId) {
            throw ConfigError("node-id: must be 1 to 16 characters of a-z and 0-9, got '\(nodeId)'")
        }
        guard (1...10_000_000).contains(maxConnections) else {
            throw ConfigError("max-connections: must be 1 to 10000000, got \(maxConnections)")
        }
        guard (0...10_000_000).contains(maxSessionsPerClient) else {
            throw ConfigError("max-sessions-per-client: must be 0 to 10000000, got \(maxSessionsPerClient)")
        }
        if let token, token.isEmpty { throw ConfigError("token: must not be empty") }
        for name in allowedHosts where !HostCheck.isValidName(name) {
            throw ConfigError("allowed-host: '\(name)' is not a host name (letters, digits, '-', '.', '_', or a [IPv6] address; no port)")
        }
        let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
        guard levels.contains(logLevel.lowercased()) else {
            throw ConfigError("log-level: must be one of \(levels.joined(separator: ", ")), got '\(logLevel)'")
        }
        guard ["text", "json"].contains(logFormat) else {
            throw ConfigError("log-format: must be text or json, got '\(logFormat)'")
        }
        for (name, t) in targets {
            guard ProxyConfig.isTargetName(name) else {
                throw ConfigError("targets: '\(name)' is not a valid name (letters, digits, '-', '_', '.')")
            }
            if let timeout = t.connectTimeout { try positive("targets.\(name).connect-timeout", timeout) }
        }
    }

    /// The config keys whose values differ from `old` (what a reload changed).
    public func changedKeys(from old: ProxyConfig) -> [String] {
        var keys: [String] = []
        func check<T: Equatable>(_ key: String, _ path: KeyPath<ProxyConfig, T>) {
            if self[keyPath: path] != old[keyPath: path] { keys.append(key) }
        }
        check("listen", \.listen)
        check("upstream", \.upstream)
        check("targets", \.targets)
        check("max-sessions", \.maxSessions)
        check("buffer-size", \.bufferSize)
        check("idle-timeout", \.idleTimeout)
        check("linger", \.linger)
        check("max-wait", \.maxWait)
        check("connect-timeout", \.connectTimeout)
        check("token", \.token)
        check("cors-origin", \.corsOrigin)
        check("telnet", \.telnet)
        check("charset", \.charset)
        check("log-level", \.logLevel)
        check("log-format", \.logFormat)
        check("trust-proxy", \.trustProxy)
        check("demo", \.demo)
        check("web", \.web)
        check("shutdown-timeout", \.shutdownTimeout)
        check("max-connections", \.maxConnections)
        check("max-sessions-per-client", \.maxSessionsPerClient)
        check("send-timeout", \.sendTimeout)
        check("allowed-host", \.allowedHosts)
        check("accept-proxy-protocol", \.acceptProxyProtocol)
        check("proxy-protocol", \.proxyProtocol)
        check("gmcp", \.gmcp)
        check("node-id", \.nodeId)
        check("drain-timeout", \.drainTimeout)
        return keys
    }

    /// `[a-z0-9]{1,16}` (SPEC §9).
    public static func isNodeID(_ s: String) -> Bool {
        (1...16).contains(s.utf8.count) && s.utf8.allSatisfy { c in (c >= 48 && c <= 57) || (c >= 97 && c <= 122) }
    }

    public static func isTargetName(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 64 && s.utf8.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 || c == 95 || c == 46
        }
    }

    /// The default target's name (in create answers and logs; `target=default` picks it).
    public static let defaultTargetName = "default"
    public static let defaultTargetNameTaken =
        "'default' names the default target, which upstream sets (with telnet, charset, gmcp, proxy-protocol, connect-timeout)"

    /// Parses `NAME=HOST:PORT`.
    public static func parseTarget(_ text: String) throws -> (String, String) {
        guard let eq = text.firstIndex(of: "=") else { throw ConfigError("target: '\(text)' is not NAME=HOST:PORT") }
        let name = String(text[..<eq])
        let address = String(text[text.index(after: eq)...])
        guard isTargetName(name) else { throw ConfigError("target: '\(name)' is not a valid name") }
        guard name != defaultTargetName else { throw ConfigError("target: \(defaultTargetNameTaken)") }
        return (name, address)
    }

    static func ms(_ seconds: Double) -> UInt64 { UInt64((seconds * 1000).rounded()) }

    var sessionSettings: SessionSettings {
        var s = SessionSettings()
        s.maxSessions = maxSessions
        s.maxSessionsPerClient = maxSessionsPerClient
        s.bufferSize = bufferSize
        s.idleTimeoutMs = ProxyConfig.ms(idleTimeout)
        s.lingerMs = ProxyConfig.ms(linger)
        return s
    }

    /// Resolves every target address (names are resolved here, at start-up or reload).
    /// `resolved` holds lookups already made for `HOST:PORT` texts (a reload makes them off
    /// the loop); other texts are resolved here, blocking. With `listenIsLoopback` and no token,
    /// requests get the DNS rebinding check.
    func apiSettings(defaultAddress: SocketAddress? = nil,
                     resolved: [String: Result<SocketAddress, AddressError>] = [:],
                     listenIsLoopback: Bool = false) throws -> APISettings {
        let timeout = ProxyConfig.ms(connectTimeout)
        func resolve(_ text: String) throws -> SocketAddress {
            try resolved[text]?.get() ?? SocketAddress(parsing: text)
        }
        let address: SocketAddress
        do { address = try defaultAddress ?? resolve(upstream) } catch {
            throw ConfigError("upstream: \(error)")
        }
        var settings = APISettings(defaultTarget: Target(name: ProxyConfig.defaultTargetName, address: address, telnet: telnet,
                                                         charset: charset, connectTimeoutMs: timeout,
                                                         proxyProtocol: proxyProtocol, gmcp: gmcp))
        for (name, t) in targets {
            do {
                settings.targets[name] = Target(name: name, address: try resolve(t.address),
                                                telnet: t.telnet ?? telnet, charset: t.charset ?? charset,
                                                connectTimeoutMs: t.connectTimeout.map(ProxyConfig.ms) ?? timeout,
                                                proxyProtocol: t.proxyProtocol, gmcp: t.gmcp ?? false)
            } catch {
                throw ConfigError("targets.\(name): \(error)")
            }
        }
        settings.token = token
        settings.corsOrigin = corsOrigin
        settings.maxWaitMs = ProxyConfig.ms(maxWait)
        settings.keepAliveMs = ProxyConfig.ms(sseKeepAlive)
        settings.serveWebPage = web || demo
        settings.hostCheck = token == nil && listenIsLoopback ? HostCheck(allowedHosts: allowedHosts) : nil
        settings.idPrefix = nodeId.map { Array("\($0)-".utf8) } ?? []
        return settings
    }
}

/// One named target. Unset fields take the top-level setting (`telnet`, `charset`,
/// `connect-timeout`); `proxy-protocol` does not: the top-level one is the default target's
/// alone, because a game that does not expect a PROXY header takes it for a player's input;
/// nor does `gmcp` (a named target speaks GMCP only when it says so).
public struct TargetConfig: Sendable, Equatable {
    /// `HOST:PORT`.
    public var address: String
    public var telnet: Bool?
    public var charset: Charset?
    public var connectTimeout: Double?
    public var proxyProtocol: ProxyProtocol.Version?
    /// GMCP (SPEC §7); implies telnet.
    public var gmcp: Bool?

    public init(address: String, telnet: Bool? = nil, charset: Charset? = nil, connectTimeout: Double? = nil,
                proxyProtocol: ProxyProtocol.Version? = nil, gmcp: Bool? = nil) {
        self.gmcp = gmcp
        self.address = address
        self.telnet = telnet
        self.charset = charset
        self.connectTimeout = connectTimeout
        self.proxyProtocol = proxyProtocol
    }
}

/// `"HOST:PORT"` is a target with the top-level settings (flags, tests).
extension TargetConfig: ExpressibleByStringInterpolation {
    public init(stringLiteral address: String) { self.init(address: address) }
}

public struct ConfigError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
