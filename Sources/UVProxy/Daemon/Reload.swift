import Logging
#if canImport(Glibc)
import Glibc
#endif

/// SIGHUP: the config read again and put in force without a restart (SPEC §4).
extension ProxyDaemon {
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
        AddressResolver.resolve(inForce(new).targetAddresses, loop: loop) { [unowned self] resolved in
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
    /// `listen`, `demo`, `log-format` and `node-id` need a restart. Throws, changing nothing, if `new` is
    /// invalid or a target does not resolve.
    public func apply(_ new: ProxyConfig, resolved: [String: Result<SocketAddress, AddressError>] = [:]) throws {
        try new.validate()
        let next = inForce(new)
        let restartOnly = new.changedKeys(from: config).filter { ["listen", "demo", "log-format", "node-id"].contains($0) }
        let upstreamIgnored = config.demo && new.upstream != config.upstream
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

        let names = [ProxyConfig.defaultTargetName] + next.targets.keys.sorted()
        logger.notice("""
            config reloaded: \(names.count) target\(names.count == 1 ? "" : "s") (\(names.joined(separator: ", "))); \
            changed: \(changed.isEmpty ? "nothing" : changed.joined(separator: ", "))
            """)
        if !restartOnly.isEmpty {
            logger.warning("config: \(restartOnly.joined(separator: ", ")) changed; ignored until restart")
        }
        if upstreamIgnored {
            logger.warning("config: upstream changed; ignored while the demo game is the default target")
        }
        if maxSessionsChanged { warnAboutLimits() }
    }

    /// `new` as a reload puts it in force: what needs a restart stays as it runs (`listen`,
    /// `node-id`, which every open session's id carries, `demo`, `log-format`), and with the
    /// demo game as the default target `upstream` is not in force (nor was it).
    func inForce(_ new: ProxyConfig) -> ProxyConfig {
        var next = new
        next.listen = config.listen
        next.nodeId = config.nodeId
        next.demo = config.demo
        next.logFormat = config.logFormat
        if config.demo { next.upstream = config.upstream }
        return next
    }
}
