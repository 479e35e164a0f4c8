import Foundation
import XCTest
@testable import UVProxy

/// SPEC §8 over real sockets: the upgrade on the session paths, the subprotocols, input and
/// output both ways, the close rules and the client's violations.
final class IntegrationWebSocketTests: XCTestCase {
    private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    func testBinaryCarriesTheSessionBytesBothWaysFromAnOffset() throws {
        let (_, d, c, id, target) = try sessionOnTestUpstream()
        try target.send("hello\r\n")
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 7), bytes("hello\r\n"))
        let ws = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws?since=2", protocols: ["binary"])
        XCTAssertEqual(ws.status, 101)
        XCTAssertEqual(ws.headers["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        XCTAssertEqual(ws.headers["sec-websocket-protocol"], "binary")
        XCTAssertEqual(ws.headers["cache-control"], "no-store", "SPEC §2: every response, the 101 too")
        XCTAssertEqual(try ws.next(), .init(fin: true, opcode: 2, payload: bytes("llo\r\n")), "from since, in a binary frame")
        try ws.send(2, bytes("look"))
        XCTAssertEqual(try target.receive(exactly: 4), bytes("look"), "binary input goes raw: no line ending added")
        try target.send([0xFF, 0x00, 0x80])
        XCTAssertEqual(try ws.next()?.payload, [0xFF, 0x00, 0x80])
        // What the socket delivered counts as delivered: a plain read without since starts after it.
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)").header("X-Offset"), "10")
        XCTAssertEqual(try c.metric("uvproxyd_websockets"), 1)
    }

    func testTerminalTextIsDecodedAndEachMessageIsACommand() throws {
        let (_, d, _, id, target) = try sessionOnTestUpstream()
        let ws = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws",
                                         protocols: ["terminal.mudstandards.org"])
        XCTAssertEqual(ws.headers["sec-websocket-protocol"], "terminal.mudstandards.org")
        try target.send(bytes("caf") + [0xC3])
        try target.send([0xA9] + bytes(" \"ok\"\r\n"))
        XCTAssertEqual(String(decoding: try ws.read(until: "\n"), as: UTF8.self), "café \"ok\"\r\n",
                       "text frames carry plain UTF-8, a character cut between reads whole")
        try ws.sendText("say hi")
        XCTAssertEqual(try target.receive(exactly: 8), bytes("say hi\r\n"), "a command gets its line ending")
        let none = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws", protocols: [])
        XCTAssertNil(none.headers["sec-websocket-protocol"], "no subprotocol offered: none chosen, text frames")
        let replaced = try ws.next()?.close
        XCTAssertEqual(replaced?.reason, "replaced by a newer reader", "a newer attachment ends the older")
        XCTAssertEqual(replaced?.code, 4000, "with its own code: a client tells it from the session's end (1000)")
    }

    /// Text both ways in the target's charset: a command typed as UTF-8 reaches a Latin-1 game
    /// in Latin-1, as its output comes decoded from it (it went as UTF-8: "cafÃ©"; black-box probe).
    func testTerminalTextGoesToTheGameInItsCharset() throws {
        let (_, d, _, id, target) = try sessionOnTestUpstream { $0.charset = .latin1 }
        let ws = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws", protocols: ["terminal.mudstandards.org"])
        try target.send([0x63, 0x61, 0x66, 0xE9, 0x0D, 0x0A])
        XCTAssertEqual(String(decoding: try ws.read(until: "\n"), as: UTF8.self), "café\r\n")
        try ws.sendText("say café ☕")
        XCTAssertEqual(try target.receive(exactly: 12), bytes("say caf") + [0xE9, 0x20, 0x3F, 0x0D, 0x0A],
                       "Latin-1, and ? for what it cannot hold")
        let binary = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws", protocols: ["binary"])
        try binary.send(2, bytes("é"))
        XCTAssertEqual(try target.receive(exactly: 2), bytes("é"), "binary input goes raw")
    }

    func testCreateAndAttachInOneStepWithTheTokenInTheQuery() throws {
        let up = try startUpstream(greeting: "welcome\r\n")
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.token = "s3cret"
        }
        let refused = try WebSocketTestClient(port: d.listenPort, path: "/ws")
        XCTAssertEqual(refused.status, 401)
        let ws = try WebSocketTestClient(port: d.listenPort, path: "/ws?token=s3cret", protocols: ["gmcp.mudstandards.org", "binary"])
        XCTAssertEqual(ws.status, 101)
        XCTAssertEqual(ws.headers["sec-websocket-protocol"], "gmcp.mudstandards.org")
        let id = try XCTUnwrap(ws.headers["x-session-id"])
        XCTAssertEqual(try ws.next()?.payload, bytes("welcome\r\n"))
        let c = try d.client()
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)", headers: ["Authorization": "Bearer s3cret"]).status, 200)
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)?token=s3cret").status, 401, "the query token is for the WebSocket paths only")
    }

    /// `GET /ws` that cannot attach (a `since` malformed or past the end) is 400 and leaves no
    /// session behind: one was created and held its slot and its game connection until the idle
    /// timeout (found by a black-box probe; SPEC §2: no session exists after a failed create).
    func testACreateAndAttachThatCannotAttachLeavesNoSession() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.maxSessions = 1
        }
        let malformed = try WebSocketTestClient(port: d.listenPort, path: "/ws?since=abc")
        XCTAssertEqual(malformed.status, 400, (try? malformed.body()) ?? "")
        XCTAssertEqual(try WebSocketTestClient(port: d.listenPort, path: "/ws?since=5").status, 400)
        let c = try d.client()
        XCTAssertEqual(try c.metric("uvproxyd_sessions{state=\"open\"}"), 0)
        XCTAssertEqual(try c.call("POST", "/sessions").status, 201, "the one slot is free")
    }

    /// Frames that come in the same packet as `GET /ws`'s request (a client that does not wait
    /// for the 101) are read once the session exists, as on `/sessions/{id}/ws`: they were lost.
    func testFramesBehindACreateAndAttachAreRead() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let s = try TestSocket.connect(port: d.listenPort)
        try s.send(bytes("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         + "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
                   + WebSocketTestClient.frame(1, bytes("look")))
        let target = try up.connection(0)
        XCTAssertEqual(try target.receive(exactly: 6), bytes("look\r\n"))
    }

    func testTheTargetsCloseComesAfterItsLastBytes() throws {
        let (_, d, _, id, target) = try sessionOnTestUpstream()
        let ws = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws", protocols: ["binary"])
        try target.send("bye\r\n")
        target.close()
        XCTAssertEqual(try ws.read(until: "bye"), bytes("bye\r\n"))
        let close = try XCTUnwrap(try ws.next())
        XCTAssertEqual(close.close?.code, 1000)
        XCTAssertEqual(close.close?.reason, "eof")
        XCTAssertNil(try ws.next(), "then the connection ends")
    }

    func testPingsArePongedAndTheClosingHandshakeIsEchoed() throws {
        let (_, d, _, id, _) = try sessionOnTestUpstream()
        let ws = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws")
        try ws.send(9, bytes("are you there"))
        XCTAssertEqual(try ws.next(), .init(fin: true, opcode: 10, payload: bytes("are you there")))
        try ws.send(8, [0x03, 0xE8] + bytes("done"))
        XCTAssertEqual(try ws.next()?.close?.code, 1000)
        XCTAssertNil(try ws.next())
    }

    func testFragmentedMessagesWithAPingBetweenAreOneCommand() throws {
        let (_, d, _, id, target) = try sessionOnTestUpstream()
        let ws = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws")
        try ws.send(1, bytes("lo"), fin: false)
        try ws.send(9, [])
        try ws.send(0, bytes("ok"), fin: true)
        XCTAssertEqual(try ws.next()?.opcode, 10)
        XCTAssertEqual(try target.receive(exactly: 6), bytes("look\r\n"))
    }

    /// RFC 6455 §5.1, §8.1, §10.4: what a client may not send, and the close code it gets.
    func testViolationsCloseWithTheirCodes() throws {
        let (_, d, _, id, _) = try sessionOnTestUpstream()
        let cases: [(String, [UInt8], UInt16)] = [
            ("unmasked", WebSocketTestClient.frame(1, bytes("x"), masked: false), 1002),
            ("invalid UTF-8", WebSocketTestClient.frame(1, [0xC3, 0x28]), 1007),
            ("over max-body", WebSocketTestClient.frame(2, [UInt8](repeating: 1, count: 64 * 1024 + 1)), 1009),
            ("a reserved opcode", WebSocketTestClient.frame(3, []), 1002),
        ]
        for (what, frame, code) in cases {
            let ws = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws")
            try ws.socket.send(frame)
            var got: UInt16?
            while let f = try ws.next() {
                if let close = f.close { got = close.code; break }
            }
            XCTAssertEqual(got, code, what)
        }
    }

    func testTheUpgradeIsCheckedBeforeAnything() throws {
        let (_, d, _, id, _) = try sessionOnTestUpstream()
        let old = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws", headers: [
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "8",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        ])
        XCTAssertEqual(old.status, 426)
        XCTAssertEqual(old.headers["sec-websocket-version"], "13")
        let noKey = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws", headers: [
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        ])
        XCTAssertEqual(noKey.status, 400)
        XCTAssertEqual(try WebSocketTestClient(port: d.listenPort, path: "/sessions/AAAAAAAAAAAAAAAAAAAAAA/ws").status, 404)
        XCTAssertEqual(try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws?since=99").status, 400)
        let deflate = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws", headers: [
            "Upgrade": "websocket", "Connection": "keep-alive, Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Extensions": "permessage-deflate",
        ])
        XCTAssertEqual(deflate.status, 101)
        XCTAssertNil(deflate.headers["sec-websocket-extensions"], "permessage-deflate is declined")
    }
}

/// Records what a session's link is asked to send, per loop turn: how many writes, and the most
/// bytes in one turn.
final class RecordingLink: UpstreamLink {
    let inner: UpstreamLink
    let turns: TurnQueue
    var sends = 0
    var bytes = 0
    var turn: UInt64 = .max
    var thisTurn = 0
    var mostInATurn = 0
    init(_ inner: UpstreamLink, turns: TurnQueue) { self.inner = inner; self.turns = turns }
    func connect(to address: SocketAddress) { inner.connect(to: address) }
    func finish() { inner.finish() }
    func send(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) {
        if turn != turns.drains { turn = turns.drains; thisTurn = 0 }
        sends += 1
        bytes += a.count + b.count
        thisTurn += a.count + b.count
        mostInATurn = max(mostInATurn, thisTurn)
        inner.send(a, b)
    }
    var queuedBytes: Int { inner.queuedBytes }
    func pauseReading() { inner.pauseReading() }
    func resumeReading() { inner.resumeReading() }
    func close() { inner.close() }
    func abort() { inner.abort() }
    func handOverState() -> UpstreamHandOver { inner.handOverState() }
    var gmcpEnabled: Bool { inner.gmcpEnabled }
    func sendTelnet(_ command: [UInt8]) { inner.sendTelnet(command) }
}

/// SPEC §5 for WebSocket input: a client that sends frames faster than anything else is bounded
/// like a pipelining HTTP client (a share of the loop per turn, its answers held to the
/// per-connection limit), and costs a write per read, not per frame.
extension IntegrationWebSocketTests {
    func testTinyFramesGoToTheGameInFewWritesAndAShareAtATime() throws {
        let (_, d, _, id, target) = try sessionOnTestUpstream()
        let link = try d.onLoop { daemon -> RecordingLink in
            let session = daemon.table.allSessions.first!
            let link = RecordingLink(session.link!, turns: daemon.loop.turns)
            session.link = link
            return link
        }
        let ws = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws", protocols: ["binary"])
        let n = 300_000
        var all: [UInt8] = []
        all.reserveCapacity(n * 7)
        for i in 0..<n { all += WebSocketTestClient.frame(2, [UInt8(ascii: "a") + UInt8(i % 26)]) }
        let payload = all
        let socket = ws.socket
        let sender = Thread { try? socket.send(payload) }
        sender.start()
        var got = 0
        var inOrder = true
        while got < n {
            let chunk = try target.receive()
            guard !chunk.isEmpty else { break }
            for (k, b) in chunk.enumerated() where b != UInt8(ascii: "a") + UInt8((got + k) % 26) { inOrder = false }
            got += chunk.count
        }
        XCTAssertEqual(got, n, "every frame's byte reached the game")
        XCTAssertTrue(inOrder, "in order")
        let (sends, most) = try d.onLoop { _ in (link.sends, link.mostInATurn) }
        print("measured: \(n) one-byte frames went to the game in \(sends) writes, at most \(most) bytes in one turn")
        XCTAssertLessThan(sends, n / 100, "frames read together go to the game as one write")
        // At most two reads of 64 KiB per turn: 2 × 65536 / 7 frames of one byte each.
        XCTAssertLessThanOrEqual(most, 2 * 65536 / 7 + 1, "one connection's share of a turn")
    }

    /// Pings from a client that does not read its pongs: the proxy stops reading the client once
    /// about 1 MiB of answers waits for it (as for a pipelining HTTP client), so the client is
    /// held back by TCP instead of growing the proxy's memory.
    func testPingsFromAClientThatNeverReadsAreHeldToTheConnectionsLimit() throws {
        let (_, d, _, id, _) = try sessionOnTestUpstream()
        let ws = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws")
        let ping = WebSocketTestClient.frame(9, [UInt8](repeating: 0x70, count: 125))
        var all: [UInt8] = []
        for _ in 0..<(40 << 20) / ping.count { all += ping }  // 40 MiB of pings
        ws.socket.setTimeout(1)
        XCTAssertThrowsError(try ws.socket.send(all), "the proxy stops reading a client that does not read")
        let queued = try d.onLoop { $0.loop.sendQueueBytes }
        XCTAssertLessThan(queued, (1 << 20) + 4 * 65536, "held for one client: \(queued) bytes")
        XCTAssertEqual(try d.client().request("GET", "/healthz").status, 200)
        // It reads: the pongs come, and the proxy reads the client again.
        ws.socket.setTimeout(10)
        var pongs = 0
        while pongs < 5_000, let frame = try ws.next() {
            XCTAssertEqual(frame.opcode, 10)
            pongs += 1
        }
        XCTAssertEqual(pongs, 5_000)
    }

    /// Over the process's send budget (SPEC §5), a connection that owes anything is not read
    /// (as HTTP answers no more requests there): pongs are answers too, so a pinging client
    /// waits for its pongs to be taken before it is read again.
    func testPingsOverTheProcessSendBudgetWaitForTheClientToRead() throws {
        let (_, d, _, id, _) = try sessionOnTestUpstream()
        let ws = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws")
        let budget = try d.onLoop { daemon in
            let old = daemon.loop.sendQueueBudget
            daemon.loop.sendQueueBudget = 0  // any byte queued is over it
            return old
        }
        let ping = WebSocketTestClient.frame(9, [UInt8](repeating: 0x70, count: 125))
        var all: [UInt8] = []
        for _ in 0..<(40 << 20) / ping.count { all += ping }
        ws.socket.setTimeout(1)
        XCTAssertThrowsError(try ws.socket.send(all), "the proxy stops reading a client that owes")
        let queued = try d.onLoop { $0.loop.sendQueueBytes }
        XCTAssertLessThan(queued, 2 * 65536 + 4096, "about one read's pongs held: \(queued) bytes")
        try d.onLoop { $0.loop.sendQueueBudget = budget }
        ws.socket.setTimeout(10)
        var pongs = 0
        while pongs < 5_000, let frame = try ws.next() {
            XCTAssertEqual(frame.opcode, 10)
            pongs += 1
        }
        XCTAssertEqual(pongs, 5_000, "the client reads: its pongs come and it is read again")
    }
}
