import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Session events and failures the daemon logs.
extension ProxyDaemon {
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

    public func sendsTimedOut(count: UInt64, client: SocketAddress?) {
        logger.notice("send-timeout: \(count) client connection\(count == 1 ? "" : "s") closed since the last notice, the client taking nothing it was owed", metadata: [
            "count": "\(count)", "client": "\(client?.description ?? "-")",
        ])
    }

    public func proxyHeadersRejected(count: UInt64, peer: SocketAddress?, reason: String) {
        logger.warning("PROXY header missing or invalid: \(count) connection\(count == 1 ? "" : "s") closed since the last warning", metadata: [
            "count": "\(count)", "peer": "\(peer?.description ?? "-")", "reason": "\(reason)",
        ])
    }
}
