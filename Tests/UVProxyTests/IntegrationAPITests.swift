import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import UVProxy

/// SPEC §1 and §2 over real sockets: every status code and header of the API (SSE excepted).
final class IntegrationAPITests: XCTestCase {

    // MARK: Create

    func testCreateAnswers201WithLocationAndBody() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.targets["other"] = TargetConfig(address: "127.0.0.1:\(up.port)")
        }
        let c = try d.client()
        let r = try c.call("POST", "/sessions")
        XCTAssertEqual(r.status, 201, r.text)
        XCTAssertEqual(r.header("Content-Type"), "application/json")
        let id = try XCTUnwrap(r.json?["id"] as? String, r.text)
        XCTAssertNotNil(id.range(of: "^[A-Za-z0-9_-]{1,64}$", options: .regularExpression), id)
        XCTAssertGreaterThanOrEqual(id.count, 22, "128 random bits need at least 22 base64url characters")
        XCTAssertEqual(r.header("Location"), "/sessions/\(id)")
        XCTAssertEqual(r.json?["target"] as? String, "default")
        XCTAssertEqual(r.json?["state"] as? String, "open")
        _ = try up.connection(0)  // the target really has a connection

        // A named target, by query and by form body.
        let r2 = try c.call("POST", "/sessions?target=other")
        XCTAssertEqual(r2.status, 201, r2.text)
        XCTAssertEqual(r2.json?["target"] as? String, "other")
        let byName = try c.call("POST", "/sessions?target=default")
        XCTAssertEqual(byName.status, 201)
        XCTAssertEqual(byName.json?["target"] as? String, "default")
        let r3 = try c.form("/sessions", "target=other")
        XCTAssertEqual(r3.status, 201, r3.text)
        XCTAssertEqual(r3.json?["target"] as? String, "other")
        let ids = Set([id, r2.json?["id"] as? String, r3.json?["id"] as? String].compactMap { $0 })
        XCTAssertEqual(ids.count, 3, "ids are unique")
        _ = try up.connection(3)
        let read = try c.call("GET", "/sessions/\(id)")
        XCTAssertEqual(read.status, 200)
    }

    func testCreateUnknownTarget400() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        XCTAssertEqual(try c.call("POST", "/sessions?target=nope").status, 400)
        XCTAssertEqual(try c.form("/sessions", "target=nope").status, 400)
        XCTAssertEqual(try c.call("POST", "/sessions?target=127.0.0.1:\(up.port)").status, 400,
                       "never an open relay to an address")
        XCTAssertEqual(try c.metric("uvproxyd_sessions{state=\"open\"}"), 0)
        XCTAssertEqual(try c.metric("uvproxyd_sessions_created_total"), 0)
    }

    func testCreateRefused502() throws {
        let port = try refusedPort()
        let log = LogCapture()
        let d = try startDaemon(log: log) { $0.upstream = "127.0.0.1:\(port)" }
        let c = try d.client()
        let r = try c.call("POST", "/sessions")
        XCTAssertEqual(r.status, 502, r.text)
        let failed = try XCTUnwrap(log.wait(for: "connect to target failed"))
        XCTAssertEqual(failed["error"] as? String, "ECONNREFUSED", "the error's name, as in the 502's body")
        XCTAssertEqual(failed["target"] as? String, "default")
        XCTAssertNil(r.header("Location"))
        XCTAssertEqual(try c.metric("uvproxyd_sessions{state=\"open\"}"), 0)
        XCTAssertEqual(try c.metric("uvproxyd_upstream_connect_failures_total"), 1)
        XCTAssertEqual(try c.call("POST", "/mud").status, 502, "/mud create fails as Create does")
    }

    func testCreateConnectTimeout504() throws {
        let port = try blackholePort()
        let up = try startUpstream()
        let log = LogCapture()
        let d = try startDaemon(log: log) {
            $0.upstream = "127.0.0.1:\(port)"
            $0.targets["ok"] = TargetConfig(address: "127.0.0.1:\(up.port)")
            $0.connectTimeout = 0.3
            $0.maxSessions = 1
        }
        let c = try d.client()
        let (r, took) = try timed { try c.call("POST", "/sessions") }
        if r.status != 504 && took < 0.25 {
            throw XCTSkip("cannot make a connect hang here: it ended at once with \(r.status) \(r.text)")
        }
        XCTAssertEqual(r.status, 504, r.text)
        XCTAssertEqual(try XCTUnwrap(log.wait(for: "connect to target failed"))["error"] as? String, "timeout")
        XCTAssertGreaterThanOrEqual(took, 0.25)
        XCTAssertLessThan(took, 3)
        XCTAssertEqual(try c.metric("uvproxyd_sessions{state=\"open\"}"), 0)
        // A request pipelined behind a create that waits for its target is answered after it.
        try c.socket.send("POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        XCTAssertFalse(c.socket.isReadable(within: 0.1), "nothing is answered before the create's outcome")
        let answers = try (0..<2).map { _ in try c.readResponse() }
        XCTAssertEqual(answers.map(\.status), [504, 200])
        XCTAssertEqual(try c.call("POST", "/sessions?target=ok").status, 201, "the timed-out creates took no slot")
    }

    func testMaxSessions503AndWhatCounts() throws {
        let up = try startUpstream()
        let dead = try refusedPort()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.targets["dead"] = TargetConfig(address: "127.0.0.1:\(dead)")
            $0.maxSessions = 2
        }
        let c = try d.client()
        for _ in 0..<3 {
            XCTAssertEqual(try c.call("POST", "/sessions?target=dead").status, 502)
        }
        // Failed creates took no slot.
        let a = try c.createSession()
        let b = try c.createSession()
        let full = try c.call("POST", "/sessions")
        XCTAssertEqual(full.status, 503, full.text)
        let retry = try XCTUnwrap(full.header("Retry-After"), "503 carries Retry-After")
        XCTAssertNotNil(Int(retry), "Retry-After is delta-seconds: \(retry)")
        XCTAssertEqual(try c.call("GET", "/mud").status, 503, "/mud create fails as Create does")

        // b's target hangs up: b lingers (readable, closed) but no longer counts.
        try up.connection(1).close()
        let closed = try c.waitClosed(b, since: 0)
        XCTAssertEqual(closed.header("X-Close-Reason"), "eof")
        XCTAssertEqual(try c.call("GET", "/sessions/\(b)").status, 200, "closed session still readable")
        let c3 = try c.createSession()
        XCTAssertEqual(try c.call("POST", "/sessions").status, 503)

        // A deleted session does not count either.
        XCTAssertEqual(try c.call("DELETE", "/sessions/\(a)").status, 204)
        _ = try c.createSession()
        XCTAssertEqual(try c.call("POST", "/sessions").status, 503)
        XCTAssertEqual(try c.metric("uvproxyd_sessions{state=\"open\"}"), 2)
        XCTAssertEqual(try c.call("GET", "/sessions/\(c3)").status, 200)
    }

    // MARK: Read

    func testReadHeadersCursorAndDelivered() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let id = try c.createSession()
        try up.connection(0).send("hello world")
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 11), Array("hello world".utf8))

        let r = try c.call("GET", "/sessions/\(id)?since=0")
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.text, "hello world")
        XCTAssertEqual(r.header("Content-Type"), "application/octet-stream")
        XCTAssertEqual(r.header("X-Offset"), "0")
        XCTAssertEqual(r.header("X-Next-Offset"), "11")
        XCTAssertEqual(r.header("X-Session-State"), "open")
        XCTAssertNil(r.header("X-Close-Reason"))

        let part = try c.call("GET", "/sessions/\(id)?since=6&max=3")
        XCTAssertEqual(part.text, "wor")
        XCTAssertEqual(part.header("X-Offset"), "6")
        XCTAssertEqual(part.header("X-Next-Offset"), "9")

        // Without a cursor a read starts at `delivered` (the last X-Next-Offset).
        let rest = try c.call("GET", "/sessions/\(id)")
        XCTAssertEqual(rest.text, "ld")
        XCTAssertEqual(rest.header("X-Offset"), "9")
        XCTAssertEqual(rest.header("X-Next-Offset"), "11")
        let none = try c.call("GET", "/sessions/\(id)")
        XCTAssertEqual(none.status, 200)
        XCTAssertEqual(none.body, [])
        XCTAssertEqual(none.header("X-Offset"), "11")
        XCTAssertEqual(none.header("X-Next-Offset"), "11")
        // `delivered` moves back when a client re-reads an older cursor.
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)?since=2&max=2").text, "ll")
        let again = try c.call("GET", "/sessions/\(id)")
        XCTAssertEqual(again.text, "o world")
        XCTAssertEqual(again.header("X-Offset"), "4")

        // Target hangs up: reads say closed/eof, bytes stay readable.
        try up.connection(0).close()
        let closed = try c.waitClosed(id, since: 11)
        XCTAssertEqual(closed.header("X-Session-State"), "closed")
        XCTAssertEqual(closed.header("X-Close-Reason"), "eof")
        XCTAssertEqual(closed.header("X-Offset"), "11")
        let replay = try c.call("GET", "/sessions/\(id)?since=0")
        XCTAssertEqual(replay.text, "hello world")
        XCTAssertEqual(replay.header("X-Session-State"), "closed")
        XCTAssertEqual(replay.header("X-Close-Reason"), "eof")
    }

    func testReadMalformedParameters400() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let id = try c.createSession()
        try up.connection(0).send("abc")
        _ = try c.readBytes(id, from: 0, count: 3)
        let bad = ["since=x", "since=-1", "since=1.5", "since=", "since=99999999999999999999999",
                   "wait=abc", "wait=-1", "wait=1s", "wait=", "max=0", "max=-3", "max=x", "max=",
                   "since=4", "since=1000"]
        for q in bad {
            let r = try c.call("GET", "/sessions/\(id)?\(q)")
            XCTAssertEqual(r.status, 400, "GET ?\(q): \(r.text)")
        }
        // Boundaries that are fine.
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)?since=3").status, 200, "since == end")
        let waited = try c.call("GET", "/sessions/\(id)?since=3&wait=0.2")
        XCTAssertEqual(waited.status, 200)
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)?since=0&max=1").text, "a")
    }

    func testReadEvicted409WithOffsetBase() throws {
        let (_, _, c, id, target) = try sessionOnTestUpstream { $0.bufferSize = 1024 }
        try target.send(pattern(0..<1024))
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 1024), pattern(0..<1024))
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)?since=1024").status, 200)  // acknowledges all
        try target.send(pattern(1024..<1624))
        XCTAssertEqual(try c.readBytes(id, from: 1024, count: 600), pattern(1024..<1624))
        // 1624 bytes through a 1024-byte buffer: [0, 600) are evicted history.
        for since in [0, 599] {
            let r = try c.call("GET", "/sessions/\(id)?since=\(since)")
            XCTAssertEqual(r.status, 409, "since=\(since): \(r.text)")
            XCTAssertEqual(r.header("X-Offset-Base"), "600")
        }
        let oldest = try c.call("GET", "/sessions/\(id)?since=600")
        XCTAssertEqual(oldest.status, 200)
        XCTAssertEqual(oldest.body, pattern(600..<1624))
        XCTAssertEqual(oldest.header("X-Offset"), "600")
        XCTAssertEqual(oldest.header("X-Next-Offset"), "1624")
    }

    func testUnknownSession404OnEveryEndpoint() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let real = try c.createSession()
        var unknown = "AAAAAAAAAAAAAAAAAAAAAA"
        if unknown == real { unknown = "BAAAAAAAAAAAAAAAAAAAAA" }
        for (method, path) in [("GET", "/sessions/\(unknown)"), ("GET", "/sessions/nope"),
                               ("POST", "/sessions/\(unknown)/input?cmd=x"), ("POST", "/sessions/nope/input?cmd=x"),
                               ("DELETE", "/sessions/\(unknown)"), ("GET", "/mud?id=\(unknown)"),
                               ("GET", "/mud?id=nope&cmd=look")] {
            let r = try c.call(method, path)
            XCTAssertEqual(r.status, 404, "\(method) \(path): \(r.text)")
        }
        XCTAssertEqual(try c.call("GET", "/sessions/\(real)").status, 200)
    }

    // MARK: Input

    func testInputLineEndingsAndPrecedence() throws {
        let (_, _, c, id, target) = try sessionOnTestUpstream()
        let path = "/sessions/\(id)/input"
        let textPlain = ["Content-Type": "text/plain"]
        let formType = ["Content-Type": "application/x-www-form-urlencoded"]
        let cases: [(String, [String: String], String, String)] = [
            // (query, headers, body, bytes the target must get)
            ("", textPlain, "look", "look\r\n"),                      // none → CRLF appended
            ("", textPlain, "a\n", "a\r\n"),                          // bare LF → CRLF
            ("", textPlain, "b\r\n", "b\r\n"),                        // CRLF kept
            ("", textPlain, "two\nlines", "two\nlines\r\n"),          // only a final LF is replaced
            ("?raw=1", textPlain, "r1\n", "r1\n"),                    // raw: as it is
            ("?raw=1", textPlain, "r2", "r2"),
            ("?cmd=q%20one", textPlain, "ignored body", "q one\r\n"), // query cmd wins over the body
            ("?cmd=fromquery", formType, "cmd=fromform", "fromquery\r\n"),  // query wins over form field
            ("", formType, "cmd=from+form%21&x=1", "from form!\r\n"), // form field wins over the raw body
            ("", formType, "look", "look\r\n"),                       // form body without cmd: sent raw
            ("", ["Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"], "cmd=caf%C3%A9",
             "café\r\n"),                                             // a form with a charset parameter
            ("", textPlain, "cmd=notaform", "cmd=notaform\r\n"),      // not a form: the raw body
            ("?cmd=x%0D%0A", textPlain, "", "x\r\n"),
            ("?cmd=y%0A", textPlain, "", "y\r\n"),
            ("?cmd=abc&raw=1", textPlain, "", "abc"),
            ("", textPlain, "", "\r\n"),                              // empty command: just the line end
        ]
        var expected: [UInt8] = []
        for (query, headers, body, want) in cases {
            let r = try c.call("POST", path + query, headers: headers, body: body)
            XCTAssertEqual(r.status, 204, "\(query) \(body): \(r.text)")
            XCTAssertEqual(r.body, [])
            XCTAssertNil(r.header("X-Duplicate"))
            expected += Array(want.utf8)
        }
        let got = try target.receive(exactly: expected.count)
        XCTAssertEqual(String(decoding: got, as: UTF8.self), String(decoding: expected, as: UTF8.self))
        XCTAssertFalse(target.isReadable(within: 0.2), "nothing more reaches the target")
    }

    /// Found by Schemathesis (scripts/api-test): `raw=null` was taken as "not raw" and the
    /// command sent. `raw` is a boolean (docs/openapi.yaml): 1, true, yes, on or empty, or 0,
    /// false, no, off; anything else is a malformed parameter, `400`, and nothing is sent.
    func testInputRawMustBeABoolean() throws {
        let (_, _, c, id, target) = try sessionOnTestUpstream()
        let path = "/sessions/\(id)/input"
        for bad in ["null", "2", "maybe", "%00"] {
            let r = try c.call("POST", path + "?cmd=x&raw=" + bad)
            XCTAssertEqual(r.status, 400, "raw=\(bad): \(r.text)")
            assertConforms(r, "raw=\(bad)")
        }
        XCTAssertEqual(try c.form(path, "cmd=x&raw=perhaps").status, 400, "in a form body too")
        XCTAssertFalse(target.isReadable(within: 0.2), "nothing was sent")
        for (value, sent) in [("0", "a\r\n"), ("false", "b\r\n"), ("No", "c\r\n"), ("off", "d\r\n"),
                              ("TRUE", "e"), ("yes", "f"), ("on", "g"), ("", "h")] {
            let cmd = String(sent.first!)
            XCTAssertEqual(try c.call("POST", path + "?cmd=\(cmd)&raw=\(value)").status, 204, "raw=\(value)")
            XCTAssertEqual(String(decoding: try target.receive(exactly: sent.utf8.count), as: UTF8.self), sent, "raw=\(value)")
        }
    }

    func testInputSeqDuplicatesAreNotSentTwice() throws {
        let (_, _, c, id, target) = try sessionOnTestUpstream()
        let path = "/sessions/\(id)/input"
        let steps: [(String, Bool)] = [
            ("seq=1&cmd=one", false), ("seq=1&cmd=one", true), ("seq=2&cmd=two", false),
            ("seq=2&cmd=two-again", true), ("seq=1&cmd=old", true), ("seq=5&cmd=five", false),
            ("seq=4&cmd=four", true), ("seq=5&cmd=five", true), ("cmd=marker", false),
        ]
        for (query, duplicate) in steps {
            let r = try c.call("POST", path + "?" + query)
            XCTAssertEqual(r.status, 204, query)
            XCTAssertEqual(r.header("X-Duplicate"), duplicate ? "1" : nil, query)
        }
        // seq in a form body counts the same.
        let formDup = try c.form(path, "seq=5&cmd=five")
        XCTAssertEqual(formDup.status, 204)
        XCTAssertEqual(formDup.header("X-Duplicate"), "1")
        XCTAssertEqual(try c.form(path, "seq=6&cmd=six").header("X-Duplicate"), nil)
        let expected = "one\r\ntwo\r\nfive\r\nmarker\r\nsix\r\n"
        let got = try target.receive(exactly: expected.utf8.count)
        XCTAssertEqual(String(decoding: got, as: UTF8.self), expected)
        XCTAssertFalse(target.isReadable(within: 0.2), "no duplicate reached the target")
    }

    /// `/mud` sends its command "as in Input": a duplicate `seq` is not sent and its answer
    /// says `X-Duplicate: 1`, held or not (the header was missing; found by a black-box probe).
    func testMudSaysWhenItsSeqWasADuplicate() throws {
        let (_, _, c, id, target) = try sessionOnTestUpstream()
        XCTAssertNil(try c.call("GET", "/mud?id=\(id)&cmd=one&seq=1").header("X-Duplicate"))
        XCTAssertEqual(String(decoding: try target.receive(exactly: 5), as: UTF8.self), "one\r\n")
        let again = try c.call("GET", "/mud?id=\(id)&cmd=one&seq=1")
        XCTAssertEqual(again.status, 200)
        XCTAssertEqual(again.header("X-Duplicate"), "1")
        try c.send("GET", "/mud?id=\(id)&cmd=one&seq=1&wait=5")  // held until the game speaks
        try target.send("ok\r\n")
        let held = try c.readResponse()
        XCTAssertEqual(held.text, "ok\r\n")
        XCTAssertEqual(held.header("X-Duplicate"), "1")
        XCTAssertFalse(target.isReadable(within: 0.2), "no duplicate reached the target")
    }

    func testInputToClosedSession409() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let id = try c.createSession()
        try up.connection(0).close()
        _ = try c.waitClosed(id, since: 0)
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?cmd=look").status, 409)
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input", body: "look").status, 409)
        XCTAssertEqual(try c.call("GET", "/mud?id=\(id)&cmd=look").status, 409, "/mud input as in Input")
    }

    func testInputBodyOver64KiB413() throws {
        let (_, d, c, id, target) = try sessionOnTestUpstream()
        let exact = pattern(0..<65536)
        let ok = try c.call("POST", "/sessions/\(id)/input?raw=1", body: exact)
        XCTAssertEqual(ok.status, 204, "a body of exactly 64 KiB is allowed")
        XCTAssertEqual(try target.receive(exactly: 65536), exact)

        let tooBig = try d.client().call("POST", "/sessions/\(id)/input?raw=1", body: pattern(0..<65537))
        XCTAssertEqual(tooBig.status, 413, tooBig.text)

        // The same limit for a chunked body.
        let chunked = try d.client()
        var head = "POST /sessions/\(id)/input?raw=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        for _ in 0..<5 { head += String(16384, radix: 16) + "\r\n" + String(repeating: "z", count: 16384) + "\r\n" }
        head += "0\r\n\r\n"
        try? chunked.socket.send(head)  // the proxy may stop reading once it has answered
        let r = try chunked.readResponse()
        assertConforms(r)
        XCTAssertEqual(r.status, 413, r.text)
        XCTAssertFalse(target.isReadable(within: 0.2), "nothing of a rejected body reaches the target")
    }

    // MARK: Delete

    /// Posts `piece` bytes of the test pattern at a time until the input limit's 503 (the target
    /// does not read); returns how many pieces were taken.
    private func queueInputUntilFull(_ c: HTTPTestClient, _ id: String, piece: Int) throws -> Int {
        for i in 0..<2000 {
            let r = try c.call("POST", "/sessions/\(id)/input?raw=1", body: pattern(i * piece..<(i + 1) * piece))
            if r.status == 503 { return i }
            XCTAssertEqual(r.status, 204)
        }
        throw TestError("input was never refused")
    }

    func testDeleteAnswersAtOnceAndQueuedInputStillArrives() throws {
        let (up, _, c, id, target) = try sessionOnTestUpstream { $0.bufferSize = 65536 }  // not read yet: input queues up in the proxy
        let piece = 60000
        let accepted = try queueInputUntilFull(c, id, piece: piece)
        XCTAssertGreaterThan(accepted, 0)
        let (del, took) = try timed { try c.call("DELETE", "/sessions/\(id)") }
        XCTAssertEqual(del.status, 204)
        XCTAssertEqual(del.body, [])
        XCTAssertLessThan(took, 1, "DELETE answers at once, not after the drain")
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)").status, 404)
        XCTAssertEqual(try c.call("DELETE", "/sessions/\(id)").status, 404)
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?cmd=x").status, 404)
        // Everything accepted before the DELETE still reaches the target, then the connection closes.
        let all = try target.receiveAll()
        XCTAssertEqual(all.count, accepted * piece)
        XCTAssertNil(firstMismatch(all, pattern(0..<accepted * piece)), "queued input arrives intact and in order")

        // A closed, lingering session can be deleted too.
        let closed = try c.createSession()
        try up.connection(1).close()
        _ = try c.waitClosed(closed, since: 0)
        XCTAssertEqual(try c.call("DELETE", "/sessions/\(closed)").status, 204)
        XCTAssertEqual(try c.call("GET", "/sessions/\(closed)").status, 404)
    }

    /// A shutdown waits for a deleted session's input to reach its target too, as for the
    /// sessions it closes itself (SPEC §2, Delete: "for at most 5 seconds"): the daemon
    /// stopped as soon as no open session drained, and the rest was lost (black-box probe).
    func testShutdownLetsADeletedSessionsInputArrive() throws {
        let (_, d, c, id, target) = try sessionOnTestUpstream { $0.bufferSize = 65536 }  // not read yet
        let piece = 60000
        let accepted = try queueInputUntilFull(c, id, piece: piece)
        XCTAssertEqual(try c.call("DELETE", "/sessions/\(id)").status, 204)
        XCTAssertEqual(try d.onLoop { $0.table.draining }, 1, "the deleted session is draining")
        let stopper = Thread { d.stop() }
        stopper.start()
        Thread.sleep(forTimeInterval: 0.5)  // a game that reads late: the condition under test, not a wait for readiness
        let all = try target.receiveAll()
        XCTAssertEqual(all.count, accepted * piece, "every byte accepted before the DELETE")
        XCTAssertNil(firstMismatch(all, pattern(0..<accepted * piece)))
    }

    /// About 5 s: the drain limit is a constant.
    func testDeleteStopsDrainingAfterFiveSeconds() throws {
        let (_, _, c, id, target) = try sessionOnTestUpstream { $0.bufferSize = 65536 }  // never reads: the drain cannot finish
        for i in 0..<2000 {
            let r = try c.call("POST", "/sessions/\(id)/input?raw=1", body: pattern(i * 60000..<(i + 1) * 60000))
            if r.status == 503 { break }
            XCTAssertEqual(r.status, 204)
        }
        XCTAssertEqual(try c.call("DELETE", "/sessions/\(id)").status, 204)
        let deleted = Date()
        // Bytes the proxy no longer reads make its close a reset, which the target sees at once
        // (a FIN would queue behind the unread input).
        try target.send("unread")
        var p = pollfd(fd: target.fd, events: 0, revents: 0)  // POLLHUP/POLLERR only
        let n = poll(&p, 1, 10_000)
        let took = Date().timeIntervalSince(deleted)
        XCTAssertEqual(n, 1, "the target connection was never closed")
        XCTAssertGreaterThan(took, 4, "queued input is written for up to 5 s")
        XCTAssertLessThan(took, 7.5, "but not for longer")
    }

    // MARK: /mud

    func testMudCreateWithoutId() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        for method in ["GET", "POST"] {
            let r = try c.call(method, "/mud")
            XCTAssertEqual(r.status, 200, r.text)
            XCTAssertEqual(r.header("Content-Type"), "text/plain")
            XCTAssertNotNil(r.text.range(of: "^[A-Za-z0-9_-]{1,64}$", options: .regularExpression), r.text)
            XCTAssertEqual(r.header("X-Session-Id"), r.text)
            XCTAssertEqual(try c.call("GET", "/sessions/\(r.text)").status, 200, "the id is a real session")
        }
        _ = try up.connection(1)
    }

    func testMudWithIdSendsCommandThenReads() throws {
        let (_, _, c, id, target) = try sessionOnTestUpstream()
        try c.send("GET", "/mud?id=\(id)&cmd=look&wait=5")
        XCTAssertEqual(String(decoding: try target.receive(exactly: 6), as: UTF8.self), "look\r\n")
        try target.send("room\r\n")
        let r = try c.readResponse()
        assertConforms(r)
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.header("Content-Type"), "text/plain")
        XCTAssertEqual(r.text, "room\r\n")
        XCTAssertEqual(r.header("X-Offset"), "0")
        XCTAssertEqual(r.header("X-Next-Offset"), "6")
        XCTAssertEqual(r.header("X-Session-State"), "open")

        // POST with a form body; a read without cmd sends nothing.
        try target.send("more")
        XCTAssertEqual(try c.readBytes(id, from: 6, count: 4), Array("more".utf8))
        let f = try c.form("/mud", "id=\(id)&cmd=north&since=6")
        XCTAssertEqual(f.status, 200)
        XCTAssertEqual(f.text, "more")
        XCTAssertEqual(f.header("X-Offset"), "6")
        XCTAssertEqual(String(decoding: try target.receive(exactly: 7), as: UTF8.self), "north\r\n")
        let plain = try c.call("GET", "/mud?id=\(id)&since=0&max=4")
        XCTAssertEqual(plain.text, "room")
        XCTAssertEqual(plain.header("X-Next-Offset"), "4")
        XCTAssertFalse(target.isReadable(within: 0.2), "a read without cmd sends nothing")
        XCTAssertEqual(try c.call("GET", "/mud?id=\(id)&since=99").status, 400, "read errors as in Read")
    }

    // MARK: Operations and security

    func testHealthzAndMetrics() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let h = try c.call("GET", "/healthz")
        XCTAssertEqual(h.status, 200)
        XCTAssertEqual(h.text, "ok")
        _ = try c.createSession()
        let m = try c.call("GET", "/metrics")
        XCTAssertEqual(m.status, 200)
        for name in ["uvproxyd_sessions{state=\"open\"} 1", "uvproxyd_sessions{state=\"closed\"} 0",
                     "uvproxyd_sessions_created_total 1", "uvproxyd_upstream_connect_failures_total",
                     "uvproxyd_upstream_received_bytes_total", "uvproxyd_upstream_sent_bytes_total",
                     "uvproxyd_http_requests_total{code=\"201\"} 1", "uvproxyd_http_connections",
                     "uvproxyd_long_polls", "uvproxyd_event_streams", "uvproxyd_buffered_bytes"] {
            XCTAssertTrue(m.text.contains(name), "metrics lack \(name)")
        }
    }

    func testTokenRequiredEverywhereButHealthz() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.token = "s3cret"
        }
        let c = try d.client()
        let good = ["Authorization": "Bearer s3cret"]
        for headers in [[:], ["Authorization": "Bearer wrong"], ["Authorization": "Bearer s3cre"],
                        ["Authorization": "Bearer s3cretx"], ["Authorization": "s3cret"], ["Authorization": "Bearers3cret"],
                        ["Authorization": "Basic s3cret"], ["Authorization": "Bearer"]] {
            for (method, path) in [("POST", "/sessions"), ("GET", "/mud"), ("GET", "/metrics"),
                                   ("GET", "/sessions/AAAAAAAAAAAAAAAAAAAAAA")] {
                let r = try c.call(method, path, headers: headers)
                XCTAssertEqual(r.status, 401, "\(method) \(path) with \(headers)")
            }
        }
        XCTAssertEqual(up.connectionCount, 0, "no session was created without the token")
        XCTAssertEqual(try c.call("GET", "/healthz").status, 200)
        let created = try c.call("POST", "/sessions", headers: good)
        XCTAssertEqual(created.status, 201)
        let id = try XCTUnwrap(created.json?["id"] as? String)
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)").status, 401)
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?cmd=x").status, 401)
        XCTAssertEqual(try c.call("DELETE", "/sessions/\(id)").status, 401)
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)", headers: good).status, 200)
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?cmd=x", headers: good).status, 204)
        XCTAssertEqual(try c.call("DELETE", "/sessions/\(id)", headers: good).status, 204)
        // The scheme is case-insensitive (RFC 9110 §11.1; found by a SPEC audit: `bearer` was 401).
        for scheme in ["bearer s3cret", "BEARER s3cret", "Bearer  s3cret"] {
            XCTAssertEqual(try c.call("GET", "/metrics", headers: ["Authorization": scheme]).status, 200, scheme)
        }
    }

    func testCORSHeadersAndPreflight() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.token = "s3cret"
            $0.corsOrigin = "https://play.example"
        }
        let c = try d.client()
        let pre = try c.call("OPTIONS", "/sessions", headers: [
            "Origin": "https://play.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        ])
        XCTAssertEqual(pre.status, 204, "preflight needs no token")
        XCTAssertEqual(pre.header("Access-Control-Allow-Origin"), "https://play.example")
        let methods = Set((pre.header("Access-Control-Allow-Methods") ?? "").split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces).uppercased() })
        XCTAssertTrue(methods.isSuperset(of: ["GET", "POST", "DELETE"]), "\(methods)")
        XCTAssertTrue((pre.header("Access-Control-Allow-Headers") ?? "").lowercased().contains("authorization"))

        let good = ["Authorization": "Bearer s3cret", "Origin": "https://play.example"]
        let created = try c.call("POST", "/sessions", headers: good)
        XCTAssertEqual(created.status, 201)
        let id = try XCTUnwrap(created.json?["id"] as? String)
        let denied = try c.call("GET", "/sessions/\(id)", headers: ["Origin": "https://play.example"])
        XCTAssertEqual(denied.status, 401)
        let read = try c.call("GET", "/sessions/\(id)", headers: good)
        for r in [created, denied, read] {
            XCTAssertEqual(r.header("Access-Control-Allow-Origin"), "https://play.example", "status \(r.status)")
            let exposed = Set((r.header("Access-Control-Expose-Headers") ?? "").split(separator: ",")
                .map { $0.trimmingCharacters(in: .whitespaces).lowercased() })
            // x-gmcp-base (SPEC §7) was missing: found writing docs/openapi.yaml.
            for h in ["x-offset", "x-next-offset", "x-session-state", "x-close-reason", "x-offset-base",
                      "x-duplicate", "x-session-id", "x-gmcp-base"] {
                XCTAssertTrue(exposed.contains(h), "\(h) not exposed on \(r.status): \(exposed)")
            }
        }
    }

    // MARK: HTTP conformance

    func testWrongMethod405WithAllow() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let id = try c.createSession()
        let cases: [(String, String, Set<String>)] = [
            ("GET", "/sessions", ["POST"]), ("PUT", "/sessions", ["POST"]),
            ("POST", "/sessions/\(id)", ["GET", "DELETE"]), ("PUT", "/sessions/\(id)", ["GET", "DELETE"]),
            ("GET", "/sessions/\(id)/input", ["POST"]), ("DELETE", "/sessions/\(id)/input", ["POST"]),
            ("DELETE", "/healthz", ["GET"]), ("POST", "/metrics", ["GET"]), ("DELETE", "/mud", ["GET", "POST"]),
        ]
        for (method, path, allow) in cases {
            let r = try c.call(method, path)
            XCTAssertEqual(r.status, 405, "\(method) \(path)")
            let got = Set((r.header("Allow") ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
            XCTAssertTrue(got.isSuperset(of: allow) && !got.contains(method), "\(method) \(path): Allow \(got)")
        }
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)").status, 200, "the session is untouched")
    }

    func testUnknownPath404() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        for path in ["/nope", "/sessionsx", "/sessions/abc/def", "/sessions/a.b", "/healthz/x", "/mud/x"] {
            XCTAssertEqual(try c.call("GET", path).status, 404, path)
        }
        XCTAssertEqual(try c.call("GET", "/healthz").status, 200, "the connection keeps working")
    }

    func testHeadersOver8KiB431() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let fine = try d.client().call("GET", "/healthz", headers: ["X-Pad": String(repeating: "a", count: 7000)])
        XCTAssertEqual(fine.status, 200, "7 KB of headers are within the limit")
        // Exactly 8 KiB, blank line included, is not over the limit; 8 KiB plus a few bytes is.
        let prefix = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
        let exact = try d.client()
        let atLimit = try exact.raw(prefix + String(repeating: "b", count: 8192 - prefix.utf8.count - 4) + "\r\n\r\n")
        XCTAssertEqual(atLimit.status, 200, "a head of exactly 8192 bytes: \(atLimit.text)")
        let over = try d.client()
        try? over.socket.send(prefix + String(repeating: "b", count: 8193 + 4 - prefix.utf8.count) + "\r\n\r\n")
        let overLimit = try over.readResponse()
        assertConforms(overLimit)
        XCTAssertEqual(overLimit.status, 431, "a head of 8197 bytes")

        let c = try d.client()
        try? c.socket.send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: \(String(repeating: "a", count: 9000))\r\n\r\n")
        let r = try c.readResponse()
        assertConforms(r)
        XCTAssertEqual(r.status, 431, r.text)
        let long = try d.client()
        try? long.socket.send("GET /healthz?\(String(repeating: "q", count: 9000)) HTTP/1.1\r\nHost: x\r\n\r\n")
        let r2 = try long.readResponse()
        assertConforms(r2)
        XCTAssertEqual(r2.status, 431, "a long request line counts too")
    }

    func testMalformedRequests400AndConnectionClosed() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let id = try d.client().createSession()
        let requests = [
            "GARBAGE\r\n\r\n",
            "\u{1}\u{2}\u{3} nonsense \u{7f}\r\n\r\n",
            "GET /healthz HTTP/9.x\r\n\r\n",
            "POST /sessions/\(id)/input HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            "POST /sessions/\(id)/input HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
            "POST /sessions/\(id)/input HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi!",
            "POST /sessions/\(id)/input HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        ]
        for text in requests {
            let c = try d.client()
            try c.socket.send(text)
            let r = try c.readResponse()
            assertConforms(r, text.debugDescription)
            XCTAssertEqual(r.status, 400, text.debugDescription)
            XCTAssertTrue(c.isClosedByServer(), "connection closed after \(text.debugDescription)")
        }
        // Requests before the bad one are answered; nothing after it is.
        let c = try d.client()
        try c.socket.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n"
                          + "POST /sessions/\(id)/input?cmd=after HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 200)
        XCTAssertEqual(try c.readResponse().status, 400)
        XCTAssertTrue(c.isClosedByServer())
        XCTAssertFalse(try up.connection(0).isReadable(within: 0.2), "no malformed input reached the target")
    }

    func testChunkedRequestBody() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let id = try c.createSession()
        let r = try c.raw("POST /sessions/\(id)/input HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                          + "2\r\nlo\r\n3;ext=1\r\nok \r\n6\r\naround\r\n0\r\n\r\n")
        assertConforms(r)
        XCTAssertEqual(r.status, 204)
        XCTAssertEqual(String(decoding: try up.connection(0).receive(exactly: 13), as: UTF8.self), "look around\r\n")
        // A chunked form body is parsed as a form.
        let f = try c.raw("POST /sessions/\(id)/input HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                          + "Content-Type: application/x-www-form-urlencoded\r\n\r\n4\r\ncmd=\r\n4\r\nwest\r\n0\r\n\r\n")
        XCTAssertEqual(f.status, 204)
        XCTAssertEqual(String(decoding: try up.connection(0).receive(exactly: 6), as: UTF8.self), "west\r\n")
        XCTAssertEqual(try c.call("GET", "/healthz").status, 200, "keep-alive after a chunked body")
    }

    func testExpectContinue() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let id = try c.createSession()
        try c.socket.send("POST /sessions/\(id)/input HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        // The interim response comes before the body is sent.
        let interim = try c.socket.receive(until: "\r\n\r\n", timeout: 5)
        XCTAssertTrue(interim.hasPrefix("HTTP/1.1 100"), interim)
        XCTAssertTrue(interim.hasSuffix("\r\n\r\n"), "only the 100 so far: \(interim)")
        try c.socket.send("look")
        let r = try c.readResponse()
        assertConforms(r)
        XCTAssertEqual(r.status, 204)
        XCTAssertEqual(String(decoding: try up.connection(0).receive(exactly: 6), as: UTF8.self), "look\r\n")

        // A body that is announced too large gets its final answer instead of 100 Continue.
        let big = try d.client()
        try big.socket.send("POST /sessions/\(id)/input HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 70000\r\n\r\n")
        let refused = try big.socket.receive(until: "\r\n\r\n", timeout: 5)
        XCTAssertTrue(refused.hasPrefix("HTTP/1.1 413"), refused)
    }

    func testHTTP10() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let r = try c.raw("GET /healthz HTTP/1.0\r\n\r\n")
        assertConforms(r)
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.text, "ok")
        XCTAssertTrue(c.isClosedByServer(), "HTTP/1.0 without keep-alive closes after the response")

        let k = try d.client()
        let r1 = try k.raw("GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        XCTAssertEqual(r1.status, 200)
        XCTAssertEqual(r1.header("Connection")?.lowercased(), "keep-alive")
        let r2 = try k.raw("POST /sessions HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
        XCTAssertEqual(r2.status, 201, "a second request on the kept HTTP/1.0 connection")
    }

    func testConnectionClose() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let r = try c.call("GET", "/healthz", headers: ["Connection": "close"])
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.header("Connection")?.lowercased(), "close")
        XCTAssertTrue(c.isClosedByServer())
    }

    func testPipelinedRequestsAnsweredInOrder() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let id = try c.createSession()
        try up.connection(0).send("data")
        _ = try c.readBytes(id, from: 0, count: 4)
        try c.socket.send("POST /sessions/\(id)/input?cmd=go HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                          + "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                          + "GET /sessions/\(id)?since=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        let answers = try (0..<3).map { _ in try c.readResponse() }
        XCTAssertEqual(answers.map(\.status), [204, 404, 200])
        XCTAssertEqual(answers[2].text, "ata")
        XCTAssertEqual(String(decoding: try up.connection(0).receive(exactly: 4), as: UTF8.self), "go\r\n")
    }

    func testManyPipelinedRequestsInOneWrite() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let id = try c.createSession()
        var text = ""
        var expectedStatus: [Int] = []
        var expectedInput = ""
        for i in 0..<300 {
            switch i % 3 {
            case 0:
                text += "POST /sessions/\(id)/input?cmd=n\(i) HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                expectedStatus.append(204)
                expectedInput += "n\(i)\r\n"
            case 1:
                text += "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                expectedStatus.append(200)
            default:
                text += "POST /sessions/\(id)/input HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + "3\r\nc\(String(format: "%02d", i % 100))\r\n0\r\n\r\n"
                expectedStatus.append(204)
                expectedInput += "c\(String(format: "%02d", i % 100))\r\n"
            }
        }
        try c.socket.send(text)
        let answers = try expectedStatus.map { _ in try c.readResponse() }
        XCTAssertEqual(answers.map(\.status), expectedStatus)
        let got = try up.connection(0).receive(exactly: expectedInput.utf8.count)
        XCTAssertEqual(String(decoding: got, as: UTF8.self), expectedInput, "inputs reach the target in request order")
    }

    func testPipelinedLargeResponsesToASlowReader() throws {
        // Responses pile up faster than the client reads them: all still arrive, whole and in order.
        let d = try startDaemon {
            $0.demo = true
            $0.bufferSize = 4 << 20
        }
        let c = try d.client()
        let id = try c.createSession()
        var stream: [UInt8] = []
        while !String(decoding: stream, as: UTF8.self).hasSuffix("echoed.\r\n") {
            stream += try c.call("GET", "/sessions/\(id)?since=\(stream.count)&wait=5").body
        }
        let start = stream.count
        let flood = 1_500_000
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?cmd=flood%20\(flood)").status, 204)
        let expected = (0..<flood).map { DemoGame.floodPattern[$0 % 64] }
        XCTAssertTrue(try c.readBytes(id, from: start, count: flood, timeout: 30) == expected)
        let reads = 8  // 12 MB of responses: more than the proxy queues for one client (4 MB)
        var text = ""
        for _ in 0..<reads { text += "GET /sessions/\(id)?since=\(start) HTTP/1.1\r\nHost: x\r\n\r\n" }
        text += "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        try c.socket.send(text)
        XCTAssertTrue(c.socket.isReadable(within: 5))
        usleep(300_000)  // let the proxy fill its queue while nothing is read
        for n in 0..<reads {
            let r = try c.readResponse()
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(r.body.count, flood, "response \(n)")
            XCTAssertTrue(r.body == expected, "response \(n) is intact")
        }
        XCTAssertEqual(try c.readResponse().text, "ok")
    }

    /// About 10 s: the header timeout is a constant.
    func testIncompleteHeaders408After10Seconds() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let other = try d.client()
        try c.socket.send("GET /healthz HTTP/1.1\r\nHost: x\r\n")
        let start = Date()
        XCTAssertFalse(c.socket.isReadable(within: 1), "no answer while the headers may still come")
        XCTAssertEqual(try other.call("GET", "/healthz").status, 200, "other clients are served meanwhile")
        // Trickling more header lines does not restart the clock: it runs from the first byte.
        var trickled = 0
        while !c.socket.isReadable(within: 1) && Date().timeIntervalSince(start) < 14 {
            try c.socket.send("X-Slow-\(trickled): y\r\n")
            trickled += 1
        }
        XCTAssertGreaterThan(trickled, 5)
        let r = try c.readResponse()
        let took = Date().timeIntervalSince(start)
        assertConforms(r)
        XCTAssertEqual(r.status, 408, r.text)
        XCTAssertGreaterThan(took, 9)
        XCTAssertLessThan(took, 13)
        XCTAssertTrue(c.isClosedByServer(), "408 closes the connection")
    }

    /// A body trickled a byte at a time cannot hold a connection for ever: it must be whole
    /// `bodyTimeoutMs` (60 s; shortened here) after its headers, else 408 and the connection
    /// closes (the header clock covers only the head, SPEC §2).
    func testSlowBody408AfterTheBodyTimeout() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        try d.onLoop { $0.server.limits.bodyTimeoutMs = 600 }
        let c = try d.client()
        let id = try c.createSession()
        try c.socket.send("POST /sessions/\(id)/input HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nl")
        let start = Date()
        var trickled = 0
        while !c.socket.isReadable(within: 0.1) && Date().timeIntervalSince(start) < 5 {
            try c.socket.send("o")
            trickled += 1
        }
        let r = try c.readResponse()
        let took = Date().timeIntervalSince(start)
        assertConforms(r)
        XCTAssertEqual(r.status, 408, r.text)
        XCTAssertGreaterThan(trickled, 3, "bytes kept coming")
        XCTAssertGreaterThan(took, 0.5)
        XCTAssertLessThan(took, 3)
        XCTAssertTrue(c.isClosedByServer(), "408 closes the connection")
        XCTAssertEqual(try d.client().call("POST", "/sessions/\(id)/input?cmd=x").status, 204, "the session is unharmed")
    }

    /// The body clock times the client, not the proxy: a body that came whole while the proxy
    /// held the connection's bytes unparsed (its responses wait for a slow reader, the process
    /// is over its send budget) is answered when it is parsed, not with 408.
    func testABodyTheProxyHoldsBackIsNotTimedOut() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        try d.onLoop { $0.server.limits.bodyTimeoutMs = 600 }
        let id = try d.client().createSession()
        let c = try d.client()
        let gets = 70
        try c.socket.send(String(repeating: "GET /openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\n", count: gets))
        try waitUntil("responses wait in user space") { try d.onLoop { $0.loop.sendQueueBytes } > 0 }
        try c.socket.send("POST /sessions/\(id)/input HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nlo")
        let budget = try d.onLoop { daemon -> Int in
            let old = daemon.loop.sendQueueBudget
            daemon.loop.sendQueueBudget = 0  // over budget: the rest is held unparsed
            return old
        }
        try c.socket.send("ok\r\n")
        // Past the body clock while the whole body waits in the proxy.
        let held = Date()
        try waitUntil("the body clock has run out", timeout: 5) { Date().timeIntervalSince(held) > 1.2 }
        try d.onLoop { $0.loop.sendQueueBudget = budget }
        var statuses: [Int] = []
        for _ in 0...gets { statuses.append(try c.readResponse().status) }
        XCTAssertEqual(statuses.filter { $0 == 200 }.count, gets)
        XCTAssertEqual(statuses.last, 204, "the input, not a 408")
    }

    // MARK: Session lifetime

    /// Any request naming the session touches it, a refused one too (SPEC §1: "no request has
    /// touched"): a client polling with a bad cursor saw its session closed for idleness.
    func testARefusedRequestStillTouchesItsSession() throws {
        // 3.5 s of refused requests 0.25 s apart, against a 2 s idle timeout (room for a late client).
        let (_, _, c, id, _) = try sessionOnTestUpstream { $0.idleTimeout = 2 }
        for _ in 0..<14 {
            XCTAssertEqual(try c.call("GET", "/sessions/\(id)?since=999").status, 400)
            Thread.sleep(forTimeInterval: 0.25)  // the idle timeout is the test's clock
        }
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)").header("X-Session-State"), "open")
    }

    func testIdleTimeoutClosesUntouchedSession() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.idleTimeout = 1
        }
        let c = try d.client()
        let idle = try c.createSession()
        let target = try up.connection(0)
        let waiting = try c.createSession()
        _ = try up.connection(1)
        // A long-poll longer than the idle timeout keeps its session open.
        let poller = try d.client()
        try poller.send("GET", "/sessions/\(waiting)?since=0&wait=2.5")

        let (eof, took) = try timed { try target.receive() }
        XCTAssertEqual(eof, [], "the idle session's target connection is closed")
        XCTAssertGreaterThan(took, 0.5)
        XCTAssertLessThan(took, 4)
        let r = try c.call("GET", "/sessions/\(idle)")
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.header("X-Session-State"), "closed")
        XCTAssertEqual(r.header("X-Close-Reason"), "idle timeout")

        let polled = try poller.readResponse()
        XCTAssertEqual(polled.status, 200)
        XCTAssertEqual(polled.header("X-Session-State"), "open", "a waiting long-poll counts as a touch")
    }

    func testLingerRemovesClosedSession() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.linger = 2  // long enough for a late client (ASan, a loaded machine) to read it lingering
        }
        let c = try d.client()
        let id = try c.createSession()
        try up.connection(0).send("bye")
        let closedAt = Date()  // before the close: the daemon cannot see it earlier
        try up.connection(0).close()
        _ = try c.waitClosed(id, since: 0)
        let r = try c.call("GET", "/sessions/\(id)?since=0")
        XCTAssertEqual(r.status, 200, "readable while it lingers")
        XCTAssertEqual(r.text, "bye")
        // No signal exists for the removal: poll for it.
        var status = 200
        while status == 200 && Date().timeIntervalSince(closedAt) < 10 {
            status = try c.call("GET", "/sessions/\(id)?since=0").status
            if status == 200 { usleep(50_000) }
        }
        XCTAssertEqual(status, 404, "removed after linger")
        XCTAssertGreaterThan(Date().timeIntervalSince(closedAt), 1.9, "not before linger is over")
    }
}
