import Foundation
import XCTest
@testable import UVProxy

/// Lifetimes (regressions found in review): an event stream whose client connection fails while the stream writes.
final class IntegrationSSELifetimeTests: XCTestCase {

    private func sessionState(_ d: TestDaemon, _ id: String)
        throws -> (streams: Int, delivered: UInt64, hasWaiter: Bool) {
        try d.onLoop { daemon in
            let s = daemon.table.allSessions.first { "\($0.id)" == id }!
            return (daemon.api.eventStreams, s.delivered, s.hasObservers)
        }
    }

    /// The client resets its connection right after sending the request: the response head's
    /// write fails and closes the connection inside `startStream`. No stream may be left behind:
    /// before the fix the gauge stayed at 1 for good, the session's bytes counted as delivered
    /// and acknowledged although nothing was sent, and the session kept the stream as its
    /// waiter with a dangling `unowned(unsafe)` connection (use after free on its next waiter).
    func testStreamWhoseHeadWriteFailsLeavesNoStreamBehind() throws {
        let (_, d, c, id, target) = try sessionOnTestUpstream()
        try target.send("hello")
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 5), Array("hello".utf8))
        _ = try c.request("GET", "/sessions/\(id)?since=0")  // delivered = 5, then rewind:
        _ = try c.request("GET", "/sessions/\(id)?since=0&max=1")  // delivered = 1
        let client = try TestSocket.connect(port: d.listenPort)
        _ = try c.request("GET", "/healthz")  // the daemon has accepted `client` by now
        // With the loop blocked, the request and the reset arrive together: the loop reads the
        // request first, and the head's write then fails (EPIPE/ECONNRESET).
        try d.onLoop { _ in
            try client.send("GET /sessions/\(id)/events HTTP/1.1\r\nHost: x\r\n\r\n")
            client.abort()
            usleep(50_000)
        }
        _ = try c.request("GET", "/healthz")
        let state = try sessionState(d, id)
        XCTAssertEqual(state.streams, 0, "uvproxyd_event_streams counts a stream that never was")
        XCTAssertEqual(state.delivered, 1, "bytes never sent counted as delivered")
        XCTAssertFalse(state.hasWaiter, "the session keeps a stream whose connection is gone")
        // The next waiter replaces the leftover stream, which ends its (freed) connection.
        let poll = try c.request("GET", "/sessions/\(id)?since=5&wait=0.2")
        XCTAssertEqual(poll.status, 200)
    }

    /// The client resets while the stream is waiting; then, in the same loop iteration, more
    /// than one event's worth (32 KiB) arrives from the target before the reset is read. The
    /// first event's write fails and closes the connection (detach); before the fix `pump`
    /// went on looping on a detached stream whose `write` returns without moving the cursor:
    /// the loop spun forever and the daemon stopped answering anyone.
    func testClientResetDuringAMultiEventPumpDoesNotHangTheLoop() throws {
        let (_, d, c, id, target) = try sessionOnTestUpstream()
        let s = try SSETestClient(port: d.listenPort, path: "/sessions/\(id)/events")
        XCTAssertEqual(s.status, 200)
        _ = try c.request("GET", "/healthz")
        try d.onLoop { _ in
            try target.send(pattern(0..<60_000))  // upstream readable first ...
            usleep(20_000)
            s.socket.abort()                       // ... then the client's reset
            usleep(50_000)
        }
        let probe = try HTTPTestClient(port: d.listenPort, timeout: 5)
        let health = try probe.request("GET", "/healthz")
        XCTAssertEqual(health.status, 200, "the loop must still answer")
        let state = try sessionState(d, id)
        XCTAssertEqual(state.streams, 0)
        XCTAssertFalse(state.hasWaiter)
    }

    /// Re-entrancy: a new stream replaces a held long-poll; answering it runs that client's
    /// pipelined DELETE of the same session, which closes the session and wakes the new stream
    /// again while it is still inside `setWaiter`. The stream must end once, with its close event.
    func testStreamReplacingALongPollWhosePipelinedDeleteClosesTheSession() throws {
        let (_, d, c, id, _) = try sessionOnTestUpstream()
        let poller = try d.client()
        try poller.send("GET", "/sessions/\(id)?since=0&wait=10")
        try poller.send("DELETE", "/sessions/\(id)")
        _ = c
        // Another connection's request proves nothing about the order: wait for the hold itself.
        let deadline = Date().addingTimeInterval(10)
        while try d.onLoop({ $0.api.longPolls }) != 1, Date() < deadline { usleep(1_000) }
        XCTAssertEqual(try d.onLoop { $0.api.longPolls }, 1)
        let s = try SSETestClient(port: d.listenPort, path: "/sessions/\(id)/events")
        XCTAssertEqual(s.status, 200)
        XCTAssertEqual(try poller.readResponse().status, 200, "the long-poll is answered (replaced)")
        XCTAssertEqual(try poller.readResponse().status, 204, "then its pipelined DELETE runs")
        let close = try XCTUnwrap(s.next())
        XCTAssertEqual(close.event, "close")
        XCTAssertTrue(close.data.contains("deleted"), close.data)
        XCTAssertNil(try s.next())
        XCTAssertEqual(try d.onLoop { $0.api.eventStreams }, 0)
        XCTAssertEqual(try d.onLoop { $0.api.longPolls }, 0)
    }
}
