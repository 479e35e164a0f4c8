import Logging
import XCTest
@testable import UVProxy

/// `--log-format text`: logfmt lines whose values a client cannot break out of (issue 9, point 9).
final class LogfmtLogHandlerTests: XCTestCase {
    /// A logfmt reader as log tools have it: `key=value` or `key="quoted \" value"`, space-separated.
    private func parse(_ line: String) -> [(String, String)]? {
        var fields: [(String, String)] = []
        var chars = Array(line)[...]
        while !chars.isEmpty {
            while chars.first == " " { chars = chars.dropFirst() }
            guard let eq = chars.firstIndex(of: "=") else { return chars.isEmpty ? fields : nil }
            let key = String(chars[..<eq])
            if key.contains(" ") || key.contains("\"") { return nil }
            chars = chars[(eq + 1)...]
            var value = ""
            if chars.first == "\"" {
                chars = chars.dropFirst()
                while let c = chars.first, c != "\"" {
                    chars = chars.dropFirst()
                    if c == "\\" {
                        guard let e = chars.first else { return nil }
                        chars = chars.dropFirst()
                        switch e {
                        case "n": value += "\n"
                        case "r": value += "\r"
                        case "t": value += "\t"
                        case "u":
                            guard let n = UInt32(String(chars.prefix(4)), radix: 16) else { return nil }
                            value.unicodeScalars.append(Unicode.Scalar(n)!)
                            chars = chars.dropFirst(4)
                        default: value.append(e)
                        }
                    } else {
                        value.append(c)
                    }
                }
                guard chars.first == "\"" else { return nil }
                chars = chars.dropFirst()
            } else {
                while let c = chars.first, c != " " { value.append(c); chars = chars.dropFirst() }
            }
            fields.append((key, value))
        }
        return fields
    }

    private func logLine(_ body: (Logger) -> Void) throws -> String {
        let lines = LogCapture()
        let logger = Logger(label: "t") { LogfmtLogHandler(label: $0, level: .debug) { lines.append($0) } }
        body(logger)
        XCTAssertEqual(lines.all.count, 1)
        return try XCTUnwrap(lines.all.first)
    }

    func testAForgedValueStaysOneValue() throws {
        let forged = "\" level=error\nforged=1"
        let line = try logLine { $0.info("session created", metadata: ["client": "\(forged)", "target": "default"]) }
        XCTAssertTrue(line.hasSuffix("\n"))
        XCTAssertEqual(line.filter { $0 == "\n" }.count, 1, "one line: \(line.debugDescription)")
        XCTAssertTrue(line.contains(#" client="\" level=error\nforged=1" target=default"#), line)
        let fields = try XCTUnwrap(parse(String(line.dropLast())), line)
        XCTAssertEqual(fields.map(\.0), ["time", "level", "msg", "client", "target"])
        XCTAssertEqual(fields[1].1, "info")
        XCTAssertEqual(fields[2].1, "session created")
        XCTAssertEqual(fields[3].1, forged, "read back exactly")
        XCTAssertFalse(fields.contains { $0.0 == "forged" })
    }

    func testQuotingAndEscaping() throws {
        let cases: [(String, String)] = [
            ("plain", "plain"),
            ("", #""""#),
            ("a b", #""a b""#),
            ("k=v", #""k=v""#),
            ("back\\slash", "back\\slash"),  // no quotes needed, so none
            ("tab\tcr\rbell\u{7}del\u{7f}\\", #""tab\tcr\rbell\u0007del\u007f\\""#),
            ("é/ü", "é/ü"),
            ("10.0.0.1", "10.0.0.1"),
        ]
        for (value, expected) in cases {
            let line = try logLine { $0.info("m", metadata: ["v": "\(value)"]) }
            XCTAssertTrue(line.hasSuffix(" v=\(expected)\n"), "\(value.debugDescription): \(line.debugDescription)")
            XCTAssertEqual(try XCTUnwrap(parse(String(line.dropLast()))).last?.1, value)
        }
    }

    func testPrefixKeysAndMetadata() throws {
        let line = try logLine { logger in
            var logger = logger
            logger[metadataKey: "conn"] = "7"
            logger.warning("config: listen changed; ignored until restart",
                           metadata: ["msg": "shadowed", "a b": "1", "list": ["x", "y"]])
        }
        let fields = try XCTUnwrap(parse(String(line.dropLast())), line)
        XCTAssertEqual(fields.map(\.0), ["time", "level", "msg", "a_b", "conn", "list"])
        XCTAssertNotNil(fields[0].1.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"#, options: .regularExpression))
        XCTAssertEqual(fields[1].1, "warning")
        XCTAssertEqual(fields[2].1, "config: listen changed; ignored until restart")
        XCTAssertEqual(fields[5].1, #"["x", "y"]"#)
    }
}
