import Foundation
import XCTest
@testable import UVProxy

/// `uvproxyd_loop_lag_seconds`: the loop's longest turn, measured without waking the loop.
final class IntegrationLoopLagTests: XCTestCase {

    func testABlockingCallbackShowsUpInTheLoopLag() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        // Both gauges exist from the first scrape, and a loop doing nothing much stays well under 100 ms.
        let idle = try XCTUnwrap(c.metric("uvproxyd_loop_lag_seconds"))
        XCTAssertLessThan(idle, 0.1)
        XCTAssertNotNil(try c.metric("uvproxyd_loop_lag_max_seconds"))

        // A callback that holds the loop for 200 ms.
        try d.onLoop { _ in usleep(200_000) }
        let recent = try XCTUnwrap(c.metric("uvproxyd_loop_lag_seconds"))
        XCTAssertGreaterThanOrEqual(recent, 0.2, "the stall is seen")
        XCTAssertLessThan(recent, 2, "and measured, not the time since start")
        // The recent gauge restarts at each scrape; the max keeps the worst since start.
        XCTAssertLessThan(try XCTUnwrap(c.metric("uvproxyd_loop_lag_seconds")), 0.2)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(c.metric("uvproxyd_loop_lag_max_seconds")), 0.2)
    }

    /// When the period's longest turn ended (`uvproxyd_loop_lag_end_seconds`, the host's
    /// CLOCK_MONOTONIC), so that a stall can be set against other measurements of the host:
    /// scripts/soak sets it against the daemon's waits for a CPU.
    func testTheLongestTurnsEndIsExported() throws {
        let d = try startDaemon()
        let c = try d.client()
        _ = try c.metric("uvproxyd_loop_lag_seconds")
        let before = monotonicSeconds()
        try d.onLoop { _ in usleep(150_000) }
        let text = try c.request("GET", "/metrics").text
        let after = monotonicSeconds()
        func value(_ name: String) -> Double? {
            text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.dropFirst(name.count + 1)) }
        }
        let lag = try XCTUnwrap(value("uvproxyd_loop_lag_seconds"))
        let end = try XCTUnwrap(value("uvproxyd_loop_lag_end_seconds"), "the end of the longest turn is exported")
        XCTAssertGreaterThanOrEqual(lag, 0.15)
        XCTAssertGreaterThanOrEqual(end, before + 0.15, "it ended after the stall began and lasted")
        XCTAssertLessThanOrEqual(end, after, "and before the scrape's answer came")
    }

    private func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    func testTimeAsleepInThePollIsNotLag() throws {
        let d = try startDaemon()
        let c = try d.client()
        _ = try c.metric("uvproxyd_loop_lag_seconds")
        // The loop sleeps in its poll between these scrapes: sleeping is not a stall.
        Thread.sleep(forTimeInterval: 0.3)
        XCTAssertLessThan(try XCTUnwrap(c.metric("uvproxyd_loop_lag_seconds")), 0.25)
        XCTAssertLessThan(try XCTUnwrap(c.metric("uvproxyd_loop_lag_max_seconds")), 0.25)
    }

    func testTheMonitorDoesNotKeepTheLoopRunning() throws {
        let loop = try EventLoop()
        let monitor = try LoopLagMonitor(loop: loop)
        let timer = try LoopTimer(loop: loop)
        var fired = 0
        timer.onFire = { fired += 1; if fired == 3 { timer.close() } }
        timer.start(after: 5, repeat: 5)
        loop.run()  // returns once the timer is closed: the monitor holds no reference
        XCTAssertEqual(fired, 3)
        XCTAssertGreaterThanOrEqual(monitor.turns, 2)
        XCTAssertLessThan(monitor.overallMax, 50_000_000, "three 5 ms sleeps are not stalls")
        monitor.close()
        loop.close()
    }
}
