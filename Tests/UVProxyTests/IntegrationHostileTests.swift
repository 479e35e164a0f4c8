import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import UVProxy

/// Counts how deeply request handling nests: 1 means no client's request ever runs inside the
/// handling of another's.
final class NestingHandler: HTTPHandler {
    let inner: HTTPHandler
    var depth = 0
    var maxDepth = 0
    var handled = 0
    init(_ inner: HTTPHandler) { self.inner = inner }
    func handle(_ request: HTTPRequest, on connection: HTTPConnection) {
        depth += 1
        handled += 1
        maxDepth = max(maxDepth, depth)
        inner.handle(request, on: connection)
        depth -= 1
    }
    func heldRequestTimedOut(on connection: HTTPConnection) { inner.heldRequestTimedOut(on: connection) }
    func connectionWillClose(_ connection: HTTPConnection) { inner.connectionWillClose(connection) }
    func connectionDidDrain(_ connection: HTTPConnection) { inner.connectionDidDrain(connection) }
}

/// Issue 9: clients and targets that misbehave on purpose.
final class IntegrationHostileTests: XCTestCase {
    /// Point 5: superseding a held long-poll answers it, and that connection's next pipelined
    /// request supersedes a waiter on another connection, and so on. Each link of the chain must
    /// run from the loop's turn queue, not nested inside the previous one.
    func testSupersedeChainAcrossConnectionsDoesNotNest() throws {
        let n = 60
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)"; $0.maxSessions = n + 10 }
        let c = try d.client()
        let ids = try (0...n).map { _ in try c.createSession() }
        let nesting = try d.onLoop { daemon -> NestingHandler in
            let h = NestingHandler(daemon.api)
            daemon.server.handler = h
            return h
        }
        var sockets: [TestSocket] = []
        for i in 0..<n {
            let s = try TestSocket.connect(port: d.listenPort)
            try s.send("GET /sessions/\(ids[i])?since=0&wait=30 HTTP/1.1\r\nHost: localhost\r\n\r\n"
                       + "GET /sessions/\(ids[i + 1])?since=0&wait=30 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            sockets.append(s)
            // Each first request must be held before the next connection's (readiness: the gauge).
            try waitUntil("long-poll \(i) held") { try d.onLoop { $0.api.longPolls } == i + 1 }
        }
        try d.onLoop { _ in nesting.maxDepth = 0; nesting.handled = 0 }
        // The trigger: a newer read of session 0 answers connection 0, whose second request
        // supersedes connection 1's wait, … down the whole chain.
        let trigger = try TestSocket.connect(port: d.listenPort)
        try trigger.send("GET /sessions/\(ids[0])?since=0&wait=30 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        // Every connection's first read is answered (superseded: an empty body); each second
        // read now holds its session's wait slot.
        for i in 0..<n {
            let r = try HTTPTestClient(socket: sockets[i]).readResponse()
            XCTAssertEqual(r.status, 200, "connection \(i)")
            XCTAssertEqual(r.body, [], "connection \(i): superseded with an empty body")
        }
        try waitUntil("the chain's second reads held") { try d.onLoop { $0.api.longPolls } == n + 1 }
        let depth = try d.onLoop { _ in nesting.maxDepth }
        XCTAssertEqual(depth, 1, "requests of other connections ran nested inside one another")
        XCTAssertEqual(try d.onLoop { _ in nesting.handled }, n + 1, "the trigger and each second read")
    }
}

extension XCTestCase {
    /// Polls `condition` (a readiness signal of the daemon's own) until it holds, for 10 s.
    func waitUntil(_ what: String, timeout: TimeInterval = 10, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !(try condition()) {
            guard Date() < deadline else { throw TestError("timed out waiting for: \(what)") }
            usleep(2_000)
        }
    }
}
