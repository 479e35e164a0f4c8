import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import UVProxy

/// The byte stream (SPEC §1) and long-polls (SPEC §2, Read) end to end.
final class IntegrationStreamTests: XCTestCase {

    /// Reads the demo greeting (one write, ends with the command list) and returns its length.
    private func greetingLength(_ c: HTTPTestClient, _ id: String) throws -> Int {
        var text: [UInt8] = []
        let end = Array("Anything else is echoed.\r\n".utf8)
        while text.firstRange(of: end) == nil {
            let r = try c.request("GET", "/sessions/\(id)?since=\(text.count)&wait=5")
            guard r.status == 200, !r.body.isEmpty else { throw TestError("no greeting: \(r.status) \(r.text)") }
            text += r.body
        }
        return text.firstRange(of: end)!.upperBound
    }

    /// Reads `count` bytes from `start` with explicit cursors, checking each against `expected(i)`
    /// (i counted from `start`), repeating some reads to check that a repeat returns the same bytes.
    private func readExactly(_ c: HTTPTestClient, _ id: String, from start: Int, count: Int, bufferSize: Int,
                             cursorless: Bool = false, max: ((Int) -> Int)? = nil,
                             expected: (Int) -> UInt8) throws {
        var cursor = start
        var reads = 0
        var repeats = 0
        let deadline = Date().addingTimeInterval(60)
        while cursor < start + count {
            guard Date() < deadline else { return XCTFail("stuck at offset \(cursor)") }
            let limit = max.map { "&max=\($0(reads))" } ?? ""
            let r = try c.request("GET", "/sessions/\(id)?\(cursorless ? "" : "since=\(cursor)&")wait=5\(limit)")
            XCTAssertEqual(r.status, 200, r.text)
            XCTAssertEqual(r.header("X-Offset"), "\(cursor)")
            XCTAssertEqual(r.header("X-Next-Offset"), "\(cursor + r.body.count)")
            XCTAssertEqual(r.header("X-Session-State"), "open")
            XCTAssertLessThanOrEqual(r.body.count, bufferSize, "never more than buffer-size unacknowledged")
            XCTAssertLessThanOrEqual(cursor + r.body.count, start + count, "more bytes than were sent")
            for (k, byte) in r.body.enumerated() where byte != expected(cursor - start + k) {
                return XCTFail("byte \(cursor - start + k) of the stream is \(byte), not \(expected(cursor - start + k))")
            }
            reads += 1
            if !cursorless && reads % 3 == 0 && !r.body.isEmpty {
                // The response was "lost": the same cursor gives the same bytes again.
                let again = try c.request("GET", "/sessions/\(id)?since=\(cursor)&max=\(r.body.count)")
                XCTAssertEqual(again.status, 200)
                XCTAssertEqual(again.header("X-Offset"), "\(cursor)")
                XCTAssertTrue(again.body == r.body, "a repeated read at \(cursor) returned different bytes")
                repeats += 1
            }
            cursor += r.body.count
        }
        XCTAssertTrue(cursorless || repeats > 0)
        XCTAssertGreaterThanOrEqual(reads, count / bufferSize, "backpressure split the stream into several reads")
        // Nothing after the end: an empty long-poll.
        let tail = try c.request("GET", "/sessions/\(id)?since=\(cursor)&wait=0.3")
        XCTAssertEqual(tail.status, 200)
        XCTAssertEqual(tail.body.count, 0, "bytes beyond the end of the flood")
    }

    func testDemoFloodOfTenBuffersArrivesByteExact() throws {
        let bufferSize = 65536
        let floodSize = 10 * bufferSize
        let (c, id, start) = try demoSession(bufferSize: bufferSize)
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?cmd=flood%20\(floodSize)").status, 204)
        let p = DemoGame.floodPattern
        try readExactly(c, id, from: start, count: floodSize, bufferSize: bufferSize) { p[$0 % 64] }
        // The game is still there after the flood.
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?cmd=ping").status, 204)
        let echo = try c.readBytes(id, from: start + floodSize, count: 12)
        XCTAssertEqual(String(decoding: echo, as: UTF8.self), "echo: ping\r\n")
    }

    func testUpstreamFloodOfTenBuffersArrivesByteExact() throws {
        let bufferSize = 65536
        let floodSize = 10 * bufferSize
        let (_, _, c, id, target) = try sessionOnTestUpstream { $0.bufferSize = bufferSize }
        target.setTimeout(60)
        let sent = DispatchSemaphore(value: 0)
        Thread {
            do { try target.send(pattern(0..<floodSize)) } catch { XCTFail("target send: \(error)") }
            sent.signal()
        }.start()
        try readExactly(c, id, from: 0, count: floodSize, bufferSize: bufferSize, expected: patternByte)
        XCTAssertEqual(sent.wait(timeout: .now() + 10), .success)
    }

    func testCursorlessReadsOfADemoFloodGetEveryByteOnce() throws {
        // Reads without `since` start at `delivered` and acknowledge it: at-most-once, nothing lost.
        let bufferSize = 65536
        let floodSize = 10 * bufferSize
        let (c, id, start) = try demoSession(bufferSize: bufferSize)
        _ = try c.call("GET", "/sessions/\(id)?since=\(start)")  // delivered = end of the greeting
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?cmd=flood%20\(floodSize)").status, 204)
        let p = DemoGame.floodPattern
        try readExactly(c, id, from: start, count: floodSize, bufferSize: bufferSize, cursorless: true) { p[$0 % 64] }
    }

    func testOddBufferSizeWrapsAndKeepsHistoryExact() throws {
        // A buffer-size that is no power of two, reads of irregular sizes, then replay of the history.
        let bufferSize = 3001
        let floodSize = 10 * bufferSize
        let (_, _, c, id, target) = try sessionOnTestUpstream { $0.bufferSize = bufferSize }
        let sent = DispatchSemaphore(value: 0)
        Thread {
            do { try target.send(pattern(0..<floodSize)) } catch { XCTFail("target send: \(error)") }
            sent.signal()
        }.start()
        try readExactly(c, id, from: 0, count: floodSize, bufferSize: bufferSize,
                        max: { [1, 977, 4096, 2999, 17][$0 % 5] }, expected: patternByte)
        XCTAssertEqual(sent.wait(timeout: .now() + 10), .success)
        // Everything is acknowledged; the last buffer-size bytes are history and replay exactly.
        let base = floodSize - bufferSize
        let history = try c.call("GET", "/sessions/\(id)?since=\(base)")
        XCTAssertEqual(history.status, 200)
        XCTAssertTrue(history.body == pattern(base..<floodSize), "history replays exactly")
        let middle = try c.call("GET", "/sessions/\(id)?since=\(base + 1234)&max=100")
        XCTAssertTrue(middle.body == pattern(base + 1234..<base + 1334))
        let evicted = try c.call("GET", "/sessions/\(id)?since=\(base - 1)")
        XCTAssertEqual(evicted.status, 409)
        XCTAssertEqual(evicted.header("X-Offset-Base"), "\(base)")
    }

    func testUnreadBytesStopTheTargetAndNothingIsDropped() throws {
        // A client that does not read: the proxy buffers buffer-size bytes, then leaves the rest in TCP.
        let bufferSize = 65536
        let (_, _, c, id, target) = try sessionOnTestUpstream { $0.bufferSize = bufferSize }
        target.setTimeout(60)
        let floodSize = 4 * 1024 * 1024
        let sent = DispatchSemaphore(value: 0)
        Thread {
            try? target.send(pattern(0..<floodSize))
            sent.signal()
        }.start()
        // Reads at offset 0 acknowledge nothing: the proxy fills its buffer and must stop there.
        var first: [UInt8] = []
        let deadline = Date().addingTimeInterval(10)
        while first.count < bufferSize && Date() < deadline {
            first = try c.call("GET", "/sessions/\(id)?since=0&wait=5").body
        }
        XCTAssertEqual(first.count, bufferSize)
        // Give the proxy time to (wrongly) take more: this proves something did not happen.
        usleep(300_000)
        let still = try c.call("GET", "/sessions/\(id)?since=0")
        XCTAssertEqual(still.body.count, bufferSize, "exactly buffer-size bytes were taken while nobody acknowledged")
        XCTAssertTrue(still.body == pattern(0..<bufferSize))
        // Now read it all; nothing was lost while the target was paused.
        let rest = try c.readBytes(id, from: bufferSize, count: floodSize - bufferSize, timeout: 60)
        XCTAssertNil(firstMismatch(rest, pattern(bufferSize..<floodSize)))
        XCTAssertEqual(sent.wait(timeout: .now() + 10), .success)
    }

    // MARK: Long-polls

    func testLongPollIsWokenByDataAtOnce() throws {
        let (_, _, c, id, target) = try sessionOnTestUpstream()
        for (i, chunk) in ["ping", "x", "pong\r\n"].enumerated() {
            let since = ["ping", "x"].prefix(i).joined().utf8.count
            try c.send("GET", "/sessions/\(id)?since=\(since)&wait=10")
            XCTAssertFalse(c.socket.isReadable(within: 0.2), "held while there is nothing to read")
            let start = Date()
            try target.send(chunk)
            let r = try c.readResponse()
            let took = Date().timeIntervalSince(start)
            assertConforms(r)
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(r.text, chunk)
            XCTAssertEqual(r.header("X-Offset"), "\(since)")
            XCTAssertLessThan(took, 1, "answered as soon as bytes arrive, not at the end of wait")
        }
    }

    func testLongPollIsWokenByClose() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        for (n, (hangUp, reason)) in [({ (s: TestSocket) in s.close() }, "eof"),
                                      ({ (s: TestSocket) in s.abort() }, "reset")].enumerated() {
            let id = try c.createSession()
            let target = try up.connection(n)
            try target.send("last words")
            _ = try c.readBytes(id, from: 0, count: 10)
            try c.send("GET", "/sessions/\(id)?since=10&wait=10")
            XCTAssertFalse(c.socket.isReadable(within: 0.2), "held while the session is open")
            let start = Date()
            hangUp(target)
            let r = try c.readResponse()
            assertConforms(r)
            XCTAssertLessThan(Date().timeIntervalSince(start), 1, "answered when the session closes")
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(r.body, [])
            XCTAssertEqual(r.header("X-Offset"), "10")
            XCTAssertEqual(r.header("X-Next-Offset"), "10")
            XCTAssertEqual(r.header("X-Session-State"), "closed")
            XCTAssertEqual(r.header("X-Close-Reason"), reason)
        }
    }

    func testLongPollIsWokenByDeleteAndShutdown() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let waiter = try d.client()
        let c = try d.client()
        let deleted = try c.createSession()
        try waiter.send("GET", "/sessions/\(deleted)?since=0&wait=10")
        XCTAssertFalse(waiter.socket.isReadable(within: 0.2), "held while the session is open")
        try waitUntil("the long-poll held") { try d.onLoop { $0.api.longPolls } == 1 }  // before another connection acts
        XCTAssertEqual(try c.call("DELETE", "/sessions/\(deleted)").status, 204)
        let (r, took) = try timed { try waiter.readResponse() }
        XCTAssertLessThan(took, 1)
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.header("X-Session-State"), "closed")
        XCTAssertEqual(r.header("X-Close-Reason"), "deleted")

        let open = try c.createSession()
        try waiter.send("GET", "/sessions/\(open)?since=0&wait=10")
        XCTAssertFalse(waiter.socket.isReadable(within: 0.2), "held while the session is open")
        try waitUntil("the long-poll held") { try d.onLoop { $0.api.longPolls } == 1 }  // before another connection acts
        let stopper = Thread { d.stop() }
        stopper.start()
        let (s, stopTook) = try timed { try waiter.readResponse() }
        XCTAssertLessThan(stopTook, 2)
        XCTAssertEqual(s.status, 200)
        XCTAssertEqual(s.header("X-Session-State"), "closed")
        XCTAssertEqual(s.header("X-Close-Reason"), "shutdown")
    }

    func testLongPollIsSupersededByANewerOne() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let a = try d.client()
        let b = try d.client()
        let id = try a.createSession()
        let target = try up.connection(0)
        try a.send("GET", "/sessions/\(id)?since=0&wait=10")
        XCTAssertFalse(a.socket.isReadable(within: 0.2), "first read is held")
        try waitUntil("the long-poll held") { try d.onLoop { $0.api.longPolls } == 1 }  // before another connection acts
        let start = Date()
        try b.send("GET", "/sessions/\(id)?since=0&wait=10")
        let old = try a.readResponse()
        assertConforms(old)
        XCTAssertLessThan(Date().timeIntervalSince(start), 1, "the older read is answered at once")
        XCTAssertEqual(old.status, 200)
        XCTAssertEqual(old.body, [])
        XCTAssertEqual(old.header("X-Session-State"), "open")
        XCTAssertFalse(b.socket.isReadable(within: 0.2), "the newer read is held")
        try target.send("news")
        let new = try b.readResponse()
        XCTAssertEqual(new.text, "news")
    }

    func testManyPipelinedRequestsBehindAHeldRead() throws {
        // More than a request's worth of bytes queue up behind the held read; none is lost.
        let (_, _, c, id, target) = try sessionOnTestUpstream()
        var text = "GET /sessions/\(id)?since=0&wait=10 HTTP/1.1\r\nHost: x\r\n\r\n"
        var expectedInput = ""
        let count = 1500
        for i in 0..<count {
            text += "POST /sessions/\(id)/input?cmd=line\(i) HTTP/1.1\r\nHost: x\r\nX-Filler: \(String(repeating: "f", count: 60))\r\nContent-Length: 0\r\n\r\n"
            expectedInput += "line\(i)\r\n"
        }
        XCTAssertGreaterThan(text.utf8.count, 8192 + 65536 + 4096, "more than the proxy buffers for one connection")
        try c.socket.send(text)
        XCTAssertFalse(c.socket.isReadable(within: 0.3), "nothing is answered before the held read")
        XCTAssertFalse(target.isReadable(within: 0.05), "the queued inputs wait their turn")
        try target.send("wake")
        let first = try c.readResponse()
        XCTAssertEqual(first.text, "wake")
        for i in 0..<count {
            let r = try c.readResponse()
            guard r.status == 204 else { return XCTFail("request \(i) answered \(r.status) \(r.text)") }
        }
        let got = try target.receive(exactly: expectedInput.utf8.count)
        XCTAssertEqual(String(decoding: got, as: UTF8.self), expectedInput)
    }

    func testHeldReadOfAClientThatGoesAway() throws {
        let (_, d, c, id, target) = try sessionOnTestUpstream()
        for hangUp in [{ (s: TestSocket) in s.abort() }, { (s: TestSocket) in s.close() }] {
            let gone = try d.client()
            try gone.send("GET", "/sessions/\(id)?since=0&wait=10")
            XCTAssertFalse(gone.socket.isReadable(within: 0.2), "held")
            hangUp(gone.socket)
        }
        // The daemon noticed (no long-poll left) and the session still works.
        var polls: Double? = 1
        let deadline = Date().addingTimeInterval(5)
        while polls != 0 && Date() < deadline {
            polls = try c.metric("uvproxyd_long_polls")
            if polls != 0 { usleep(20_000) }
        }
        XCTAssertEqual(polls, 0, "the held reads of departed clients are gone")
        try target.send("after")
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)?since=0&wait=5").text, "after")
        XCTAssertEqual(try c.call("GET", "/healthz").status, 200)
    }

    func testPipelinedRequestBehindHeldReadIsAnsweredAfterIt() throws {
        let (_, _, c, id, target) = try sessionOnTestUpstream()
        try c.socket.send("GET /sessions/\(id)?since=0&wait=10 HTTP/1.1\r\nHost: x\r\n\r\n"
                          + "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                          + "POST /sessions/\(id)/input?cmd=after HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        XCTAssertFalse(c.socket.isReadable(within: 0.3), "nothing is answered before the held read")
        XCTAssertFalse(target.isReadable(within: 0.05), "the pipelined input waits its turn")
        try target.send("data")
        let answers = try (0..<3).map { _ in try c.readResponse() }
        XCTAssertEqual(answers.map(\.status), [200, 200, 204])
        XCTAssertEqual(answers[0].text, "data")
        XCTAssertEqual(answers[1].text, "ok")
        XCTAssertEqual(String(decoding: try target.receive(exactly: 7), as: UTF8.self), "after\r\n")
    }

    func testLongPollRunsOutAndWaitIsCappedAtMaxWait() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.maxWait = 1
        }
        let c = try d.client()
        let id = try c.createSession()
        let (r, took) = try timed { try c.call("GET", "/sessions/\(id)?since=0&wait=0.4") }
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.body, [])
        XCTAssertEqual(r.header("X-Session-State"), "open")
        XCTAssertGreaterThan(took, 0.3)
        XCTAssertLessThan(took, 2)
        let (capped, cappedTook) = try timed { try c.call("GET", "/sessions/\(id)?since=0&wait=30") }
        XCTAssertEqual(capped.status, 200)
        XCTAssertEqual(capped.body, [])
        XCTAssertGreaterThan(cappedTook, 0.8)
        XCTAssertLessThan(cappedTook, 3, "wait is capped at max-wait")
    }

    func testHugeWaitIsCappedNotRefused() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.maxWait = 0.5
        }
        let c = try d.client()
        let id = try c.createSession()
        for wait in ["999999999", "1000000000", "99999999999.5"] {
            let (r, took) = try timed { try c.call("GET", "/sessions/\(id)?since=0&wait=\(wait)") }
            XCTAssertEqual(r.status, 200, "wait=\(wait) is a well-formed number: capped at max-wait, not refused: \(r.text)")
            XCTAssertLessThan(took, 3)
        }
    }

    /// A daemon running the demo game, one session on it, and the length of its greeting.
    private func demoSession(bufferSize: Int) throws -> (HTTPTestClient, String, Int) {
        let d = try startDaemon {
            $0.demo = true
            $0.bufferSize = bufferSize
        }
        let c = try d.client()
        let id = try c.createSession()
        return (c, id, try greetingLength(c, id))
    }
}
