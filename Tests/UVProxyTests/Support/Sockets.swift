import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Blocking loopback sockets for tests (the code under test is the server; this is the client).
final class TestSocket: @unchecked Sendable {
    let fd: Int32

    init(fd: Int32) { self.fd = fd }

    static func connect(port: Int, timeout: TimeInterval = 10) throws -> TestSocket {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestError("socket: errno \(errno)") }
        var addr = loopbackAddress(port: port)
        let rc = withSockaddr(&addr) { Glibc.connect(fd, $0, $1) }
        guard rc == 0 else { Glibc.close(fd); throw TestError("connect to \(port): errno \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let s = TestSocket(fd: fd)
        s.setTimeout(timeout)
        return s
    }

    func setTimeout(_ seconds: TimeInterval) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw TestError("send: errno \(errno)") }
            sent += n
        }
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Reads what is available (blocks for at least one byte); empty on EOF.
    func receive(max: Int = 65536) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: max)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, max, 0) }
        if n < 0 { throw TestError("recv: errno \(errno)") }
        return Array(buf[0..<n])
    }

    /// The local port this socket is bound to (the client's side of a connection).
    var localPort: Int? {
        var addr = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let rc = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return rc == 0 ? Int(UInt16(bigEndian: addr.sin_port)) : nil
    }

    func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Closes with RST (SO_LINGER 0), like a client that drops off the network.
    func abort() {
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        close()
    }

    private var closed = false
    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }

    deinit { close() }
}

/// 127.0.0.1:`port`.
func loopbackAddress(port: Int) -> sockaddr_in {
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    return addr
}

/// Calls `body` with `addr` as a `sockaddr` pointer and its length.
func withSockaddr<R>(_ addr: inout sockaddr_in, _ body: (UnsafeMutablePointer<sockaddr>, socklen_t) -> R) -> R {
    withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}

/// A TCP socket bound to a free loopback port, listening with `backlog` if given.
func boundLoopbackSocket(listen backlog: Int32? = nil, receiveBuffer: Int32? = nil) throws -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestError("socket: errno \(errno)") }
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    if var size = receiveBuffer {  // accepted sockets inherit it (and lose autotuning)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }
    var addr = loopbackAddress(port: 0)
    let rc = withSockaddr(&addr) { p, length -> Int32 in
        var len = length
        guard bind(fd, p, len) == 0 else { return -1 }
        if let backlog, listen(fd, backlog) != 0 { return -1 }
        return getsockname(fd, p, &len)
    }
    guard rc == 0 else { Glibc.close(fd); throw TestError("bind/listen: errno \(errno)") }
    return (fd, Int(UInt16(bigEndian: addr.sin_port)))
}

struct TestError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A controllable target server on its own thread: tests send, read, or close each accepted
/// connection, or leave it unread to exercise backpressure.
final class TestUpstream: @unchecked Sendable {
    let listenFD: Int32
    let port: Int
    private let lock = NSCondition()
    private var accepted: [TestSocket] = []
    private var stopped = false
    /// Sent to every new connection.
    let greeting: [UInt8]

    /// `receiveBuffer`: a small one keeps the kernel from absorbing what the proxy sends a
    /// target that never reads, so it stays in the proxy's own queue.
    init(greeting: String = "", receiveBuffer: Int32? = nil) throws {
        self.greeting = Array(greeting.utf8)
        (listenFD, port) = try boundLoopbackSocket(listen: 4096, receiveBuffer: receiveBuffer)
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                lock.lock(); let done = stopped; lock.unlock()
                if done { return }
                continue
            }
            let s = TestSocket(fd: fd)
            s.setTimeout(10)
            if !greeting.isEmpty { try? s.send(greeting) }
            lock.lock()
            accepted.append(s)
            lock.broadcast()
            lock.unlock()
        }
    }

    /// The n-th accepted connection (0-based), waiting for it.
    func connection(_ n: Int, timeout: TimeInterval = 10) throws -> TestSocket {
        lock.lock(); defer { lock.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while accepted.count <= n {
            guard lock.wait(until: deadline) else { throw TestError("upstream connection \(n) never came") }
        }
        return accepted[n]
    }

    var connectionCount: Int { lock.lock(); defer { lock.unlock() }; return accepted.count }

    /// Stops listening (new connects are refused); accepted connections stay.
    func stopListening() {
        lock.lock()
        let wasStopped = stopped
        stopped = true
        lock.unlock()
        guard !wasStopped else { return }  // closing twice could close an fd someone reused
        Glibc.shutdown(listenFD, Int32(SHUT_RDWR))
        Glibc.close(listenFD)
    }

    func closeAll() {
        lock.lock(); let all = accepted; lock.unlock()
        for s in all { s.close() }
    }

    deinit {
        stopListening()
        closeAll()
    }
}

/// Reads a line-based stream until a needle shows up.
extension TestSocket {
    func receive(until needle: String, timeout: TimeInterval = 10) throws -> String {
        var all: [UInt8] = []
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let chunk = try receive()
            if chunk.isEmpty { break }
            all += chunk
            if String(decoding: all, as: UTF8.self).contains(needle) { break }
        }
        return String(decoding: all, as: UTF8.self)
    }
}
