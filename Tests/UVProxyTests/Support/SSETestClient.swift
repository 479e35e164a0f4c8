import Foundation

/// One Server-Sent Event (or a comment line, `comment` set) as the test client parsed it.
struct SSEEvent {
    var id: String?
    var event: String?
    var data: String = ""
    var comment: String?

    /// `data` as the JSON string it must be.
    var text: String? {
        try? JSONSerialization.jsonObject(with: Data(data.utf8), options: .fragmentsAllowed) as? String
    }
}

/// A test client for `GET /sessions/{id}/events`: sends the request on its own connection,
/// reads the head, then parses events as they arrive.
final class SSETestClient {
    let socket: TestSocket
    private var buffer: [UInt8] = []
    private(set) var status = 0
    private(set) var headers: [String: String] = [:]
    /// The last `retry:` field seen (blocks with nothing else are not returned as events).
    private(set) var retry: Int?

    init(port: Int, path: String, headers extra: [String: String] = [:]) throws {
        socket = try TestSocket.connect(port: port)
        var head = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        for (k, v) in extra { head += "\(k): \(v)\r\n" }
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

    /// The next event or comment; nil when the server ended the response.
    func next() throws -> SSEEvent? {
        let blank: [UInt8] = [10, 10]
        while buffer.firstRange(of: blank) == nil {
            let chunk = try socket.receive()
            if chunk.isEmpty { return nil }
            buffer += chunk
        }
        let end = buffer.firstRange(of: blank)!.lowerBound
        let block = String(decoding: buffer[0..<end], as: UTF8.self)
        buffer.removeFirst(end + 2)
        var event = SSEEvent()
        var data: [String] = []
        for line in block.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix(":") { event.comment = String(line.dropFirst()).trimmingCharacters(in: .whitespaces); continue }
            guard let colon = line.firstIndex(of: ":") else { continue }
            var value = line[line.index(after: colon)...]
            if value.hasPrefix(" ") { value = value.dropFirst() }
            switch line[..<colon] {
            case "id": event.id = String(value)
            case "event": event.event = String(value)
            case "data": data.append(String(value))
            case "retry": retry = Int(value)
            default: break
            }
        }
        event.data = data.joined(separator: "\n")
        if data.isEmpty, event.id == nil, event.event == nil, event.comment == nil { return try next() }
        return event
    }

    /// Data events until `text` has arrived in all (comments skipped); returns them.
    func events(untilText needle: String) throws -> [SSEEvent] {
        var all: [SSEEvent] = []
        var text = ""
        while !text.contains(needle) {
            guard let e = try next() else { throw TestError("stream ended before '\(needle)'; got '\(text)'") }
            if e.comment != nil && e.id == nil { continue }
            all.append(e)
            text += e.text ?? ""
        }
        return all
    }
}
