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
    /// Seconds per request, as a swift-metrics aggregating recorder (a Prometheus histogram).
    /// The handler itself is kept: `Recorder.record` is generic over the value's type and, called
    /// from another module, looks up generic metadata on every call (~360 instructions,
    /// callgrind); a `Double` histogram also sorts into buckets faster than a `Duration` one.
    let requestDuration: any RecorderHandler
    /// Counters by name and labels, with the total already reported.
    private var counters: [String: (counter: CoreMetrics.Counter, reported: UInt64)] = [:]
    private var gauges: [String: CoreMetrics.Gauge] = [:]

    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        // From a poll answered at once (~10 µs) to a long-poll held for a minute.
        factory.valueHistogramBuckets[ProxyMetrics.requestDurationName] = [
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
            1, 5, 15, 30, 60,
        ]
        self.factory = factory
        requestDuration = factory.makeRecorder(label: ProxyMetrics.requestDurationName, dimensions: [], aggregate: true)
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

    /// A gauge in seconds, from nanoseconds.
    func gauge(_ name: String, seconds nanoseconds: UInt64) {
        let gauge = gauges[name] ?? CoreMetrics.Gauge(label: name, dimensions: [], factory: factory)
        gauges[name] = gauge
        gauge.record(Double(nanoseconds) / 1e9)
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
