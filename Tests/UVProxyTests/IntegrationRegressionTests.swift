import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import UVProxy

/// Bugs a review found, each pinned by the scenario that showed it.
final class IntegrationRegressionTests: XCTestCase {
    /// A DELETE pipelined behind a held read runs while the session is being closed; the
    /// session counters must stay consistent and /metrics must keep working.
    func testPipelinedDeleteBehindHeldReadKeepsCountersConsistent() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let id = try c.createSession()
        let held = try d.client()
        try held.send("GET", "/sessions/\(id)?since=0&wait=10")
        try held.send("DELETE", "/sessions/\(id)")
        XCTAssertFalse(held.socket.isReadable(within: 0.3), "the read is held")
        try up.connection(0).close()
        let read = try held.readResponse()
        XCTAssertEqual(read.status, 200)
        XCTAssertEqual(read.header("X-Session-State"), "closed")
        XCTAssertEqual(try held.readResponse().status, 204)
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)").status, 404)
        XCTAssertEqual(try c.metric("uvproxyd_sessions{state=\"closed\"}"), 0)
        XCTAssertEqual(try c.metric("uvproxyd_sessions{state=\"open\"}"), 0)
    }

    /// A response on a connection that closes after it (HTTP/1.0, Connection: close) is
    /// delivered whole, however long it takes the client to read it.
    func testLargeResponseOnClosingConnectionIsDeliveredWhole() throws {
        let size = 4 << 20
        let (_, d, c, id, target) = try sessionOnTestUpstream { $0.bufferSize = size }
        let bytes = pattern(0..<size)
        try target.send(bytes)
        _ = try c.readBytes(id, from: 0, count: 1)  // arrival has begun
        // Wait until all of it is buffered, then read it in one HTTP/1.0 response.
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, try c.call("GET", "/sessions/\(id)?since=0&max=1").header("X-Session-State") == "open",
              (try c.metric("uvproxyd_upstream_received_bytes_total") ?? 0) < Double(size) {
            usleep(20_000)
        }
        let s = try TestSocket.connect(port: d.listenPort)
        try s.send("GET /sessions/\(id)?since=0 HTTP/1.0\r\n\r\n")
        usleep(300_000)  // a slow reader: the proxy must not cut the response off meanwhile
        let raw = try s.receiveAll()
        let head = raw.firstRange(of: [13, 10, 13, 10])!.upperBound
        XCTAssertEqual(raw.count - head, size, "every byte of the response arrived")
        XCTAssertNil(firstMismatch(Array(raw[head...]), bytes))
    }

    /// Input accepted with 204 reaches the target after DELETE even when the target is
    /// flooding output the proxy no longer reads (a reset would throw the input away).
    func testDeleteDeliversInputWhileTargetFloods() throws {
        let (_, _, c, id, target) = try sessionOnTestUpstream { $0.bufferSize = 65536 }
        // Fill the proxy's buffer (it stops reading) and the kernel buffers behind it.
        let flood = [UInt8](repeating: 65, count: 64 * 1024)
        target.setTimeout(0.2)
        for _ in 0..<64 { if (try? target.send(flood)) == nil { break } }
        target.setTimeout(10)
        let input = pattern(0..<50_000)
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?raw=1", body: input).status, 204)
        XCTAssertEqual(try c.call("DELETE", "/sessions/\(id)").status, 204)
        let got = try target.receiveAll()
        XCTAssertEqual(got.count, input.count, "all accepted input arrived, then EOF")
        XCTAssertNil(firstMismatch(got, input))
    }

    /// Values that would overflow deadline arithmetic are refused with a one-line error.
    func testHugeDurationsAreRefused() {
        for configure: (inout ProxyConfig) -> Void in [{ $0.linger = 1e17 }, { $0.idleTimeout = 1e300 },
                                                       { $0.maxSessions = Int.max }] {
            var config = ProxyConfig()
            configure(&config)
            XCTAssertThrowsError(try config.validate())
        }
    }
}
