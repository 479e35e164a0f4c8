import Logging

/// SIGUSR1 (SPEC §9): take this node out of the rotation without dropping anyone.
///
/// Creates answer `503` with `Retry-After` (a balancer's retry, or the client's, lands on
/// another node) and `/healthz` answers `503 draining` (the balancer's health check stops
/// sending it new players). Every existing session is served as before, reads, input, streams,
/// until it closes and its linger ends, so a player reads the last bytes; the daemon then shuts
/// down and exits 0. At `drain-timeout` the sessions still open are closed with reason
/// `shutdown`, as SIGTERM would.
extension ProxyDaemon {
    /// Starts the drain (a second SIGUSR1 changes nothing).
    public func drain() {
        guard drainTimer == nil, shutdownTimer == nil else { return }
        api.draining = true
        drainStarted = loop.now
        logger.notice("draining: creates answer 503, /healthz answers 503 draining; exiting when the last session has ended", metadata: [
            "open": "\(table.openCount)", "lingering": "\(table.closedCount)",
            "drain_timeout_s": "\(config.drainTimeout)",
        ])
        guard let timer = try? LoopTimer(loop: loop) else { return shutdown() }
        drainTimer = timer
        timer.onFire = { [unowned self] in self.checkDrained() }
        timer.start(after: 0, repeat: 100)
    }

    public var isDraining: Bool { api.draining }

    private func checkDrained() {
        if table.openCount == 0, table.closedCount == 0 {
            logger.notice("drained: no session left")
        } else if loop.now - drainStarted >= ProxyConfig.ms(config.drainTimeout) {
            logger.warning("drain timeout: closing the sessions left", metadata: [
                "open": "\(table.openCount)", "lingering": "\(table.closedCount)",
            ])
        } else {
            return
        }
        drainTimer?.close()
        shutdown()
    }
}
