import XCTest
@testable import UVProxy

/// The request-latency histogram kept as integers (`LatencyHistogram`): Prometheus semantics.
final class LatencyHistogramTests: XCTestCase {
    func testBucketsAreCumulativeAndABoundHoldsItsOwnValue() {
        let h = LatencyHistogram(name: "t", bounds: [0.001, 0.01, 1])
        for ns: UInt64 in [0, 1_000_000, 1_000_001, 10_000_000, 2_000_000_000] { h.record(nanoseconds: ns) }
        var out: [UInt8] = []
        h.render(into: &out)
        XCTAssertEqual(String(decoding: out, as: UTF8.self), """
            # TYPE t histogram
            t_bucket{le="0.001"} 2
            t_bucket{le="0.01"} 4
            t_bucket{le="1.0"} 4
            t_bucket{le="+Inf"} 5
            t_sum 2.012000001
            t_count 5

            """)
    }
}
