import CUV
import FuzzSupport
@testable import UVProxy
#if canImport(Glibc)
import Glibc
#endif

// HTTP bytes, cut at random points, through http_parser, HTTPConnection, the router and the API,
// against in-memory sessions (docs/RELIABILITY.md, "Fuzzing").
//
// One HTTPServer on 127.0.0.1:0 and a ProxyAPI over a SessionTable whose links are fakes (no
// target: a create connects at the next loop turn, input is echoed back as the target's
// output). Per input: one client socket connects, sends the input in pieces (the loop runs
// between pieces, so the server reads them apart), reads until the server is quiet, then
// resets the connection. Two open sessions always exist; `$0` and `$1` in the input stand for
// their ids (a fuzzer cannot guess 128 random bits).
// Input: byte 0 seeds the cuts (its top bit: half-close the client's side after sending);
// the rest is what the client sends.
// Invariants:
// - the process never crashes (ASan on);
// - what the client reads is a sequence of whole HTTP/1.1 responses (a 100 Continue aside),
//   each with a Content-Length that matches its body (a HEAD's: no body), except an event
//   stream or a 101 Switching Protocols (WebSocket frames follow), which is last;
// - one response per request, in order: the statuses the client reads are exactly the ones
//   the server reported finished (HTTPServerObserver), in that order, and every request
//   handed to the API was answered unless it was still held when the client left;
// - nothing after a close: a response with `Connection: close` is the last bytes sent;
// - the server forgets the connection once the client is gone.

final class FuzzLink: UpstreamLink {
    unowned let session: Session
    init(session: Session) { self.session = session }
    func connect(to address: SocketAddress) { World.shared.connecting.append(session) }
    func send(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) {
        World.shared.echo.append((session, Array(a) + Array(b)))
    }
    var queuedBytes: Int { 0 }
    func pauseReading() {}
    func resumeReading() {}
    func close() {}
    func finish() { World.shared.finishing.append(session) }
    func abort() {}
}

final class World: HTTPHandler, HTTPServerObserver {
    nonisolated(unsafe) static let shared = World()
    let loop: EventLoop
    let server: HTTPServer
    let api: ProxyAPI
    let table: SessionTable
    let port: Int
    var connecting: [Session] = []
    var finishing: [Session] = []
    var echo: [(Session, [UInt8])] = []
    var fixtures: [Session] = []
    /// Requests handed to the API and statuses of finished responses, for this input.
    var handled = 0
    var finished: [Int] = []
    /// Per request handed to the API, in order: whether it is a HEAD (its response has no body).
    var heads: [Bool] = []

    init() {
        loop = try! EventLoop()
        var sessionSettings = SessionSettings()
        sessionSettings.maxSessions = 6
        sessionSettings.bufferSize = 512   // small: eviction (409) is reachable
        let clock = { [loop] in loop.now }
        var limits = HTTPLimits()
        limits.maxHeader = 2048
        limits.maxBody = 1024
        let target = Target(name: "default", address: try! SocketAddress(host: "127.0.0.1", port: 9), connectTimeoutMs: 1_000)
        var settings = APISettings(defaultTarget: target,
                                   targets: ["latin": Target(name: "latin", address: target.address, charset: .latin1)])
        settings.maxWaitMs = 3  // long-polls are held, briefly
        settings.keepAliveMs = 3
        settings.serveWebPage = true
        var tableRef: SessionTable!
        table = SessionTable(settings: sessionSettings, deadlines: loop.deadlines, clock: clock) { FuzzLink(session: $0) }
        tableRef = table
        _ = tableRef
        api = ProxyAPI(settings: settings, table: table, clock: clock)
        api.metricsText = { Array("uvproxyd_fuzz 1\n".utf8) }
        server = HTTPServer(loop: loop, limits: limits)
        port = try! server.listen(on: try! SocketAddress(host: "127.0.0.1", port: 0)).port
        server.handler = self
        server.observer = self
    }

    // MARK: HTTPHandler (counting, then the API)

    func handle(_ request: HTTPRequest, on connection: HTTPConnection) {
        handled += 1
        heads.append(request.method == .head)
        api.handle(request, on: connection)
    }
    func heldRequestTimedOut(on connection: HTTPConnection) { api.heldRequestTimedOut(on: connection) }
    func connectionWillClose(_ connection: HTTPConnection) { api.connectionWillClose(connection) }
    func connectionDidDrain(_ connection: HTTPConnection) { api.connectionDidDrain(connection) }

    func requestFinished(_ connection: HTTPConnection, status: HTTPStatus, nanoseconds: UInt64, streamed: Bool) {
        finished.append(status.rawValue)
    }

    // MARK: Driving

    /// One loop turn that does not block, then what the fake targets owe.
    func turn() {
        uv_run(loop.raw, UV_RUN_NOWAIT)
        while !connecting.isEmpty || !echo.isEmpty || !finishing.isEmpty {
            let c = connecting; connecting.removeAll()
            for s in c { table.upstreamConnected(s, status: 0) }
            let f = finishing; finishing.removeAll()
            for s in f { table.upstreamFinished(s) }
            let e = echo; echo.removeAll()
            for (s, bytes) in e where s.isOpen {
                let n = min(bytes.count, s.readRoom)
                bytes.withUnsafeBytes { s.receive(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
        }
    }

    /// Two open sessions with some output, the ids `$0` and `$1` stand for.
    func ensureFixtures() {
        fixtures.removeAll { !$0.isOpen || $0.isRemoved }
        while fixtures.count < 2 {
            var made: Session?
            table.create(target: fixtures.isEmpty ? api.settings.defaultTarget : api.settings.targets["latin"]!) {
                if case .success(let s) = $0 { made = s }
            }
            turn()
            guard let made else {
                // Full: close sessions the fuzzer made (not fixtures) to make room.
                for s in table.allSessions where s.isOpen && !fixtures.contains(where: { $0 === s }) {
                    table.delete(s)
                }
                turn()
                continue
            }
            Array("Welcome\r\n\u{1b}[1;31mred\u{1b}[0m \"q\" \\ caf\u{e9}\r\n".utf8).withUnsafeBytes { made.receive($0) }
            fixtures.append(made)
        }
    }

    var ids: [[UInt8]] {
        fixtures.map { var out: [UInt8] = []; $0.id.write(to: &out); return out }
    }
}

/// `$0`/`$1` replaced by the fixtures' ids.
func substitute(_ bytes: UnsafeRawBufferPointer, _ ids: [[UInt8]]) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count + 64)
    var i = 0
    while i < bytes.count {
        if bytes[i] == UInt8(ascii: "$"), i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "0") || bytes[i + 1] == UInt8(ascii: "1") {
            out += ids[Int(bytes[i + 1] - UInt8(ascii: "0"))]
            i += 2
        } else {
            out.append(bytes[i])
            i += 1
        }
    }
    return out
}

struct Client {
    let fd: Int32
    var received: [UInt8] = []
    var eof = false

    init(port: Int) {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        fuzzCheck(fd >= 0, "socket: errno \(errno)")
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        // Closing sends a reset: no TIME_WAIT, so a million connections do not use up the ports.
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        fuzzCheck(rc == 0 || errno == EINPROGRESS, "connect: errno \(errno)")
    }

    /// Sends what the socket takes now; returns how much.
    func send(_ bytes: ArraySlice<UInt8>) -> Int {
        guard !bytes.isEmpty else { return 0 }
        let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        return max(n, 0)
    }

    /// Reads what is there; returns whether anything (or EOF) came.
    mutating func drain() -> Bool {
        var got = false
        var buf = [UInt8](repeating: 0, count: 65536)
        while !eof {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { received += buf[0..<n]; got = true; continue }
            if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) { eof = true; got = true }
            break
        }
        return got
    }
}

struct Response {
    var status: Int
    var close: Bool
}

/// Parses what the client read into responses; checks framing. `heads[k]`: the k-th request
/// handed over was a HEAD (a request the parser refused is answered last, with a body).
func parseResponses(_ bytes: [UInt8], heads: [Bool]) -> [Response] {
    var out: [Response] = []
    var i = 0
    let crlfcrlf: [UInt8] = [13, 10, 13, 10]
    while i < bytes.count {
        var end = -1
        var j = i
        while j + 4 <= bytes.count {
            if bytes[j] == 13 && bytes[j + 1] == 10 && bytes[j + 2] == 13 && bytes[j + 3] == 10 { end = j; break }
            j += 1
        }
        _ = crlfcrlf
        fuzzCheck(end >= 0, "a response head is cut short: \(String(decoding: bytes[i...], as: UTF8.self))")
        let head = String(decoding: bytes[i..<end], as: UTF8.self)
        let lines = head.split(separator: "\r\n", omittingEmptySubsequences: false)
        let statusLine = lines[0]
        fuzzCheck(statusLine.hasPrefix("HTTP/1.1 ") && statusLine.utf8.count >= 12, "bad status line: \(statusLine)")
        let status = Int(statusLine.dropFirst(9).prefix(3)) ?? -1
        fuzzCheck((100...599).contains(status), "bad status: \(statusLine)")
        var length: Int?
        var close = false
        var eventStream = false
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { fuzzCheck(false, "header line without a colon: \(line)"); break }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingPrefix(" ")
            switch name {
            case "content-length":
                fuzzCheck(length == nil, "two Content-Length headers")
                length = Int(value)
                fuzzCheck(length != nil, "bad Content-Length \(value)")
            case "connection": close = value.lowercased() == "close"
            case "content-type": eventStream = value.hasPrefix("text/event-stream")
            default: break
            }
        }
        i = end + 4
        if status == 100 {
            fuzzCheck(length == nil, "100 Continue with a body")
            continue
        }
        let isHead = out.count < heads.count && heads[out.count]
        out.append(Response(status: status, close: close))
        if status == 101 {
            fuzzCheck(length == nil && !close, "a 101 with a length or Connection: close")
            return out  // WebSocket frames follow, to the end of the connection
        }
        if eventStream {
            fuzzCheck(length == nil && close, "an event stream with a length or without Connection: close")
            return out  // the stream runs to the end of the connection
        }
        let bodyLength = isHead ? 0 : length ?? 0
        fuzzCheck(length != nil || status == 204 || status == 304, "status \(status) without Content-Length")
        fuzzCheck(bytes.count - i >= bodyLength, "a body is cut short: \(bodyLength) promised, \(bytes.count - i) sent")
        i += bodyLength
        if close { fuzzCheck(i == bytes.count, "\(bytes.count - i) bytes after a Connection: close response") }
    }
    return out
}

/// Whether the client has read the head of an event stream (held until the client leaves).
func isEventStream(_ bytes: [UInt8]) -> Bool {
    let needle = Array("text/event-stream".utf8)
    guard bytes.count >= needle.count else { return false }
    for i in 0...(bytes.count - needle.count) where bytes[i] == needle[0] && Array(bytes[i..<(i + needle.count)]) == needle {
        return true
    }
    return false
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    guard input.count >= 1 else { return 0 }
    let world = World.shared
    world.ensureFixtures()
    world.handled = 0
    world.finished = []
    world.heads = []
    let payload = substitute(UnsafeRawBufferPointer(rebasing: input[1...]), world.ids)
    var splitter = Splitter(seed: input[0], length: payload.count)
    let before = world.server.connectionCount

    var client = Client(port: world.port)
    var turns = 0
    while world.server.connectionCount == before {
        world.turn()
        turns += 1
        fuzzCheck(turns < 100_000, "the server never accepted")
    }
    var offset = 0
    for n in splitter.pieces(payload.count, maxPiece: 64) {
        var sent = 0
        var stuck = 0
        while sent < n {
            let k = client.send(payload[(offset + sent)..<(offset + n)])
            sent += k
            world.turn()
            _ = client.drain()
            stuck = k == 0 ? stuck + 1 : 0
            if stuck > 1000 || client.eof { break }  // the server stopped reading or closed
        }
        offset += n
        world.turn()
        _ = client.drain()
        if client.eof { break }
    }
    if input[0] & 0x80 != 0 { shutdown(client.fd, Int32(SHUT_WR)) }
    // Until quiet: nothing new for a few turns, and no request held (a long-poll is answered
    // within 3 ms; an event stream is held until the client leaves, so it does not count),
    // unless nothing progressed for 50 ms. Leaving while a long-poll is about to be answered
    // would race: the server may finish a response the client never reads.
    var quiet = 0
    var spins = 0
    var lastProgress = world.loop.now
    var lastFinished = world.finished.count
    while !client.eof && quiet < 4 {
        world.turn()
        spins += 1
        let got = client.drain()
        if got || world.finished.count != lastFinished {
            lastProgress = world.loop.now
            lastFinished = world.finished.count
        }
        let held = world.server.connectionCount > before && world.finished.count < world.handled
            && !isEventStream(client.received)
        if got || held && world.loop.now < lastProgress + 50 { quiet = 0 } else { quiet += 1 }
        if spins > 1_000_000 { break }
    }
    close(client.fd)
    let responses = parseResponses(client.received, heads: world.heads)
    turns = 0
    while world.server.connectionCount > before {
        world.turn()
        turns += 1
        fuzzCheck(turns < 100_000, "the server kept a connection whose client is gone")
    }
    let statuses = responses.map(\.status)
    fuzzCheck(statuses == world.finished, "the client read statuses \(statuses), the server finished \(world.finished)")
    // Every request handed over was answered, but one still held when the client left (-1);
    // a request the parser refused is answered without being handed over (+1, then it closes).
    let parseErrors = world.finished.count - world.handled
    fuzzCheck((-1...1).contains(parseErrors), "\(world.handled) requests handled, \(world.finished.count) answered")
    return 0
}
