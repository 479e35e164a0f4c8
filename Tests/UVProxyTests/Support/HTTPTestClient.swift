import Foundation

/// One HTTP response as the test client saw it.
struct TestResponse {
    var status: Int
    var headers: [(String, String)]
    var body: [UInt8]

    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
    var text: String { String(decoding: body, as: UTF8.self) }
    var json: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] }
}

/// A minimal blocking HTTP/1.1 client over one keep-alive connection. Test-only: it reads
/// the responses this server writes (status line, headers, Content-Length or close-delimited).
final class HTTPTestClient {
    let socket: TestSocket
    private var buffer: [UInt8] = []
    let port: Int

    init(port: Int, timeout: TimeInterval = 15) throws {
        self.port = port
        socket = try TestSocket.connect(port: port, timeout: timeout)
    }

    /// A client over a socket already connected (its requests sent by hand).
    init(socket: TestSocket, port: Int = 0) {
        self.socket = socket
        self.port = port
    }

    func send(_ method: String, _ path: String, headers: [String: String] = [:], body: [UInt8] = []) throws {
        var head = "\(method) \(path) HTTP/1.1\r\n"
        if !headers.keys.contains(where: { $0.lowercased() == "host" }) { head += "Host: 127.0.0.1\r\n" }
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        if !body.isEmpty || method == "POST" { head += "Content-Length: \(body.count)\r\n" }
        head += "\r\n"
        try socket.send(Array(head.utf8) + body)
    }

    @discardableResult
    func request(_ method: String, _ path: String, headers: [String: String] = [:], body: [UInt8] = []) throws -> TestResponse {
        try send(method, path, headers: headers, body: body)
        return try readResponse()
    }

    @discardableResult
    func request(_ method: String, _ path: String, headers: [String: String] = [:], body: String) throws -> TestResponse {
        try request(method, path, headers: headers, body: Array(body.utf8))
    }

    private func fill() throws -> Bool {
        let chunk = try socket.receive()
        if chunk.isEmpty { return false }
        buffer += chunk
        return true
    }

    /// With `head`, the answer to a HEAD: no body follows, whatever its Content-Length says.
    func readResponse(head: Bool = false) throws -> TestResponse {
        let crlf2: [UInt8] = [13, 10, 13, 10]
        var headEnd: Int?
        while headEnd == nil {
            if let r = buffer.firstRange(of: crlf2) { headEnd = r.lowerBound; break }
            guard try fill() else { throw TestError("connection closed before a response") }
        }
        let headText = String(decoding: buffer[0..<headEnd!], as: UTF8.self)
        buffer.removeFirst(headEnd! + 4)
        var lines = headText.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw TestError("bad status line: \(headText)") }
        let headers = lines.compactMap { line -> (String, String)? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        var response = TestResponse(status: status, headers: headers, body: [])
        if status == 100 { return try readResponse(head: head) }
        if head { return response }
        if let length = response.header("Content-Length").flatMap(Int.init) {
            while buffer.count < length {
                guard try fill() else { throw TestError("connection closed mid-body") }
            }
            response.body = Array(buffer[0..<length])
            buffer.removeFirst(length)
        } else if status != 204 && status != 304 {
            while try fill() {}
            response.body = buffer
            buffer.removeAll()
        }
        return response
    }

    /// True if the server closed the connection (reads EOF).
    func isClosedByServer() -> Bool {
        if !buffer.isEmpty { return false }
        return (try? socket.receive())?.isEmpty ?? true
    }
}

extension HTTPTestClient {
    /// POST /sessions and return the id.
    func createSession(target: String? = nil) throws -> String {
        let r = try request("POST", "/sessions" + (target.map { "?target=\($0)" } ?? ""))
        guard r.status == 201, let id = r.json?["id"] as? String else {
            throw TestError("create failed: \(r.status) \(r.text)")
        }
        return id
    }
}
