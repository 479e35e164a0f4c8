import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import UVProxy

/// One client or target misbehaving never disturbs the others (SPEC §2).
final class IntegrationRobustnessTests: XCTestCase {

    func testTargetThatNeverReadsGets503WhileOtherSessionsKeepWorking() throws {
        let up = try startUpstream()
        let d = try startDaemon {
            $0.upstream = "127.0.0.1:\(up.port)"
            $0.bufferSize = 65536
        }
        let c = try d.client()
        let stuck = try c.createSession()
        let stuckTarget = try up.connection(0)  // never read (until the end)
        let piece = 60000
        var accepted = 0
        var refused: TestResponse?
        for i in 0..<2000 {
            let r = try c.call("POST", "/sessions/\(stuck)/input?raw=1", body: pattern(i * piece..<(i + 1) * piece))
            if r.status != 204 { refused = r; break }
            accepted += 1
        }
        let full = try XCTUnwrap(refused, "input kept being accepted for a target that never reads")
        XCTAssertEqual(full.status, 503, full.text)
        XCTAssertEqual(try c.call("POST", "/sessions/\(stuck)/input?cmd=x").status, 503, "still full")

        // Another session on the same daemon works without delay.
        let other = try d.client()
        let (id, createTook) = try timed { try other.createSession() }
        XCTAssertLessThan(createTook, 1)
        let otherTarget = try up.connection(1)
        let (posted, postTook) = try timed { try other.call("POST", "/sessions/\(id)/input?cmd=hello") }
        XCTAssertEqual(posted.status, 204)
        XCTAssertLessThan(postTook, 1)
        XCTAssertEqual(String(decoding: try otherTarget.receive(exactly: 7), as: UTF8.self), "hello\r\n")
        try otherTarget.send("hi there")
        let (read, readTook) = try timed { try other.call("GET", "/sessions/\(id)?since=0&wait=5") }
        XCTAssertEqual(read.text, "hi there")
        XCTAssertLessThan(readTook, 1)
        XCTAssertEqual(try c.call("GET", "/sessions/\(stuck)").header("X-Session-State"), "open",
                       "a full input queue does not close the session")

        // Once the target reads, everything accepted arrives intact and input is accepted again.
        let got = try stuckTarget.receive(exactly: accepted * piece)
        XCTAssertNil(firstMismatch(got, pattern(0..<accepted * piece)))
        XCTAssertEqual(try c.call("POST", "/sessions/\(stuck)/input?cmd=again").status, 204)
        XCTAssertEqual(String(decoding: try stuckTarget.receive(exactly: 7), as: UTF8.self), "again\r\n")
    }

    func testGarbageFromOneClientLeavesAnotherClientsSessionAlone() throws {
        let up = try startUpstream()
        let d = try startDaemon { $0.upstream = "127.0.0.1:\(up.port)" }
        let good = try d.client()
        let id = try good.createSession()
        let target = try up.connection(0)
        let precious = pattern(0..<5000)
        try target.send(precious)
        XCTAssertEqual(try good.readBytes(id, from: 0, count: precious.count), precious)

        let garbage: [[UInt8]] = [
            Array("GARBAGE GARBAGE\r\n\r\n".utf8),
            (0..<2000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) },
            Array("POST /sessions/\(id)/input HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nquit".utf8),
            Array("POST /sessions/\(id)/input HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nquit\r\n0\r\n\r\n".utf8),
            Array("DELETE /sessions/\(id) HTTP/1.1\r\nContent-Length: x\r\n\r\n".utf8),
        ]
        for bytes in garbage {
            let bad = try d.client()
            try? bad.socket.send(bytes)
            let r = try bad.readResponse()
            assertConforms(r)
            XCTAssertEqual(r.status, 400)
            XCTAssertTrue(bad.isClosedByServer())
        }
        // A client that vanishes mid-request with a reset.
        let rude = try TestSocket.connect(port: d.listenPort)
        try rude.send("POST /sessions/\(id)/input HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nqu")
        rude.abort()

        let again = try good.call("GET", "/sessions/\(id)?since=0")
        XCTAssertEqual(again.status, 200)
        XCTAssertEqual(again.header("X-Session-State"), "open")
        XCTAssertTrue(again.body == precious, "the session's bytes are still there, exact")
        XCTAssertFalse(target.isReadable(within: 0.2), "none of the garbage reached the target")
        XCTAssertEqual(try good.call("POST", "/sessions/\(id)/input?cmd=still%20here").status, 204)
        XCTAssertEqual(String(decoding: try target.receive(exactly: 12), as: UTF8.self), "still here\r\n")
    }

    /// A client that resets its connection while large responses are being written makes writes
    /// fail with EPIPE/ECONNRESET; that must never kill the daemon. Runs the real executable when it
    /// was built (so the process's own SIGPIPE disposition is tested), else an in-process daemon.
    func testClientResetDuringLargeResponsesDoesNotKillTheDaemon() throws {
        let executable = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("uvproxyd")
        let port: Int
        var process: Process?
        var daemon: TestDaemon?
        if FileManager.default.isExecutableFile(atPath: executable.path) {
            let (p, listenPort) = try launch(executable, ["--listen", "127.0.0.1:0", "--demo", "--buffer-size", "8388608",
                                                         "--log-level", "notice"])
            process = p
            port = listenPort
            print("SIGPIPE test: running \(executable.path) as its own process")
        } else {
            let d = try startDaemon {
                $0.demo = true
                $0.bufferSize = 8 << 20
            }
            daemon = d
            port = d.listenPort
            print("SIGPIPE test: \(executable.path) not built, using an in-process daemon")
        }
        let c = try HTTPTestClient(port: port)
        let id = try c.createSession()
        XCTAssertEqual(try c.call("POST", "/sessions/\(id)/input?cmd=flood%206000000").status, 204)
        // Wait until a few MB are buffered, so that every response below is large.
        var buffered = 0
        while buffered < 3_000_000 {
            let r = try c.request("GET", "/sessions/\(id)?since=0&wait=5")
            XCTAssertEqual(r.status, 200)
            buffered = r.body.count
        }
        for round in 0..<30 {
            let rude = try TestSocket.connect(port: port)
            let read = "GET /sessions/\(id)?since=0 HTTP/1.1\r\nHost: x\r\n\r\n"
            try rude.send(String(repeating: read, count: 4))
            if round % 2 == 0 { _ = try rude.receive(max: 1000) }  // mid-response
            rude.abort()
        }
        // A close without reading anything either.
        for _ in 0..<10 {
            let rude = try TestSocket.connect(port: port)
            try rude.send("GET /sessions/\(id)?since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
            rude.close()
        }
        if let process {
            XCTAssertTrue(process.isRunning, "the daemon died: \(process.isRunning ? "" : "\(process.terminationReason == .uncaughtSignal ? "signal" : "exit") \(process.terminationStatus)")")
        }
        let h = try HTTPTestClient(port: port).call("GET", "/healthz")
        XCTAssertEqual(h.status, 200)
        XCTAssertEqual(h.text, "ok")
        let check = try HTTPTestClient(port: port).call("GET", "/sessions/\(id)?since=0&max=64")
        XCTAssertEqual(check.status, 200, "the session survived too")
        _ = daemon
    }

    /// Starts the executable and waits for its ready line; returns it and the port it listens on.
    private func launch(_ executable: URL, _ arguments: [String]) throws -> (Process, Int) {
        let p = Process()
        p.executableURL = executable
        p.arguments = arguments
        let stderr = Pipe()
        p.standardError = stderr
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        addTeardownBlock {
            if p.isRunning {
                p.terminate()
                p.waitUntilExit()
            }
        }
        // Drain stderr on a thread (a full pipe would block the daemon) and find the ready line.
        let output = Locked((text: "", ended: false))
        Thread {
            let fd = stderr.fileHandleForReading.fileDescriptor  // the closure keeps the pipe open
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(fd, &buf, buf.count)
                output.withValue {
                    if n <= 0 { $0.ended = true } else { $0.text += String(decoding: buf[0..<n], as: UTF8.self) }
                }
                if n <= 0 { return }
            }
        }.start()
        let result = output.wait(until: Date().addingTimeInterval(20)) { o -> Result<Int, TestError>? in
            if let r = o.text.range(of: #"ready: listening on 127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                return .success(Int(o.text[r].split(separator: ":").last!)!)
            }
            return o.ended ? .failure(TestError("uvproxyd ended before it was ready: \(o.text)")) : nil
        }
        switch result {
        case .success(let port)?: return (p, port)
        case .failure(let e)?: throw e
        case nil: throw TestError("uvproxyd not ready in time: \(output.withValue { $0.text })")
        }
    }
}
