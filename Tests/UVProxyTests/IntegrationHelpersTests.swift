import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import UVProxy

// Shared helpers of the Integration*Tests classes (no tests in this file).

extension XCTestCase {
    /// A daemon that is stopped when the test ends.
    func startDaemon(log: LogCapture? = nil, _ configure: (inout ProxyConfig) -> Void = { _ in }) throws -> TestDaemon {
        let daemon = try TestDaemon(log: log, configure)
        addTeardownBlock { daemon.stop() }
        return daemon
    }

    /// A target server whose sockets are closed when the test ends.
    func startUpstream(greeting: String = "") throws -> TestUpstream {
        let upstream = try TestUpstream(greeting: greeting)
        addTeardownBlock {
            upstream.stopListening()
            upstream.closeAll()
        }
        return upstream
    }

    /// The most common set-up: a daemon whose default target is a `TestUpstream`, one client,
    /// one session on it, and the target's side of that session's connection.
    func sessionOnTestUpstream(_ configure: (inout ProxyConfig) -> Void = { _ in })
        throws -> (TestUpstream, TestDaemon, HTTPTestClient, String, TestSocket) {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            configure(&$0)
        }
        let c = try d.client()
        let id = try c.createSession()
        return (up, d, c, id, try up.connection(0))
    }

    /// A loopback port that refuses connections: bound (so nobody else takes it) but not listening.
    func refusedPort() throws -> Int {
        let (fd, port) = try boundLoopbackSocket()
        addTeardownBlock { Glibc.close(fd) }
        return port
    }
}

extension XCTestCase {
    /// A loopback port where connects hang: a listener that never accepts, its accept queue filled,
    /// so the kernel drops further SYNs. (Blackhole addresses like 10.255.255.1 are not reliable in
    /// sandboxes that intercept outgoing connections.)
    func blackholePort() throws -> Int {
        let (fd, port) = try boundLoopbackSocket(listen: 0)
        var addr = loopbackAddress(port: port)
        var fillers: [Int32] = []
        for _ in 0..<8 {
            let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            _ = withSockaddr(&addr) { connect(s, $0, $1) }
            fillers.append(s)
        }
        addTeardownBlock {
            for s in fillers { Glibc.close(s) }
            Glibc.close(fd)
        }
        return port
    }
}

/// What SPEC §2 asks of every response: `Cache-Control: no-store`, and JSON error bodies.
func assertConforms(_ r: TestResponse, _ what: String = "", file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(r.header("Cache-Control"), "no-store", "Cache-Control of \(r.status) \(what)", file: file, line: line)
    if r.status >= 400 {
        XCTAssertEqual(r.header("Content-Type"), "application/json", "error Content-Type of \(r.status) \(what)",
                       file: file, line: line)
        XCTAssertNotNil(r.json?["error"] as? String, "error body of \(r.status) \(what): \(r.text)", file: file, line: line)
    }
}

extension HTTPTestClient {
    /// `request`, then the checks every response must pass.
    @discardableResult
    func call(_ method: String, _ path: String, headers: [String: String] = [:], body: [UInt8] = [],
              file: StaticString = #filePath, line: UInt = #line) throws -> TestResponse {
        let r = try request(method, path, headers: headers, body: body)
        assertConforms(r, "\(method) \(path)", file: file, line: line)
        return r
    }

    @discardableResult
    func call(_ method: String, _ path: String, headers: [String: String] = [:], body: String,
              file: StaticString = #filePath, line: UInt = #line) throws -> TestResponse {
        try call(method, path, headers: headers, body: Array(body.utf8), file: file, line: line)
    }

    /// POST with an `application/x-www-form-urlencoded` body.
    @discardableResult
    func form(_ path: String, _ body: String, file: StaticString = #filePath, line: UInt = #line) throws -> TestResponse {
        try call("POST", path, headers: ["Content-Type": "application/x-www-form-urlencoded"], body: body,
                 file: file, line: line)
    }

    /// Sends raw bytes and reads one response.
    func raw(_ text: String) throws -> TestResponse {
        try socket.send(text)
        return try readResponse()
    }

    /// Long-polls `id` from `since` until `count` bytes have come; returns them.
    func readBytes(_ id: String, from since: Int, count: Int, timeout: TimeInterval = 10) throws -> [UInt8] {
        var out: [UInt8] = []
        let deadline = Date().addingTimeInterval(timeout)
        while out.count < count {
            guard Date() < deadline else { throw TestError("only \(out.count) of \(count) bytes came") }
            let r = try request("GET", "/sessions/\(id)?since=\(since + out.count)&wait=5")
            guard r.status == 200 else { throw TestError("read: \(r.status) \(r.text)") }
            out += r.body
            if r.body.isEmpty && r.header("X-Session-State") == "closed" {
                throw TestError("session closed after \(out.count) of \(count) bytes")
            }
        }
        return out
    }

    /// Long-polls `id` until the session is closed; returns the last (empty) response.
    func waitClosed(_ id: String, since: Int, timeout: TimeInterval = 10) throws -> TestResponse {
        let deadline = Date().addingTimeInterval(timeout)
        var cursor = since
        while Date() < deadline {
            let r = try request("GET", "/sessions/\(id)?since=\(cursor)&wait=5")
            guard r.status == 200 else { throw TestError("read: \(r.status) \(r.text)") }
            if r.header("X-Session-State") == "closed" && r.body.isEmpty { return r }
            cursor += r.body.count
        }
        throw TestError("session \(id) never closed")
    }

    /// The value of a sample in `/metrics` (`name` includes labels, e.g. `uvproxyd_sessions{state="open"}`).
    func metric(_ name: String) throws -> Double? {
        let r = try request("GET", "/metrics")
        for line in r.text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.dropFirst(name.count + 1))
        }
        return nil
    }
}

extension TestSocket {
    /// Whether bytes (or EOF) can be read within `seconds`.
    func isReadable(within seconds: TimeInterval) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, Int32(seconds * 1000)) > 0
    }

    /// Exactly `n` bytes (throws on EOF or timeout).
    func receive(exactly n: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(n)
        while out.count < n {
            let chunk = try receive(max: min(65536, n - out.count))
            if chunk.isEmpty { throw TestError("EOF after \(out.count) of \(n) bytes") }
            out += chunk
        }
        return out
    }

    /// Everything until EOF.
    func receiveAll() throws -> [UInt8] {
        var out: [UInt8] = []
        while true {
            let chunk = try receive()
            if chunk.isEmpty { return out }
            out += chunk
        }
    }
}

/// A byte sequence without short periods, to catch dropped or repeated chunks: byte i of a stream.
func patternByte(_ i: Int) -> UInt8 {
    var x = UInt64(i) &* 0x9E37_79B9_7F4A_7C15
    x ^= x >> 29
    return UInt8(truncatingIfNeeded: x >> 32)
}

func pattern(_ range: Range<Int>) -> [UInt8] { range.map(patternByte) }

/// Seconds `body` took, and its result.
func timed<T>(_ body: () throws -> T) rethrows -> (T, TimeInterval) {
    let start = Date()
    let result = try body()
    return (result, Date().timeIntervalSince(start))
}

/// The index of the first difference of two byte arrays, for readable failures.
func firstMismatch(_ a: [UInt8], _ b: [UInt8]) -> Int? {
    for i in 0..<min(a.count, b.count) where a[i] != b[i] { return i }
    return a.count == b.count ? nil : min(a.count, b.count)
}

/// A value shared between test threads.
final class Locked<Value>: @unchecked Sendable {
    private let condition = NSCondition()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withValue<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        condition.lock()
        defer { condition.broadcast(); condition.unlock() }
        return try body(&value)
    }

    /// Waits until `ready` returns non-nil or `deadline` passes.
    func wait<R>(until deadline: Date, _ ready: (Value) -> R?) -> R? {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let r = ready(value) { return r }
            guard condition.wait(until: deadline) else { return ready(value) }
        }
    }
}
