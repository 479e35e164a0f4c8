import Foundation
import XCTest
@testable import UVProxy

/// SPEC §7 over real sockets: a target that speaks GMCP, its messages as resumable events with
/// the offset they came at, the state per package, and messages to the game.
final class IntegrationGMCPTests: XCTestCase {
    private let IAC = Telnet.iac, SB = Telnet.sb, SE = Telnet.se, GMCPOption: UInt8 = 201

    private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
    private func gmcp(_ text: String) -> [UInt8] { [IAC, SB, GMCPOption] + bytes(text) + [IAC, SE] }

    /// A session on a GMCP target, negotiated: the proxy's DO and Core.Hello read.
    private func gmcpSession(bufferSize: Int? = nil) throws -> (TestDaemon, HTTPTestClient, String, TestSocket) {
        let (_, d, c, id, target) = try sessionOnTestUpstream {
            $0.gmcp = true
            if let bufferSize { $0.bufferSize = bufferSize }
        }
        try target.send([IAC, Telnet.will, GMCPOption])
        let hello = [IAC, Telnet.do, GMCPOption] + gmcp("Core.Hello {\"client\":\"uvproxyd\",\"version\":\"\(UVProxyVersion.text)\"}")
        XCTAssertEqual(try target.receive(exactly: hello.count), hello)
        return (d, c, id, target)
    }

    func testMessagesComeWithTheirOffsetAndSeqAndAddNoText() throws {
        let (_, c, id, target) = try gmcpSession()
        try target.send(bytes("hp ") + gmcp("Char.Vitals {\"hp\": 10}") + bytes("ok\r\n") + gmcp("Room.Info"))
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 7), bytes("hp ok\r\n"), "GMCP adds no bytes to the text")
        let r = try c.call("GET", "/sessions/\(id)/gmcp?since=0")
        XCTAssertEqual(r.status, 200)
        let json = try XCTUnwrap(r.json)
        XCTAssertEqual(json["next"] as? Int, 2)
        let messages = try XCTUnwrap(json["messages"] as? [[String: Any]])
        XCTAssertEqual(messages.count, 2)
        XCTAssertEqual(messages[0]["seq"] as? Int, 0)
        XCTAssertEqual(messages[0]["offset"] as? Int, 3)
        XCTAssertEqual(messages[0]["package"] as? String, "Char.Vitals")
        XCTAssertEqual((messages[0]["data"] as? [String: Any])?["hp"] as? Int, 10)
        XCTAssertEqual(messages[1]["offset"] as? Int, 7)
        XCTAssertTrue(messages[1]["data"] is NSNull, "no payload: data null")
        // Without since: after what was read.
        XCTAssertEqual((try c.call("GET", "/sessions/\(id)/gmcp").json?["messages"] as? [Any])?.count, 0)
        let state = try XCTUnwrap(try c.call("GET", "/sessions/\(id)/gmcp/state").json)
        XCTAssertEqual((state["Char.Vitals"] as? [String: Any])?["hp"] as? Int, 10)
        XCTAssertTrue(state["Room.Info"] is NSNull)
    }

    /// SSE: GMCP events among the text in arrival order, every id `<offset>:<next seq>`, and a
    /// Last-Event-ID of that form resumes both without loss or repetition.
    func testEventStreamsInterleaveGMCPAndResumeBoth() throws {
        let (d, _, id, target) = try gmcpSession()
        try target.send(bytes("hp ") + gmcp("Char.Vitals {\"hp\": 10}") + bytes("ok\r\n") + gmcp("Room.Info"))
        let stream = try SSETestClient(port: d.listenPort, path: "/sessions/\(id)/events?since=0")
        var seen: [String] = []
        while seen.count < 4, let e = try stream.next() {
            if e.comment != nil && e.id == nil { continue }
            seen.append("\(e.event ?? "text") \(e.id ?? "-") \(e.event == "gmcp" ? e.data : e.text ?? "?")")
        }
        XCTAssertEqual(seen, [
            "text 3:0 hp ",
            "gmcp 3:1 {\"seq\":0,\"package\":\"Char.Vitals\",\"data\":{\"hp\":10}}",
            "text 7:1 ok\r\n",
            "gmcp 7:2 {\"seq\":1,\"package\":\"Room.Info\",\"data\":null}",
        ])
        let resumed = try SSETestClient(port: d.listenPort, path: "/sessions/\(id)/events", headers: ["Last-Event-ID": "3:1"])
        var again: [String] = []
        while again.count < 2, let e = try resumed.next() {
            if e.comment != nil && e.id == nil { continue }
            again.append("\(e.event ?? "text") \(e.id ?? "-")")
        }
        XCTAssertEqual(again, ["text 7:1", "gmcp 7:2"])
    }

    /// The next `count` events of `stream` (comments skipped) as "kind id text-or-data".
    private func events(_ stream: SSETestClient, _ count: Int) throws -> [String] {
        var seen: [String] = []
        while seen.count < count, let e = try stream.next() {
            if e.comment != nil && e.id == nil && e.event == nil { continue }
            seen.append("\(e.event ?? "text") \(e.id ?? "-") \(e.event == nil ? e.text ?? "?" : e.data)")
        }
        return seen
    }

    /// Reads until the session is closed (its game hung up).
    private func waitClosed(_ c: HTTPTestClient, _ id: String) throws {
        for _ in 0..<50 where try c.call("GET", "/sessions/\(id)?since=0&max=1&wait=0.2").header("X-Session-State") == "closed" {
            return
        }
        XCTFail("the session did not close")
    }

    /// A GMCP message right after part of a character (a UTF-8 lead byte whose continuation
    /// comes after the message, or a byte that is not UTF-8 at all) is not held back behind it:
    /// the stream stalled there for good (found by a black-box probe), even past the game's close.
    func testAMessageAfterPartOfACharacterIsNotHeldBack() throws {
        let (d, _, id, target) = try gmcpSession()
        try target.send(bytes("caf") + [0xC3] + gmcp("Char.Vitals {\"hp\":1}") + [0xA9] + bytes("\r\n")
                        + bytes("HP caf") + [0xE9] + gmcp("Room.Info") + bytes("\r\nnext\r\n"))
        let stream = try SSETestClient(port: d.listenPort, path: "/sessions/\(id)/events?since=0")
        XCTAssertEqual(try events(stream, 4), [
            "text 3:0 caf",
            "gmcp 3:1 {\"seq\":0,\"package\":\"Char.Vitals\",\"data\":{\"hp\":1}}",
            "text 13:1 é\r\nHP caf",  // the character whole, after the message
            "gmcp 13:2 {\"seq\":1,\"package\":\"Room.Info\",\"data\":null}",
        ])
        XCTAssertEqual(try events(stream, 1), ["text 22:2 \u{FFFD}\r\nnext\r\n"])
        target.close()
        XCTAssertEqual(try events(stream, 1).first?.hasPrefix("close 22:2 "), true, "the close event comes")
        XCTAssertNil(try stream.next(), "and the response ends")
    }

    /// A closed session's GMCP messages not yet delivered are still streamed: `204` only when
    /// the text and the GMCP log are both delivered (SPEC §2: "closed and fully delivered").
    func testAClosedSessionStreamsTheMessagesStillOwed() throws {
        let (d, c, id, target) = try gmcpSession()
        try target.send(bytes("a\r\n") + gmcp("A.One 1") + gmcp("A.Two 2") + gmcp("A.Three 3"))
        target.close()
        try waitClosed(c, id)
        let owed = try SSETestClient(port: d.listenPort, path: "/sessions/\(id)/events", headers: ["Last-Event-ID": "3:1"])
        XCTAssertEqual(owed.status, 200)
        let seen = try events(owed, 3)
        XCTAssertEqual(Array(seen.prefix(2)), [
            "gmcp 3:2 {\"seq\":1,\"package\":\"A.Two\",\"data\":2}",
            "gmcp 3:3 {\"seq\":2,\"package\":\"A.Three\",\"data\":3}",
        ])
        XCTAssertEqual(seen.last?.hasPrefix("close 3:3 "), true, "the close event's id is <offset>:<seq> too (SPEC §7)")
        let done = try SSETestClient(port: d.listenPort, path: "/sessions/\(id)/events", headers: ["Last-Event-ID": "3:3"])
        XCTAssertEqual(done.status, 204, "all delivered: EventSource stops")
    }

    /// Resuming at a seq the log no longer holds is `409` with `X-Gmcp-Base`, as `GET …/gmcp`
    /// says (it skipped the evicted messages silently); a seq not yet given is `400`.
    func testAStreamResumingAtAnEvictedOrFutureSeqIsRefused() throws {
        let (d, c, id, target) = try gmcpSession()
        var burst: [UInt8] = []
        for k in 0..<300 { burst += gmcp("Char.Tick \(k)") }
        try target.send(burst + bytes("done\r\n"))
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 6), bytes("done\r\n"))
        let evicted = try SSETestClient(port: d.listenPort, path: "/sessions/\(id)/events", headers: ["Last-Event-ID": "0:0"])
        XCTAssertEqual(evicted.status, 409)
        XCTAssertEqual(evicted.headers["x-gmcp-base"], "44")
        let future = try SSETestClient(port: d.listenPort, path: "/sessions/\(id)/events", headers: ["Last-Event-ID": "6:301"])
        XCTAssertEqual(future.status, 400)
        let held = try SSETestClient(port: d.listenPort, path: "/sessions/\(id)/events", headers: ["Last-Event-ID": "0:44"])
        XCTAssertEqual(held.status, 200)
        XCTAssertEqual(try events(held, 1), ["gmcp 0:45 {\"seq\":44,\"package\":\"Char.Tick\",\"data\":44}"])
    }

    /// WebSocket `gmcp.mudstandards.org`: the bytes in binary frames, GMCP as text frames among
    /// them in arrival order, and a client's text frame is GMCP to the game.
    func testWebSocketCarriesGMCPAsTextFramesBothWays() throws {
        let (d, _, id, target) = try gmcpSession()
        try target.send(bytes("hp ") + gmcp("Char.Vitals {\"hp\": 10}") + bytes("ok\r\n") + gmcp("Room.Info"))
        let ws = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws?since=0",
                                         protocols: ["gmcp.mudstandards.org"])
        XCTAssertEqual(ws.headers["sec-websocket-protocol"], "gmcp.mudstandards.org")
        var frames: [String] = []
        while frames.count < 4, let f = try ws.next() { frames.append("\(f.opcode) \(f.text)") }
        XCTAssertEqual(frames, ["2 hp ", "1 Char.Vitals {\"hp\": 10}", "2 ok\r\n", "1 Room.Info"])
        try ws.sendText("Core.Supports.Set [\"Char 1\"]")
        let frame = gmcp("Core.Supports.Set [\"Char 1\"]")
        XCTAssertEqual(try target.receive(exactly: frame.count), frame)
        try ws.send(2, bytes("look"))
        XCTAssertEqual(try target.receive(exactly: 4), bytes("look"), "binary frames are the bytes, raw")
    }

    /// A WebSocket resumes text and GMCP together with `since=<offset>:<next seq>`, as an SSE
    /// stream does with `Last-Event-ID` (found by a client author's probe): with the offset alone a
    /// message that came at the offset was sent again at every reconnect (it may or may not have
    /// been read), and an evicted one was skipped without a word.
    func testAWebSocketResumesGMCPAtTheSeqItNames() throws {
        let (d, _, id, target) = try gmcpSession()
        try target.send(bytes("hp ") + gmcp("Char.Vitals {\"hp\": 10}") + gmcp("Char.Vitals {\"hp\": 9}") + bytes("ok\r\n"))
        _ = try d.client().readBytes(id, from: 0, count: 7)
        func frames(_ path: String, _ n: Int) throws -> [String] {
            let ws = try WebSocketTestClient(port: d.listenPort, path: path, protocols: ["gmcp.mudstandards.org"])
            XCTAssertEqual(ws.status, 101, path)
            var out: [String] = []
            while out.count < n, let f = try ws.next() { out.append("\(f.opcode) \(f.text)") }
            return out
        }
        XCTAssertEqual(try frames("/sessions/\(id)/ws?since=3:1", 2), ["1 Char.Vitals {\"hp\": 9}", "2 ok\r\n"],
                       "the first message, read before, is not sent again")
        XCTAssertEqual(try frames("/sessions/\(id)/ws?since=3:0", 3),
                       ["1 Char.Vitals {\"hp\": 10}", "1 Char.Vitals {\"hp\": 9}", "2 ok\r\n"])
        XCTAssertEqual(try frames("/sessions/\(id)/ws?since=7:2", 0), [])
        var burst: [UInt8] = []
        for k in 0..<300 { burst += gmcp("Char.Tick \(k)") }
        try target.send(burst + bytes("x"))
        _ = try d.client().readBytes(id, from: 7, count: 1)
        let evicted = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws?since=7:2",
                                              protocols: ["gmcp.mudstandards.org"])
        XCTAssertEqual(evicted.status, 409, "the seq was evicted: the client learns it")
        XCTAssertEqual(evicted.headers["x-gmcp-base"], "46")
        let ahead = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws?since=8:303",
                                            protocols: ["gmcp.mudstandards.org"])
        XCTAssertEqual(ahead.status, 400)
        let malformed = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws?since=8:x",
                                                protocols: ["gmcp.mudstandards.org"])
        XCTAssertEqual(malformed.status, 400)
    }

    /// A client's GMCP sent on a `gmcp.mudstandards.org` WebSocket before the game has offered
    /// GMCP (a client's `Core.Supports.Set` as the socket opens, before the game's greeting)
    /// waits and goes after our `DO` and `Core.Hello`; it was dropped (a client author's probe:
    /// 5 in 30 lost on loopback). At most 4 KiB waits; the rest is dropped, as before.
    func testGMCPSentBeforeTheGameOffersItWaitsForIt() throws {
        let (_, d, _, id, target) = try sessionOnTestUpstream { $0.gmcp = true }
        let ws = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws", protocols: ["gmcp.mudstandards.org"])
        XCTAssertEqual(ws.status, 101)
        try ws.sendText("Core.Supports.Set [\"Char 1\"]")
        try ws.sendText("Big.Message \"" + String(repeating: "x", count: 5000) + "\"")  // past the bound: dropped
        try ws.sendText("Char.Login {}")
        let held = gmcp("Core.Supports.Set [\"Char 1\"]").count + gmcp("Char.Login {}").count
        try waitUntil("the frames read") { try d.onLoop { $0.table.allSessions.first?.link?.heldGMCPBytes ?? 0 } == held }
        XCTAssertFalse(target.isReadable(within: 0.1), "nothing goes before GMCP is on")
        try target.send([IAC, Telnet.will, GMCPOption])
        let expected = [IAC, Telnet.do, GMCPOption]
            + gmcp("Core.Hello {\"client\":\"uvproxyd\",\"version\":\"\(UVProxyVersion.text)\"}")
            + gmcp("Core.Supports.Set [\"Char 1\"]") + gmcp("Char.Login {}")
        XCTAssertEqual(try target.receive(exactly: expected.count), expected)
        XCTAssertFalse(target.isReadable(within: 0.1), "nothing more")
    }

    func testALongPollIsAnsweredWhenAMessageComes() throws {
        let (d, _, id, target) = try gmcpSession()
        let poller = try d.client()
        try poller.send("GET", "/sessions/\(id)/gmcp?since=0&wait=10")
        XCTAssertFalse(poller.socket.isReadable(within: 0.3), "nothing yet: held")
        try target.send(gmcp("Comm.Channel.Text {\"text\": \"hi\"}"))
        let r = try poller.readResponse()
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual((r.json?["messages"] as? [[String: Any]])?.first?["package"] as? String, "Comm.Channel.Text")
        // A newer poll answers the older one (empty), as a newer read does.
        try poller.send("GET", "/sessions/\(id)/gmcp?since=1&wait=10")
        let newer = try d.client()
        try newer.send("GET", "/sessions/\(id)/gmcp?since=1&wait=10")
        let older = try poller.readResponse()
        XCTAssertEqual(older.status, 200)
        XCTAssertEqual((older.json?["messages"] as? [Any])?.count, 0)
        try target.send(gmcp("Room.Info"))
        XCTAssertEqual((try newer.readResponse().json?["messages"] as? [[String: Any]])?.first?["seq"] as? Int, 1)
    }

    func testClientMessagesGoToTheGame() throws {
        let (_, c, id, target) = try gmcpSession()
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/gmcp", body: "Core.Supports.Set [\"Char 1\"]").status, 204)
        let frame = gmcp("Core.Supports.Set [\"Char 1\"]")
        XCTAssertEqual(try target.receive(exactly: frame.count), frame)
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/gmcp", body: "bad name! {}").status, 400)
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/gmcp", body: "Core.Ping {not json").status, 400)
    }

    /// SPEC §7: the log keeps the last 256 messages; a read from an evicted seq is `409` with
    /// `X-Gmcp-Base` (the oldest held), and reading from there works (no test had it over HTTP).
    func testAnEvictedSeqIs409WithTheOldestHeld() throws {
        let (_, c, id, target) = try gmcpSession()
        var burst: [UInt8] = []
        for k in 0..<300 { burst += gmcp("Char.Tick \(k)") }
        try target.send(burst + bytes("done\r\n"))
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 6), bytes("done\r\n"), "every message came before the text")
        let r = try c.call("GET", "/sessions/\(id)/gmcp?since=0")
        XCTAssertEqual(r.status, 409, r.text)
        XCTAssertEqual(r.header("X-Gmcp-Base"), "44")
        XCTAssertEqual(r.header("Content-Type"), "application/json")
        let from = try c.call("GET", "/sessions/\(id)/gmcp?since=44")
        let messages = try XCTUnwrap(from.json?["messages"] as? [[String: Any]])
        XCTAssertEqual(messages.count, 256)
        XCTAssertEqual(messages.first?["seq"] as? Int, 44)
        XCTAssertEqual(messages.first?["data"] as? Int, 44)
        XCTAssertEqual(from.json?["next"] as? Int, 300)
    }

    /// GMCP to the game is input: held to the session's input limit like commands (SPEC §2's
    /// 503, §5), over `POST …/gmcp` and over WebSocket (1013), so a game that does not read
    /// cannot make a client grow the proxy's memory.
    func testGMCPToAGameThatNeverReadsIsHeldToTheInputLimit() throws {
        let (d, c, id, _) = try gmcpSession(bufferSize: 65536)  // the target never reads from here on
        let message = "Core.Big \"" + String(repeating: "x", count: 60000) + "\""
        var accepted = 0
        var refused: TestResponse?
        for _ in 0..<2000 {
            let r = try c.call("POST", "/sessions/\(id)/gmcp", body: message)
            if r.status != 204 { refused = r; break }
            accepted += 1
        }
        let full = try XCTUnwrap(refused, "GMCP kept being accepted for a game that never reads (\(accepted) × 60 KB)")
        XCTAssertEqual(full.status, 503, full.text)
        XCTAssertNotNil(full.header("Retry-After"))
        let queued = try d.onLoop { $0.table.allSessions.first!.link!.queuedBytes }
        XCTAssertLessThanOrEqual(queued, 65536 + 60100, "held for the game: the input limit and one message")
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?cmd=x").status, 503, "commands wait behind it too")

        let ws = try WebSocketTestClient(port: d.listenPort, path: "/sessions/\(id)/ws", protocols: ["gmcp.mudstandards.org"])
        var close: (code: UInt16, reason: String)?
        for _ in 0..<100 where close == nil {
            try ws.sendText(message)
            if ws.socket.isReadable(within: 0) {
                while close == nil, let f = try ws.next() { close = f.close }
            }
        }
        while close == nil, let f = try ws.next() { close = f.close }
        XCTAssertEqual(close?.code, WebSocket.CloseCode.tryAgainLater, "\(String(describing: close))")
        XCTAssertLessThanOrEqual(try d.onLoop { $0.table.allSessions.first!.link!.queuedBytes }, 65536 + 60100)
    }

    func testSessionsWithoutGMCPSayConflict() throws {
        let (_, _, c, id, _) = try sessionOnTestUpstream { $0.telnet = true }
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)/gmcp").status, 409)
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)/gmcp/state").status, 409)
        // A GMCP target that has not offered it yet: nothing to send it.
        let (_, _, c2, id2, _) = try sessionOnTestUpstream { $0.gmcp = true }
        XCTAssertEqual(try c2.call("POST", "/sessions/\(id2)/gmcp", body: "Core.Ping").status, 409)
        XCTAssertEqual(try c2.call("GET", "/sessions/\(id2)/gmcp/state").text, "{}")
    }
}
