import Foundation

/// A minimal WebSocket client for the integration tests, over a raw socket: it sends the
/// upgrade request, reads the head, sends masked frames (or anything else, to test the
/// proxy's checks) and reads the server's frames one by one.
final class WebSocketTestClient {
    let socket: TestSocket
    private(set) var status = 0
    private(set) var headers: [String: String] = [:]
    private var buffer: [UInt8] = []

    struct Frame: Equatable {
        var fin: Bool
        var opcode: UInt8
        var payload: [UInt8]
        var text: String { String(decoding: payload, as: UTF8.self) }
        /// A close frame's code and reason.
        var close: (code: UInt16, reason: String)? {
            guard opcode == 8, payload.count >= 2 else { return nil }
            return (UInt16(payload[0]) << 8 | UInt16(payload[1]), String(decoding: payload[2...], as: UTF8.self))
        }
    }

    init(port: Int, path: String, protocols: [String] = [], headers extra: [String: String]? = nil) throws {
        socket = try TestSocket.connect(port: port)
        var head = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        let defaults = ["Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="]
        for (k, v) in extra ?? defaults { head += "\(k): \(v)\r\n" }
        if !protocols.isEmpty { head += "Sec-WebSocket-Protocol: \(protocols.joined(separator: ", "))\r\n" }
        try socket.send(head + "\r\n")
        let crlf2: [UInt8] = [13, 10, 13, 10]
        while buffer.firstRange(of: crlf2) == nil {
            let chunk = try socket.receive()
            guard !chunk.isEmpty else { throw TestError("closed before the response head") }
            buffer += chunk
        }
        let end = buffer.firstRange(of: crlf2)!.lowerBound
        var lines = String(decoding: buffer[0..<end], as: UTF8.self).components(separatedBy: "\r\n")
        buffer.removeFirst(end + 4)
        status = Int(lines.removeFirst().split(separator: " ")[1]) ?? 0
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
    }

    /// The rest of a non-101 answer (its body, up to Content-Length).
    func body() throws -> String {
        let length = Int(headers["content-length"] ?? "0") ?? 0
        while buffer.count < length {
            let chunk = try socket.receive()
            if chunk.isEmpty { break }
            buffer += chunk
        }
        return String(decoding: buffer.prefix(length), as: UTF8.self)
    }

    /// A frame as a client sends it: masked unless `masked` is false.
    static func frame(_ opcode: UInt8, _ payload: [UInt8], fin: Bool = true, masked: Bool = true) -> [UInt8] {
        var out: [UInt8] = [(fin ? 0x80 : 0) | opcode]
        let mask: UInt8 = masked ? 0x80 : 0
        if payload.count < 126 {
            out.append(mask | UInt8(payload.count))
        } else if payload.count < 65536 {
            out.append(mask | 126)
            out += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        } else {
            out.append(mask | 127)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: payload.count >> shift)) }
        }
        guard masked else { return out + payload }
        let key: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]
        out += key
        out += payload.enumerated().map { $0.element ^ key[$0.offset % 4] }
        return out
    }

    func send(_ opcode: UInt8, _ payload: [UInt8], fin: Bool = true, masked: Bool = true) throws {
        try socket.send(WebSocketTestClient.frame(opcode, payload, fin: fin, masked: masked))
    }

    func sendText(_ text: String) throws { try send(1, Array(text.utf8)) }

    private func fill(_ n: Int) throws -> Bool {
        while buffer.count < n {
            let chunk = try socket.receive()
            if chunk.isEmpty { return false }
            buffer += chunk
        }
        return true
    }

    /// The next frame from the server (which must not mask); nil at the end of the connection.
    func next() throws -> Frame? {
        guard try fill(2) else { return nil }
        let fin = buffer[0] & 0x80 != 0
        let opcode = buffer[0] & 0x0F
        guard buffer[1] & 0x80 == 0 else { throw TestError("the server masked a frame") }
        var length = Int(buffer[1] & 0x7F)
        var at = 2
        if length == 126 {
            guard try fill(4) else { return nil }
            length = Int(buffer[2]) << 8 | Int(buffer[3])
            at = 4
        } else if length == 127 {
            guard try fill(10) else { return nil }
            length = buffer[2..<10].reduce(0) { $0 << 8 | Int($1) }
            at = 10
        }
        guard try fill(at + length) else { return nil }
        let frame = Frame(fin: fin, opcode: opcode, payload: Array(buffer[at..<at + length]))
        buffer.removeFirst(at + length)
        return frame
    }

    /// Data frames until their payloads hold `needle`; their payloads joined.
    func read(until needle: String) throws -> [UInt8] {
        var all: [UInt8] = []
        while !String(decoding: all, as: UTF8.self).contains(needle) {
            guard let f = try next() else { throw TestError("closed before '\(needle)'") }
            if f.opcode == 1 || f.opcode == 2 { all += f.payload }
        }
        return all
    }
}
