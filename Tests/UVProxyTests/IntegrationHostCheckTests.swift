import Foundation
import XCTest
@testable import UVProxy

/// SPEC §5, DNS rebinding: with no token and a loopback listen address, only requests for
/// localhost, a loopback address or an `--allowed-host` name are served.
final class IntegrationHostCheckTests: XCTestCase {

    func testForeignHostIs403ButHealthzAndLoopbackNamesAreServed() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.allowedHosts = []
            $0.web = true
        }
        let c = try d.client()
        let evil = ["Host": "attacker.example:\(d.listenPort)"]
        for (method, path) in [("POST", "/sessions"), ("GET", "/metrics"), ("GET", "/"), ("GET", "/mud"),
                               ("GET", "/sessions/abc"), ("GET", "/nope")] {
            let r = try c.call(method, path, headers: evil)
            XCTAssertEqual(r.status, 403, "\(method) \(path): \(r.text)")
            XCTAssertTrue(r.json?["error"] as? String ?? "" != "", r.text)
        }
        XCTAssertEqual(try c.call("GET", "/healthz", headers: evil).status, 200, "/healthz is excepted")
        XCTAssertEqual(try c.call("GET", "/healthz", headers: ["Host": "x"]).status, 200)
        XCTAssertEqual(up.connectionCount, 0, "no session was created for the foreign Host")

        for host in ["localhost", "LOCALHOST:\(d.listenPort)", "127.0.0.1:\(d.listenPort)", "127.3.4.5", "[::1]:\(d.listenPort)"] {
            XCTAssertEqual(try c.call("GET", "/metrics", headers: ["Host": host]).status, 200, host)
        }
        XCTAssertEqual(try c.call("POST", "/sessions", headers: ["Host": "localhost:\(d.listenPort)"]).status, 201)

        // HTTP/1.0 without Host is served.
        let old = try d.client()
        let r = try old.raw("GET /metrics HTTP/1.0\r\n\r\n")
        XCTAssertEqual(r.status, 200, r.text)
    }

    /// Cross-site WebSocket hijacking: a browser lets any page open a WebSocket to the proxy
    /// (no same-origin rule for WebSocket), and without a token the proxy trusts whoever reaches
    /// it; the page's `Origin` is held to the Host check's names (and `--cors-origin`). A page
    /// of any site could create sessions and play through a player's local proxy.
    func testAWebSocketFromAPageOfAnotherSiteIsRefusedWithoutAToken() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.allowedHosts = ["mud.example.org"]
            $0.corsOrigin = "https://client.example.net"
        }
        func status(_ origin: String?) throws -> Int {
            var headers = ["Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="]
            if let origin { headers["Origin"] = origin }
            return try WebSocketTestClient(port: d.listenPort, path: "/ws", headers: headers).status
        }
        for origin in ["http://attacker.example", "https://attacker.example:\(d.listenPort)", "null", "http://localhost.attacker.example"] {
            XCTAssertEqual(try status(origin), 403, origin)
        }
        XCTAssertEqual(up.connectionCount, 0, "no session was created for them")
        for origin in [nil, "http://localhost:3000", "http://127.0.0.1:\(d.listenPort)", "https://MUD.example.org",
                       "https://client.example.net", "http://[::1]:8080"] {
            XCTAssertEqual(try status(origin), 101, origin ?? "no Origin (not a browser)")
        }
        let withToken = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.token = "t"
        }
        let ws = try WebSocketTestClient(port: withToken.listenPort, path: "/ws?token=t", headers: [
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": "https://anywhere.example",
        ])
        XCTAssertEqual(ws.status, 101, "with a token, the token is the check")
    }

    func testAllowedHostsAndTokenTurnTheCheckOff() throws {
        let d = try startDaemon { $0.allowedHosts = ["Mud.Example.org"] }
        let c = try d.client()
        XCTAssertEqual(try c.call("GET", "/metrics", headers: ["Host": "mud.example.ORG:8181"]).status, 200)
        XCTAssertEqual(try c.call("GET", "/metrics", headers: ["Host": "x"]).status, 403, "the test default replaced")

        let t = try startDaemon {
            $0.allowedHosts = []
            $0.token = "s3cret"
        }
        let auth = ["Host": "attacker.example", "Authorization": "Bearer s3cret"]
        XCTAssertEqual(try t.client().call("GET", "/metrics", headers: auth).status, 200, "a token replaces the check")
    }

    func testNonLoopbackListenAddressHasNoCheck() throws {
        // Any non-loopback address this machine has would do; 0.0.0.0 is one, but binding it is
        // not loopback-only, so the test stays on 127.0.0.1 and checks the decision instead.
        var config = ProxyConfig()
        config.allowedHosts = ["a"]
        XCTAssertNotNil(try config.apiSettings(listenIsLoopback: true).hostCheck)
        XCTAssertNil(try config.apiSettings(listenIsLoopback: false).hostCheck)
        config.token = "t"
        XCTAssertNil(try config.apiSettings(listenIsLoopback: true).hostCheck)
    }

    func testReloadChangesTokenAndAllowedHosts() throws {
        let d = try startDaemon { $0.allowedHosts = [] }
        let c = try d.client()
        let game = ["Host": "game.example"]
        XCTAssertEqual(try c.call("GET", "/metrics", headers: game).status, 403)

        var new = try d.onLoop { $0.config }
        new.allowedHosts = ["game.example"]
        try d.onLoop { try $0.apply(new) }
        XCTAssertEqual(try c.call("GET", "/metrics", headers: game).status, 200, "reload added the name")
        XCTAssertEqual(try c.call("GET", "/metrics", headers: ["Host": "other.example"]).status, 403)

        new.token = "s3cret"
        try d.onLoop { try $0.apply(new) }
        XCTAssertEqual(try c.call("GET", "/metrics", headers: ["Host": "other.example", "Authorization": "Bearer s3cret"]).status,
                       200, "a token set by reload turns the check off")

        new.token = nil
        new.allowedHosts = []
        try d.onLoop { try $0.apply(new) }
        XCTAssertEqual(try c.call("GET", "/metrics", headers: game).status, 403, "and removing it turns it back on")
    }
}
