import XCTest
@testable import UVProxy

final class RouterTests: XCTestCase {
    func route(_ s: String) -> Route? { Router.route(path: Array(s.utf8)[...]) }

    /// Found by the params fuzz target: a number with leading zeros past 20 digits was refused
    /// (`since=00000000000001561890205` answered 400) though its value fits.
    func testUnsignedWithLeadingZerosPastTwentyDigits() {
        XCTAssertEqual(Parameters.parseUnsigned(Array("00000000000001561890205".utf8)[...]), 1_561_890_205)
        XCTAssertEqual(Parameters.parseUnsigned(Array((String(repeating: "0", count: 40) + "18446744073709551615").utf8)[...]),
                       UInt64.max)
        XCTAssertNil(Parameters.parseUnsigned(Array("18446744073709551616".utf8)[...]), "overflow")
        XCTAssertNil(Parameters.parseUnsigned(Array("".utf8)[...]))
        XCTAssertNil(Parameters.parseUnsigned(Array("12a".utf8)[...]))
    }

    func testRoutes() {
        let id = SessionID.random()
        XCTAssertEqual(route("/sessions"), .sessions)
        XCTAssertEqual(route("/sessions/"), .sessions)
        XCTAssertEqual(route("/sessions/\(id)"), .session(id))
        XCTAssertEqual(route("/sessions/\(id)/input"), .input(id))
        XCTAssertEqual(route("/sessions/\(id)/events"), .events(id))
        XCTAssertEqual(route("/mud"), .mud)
        XCTAssertEqual(route("/healthz"), .healthz)
        XCTAssertEqual(route("/metrics"), .metrics)
        XCTAssertEqual(route("/"), .webPage)
        XCTAssertEqual(route("/client.js"), .webScript)
        XCTAssertEqual(route("/client.css"), .webStyle)
        XCTAssertEqual(route("/openapi.yaml"), .openAPI)
    }

    func testUnknownButWellFormedIDRoutesWithNoSession() {
        XCTAssertEqual(route("/sessions/abc"), .session(nil))
        XCTAssertEqual(route("/sessions/abc/input"), .input(nil))
    }

    func testUnknownPaths() {
        XCTAssertNil(route("/session"))
        XCTAssertNil(route("/sessionsx"))
        XCTAssertNil(route("/sessions/a/b"))
        XCTAssertNil(route("/sessions/bad%20id"))
        XCTAssertNil(route("/sessions/" + String(repeating: "a", count: 65)))
        XCTAssertNil(route("/nope"))
        XCTAssertNil(route("/client.mjs"))
        XCTAssertNil(route("/index.html"), "the page is only at /")
    }

    func testMethods() {
        XCTAssertTrue(Route.sessions.allows(.post))
        XCTAssertFalse(Route.sessions.allows(.get))
        XCTAssertTrue(Route.session(nil).allows(.delete))
        XCTAssertFalse(Route.input(nil).allows(.get))
        XCTAssertTrue(Route.mud.allows(.get) && Route.mud.allows(.post))
        XCTAssertEqual("\(Route.session(nil).allow)", "GET, DELETE")
        for web in [Route.webPage, .webScript, .webStyle] {
            XCTAssertTrue(web.isWebClient && web.allows(.get) && web.allows(.head), "\(web)")
            XCTAssertFalse(web.allows(.post) || web.allows(.delete), "\(web)")
            XCTAssertEqual("\(web.allow)", "GET, HEAD")
        }
        XCTAssertTrue(Route.openAPI.allows(.get) && Route.openAPI.allows(.head) && !Route.openAPI.allows(.post))
        XCTAssertEqual("\(Route.openAPI.allow)", "GET, HEAD")
        XCTAssertFalse(Route.openAPI.isWebClient, "served without --web too")
        XCTAssertFalse(Route.healthz.isWebClient || Route.sessions.isWebClient)
        for route in [Route.healthz, .metrics] {  // uptime checkers and `curl -I` (RFC 9110 §9.3.2)
            XCTAssertTrue(route.allows(.head) && route.allows(.get) && !route.allows(.post))
            XCTAssertEqual("\(route.allow)", "GET, HEAD")
        }
        XCTAssertFalse(Route.sessions.allows(.head), "HEAD is for what GET only reads")
    }

    func testSplit() {
        let (p, q) = Router.split(Array("/mud?id=x&cmd=look#frag".utf8))
        XCTAssertEqual(String(decoding: p, as: UTF8.self), "/mud")
        XCTAssertEqual(String(decoding: q, as: UTF8.self), "id=x&cmd=look")
        let (p2, q2) = Router.split(Array("/healthz".utf8))
        XCTAssertEqual(String(decoding: p2, as: UTF8.self), "/healthz")
        XCTAssertTrue(q2.isEmpty)
    }
}

final class ParameterTests: XCTestCase {
    func params(_ q: String, form: String? = nil) -> Parameters {
        Parameters(query: Array(q.utf8)[...], form: form.map { Array($0.utf8)[...] })
    }

    func testLookupAndDecoding() {
        let p = params("a=1&cmd=say+hello%21&empty=&flag")
        XCTAssertEqual(p.string("cmd"), "say hello!")
        XCTAssertEqual(p.string("empty"), "")
        XCTAssertEqual(p.string("flag"), "")
        XCTAssertNil(p.string("missing"))
        XCTAssertTrue(p.flag("flag"))
        XCTAssertFalse(params("raw=0").flag("raw"))
        XCTAssertTrue(params("raw=1").flag("raw"))
    }

    func testQueryWinsOverForm() {
        let p = params("cmd=fromquery", form: "cmd=fromform&x=2")
        XCTAssertEqual(p.string("cmd"), "fromquery")
        XCTAssertEqual(p.string("x"), "2")
        XCTAssertEqual(p.rawForm("cmd").map { String(decoding: $0, as: UTF8.self) }, "fromform")
    }

    func testNameMustMatchWhole() {
        XCTAssertNil(params("since2=5").unsigned("since"))
        XCTAssertNil(params("xsince=5").unsigned("since"))
    }

    func testUnsigned() {
        XCTAssertEqual(try params("since=42").unsigned("since")?.get(), 42)
        XCTAssertEqual(try params("since=0").unsigned("since")?.get(), 0)
        XCTAssertEqual(try params("since=9223372036854775807").unsigned("since")?.get(), 9_223_372_036_854_775_807)
        // Found by Schemathesis: the document says int64 (what clients hold offsets in), and the
        // daemon took 2^63 and more (a `seq` that high would then refuse every later command).
        for bad in ["-1", "abc", "", "1.5", "99999999999999999999999", "9223372036854775808", "18446744073709551615",
                    "%2D1", "%31%", "%3"] {
            XCTAssertThrowsError(try params("since=\(bad)").unsigned("since")?.get(), bad)
        }
        // Percent-encoded digits are the same digits (RFC 3986 §2.3; found by a SPEC audit: 400).
        XCTAssertEqual(try params("since=%31").unsigned("since")?.get(), 1)
        XCTAssertEqual(try params("since=4%32").unsigned("since")?.get(), 42)
        XCTAssertEqual(try params("wait=%30.5").milliseconds("wait")?.get(), 500)
        XCTAssertEqual(try params("wait=%31e0").milliseconds("wait")?.get(), 1000)
        // Decoded once: `%2531` is the text `%31`, not a digit (found by reviewing the fuzz reference).
        for twice in ["%2531", "%2531e0", "1e%252B3", "%2530.5"] {
            XCTAssertThrowsError(try params("wait=\(twice)").milliseconds("wait")?.get(), twice)
            XCTAssertThrowsError(try params("since=\(twice)").unsigned("since")?.get(), twice)
        }
    }

    func testSeconds() {
        XCTAssertEqual(try params("wait=2").milliseconds("wait")?.get(), 2000)
        XCTAssertEqual(try params("wait=0.5").milliseconds("wait")?.get(), 500)
        XCTAssertEqual(try params("wait=.25").milliseconds("wait")?.get(), 250)
        XCTAssertEqual(try params("wait=1.2345").milliseconds("wait")?.get(), 1234)
        XCTAssertEqual(try params("wait=3.").milliseconds("wait")?.get(), 3000)
        XCTAssertEqual(try params("wait=99999999999999999999999.5").milliseconds("wait")?.get(), 1_000_000_000_500,
                       "huge waits saturate; max-wait caps them")
        // Found by Schemathesis: a number as JSON, JavaScript or Python write it may have an
        // exponent (`1e-05`, `2.5e+3`): the same seconds.
        XCTAssertEqual(try params("wait=1e3").milliseconds("wait")?.get(), 1_000_000)
        XCTAssertEqual(try params("wait=2.5E%2B3").milliseconds("wait")?.get(), 2_500_000, "%2B is +")
        XCTAssertEqual(try params("wait=1e-05").milliseconds("wait")?.get(), 0)
        XCTAssertEqual(try params("wait=1.5e-3").milliseconds("wait")?.get(), 1)
        XCTAssertEqual(try params("wait=2.2250738585072014e-308").milliseconds("wait")?.get(), 0)
        XCTAssertEqual(try params("wait=9.016358172656226e%2B307").milliseconds("wait")?.get(), 1_000_000_000_000,
                       "saturates as huge whole numbers do")
        for bad in ["-1", "x", "", ".", "1.2.3", "-1e3", "1e", "e3", "inf", "nan", "0x1p3", "1e3x", "1e%2B", "1e99999"] {
            XCTAssertThrowsError(try params("wait=\(bad)").milliseconds("wait")?.get(), bad)
        }
    }

    /// Found by Schemathesis: `?seq=1` with a form body's `seq=9223372036854775808` was taken (the
    /// query wins, and the form's value went unread). A malformed parameter is 400 also where
    /// another wins over it; a well-formed one that loses is still ignored.
    func testAFormValueTheQueryOverridesMustBeWellFormed() throws {
        XCTAssertEqual(try params("seq=1", form: "seq=2").unsigned("seq")?.get(), 1)
        XCTAssertThrowsError(try params("seq=1", form: "seq=9223372036854775808").unsigned("seq")?.get())
        XCTAssertThrowsError(try params("wait=1", form: "wait=-1").milliseconds("wait")?.get())
        XCTAssertEqual(try params("raw=1", form: "raw=no").boolean("raw")?.get(), true)
        XCTAssertThrowsError(try params("raw=1", form: "raw=maybe").boolean("raw")?.get())
        XCTAssertEqual(try params("", form: "seq=3").unsigned("seq")?.get(), 3, "the form alone")
        XCTAssertThrowsError(try params("since=x").unsigned("since")?.get())
        XCTAssertTrue(params("raw=1", form: "raw=maybe").flag("raw"), "flag reads the winning value only")
        // And its bounds: seq=0 in the form beside seq=1 in the query (Schemathesis again).
        XCTAssertThrowsError(try params("seq=1", form: "seq=0").unsigned("seq", atLeast: 1)?.get())
        XCTAssertEqual(params("seq=0").unsigned("seq", atLeast: 1), .failure(ParameterError("seq must be at least 1")))
        XCTAssertEqual(try params("max=1").unsigned("max", atLeast: 1)?.get(), 1)
    }

    func testBadPercentEscapesAreKept() {
        XCTAssertEqual(params("cmd=100%").string("cmd"), "100%")
        XCTAssertEqual(params("cmd=%zz").string("cmd"), "%zz")
    }
}

final class LineEndingTests: XCTestCase {
    func terminated(_ s: String) -> String {
        let bytes = Array(s.utf8)
        let (keep, crlf) = LineEnding.terminate(bytes)
        return String(decoding: bytes[0..<keep], as: UTF8.self) + (crlf ? "\r\n" : "")
    }

    func testCRLFRule() {
        XCTAssertEqual(terminated("look\r\n"), "look\r\n")
        XCTAssertEqual(terminated("look\n"), "look\r\n")
        XCTAssertEqual(terminated("look"), "look\r\n")
        XCTAssertEqual(terminated(""), "\r\n")
        XCTAssertEqual(terminated("\n"), "\r\n")
        XCTAssertEqual(terminated("a\rb"), "a\rb\r\n")
        XCTAssertEqual(terminated("two\nlines\n"), "two\nlines\r\n")
    }
}

final class SessionIDTests: XCTestCase {
    func testRoundTripAndShape() {
        for _ in 0..<1000 {
            let id = SessionID.random()
            let text = id.description
            XCTAssertEqual(text.count, 22)
            XCTAssertTrue(text.utf8.allSatisfy { Router.isIDSyntax([$0][...]) })
            XCTAssertEqual(SessionID(text: Array(text.utf8)), id)
        }
    }

    func testIDsDiffer() {
        let ids = Set((0..<10_000).map { _ in SessionID.random() })
        XCTAssertEqual(ids.count, 10_000)
    }

    func testRejectsOtherShapes() {
        XCTAssertNil(SessionID(text: Array("short".utf8)))
        XCTAssertNil(SessionID(text: Array(String(repeating: "A", count: 21).utf8) + [UInt8(ascii: "B")]),
                     "non-canonical last character (low bits set)")
        XCTAssertNil(SessionID(text: Array(String(repeating: "A", count: 21).utf8) + [UInt8(ascii: "!")]))
        XCTAssertNotNil(SessionID(text: Array(String(repeating: "A", count: 22).utf8)))
    }
}

final class OutputBufferTests: XCTestCase {
    /// A stream's connection frees its head buffer; one that appends after that grows again.
    func testAppendsAfterReleaseGrowAgain() {
        let b = OutputBuffer(capacity: 4)
        b.append("HTTP/1.1 200 OK\r\n")
        b.release()
        XCTAssertEqual(b.count, 0)
        b.append("x")
        b.appendDecimal(12345)
        XCTAssertEqual(String(decoding: Array(b.bytes), as: UTF8.self), "x12345")
    }

    func testDecimals() {
        let b = OutputBuffer(capacity: 4)
        for n: UInt64 in [0, 7, 9, 10, 42, 99, 100, 101, 999, 1000, 65_536, 1_000_000, 123_456_789, UInt64.max] {
            b.removeAll()
            b.appendDecimal(n)
            XCTAssertEqual(String(decoding: Array(b.bytes), as: UTF8.self), String(n))
        }
    }
}
