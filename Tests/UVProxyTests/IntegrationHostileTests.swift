import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import UVProxy
import CUV

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

/// Bytes the process has allocated with malloc (small blocks and mmapped large ones): the
/// daemon runs in the test process, so its growth is what a hostile peer made it hold.
func heapInUse() -> Int {
    let info = mallinfo2()  // through CUV: Glibc does not export malloc.h
    return Int(info.uordblks) + Int(info.hblkhd)
}

/// Counts occurrences of a marker (a status line's start) in a byte stream, across reads.
final class MarkerCounter {
    private let marker: [UInt8]
    private var tail: [UInt8] = []
    private(set) var count = 0

    init(_ marker: String) { self.marker = Array(marker.utf8) }

    func feed(_ chunk: [UInt8]) {
        let bytes = tail + chunk
        var i = bytes.startIndex
        while let r = bytes[i...].firstRange(of: marker) {
            count += 1
            i = r.upperBound
        }
        // Keep what could be the start of a marker cut by the read, never a counted one.
        tail = Array(bytes[max(i, bytes.count - (marker.count - 1))...])
    }
}

extension IntegrationHostileTests {
    /// Point 2: one connection that pipelines 400,000 requests and never reads holds about
    /// 1 MiB of responses, not one allocation per refused write (~14 MB per 100,000 before).
    func testPipelinerThatNeverReadsHoldsAboutOneMebibyte() throws {
        let d = try startDaemon()
        let one = Array("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8)
        var all: [UInt8] = []
        all.reserveCapacity(one.count * 400_000)  // past what the kernel's buffers take
        for _ in 0..<400_000 { all += one }
        let s = try TestSocket.connect(port: d.listenPort)
        s.setTimeout(1)
        let before = heapInUse()
        XCTAssertThrowsError(try s.send(all), "the proxy stops reading a client that does not read")
        let grown = heapInUse() - before
        print("measured: one never-reading pipeliner holds \(grown) bytes")
        XCTAssertLessThan(grown, 3 << 20, "held for one never-reading pipeliner: \(grown) bytes")
        let queued = try d.onLoop { $0.loop.sendQueueBytes }
        XCTAssertLessThan(queued, (1 << 20) + (128 << 10), "send queue capacity \(queued)")
        XCTAssertEqual(try d.client().request("GET", "/healthz").status, 200, "others are served")
        s.close()
        try waitUntil("the pipeliner's queue freed") { try d.onLoop { $0.loop.sendQueueBytes } == 0 }
    }

    /// Point 2: 150,000 one-byte inputs to a target that never reads cost what they hold, not a
    /// block and a write request each (~14 MB for 146 KiB before).
    func testManySmallInputsToATargetThatNeverReads() throws {
        // A target with a small receive buffer that never reads: the inputs wait in the proxy.
        let up = try TestUpstream(receiveBuffer: 4096)
        addTeardownBlock { up.stopListening(); up.closeAll() }
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let id = try d.client().createSession()
        let n = 150_000
        let one = Array("POST /sessions/\(id)/input?raw=1&cmd=x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n".utf8)
        var all: [UInt8] = []
        all.reserveCapacity(one.count * n)
        for _ in 0..<n { all += one }
        let s = try TestSocket.connect(port: d.listenPort)
        let counter = MarkerCounter("HTTP/1.1 ")
        let accepted = MarkerCounter("HTTP/1.1 204 ")
        let before = heapInUse()
        let payload = all
        let sender = Thread { try? s.send(payload) }
        sender.start()
        while counter.count < n {
            let chunk = try s.receive()
            guard !chunk.isEmpty else { break }
            counter.feed(chunk)
            accepted.feed(chunk)
        }
        let grown = heapInUse() - before
        print("measured: \(n) one-byte inputs to a target that never reads hold \(grown) bytes")
        XCTAssertEqual(counter.count, n, "every input answered")
        XCTAssertEqual(accepted.count, n, "1-byte inputs stay under the input limit")
        XCTAssertLessThan(grown, 3 << 20, "held for \(n) queued input bytes: \(grown) bytes")
    }

    /// A demo session (send-timeout 1 s) whose game has sent it 3 MiB, all buffered.
    private func floodedSession() throws -> (TestDaemon, HTTPTestClient, String) {
        let d = try startDaemon {
            $0.demo = true
            $0.bufferSize = 8 << 20
            $0.sendTimeout = 1
        }
        let c = try d.client()
        let id = try c.createSession()
        let size = 3 << 20
        XCTAssertEqual(try c.request("POST", "/sessions/\(id)/input", body: "flood \(size)").status, 204)
        try waitUntil("the flood buffered") {
            try d.onLoop { $0.table.allSessions.first?.ring.end ?? 0 } >= UInt64(size)
        }
        return (d, c, id)
    }

    /// Point 3: a response is sent in full however slowly it is read; only a client that takes
    /// nothing for `send-timeout` is cut off.
    func testSlowReaderGetsItsWholeResponseAndAStalledOneIsCutAfterSendTimeout() throws {
        let (d, c, id) = try floodedSession()
        try d.onLoop { $0.server.limits.keepAliveTimeoutMs = 300 }
        let end = try d.onLoop { Int($0.table.allSessions.first!.ring.end) }
        // Slow: about 600 KB/s through a small receive buffer, for ~5 s: far past keep-alive
        // (300 ms) and send-timeout (1 s), but always taking bytes.
        let slow = try TestSocket.connect(port: d.listenPort)
        var small: Int32 = 16 << 10
        setsockopt(slow.fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        try slow.send("GET /sessions/\(id)?since=0 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        var got = 0
        while true {
            let chunk = try slow.receive(max: 8 << 10)
            if chunk.isEmpty { break }
            got += chunk.count
            if got >= end { break }
            usleep(12_000)
        }
        XCTAssertGreaterThanOrEqual(got, end, "the slow reader got the whole response")

        // Stalled: reads the head, then nothing. Cut off after send-timeout, not before.
        slow.close()
        c.socket.close()
        try waitUntil("the other connections gone") { try d.onLoop { $0.server.connectionCount } == 0 }
        let stalled = try TestSocket.connect(port: d.listenPort)
        stalled.setTimeout(15)
        // From the request on: the stall may begin before this client, late on a loaded machine,
        // has read the head.
        let start = Date()
        try stalled.send("GET /sessions/\(id)?since=0 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        _ = try stalled.receive(max: 1024)
        try withExtendedLifetime(stalled) {  // it must stay open on our side (release builds)
            try waitUntil("the stalled connection closed", timeout: 10) {
                try d.onLoop { $0.server.connectionCount } == 0
            }
        }
        let took = Date().timeIntervalSince(start)
        XCTAssertGreaterThanOrEqual(took, 0.9, "not cut before send-timeout")
        XCTAssertLessThan(took, 4, "cut soon after send-timeout")
    }

    /// Point 3, the clock's resolution: a client that stops taking its response is cut off soon
    /// after `send-timeout`, whatever else times the connection: the first look came only with
    /// the 75 s keep-alive timeout (a plain response), the 15 s comment (SSE) or the 30 s ping
    /// (WebSocket), so a stalled client held its slot for up to 135 s (black-box probe).
    func testAStalledReaderIsCutSoonAfterSendTimeoutOnEveryKindOfResponse() throws {
        let (d, c, id) = try floodedSession()
        c.socket.close()
        let requests = [
            "GET /sessions/\(id)?since=0 HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "GET /sessions/\(id)/events?since=0 HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "GET /sessions/\(id)/ws?since=0 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: binary\r\n\r\n",
        ]
        for (kind, request) in zip(["a plain response", "an event stream", "a WebSocket"], requests) {
            try waitUntil("no connection left") { try d.onLoop { $0.server.connectionCount } == 0 }
            let stalled = try TestSocket.connect(port: d.listenPort)
            var small: Int32 = 16 << 10
            setsockopt(stalled.fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
            let start = Date()  // from the request: the stall may begin before a late client reads the head
            try stalled.send(request)
            _ = try stalled.receive(max: 1024)  // the head, then nothing
            try withExtendedLifetime(stalled) {
                try waitUntil("the stalled connection closed (\(kind))", timeout: 10) {
                    try d.onLoop { $0.server.connectionCount } == 0
                }
            }
            let took = Date().timeIntervalSince(start)
            XCTAssertGreaterThanOrEqual(took, 0.9, "not cut before send-timeout: \(kind)")
            XCTAssertLessThan(took, 4, "cut soon after send-timeout: \(kind)")  // it was 30 s and more
        }
        XCTAssertEqual(try d.client().metric("uvproxyd_send_timeouts_total"), 3, "each cut is counted")
    }

    /// Point 4: a telnet target that asks for the terminal type over and over and never reads
    /// the answers cannot grow the proxy (+76 MiB for 24 MiB sent before).
    func testTelnetTargetThatNegotiatesWithoutReading() throws {
        let (_, d, _, _, target) = try sessionOnTestUpstream { $0.telnet = true }
        try target.send([255, 253, 24])  // DO TTYPE
        let send: [UInt8] = [255, 250, 24, 1, 255, 240]
        var all: [UInt8] = []
        for _ in 0..<(4 << 20) / send.count { all += send }
        target.setTimeout(1)
        let before = heapInUse()
        var sent = 0
        for _ in 0..<6 {  // 24 MiB, until the proxy stops reading
            do { try target.send(all); sent += all.count } catch { break }
        }
        let grown = heapInUse() - before
        print("measured: a telnet target asking TTYPE without reading: \(sent) bytes sent, \(grown) bytes held")
        XCTAssertLessThan(sent, 24 << 20, "the proxy stopped reading the target")
        XCTAssertLessThan(grown, 4 << 20, "held for unread telnet replies: \(grown) bytes")
        XCTAssertEqual(try d.client().request("GET", "/healthz").status, 200)
    }

    /// Point 4: the demo game echoing into a session nobody reads obeys the same rule
    /// (+154 MiB for 50 posts before).
    func testDemoGameEchoIntoAnUnreadSession() throws {
        let d = try startDaemon { $0.demo = true }
        let c = try d.client()
        let id = try c.createSession()
        let command = String(repeating: "x", count: 4_000)  // the demo's longest line is 4 KiB
        let before = heapInUse()
        var codes: [Int: Int] = [:]
        var posted = 0
        // Up to 80 MB of echo: far past the kernel's socket buffers, until input is refused.
        while posted < 20_000, codes[503] == nil {
            codes[try c.request("POST", "/sessions/\(id)/input", body: command).status, default: 0] += 1
            posted += 1
        }
        let grown = heapInUse() - before
        print("measured: \(posted) echoed posts into an unread demo session hold \(grown) bytes")
        XCTAssertLessThan(grown, 8 << 20, "held for \(posted) echoed posts nobody reads: \(grown) bytes (\(codes))")
        XCTAssertNotNil(codes[503], "input is refused once the game stops reading (\(posted) posts)")
    }

    /// Point 6: a long-poll longer than the idle timeout touches the session until it ends.
    func testLongPollLongerThanIdleTimeoutKeepsTheSessionOpen() throws {
        let (_, _, c, id, _) = try sessionOnTestUpstream { $0.idleTimeout = 2 }
        let r = try c.request("GET", "/sessions/\(id)?since=0&wait=4")
        XCTAssertEqual(r.header("X-Session-State"), "open")
        usleep(500_000)  // a quarter of the idle timeout (room for a late client): still open
        let again = try c.request("GET", "/sessions/\(id)?since=0")
        XCTAssertEqual(again.header("X-Session-State"), "open", "closed right after the long-poll")
    }

    /// SPEC §5: past `max-connections` a connection gets 503 with Retry-After and is closed;
    /// once a slot frees up the next one is served.
    func testMaxConnections() throws {
        let d = try startDaemon { $0.maxConnections = 3 }
        let held = try (0..<3).map { _ in try d.client() }
        for c in held { XCTAssertEqual(try c.request("GET", "/healthz").status, 200) }
        let extra = try d.client()
        let r = try extra.readResponse()
        XCTAssertEqual(r.status, 503)
        XCTAssertNotNil(r.header("Retry-After"))
        XCTAssertTrue(extra.isClosedByServer())
        held[0].socket.close()
        try withExtendedLifetime(held) {  // release builds would close the other two early
            try waitUntil("a slot freed") { try d.onLoop { $0.server.connectionCount } == 2 }
            XCTAssertEqual(try d.client().request("GET", "/healthz").status, 200, "served again")
        }
    }

    /// Issue 9 point 2: the process-wide send budget. Over it, connections that already owe
    /// bytes get nothing more, and a client that owes nothing is still served.
    func testProcessSendBudget() throws {
        let d = try startDaemon()
        try d.onLoop { $0.loop.sendQueueBudget = 128 << 10 }
        let one = Array("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8)
        var all: [UInt8] = []
        for _ in 0..<300_000 { all += one }
        var pipeliners: [TestSocket] = []
        for _ in 0..<3 {
            let s = try TestSocket.connect(port: d.listenPort)
            s.setTimeout(1)
            XCTAssertThrowsError(try s.send(all))
            pipeliners.append(s)
        }
        try withExtendedLifetime(pipeliners) {
            let queued = try d.onLoop { $0.loop.sendQueueBytes }
            XCTAssertGreaterThan(queued, 128 << 10, "the pipeliners filled the budget")
            XCTAssertLessThan(queued, (128 << 10) + 3 * (64 << 10), "held over the budget: \(queued)")
            XCTAssertEqual(try d.client().request("GET", "/healthz").status, 200, "a client owing nothing is served")
        }
    }
}

extension IntegrationHostileTests {
    /// SPEC §5: past `max-sessions-per-client` open sessions of one address, a create is 429
    /// with Retry-After; the count falls as that address's sessions close.
    func testMaxSessionsPerClient() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)"; $0.maxSessionsPerClient = 2 }
        let c = try d.client()
        let first = try c.createSession()
        _ = try c.createSession()
        let r = try c.request("POST", "/sessions")
        XCTAssertEqual(r.status, 429)
        XCTAssertNotNil(r.header("Retry-After"))
        XCTAssertEqual(try c.request("POST", "/mud").status, 429, "the seed endpoint counts too")
        XCTAssertEqual(try c.request("DELETE", "/sessions/\(first)").status, 204)
        XCTAssertEqual(try c.request("POST", "/sessions").status, 201, "a closed session frees its slot")
        // A session the target closes frees its slot as well.
        try up.connection(2).close()
        try waitUntil("the target's close seen") { try d.onLoop { $0.table.openCount } == 1 }
        XCTAssertEqual(try c.request("POST", "/sessions").status, 201)
    }
}

/// Records how many requests each connection had answered in each loop turn.
final class TurnShareHandler: HTTPHandler {
    let inner: HTTPHandler
    let turns: TurnQueue
    var perTurn: [ObjectIdentifier: (turn: UInt64, count: Int)] = [:]
    var maxPerTurn = 0
    var handled = 0
    init(_ inner: HTTPHandler, turns: TurnQueue) { self.inner = inner; self.turns = turns }
    func handle(_ request: HTTPRequest, on connection: HTTPConnection) {
        let key = ObjectIdentifier(connection)
        var entry = perTurn[key] ?? (turns.drains, 0)
        if entry.turn != turns.drains { entry = (turns.drains, 0) }
        entry.count += 1
        perTurn[key] = entry
        maxPerTurn = max(maxPerTurn, entry.count)
        handled += 1
        inner.handle(request, on: connection)
    }
    func heldRequestTimedOut(on connection: HTTPConnection) { inner.heldRequestTimedOut(on: connection) }
    func connectionWillClose(_ connection: HTTPConnection) { inner.connectionWillClose(connection) }
    func connectionDidDrain(_ connection: HTTPConnection) { inner.connectionDidDrain(connection) }
}

extension IntegrationHostileTests {
    /// A client that pipelines thousands of requests gets a share per loop turn, so one client
    /// cannot stall the loop (the soak saw 100+ ms turns from never-readers' 64 KiB reads).
    func testPipelinedRequestsAreAnsweredAShareAtATime() throws {
        let d = try startDaemon()
        let share = try d.onLoop { daemon -> TurnShareHandler in
            let h = TurnShareHandler(daemon.api, turns: daemon.loop.turns)
            daemon.server.handler = h
            return h
        }
        let n = 3_000
        let s = try TestSocket.connect(port: d.listenPort)
        try s.send(String(repeating: "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", count: n))
        let counter = MarkerCounter("HTTP/1.1 200 ")
        while counter.count < n {
            let chunk = try s.receive()
            guard !chunk.isEmpty else { break }
            counter.feed(chunk)
        }
        XCTAssertEqual(counter.count, n, "every pipelined request answered, in one connection")
        let most = try d.onLoop { _ in share.maxPerTurn }
        XCTAssertLessThanOrEqual(most, HTTPConnection.requestsPerTurn, "requests of one connection in one turn")
    }
}
