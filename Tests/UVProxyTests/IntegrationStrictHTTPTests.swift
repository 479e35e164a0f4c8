import Foundation
import XCTest
@testable import UVProxy

/// SPEC §2, last paragraph: strict framing (RFC 9112), whatever leniency the system's
/// http_parser was built with (Debian builds it with HTTP_PARSER_STRICT=0).
final class IntegrationStrictHTTPTests: XCTestCase {

    /// Sends `text` on a fresh connection and checks the answer is `status` with the JSON error
    /// body, `Connection: close`, and the connection closed.
    private func assertRejected(_ d: TestDaemon, _ text: String, _ status: Int = 400,
                                file: StaticString = #filePath, line: UInt = #line) throws {
        let c = try d.client()
        try c.socket.send(text)
        let r = try c.readResponse()
        assertConforms(r, text.debugDescription, file: file, line: line)
        XCTAssertEqual(r.status, status, "\(text.debugDescription): \(r.text)", file: file, line: line)
        XCTAssertEqual(r.header("Connection")?.lowercased(), "close", text.debugDescription, file: file, line: line)
        XCTAssertTrue(c.isClosedByServer(), "connection closed after \(text.debugDescription)", file: file, line: line)
    }

    private func input(_ id: String, _ headers: String, _ body: String) -> String {
        "POST /sessions/\(id)/input HTTP/1.1\r\nHost: x\r\n\(headers)\r\n\(body)"
    }

    // MARK: The reproductions of issue 9, point 1

    func testSpaceBeforeColonInTransferEncodingIs400() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let id = try d.client().createSession()
        try assertRejected(d, input(id, "Transfer-Encoding : chunked\r\n", "2\r\nhi\r\n0\r\n\r\n"))
        // The same spelling no longer slips a second Transfer-Encoding past the duplicate check.
        try assertRejected(d, input(id, "Transfer-Encoding: chunked\r\nTransfer-Encoding : chunked\r\n",
                                    "2\r\nhi\r\n0\r\n\r\n"))
        XCTAssertFalse(try up.connection(0).isReadable(within: 0.2), "no body reached the target")
    }

    func testSpaceBeforeColonInContentLengthIs400() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let id = try d.client().createSession()
        try assertRejected(d, input(id, "Content-Length : 3\r\n", "hi!"))
        XCTAssertFalse(try up.connection(0).isReadable(within: 0.2), "no body reached the target")
    }

    /// RFC 9112 §6.1: a transfer coding the server does not know is `501` (found by a SPEC audit:
    /// `gzip, chunked` was taken as chunked and the input sent); without chunked last, `400`.
    func testATransferCodingBesidesChunkedIs501() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let id = try d.client().createSession()
        try assertRejected(d, input(id, "Transfer-Encoding: gzip, chunked\r\n", "4\r\nlook\r\n0\r\n\r\n"), 501)
        try assertRejected(d, input(id, "Transfer-Encoding: gzip\r\n", "look"))
        XCTAssertFalse(try up.connection(0).isReadable(within: 0.2), "no input reached the target")
        let c = try d.client()
        try c.socket.send(input(id, "Transfer-Encoding: Chunked\r\n", "4\r\nlook\r\n0\r\n\r\n"))
        XCTAssertEqual(try c.readResponse().status, 204, "chunked in any case")
    }

    func testHeaderNameWithSpaceIs400() throws {
        let d = try startDaemon()
        try assertRejected(d, "GET /healthz HTTP/1.1\r\nHost: x\r\nX Forwarded: 1\r\n\r\n")
    }

    /// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or with a value that is not
    /// `uri-host [":" port]`, is `400` (found by a SPEC audit: served, or `403`); HTTP/1.0
    /// without one is served (SPEC §5).
    func testHTTP11WithoutHostOrWithAnInvalidHostIs400() throws {
        let d = try startDaemon()
        try assertRejected(d, "GET /healthz HTTP/1.1\r\n\r\n")
        for bad in ["local host", "evil@localhost", "localhost:80x", "[::1", "a/b", "[]"] {
            try assertRejected(d, "GET /healthz HTTP/1.1\r\nHost: \(bad)\r\n\r\n")
        }
        let c = try d.client()
        try c.socket.send("GET /healthz HTTP/1.0\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 200, "HTTP/1.0 without Host")
        for good in ["localhost", "localhost:8080", "127.0.0.1:1", "[::1]:80", "LOCALHOST."] {
            let c = try d.client()
            try c.socket.send("GET /healthz HTTP/1.1\r\nHost: \(good)\r\n\r\n")
            XCTAssertEqual(try c.readResponse().status, 200, good)
        }
    }

    /// RFC 9112 §3.2.2: a server must accept an absolute-form target; its authority is the
    /// request's host (found by a SPEC audit: `GET http://localhost/healthz` was 404).
    func testAbsoluteFormTargetIsServedWithItsAuthorityAsHost() throws {
        let d = try startDaemon()
        for (target, status) in [("http://localhost/healthz", 200), ("HTTP://127.0.0.1:80/metrics", 200),
                                 ("https://localhost/healthz?x=1", 200), ("http://evil.example/metrics", 403),
                                 ("http://localhost", 404)] {
            let c = try d.client()
            try c.socket.send("GET \(target) HTTP/1.1\r\nHost: localhost\r\n\r\n")
            let r = try c.readResponse()
            assertConforms(r, target)
            XCTAssertEqual(r.status, status, "\(target): \(r.text)")
        }
        try assertRejected(d, "GET http://evil@localhost/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    }

    func testRequestLineWithoutVersionIs400() throws {
        let d = try startDaemon()
        try assertRejected(d, "GET /healthz\r\n\r\n")
        try assertRejected(d, "GET /healthz\r\nHost: x\r\n\r\n")
    }

    /// Found by Schemathesis (scripts/api-test): `QUERY /sessions HTTP/1.1`, a well-formed
    /// request with a method http_parser does not know, was answered `400 malformed request`.
    /// A method is any token (RFC 9110 §9.1): a wrong one is `405` with `Allow` (SPEC §2), as
    /// for the methods http_parser knows; the connection still closes after it, since the parser
    /// cannot tell where such a request ends.
    func testUnknownMethodIs405WithAllow() throws {
        let d = try startDaemon()
        for (method, path, allow) in [("QUERY", "/sessions", "POST"), ("QUERY", "/sessions/abc?x=1", "GET, DELETE"),
                                      ("FROB", "/healthz", "GET, HEAD"), ("QUERY", "/openapi.yaml", "GET, HEAD")] {
            let c = try d.client()
            try c.socket.send("\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nhi")
            let r = try c.readResponse()
            assertConforms(r, "\(method) \(path)")
            XCTAssertEqual(r.status, 405, "\(method) \(path): \(r.text)")
            XCTAssertEqual(r.header("Allow"), allow, "\(method) \(path)")
            XCTAssertEqual(r.header("Connection")?.lowercased(), "close")
            XCTAssertTrue(c.isClosedByServer())
        }
        let c = try d.client()
        try c.socket.send("QUERY /nope HTTP/1.1\r\nHost: localhost\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 404, "an unknown path is still 404")
        // Not a method at all (a TLS ClientHello's first bytes): still a malformed request.
        try assertRejected(d, "\u{16}\u{03}\u{01} / HTTP/1.1\r\n\r\n")
        XCTAssertEqual(try d.client().call("GET", "/healthz").text, "ok")
    }

    /// A request line with an unknown method that comes in pieces is held until its CRLF (then
    /// `405` as when it comes whole), under the header clock meanwhile (`408`).
    func testUnknownMethodInPiecesIs405AndHeldUnderTheHeaderClock() throws {
        let d = try startDaemon()
        let c = try d.client()
        try c.socket.send("QUE")
        XCTAssertFalse(c.socket.isReadable(within: 0.2), "no answer before the line has come")
        try c.socket.send("RY /sessi")
        XCTAssertFalse(c.socket.isReadable(within: 0.2), "no answer before the line has come")
        try c.socket.send("ons HTTP/1.1\r\nHost: localhost\r\n\r\n")
        let r = try c.readResponse()
        assertConforms(r)
        XCTAssertEqual(r.status, 405, r.text)
        XCTAssertEqual(r.header("Allow"), "POST")

        try d.onLoop { $0.server.limits.headerTimeoutMs = 300 }
        let slow = try d.client()
        let start = Date()
        try slow.socket.send("QUERY /sessi")
        let late = try slow.readResponse()
        XCTAssertEqual(late.status, 408, late.text)
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
        XCTAssertTrue(slow.isClosedByServer())
    }

    func testUnknownVersionIs505() throws {
        let d = try startDaemon()
        for version in ["9.9", "2.0", "1.2", "3.0"] {
            try assertRejected(d, "GET /healthz HTTP/\(version)\r\nHost: x\r\n\r\n", 505)
        }
    }

    // MARK: The rest of SPEC §2's list

    func testHeaderNameThatIsNotATokenIs400() throws {
        let d = try startDaemon()
        for name in ["X\tTab", "X\u{1}Ctl", "X\u{7f}Del", "X@At", "X(Paren)", "X\"Q\"", "X/Slash", "X[1]", "X{1}",
                     "Éclair", ""] {
            try assertRejected(d, "GET /healthz HTTP/1.1\r\nHost: x\r\n\(name): 1\r\n\r\n")
        }
    }

    func testFoldedHeaderLineIs400() throws {
        let d = try startDaemon()
        try assertRejected(d, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: one\r\n two\r\n\r\n")
        try assertRejected(d, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: one\r\n\ttwo\r\n\r\n")
        // Whitespace between the request line and the first header is a fold of nothing.
        try assertRejected(d, "GET /healthz HTTP/1.1\r\n Host: x\r\n\r\n")
    }

    func testNULInAHeaderIs400() throws {
        let d = try startDaemon()
        try assertRejected(d, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\u{0}b\r\n\r\n")
        try assertRejected(d, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-\u{0}A: ab\r\n\r\n")
        try assertRejected(d, "GET /healthz\u{0} HTTP/1.1\r\nHost: x\r\n\r\n")
    }

    func testBareCRInAHeaderIs400() throws {
        let d = try startDaemon()
        try assertRejected(d, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n")
        try assertRejected(d, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: ab\r\rX-B: c\r\n\r\n")
        try assertRejected(d, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-\rA: ab\r\n\r\n")
        try assertRejected(d, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: ab\r\n\r\r\n")
        try assertRejected(d, "GET /healthz HTTP/1.1\rHost: x\r\n\r\n")
    }

    func testContentLengthWithTransferEncodingIs400() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let id = try d.client().createSession()
        try assertRejected(d, input(id, "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", "2\r\nhi\r\n0\r\n\r\n"))
        try assertRejected(d, input(id, "Transfer-Encoding: chunked\r\nContent-Length: 9\r\n", "2\r\nhi\r\n0\r\n\r\n"))
        try assertRejected(d, input(id, "Transfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n", "2\r\nhi\r\n0\r\n\r\n"))
        XCTAssertFalse(try up.connection(0).isReadable(within: 0.2), "no body reached the target")
    }

    func testMoreThanOneHostIs400() throws {
        let d = try startDaemon()
        try assertRejected(d, "GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")
    }

    // MARK: What stays accepted

    func testWellFormedRequestsStillServed() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let id = try c.createSession()
        // Every tchar in a name; tabs, obs-text and spaces in values; no space after the colon;
        // an empty value; empty lines before the request line; bare LF line ends (RFC 9112 §2.2).
        let names = "!#$%&'*+-.^_`|~0123456789AZaz"
        for text in [
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\(names): 1\r\n\r\n",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A:\tone\ttwo \u{e9} \r\nX-B:\r\nX-C:c\r\n\r\n",
            "\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /healthz HTTP/1.1\nHost: x\nX-A: 1\n\n",
        ] {
            let r = try c.raw(text)
            XCTAssertEqual(r.status, 200, "\(text.debugDescription): \(r.text)")
        }
        // A body is never scanned as headers: control bytes and colons in it are data.
        let body = "cmd=a%00b: \u{1}\r\n folded"
        let r = try c.raw(input(id, "Content-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n", body))
        XCTAssertEqual(r.status, 204, r.text)
        XCTAssertEqual(try up.connection(0).receive(exactly: body.utf8.count + 2), Array((body + "\r\n").utf8))
        // Pipelined requests behind a body are checked from their own first byte.
        try c.socket.send(input(id, "Content-Length: 3\r\n", "abc") + "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                          + "GET /healthz HTTP/1.1\r\nBad Name: 1\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 204)
        XCTAssertEqual(try c.readResponse().status, 200)
        let bad = try c.readResponse()
        XCTAssertEqual(bad.status, 400, bad.text)
        XCTAssertTrue(c.isClosedByServer())
    }
}
