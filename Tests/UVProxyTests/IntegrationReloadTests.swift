import Foundation
import XCTest
@testable import UVProxy

/// Reload (regressions found in review): what a reload (`ProxyDaemon.apply`) changes for sessions already there.
final class IntegrationReloadTests: XCTestCase {

    /// DESIGN: linger applies "to every session at its next deadline". A session that closed
    /// before a reload that lengthens linger must stay readable for the new linger; before the
    /// fix the old deadline removed it without looking at the new setting (404).
    func testReloadLengtheningLingerReachesSessionsAlreadyClosed() throws {
        let (_, d, c, id, target) = try sessionOnTestUpstream { $0.linger = 0.5 }
        try target.send("bye")
        target.close()
        XCTAssertEqual(try c.waitClosed(id, since: 0).header("X-Session-State"), "closed")
        var new = try d.onLoop { $0.config }
        new.linger = 60
        try d.onLoop { try $0.apply(new) }
        Thread.sleep(forTimeInterval: 1.0)
        let r = try c.request("GET", "/sessions/\(id)?since=0")
        XCTAssertEqual(r.status, 200, "removed after the old linger")
        XCTAssertEqual(r.text, "bye")
    }
}
