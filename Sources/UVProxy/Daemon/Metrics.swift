import Logging
#if canImport(Glibc)
import Glibc
#endif

/// `GET /metrics`: the counts kept on the loop, copied into the registry at each scrape.
extension ProxyDaemon {
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
        metrics.count("uvproxyd_send_timeouts_total", total: server.metrics.sendTimeouts)
        metrics.count("uvproxyd_upstream_received_bytes_total", total: c.upstreamReceivedBytes)
        metrics.count("uvproxyd_upstream_sent_bytes_total", total: c.upstreamSentBytes)
        for (code, n) in server.metrics.statusCounts.enumerated() where n > 0 {
            metrics.count("uvproxyd_http_requests_total", [("code", String(code))], total: n)
        }
        metrics.gauge("uvproxyd_http_connections", server.connectionCount)
        metrics.gauge("uvproxyd_long_polls", api.longPolls)
        metrics.gauge("uvproxyd_event_streams", api.eventStreams)
        metrics.gauge("uvproxyd_websockets", api.webSockets)
        metrics.gauge("uvproxyd_buffered_bytes", max(table.bufferedBytes, 0))
        let recent = lag.takeRecent()
        metrics.gauge("uvproxyd_loop_lag_seconds", seconds: recent.longest)
        metrics.gauge("uvproxyd_loop_lag_end_seconds", seconds: recent.end)
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
}
