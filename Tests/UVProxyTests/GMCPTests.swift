import Foundation
import XCTest
@testable import UVProxy

private let IAC = Telnet.iac, SB = Telnet.sb, SE = Telnet.se, GMCP_ = Telnet.Option.gmcp

/// GMCP's values (SPEC §7): the JSON validator and writer, the client side's checks and
/// encoder, the session's log. The filter's side is in TelnetFilterTests.
final class GMCPTests: XCTestCase {
    func valid(_ s: String, maxDepth: Int = JSON.maxDepth) -> Bool { JSON.isValid(Array(s.utf8), maxDepth: maxDepth) }
    func valid(_ b: [UInt8]) -> Bool { JSON.isValid(b) }

    // MARK: JSON: what is accepted

    func testJSONValuesAtTheTop() {
        for s in ["{}", "[]", "0", "-0", "1", "\"\"", "\"x\"", "true", "false", "null", "{\"a\":1}", "[1,2,3]",
                  "  \t\r\n{ \"a\" : [ 1 , { } , [ ] , \"b\" ] }\n", "[[[[]]]]", "{\"\":{\"\":{}}}",
                  "{\"a\":1,\"a\":2}"] {
            XCTAssertTrue(valid(s), s)
        }
        for s in ["", " ", "\n", "{", "}", "[", "]", "[1,]", "[,1]", "[1 2]", "{\"a\"}", "{\"a\":}", "{\"a\" 1}",
                  "{a:1}", "{'a':1}", "{\"a\":1,}", "{,}", "[1]]", "{}}", "tru", "truee", "True", "nul", "NULL",
                  "undefined", "NaN", "Infinity", "-Infinity", "'x'", "\"x", "x\"", "{\"a\":1}{}", "[] []", "1 2",
                  "\u{FEFF}{}", "{} x", "[1]\0", "\0", "/* c */ 1", "1 // c", "[1;2]", "{\"a\";1}"] {
            XCTAssertFalse(valid(s), s.debugDescription)
        }
    }

    func testJSONWhitespaceIsOnlySpaceTabLFCR() {
        XCTAssertTrue(valid(" \t\n\r[ \t\n\r1 \t\n\r] \t\n\r"))
        for ws in ["\u{0B}", "\u{0C}", "\u{A0}", "\u{2028}", "\u{3000}", "\u{85}"] {
            XCTAssertFalse(valid(ws + "1"), ws.debugDescription)
            XCTAssertFalse(valid("[1" + ws + "]"), ws.debugDescription)
        }
    }

    func testJSONNumbers() {
        for s in ["0", "-0", "7", "-7", "10", "1234567890", "0.5", "-0.5", "10.25", "1e5", "1E5", "1e+5", "1e-5",
                  "0e0", "-0E-0", "1.5e300", "123456789012345678901234567890", "1e999999", "0.0000001"] {
            XCTAssertTrue(valid(s), s)
            XCTAssertTrue(valid("[" + s + "]"), s)
            XCTAssertTrue(valid("{\"n\":" + s + "}"), s)
        }
        for s in ["01", "-01", "00", "+1", "1.", ".5", "-.5", "-", "--1", "1e", "1e+", "1E-", "1.e5", "0x10", "1_000",
                  "1.5.5", "1e5e5", "- 1", "0.", "1ee5", "٣", "１"] {
            XCTAssertFalse(valid(s), s)
            XCTAssertFalse(valid("[" + s + "]"), s)
        }
    }

    func testJSONStringsAndEscapes() {
        for s in [#""a\"b""#, #""\\""#, #""\/""#, #""\b\f\n\r\t""#, #""\u0041""#, #""\u00e9\u00C9""#, #""\u0000""#,
                  #""\uFFFF""#, #""naïve café ✓ 😀""#, "\"\u{7F}\"", "\"\u{2028}\u{2029}\"", #""'""#] {
            XCTAssertTrue(valid(s), s)
        }
        for s in [#""\a""#, #""\x41""#, #""\'""#, #""\u41""#, #""\u00G1""#, #""\U0041""#, #""\""#, #""\"#,
                  "\"a\nb\"", "\"\t\"", "\"\u{1F}\"", "\"\0\""] {
            XCTAssertFalse(valid(s), s.debugDescription)
        }
    }

    func testJSONSurrogateEscapesMustPair() {
        XCTAssertTrue(valid(#""\uD83D\uDE00""#), "😀 as a pair")
        XCTAssertTrue(valid(#""\ud83d\ude00x\uDBFF\uDFFF""#))
        XCTAssertFalse(valid(#""\uD83D""#), "a high surrogate alone")
        XCTAssertFalse(valid(#""\uDE00""#), "a low surrogate alone")
        XCTAssertFalse(valid(#""\uDE00\uD83D""#), "the wrong way round")
        XCTAssertFalse(valid(#""\uD83Dx""#), "a high surrogate, then text")
        XCTAssertFalse(valid(#""\uD83D\n""#), "a high surrogate, then another escape")
        XCTAssertFalse(valid(#""\uD83D\uD83D""#), "two high ones")
        XCTAssertFalse(valid(#""\uD83D\u0041""#), "a high one, then no surrogate")
        XCTAssertFalse(valid(#""\uD83D\uDE0""#), "cut short")
    }

    func testJSONStringsMustBeUTF8() {
        func quoted(_ b: [UInt8]) -> [UInt8] { [0x22] + b + [0x22] }
        XCTAssertTrue(valid(quoted([0xC3, 0xA9])))
        XCTAssertTrue(valid(quoted([0xF4, 0x8F, 0xBF, 0xBF])), "U+10FFFF")
        XCTAssertTrue(valid(quoted([0xEF, 0xBF, 0xBD])))
        for bad: [UInt8] in [[0xE9], [0x80], [0xBF], [0xC0, 0x80], [0xC1, 0xBF], [0xE0, 0x9F, 0xBF], [0xED, 0xA0, 0x80],
                             [0xF0, 0x8F, 0xBF, 0xBF], [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80], [0xFF],
                             [0xFE], [0xC3], [0xE2, 0x82], [0xF0, 0x9F, 0x98], [0xC3, 0x41], [0xE2, 0x41, 0xAC]] {
            XCTAssertFalse(valid(quoted(bad)), "\(bad)")
        }
        XCTAssertFalse(valid([0xC3, 0xA9]), "bytes outside a string are never UTF-8 text")
        XCTAssertFalse(valid([0x22, 0xC3]), "a string cut in a character")
    }

    func testJSONNestingIsBounded() {
        func nested(_ depth: Int) -> String { String(repeating: "[", count: depth) + String(repeating: "]", count: depth) }
        XCTAssertTrue(valid(nested(JSON.maxDepth)))
        XCTAssertFalse(valid(nested(JSON.maxDepth + 1)))
        XCTAssertTrue(valid(nested(3), maxDepth: 3))
        XCTAssertFalse(valid(nested(4), maxDepth: 3))
        XCTAssertTrue(valid("{\"a\":{\"b\":[1]}}", maxDepth: 3))
        XCTAssertFalse(valid("{\"a\":{\"b\":[[1]]}}", maxDepth: 3))
        XCTAssertTrue(valid("1", maxDepth: 0), "a scalar needs no depth")
        XCTAssertFalse(valid("[]", maxDepth: 0))
        // Deep input is refused without recursing past the bound (this would overflow the stack otherwise).
        XCTAssertFalse(valid(String(repeating: "[", count: 1_000_000)))
        XCTAssertFalse(valid(String(repeating: "{\"a\":", count: 200_000) + "1" + String(repeating: "}", count: 200_000)))
    }

    /// Against Foundation's parser on what both must agree about (Foundation is laxer in
    /// places: lone surrogates, some number forms; those are left out).
    func testJSONAgreesWithFoundationOnRandomDocuments() throws {
        var rng = SplitMix64(seed: 201)
        let atoms = ["0", "-1.5e3", "\"a\\\"b\"", "\"\\u00e9\"", "true", "false", "null", "\"✓\"", "12"]
        func document(_ depth: Int) -> String {
            if depth > 3 || rng.next() % 3 == 0 { return atoms[Int(rng.next() % UInt64(atoms.count))] }
            let n = Int(rng.next() % 4)
            if rng.next() % 2 == 0 {
                return "[" + (0..<n).map { _ in document(depth + 1) }.joined(separator: ",") + "]"
            }
            return "{" + (0..<n).map { "\"k\($0)\": " + document(depth + 1) }.joined(separator: ",") + "}"
        }
        let breakers: [(String) -> String] = [{ $0 + "," }, { "," + $0 }, { $0.replacingOccurrences(of: ":", with: "") },
                                              { String($0.dropLast()) }, { $0 + "]" }, { $0.replacingOccurrences(of: "\"", with: "'") }]
        for _ in 0..<500 {
            let doc = document(0)
            XCTAssertTrue(valid(doc), doc)
            XCTAssertNoThrow(try JSONSerialization.jsonObject(with: Data(doc.utf8), options: [.fragmentsAllowed]), doc)
            let broken = breakers[Int(rng.next() % UInt64(breakers.count))](doc)
            let foundation = (try? JSONSerialization.jsonObject(with: Data(broken.utf8), options: [.fragmentsAllowed])) != nil
            XCTAssertEqual(valid(broken), foundation, broken)
        }
    }

    // MARK: JSON: writing

    func minified(_ s: String) -> String {
        var out: [UInt8] = []
        JSON.appendMinified(Array(s.utf8), into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    func testMinifiedJSONIsOneLineAndTheSameValue() {
        XCTAssertEqual(minified(" { \"a b\" : [ 1 ,\n 2 ] ,\r\n\t\"c\" : \" x \\\" \\\\\" } "), #"{"a b":[1,2],"c":" x \" \\"}"#)
        XCTAssertEqual(minified("\"\\\\\" "), #""\\""#, "an escaped backslash ends no string early")
        XCTAssertEqual(minified("\"a\u{2028}b\u{2029}\""), #""a\u2028b\u2029""#)
        XCTAssertEqual(minified("1"), "1")
        XCTAssertEqual(minified(""), "")
        let doc = "{\"hp\": 10,\n \"name\": \"Ünïcødé \\n ✓\",\n \"list\": [true, false, null, -1.5e+3]}"
        let once = minified(doc)
        XCTAssertTrue(valid(once))
        XCTAssertEqual(minified(once), once)
        XCTAssertFalse(once.contains("\n") || once.contains(" \""))
        let a = try? JSONSerialization.jsonObject(with: Data(doc.utf8)) as? NSDictionary
        let b = try? JSONSerialization.jsonObject(with: Data(once.utf8)) as? NSDictionary
        XCTAssertEqual(a, b)
    }

    func string(_ b: [UInt8]) -> String {
        var out: [UInt8] = []
        JSON.appendString(b, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    func testJSONStringsAreEscaped() {
        XCTAssertEqual(string(Array("Char.Vitals".utf8)), #""Char.Vitals""#)
        XCTAssertEqual(string(Array("a\"b\\c\n\r\t\u{1B}\u{0}\u{7F}".utf8)), #""a\"b\\c\n\r\t\u001b\u0000"# + "\u{7F}\"")
        XCTAssertEqual(string(Array("\u{2028}é✓😀".utf8)), "\"\\u2028é✓😀\"")
        XCTAssertEqual(string([0x41, 0xFF, 0x42, 0xC3]), "\"A\u{FFFD}B\u{FFFD}\"", "invalid UTF-8 as U+FFFD")
        XCTAssertEqual(string([0xE2, 0x82, 0x41]), "\"\u{FFFD}A\"", "one U+FFFD per maximal subpart")
        XCTAssertEqual(string([]), "\"\"")
        var rng = SplitMix64(seed: 5)
        for _ in 0..<200 {
            let bytes = (0..<Int(rng.next() % 40)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            var out: [UInt8] = []
            JSON.appendString(bytes, into: &out)
            XCTAssertTrue(valid(out), "\(bytes)")
            let back = try? JSONSerialization.jsonObject(with: Data(out), options: [.fragmentsAllowed]) as? String
            XCTAssertEqual(back, String(decoding: bytes, as: UTF8.self))
        }
    }

    func testDecimals() {
        for v: UInt64 in [0, 1, 9, 10, 99, 100, 12345, UInt64(UInt32.max), UInt64.max] {
            var out: [UInt8] = []
            JSON.appendDecimal(v, into: &out)
            XCTAssertEqual(String(decoding: out, as: UTF8.self), String(v))
        }
    }

    // MARK: Client → target

    func testPackageNames() {
        for name in ["Core.Hello", "Char.Vitals", "a", "IRE.Composer.SetBuffer", "External.Discord.Hello", "x_y-z.0",
                     "...", "-", String(repeating: "a", count: GMCP.maxPackageLength)] {
            XCTAssertTrue(GMCP.isValidPackage(Array(name.utf8)), name)
        }
        for name in ["", "Char Vitals", "Char/Vitals", "Chär.Vitals", "a\n", "a\0", "a:b", "{}", "\"x\"",
                     String(repeating: "a", count: GMCP.maxPackageLength + 1)] {
            XCTAssertFalse(GMCP.isValidPackage(Array(name.utf8)), name.debugDescription)
        }
    }

    func parse(_ s: String) -> Result<(String, String?), GMCP.ClientMessageError> {
        do {
            let m = try GMCP.parseClientMessage(Array(s.utf8))
            return .success((String(decoding: m.package, as: UTF8.self), m.payload.map { String(decoding: $0, as: UTF8.self) }))
        } catch {
            return .failure(error)
        }
    }

    func assertParsed(_ s: String, _ package: String, _ payload: String?, file: StaticString = #filePath, line: UInt = #line) {
        switch parse(s) {
        case .success(let (p, d)):
            XCTAssertEqual(p, package, file: file, line: line)
            XCTAssertEqual(d, payload, file: file, line: line)
        case .failure(let e):
            XCTFail("\(s.debugDescription): \(e)", file: file, line: line)
        }
    }

    func assertRefused(_ s: String, _ error: GMCP.ClientMessageError, file: StaticString = #filePath, line: UInt = #line) {
        if case .failure(let e) = parse(s) { XCTAssertEqual(e, error, file: file, line: line) } else {
            XCTFail("\(s.debugDescription) accepted", file: file, line: line)
        }
    }

    func testClientMessages() {
        assertParsed("Core.Ping", "Core.Ping", nil)
        assertParsed("Core.Ping\n", "Core.Ping", nil)
        assertParsed("Core.Ping \r\n", "Core.Ping", nil)
        assertParsed("Core.Supports.Set [\"Char 1\", \"Room 1\"]", "Core.Supports.Set", "[\"Char 1\", \"Room 1\"]")
        assertParsed("Char.Login {\"name\":\"x\"}\n", "Char.Login", "{\"name\":\"x\"}")
        assertParsed("Core.KeepAlive\t  0 ", "Core.KeepAlive", "0")
        assertParsed("A \"str\"", "A", "\"str\"")
        assertParsed("A\n{\n}\n", "A", "{\n}")
        assertRefused("", .badPackage)
        assertRefused(" {}", .badPackage)
        assertRefused("Bad/Name {}", .badPackage)
        assertRefused("Char.Vitals{}", .badPackage)
        assertRefused(String(repeating: "a", count: 129), .badPackage)
        assertRefused("Char.Vitals {hp: 1}", .badPayload)
        assertRefused("Char.Vitals {} {}", .badPayload)
        assertRefused("Char.Vitals hello", .badPayload)
        assertRefused("Char.Vitals \"\\uD800\"", .badPayload)
    }

    func encoded(_ package: String, _ payload: [UInt8]?) -> [UInt8] {
        var out: [UInt8] = []
        GMCP.encode(package: Array(package.utf8), payload: payload, into: &out)
        return out
    }

    func testEncoderEscapes255() {
        XCTAssertEqual(encoded("Core.Ping", nil), [IAC, SB, GMCP_] + Array("Core.Ping".utf8) + [IAC, SE])
        var out: [UInt8] = []
        GMCP.encode(package: Array("Core.Ping".utf8), into: &out)
        XCTAssertEqual(out, encoded("Core.Ping", nil))
        XCTAssertEqual(encoded("A", Array("{}".utf8)), [IAC, SB, GMCP_, 0x41, 0x20, 0x7B, 0x7D, IAC, SE])
        XCTAssertEqual(encoded("A", [0x22, 255, 0x22]), [IAC, SB, GMCP_, 0x41, 0x20, 0x22, 255, 255, 0x22, IAC, SE])
        XCTAssertEqual(encoded("A", []), [IAC, SB, GMCP_, 0x41, 0x20, IAC, SE])
        // What the encoder writes, the filter reads back as the same message.
        var filter = TelnetFilter(gmcp: true)
        var wire: [UInt8] = [IAC, Telnet.will, GMCP_]
        wire += encoded("Char.Vitals", Array("{\"hp\":10}".utf8)) + encoded("Raw", [1, 255, 2, 255, 255]) + encoded("Core.Ping", nil)
        var data: [UInt8] = []
        wire.withUnsafeBytes { filter.receive($0) { data += $0 } }
        XCTAssertEqual(data, [])
        XCTAssertEqual(filter.gmcpMessages, [GMCPMessage(package: "Char.Vitals", payload: "{\"hp\":10}"),
                                             GMCPMessage(package: Array("Raw".utf8), payload: [1, 255, 2, 255, 255]),
                                             GMCPMessage(package: "Core.Ping")])
    }

    func testHello() {
        XCTAssertEqual(String(decoding: GMCP.hello(version: "1.2.3"), as: UTF8.self),
                       #"Core.Hello {"client":"uvproxyd","version":"1.2.3"}"#)
        XCTAssertEqual(String(decoding: GMCP.hello(version: "a\"b\\"), as: UTF8.self),
                       #"Core.Hello {"client":"uvproxyd","version":"a\"b\\"}"#)
        let payload = GMCPMessage(position: 0, data: GMCP.hello(version: "x\u{1}✓"))!.payload!
        XCTAssertTrue(JSON.isValid(payload))
    }

    func testMessagesFromSubnegotiationData() {
        func message(_ s: String) -> GMCPMessage? { GMCPMessage(position: 3, data: Array(s.utf8)) }
        let m = message("Char.Vitals {\"hp\": 1}")!
        XCTAssertEqual(m.position, 3)
        XCTAssertEqual(Array(m.package), Array("Char.Vitals".utf8))
        XCTAssertEqual(m.payload.map(Array.init), Array("{\"hp\": 1}".utf8))
        XCTAssertNil(message("Core.Ping")!.payload)
        XCTAssertNil(message("Core.Ping ")!.payload, "a separator with nothing after it")
        XCTAssertNil(message("Core.Ping  \r\n")!.payload, "only whitespace")
        XCTAssertEqual(message("A\n[1]")!.payload.map(Array.init), Array("[1]".utf8), "any whitespace separates")
        XCTAssertEqual(message("A  1")!.payload.map(Array.init), Array(" 1".utf8), "the payload as sent, after one separator")
        XCTAssertEqual(message("A hello")!.payload.map(Array.init), Array("hello".utf8))
        XCTAssertNil(message(""), "no package")
        XCTAssertNil(message(" {}"), "an empty package")
        XCTAssertEqual(Array(message("ünï.cødé 1")!.package), Array("ünï.cødé".utf8), "the package as sent")
    }

    // MARK: The log

    func b(_ s: String) -> [UInt8] { Array(s.utf8) }

    @discardableResult
    func add(_ log: inout GMCPLog, _ offset: UInt64, _ package: String, _ payload: String? = nil) -> UInt64 {
        log.append(offset: offset, package: b(package), payload: payload.map(b))
    }

    func seqs(_ lookup: GMCPLog.Lookup) -> [UInt64]? {
        if case .messages(let m) = lookup { return m.map(\.seq) }
        return nil
    }

    func testSeqOffsetAndLookup() {
        var log = GMCPLog()
        XCTAssertEqual(log.next, 0)
        XCTAssertEqual(log.base, 0)
        XCTAssertEqual(seqs(log.since(0)), [])
        XCTAssertEqual(log.since(1), .ahead(next: 0))
        XCTAssertEqual(add(&log, 0, "Core.Hello", "{}"), 0)
        XCTAssertEqual(add(&log, 12, "Char.Vitals", "{\"hp\":1}"), 1)
        XCTAssertEqual(add(&log, 12, "Core.Ping"), 2)
        XCTAssertEqual(log.next, 3)
        XCTAssertEqual(seqs(log.since(0)), [0, 1, 2])
        XCTAssertEqual(seqs(log.since(2)), [2])
        XCTAssertEqual(seqs(log.since(3)), [])
        XCTAssertEqual(log.since(4), .ahead(next: 3))
        let m = log.message(1)!
        XCTAssertEqual(m.offset, 12)
        XCTAssertEqual(Array(m.package), b("Char.Vitals"))
        XCTAssertEqual(m.payload.map(Array.init), b("{\"hp\":1}"))
        XCTAssertTrue(m.isJSON)
        XCTAssertNil(log.message(3))
        XCTAssertNil(log.message(2)!.payload)
        XCTAssertEqual(log.messageBytes, 10 + 2 + 11 + 8 + 9)
    }

    func testTheLogKeepsTheLast256AndSaysWhatWasEvicted() {
        var log = GMCPLog()
        for i in 0..<1000 { add(&log, UInt64(i), "P.M", "\(i)") }
        XCTAssertEqual(log.count, 256)
        XCTAssertEqual(log.next, 1000)
        XCTAssertEqual(log.base, 744)
        XCTAssertEqual(log.since(743), .evicted(base: 744))
        XCTAssertEqual(log.since(0), .evicted(base: 744))
        XCTAssertEqual(seqs(log.since(744)), Array(744..<1000))
        XCTAssertEqual(seqs(log.since(999)), [999])
        XCTAssertNil(log.message(743))
        XCTAssertEqual(log.message(744)?.payload.map(Array.init), b("744"))
        XCTAssertEqual(log.messageBytes, (744..<1000).reduce(0) { $0 + 3 + String($1).utf8.count })
        XCTAssertEqual(log.packageCount, 1, "one name, its latest payload")
        XCTAssertEqual(log.latest(b("P.M"))?.payload, b("999"))
    }

    func testTheLogIsBoundedInBytesToo() {
        var log = GMCPLog(limits: GMCPLog.Limits(messages: 256, messageBytes: 1000, packages: 8, stateBytes: 1 << 20))
        let big = String(repeating: "x", count: 397)
        for i in 0..<10 { add(&log, UInt64(i), "Big", "\"" + big + "\"") }  // 3 + 399 bytes each
        XCTAssertEqual(log.count, 2)
        XCTAssertEqual(log.base, 8)
        XCTAssertLessThanOrEqual(log.messageBytes, 1000)
        // One message over the bound on its own stays: the newest is always kept.
        add(&log, 10, "Huge", String(repeating: "[1]", count: 1000))
        XCTAssertEqual(log.count, 1)
        XCTAssertEqual(log.base, 10)
        XCTAssertEqual(log.messageBytes, 4 + 3000)
        add(&log, 11, "Small")
        XCTAssertEqual(log.count, 1, "the huge one goes as soon as it is not the newest")
        XCTAssertEqual(log.messageBytes, 5)
        XCTAssertEqual(log.heldBytes, log.messageBytes + log.stateBytes)
    }

    func testEvictionCompactsItsStorage() {
        var log = GMCPLog(limits: GMCPLog.Limits(messages: 3))
        for i in 0..<10_000 { add(&log, UInt64(i), "A", "1") }
        XCTAssertEqual(seqs(log.since(9997)), [9997, 9998, 9999])
        XCTAssertLessThanOrEqual(log.snapshot().messages.count, 3)
        // The storage itself (evicted slots included) stays small: its snapshot goes through
        // `entries[start...]`, and a long run of appends must not have grown it.
        XCTAssertEqual(log.messageBytes, 6)
    }

    func testTheStateKeepsTheLatestPayloadPastEviction() {
        var log = GMCPLog(limits: GMCPLog.Limits(messages: 2))
        add(&log, 0, "Room.Info", "{\"num\":1}")
        add(&log, 0, "Char.Vitals", "{\"hp\":1}")
        add(&log, 5, "Char.Vitals", "{\"hp\":2}")
        add(&log, 9, "Char.Vitals", "{\"hp\":3}")
        add(&log, 9, "Core.Ping")
        add(&log, 9, "Comm.Channel.Text", "not json")
        XCTAssertEqual(log.base, 4)
        XCTAssertEqual(log.state.map { String(decoding: $0.package, as: UTF8.self) },
                       ["Char.Vitals", "Comm.Channel.Text", "Core.Ping", "Room.Info"])
        XCTAssertEqual(log.latest(b("Room.Info"))?.payload, b("{\"num\":1}"))
        XCTAssertEqual(log.latest(b("Char.Vitals"))?.payload, b("{\"hp\":3}"))
        XCTAssertEqual(log.latest(b("Char.Vitals"))?.seq, 3)
        XCTAssertEqual(log.latest(b("Core.Ping"))?.payload, nil)
        XCTAssertNotNil(log.latest(b("Core.Ping")))
        XCTAssertNil(log.latest(b("char.vitals")), "names are kept as sent")
        var out: [UInt8] = []
        log.appendStateJSON(into: &out)
        XCTAssertEqual(String(decoding: out, as: UTF8.self),
                       #"{"Char.Vitals":{"hp":3},"Comm.Channel.Text":"not json","Core.Ping":null,"Room.Info":{"num":1}}"#)
        XCTAssertTrue(JSON.isValid(out))
        XCTAssertEqual(log.stateBytes, 11 + 8 + 17 + 8 + 9 + 9 + 9)
    }

    func testTheStateIsBoundedInNamesAndBytes() {
        var log = GMCPLog(limits: GMCPLog.Limits(messages: 256, messageBytes: 1 << 20, packages: 4, stateBytes: 100))
        // A game that invents names: only the 4 updated last stay.
        for i in 0..<50 { add(&log, 0, "Invented.\(i)", "1") }
        XCTAssertEqual(log.packageCount, 4)
        XCTAssertEqual(log.state.map { String(decoding: $0.package, as: UTF8.self) },
                       ["Invented.46", "Invented.47", "Invented.48", "Invented.49"])
        // Updating one makes it the most recent: the next new name evicts another.
        add(&log, 0, "Invented.46", "2")
        add(&log, 0, "New", "3")
        XCTAssertEqual(Set(log.state.map { String(decoding: $0.package, as: UTF8.self) }),
                       ["Invented.46", "Invented.48", "Invented.49", "New"])
        // Bytes: a 60-byte payload pushes out what it must, least recent first.
        let sixty = "\"" + String(repeating: "y", count: 58) + "\""
        add(&log, 0, "Big", sixty)
        XCTAssertLessThanOrEqual(log.stateBytes, 100)
        XCTAssertEqual(log.latest(b("Big"))?.payload, b(sixty))
        XCTAssertNil(log.latest(b("Invented.48")))
        XCTAssertNotNil(log.latest(b("New")))
        XCTAssertEqual(log.stateBytes, log.state.reduce(0) { $0 + $1.package.count + ($1.payload?.count ?? 0) })
        // One message over the bound alone is not kept, and its name's older payload goes too.
        let tooBig = "\"" + String(repeating: "z", count: 120) + "\""
        add(&log, 0, "New", tooBig)
        XCTAssertNil(log.latest(b("New")))
        XCTAssertNotNil(log.latest(b("Big")), "the rest stays")
        XCTAssertEqual(log.message(log.next - 1)?.payload.map(Array.init), b(tooBig), "the log still has it")
        // A state of no names at all.
        var none = GMCPLog(limits: GMCPLog.Limits(packages: 0))
        add(&none, 0, "A", "1")
        XCTAssertEqual(none.packageCount, 0)
        XCTAssertEqual(none.stateBytes, 0)
        XCTAssertEqual(none.count, 1)
    }

    func testAHostileGameStaysWithinTheBounds() {
        var log = GMCPLog()
        var rng = SplitMix64(seed: 99)
        let limits = log.limits
        for i in 0..<3000 {
            let size = Int(rng.next() % 70_000)
            let payload = [UInt8](repeating: 0x61, count: size)
            log.append(offset: UInt64(i), package: b("Spam.\(rng.next() % 5000)"), payload: payload)
            XCTAssertLessThanOrEqual(log.count, limits.messages)
            XCTAssertLessThanOrEqual(log.messageBytes, max(limits.messageBytes, log.message(log.next - 1)!.byteCount))
            XCTAssertLessThanOrEqual(log.stateBytes, limits.stateBytes)
            XCTAssertLessThanOrEqual(log.packageCount, limits.packages)
        }
    }

    func json(_ m: GMCPLog.Message, includeOffset: Bool = true) -> String {
        var out: [UInt8] = []
        m.appendJSON(into: &out, includeOffset: includeOffset)
        XCTAssertTrue(JSON.isValid(out), String(decoding: out, as: UTF8.self))
        return String(decoding: out, as: UTF8.self)
    }

    func testMessagesAsJSON() {
        var log = GMCPLog()
        add(&log, 7, "Char.Vitals", "{ \"hp\" : 10,\n \"mp\": [1, 2] }")
        add(&log, 7, "Core.Ping")
        add(&log, 8, "Comm.Channel.Text", "say \"hi\"\n\u{1B}[1m")
        log.append(offset: 9, package: [0x41, 0x22, 0xFF], payload: [0x41, 0xC3])
        add(&log, 9, "Char.Name", "\"Ünïcødé\"")
        add(&log, 9, "Blank", "")
        XCTAssertEqual(json(log.message(0)!), #"{"seq":0,"offset":7,"package":"Char.Vitals","data":{"hp":10,"mp":[1,2]}}"#)
        XCTAssertEqual(json(log.message(0)!, includeOffset: false), #"{"seq":0,"package":"Char.Vitals","data":{"hp":10,"mp":[1,2]}}"#)
        XCTAssertEqual(json(log.message(1)!), #"{"seq":1,"offset":7,"package":"Core.Ping","data":null}"#)
        XCTAssertEqual(json(log.message(2)!), #"{"seq":2,"offset":8,"package":"Comm.Channel.Text","raw":"say \"hi\"\n\u001b[1m"}"#)
        XCTAssertEqual(json(log.message(3)!), "{\"seq\":3,\"offset\":9,\"package\":\"A\\\"\u{FFFD}\",\"raw\":\"A\u{FFFD}\"}")
        XCTAssertEqual(json(log.message(4)!), #"{"seq":4,"offset":9,"package":"Char.Name","data":"Ünïcødé"}"#)
        XCTAssertEqual(json(log.message(5)!), #"{"seq":5,"offset":9,"package":"Blank","raw":""}"#,
                       "an empty payload given to the log is not JSON (the filter gives none instead)")
        // Foundation reads them back as the same values.
        let parsed = try? JSONSerialization.jsonObject(with: Data(json(log.message(0)!).utf8)) as? [String: Any]
        XCTAssertEqual(parsed?["package"] as? String, "Char.Vitals")
        XCTAssertEqual((parsed?["data"] as? [String: Any])?["hp"] as? Int, 10)
    }

    func testFromTheFilterToTheLog() {
        // What the caller does: the ring's end before the call plus the message's position.
        var filter = TelnetFilter(gmcp: true, gmcpVersion: "t")
        var log = GMCPLog()
        var end: UInt64 = 0
        let stream: [UInt8] = [IAC, Telnet.will, GMCP_] + b("Hello ") + [IAC, SB, GMCP_] + b("Char.Vitals {\"hp\":1}")
            + [IAC, SE] + b("world\r\n") + [IAC, SB, GMCP_] + b("Room.Info {}") + [IAC, SE]
        var i = 0
        for cut in [4, 20, 30, stream.count] {
            let piece = Array(stream[i..<cut])
            i = cut
            var got: UInt64 = 0
            piece.withUnsafeBytes { filter.receive($0) { got += UInt64($0.count) } }
            for m in filter.gmcpMessages { log.append(m, offset: end + UInt64(m.position)) }
            filter.gmcpMessages.removeAll()
            end += got
        }
        XCTAssertEqual(end, 13)
        XCTAssertEqual(log.message(0)?.offset, 6)
        XCTAssertEqual(log.message(1)?.offset, 13)
        XCTAssertEqual(log.latest(b("Room.Info"))?.payload, b("{}"))
    }

    // MARK: The log's hand-over

    func testTheLogRestoresAsItWas() {
        var log = GMCPLog(limits: GMCPLog.Limits(messages: 5, packages: 3))
        for i in 0..<12 { add(&log, UInt64(i * 3), "P\(i % 4)", i % 3 == 0 ? nil : "[\(i)]") }
        log.delivered = 9
        let state = log.snapshot()
        XCTAssertEqual(state.next, 12)
        XCTAssertEqual(state.messages.map(\.seq), [7, 8, 9, 10, 11])
        XCTAssertEqual(state.latest.map(\.seq), [9, 10, 11])
        var restored = GMCPLog(restoring: state, limits: log.limits)
        XCTAssertEqual(restored.snapshot(), state)
        XCTAssertEqual(restored.delivered, 9)
        XCTAssertEqual(restored.messageBytes, log.messageBytes)
        XCTAssertEqual(restored.stateBytes, log.stateBytes)
        // Both go on alike.
        add(&log, 40, "P9", "1")
        add(&restored, 40, "P9", "1")
        XCTAssertEqual(restored.snapshot(), log.snapshot())
        // Smaller limits in the new process: the oldest messages and names go.
        let smaller = GMCPLog(restoring: state, limits: GMCPLog.Limits(messages: 2, packages: 1))
        XCTAssertEqual(smaller.snapshot().messages.map(\.seq), [10, 11])
        XCTAssertEqual(smaller.state.map(\.seq), [11])
        XCTAssertEqual(smaller.base, 10)
        // `delivered` never past `next`; an empty log stays empty.
        XCTAssertEqual(GMCPLog(restoring: GMCPLog.State(next: 3, delivered: 7)).delivered, 3)
        XCTAssertEqual(GMCPLog(restoring: GMCPLog.State()).snapshot(), GMCPLog.State())
    }
}
