import Logging
#if canImport(Glibc)
import Glibc
#endif

/// SIGINT/SIGTERM: stop accepting, close every session with reason `shutdown`, exit 0.
extension ProxyDaemon {
    /// Graceful shutdown: stop accepting, close sessions with reason `shutdown` (answering waiting
    /// reads), let queued input reach targets, then stop within `shutdown-timeout`.
    public func shutdown() {
        guard shutdownTimer == nil else { return }
        if let out = upgradeOut, out.phase == .starting { abortUpgrade("the daemon is shutting down") }
        shutdownStarted = loop.now
        server.stopAccepting()
        table.closeAll(reason: .shutdown)
        server.closeIdleConnections()
        demo?.stop()
        guard let timer = try? LoopTimer(loop: loop) else { return stopNow() }
        shutdownTimer = timer
        timer.onFire = { [unowned self] in
            let waited = self.loop.now - self.shutdownStarted
            if (self.server.connectionCount == 0 && self.table.draining == 0) || waited >= ProxyConfig.ms(self.config.shutdownTimeout) {
                self.stopNow()
            }
        }
        timer.start(after: 10, repeat: 20)
    }

    func stopNow() {
        shutdownTimer?.close()
        drainTimer?.close()
        server.closeAll()
        for w in signals { w.close() }
        signals.removeAll()
        lag.close()
        loop.stop()
    }

    func finish() {
        loop.close()
        logger.notice("uvproxyd stopped")
    }
}
