import Foundation
import Logging
import XCTest
@testable import UVProxy

/// What an operator reads: /metrics (swift-metrics with swift-prometheus) and the logs.
final class IntegrationOperationsTests: XCTestCase {

    func testMetricsFollowSessionsRequestsAndCloseReasons() throws {
        let (_, d, c, id, target) = try sessionOnTestUpstream { $0.bufferSize = 1024 }
        XCTAssertEqual(try c.metric("uvproxyd_sessions{state=\"open\"}"), 1)
        XCTAssertEqual(try c.metric("uvproxyd_sessions_created_total"), 1)
        let before = try XCTUnwrap(c.metric("uvproxyd_http_request_duration_seconds_count"))
        // Fill the 1 KiB buffer (a backpressure pause), read it all, then overwrite history.
        try target.send(pattern(0..<3000))
        _ = try c.readBytes(id, from: 0, count: 3000)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(c.metric("uvproxyd_backpressure_pauses_total")), 1)
        XCTAssertGreaterThan(try XCTUnwrap(c.metric("uvproxyd_history_evicted_bytes_total")), 0)
        XCTAssertEqual(try c.metric("uvproxyd_upstream_received_bytes_total"), 3000)
        let scrape = try c.request("GET", "/metrics").text
        func sample(_ name: String) -> Double? {
            scrape.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ")[1]) }
        }
        let after = try XCTUnwrap(sample("uvproxyd_http_request_duration_seconds_count"))
        XCTAssertGreaterThan(after, before, "every request lands in the latency histogram")
        XCTAssertEqual(sample("uvproxyd_http_request_duration_seconds_bucket{le=\"+Inf\"}"), after)

        XCTAssertEqual(try c.request("DELETE", "/sessions/\(id)").status, 204)
        XCTAssertEqual(try c.metric("uvproxyd_sessions{state=\"open\"}"), 0)
        XCTAssertEqual(try c.metric("uvproxyd_sessions_closed_total{reason=\"deleted\"}"), 1)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(c.metric("uvproxyd_http_requests_total{code=\"204\"}")), 1)
        _ = d
    }

    func testMetricsExpositionIsWellFormed() throws {
        let (_, _, c, _, _) = try sessionOnTestUpstream()
        let r = try c.request("GET", "/metrics")
        XCTAssertEqual(r.status, 200)
        XCTAssertTrue(r.header("Content-Type")?.hasPrefix("text/plain") ?? false)
        var typed = Set<String>()
        for line in r.text.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") {
                typed.insert(String(line.split(separator: " ")[2]))
                continue
            }
            guard !line.hasPrefix("#") else { continue }
            let parts = line.split(separator: " ")
            XCTAssertEqual(parts.count, 2, "sample line: \(line)")
            XCTAssertNotNil(Double(parts.last!), "value of: \(line)")
        }
        for name in ["uvproxyd_sessions", "uvproxyd_sessions_created_total", "uvproxyd_upstream_connect_failures_total",
                     "uvproxyd_upstream_received_bytes_total", "uvproxyd_upstream_sent_bytes_total",
                     "uvproxyd_http_requests_total", "uvproxyd_http_connections", "uvproxyd_long_polls",
                     "uvproxyd_event_streams", "uvproxyd_buffered_bytes", "uvproxyd_http_request_duration_seconds",
                     "uvproxyd_backpressure_pauses_total", "uvproxyd_history_evicted_bytes_total"] {
            XCTAssertTrue(typed.contains(name), "missing \(name)")
        }
    }

    func testSessionLinesAndAccessLinesAreJSONWithClientAddress() throws {
        let log = LogCapture()
        let up = try startUpstream()
        let d = try startDaemon(log: log) {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.trustProxy = true
        }
        let c = try d.client()
        let r = try c.request("POST", "/sessions", headers: ["X-Forwarded-For": "203.0.113.7, 10.0.0.1"])
        let id = try XCTUnwrap(r.json?["id"] as? String)
        try up.connection(0).send("hi")
        _ = try c.readBytes(id, from: 0, count: 2)
        _ = try c.request("POST", "/sessions/\(id)/input?cmd=secret%20password")
        _ = try c.request("DELETE", "/sessions/\(id)")

        let created = try XCTUnwrap(log.wait(for: "session created"))
        XCTAssertEqual(created["client"] as? String, "10.0.0.1",
                       "with --trust-proxy: the last X-Forwarded-For entry (our proxy's; the client writes the others)")
        XCTAssertEqual(created["session"] as? String, String(id.prefix(8)), "ids are shortened in logs")
        let closed = try XCTUnwrap(log.wait(for: "session closed"))
        XCTAssertEqual(closed["reason"] as? String, "deleted")
        XCTAssertEqual(closed["received_bytes"] as? String, "2")
        XCTAssertEqual(closed["sent_bytes"] as? String, "17")
        XCTAssertNotNil(closed["lifetime_s"])
        XCTAssertNotNil(log.wait(for: "request") { $0["method"] as? String == "DELETE" && $0["status"] as? String == "204" })
        for (i, object) in log.objects.enumerated() {
            XCTAssertNotNil(object, "line \(i) is not a JSON object: \(log.all[i])")
        }
        let all = log.all.joined()
        XCTAssertFalse(all.contains("secret"), "queries (commands) are never logged")
        XCTAssertFalse(all.contains(id), "whole session ids are never logged")
    }

    /// The last entry of the last X-Forwarded-For header, spaces trimmed; a forged first entry
    /// or a second header line does not reach the log.
    func testTrustProxyTakesTheLastForwardedEntry() throws {
        let log = LogCapture()
        let up = try startUpstream()
        let d = try startDaemon(log: log) {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.trustProxy = true
        }
        let c = try d.client()
        try c.socket.send("POST /sessions HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\n"
                          + "X-Forwarded-For: 6.6.6.6,   198.51.100.4 \r\nContent-Length: 0\r\n\r\n")
        XCTAssertEqual(try c.readResponse().status, 201)
        let created = try XCTUnwrap(log.wait(for: "session created"))
        XCTAssertEqual(created["client"] as? String, "198.51.100.4")
    }

    func testWithoutTrustProxyTheClientIsThePeer() throws {
        let log = LogCapture()
        let up = try startUpstream()
        let d = try startDaemon(log: log) { $0.upstream = "127.0.0.1:\(up.port)" }
        _ = try d.client().request("POST", "/sessions", headers: ["X-Forwarded-For": "203.0.113.7"])
        let created = try XCTUnwrap(log.wait(for: "session created"))
        XCTAssertTrue((created["client"] as? String)?.hasPrefix("127.0.0.1:") ?? false, "\(created)")
    }

    func testJSONLogHandlerEscapesEverything() throws {
        let lines = LogCapture()
        var logger = Logger(label: "t") { JSONLogHandler(label: $0, level: .trace) { lines.append($0) } }
        logger[metadataKey: "conn"] = "7"
        logger.info("a \"quoted\"\nline\u{1b}", metadata: ["list": ["x", "y"], "map": ["k": "v"], "é": "ü"])
        logger.trace("trace")
        let o = try XCTUnwrap(lines.objects.first ?? nil)
        XCTAssertEqual(o["message"] as? String, "a \"quoted\"\nline\u{1b}")
        XCTAssertEqual(o["level"] as? String, "info")
        XCTAssertEqual(o["conn"] as? String, "7")
        XCTAssertEqual(o["list"] as? [String], ["x", "y"])
        XCTAssertEqual(o["map"] as? [String: String], ["k": "v"])
        XCTAssertEqual(o["é"] as? String, "ü")
        XCTAssertNotNil((o["time"] as? String)?.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"#, options: .regularExpression))
        XCTAssertEqual(lines.all.count, 2)
        XCTAssertTrue(lines.all.allSatisfy { $0.hasSuffix("}\n") && $0.filter { $0 == "\n" }.count == 1 })
    }

    /// The ephemeral port range behind the start-up warning about ports per target.
    func testLocalPortRangeIsTheKernels() throws {
        let text = try String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { Int($0) }
        XCTAssertEqual(parts.count, 2)
        XCTAssertEqual(ProxyDaemon.localPortRange(), parts[0]...parts[1])
    }

    func testLoggablePathDropsTheQueryAndShortensIds() {
        XCTAssertEqual(ProxyDaemon.loggablePath(Array("/sessions/abcdefghijklmnopqrstuv/input?cmd=pw".utf8)),
                       "/sessions/abcdefgh…/input")
        XCTAssertEqual(ProxyDaemon.loggablePath(Array("/mud?id=abc&cmd=x".utf8)), "/mud")
        XCTAssertEqual(ProxyDaemon.loggablePath(Array("/sessions".utf8)), "/sessions")
    }
}

extension IntegrationOperationsTests {
    /// A stream the client ends still gets its access line (with `stream`), and stays out of the
    /// latency histogram (its duration is how long the player stayed).
    func testEndedStreamIsLoggedButNotInTheLatencyHistogram() throws {
        let log = LogCapture()
        let up = try startUpstream()
        let d = try startDaemon(log: log) { $0.upstream = "127.0.0.1:\(up.port)" }
        let c = try d.client()
        let id = try c.createSession()
        let before = try XCTUnwrap(c.metric("uvproxyd_http_request_duration_seconds_count"))
        let s = try SSETestClient(port: d.listenPort, path: "/sessions/\(id)/events")
        XCTAssertEqual(s.status, 200)
        s.socket.close()
        let line = log.wait(for: "request") { $0["path"] as? String == "/sessions/\(id.prefix(8))…/events" }
        XCTAssertEqual(line?["stream"] as? String, "true")
        XCTAssertEqual(line?["status"] as? String, "200")
        // The two /metrics requests count; the stream does not.
        XCTAssertEqual(try c.metric("uvproxyd_http_request_duration_seconds_count"), before + 1)
    }
}
