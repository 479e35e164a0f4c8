import Foundation
import XCTest
@testable import UVProxy

/// SPEC §6: the PROXY protocol in (`--accept-proxy-protocol`) and out (`proxy-protocol` per target).
final class IntegrationProxyProtocolTests: XCTestCase {
    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    /// A v2 PROXY header for TCP over IPv4 (or LOCAL with `local`).
    static func v2(_ source: [UInt8], _ sourcePort: UInt16, local: Bool = false) -> [UInt8] {
        if local { return v2Signature + [0x20, 0x00, 0x00, 0x00] }
        return v2Signature + [0x21, 0x11, 0x00, 12] + source + [127, 0, 0, 1]
            + [UInt8(sourcePort >> 8), UInt8(sourcePort & 0xFF), 0x1F, 0x90]
    }

    /// A connection that sends `header`, then one request; the response (status 0: closed unanswered).
    private func call(_ port: Int, header: [UInt8], _ request: String) throws -> TestResponse {
        let s = try TestSocket.connect(port: port)
        let c = HTTPTestClient(socket: s, port: port)
        try s.send(header + Array(request.utf8))
        return (try? c.readResponse()) ?? TestResponse(status: 0, headers: [], body: [])
    }

    private let create = "POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"

    func testTheHeadersSourceIsTheClientEverywhere() throws {
        let up = try startUpstream()
        let log = LogCapture()
        let d = try startDaemon(log: log) {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.acceptProxyProtocol = true
            $0.maxSessionsPerClient = 1
        }
        let port = d.listenPort
        let v1 = Array("PROXY TCP4 203.0.113.7 127.0.0.1 40000 8181\r\n".utf8)
        XCTAssertEqual(try call(port, header: v1, create).status, 201)
        let created = try XCTUnwrap(log.wait(for: "session created"))
        XCTAssertEqual(created["client"] as? String, "203.0.113.7:40000", "the log names the header's source")
        // The per-client limit counts by the header's source, not by the TCP peer (all 127.0.0.1).
        let again = Array("PROXY TCP4 203.0.113.7 127.0.0.1 40001 8181\r\n".utf8)
        XCTAssertEqual(try call(port, header: again, create).status, 429)
        XCTAssertEqual(try call(port, header: Self.v2([203, 0, 113, 8], 40002), create).status, 201,
                       "another client (a v2 header)")
        // v2 LOCAL (a balancer's health check) and v1 UNKNOWN: the TCP peer is the client.
        XCTAssertEqual(try call(port, header: Self.v2([], 0, local: true), create).status, 201)
        XCTAssertEqual(try call(port, header: Array("PROXY UNKNOWN\r\n".utf8), create).status, 429,
                       "UNKNOWN is the TCP peer too, which already has its one session")
    }

    /// A v2 header with TLVs up to 4 KiB in all is taken, as nginx takes (a balancer's TLVs:
    /// certificate details, ids; skipped unread, so the size costs no memory); past it, refused.
    func testAV2HeaderWithTLVsUpTo4KiBIsTaken() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.acceptProxyProtocol = true
        }
        func header(tlvBytes: Int) -> [UInt8] {
            let length = 12 + tlvBytes
            let tlv: [UInt8] = [0xE0, UInt8((tlvBytes - 3) >> 8), UInt8((tlvBytes - 3) & 0xFF)] + [UInt8](repeating: 0x61, count: tlvBytes - 3)
            return Self.v2Signature + [0x21, 0x11, UInt8(length >> 8), UInt8(length & 0xFF), 203, 0, 113, 20, 127, 0, 0, 1,
                                       0x9C, 0x40, 0x1F, 0x90] + tlv
        }
        XCTAssertEqual(try call(d.listenPort, header: header(tlvBytes: 4096 - 28), create).status, 201, "4096 bytes in all")
        XCTAssertEqual(try call(d.listenPort, header: header(tlvBytes: 4097 - 28), create).status, 0, "4097: refused, closed")
    }

    func testAnIPv4MappedSourceIsTheIPv4Client() throws {
        let up = try startUpstream()
        let log = LogCapture()
        let d = try startDaemon(log: log) {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.acceptProxyProtocol = true
        }
        let mapped = Array("PROXY TCP6 ::ffff:203.0.113.9 ::1 40010 8181\r\n".utf8)
        XCTAssertEqual(try call(d.listenPort, header: mapped, create).status, 201)
        let created = try XCTUnwrap(log.wait(for: "session created"))
        XCTAssertEqual(created["client"] as? String, "203.0.113.9:40010", "a dual-stack balancer's IPv4 client")
    }

    func testAConnectionWithoutAValidHeaderIsClosedUnanswered() throws {
        let d = try startDaemon { $0.acceptProxyProtocol = true }
        let port = d.listenPort
        for bad in ["GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "PROXY TCP4 1.2.3.4\r\n", "PROXY TCP4 256.1.1.1 1.1.1.1 1 2\r\n",
                    "proxy TCP4 1.2.3.4 1.1.1.1 1 2\r\n"] {
            let r = try call(port, header: [], bad + "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertEqual(r.status, 0, "\(bad.debugDescription): closed without a response")
        }
        let ok = try call(port, header: Self.v2([], 0, local: true), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        XCTAssertEqual(ok.status, 200)
        XCTAssertTrue(ok.text.contains("\nuvproxyd_proxy_header_errors_total 4\n"), ok.text)
    }

    func testAHeaderNotCompleteInTimeClosesTheConnection() throws {
        let d = try startDaemon { $0.acceptProxyProtocol = true }
        try d.onLoop { $0.server.limits.headerTimeoutMs = 300 }
        let s = try TestSocket.connect(port: d.listenPort)
        try s.send("PROXY TCP4 1.2.3.4 ")
        let start = Date()
        XCTAssertEqual(try s.receive(), [], "closed")
        let waited = Date().timeIntervalSince(start)
        XCTAssertGreaterThan(waited, 0.2)
        XCTAssertLessThan(waited, 5)
    }

    func testTheTargetGetsAHeaderNamingThePlayerFirst() throws {
        let up = try startUpstream(greeting: "hi\r\n")
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.proxyProtocol = .v1
            $0.targets["v2"] = TargetConfig(address: "127.0.0.1:\(up.port)", proxyProtocol: .v2)
            $0.targets["plain"] = TargetConfig(address: "127.0.0.1:\(up.port)")
        }
        // v1, default target: source = this client's own address and port.
        let c = try d.client()
        let clientPort = try XCTUnwrap(c.socket.localPort)
        let id = try c.createSession()
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input", body: "look").status, 204)
        let target = try up.connection(0)
        let expected = "PROXY TCP4 127.0.0.1 127.0.0.1 \(clientPort) \(up.port)\r\nlook\r\n"
        XCTAssertEqual(String(decoding: try target.receive(exactly: expected.utf8.count), as: UTF8.self), expected,
                       "the header, then the session's input")

        // v2, a named target: parsed back, the same endpoints.
        _ = try c.createSession(target: "v2")
        let second = try up.connection(1)
        var parser = ProxyHeaderParser()
        let bytes = try second.receive(exactly: 28)
        let outcome = bytes.withUnsafeBytes { parser.feed($0) }
        XCTAssertEqual(outcome, .done(.proxied(source: .init(address: [127, 0, 0, 1], port: UInt16(clientPort)),
                                               destination: .init(address: [127, 0, 0, 1], port: UInt16(up.port))),
                                      consumed: 28))

        // A target without the setting (named targets do not inherit it) gets nothing first.
        let plainID = try c.createSession(target: "plain")
        XCTAssertEqual(try c.call("POST", "/sessions/\(plainID)/input", body: "hello").status, 204)
        XCTAssertEqual(try up.connection(2).receive(exactly: 7), Array("hello\r\n".utf8))
    }

    /// The header goes to the kernel inside the create, before the connect completes (a game on
    /// this host gets it with the connection); where the kernel cannot take it yet (a handshake
    /// still under way: the early send is turned off here to make that path run) it waits for
    /// the connection and still comes first, whole, before the session's input.
    func testTheHeaderComesFirstWhetherSentEarlyOrOnceConnected() throws {
        for early in [true, false] {
            TCPStream.sendsFirstBytesEarly = early
            defer { TCPStream.sendsFirstBytesEarly = true }
            let up = try startUpstream()
            let d = try startDaemon {
                $0.upstream = "127.0.0.1:\(up.port)"
                $0.proxyProtocol = .v1
            }
            let c = try d.client()
            let clientPort = try XCTUnwrap(c.socket.localPort)
            let id = try c.createSession()
            XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input", body: "look").status, 204)
            let expected = "PROXY TCP4 127.0.0.1 127.0.0.1 \(clientPort) \(up.port)\r\nlook\r\n"
            XCTAssertEqual(String(decoding: try up.connection(0).receive(exactly: expected.utf8.count), as: UTF8.self),
                           expected, "early send: \(early)")
        }
    }

    /// A target that refuses the connection fails the create (502) with a header to send too:
    /// the early send must not take the refusal for itself and leave libuv a connected socket.
    func testARefusedTargetWithAHeaderFailsTheCreate() throws {
        let port = try refusedPort()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(port)"
            $0.proxyProtocol = .v2
        }
        let c = try d.client()
        for _ in 0..<20 {
            let r = try c.call("POST", "/sessions")
            XCTAssertEqual(r.status, 502, r.text)
        }
    }

    func testTheHeaderOutCarriesTheClientFromTheHeaderIn() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.acceptProxyProtocol = true
            $0.proxyProtocol = .v1
        }
        let header = Array("PROXY TCP6 2001:db8::7 ::1 50000 8181\r\n".utf8)
        XCTAssertEqual(try call(d.listenPort, header: header, create).status, 201)
        // An IPv6 client, an IPv4 target: the target's end is written IPv4-mapped, in TCP6.
        let expected = "PROXY TCP6 2001:db8::7 ::ffff:127.0.0.1 50000 \(up.port)\r\n"
        XCTAssertEqual(String(decoding: try up.connection(0).receive(exactly: expected.utf8.count), as: UTF8.self), expected)
    }

    func testWithTrustProxyTheForwardedClientIsTheSource() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.trustProxy = true
            $0.proxyProtocol = .v1
        }
        let c = try d.client()
        XCTAssertEqual(try c.call("POST", "/sessions", headers: ["X-Forwarded-For": "10.9.8.7, 198.51.100.4"]).status, 201)
        let expected = "PROXY TCP4 198.51.100.4 127.0.0.1 0 \(up.port)\r\n"
        XCTAssertEqual(String(decoding: try up.connection(0).receive(exactly: expected.utf8.count), as: UTF8.self), expected)
        // Not an IP address: the client is unknown, and the header says so.
        XCTAssertEqual(try c.call("POST", "/sessions", headers: ["X-Forwarded-For": "unknown"]).status, 201)
        XCTAssertEqual(try up.connection(1).receive(exactly: 15), Array("PROXY UNKNOWN\r\n".utf8))
        // Found by a SPEC audit: an entry with a port (as Azure's front ends write it), or a list
        // ending in an empty entry, was an unknown client. The address is what counts.
        for (n, (forwarded, source)) in [("10.9.8.7, 198.51.100.4:5555", "198.51.100.4"),
                                         ("198.51.100.5, ", "198.51.100.5"),
                                         ("[2001:db8::9]:443", "2001:db8::9"), ("2001:db8::8", "2001:db8::8")].enumerated() {
            XCTAssertEqual(try c.call("POST", "/sessions", headers: ["X-Forwarded-For": forwarded]).status, 201)
            let family = source.contains(":") ? "TCP6" : "TCP4"
            let target = source.contains(":") ? "::ffff:127.0.0.1" : "127.0.0.1"
            let line = "PROXY \(family) \(source) \(target) 0 \(up.port)\r\n"
            XCTAssertEqual(String(decoding: try up.connection(2 + n).receive(exactly: line.utf8.count), as: UTF8.self), line,
                           forwarded)
        }
    }
}
