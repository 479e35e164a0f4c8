import Foundation
import XCTest
@testable import UVProxy

/// SPEC §9, the in-place upgrade: an old daemon hands its listening socket and every session
/// to a new one over an IPC channel. Here both daemons run in this process, on loops of their
/// own, exactly as SIGUSR2 runs them in two (`scripts/upgrade-test` does that with the release
/// binary): the channel is a socket pair and the listener a duplicate descriptor, which is what
/// the new process inherits.
final class IntegrationUpgradeTests: XCTestCase {
    private let IAC = Telnet.iac, SB = Telnet.sb, SE = Telnet.se, TTYPE = Telnet.Option.ttype

    private func waitUntil(_ timeout: TimeInterval = 10, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            if Date() > deadline { return false }
            usleep(5_000)
        }
        return true
    }

    /// Starts a new daemon that takes over from `old` (configured by `configure`, as the new
    /// binary reads its configuration afresh); returns it once it serves.
    private func upgrade(_ old: TestDaemon, log: LogCapture? = nil,
                         _ configure: @escaping (inout ProxyConfig) -> Void) throws -> TestDaemon {
        let (mine, theirs) = try makeSocketPair()
        let listener = try old.onLoop { fcntl($0.server.listenerDescriptor!, F_DUPFD_CLOEXEC, 0) }
        try old.onLoop { try $0.beginUpgrade(channel: mine, child: nil) }
        let new = try TestDaemon(log: log, takeOver: .init(channel: theirs, listener: listener), configure)
        addTeardownBlock { new.stop() }
        // Until the new daemon has taken everything over, a new connection may still land in the
        // old one, which lets its connections go at the hand-over: wait for the new one to accept
        // (it never does when the old one gives the upgrade up: then the wait just ends).
        _ = waitUntil { (try? new.onLoop { $0.server.isAccepting }) ?? true }
        return new
    }

    private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    func testSessionsMoveWithTheirBytesCursorsAndTargetConnections() throws {
        let up = try startUpstream(greeting: "hi\r\n")
        let configure: (inout ProxyConfig) -> Void = {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.linger = 60
        }
        let oldLog = LogCapture()
        let old = try startDaemon(log: oldLog, configure)
        let port = old.listenPort
        let c = try old.client()
        let id = try c.createSession()
        let target = try up.connection(0)
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 4), bytes("hi\r\n"))
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?seq=1", body: "look").status, 204)
        XCTAssertEqual(try target.receive(exactly: 6), bytes("look\r\n"))
        try target.send("before\r\n")
        XCTAssertEqual(try c.readBytes(id, from: 4, count: 8), bytes("before\r\n"))
        // A session that has closed and lingers, with its last bytes.
        let closedID = try c.createSession()
        let closedTarget = try up.connection(1)
        try closedTarget.send("bye\r\n")
        closedTarget.close()
        _ = try c.waitClosed(closedID, since: 0)
        // A held long-poll, and an event stream on another session (a session has one reader
        // at a time), on connections of the old process.
        let poller = try old.client()
        try poller.send("GET", "/sessions/\(id)?since=12&wait=30")
        let streamedID = try c.createSession()
        let streamedTarget = try up.connection(2)
        let events = try SSETestClient(port: port, path: "/sessions/\(streamedID)/events?since=0")
        XCTAssertEqual(try events.events(untilText: "hi").last?.id, "4")

        let newLog = LogCapture()
        let new = try upgrade(old, log: newLog, configure)
        XCTAssertEqual(new.listenPort, port)

        // The old process answers what waits and closes its connections, then exits.
        let held = try poller.readResponse()
        XCTAssertEqual(held.status, 200)
        XCTAssertEqual(held.body, [])
        XCTAssertEqual(held.header("X-Next-Offset"), "12")
        XCTAssertEqual(held.header("Connection"), "close")
        XCTAssertNil(try events.next(), "the event stream ends; its client resumes with Last-Event-ID")
        XCTAssertTrue(waitUntil { old.hasFinished }, "the old daemon exits once its connections have closed")
        XCTAssertNotNil(oldLog.wait(for: "upgrade: sessions handed over to the new process") { $0["sessions"] as? String == "3" })
        XCTAssertNotNil(newLog.wait(for: "upgrade: took over from the old process; serving") {
            $0["sessions"] as? String == "3" && $0["lost"] as? String == "0"
        })

        // The new process serves the same ids, bytes and cursors; the target saw nothing.
        XCTAssertFalse(target.isReadable(within: 0.2), "the target connection is neither closed nor written to")
        let c2 = try new.client()
        try target.send("after\r\n")
        XCTAssertEqual(try c2.readBytes(id, from: 12, count: 7), bytes("after\r\n"))
        let all = try c2.call("GET", "/sessions/\(id)?since=0")
        XCTAssertEqual(all.body, bytes("hi\r\nbefore\r\nafter\r\n"))
        XCTAssertEqual(all.header("X-Session-State"), "open")
        let again = try c2.call("POST", "/sessions/\(id)/input?seq=1", body: "look")
        XCTAssertEqual(again.header("X-Duplicate"), "1", "the last seq came along")
        XCTAssertEqual(try c2.call("POST", "/sessions/\(id)/input?seq=2", body: "north").status, 204)
        XCTAssertEqual(try target.receive(exactly: 7), bytes("north\r\n"), "input once, nothing repeated")
        let resumed = try SSETestClient(port: port, path: "/sessions/\(streamedID)/events", headers: ["Last-Event-ID": "4"])
        try streamedTarget.send("streamed\r\n")
        XCTAssertEqual(try resumed.events(untilText: "streamed").map(\.text), ["streamed\r\n"])

        let lingering = try c2.call("GET", "/sessions/\(closedID)?since=0")
        XCTAssertEqual(lingering.body, bytes("hi\r\nbye\r\n"))
        XCTAssertEqual(lingering.header("X-Session-State"), "closed")
        XCTAssertEqual(lingering.header("X-Close-Reason"), "eof")
        XCTAssertEqual(up.connectionCount, 3, "no new target connection")
    }

    /// A target that streams all along: each line is read once, in order, whichever process
    /// held the session when it came.
    func testATargetStreamingThroughTheUpgradeLosesAndRepeatsNothing() throws {
        let up = try startUpstream()
        let configure: (inout ProxyConfig) -> Void = { $0.upstream = "127.0.0.1:\(up.port)" }
        let old = try startDaemon(configure)
        let port = old.listenPort
        let id = try old.client().createSession()
        let target = try up.connection(0)
        let lines = 2_000
        let writer = Thread {
            for i in 0..<lines {
                try? target.send("line \(i)\n")
                if i % 20 == 0 { usleep(1_000) }
            }
        }
        writer.start()
        var expected: [UInt8] = []
        for i in 0..<lines { expected += bytes("line \(i)\n") }
        var got: [UInt8] = []
        var upgraded: TestDaemon?
        let deadline = Date().addingTimeInterval(30)
        while got.count < expected.count, Date() < deadline {
            if upgraded == nil, got.count > expected.count / 4 { upgraded = try upgrade(old, configure) }
            // A new connection per read: the old process closes its own after the hand-over.
            guard let client = try? HTTPTestClient(port: port),
                  let r = try? client.request("GET", "/sessions/\(id)?since=\(got.count)&wait=2") else { continue }
            XCTAssertEqual(r.status, 200, r.text)
            XCTAssertEqual(r.header("X-Offset"), "\(got.count)")
            got += r.body
        }
        XCTAssertNotNil(upgraded)
        XCTAssertEqual(got.count, expected.count)
        XCTAssertTrue(got == expected, "every line once, in order")
        XCTAssertTrue(waitUntil { old.hasFinished })
    }

    /// More sessions than records in flight at once: they go over in batches, each whole, and
    /// a session waiting for its turn goes on reading its target meanwhile.
    func testSessionsGoOverInBatches() throws {
        let up = try startUpstream(greeting: "hi\r\n")
        let configure: (inout ProxyConfig) -> Void = { $0.upstream = "127.0.0.1:\(up.port)" }
        let oldLog = LogCapture()
        let old = try startDaemon(log: oldLog, configure)
        let c = try old.client()
        let ids = try (0..<40).map { _ in try c.createSession() }
        for id in ids { XCTAssertEqual(try c.readBytes(id, from: 0, count: 4), bytes("hi\r\n")) }
        try old.onLoop { $0.handOverBatch = 3 }
        let new = try upgrade(old, configure)
        XCTAssertNotNil(oldLog.wait(for: "upgrade: sessions handed over to the new process") { $0["sessions"] as? String == "40" })
        let c2 = try new.client()
        for (k, id) in ids.enumerated() {
            let target = try up.connection(k)
            try target.send("n\(k)\r\n")
            XCTAssertEqual(try c2.readBytes(id, from: 4, count: "n\(k)\r\n".utf8.count), bytes("n\(k)\r\n"))
        }
        XCTAssertEqual(up.connectionCount, 40)
        XCTAssertTrue(waitUntil { old.hasFinished })
    }

    /// Input the target has not read yet: what the old process still queued goes out first
    /// from the new one, as it was, once.
    func testInputTheTargetHadNotTakenIsWrittenOnceByTheNewProcess() throws {
        let up = try TestUpstream(receiveBuffer: 4096)
        addTeardownBlock { up.stopListening(); up.closeAll() }
        let configure: (inout ProxyConfig) -> Void = { $0.upstream = "127.0.0.1:\(up.port)" }
        let old = try startDaemon(configure)
        let c = try old.client()
        let id = try c.createSession()
        let target = try up.connection(0)
        // Input until some of it waits in the old process (the kernel's buffers are full).
        var sent: [UInt8] = []
        var seq = 0
        var queued = 0
        while queued == 0 && seq < 200 {
            seq += 1
            let body = String(repeating: Character(UnicodeScalar(UInt8(97 + seq % 26))), count: 30_000)
            XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?seq=\(seq)", body: body).status, 204)
            sent += bytes(body + "\r\n")
            queued = try old.onLoop { $0.table.session(SessionID(text: Array(id.utf8)[...])!)?.link?.queuedBytes ?? 0 }
        }
        XCTAssertGreaterThan(queued, 0, "some input waits in the old process")
        let new = try upgrade(old, configure)
        XCTAssertEqual(try target.receive(exactly: sent.count), sent)
        XCTAssertFalse(target.isReadable(within: 0.2))
        XCTAssertEqual(try new.client().call("POST", "/sessions/\(id)/input?seq=\(seq + 1)", body: "z").status, 204)
        XCTAssertEqual(try target.receive(exactly: 3), bytes("z\r\n"))
    }

    /// The telnet filter carries on: a subnegotiation cut by the upgrade completes in the new
    /// process, and the MTTS cycle goes on from where it was.
    func testTelnetNegotiationCarriesOnAcrossTheUpgrade() throws {
        let up = try startUpstream()
        let configure: (inout ProxyConfig) -> Void = {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.telnet = true
        }
        let old = try startDaemon(configure)
        let c = try old.client()
        let id = try c.createSession()
        let target = try up.connection(0)
        try target.send([IAC, Telnet.do, TTYPE])
        XCTAssertEqual(try target.receive(exactly: 3), [IAC, Telnet.will, TTYPE])
        try target.send([IAC, SB, TTYPE, 1, IAC, SE] + bytes("one"))
        XCTAssertEqual(try target.receive(exactly: 14), [IAC, SB, TTYPE, 0] + bytes("UVPROXYD") + [IAC, SE])
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 3), bytes("one"))
        try target.send(bytes("two") + [IAC, SB, TTYPE])
        XCTAssertEqual(try c.readBytes(id, from: 3, count: 3), bytes("two"))

        let new = try upgrade(old, configure)
        try target.send([1, IAC, SE] + bytes("three"))
        let answer = [IAC, SB, TTYPE, 0] + bytes("XTERM-256COLOR") + [IAC, SE]
        XCTAssertEqual(try target.receive(exactly: answer.count), answer, "the second name of the cycle")
        XCTAssertEqual(try new.client().readBytes(id, from: 6, count: 5), bytes("three"))
    }

    /// GMCP state travels too: the log (seq, offsets, the since cursor), the state per package,
    /// and the filter's GMCP mode, so the game's next message and a client's send both work.
    func testGMCPCarriesOnAcrossTheUpgrade() throws {
        let up = try startUpstream()
        let configure: (inout ProxyConfig) -> Void = {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.gmcp = true
        }
        let old = try startDaemon(configure)
        let c = try old.client()
        let id = try c.createSession()
        let target = try up.connection(0)
        let gmcp = { (text: String) -> [UInt8] in [self.IAC, self.SB, 201] + self.bytes(text) + [self.IAC, self.SE] }
        try target.send([IAC, Telnet.will, 201])
        let hello = [IAC, Telnet.do, 201] + gmcp("Core.Hello {\"client\":\"uvproxyd\",\"version\":\"\(UVProxyVersion.text)\"}")
        XCTAssertEqual(try target.receive(exactly: hello.count), hello)
        try target.send(bytes("hp ") + gmcp("Char.Vitals {\"hp\": 10}"))
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 3), bytes("hp "))
        XCTAssertEqual((try c.call("GET", "/sessions/\(id)/gmcp?since=0").json?["next"] as? Int), 1)

        let new = try upgrade(old, configure)
        let c2 = try new.client()
        try target.send(bytes("ok") + gmcp("Room.Info {\"num\": 7}"))
        XCTAssertEqual(try c2.readBytes(id, from: 3, count: 2), bytes("ok"))
        let r = try c2.call("GET", "/sessions/\(id)/gmcp")
        let messages = try XCTUnwrap(r.json?["messages"] as? [[String: Any]])
        XCTAssertEqual(messages.map { $0["seq"] as? Int }, [1], "after what was read before the upgrade")
        XCTAssertEqual(messages.first?["offset"] as? Int, 5)
        let state = try XCTUnwrap(try c2.call("GET", "/sessions/\(id)/gmcp/state").json)
        XCTAssertEqual((state["Char.Vitals"] as? [String: Any])?["hp"] as? Int, 10, "the state from before the upgrade")
        XCTAssertEqual(try c2.call("POST", "/sessions/\(id)/gmcp", body: "Core.Ping").status, 204, "GMCP is still on")
        let ping = gmcp("Core.Ping")
        XCTAssertEqual(try target.receive(exactly: ping.count), ping)
    }

    /// A session whose target the new process's configuration no longer names (a reload
    /// removed it before the upgrade) goes on with the target as it was: its connection, its
    /// charset, its GMCP (SPEC §9: every session; it was closed, "lost", found by a black-box
    /// probe). Creates on that name are refused as before.
    func testASessionWhoseTargetTheNewConfigurationLacksGoesOn() throws {
        let up = try startUpstream()
        let old = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.targets = ["oldmud": TargetConfig(address: "127.0.0.1:\(up.port)", charset: .latin1, gmcp: true)]
        }
        let c = try old.client()
        let created = try c.call("POST", "/sessions?target=oldmud")
        XCTAssertEqual(created.status, 201)
        let id = try XCTUnwrap(created.json?["id"] as? String)
        let target = try up.connection(0)
        try target.send([Telnet.iac, Telnet.will, 201])
        _ = try target.receive(until: "version")  // DO GMCP and Core.Hello
        let new = try upgrade(old) { $0.upstream = "127.0.0.1:\(up.port)" }
        let c2 = try new.client()
        try target.send([0x63, 0x61, 0x66, 0xE9, 0x0D, 0x0A])  // "café" in Latin-1
        XCTAssertEqual(try c2.readBytes(id, from: 0, count: 6), [0x63, 0x61, 0x66, 0xE9, 0x0D, 0x0A])
        let stream = try SSETestClient(port: new.listenPort, path: "/sessions/\(id)/events?since=0")
        XCTAssertEqual(try stream.next()?.text, "café\r\n", "decoded in the target's charset, as before")
        XCTAssertEqual(try c2.call("POST", "/sessions/\(id)/input", body: "look").status, 204)
        XCTAssertEqual(try target.receive(until: "look\r\n").hasSuffix("look\r\n"), true)
        XCTAssertEqual(try c2.call("POST", "/sessions/\(id)/gmcp", body: "Core.Ping").status, 204, "GMCP is still on")
        XCTAssertEqual(try c2.call("POST", "/sessions?target=oldmud").status, 400, "the name is gone for new sessions")
    }

    // MARK: When the new process fails, the old one serves on

    func testANewProcessThatHangsUpBeforeItIsReadyChangesNothing() throws {
        let up = try startUpstream(greeting: "hi\r\n")
        let log = LogCapture()
        let old = try startDaemon(log: log) { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try old.client()
        let id = try c.createSession()
        let (mine, theirs) = try makeSocketPair()
        try old.onLoop { try $0.beginUpgrade(channel: mine, child: nil) }
        close(theirs)  // as a new binary that failed to read its configuration
        XCTAssertNotNil(log.wait(for: "upgrade failed: the new process closed its channel; still serving"))
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 4), bytes("hi\r\n"))
        XCTAssertEqual(try old.client().createSession().count, 22, "it accepts and creates as before")
        XCTAssertFalse(old.hasFinished)
    }

    func testANewProcessThatIsNotReadyInTimeIsGivenUp() throws {
        let up = try startUpstream(greeting: "hi\r\n")
        let log = LogCapture()
        let old = try startDaemon(log: log) { $0.upstream = "127.0.0.1:\(up.port)" }
        let id = try old.client().createSession()
        let (mine, theirs) = try makeSocketPair()
        defer { close(theirs) }
        try old.onLoop {
            $0.upgradeTimeoutMs = 200
            try $0.beginUpgrade(channel: mine, child: nil)
        }
        XCTAssertNotNil(log.wait(for: "upgrade failed: the new process was not ready within 0 s; still serving"))
        XCTAssertEqual(try old.client().readBytes(id, from: 0, count: 4), bytes("hi\r\n"))
    }

    /// A new process that dies while sessions are on their way: those not sent yet stay with
    /// the old process, which accepts again and serves them.
    func testANewProcessLostDuringTheHandOverLeavesTheRestWithTheOldOne() throws {
        let up = try startUpstream()
        let log = LogCapture()
        let old = try startDaemon(log: log) { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try old.client()
        let ids = try (0..<8).map { _ in try c.createSession() }
        let chunk = [UInt8](repeating: UInt8(ascii: "x"), count: 200_000)
        for k in ids.indices {
            try up.connection(k).send(chunk)
            XCTAssertEqual(try c.readBytes(ids[k], from: 0, count: chunk.count).count, chunk.count)
        }
        // A new process of our own: says ready, reads the header and a little, and is gone.
        let (mine, theirs) = try makeSocketPair()
        try old.onLoop {
            $0.handOverBatch = 1
            try $0.beginUpgrade(channel: mine, child: nil)
        }
        let fake = TestSocket(fd: theirs)
        var ready: [UInt8] = []
        HandOverReply(kind: .ready, nodeID: "", version: "test").encode(into: &ready)
        try fake.send(ready)
        XCTAssertFalse(try fake.receive(max: 1000).isEmpty)
        fake.close()
        // The write that fails (EPIPE) or the channel's end, whichever the old process sees first.
        var failed: [String: Any]?
        XCTAssertTrue(waitUntil {
            failed = log.objects.compactMap { $0 }.first {
                ($0["message"] as? String)?.hasPrefix("upgrade failed after the hand-over began: ") == true
            }
            return failed != nil
        })
        let sent = Int(failed?["sessions"] as? String ?? "") ?? -1
        XCTAssertTrue((1..<8).contains(sent), "some went, some stayed: \(sent)")
        // The old process accepts again and serves what it kept, as before.
        let c2 = try old.client()
        var kept = 0
        for id in ids where try c2.call("GET", "/sessions/\(id)?since=0").status == 200 { kept += 1 }
        XCTAssertEqual(kept, 8 - sent)
        XCTAssertFalse(old.hasFinished)
    }

    func testTheNewProcessMustHaveTheSameNodeID() throws {
        let up = try startUpstream(greeting: "hi\r\n")
        let log = LogCapture()
        let old = try startDaemon(log: log) {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.nodeId = "a1"
        }
        let id = try old.client().createSession()
        let new = try upgrade(old) {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.nodeId = "b2"
        }
        XCTAssertNotNil(log.wait(for: "upgrade failed: the new process's node-id 'b2' is not this one's 'a1'; still serving"))
        XCTAssertTrue(waitUntil { new.hasFinished }, "a new process the old one gave up on stops")
        XCTAssertEqual(try old.client().readBytes(id, from: 0, count: 4), bytes("hi\r\n"))
    }
}
