import XCTest
@testable import UVProxy

private let IAC = Telnet.iac, WILL = Telnet.will, WONT = Telnet.wont, DO = Telnet.do, DONT = Telnet.dont
private let SB = Telnet.sb, SE = Telnet.se, GA = Telnet.ga, NOP = Telnet.nop
private let ECHO = Telnet.Option.echo, SGA = Telnet.Option.sga, TTYPE = Telnet.Option.ttype
private let NAWS = Telnet.Option.naws, EOR = Telnet.Option.eor
private let COMPRESS = Telnet.Option.compress, COMPRESS2 = Telnet.Option.compress2
private let NEWENV: UInt8 = 39, CHARSET: UInt8 = 42, MSDP: UInt8 = 69, MSSP: UInt8 = 70, MXP: UInt8 = 91
private let GMCP: UInt8 = 201

/// `IAC SB TTYPE IS <name> IAC SE`: an answer to `SB TTYPE SEND`.
private func ttypeIs(_ name: String) -> [UInt8] { [IAC, SB, TTYPE, 0] + Array(name.utf8) + [IAC, SE] }
/// The MTTS cycle: the first, second and third (and every later) answer.
private let ttype1 = ttypeIs("UVPROXYD"), ttype2 = ttypeIs("XTERM-256COLOR"), ttype3 = ttypeIs("MTTS 909")
/// NEW-ENVIRON's bytes (RFC 1572).
private let IS: UInt8 = 0, SEND: UInt8 = 1, INFO: UInt8 = 2
private let VAR: UInt8 = 0, VALUE: UInt8 = 1, ESC: UInt8 = 2, USERVAR: UInt8 = 3
private let IPADDRESS = Array("IPADDRESS".utf8)
/// The client address most tests give the filter.
private let address = "203.0.113.7"
/// `IAC SB NEW-ENVIRON <body> IAC SE`.
private func environ(_ body: [UInt8]) -> [UInt8] { [IAC, SB, NEWENV] + body + [IAC, SE] }
/// The answer that carries the client's address: `IAC SB NEW-ENVIRON IS VAR IPADDRESS VALUE <address> IAC SE`.
private let ipAnswer = environ([IS, VAR] + IPADDRESS + [VALUE] + Array(address.utf8))
/// `IAC SB NAWS 0 80 0 24 IAC SE`.
private let naws80x24: [UInt8] = [IAC, SB, NAWS, 0, 80, 0, 24, IAC, SE]

final class TelnetFilterTests: XCTestCase {
    /// Feeds `chunks` one `receive` each, as the upstream does; returns the data and the replies
    /// (collected and cleared after every chunk).
    func run(_ filter: inout TelnetFilter, _ chunks: [[UInt8]]) -> (data: [UInt8], replies: [UInt8]) {
        var data: [UInt8] = []
        var replies: [UInt8] = []
        for chunk in chunks {
            chunk.withUnsafeBytes { input in
                filter.receive(input) { run in
                    XCTAssertGreaterThan(run.count, 0, "no empty runs")
                    data += run
                }
            }
            replies += filter.replies
            filter.replies.removeAll()
        }
        return (data, replies)
    }

    func run(_ chunks: [UInt8]...) -> (data: [UInt8], replies: [UInt8]) {
        var filter = makeFilter()
        return run(&filter, chunks)
    }

    /// The filter of most tests: a known client address, a UTF-8 target.
    func makeFilter() -> TelnetFilter { TelnetFilter(clientAddress: address) }

    func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    // MARK: Data

    func testPlainDataPassesAsSlicesOfTheInput() {
        var filter = TelnetFilter()
        let input = bytes("Hello, \u{1b}[1mworld\u{1b}[0m\r\n") + [IAC, GA] + bytes("> ")
        var runs: [[UInt8]] = []
        input.withUnsafeBytes { buf in
            filter.receive(buf) { run in
                let start = buf.baseAddress!, end = buf.baseAddress! + buf.count
                XCTAssertTrue(run.baseAddress! >= start && run.baseAddress! + run.count <= end, "zero-copy: a slice of the input")
                runs.append(Array(run))
            }
        }
        XCTAssertEqual(runs, [bytes("Hello, \u{1b}[1mworld\u{1b}[0m\r\n"), bytes("> ")])
        XCTAssertEqual(filter.replies, [])
    }

    func testIACIACIsOne255ByteBothWithinAndAcrossReads() {
        XCTAssertEqual(run(bytes("a") + [IAC, IAC] + bytes("b")).data, bytes("a") + [255] + bytes("b"))
        XCTAssertEqual(run(bytes("a") + [IAC], [IAC] + bytes("b")).data, bytes("a") + [255] + bytes("b"))
        XCTAssertEqual(run([IAC, IAC, IAC, IAC]).data, [255, 255])
        XCTAssertEqual(run([IAC], [IAC], [IAC], [IAC, IAC, IAC]).data, [255, 255, 255])
        // A 255 run continues straight into the text after it: one run, not two.
        var filter = TelnetFilter()
        var runs = 0
        ([IAC, IAC] + bytes("xyz")).withUnsafeBytes { filter.receive($0) { _ in runs += 1 } }
        XCTAssertEqual(runs, 1)
    }

    func testEveryCommandIsRemovedWithoutAnswer() {
        let commands: [UInt8] = [GA, Telnet.nop, Telnet.eor, 242, 243, 244, 245, 246, 247, 248, SE, 0x10]
        var input: [UInt8] = []
        for (i, c) in commands.enumerated() { input += bytes("\(i)") + [IAC, c] }
        let (data, replies) = run(input + bytes("."))
        XCTAssertEqual(data, bytes("01234567891011."))
        XCTAssertEqual(replies, [], "GA, NOP, EOR, DM, BRK, IP, AO, AYT, EC, EL, a stray SE or an unknown byte need no answer")
    }

    func testSubnegotiationsAreRemovedWhateverTheyHold() {
        // GMCP with JSON, an escaped 255 inside, and bytes that look like commands.
        let gmcp: [UInt8] = [IAC, SB, GMCP] + bytes("Char.Vitals {\"hp\": 10}") + [IAC, IAC, WILL, SGA, IAC, SE]
        let (data, replies) = run(bytes("before ") + gmcp + bytes("after"))
        XCTAssertEqual(data, bytes("before after"))
        XCTAssertEqual(replies, [], "IAC IAC WILL SGA inside SB is data of the subnegotiation, not a request")
        // Split anywhere, the same.
        let input = bytes("before ") + gmcp + bytes("after")
        for cut in 0...input.count {
            XCTAssertEqual(run(Array(input[..<cut]), Array(input[cut...])).data, bytes("before after"), "cut at \(cut)")
        }
    }

    func testUnterminatedSubnegotiationSwallowsUntilItEnds() {
        var filter = TelnetFilter()
        var out = run(&filter, [bytes("a") + [IAC, SB, MSDP] + bytes("text that is not for clients")])
        XCTAssertEqual(out.data, bytes("a"))
        out = run(&filter, [bytes("still inside"), [IAC, IAC], bytes("more")])
        XCTAssertEqual(out.data, [])
        out = run(&filter, [[IAC, SE] + bytes("b")])
        XCTAssertEqual(out.data, bytes("b"))
    }

    func testSubnegotiationWithoutSEEndsAtTheNextCommand() {
        // A server that forgets SE: IAC WILL inside the SB ends it and is taken as a command.
        let (data, replies) = run(bytes("a") + [IAC, SB, MSSP] + bytes("junk") + [IAC, WILL, SGA] + bytes("b"))
        XCTAssertEqual(data, bytes("ab"))
        XCTAssertEqual(replies, [IAC, DO, SGA])
    }

    func testCRNULBecomesCR() {
        XCTAssertEqual(run(bytes("a\r\0b")).data, bytes("a\rb"))
        XCTAssertEqual(run(bytes("a\r"), [0] + bytes("b")).data, bytes("a\rb"), "split between CR and NUL")
        XCTAssertEqual(run(bytes("a\r\n\r\0\r\0\0")).data, bytes("a\r\n\r\r\0"), "only the NUL right after CR")
        XCTAssertEqual(run(bytes("a\0b")).data, bytes("a\0b"), "a NUL elsewhere stays")
        XCTAssertEqual(run(bytes("a\r") + [IAC, GA, 0] + bytes("b")).data, bytes("a\rb"), "commands between are not data")
        XCTAssertEqual(run(bytes("a\r") + [IAC, IAC, 0]).data, bytes("a\r") + [255, 0], "255 after CR is data")
    }

    // MARK: Accepted options

    func testAcceptsEchoAndSGAFromTheTarget() {
        var filter = TelnetFilter()
        let out = run(&filter, [[IAC, WILL, SGA, IAC, WILL, ECHO]])
        XCTAssertEqual(out.replies, [IAC, DO, SGA, IAC, DO, ECHO])
        XCTAssertTrue(filter.isEnabled(SGA, .him))
        XCTAssertTrue(filter.isEnabled(ECHO, .him))
        XCTAssertFalse(filter.isEnabled(SGA, .us), "the two sides are separate")
        // Password done: the server stops echoing; we acknowledge once.
        XCTAssertEqual(run(&filter, [[IAC, WONT, ECHO]]).replies, [IAC, DONT, ECHO])
        XCTAssertFalse(filter.isEnabled(ECHO, .him))
        XCTAssertEqual(run(&filter, [[IAC, WILL, ECHO]]).replies, [IAC, DO, ECHO], "and can turn it on again")
    }

    func testAcceptsSGAForUs() {
        var filter = TelnetFilter()
        XCTAssertEqual(run(&filter, [[IAC, DO, SGA]]).replies, [IAC, WILL, SGA])
        XCTAssertTrue(filter.isEnabled(SGA, .us))
        XCTAssertEqual(run(&filter, [[IAC, DONT, SGA]]).replies, [IAC, WONT, SGA])
        XCTAssertFalse(filter.isEnabled(SGA, .us))
    }

    func testTerminalTypeFollowsMTTS() {
        var filter = TelnetFilter()
        // SEND before we agreed to TTYPE is not answered (RFC 1091), and does not count.
        XCTAssertEqual(run(&filter, [[IAC, SB, TTYPE, 1, IAC, SE]]).replies, [])
        XCTAssertEqual(run(&filter, [[IAC, DO, TTYPE]]).replies, [IAC, WILL, TTYPE])
        XCTAssertTrue(filter.isEnabled(TTYPE, .us))
        // The cycle: the client's name, the terminal type, the MTTS bits (1 ANSI + 4 UTF-8 +
        // 8 256 colours + 128 proxy + 256 truecolour + 512 MNES), then the same again, which
        // tells the server that the list has ended.
        XCTAssertEqual(run(&filter, [[IAC, SB, TTYPE, 1, IAC, SE]]).replies, ttypeIs("UVPROXYD"))
        XCTAssertEqual(run(&filter, [[IAC, SB, TTYPE, 1], [IAC], [SE]]).replies, ttypeIs("XTERM-256COLOR"))
        XCTAssertEqual(run(&filter, [[IAC, SB, TTYPE, 1, IAC, SE]]).replies, ttypeIs("MTTS 909"))
        XCTAssertEqual(run(&filter, [[IAC, SB, TTYPE, 1, IAC, SE]]).replies, ttypeIs("MTTS 909"))
        XCTAssertEqual(run(&filter, [[IAC, SB, TTYPE, 1, IAC, SE, IAC, SB, TTYPE, 1, IAC, SE]]).replies,
                       ttypeIs("MTTS 909") + ttypeIs("MTTS 909"))
        XCTAssertEqual(909, 1 + 4 + 8 + 128 + 256 + 512)
        // An IS from the server, or another subnegotiation, is no question and does not count.
        XCTAssertEqual(run(&filter, [[IAC, SB, TTYPE, 0] + bytes("X") + [IAC, SE, IAC, SB, NAWS, 1, IAC, SE]]).replies, [])
        var fresh = TelnetFilter()
        _ = run(&fresh, [[IAC, DO, TTYPE]])
        XCTAssertEqual(run(&fresh, [[IAC, SB, TTYPE, 0, IAC, SE, IAC, SB, TTYPE, 2, IAC, SE, IAC, SB, TTYPE, IAC, SE]]).replies, [],
                       "IS, an unknown command, an empty SB")
        XCTAssertEqual(run(&fresh, [[IAC, SB, TTYPE, 1, IAC, SE]]).replies, ttype1)
    }

    func testMTTSWithoutUTF8WhenTheTargetIsNotUTF8() {
        var filter = TelnetFilter(utf8: false)
        XCTAssertFalse(filter.utf8)
        let send: [UInt8] = [IAC, SB, TTYPE, 1, IAC, SE]
        XCTAssertEqual(run(&filter, [[IAC, DO, TTYPE] + send + send + send + send]).replies,
                       [IAC, WILL, TTYPE] + ttype1 + ttype2 + ttypeIs("MTTS 905") + ttypeIs("MTTS 905"))
        XCTAssertEqual(905, 909 - 4)
    }

    /// MTTS: a server asks again from the start by turning TTYPE off and on.
    func testMTTSCycleRestartsWhenTTYPEIsTurnedOffAndOn() {
        var filter = TelnetFilter()
        let send: [UInt8] = [IAC, SB, TTYPE, 1, IAC, SE]
        XCTAssertEqual(run(&filter, [[IAC, DO, TTYPE] + send + send + send]).replies, [IAC, WILL, TTYPE] + ttype1 + ttype2 + ttype3)
        XCTAssertEqual(run(&filter, [[IAC, DONT, TTYPE]]).replies, [IAC, WONT, TTYPE])
        XCTAssertEqual(run(&filter, [send]).replies, [], "off: no answer")
        XCTAssertEqual(run(&filter, [[IAC, DO, TTYPE]]).replies, [IAC, WILL, TTYPE])
        XCTAssertEqual(run(&filter, [send + send]).replies, ttype1 + ttype2, "from the name again")
        // A repeated DO changes nothing, so it restarts nothing either.
        XCTAssertEqual(run(&filter, [[IAC, DO, TTYPE] + send]).replies, ttype3)
        // Turned off half-way through: the next cycle still starts from the name.
        XCTAssertEqual(run(&filter, [[IAC, DONT, TTYPE, IAC, DO, TTYPE] + send]).replies,
                       [IAC, WONT, TTYPE, IAC, WILL, TTYPE] + ttype1)
    }

    // MARK: NEW-ENVIRON (MNES)

    func testNewEnvironIsAcceptedForUsOnly() {
        var filter = makeFilter()
        let send = environ([SEND, VAR] + IPADDRESS)
        XCTAssertEqual(run(&filter, [send]).replies, [], "SEND before DO NEW-ENVIRON is not answered (RFC 1572)")
        XCTAssertEqual(run(&filter, [[IAC, DO, NEWENV]]).replies, [IAC, WILL, NEWENV])
        XCTAssertTrue(filter.isEnabled(NEWENV, .us))
        XCTAssertEqual(run(&filter, [[IAC, DO, NEWENV]]).replies, [], "already on")
        XCTAssertEqual(run(&filter, [send]).replies, ipAnswer)
        XCTAssertEqual(run(&filter, [[IAC, WILL, NEWENV]]).replies, [IAC, DONT, NEWENV], "we take no variables from the target")
        XCTAssertFalse(filter.isEnabled(NEWENV, .him))
        XCTAssertEqual(run(&filter, [[IAC, DONT, NEWENV]]).replies, [IAC, WONT, NEWENV])
        XCTAssertEqual(run(&filter, [send]).replies, [], "off again: no answer")
        XCTAssertEqual(run(&filter, [[IAC, DO, NEWENV]] + [send]).replies, [IAC, WILL, NEWENV] + ipAnswer)
    }

    /// A filter that has said WILL NEW-ENVIRON.
    func environFilter(_ clientAddress: String = address) -> TelnetFilter {
        var filter = TelnetFilter(clientAddress: clientAddress)
        XCTAssertEqual(run(&filter, [[IAC, DO, NEWENV]]).replies, [IAC, WILL, NEWENV])
        return filter
    }

    func testIPAddressAskedWithVAROrUSERVAR() {
        var filter = environFilter()
        // MNES: the server asks for its variables as well-known ones.
        XCTAssertEqual(run(&filter, [environ([SEND, VAR] + IPADDRESS)]).replies,
                       [IAC, SB, NEWENV, IS, VAR] + IPADDRESS + [VALUE] + bytes("203.0.113.7") + [IAC, SE])
        // Asked as a user variable, answered under the type it was asked with.
        XCTAssertEqual(run(&filter, [environ([SEND, USERVAR] + IPADDRESS)]).replies,
                       [IAC, SB, NEWENV, IS, USERVAR] + IPADDRESS + [VALUE] + bytes("203.0.113.7") + [IAC, SE])
        // Both, and twice: one answer per entry, in the order asked.
        XCTAssertEqual(run(&filter, [environ([SEND, USERVAR] + IPADDRESS + [VAR] + IPADDRESS)]).replies,
                       environ([IS, USERVAR] + IPADDRESS + [VALUE] + bytes(address) + [VAR] + IPADDRESS + [VALUE] + bytes(address)))
        // Names are case-sensitive (RFC 1572 variables are exact strings).
        XCTAssertEqual(run(&filter, [environ([SEND, VAR] + bytes("ipaddress"))]).replies,
                       environ([IS, VAR] + bytes("ipaddress") + [VALUE]))
        // IPv6 as text, as the session passes it.
        var v6 = environFilter("2001:db8::1")
        XCTAssertEqual(run(&v6, [environ([SEND, VAR] + IPADDRESS)]).replies,
                       environ([IS, VAR] + IPADDRESS + [VALUE] + bytes("2001:db8::1")))
    }

    func testEmptySendAndNamelessTypes() {
        var filter = environFilter()
        // An empty list asks for everything: MNES servers get IPADDRESS, the one variable we have.
        XCTAssertEqual(run(&filter, [environ([SEND])]).replies, ipAnswer)
        // A nameless VAR: all well-known variables, which is IPADDRESS.
        XCTAssertEqual(run(&filter, [environ([SEND, VAR])]).replies, ipAnswer)
        // A nameless USERVAR: all user variables, of which there are none: an empty IS.
        XCTAssertEqual(run(&filter, [environ([SEND, USERVAR])]).replies, environ([IS]))
        XCTAssertEqual(run(&filter, [environ([SEND, USERVAR, VAR])]).replies, ipAnswer)
    }

    func testOtherVariablesAreSentEmpty() {
        var filter = environFilter()
        let ask: [UInt8] = [SEND, VAR] + bytes("USER") + [USERVAR] + bytes("CLIENT_NAME") + [VAR] + IPADDRESS
            + [VAR] + bytes("SYSTEMTYPE") + [USERVAR] + bytes("MTTS")
        XCTAssertEqual(run(&filter, [environ(ask)]).replies,
                       environ([IS, VAR] + bytes("USER") + [VALUE, USERVAR] + bytes("CLIENT_NAME") + [VALUE, VAR] + IPADDRESS
                               + [VALUE] + bytes(address) + [VAR] + bytes("SYSTEMTYPE") + [VALUE, USERVAR] + bytes("MTTS") + [VALUE]),
                       "every entry answered in order; the unknown ones defined and empty (SPEC §6)")
        // A VALUE inside a SEND (reversed servers, RFC 1571) is no part of a name: skipped to the next type.
        XCTAssertEqual(run(&filter, [environ([SEND, VAR] + IPADDRESS + [VALUE] + bytes("junk") + [VAR] + bytes("X"))]).replies,
                       environ([IS, VAR] + IPADDRESS + [VALUE] + bytes(address) + [VAR] + bytes("X") + [VALUE]))
        // Bytes before the first type name nothing: the list is empty.
        XCTAssertEqual(run(&filter, [environ([SEND] + bytes("junk"))]).replies, ipAnswer)
    }

    func testUnknownAddressIsSentEmpty() {
        var filter = environFilter("")
        XCTAssertEqual(run(&filter, [environ([SEND, VAR] + IPADDRESS)]).replies, environ([IS, VAR] + IPADDRESS + [VALUE]))
        XCTAssertEqual(run(&filter, [environ([SEND])]).replies, environ([IS, VAR] + IPADDRESS + [VALUE]))
    }

    func testEnvironEscaping() {
        // A value with VAR, VALUE, ESC and USERVAR bytes: each after an ESC (RFC 1572).
        var filter = environFilter("a\u{0}b\u{1}c\u{2}d\u{3}e")
        XCTAssertEqual(run(&filter, [environ([SEND, VAR] + IPADDRESS)]).replies,
                       environ([IS, VAR] + IPADDRESS + [VALUE] + bytes("a") + [ESC, 0] + bytes("b") + [ESC, 1] + bytes("c")
                               + [ESC, 2] + bytes("d") + [ESC, 3] + bytes("e")))
        // A name from the target with escaped special bytes and a 255 (IAC IAC on the wire) comes
        // back escaped the same way.
        let name: [UInt8] = bytes("N") + [ESC, VAR, ESC, VALUE, ESC, ESC, ESC, USERVAR, IAC, IAC] + bytes("Z")
        XCTAssertEqual(run(&filter, [environ([SEND, USERVAR] + name + [VAR] + IPADDRESS)]).replies,
                       environ([IS, USERVAR] + name + [VALUE, VAR] + IPADDRESS + [VALUE] + bytes("a") + [ESC, 0] + bytes("b")
                               + [ESC, 1] + bytes("c") + [ESC, 2] + bytes("d") + [ESC, 3] + bytes("e")))
        // An escaped IPADDRESS spelling is still the name IPADDRESS.
        var plain = environFilter()
        XCTAssertEqual(run(&plain, [environ([SEND, VAR, ESC] + IPADDRESS)]).replies, ipAnswer)
        // An ESC at the very end escapes nothing.
        XCTAssertEqual(run(&plain, [environ([SEND, VAR] + IPADDRESS + [ESC])]).replies, ipAnswer)
    }

    func testISAndINFOFromTheTargetAreNoQuestions() {
        var filter = environFilter()
        XCTAssertEqual(run(&filter, [environ([IS, VAR] + IPADDRESS + [VALUE] + bytes("1.2.3.4"))
                                     + environ([INFO, VAR] + bytes("USER") + [VALUE] + bytes("x"))
                                     + environ([]) + environ([7])]).replies, [])
        XCTAssertEqual(run(&filter, [environ([SEND])]).replies, ipAnswer, "and they leave nothing behind")
    }

    /// The kept data is bounded: a SEND over 512 bytes is answered as far as its whole entries go.
    func testSendLongerThanTheBound() {
        let limit = Telnet.environSendLimit
        XCTAssertEqual(limit, 512)
        var filter = environFilter()
        // IPADDRESS, then a name that crosses the bound: the first is answered, the cut one not.
        let long: [UInt8] = [SEND, VAR] + IPADDRESS + [USERVAR] + [UInt8](repeating: 0x41, count: 2000)
        XCTAssertEqual(run(&filter, [environ(long)]).replies, ipAnswer)
        // Exactly at the bound: everything is whole.
        let filler = limit - 1 - 1 - IPADDRESS.count - 1 - 1  // SEND, VAR, IPADDRESS, VAR, the name
        let fits: [UInt8] = [SEND, VAR] + IPADDRESS + [VAR] + [UInt8](repeating: 0x42, count: filler) + [0x43]
        XCTAssertEqual(fits.count, limit)
        XCTAssertEqual(run(&filter, [environ(fits)]).replies,
                       environ([IS, VAR] + IPADDRESS + [VALUE] + bytes(address) + [VAR] + [UInt8](repeating: 0x42, count: filler) + [0x43, VALUE]))
        // One byte over: the last name may go on, so it is not answered.
        XCTAssertEqual(run(&filter, [environ(fits + [0x44])]).replies, ipAnswer)
        // One byte over, and that byte starts another entry: the name before it is whole.
        XCTAssertEqual(run(&filter, [environ(fits + [USERVAR] + bytes("MORE"))]).replies,
                       environ([IS, VAR] + IPADDRESS + [VALUE] + bytes(address) + [VAR] + [UInt8](repeating: 0x42, count: filler) + [0x43, VALUE]))
        // Nothing whole at all: no answer (not "everything", which an empty list would ask for).
        XCTAssertEqual(run(&filter, [environ([SEND, VAR] + [UInt8](repeating: 0x41, count: 600))]).replies, [])
        XCTAssertEqual(run(&filter, [environ([SEND] + [UInt8](repeating: 0x41, count: 600))]).replies, [])
        // 255s count once each (they are kept unescaped), and the next SEND is answered as usual.
        let wide: [UInt8] = [SEND, VAR] + IPADDRESS + [VAR] + [UInt8](repeating: 255, count: 600)
        XCTAssertEqual(run(&filter, [[IAC, SB, NEWENV] + TelnetFilterTests.escapeIAC(wide) + [IAC, SE] + bytes("after")]).replies, ipAnswer)
        XCTAssertEqual(run(&filter, [environ([SEND, VAR] + IPADDRESS)]).replies, ipAnswer)
        // A long SEND split into many reads: the same.
        let pieces = stride(from: 0, to: long.count + 5, by: 7).map { Array(environ(long)[$0..<min($0 + 7, long.count + 5)]) }
        XCTAssertEqual(run(&filter, pieces).replies, ipAnswer)
    }

    static func escapeIAC(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        bytes.withUnsafeBytes { TelnetFilter.escapeInput($0, into: &out) }
        return out
    }

    func testEnvironSubnegotiationCutByACommandLeavesNothingBehind() {
        var filter = environFilter()
        // No SE: IAC WILL ends the subnegotiation, unanswered; its half-read entry must not
        // become part of the next SEND.
        let out = run(&filter, [[IAC, SB, NEWENV, SEND, VAR] + bytes("IPADD") + [IAC, WILL, SGA] + bytes("text")
                                + environ([SEND, VAR] + bytes("X"))])
        XCTAssertEqual(out.data, bytes("text"))
        XCTAssertEqual(out.replies, [IAC, DO, SGA] + environ([IS, VAR] + bytes("X") + [VALUE]))
        // A NEW-ENVIRON SEND while the option is off keeps nothing that a later one could pick up.
        var off = makeFilter()
        _ = run(&off, [[IAC, SB, NEWENV, SEND, VAR] + bytes("JUNK")])
        XCTAssertEqual(run(&off, [[IAC, SE, IAC, DO, NEWENV] + environ([SEND, VAR] + IPADDRESS)]).replies, [IAC, WILL, NEWENV] + ipAnswer)
    }

    func testWindowSize() {
        var filter = TelnetFilter()
        XCTAssertEqual(run(&filter, [[IAC, DO, NAWS]]).replies, [IAC, WILL, NAWS] + naws80x24)
        XCTAssertTrue(filter.isEnabled(NAWS, .us))
        XCTAssertEqual(run(&filter, [[IAC, DO, NAWS]]).replies, [], "already on: no answer, no second size")

        // 255 inside the size is doubled.
        var wide = TelnetFilter(width: 255, height: 0x1FF)
        XCTAssertEqual(run(&wide, [[IAC, DO, NAWS]]).replies,
                       [IAC, WILL, NAWS, IAC, SB, NAWS, 0, 255, 255, 1, 255, 255, IAC, SE])
    }

    // MARK: Refused options

    func testRefusesEverythingElse() {
        var filter = TelnetFilter()
        let offers: [UInt8] = [IAC, WILL, COMPRESS2, IAC, WILL, COMPRESS, IAC, WILL, EOR, IAC, WILL, GMCP,
                               IAC, WILL, MSDP, IAC, WILL, MXP, IAC, WILL, CHARSET, IAC, WILL, TTYPE, IAC, WILL, NAWS,
                               IAC, WILL, NEWENV]
        XCTAssertEqual(run(&filter, [offers]).replies,
                       [IAC, DONT, COMPRESS2, IAC, DONT, COMPRESS, IAC, DONT, EOR, IAC, DONT, GMCP,
                        IAC, DONT, MSDP, IAC, DONT, MXP, IAC, DONT, CHARSET, IAC, DONT, TTYPE, IAC, DONT, NAWS,
                        IAC, DONT, NEWENV])
        let requests: [UInt8] = [IAC, DO, ECHO, IAC, DO, 36, IAC, DO, CHARSET, IAC, DO, EOR, IAC, DO, 34, IAC, DO, 255]
        XCTAssertEqual(run(&filter, [requests]).replies,
                       [IAC, WONT, ECHO, IAC, WONT, 36, IAC, WONT, CHARSET, IAC, WONT, EOR, IAC, WONT, 34, IAC, WONT, 255],
                       "we do not echo locally, send the old ENVIRON (RFC 1408), change charsets, linemode…")
        for option in [COMPRESS2, COMPRESS, EOR, GMCP, CHARSET, TTYPE, NAWS, NEWENV] { XCTAssertFalse(filter.isEnabled(option, .him)) }
        for option in [ECHO, 36, CHARSET, EOR] { XCTAssertFalse(filter.isEnabled(option, .us)) }
    }

    // MARK: No loops

    func testNoAnswerWhereNothingChanges() {
        var filter = TelnetFilter()
        XCTAssertEqual(run(&filter, [[IAC, WILL, SGA]]).replies, [IAC, DO, SGA])
        XCTAssertEqual(run(&filter, [[IAC, WILL, SGA, IAC, WILL, SGA]]).replies, [], "repeated WILL: already on")
        XCTAssertEqual(run(&filter, [[IAC, DO, TTYPE]]).replies, [IAC, WILL, TTYPE])
        XCTAssertEqual(run(&filter, [[IAC, DO, TTYPE]]).replies, [], "repeated DO: already on")
        // Options that are off: WONT/DONT need no acknowledgement (the classic loop).
        XCTAssertEqual(run(&filter, [[IAC, WONT, ECHO, IAC, DONT, NAWS, IAC, WONT, COMPRESS2, IAC, DONT, NEWENV]]).replies, [])
        // A peer that acknowledges our refusal gets nothing back.
        XCTAssertEqual(run(&filter, [[IAC, WILL, COMPRESS2]]).replies, [IAC, DONT, COMPRESS2])
        XCTAssertEqual(run(&filter, [[IAC, WONT, COMPRESS2]]).replies, [])
        XCTAssertEqual(run(&filter, [[IAC, DO, CHARSET]]).replies, [IAC, WONT, CHARSET])
        XCTAssertEqual(run(&filter, [[IAC, DONT, CHARSET]]).replies, [])
        XCTAssertEqual(run(&filter, [[IAC, DO, NEWENV, IAC, DO, NEWENV]]).replies, [IAC, WILL, NEWENV], "repeated DO: already on")
        // Turning off is acknowledged once.
        XCTAssertEqual(run(&filter, [[IAC, WONT, SGA, IAC, WONT, SGA]]).replies, [IAC, DONT, SGA])
        XCTAssertEqual(run(&filter, [[IAC, DONT, TTYPE, IAC, DONT, TTYPE]]).replies, [IAC, WONT, TTYPE])
    }

    /// Two filters wired to each other (each one's replies are the other's input) settle: the
    /// proxy never opens a negotiation, so replies are answers only, and answers to answers stop.
    func testTwoFiltersTalkingToEachOtherSettle() {
        var a = TelnetFilter(), b = TelnetFilter()
        // A server's opening, as if `a` had sent it.
        var toB: [UInt8] = [IAC, WILL, SGA, IAC, DO, SGA, IAC, DO, NAWS, IAC, WILL, COMPRESS2, IAC, DO, TTYPE,
                            IAC, SB, TTYPE, 1, IAC, SE, IAC, WILL, ECHO]
        var rounds = 0
        while !toB.isEmpty {
            rounds += 1
            guard rounds < 10 else { return XCTFail("negotiation loops") }
            let toA = run(&b, [toB]).replies
            toB = run(&a, [toA]).replies
        }
        XCTAssertLessThanOrEqual(rounds, 2)
        XCTAssertTrue(a.isEnabled(SGA, .us) && a.isEnabled(SGA, .him) && b.isEnabled(SGA, .us) && b.isEnabled(SGA, .him))
        // `a` refused what `b` agreed to do (NAWS, TTYPE) and would not echo, so both ends agree those are off.
        XCTAssertFalse(b.isEnabled(NAWS, .us) || b.isEnabled(TTYPE, .us) || b.isEnabled(ECHO, .him))
        XCTAssertFalse(a.isEnabled(NAWS, .him) || a.isEnabled(TTYPE, .him) || a.isEnabled(ECHO, .us))
    }

    func testStateIsAFewDozenBytes() {
        // Three arrays (replies, the client address, the kept subnegotiation data) and a dozen bytes.
        XCTAssertLessThanOrEqual(MemoryLayout<TelnetFilter>.size, 40, "kept per telnet session")
    }

    // MARK: Client input

    func testEscapeInputDoubles255() {
        func escaped(_ input: [UInt8]) -> [UInt8] {
            var out: [UInt8] = []
            input.withUnsafeBytes { TelnetFilter.escapeInput($0, into: &out) }
            return out
        }
        XCTAssertEqual(escaped(bytes("say hi\r\n")), bytes("say hi\r\n"))
        XCTAssertEqual(escaped([255]), [255, 255])
        XCTAssertEqual(escaped(bytes("a") + [255, 255] + bytes("b") + [255]), bytes("a") + [255, 255, 255, 255] + bytes("b") + [255, 255])
        XCTAssertEqual(escaped([]), [])
        XCTAssertFalse(bytes("look\r\n").withUnsafeBytes { TelnetFilter.needsEscaping($0) })
        XCTAssertTrue((bytes("x") + [255]).withUnsafeBytes { TelnetFilter.needsEscaping($0) })
        XCTAssertFalse([UInt8]().withUnsafeBytes { TelnetFilter.needsEscaping($0) })
    }

    // MARK: Splits

    /// Recorded and modelled server greetings: negotiations mixed with text.
    static let recordings: [(name: String, bytes: [UInt8], data: [UInt8], replies: [UInt8])] = {
        func b(_ s: String) -> [UInt8] { Array(s.utf8) }
        // TinyMUX 2.12 (Debian's), recorded: its greeting, then SB TTYPE SEND once we said WILL TTYPE,
        // then the echo of a `say` of latin-1 text and a prompt-less line.
        let tinyText = b("Welcome to TinyMUX\r\n") + b(String(repeating: "-", count: 78) + "\r\n")
            + b("  \"connect <name> <password>\" connects you to an existing character.\r\n")
        let tinyMUX: [UInt8] = [IAC, WILL, EOR, IAC, DO, EOR, IAC, DO, SGA, IAC, DO, TTYPE, IAC, DO, NAWS,
                                IAC, DO, NEWENV, IAC, WILL, CHARSET, IAC, DO, CHARSET] + tinyText
            + [IAC, SB, TTYPE, 1, IAC, SE] + b("You say, \"caf") + [0xE9] + b("\"\r\n")
        let tinyReplies: [UInt8] = [IAC, DONT, EOR, IAC, WONT, EOR, IAC, WILL, SGA, IAC, WILL, TTYPE,
                                    IAC, WILL, NAWS] + naws80x24 + [IAC, WILL, NEWENV, IAC, DONT, CHARSET, IAC, WONT, CHARSET]
            + ttype1

        // A ROM 2.4 derivative with MCCP and MSSP: offers, a login that hides the password with
        // WILL ECHO, LF CR line ends, prompts that end with GA.
        let rom: [UInt8] = [IAC, WILL, COMPRESS2, IAC, WILL, COMPRESS, IAC, WILL, MSSP]
            + b("\n\rTHIS IS A MUD BASED ON.....\n\r\n\r     ROM Version 2.4 beta\n\rBy what name do you wish to be known? ")
            + [IAC, GA, IAC, DO, COMPRESS2]  // servers that send DO for their own option get WONT
            + b("Password: ") + [IAC, WILL, ECHO, IAC, GA]
            + [IAC, SB, MSSP, 1] + b("NAME") + [2] + b("Rom") + [IAC, SE]
            + [IAC, WONT, ECHO] + b("\n\r\u{1b}[1;32m<20hp 100m 100mv>\u{1b}[0m ") + [IAC, GA]
        let romData = b("\n\rTHIS IS A MUD BASED ON.....\n\r\n\r     ROM Version 2.4 beta\n\rBy what name do you wish to be known? ")
            + b("Password: ") + b("\n\r\u{1b}[1;32m<20hp 100m 100mv>\u{1b}[0m ")
        let romReplies: [UInt8] = [IAC, DONT, COMPRESS2, IAC, DONT, COMPRESS, IAC, DONT, MSSP, IAC, WONT, COMPRESS2,
                                   IAC, DO, ECHO, IAC, DONT, ECHO]

        // Modelled on Evennia: MUD-protocol offers, TTYPE asked three times (the MTTS cycle), NAWS, UTF-8 text,
        // GMCP after the client refused it (a server bug: still stripped), and 255 as data.
        let evennia: [UInt8] = [IAC, DO, TTYPE, IAC, DO, NAWS, IAC, WILL, MSDP, IAC, WILL, GMCP, IAC, WILL, MSSP,
                                IAC, WILL, MXP, IAC, WILL, COMPRESS2, IAC, WILL, SGA, IAC, WILL, ECHO, IAC, WONT, ECHO]
            + [IAC, SB, TTYPE, 1, IAC, SE, IAC, SB, TTYPE, 1, IAC, SE]
            + b("Welcome to \u{1b}[1mEvennia\u{1b}[0m – naïve café ✓\r\n")
            + [IAC, SB, TTYPE, 1, IAC, SE]
            + [IAC, SB, GMCP] + b("Core.Hello {}") + [IAC, SE]
            + b("stats: ") + [IAC, IAC, IAC, IAC] + b("\r\0\r\n")
        let evenniaData = b("Welcome to \u{1b}[1mEvennia\u{1b}[0m – naïve café ✓\r\n") + b("stats: ") + [255, 255] + b("\r\r\n")
        let evenniaReplies: [UInt8] = [IAC, WILL, TTYPE, IAC, WILL, NAWS] + naws80x24
            + [IAC, DONT, MSDP, IAC, DONT, GMCP, IAC, DONT, MSSP, IAC, DONT, MXP, IAC, DONT, COMPRESS2,
               IAC, DO, SGA, IAC, DO, ECHO, IAC, DONT, ECHO] + ttype1 + ttype2 + ttype3

        // Everything awkward at once: unterminated SB ended by a command, IAC IAC inside SB,
        // CR NUL around commands, back-to-back commands, a trailing lone IAC left pending.
        let awkward: [UInt8] = b("x\r") + [IAC, NOP, 0] + [IAC, SB, 200, IAC, IAC, 1, IAC, WILL, SGA]
            + [IAC, IAC, IAC, GA, IAC, IAC] + b("\r") + [0, 0, IAC, SB, IAC, SE] + b("end") + [IAC]
        let awkwardData = b("x\r") + [255, 255] + b("\r") + [0] + b("end")
        let awkwardReplies: [UInt8] = [IAC, DO, SGA]

        // MNES and MTTS together, modelled on a server that asks for both: NEW-ENVIRON SENDs with
        // escaped bytes and a 255 in a name, an empty SEND, TTYPE asked four times, text between.
        let odd: [UInt8] = b("N") + [ESC, VAR, IAC, IAC, ESC, ESC] + b("Z")
        let mnes: [UInt8] = [IAC, DO, NEWENV, IAC, DO, TTYPE] + b("Hi\r\n")
            + environ([SEND, VAR] + IPADDRESS + [USERVAR] + odd + [VAR] + b("CLIENT_NAME"))
            + [IAC, SB, TTYPE, 1, IAC, SE] + b("> ") + [IAC, GA]
            + [IAC, SB, TTYPE, 1, IAC, SE, IAC, SB, TTYPE, 1, IAC, SE] + environ([SEND]) + b("x") + [IAC, IAC]
            + [IAC, SB, TTYPE, 1, IAC, SE] + environ([IS, VAR] + b("USER")) + b("\r\0.")
        let mnesData = b("Hi\r\n") + b("> ") + b("x") + [255] + b("\r.")
        let mnesReplies: [UInt8] = [IAC, WILL, NEWENV, IAC, WILL, TTYPE]
            + environ([IS, VAR] + IPADDRESS + [VALUE] + b(address) + [USERVAR] + odd + [VALUE, VAR] + b("CLIENT_NAME") + [VALUE])
            + ttype1 + ttype2 + ttype3 + ipAnswer + ttype3

        return [("TinyMUX", tinyMUX, tinyText + b("You say, \"caf") + [0xE9] + b("\"\r\n"), tinyReplies),
                ("MNES", mnes, mnesData, mnesReplies),
                ("ROM", rom, romData, romReplies),
                ("Evennia", evennia, evenniaData, evenniaReplies),
                ("awkward", awkward, awkwardData, awkwardReplies)]
    }()

    func testRecordingsUnsplit() {
        for r in Self.recordings {
            let out = run(r.bytes)
            XCTAssertEqual(out.data, r.data, "\(r.name) data: \(String(decoding: out.data, as: UTF8.self))")
            XCTAssertEqual(out.replies, r.replies, "\(r.name) replies")
        }
    }

    func testEverySingleCutGivesTheSameResult() {
        for r in Self.recordings {
            for cut in 0...r.bytes.count {
                let out = run(Array(r.bytes[..<cut]), Array(r.bytes[cut...]))
                XCTAssertEqual(out.data, r.data, "\(r.name) cut at \(cut)")
                XCTAssertEqual(out.replies, r.replies, "\(r.name) cut at \(cut)")
            }
        }
    }

    /// Fuzz-style: hundreds of random splits of each recording (seeded, so failures repeat),
    /// from byte-by-byte to a few large pieces; output and replies must not depend on the split.
    func testRandomSplitsGiveTheSameResult() {
        var rng = SplitMix64(seed: 0x7E1_4E7)
        for r in Self.recordings {
            let whole = run(r.bytes)
            for round in 0..<400 {
                let maxPiece = [1, 2, 3, 5, 8, 16, 64][round % 7]
                var chunks: [[UInt8]] = []
                var i = 0
                while i < r.bytes.count {
                    let n = Int(rng.next() % UInt64(maxPiece)) + 1
                    chunks.append(Array(r.bytes[i..<min(i + n, r.bytes.count)]))
                    i += n
                }
                if round % 5 == 0 { chunks.insert([], at: Int(rng.next() % UInt64(chunks.count + 1))) }
                var filter = makeFilter()
                let out = run(&filter, chunks)
                XCTAssertEqual(out.data, whole.data, "\(r.name) round \(round): \(chunks.map(\.count))")
                XCTAssertEqual(out.replies, whole.replies, "\(r.name) round \(round): \(chunks.map(\.count))")
                if out.data != whole.data || out.replies != whole.replies { return }
            }
        }
    }
}

// MARK: GMCP (SPEC §7)

/// `IAC SB GMCP <data> IAC SE` with 255 doubled.
private func gmcp(_ data: [UInt8]) -> [UInt8] {
    var out: [UInt8] = [IAC, SB, GMCP]
    for b in data { out += b == IAC ? [IAC, IAC] : [b] }
    return out + [IAC, SE]
}
private func gmcp(_ s: String) -> [UInt8] { gmcp(Array(s.utf8)) }
private let hello = gmcp(#"Core.Hello {"client":"uvproxyd","version":"9.8.7"}"#)

extension TelnetFilterTests {
    /// A message as the caller sees it: its session offset (the output before the call plus its
    /// position), package and payload.
    struct Seen: Equatable, CustomStringConvertible {
        var offset: Int
        var package: String
        var payload: [UInt8]?
        var description: String { "@\(offset) \(package) \(payload.map { String(decoding: $0, as: UTF8.self) } ?? "-")" }
    }

    func gmcpFilter() -> TelnetFilter { TelnetFilter(clientAddress: address, gmcp: true, gmcpVersion: "9.8.7") }

    /// `run` that also takes the messages after every chunk, as the session does.
    func runGMCP(_ filter: inout TelnetFilter, _ chunks: [[UInt8]]) -> (data: [UInt8], replies: [UInt8], messages: [Seen]) {
        var data: [UInt8] = []
        var replies: [UInt8] = []
        var messages: [Seen] = []
        for chunk in chunks {
            let before = data.count
            var lastPosition = 0
            chunk.withUnsafeBytes { input in
                filter.receive(input) { run in data += run }
            }
            XCTAssertLessThanOrEqual(data.count - before, chunk.count)
            for m in filter.gmcpMessages {
                XCTAssertGreaterThanOrEqual(m.position, lastPosition, "positions never go back")
                XCTAssertLessThanOrEqual(m.position, data.count - before, "within the call's output")
                lastPosition = m.position
                messages.append(Seen(offset: before + m.position, package: String(decoding: m.package, as: UTF8.self),
                                     payload: m.payload.map(Array.init)))
            }
            filter.gmcpMessages.removeAll()
            replies += filter.replies
            filter.replies.removeAll()
        }
        return (data, replies, messages)
    }

    func runGMCP(_ chunks: [UInt8]...) -> (data: [UInt8], replies: [UInt8], messages: [Seen]) {
        var filter = gmcpFilter()
        return runGMCP(&filter, chunks)
    }

    func testGMCPIsRefusedUnlessAsked() {
        for var filter in [TelnetFilter(), TelnetFilter(clientAddress: address, gmcp: false, gmcpVersion: "1")] {
            let out = runGMCP(&filter, [[IAC, WILL, GMCP, IAC, DO, GMCP] + gmcp("Char.Vitals {}") + bytes("x")])
            XCTAssertEqual(out.replies, [IAC, DONT, GMCP, IAC, WONT, GMCP])
            XCTAssertEqual(out.data, bytes("x"))
            XCTAssertEqual(out.messages, [])
            XCTAssertFalse(filter.gmcpEnabled)
            XCTAssertFalse(filter.gmcp)
            XCTAssertEqual(filter.gmcpMessages.capacity, 0, "no storage for messages")
        }
    }

    func testGMCPNegotiation() {
        var filter = gmcpFilter()
        XCTAssertTrue(filter.gmcp)
        XCTAssertFalse(filter.gmcpEnabled, "not before the target offers it")
        XCTAssertEqual(runGMCP(&filter, [[IAC, WILL, GMCP]]).replies, [IAC, DO, GMCP] + hello)
        XCTAssertTrue(filter.gmcpEnabled)
        XCTAssertTrue(filter.isEnabled(GMCP, .him))
        XCTAssertFalse(filter.isEnabled(GMCP, .us))
        XCTAssertEqual(runGMCP(&filter, [[IAC, WILL, GMCP]]).replies, [], "already on: no answer, no second hello")
        XCTAssertEqual(runGMCP(&filter, [[IAC, DO, GMCP]]).replies, [IAC, WONT, GMCP], "we are the client side")
        XCTAssertEqual(runGMCP(&filter, [[IAC, DONT, GMCP]]).replies, [], "our side is off already")
        XCTAssertTrue(filter.gmcpEnabled)
        XCTAssertEqual(runGMCP(&filter, [[IAC, WONT, GMCP, IAC, WONT, GMCP]]).replies, [IAC, DONT, GMCP])
        XCTAssertFalse(filter.gmcpEnabled)
        XCTAssertEqual(runGMCP(&filter, [gmcp("Char.Vitals {}")]).messages, [], "off again: messages are dropped")
        XCTAssertEqual(runGMCP(&filter, [[IAC, WILL, GMCP]]).replies, [IAC, DO, GMCP] + hello, "on again: a new hello")
        // The hello's version is escaped as JSON.
        var odd = TelnetFilter(gmcp: true, gmcpVersion: "1\"2")
        XCTAssertEqual(runGMCP(&odd, [[IAC, WILL, GMCP]]).replies,
                       [IAC, DO, GMCP] + gmcp(#"Core.Hello {"client":"uvproxyd","version":"1\"2"}"#))
    }

    func testGMCPMessagesWithAndWithoutPayload() {
        let input = [IAC, WILL, GMCP] + bytes("A") + gmcp("Char.Vitals {\"hp\":10,\"mp\":5}") + bytes("B")
            + gmcp("Core.Ping") + gmcp("Core.Goodbye ") + gmcp("Comm.Channel.Text not json") + bytes("CD")
            + gmcp("Char.Name \"x\"") + gmcp("") + gmcp(" {}")
        let out = runGMCP(input)
        XCTAssertEqual(out.data, bytes("ABCD"), "messages add nothing to the text")
        XCTAssertEqual(out.replies, [IAC, DO, GMCP] + hello)
        XCTAssertEqual(out.messages, [Seen(offset: 1, package: "Char.Vitals", payload: bytes("{\"hp\":10,\"mp\":5}")),
                                      Seen(offset: 2, package: "Core.Ping", payload: nil),
                                      Seen(offset: 2, package: "Core.Goodbye", payload: nil),
                                      Seen(offset: 2, package: "Comm.Channel.Text", payload: bytes("not json")),
                                      Seen(offset: 4, package: "Char.Name", payload: bytes("\"x\""))],
                       "an empty subnegotiation and an empty package are no messages")
    }

    func testGMCPPayloadWithIACIAC() {
        // 255 inside the subnegotiation is doubled on the wire and one byte in the payload; a
        // doubled IAC followed by an SE byte does not end the message.
        let payload: [UInt8] = [0x22, 255, 0x22, 0x20, 255, SE, 255, 255, 0x41]
        let input = [IAC, WILL, GMCP] + gmcp(bytes("Raw.Bytes ") + payload) + bytes("after")
        for cut in 0...input.count {
            let out = runGMCP(Array(input[..<cut]), Array(input[cut...]))
            XCTAssertEqual(out.data, bytes("after"), "cut \(cut)")
            XCTAssertEqual(out.messages, [Seen(offset: 0, package: "Raw.Bytes", payload: payload)], "cut \(cut)")
        }
    }

    func testGMCPBeforeItIsOnIsDropped() {
        let out = runGMCP(bytes("a") + gmcp("Char.Vitals {}") + bytes("b") + [IAC, WILL, GMCP] + gmcp("Room.Info {}"))
        XCTAssertEqual(out.data, bytes("ab"))
        XCTAssertEqual(out.messages, [Seen(offset: 2, package: "Room.Info", payload: bytes("{}"))])
    }

    func testGMCPWithoutSEIsDroppedAtTheNextCommand() {
        let out = runGMCP([IAC, WILL, GMCP, IAC, SB, GMCP] + bytes("Char.Vitals {\"hp\":1}") + [IAC, WILL, SGA] + bytes("text")
                          + gmcp("Char.Vitals {\"hp\":2}"))
        XCTAssertEqual(out.data, bytes("text"))
        XCTAssertEqual(out.replies, [IAC, DO, GMCP] + hello + [IAC, DO, SGA])
        XCTAssertEqual(out.messages, [Seen(offset: 4, package: "Char.Vitals", payload: bytes("{\"hp\":2}"))])
    }

    /// Text, GMCP, text, GMCP, text: cut once at every byte, cut into every pair of pieces
    /// around each message, byte by byte, and at random: the same text, replies and messages at
    /// the same offsets.
    func testGMCPSurvivesEverySplit() {
        let stream = bytes("Hello\r\n") + [IAC, WILL, GMCP] + bytes("HP: ") + gmcp("Char.Vitals {\"hp\": 255, \"s\": \"\u{FF}\"}")
            + bytes("10\r\0") + [IAC, IAC] + gmcp([0x58, 0x20, 255, 255]) + gmcp("Core.Ping") + bytes("> ") + [IAC, GA]
        let whole = runGMCP(stream)
        XCTAssertEqual(whole.data, bytes("Hello\r\nHP: 10\r") + [255] + bytes("> "))
        XCTAssertEqual(whole.messages.map(\.offset), [11, 15, 15])
        XCTAssertEqual(whole.messages.map(\.package), ["Char.Vitals", "X", "Core.Ping"])
        XCTAssertEqual(whole.messages[1].payload, [255, 255])
        for cut in 0...stream.count {
            let out = runGMCP(Array(stream[..<cut]), Array(stream[cut...]))
            XCTAssertEqual(out.data, whole.data, "cut \(cut)")
            XCTAssertEqual(out.replies, whole.replies, "cut \(cut)")
            XCTAssertEqual(out.messages, whole.messages, "cut \(cut)")
        }
        for a in 0...stream.count {
            for b in a...stream.count {
                let out = runGMCP(Array(stream[..<a]), Array(stream[a..<b]), Array(stream[b...]))
                XCTAssertEqual(out.messages, whole.messages, "cuts \(a), \(b)")
                XCTAssertEqual(out.data, whole.data, "cuts \(a), \(b)")
                if out.messages != whole.messages || out.data != whole.data { return }
            }
        }
        var filter = gmcpFilter()
        XCTAssertEqual(runGMCP(&filter, stream.map { [$0] }).messages, whole.messages, "byte by byte")
        var rng = SplitMix64(seed: 201)
        for round in 0..<300 {
            var chunks: [[UInt8]] = []
            var i = 0
            while i < stream.count {
                let n = Int(rng.next() % 9)
                chunks.append(Array(stream[i..<min(i + n, stream.count)]))
                i += n
            }
            var f = gmcpFilter()
            let out = runGMCP(&f, chunks)
            XCTAssertEqual(out.messages, whole.messages, "round \(round)")
            XCTAssertEqual(out.data, whole.data, "round \(round)")
        }
    }

    func testGMCPOver64KiBIsDroppedAndTheTextGoesOn() {
        let fits = bytes("Big.Data ") + [UInt8](repeating: 0x31, count: UVProxy.GMCP.maxSubnegotiation - 9)
        let over = fits + [0x31]
        XCTAssertEqual(fits.count, 65536)
        let stream = [IAC, WILL, GMCP] + bytes("a") + gmcp(fits) + bytes("b") + gmcp(over) + bytes("c")
            + gmcp([0x41, 0x20] + [UInt8](repeating: 255, count: 40_000)) + bytes("d") + gmcp("Small 1") + bytes("e")
        for size in [stream.count, 65536, 4096, 1000, 7] {
            var filter = gmcpFilter()
            var data: [UInt8] = []
            var messages: [Seen] = []
            var i = 0
            while i < stream.count {
                let out = runGMCP(&filter, [Array(stream[i..<min(i + size, stream.count)])])
                i += size
                messages += out.messages.map { Seen(offset: $0.offset + data.count, package: $0.package, payload: $0.payload) }
                data += out.data
                XCTAssertLessThanOrEqual(filter.snapshot().subnegotiationData.count, UVProxy.GMCP.maxSubnegotiation,
                                         "nothing held past the bound")
            }
            XCTAssertEqual(data, bytes("abcde"), "size \(size)")
            XCTAssertEqual(messages.map(\.package), ["Big.Data", "A", "Small"], "size \(size)")
            XCTAssertEqual(messages.map(\.offset), [1, 3, 4], "size \(size)")
            XCTAssertEqual(messages.first?.payload?.count, UVProxy.GMCP.maxSubnegotiation - 9)
            XCTAssertEqual(messages.dropFirst().first?.payload?.count, 40_000, "255s count once")
        }
        // Over the bound, the buffer is freed at once, long before the message's end.
        var filter = gmcpFilter()
        _ = runGMCP(&filter, [[IAC, WILL, GMCP, IAC, SB, GMCP] + over])
        let state = filter.snapshot()
        XCTAssertEqual(state.phase, .sbData)
        XCTAssertFalse(state.keepsSubnegotiation)
        XCTAssertEqual(state.subnegotiationData, [])
        let rest = runGMCP(&filter, [[UInt8](repeating: 0x32, count: 100_000) + [IAC, SE] + bytes("z")])
        XCTAssertEqual(rest.data, bytes("z"))
        XCTAssertEqual(rest.messages, [])
        // Exactly at the bound it is still kept, with nothing more.
        var atBound = gmcpFilter()
        _ = runGMCP(&atBound, [[IAC, WILL, GMCP, IAC, SB, GMCP] + fits])
        XCTAssertEqual(atBound.snapshot().subnegotiationData.count, UVProxy.GMCP.maxSubnegotiation)
    }

    func testGMCPMessagesTakeNoStorageUntilThereAreSome() {
        var filter = gmcpFilter()
        _ = runGMCP(&filter, [[IAC, WILL, GMCP] + bytes("text only")])
        XCTAssertEqual(filter.gmcpMessages.capacity, 0)
        var plain = TelnetFilter()
        bytes("text").withUnsafeBytes { plain.receive($0) { _ in } }
        XCTAssertEqual(plain.gmcpMessages.capacity, 0)
        XCTAssertLessThanOrEqual(MemoryLayout<TelnetFilter>.size, 40)
    }

    func testGMCPAndTheOtherOptionsTogether() {
        // A server that offers everything a MUD client takes, GMCP included, and sends text between.
        let stream: [UInt8] = [IAC, WILL, ECHO, IAC, WILL, GMCP, IAC, DO, TTYPE, IAC, WILL, MSDP, IAC, DO, NAWS]
            + gmcp("Core.Supports.Set [\"Char 1\"]") + [IAC, SB, TTYPE, 1, IAC, SE] + bytes("Name: ")
            + gmcp("Char.Vitals {\"hp\":1}") + [IAC, SB, MSDP, 1] + bytes("x") + [IAC, SE] + bytes("ok\r\n")
        let out = runGMCP(stream)
        XCTAssertEqual(out.data, bytes("Name: ok\r\n"))
        XCTAssertEqual(out.replies, [IAC, DO, ECHO, IAC, DO, GMCP] + hello + [IAC, WILL, TTYPE, IAC, DONT, MSDP, IAC, WILL, NAWS]
                       + naws80x24 + ttype1)
        XCTAssertEqual(out.messages, [Seen(offset: 0, package: "Core.Supports.Set", payload: bytes("[\"Char 1\"]")),
                                      Seen(offset: 6, package: "Char.Vitals", payload: bytes("{\"hp\":1}"))])
        // The recordings give the same with GMCP on, but for the GMCP parts.
        for r in Self.recordings where !r.bytes.contains(GMCP) {
            let on = runGMCP(r.bytes)
            XCTAssertEqual(on.data, r.data, r.name)
            XCTAssertEqual(on.replies, r.replies, r.name)
        }
    }
}
