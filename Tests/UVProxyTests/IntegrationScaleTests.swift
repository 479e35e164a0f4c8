import Foundation
import XCTest
@testable import UVProxy

/// Many sessions at once, through the demo game.
final class IntegrationScaleTests: XCTestCase {

    /// Runs `body(worker)` on `count` threads and waits for all of them.
    private func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) throws -> Void) -> [String] {
        let errors = Locked<[String]>([])
        let group = DispatchGroup()
        for worker in 0..<count {
            group.enter()
            let thread = Thread {
                do { try body(worker) } catch {
                    errors.withValue { $0.append("worker \(worker): \(error)") }
                }
                group.leave()
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        group.wait()
        return errors.withValue { $0 }
    }

    func testTwoThousandConcurrentSessionsEachEcho() throws {
        let sessions = 2000
        let workers = 8
        let perWorker = sessions / workers
        let d = try startDaemon { $0.demo = true }
        let start = Date()
        // Each worker has its own client connections (two, used alternately).
        final class Shared: @unchecked Sendable {
            let clients: [[HTTPTestClient]]
            private let lock = NSLock()
            private var _ids: [[String]]
            init(_ clients: [[HTTPTestClient]]) { self.clients = clients; _ids = Array(repeating: [], count: clients.count) }
            var ids: [[String]] { lock.lock(); defer { lock.unlock() }; return _ids }
            func setIDs(_ w: Int, _ ids: [String]) { lock.lock(); _ids[w] = ids; lock.unlock() }
        }
        let shared = Shared(try (0..<workers).map { _ in try [d.client(), d.client()] })

        // 1. Every session is created before any is used: all 2,000 are open at once.
        var errors = onThreads(workers) { w in
            var ids: [String] = []
            for i in 0..<perWorker { ids.append(try shared.clients[w][i % 2].createSession()) }
            shared.setIDs(w, ids)
        }
        XCTAssertEqual(errors, [])
        let all = shared.ids.flatMap { $0 }
        XCTAssertEqual(all.count, sessions)
        XCTAssertEqual(Set(all).count, sessions, "ids are unique")
        XCTAssertEqual(try d.client().metric("uvproxyd_sessions{state=\"open\"}"), Double(sessions))

        // 2. Every session gets its own line; 3. each reads back exactly its own echo.
        errors = onThreads(workers) { w in
            let ids = shared.ids[w]
            let clients = shared.clients
            for (i, id) in ids.enumerated() {
                let r = try clients[w][i % 2].request("POST", "/sessions/\(id)/input?cmd=hello-\(w)-\(i)")
                guard r.status == 204 else { throw TestError("input \(id): \(r.status) \(r.text)") }
            }
            for (i, id) in ids.enumerated() {
                let c = clients[w][i % 2]
                let echo = "echo: hello-\(w)-\(i)\r\n"
                var stream: [UInt8] = []
                let deadline = Date().addingTimeInterval(20)
                while !String(decoding: stream, as: UTF8.self).hasSuffix(echo) {
                    guard Date() < deadline else {
                        throw TestError("session \(w)-\(i) got \(String(decoding: stream, as: UTF8.self).debugDescription)")
                    }
                    let r = try c.request("GET", "/sessions/\(id)?since=\(stream.count)&wait=5")
                    guard r.status == 200, r.header("X-Session-State") == "open" else {
                        throw TestError("read \(id): \(r.status) \(r.header("X-Session-State") ?? "") \(r.text)")
                    }
                    stream += r.body
                }
                let text = String(decoding: stream, as: UTF8.self)
                guard text.hasPrefix("\u{1b}[1;32mWelcome"), text.components(separatedBy: "echo: ").count == 2 else {
                    throw TestError("session \(w)-\(i): unexpected stream \(text.debugDescription)")
                }
            }
        }
        XCTAssertEqual(errors, [])
        let took = Date().timeIntervalSince(start)
        XCTAssertLessThan(took, 60, "2,000 sessions took \(took) s")
        print("2,000 sessions: created, echoed and read in \(String(format: "%.1f", took)) s")
        XCTAssertEqual(try d.client().metric("uvproxyd_sessions{state=\"open\"}"), Double(sessions))
    }

    func testThousandHeldLongPollsAreAllWokenByOneBroadcast() throws {
        let count = 1000
        let d = try startDaemon { $0.demo = true }
        let c = try d.client()
        let ids = try (0..<count).map { _ in try c.createSession() }
        // Each session's cursor: the end of its greeting.
        let end = Array("Anything else is echoed.\r\n".utf8)
        let cursors = try ids.map { id -> Int in
            var text: [UInt8] = []
            while text.firstRange(of: end) == nil {
                let r = try c.request("GET", "/sessions/\(id)?since=\(text.count)&wait=5")
                guard r.status == 200, !r.body.isEmpty else { throw TestError("no greeting: \(r.status)") }
                text += r.body
            }
            return text.count
        }
        let pollers = try ids.indices.map { i -> HTTPTestClient in
            let p = try HTTPTestClient(port: d.listenPort, timeout: 20)
            try p.send("GET", "/sessions/\(ids[i])?since=\(cursors[i])&wait=20")
            return p
        }
        // No push signal for "all are held": watch the gauge.
        var held = 0.0
        let deadline = Date().addingTimeInterval(10)
        while held < Double(count) && Date() < deadline {
            held = try c.metric("uvproxyd_long_polls") ?? 0
            if held < Double(count) { usleep(20_000) }
        }
        XCTAssertEqual(held, Double(count), "every poll is held")
        XCTAssertFalse(pollers[0].socket.isReadable(within: 0.1))
        let speaker = try c.createSession()
        let start = Date()
        XCTAssertEqual(try c.call("POST", "/sessions/\(speaker)/input?cmd=say%20wake%20up").status, 204)
        for (i, p) in pollers.enumerated() {
            let r = try p.readResponse()
            XCTAssertEqual(r.status, 200)
            XCTAssertEqual(r.header("X-Offset"), "\(cursors[i])")
            guard r.text.hasSuffix("says:\u{1b}[0m wake up\r\n") else {
                return XCTFail("poll \(i) got \(r.text.debugDescription)")
            }
        }
        let took = Date().timeIntervalSince(start)
        XCTAssertLessThan(took, 5, "1,000 held polls answered in \(took) s")
        XCTAssertEqual(try c.metric("uvproxyd_long_polls"), 0)
    }
}
