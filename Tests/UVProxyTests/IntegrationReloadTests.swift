import Foundation
import XCTest
@testable import UVProxy

/// Reload (regressions found in review): what a reload (`ProxyDaemon.apply`) changes for sessions already there.
final class IntegrationReloadTests: XCTestCase {

    /// DESIGN: linger applies "to every session at its next deadline". A session that closed
    /// before a reload that lengthens linger must stay readable for the new linger; before the
    /// fix the old deadline removed it without looking at the new setting (404).
    func testReloadLengtheningLingerReachesSessionsAlreadyClosed() throws {
        let (_, d, c, id, target) = try sessionOnTestUpstream { $0.linger = 2 }  // the reload comes well within it, even late
        try target.send("bye")
        target.close()
        XCTAssertEqual(try c.waitClosed(id, since: 0).header("X-Session-State"), "closed")
        var new = try d.onLoop { $0.config }
        new.linger = 60
        try d.onLoop { try $0.apply(new) }
        Thread.sleep(forTimeInterval: 2.5)  // past the old linger
        let r = try c.request("GET", "/sessions/\(id)?since=0")
        XCTAssertEqual(r.status, 200, "removed after the old linger")
        XCTAssertEqual(r.text, "bye")
    }
}

extension IntegrationReloadTests {
    /// A reload looks host names up on libuv's thread pool: the loop keeps answering meanwhile,
    /// a name that resolves becomes a target, and one that does not leaves the config as it was.
    func testReloadLooksNamesUpOffTheLoop() throws {
        let (up, d, c, _, _) = try sessionOnTestUpstream()
        var new = try d.onLoop { $0.config }
        new.targets["byname"] = TargetConfig(address: "localhost:\(up.port)")
        try d.onLoop { daemon in daemon.configLoader = { new } }
        try d.onLoop { $0.reload() }
        XCTAssertEqual(try c.request("GET", "/healthz").status, 200)
        let deadline = Date().addingTimeInterval(10)
        var status = 0
        while status != 201, Date() < deadline {  // the lookup's completion comes on a later loop turn
            status = try c.request("POST", "/sessions?target=byname").status
            if status != 201 { usleep(5_000) }
        }
        XCTAssertEqual(status, 201, "the target named by a host name works after the reload")

        var bad = new
        bad.targets["nowhere"] = TargetConfig(address: "no-such-host.invalid:1")
        bad.maxWait = 7
        try d.onLoop { daemon in daemon.configLoader = { bad } }
        try d.onLoop { $0.reload() }
        let stays = Date().addingTimeInterval(10)
        while try d.onLoop({ $0.isReloading }), Date() < stays { usleep(5_000) }
        XCTAssertEqual(try d.onLoop { $0.config.maxWait }, new.maxWait, "a name that does not resolve changes nothing")
        XCTAssertEqual(try c.request("POST", "/sessions?target=nowhere").status, 400)
    }

    /// The names a reload looks up are those of the config it puts in force: a file that turns
    /// the demo game on (restart-only: ignored) keeps the running daemon's default target, the
    /// file's `upstream`, whose name is looked up off the loop like any other (before, only the
    /// names of the file as written were, and the upstream was looked up on the loop, blocking it).
    func testReloadLooksUpTheNamesOfTheConfigItPutsInForce() throws {
        let (up, d, c, _, _) = try sessionOnTestUpstream()
        var new = try d.onLoop { $0.config }
        new.demo = true
        new.upstream = "localhost:\(up.port)"
        new.maxWait = 7
        try d.onLoop { daemon in daemon.configLoader = { new } }
        let underWay = try d.onLoop { daemon -> Bool in
            daemon.reload()
            return daemon.isReloading
        }
        XCTAssertTrue(underWay, "the upstream's name is being looked up off the loop when reload() returns")
        let deadline = Date().addingTimeInterval(10)
        while try d.onLoop({ $0.isReloading }), Date() < deadline { usleep(5_000) }
        XCTAssertEqual(try d.onLoop { $0.config.maxWait }, 7, "the reload is in force")
        XCTAssertEqual(try d.onLoop { $0.config.demo }, false, "demo needs a restart")
        XCTAssertEqual(try c.request("POST", "/sessions").status, 201, "the default target by its name")
    }
}
