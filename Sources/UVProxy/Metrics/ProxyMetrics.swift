import CoreMetrics
import Prometheus

/// `GET /metrics`: swift-metrics' API with swift-prometheus as the backend, on a registry of
/// this daemon's own (no global bootstrap, so several daemons can share a process in tests).
///
/// Request latency is recorded per request into `LatencyHistogram`, rendered with the rest. Counts the loop
/// keeps anyway (sessions, bytes, status codes, close reasons) stay plain integers on the hot
/// path and are copied into swift-metrics counters and gauges when `/metrics` is scraped (the
/// collector pattern), so a poll pays no atomic operation per counter.
final class ProxyMetrics {
    static let requestDurationName = "uvproxyd_http_request_duration_seconds"

    let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    /// Seconds per request. Not a swift-prometheus histogram: that one takes a lock and calls a
    /// closure on every record (~340 instructions per poll, callgrind, 3% of a poll's user-space
    /// work), where this one compares a few integers (see `LatencyHistogram`).
    let requestDuration = LatencyHistogram(name: ProxyMetrics.requestDurationName, bounds: [
        // From a poll answered at once (~10 µs) to a long-poll held for a minute.
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1, 5, 15, 30, 60,
    ])
    /// Counters by name and labels, with the total already reported.
    private var counters: [String: (counter: CoreMetrics.Counter, reported: UInt64)] = [:]
    private var gauges: [String: CoreMetrics.Gauge] = [:]

    init() {
        factory = PrometheusMetricsFactory(registry: registry)
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
        requestDuration.render(into: &out)
        return out
    }

    private static func key(_ name: String, _ labels: [(String, String)]) -> String {
        labels.reduce(name) { $0 + "," + $1.0 + "=" + $1.1 }
    }
}

/// A Prometheus histogram kept as plain integers on the loop thread: `record` finds the bucket
/// by comparing nanoseconds with each bound in turn (a poll lands in the first one or two) and
/// adds one; `render` writes the text exposition (cumulative buckets, `_sum`, `_count`).
final class LatencyHistogram {
    let name: String
    private let boundsText: [String]
    private let bounds: UnsafeMutablePointer<UInt64>
    private let counts: UnsafeMutablePointer<UInt64>
    private let boundCount: Int
    private(set) var count: UInt64 = 0
    private var sumNanoseconds: UInt64 = 0

    init(name: String, bounds seconds: [Double]) {
        self.name = name
        boundCount = seconds.count
        boundsText = seconds.map { "\($0)" } + ["+Inf"]
        bounds = .allocate(capacity: boundCount)
        counts = .allocate(capacity: boundCount + 1)
        for (i, s) in seconds.enumerated() { bounds[i] = UInt64((s * 1e9).rounded()) }
        counts.initialize(repeating: 0, count: boundCount + 1)
    }

    deinit {
        bounds.deallocate()
        counts.deallocate()
    }

    @inline(__always) func record(nanoseconds: UInt64) {
        var i = 0
        while i < boundCount, nanoseconds > bounds[i] { i &+= 1 }  // `le`: a bound holds values up to it
        counts[i] &+= 1
        count &+= 1
        sumNanoseconds &+= nanoseconds
    }

    func render(into out: inout [UInt8]) {
        var text = "# TYPE \(name) histogram\n"
        var cumulative: UInt64 = 0
        for i in 0...boundCount {
            cumulative += counts[i]
            text += "\(name)_bucket{le=\"\(boundsText[i])\"} \(cumulative)\n"
        }
        text += "\(name)_sum \(Double(sumNanoseconds) / 1e9)\n\(name)_count \(count)\n"
        out.append(contentsOf: text.utf8)
    }
}
