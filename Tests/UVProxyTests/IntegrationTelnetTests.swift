import Foundation
import XCTest
@testable import UVProxy

/// SPEC §3 over real sockets: a target in telnet mode negotiates with the proxy, clients read
/// only its text, and their input reaches it escaped.
final class IntegrationTelnetTests: XCTestCase {
    private let IAC = Telnet.iac, WILL = Telnet.will, WONT = Telnet.wont, DO = Telnet.do, DONT = Telnet.dont
    private let SB = Telnet.sb, SE = Telnet.se
    private let SGA = Telnet.Option.sga, TTYPE = Telnet.Option.ttype, NAWS = Telnet.Option.naws
    private let ECHO = Telnet.Option.echo, COMPRESS2 = Telnet.Option.compress2

    private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    func testNegotiationsAreAnsweredAndClientsReadOnlyTheText() throws {
        let (_, _, c, id, target) = try sessionOnTestUpstream { $0.telnet = true }
        // A greeting cut in the middle of a subnegotiation and of IAC IAC, in separate writes;
        // the target waits for the proxy's answers in between, so the reads are split.
        try target.send([IAC, WILL, SGA, IAC, DO, TTYPE, IAC, DO, NAWS, IAC, WILL, COMPRESS2, IAC, DO, ECHO] + bytes("Wel"))
        let answers: [UInt8] = [IAC, DO, SGA, IAC, WILL, TTYPE, IAC, WILL, NAWS, IAC, SB, NAWS, 0, 80, 0, 24, IAC, SE,
                                IAC, DONT, COMPRESS2, IAC, WONT, ECHO]
        XCTAssertEqual(try target.receive(exactly: answers.count), answers)
        try target.send(bytes("come") + [IAC, SB, TTYPE])
        XCTAssertEqual(try c.readBytes(id, from: 0, count: 7), bytes("Welcome"))
        try target.send([1, IAC])
        try target.send([SE] + bytes("\r\n") + [IAC])
        let ttypeIs = [IAC, SB, TTYPE, 0] + bytes("UVPROXYD") + [IAC, SE]  // the first of the MTTS cycle
        XCTAssertEqual(try target.receive(exactly: ttypeIs.count), ttypeIs)
        try target.send([IAC] + bytes("x") + [IAC, Telnet.ga])
        XCTAssertEqual(try c.readBytes(id, from: 7, count: 4), bytes("\r\n") + [255] + bytes("x"))

        // Offsets count what clients read: 11 bytes, not the 60-odd the target sent.
        let all = try c.call("GET", "/sessions/\(id)?since=0")
        XCTAssertEqual(all.body, bytes("Welcome\r\n") + [255] + bytes("x"))
        XCTAssertEqual(all.header("X-Next-Offset"), "11")
        let tail = try c.call("GET", "/sessions/\(id)?since=9")
        XCTAssertEqual(tail.body, [255] + bytes("x"))
        XCTAssertEqual(tail.header("X-Offset"), "9")
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)?since=12").status, 400, "nothing beyond the filtered end")

        // Repeats change nothing, so they get no answer: the next bytes the target reads are input.
        try target.send([IAC, WILL, SGA, IAC, DO, NAWS, IAC, WONT, COMPRESS2] + bytes("!"))
        XCTAssertEqual(try c.readBytes(id, from: 11, count: 1), bytes("!"))
        // Input: 255 doubled, in the command and in a raw one.
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input", body: [UInt8](bytes("say caf")) + [255]).status, 204)
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?raw=1", body: [255, 1, 255]).status, 204)
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?cmd=look").status, 204)
        let input = bytes("say caf") + [255, 255] + bytes("\r\n") + [255, 255, 1, 255, 255] + bytes("look\r\n")
        XCTAssertEqual(try target.receive(exactly: input.count), input)
        XCTAssertFalse(target.isReadable(within: 0.1), "and nothing else")
    }

    /// SPEC §6: the target learns the player's address (MNES `IPADDRESS`, here a client on
    /// loopback) and, by TTYPE, the MTTS cycle: name, terminal type, capability bits.
    func testTargetLearnsTheClientAddressAndTheMTTSCycle() throws {
        let NEWENV = Telnet.Option.newEnviron
        let (_, _, _, _, target) = try sessionOnTestUpstream { $0.telnet = true }
        try target.send([IAC, DO, NEWENV, IAC, DO, TTYPE])
        XCTAssertEqual(try target.receive(exactly: 6), [IAC, WILL, NEWENV, IAC, WILL, TTYPE])

        // SEND VAR "IPADDRESS", cut in the middle of the name.
        try target.send([IAC, SB, NEWENV, 1, 0] + bytes("IPADD"))
        try target.send(bytes("RESS") + [IAC, SE])
        let address = [IAC, SB, NEWENV, 0, 0] + bytes("IPADDRESS") + [1] + bytes("127.0.0.1") + [IAC, SE]
        XCTAssertEqual(try target.receive(exactly: address.count), address)
        // An empty SEND (everything): the same variable.
        try target.send([IAC, SB, NEWENV, 1, IAC, SE])
        XCTAssertEqual(try target.receive(exactly: address.count), address)

        for name in ["UVPROXYD", "XTERM-256COLOR", "MTTS 909", "MTTS 909"] {
            try target.send([IAC, SB, TTYPE, 1, IAC, SE])
            let answer = [IAC, SB, TTYPE, 0] + bytes(name) + [IAC, SE]
            XCTAssertEqual(try target.receive(exactly: answer.count), answer, name)
        }
        // The cycle starts again once the target turns TTYPE off and on.
        try target.send([IAC, DONT, TTYPE, IAC, DO, TTYPE, IAC, SB, TTYPE, 1, IAC, SE])
        let again = [IAC, WONT, TTYPE, IAC, WILL, TTYPE, IAC, SB, TTYPE, 0] + bytes("UVPROXYD") + [IAC, SE]
        XCTAssertEqual(try target.receive(exactly: again.count), again)
        XCTAssertFalse(target.isReadable(within: 0.1), "and nothing else")
    }

    /// A target whose charset is not UTF-8 is told so by the MTTS bits (905: no UTF-8 bit).
    func testMTTSWithoutUTF8ForALatin1Target() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.targets["latin"] = TargetConfig(address: "127.0.0.1:\(up.port)", telnet: true, charset: .latin1)
        }
        _ = try d.client().createSession(target: "latin")
        let target = try up.connection(0)
        try target.send([IAC, DO, TTYPE])
        XCTAssertEqual(try target.receive(exactly: 3), [IAC, WILL, TTYPE])
        for name in ["UVPROXYD", "XTERM-256COLOR", "MTTS 905"] {
            try target.send([IAC, SB, TTYPE, 1, IAC, SE])
            let answer = [IAC, SB, TTYPE, 0] + bytes(name) + [IAC, SE]
            XCTAssertEqual(try target.receive(exactly: answer.count), answer, name)
        }
    }

    func testPlainTargetsPassTelnetBytesThrough() throws {
        // One upstream, reached as a plain default target and as a telnet named one.
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.targets["mud"] = TargetConfig(address: "127.0.0.1:\(up.port)", telnet: true)
        }
        let c = try d.client()
        let plain = try c.createSession()
        let plainTarget = try up.connection(0)
        let mud = try c.createSession(target: "mud")
        let mudTarget = try up.connection(1)

        let greeting: [UInt8] = [IAC, DO, TTYPE] + bytes("hi") + [IAC, IAC, IAC, Telnet.ga]
        try plainTarget.send(greeting)
        try mudTarget.send(greeting)
        XCTAssertEqual(try c.readBytes(plain, from: 0, count: greeting.count), greeting)
        XCTAssertEqual(try c.readBytes(mud, from: 0, count: 3), bytes("hi") + [255])
        XCTAssertEqual(try mudTarget.receive(exactly: 3), [IAC, WILL, TTYPE])

        XCTAssertEqual(try c.call("POST", "/sessions/\(plain)/input?raw=1", body: [255, 0x41]).status, 204)
        XCTAssertEqual(try plainTarget.receive(exactly: 2), [255, 0x41], "no escaping, no answers on a plain target")
        XCTAssertFalse(plainTarget.isReadable(within: 0.1))
    }

    func testNegotiationAloneWakesNoLongPoll() throws {
        let (_, _, c, id, target) = try sessionOnTestUpstream { $0.telnet = true }
        try c.send("GET", "/sessions/\(id)?since=0&wait=10")
        XCTAssertFalse(c.socket.isReadable(within: 0.2), "held while there is nothing to read")
        try target.send([IAC, WILL, SGA, IAC, SB, 201] + bytes("Core.Hello {}") + [IAC, SE])
        XCTAssertEqual(try target.receive(exactly: 3), [IAC, DO, SGA], "the proxy has read the negotiation")
        XCTAssertFalse(c.socket.isReadable(within: 0.2), "still held: there is still nothing to read")
        try target.send("ok\r\n")
        let r = try c.readResponse()
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.text, "ok\r\n")
        XCTAssertEqual(r.header("X-Offset"), "0")
    }

    func testFloodWithEscaped255sUnderBackpressure() throws {
        // Every 255 of the pattern doubled: the proxy reads up to the ring's room, the filter
        // passes on fewer bytes, and the client reads the pattern exactly.
        let bufferSize = 4096
        let count = 200_000
        let (_, _, c, id, target) = try sessionOnTestUpstream {
            $0.telnet = true
            $0.bufferSize = bufferSize
        }
        target.setTimeout(60)
        let escaped: [UInt8] = pattern(0..<count).withUnsafeBytes {
            var out: [UInt8] = []
            TelnetFilter.escapeInput($0, into: &out)
            return out
        }
        XCTAssertGreaterThan(escaped.count, count, "the pattern has 255s")
        let sent = DispatchSemaphore(value: 0)
        Thread {
            do { try target.send(escaped) } catch { XCTFail("target send: \(error)") }
            sent.signal()
        }.start()
        let got = try c.readBytes(id, from: 0, count: count, timeout: 60)
        XCTAssertNil(firstMismatch(got, pattern(0..<count)))
        XCTAssertEqual(sent.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(try c.call("GET", "/sessions/\(id)?since=\(count)").header("X-Next-Offset"), "\(count)")
    }
}
