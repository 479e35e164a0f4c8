import CoreMetrics
import Prometheus

/// `GET /metrics`: swift-metrics' API with swift-prometheus as the backend, on a registry of
/// this daemon's own (no global bootstrap, so several daemons can share a process in tests).
///
/// Request latency is recorded per request through a swift-metrics `Timer`. Counts the loop
/// keeps anyway (sessions, bytes, status codes, close reasons) stay plain integers on the hot
/// path and are copied into swift-metrics counters and gauges when `/metrics` is scraped (the
/// collector pattern), so a poll pays no atomic operation per counter.
final class ProxyMetrics {
    static let requestDurationName = "uvproxyd_http_request_duration_seconds"

    let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    let requestDuration: CoreMetrics.Timer
    /// Counters by name and labels, with the total already reported.
    private var counters: [String: (counter: CoreMetrics.Counter, reported: UInt64)] = [:]
    private var gauges: [String: CoreMetrics.Gauge] = [:]

    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        // From a poll answered at once (~10 µs) to a long-poll held for a minute.
        factory.durationHistogramBuckets[ProxyMetrics.requestDurationName] = [
            .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500),
            .milliseconds(1), .milliseconds(2.5), .milliseconds(5), .milliseconds(10), .milliseconds(25),
            .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
            .seconds(1), .seconds(5), .seconds(15), .seconds(30), .seconds(60),
        ]
        self.factory = factory
        requestDuration = Timer(label: ProxyMetrics.requestDurationName, dimensions: [], factory: factory)
    }

    /// Brings a counter up to `total` (a monotonic count kept elsewhere).
    func count(_ name: String, _ labels: [(String, String)] = [], total: UInt64) {
        let key = ProxyMetrics.key(name, labels)
        let entry = counters[key] ?? (CoreMetrics.Counter(label: name, dimensions: labels, factory: factory), 0)
        if total > entry.reported { entry.counter.increment(by: Int64(total - entry.reported)) }
        counters[key] = (entry.counter, max(total, entry.reported))
    }

    func gauge(_ name: String, _ value: Int) { gauge(name, [], value) }

    func gauge(_ name: String, _ labels: [(String, String)], _ value: Int) {
        let key = ProxyMetrics.key(name, labels)
        let gauge = gauges[key] ?? CoreMetrics.Gauge(label: name, dimensions: labels, factory: factory)
        gauges[key] = gauge
        gauge.record(value)
    }

    /// The Prometheus text exposition of everything recorded.
    func render() -> [UInt8] {
        var out: [UInt8] = []
        registry.emit(into: &out)
        return out
    }

    private static func key(_ name: String, _ labels: [(String, String)]) -> String {
        labels.reduce(name) { $0 + "," + $1.0 + "=" + $1.1 }
    }
}
