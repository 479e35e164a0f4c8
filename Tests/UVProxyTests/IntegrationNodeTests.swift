import Foundation
import XCTest
@testable import UVProxy

/// SPEC §9: `--node-id` (ids that name their daemon) and the drain on SIGUSR1.
final class IntegrationNodeTests: XCTestCase {

    private func waitUntil(_ timeout: TimeInterval = 10, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            if Date() > deadline { return false }
            usleep(10_000)
        }
        return true
    }

    func testEveryIDStartsWithTheNodeAndOtherNodesIDsAreUnknown() throws {
        let up = try startUpstream(greeting: "hi\r\n")
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.nodeId = "a1"
        }
        let c = try d.client()
        let r = try c.call("POST", "/sessions")
        XCTAssertEqual(r.status, 201)
        let id = try XCTUnwrap(r.json?["id"] as? String)
        XCTAssertTrue(id.hasPrefix("a1-"), id)
        XCTAssertEqual(id.count, 3 + 22)
        XCTAssertEqual(r.header("Location"), "/sessions/\(id)")
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 4), Array("hi\r\n".utf8))
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input", body: "look").status, 204)

        // The same 22 characters under another node's name, or under none: not ours.
        let bare = String(id.dropFirst(3))
        XCTAssertEqual(try c.call("GET", "/sessions/b2-\(bare)").status, 404)
        XCTAssertEqual(try c.call("GET", "/sessions/\(bare)").status, 404)
        XCTAssertEqual(try c.call("GET", "/mud?id=b2-\(bare)").status, 404)

        // The original API: the id comes back as text, with the prefix, and is taken back.
        let mud = try c.call("GET", "/mud")
        XCTAssertEqual(mud.status, 200)
        XCTAssertTrue(mud.text.hasPrefix("a1-"), mud.text)
        XCTAssertEqual(try c.call("GET", "/mud?id=\(mud.text)").status, 200)
    }

    func testADrainRefusesCreatesServesSessionsAndEndsWhenTheLastIsGone() throws {
        let up = try startUpstream(greeting: "hi\r\n")
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.linger = 0.2
        }
        let c = try d.client()
        let id = try c.createSession()
        try d.onLoop { $0.drain() }

        let create = try c.call("POST", "/sessions")
        XCTAssertEqual(create.status, 503)
        XCTAssertNotNil(create.header("Retry-After"))
        XCTAssertEqual(try c.call("GET", "/mud").status, 503, "the original API's create too")
        let health = try c.call("GET", "/healthz")
        XCTAssertEqual(health.status, 503)
        XCTAssertEqual(health.json?["error"] as? String, "draining")

        // The session is served as before, both ways.
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 4), Array("hi\r\n".utf8))
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input", body: "look").status, 204)
        let target = try up.connection(0)
        XCTAssertEqual(try target.receive(exactly: 6), Array("look\r\n".utf8))
        try target.send("more\r\n")
        XCTAssertEqual(try c.readBytes(id, from: 4, count: 6), Array("more\r\n".utf8))
        XCTAssertFalse(d.hasFinished)

        // The game ends the session; once its linger is over nothing is left and the daemon exits.
        target.close()
        XCTAssertTrue(waitUntil { d.hasFinished }, "the daemon exits once no session is left")
    }

    func testTheDrainTimeoutClosesWhatIsLeft() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.drainTimeout = 0.3
        }
        let c = try d.client()
        _ = try c.createSession()
        let target = try up.connection(0)
        let start = Date()
        try d.onLoop { $0.drain() }
        XCTAssertTrue(waitUntil { d.hasFinished }, "the daemon exits at the drain timeout")
        XCTAssertGreaterThan(Date().timeIntervalSince(start), 0.25)
        XCTAssertEqual(try target.receive(), [], "the session left was closed")
    }
}
