import Foundation
import Logging
import XCTest
@testable import UVProxy
import UVProxyWaker

/// Log lines a test daemon wrote (JSON), collected across threads.
final class LogCapture: @unchecked Sendable {
    private let lock = NSCondition()
    private var lines: [String] = []

    func append(_ line: [UInt8]) {
        lock.lock()
        lines.append(String(decoding: line, as: UTF8.self))
        lock.broadcast()
        lock.unlock()
    }

    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }

    /// Each line parsed; nil for a line that is not a JSON object.
    var objects: [[String: Any]?] {
        all.map { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    /// Waits for a line whose message is `message` (and that `matches`) and returns it parsed.
    func wait(for message: String, timeout: TimeInterval = 10,
              where matches: ([String: Any]) -> Bool = { _ in true }) -> [String: Any]? {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock(); defer { lock.unlock() }
        while true {
            for line in lines {
                if let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                   o["message"] as? String == message, matches(o) { return o }
            }
            guard lock.wait(until: deadline) else { return nil }
        }
    }
}

/// What `onLoop`'s work returned, guarded by the daemon's lock.
private final class Outcome<T>: @unchecked Sendable {
    var result: Result<T, any Error>?
}

/// A real `ProxyDaemon` on its own thread and loop, for integration tests over loopback.
final class TestDaemon: @unchecked Sendable {
    private let lock = NSCondition()
    private var port: Int?
    private var demoPort: Int?
    private var startError: String?
    private var stopHandle: LoopWaker?
    private var finished = false
    private var thread: Thread?
    /// Work for the loop thread (`onLoop`), run by `runner`.
    private var queued: [(ProxyDaemon) -> Void] = []
    private var runner: LoopWaker?

    /// Starts the daemon with `configure` applied to a config listening on an ephemeral port.
    /// With `log`, the daemon logs JSON lines at debug level into it.
    /// With `takeOver`, it takes over from an older daemon (SPEC §9) instead of binding.
    init(log: LogCapture? = nil, takeOver: ProxyDaemon.TakeOver? = nil,
         _ configure: (inout ProxyConfig) -> Void = { _ in }) throws {
        var config = ProxyConfig()
        config.listen = "127.0.0.1:0"
        config.logLevel = "error"
        // The tests' raw requests say `Host: x`; the DNS rebinding tests set their own list.
        config.allowedHosts = ["x"]
        configure(&config)
        let frozen = config
        let thread = Thread { [self] in
            var logger = Logger(label: "test-daemon")
            logger.logLevel = .error
            if let log {
                logger = Logger(label: "test-daemon") { label in
                    JSONLogHandler(label: label, level: .debug) { log.append($0) }
                }
            }
            do {
                let daemon = try ProxyDaemon(config: frozen, logger: logger, takeOver: takeOver)
                let handle = try daemon.makeStopHandle()
                let runner = try LoopWaker(loop: daemon.loop) { [self] in
                    lock.lock()
                    let work = queued
                    queued.removeAll()
                    lock.unlock()
                    for item in work { item(daemon) }
                }
                lock.lock()
                self.runner = runner
                port = daemon.listenAddress?.port
                demoPort = daemon.demoAddress?.port
                stopHandle = handle
                lock.broadcast()
                lock.unlock()
                daemon.run()
            } catch {
                lock.lock()
                startError = "\(error)"
                lock.broadcast()
                lock.unlock()
            }
            lock.lock()
            finished = true
            lock.broadcast()
            lock.unlock()
        }
        thread.stackSize = 8 << 20
        self.thread = thread
        thread.start()
        lock.lock()
        while port == nil && startError == nil { lock.wait() }
        let error = startError
        lock.unlock()
        if let error { throw ConfigError(error) }
    }

    var listenPort: Int { lock.lock(); defer { lock.unlock() }; return port! }
    var demoGamePort: Int? { lock.lock(); defer { lock.unlock() }; return demoPort }

    /// Graceful shutdown, as SIGTERM does; waits until the loop has returned.
    func stop(timeout: TimeInterval = 20) {
        lock.lock()
        let handle = finished ? nil : stopHandle
        lock.unlock()
        handle?.wake()
        lock.lock()
        let deadline = Date().addingTimeInterval(timeout)
        while !finished && lock.wait(until: deadline) {}
        lock.unlock()
    }

    /// Runs `body` on the daemon's loop thread (where everything in UVProxy must run) and
    /// returns what it returned, or throws what it threw.
    func onLoop<T>(_ body: @escaping (ProxyDaemon) throws -> T) throws -> T {
        let outcome = Outcome<T>()
        lock.lock()
        guard !finished, let runner else { lock.unlock(); throw TestError("the daemon has stopped") }
        queued.append { [self] daemon in
            let result = Result { try body(daemon) }
            lock.lock()
            outcome.result = result
            lock.broadcast()
            lock.unlock()
        }
        runner.wake()
        let deadline = Date().addingTimeInterval(20)
        while outcome.result == nil && !finished && lock.wait(until: deadline) {}
        let result = outcome.result
        lock.unlock()
        guard let result else { throw TestError("the loop did not run the work") }
        return try result.get()
    }

    var hasFinished: Bool { lock.lock(); defer { lock.unlock() }; return finished }

    func client() throws -> HTTPTestClient { try HTTPTestClient(port: listenPort) }

    deinit { stop() }
}
