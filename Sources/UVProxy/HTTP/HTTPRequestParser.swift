import CUV
import Glibc

/// Why a request could not be parsed; each maps to one status code.
public enum HTTPParseError: Error, Equatable {
    case malformed(String)        // 400, connection closed
    case versionNotSupported      // 505, connection closed
    case codingNotImplemented     // 501, connection closed: a transfer coding before chunked
    case headersTooLarge          // 431
    case bodyTooLarge             // 413
    /// A well-formed request line whose method http_parser does not know (RFC 9110 §9.1: any
    /// token): the router answers it (`405` with `Allow`), then the connection is closed.
    case unknownMethod(target: [UInt8])
}

/// What the parser tells its owner.
protocol HTTPRequestParserDelegate: AnyObject {
    /// Headers are complete and acceptable; `Expect: 100-continue` may be answered now.
    func parserDidCompleteHeaders(_ request: HTTPRequest)
    /// A whole request has arrived; the parser is paused until `resume()`.
    func parserDidCompleteRequest()
}

/// http_parser (the C library) driven for requests: collects one `HTTPRequest` at a time and
/// pauses after each, so pipelined requests are handed out one by one, in order.
///
/// The C callbacks find this object through `http_parser.data` (unretained: the parser never
/// outlives its owner). This file is the only place that touches http_parser.
final class HTTPRequestParser {
    private let parser: UnsafeMutablePointer<http_parser>
    /// `sharedSettings`, copied here: a field load per parse rather than the global's once-check.
    private let settings = HTTPRequestParser.sharedSettings
    /// http_parser's callbacks: the same for every parser (they find theirs through `data`),
    /// so one table for the process, never freed, rather than one per connection. (Only read
    /// after it is made, and made once: `static let` initialisation is atomic.)
    nonisolated(unsafe) private static let sharedSettings: UnsafeMutablePointer<http_parser_settings> = {
        let settings = UnsafeMutablePointer<http_parser_settings>.allocate(capacity: 1)
        settings.initialize(to: http_parser_settings())
        settings.pointee.on_message_begin = { p in
            HTTPRequestParser.with(p) { me in
                me.request.reset()
                me.field.clear()
                me.value.clear()
                me.inValue = false
                me.inHeaders = true
                me.inBody = false
                return 0
            }
        }
        settings.pointee.on_url = { p, at, len in
            HTTPRequestParser.with(p) { me in
                me.request.target.append(contentsOf: UnsafeRawBufferPointer(start: at, count: len))
                return 0
            }
        }
        settings.pointee.on_header_field = { p, at, len in
            HTTPRequestParser.with(p) { me in
                if me.inValue, !me.commitHeader() { return 1 }
                // A chunked body's trailer fields: the head validator has stopped at the body.
                if !me.inHeaders, !UnsafeRawBufferPointer(start: at, count: len).allSatisfy(RequestHeadValidator.isTokenByte) {
                    me.failure = .malformed(RequestHeadValidator.Problem.notAToken.reason + " (trailer)")
                    return 1
                }
                me.field.append(contentsOf: UnsafeRawBufferPointer(start: at, count: len))
                return 0
            }
        }
        settings.pointee.on_header_value = { p, at, len in
            HTTPRequestParser.with(p) { me in
                if !me.inValue {  // the name is complete: what is it to us?
                    me.inValue = true
                    me.kind = HeaderKind(me.field)
                }
                // Only the values the proxy reads are kept (most headers' are not: no copy).
                if me.kind.keepsValue { me.value.append(contentsOf: UnsafeRawBufferPointer(start: at, count: len)) }
                return 0
            }
        }
        settings.pointee.on_headers_complete = { p in
            HTTPRequestParser.with(p) { me in me.headersComplete(p!) }
        }
        settings.pointee.on_body = { p, at, len in
            HTTPRequestParser.with(p) { me in
                guard me.request.body.count + len <= me.maxBody else {
                    me.failure = .bodyTooLarge
                    return 1
                }
                me.request.body.append(contentsOf: UnsafeRawBufferPointer(start: at, count: len))
                return 0
            }
        }
        settings.pointee.on_message_complete = { p in
            http_parser_pause(p, 1)  // one request at a time: the owner resumes after answering
            return HTTPRequestParser.with(p) { me in
                me.inBody = false
                me.head.reset()  // the next byte is the next request's
                me.delegate?.parserDidCompleteRequest()
                return 0
            }
        }
        return settings
    }()
    unowned(unsafe) var delegate: HTTPRequestParserDelegate?
    let request = HTTPRequest()
    let maxBody: Int
    private var field: [UInt8] = []
    private var value: [UInt8] = []
    private var inValue = false
    /// What the header being read is (set when its value starts).
    private var kind = HeaderKind.other
    private var failure: HTTPParseError?
    /// Checks each head's raw bytes before http_parser sees them (strict framing).
    private var head = RequestHeadValidator()
    /// True between the first byte of a request and its headers' end (the 408 clock runs).
    private(set) var inHeaders = false
    /// True between a request's headers' end and its body's end (the body clock runs).
    private(set) var inBody = false

    /// Sets http_parser's process-wide header limit (request line plus headers).
    static func setMaxHeaderSize(_ bytes: Int) { http_parser_set_max_header_size(UInt32(bytes)) }

    init(maxBody: Int) {
        self.maxBody = maxBody
        parser = .allocate(capacity: 1)
        http_parser_init(parser, HTTP_REQUEST)
        parser.pointee.data = nil
    }

    /// The connection has become a stream and parses no more requests: its buffers are freed.
    func releaseStorage() {
        request.releaseStorage()
        field = []
        value = []
    }

    deinit {
        parser.deallocate()
    }

    /// The parser behind a C callback, unretained: `parse` runs under the owner's reference.
    @inline(__always)
    private static func with(_ p: UnsafeMutablePointer<http_parser>?, _ body: (HTTPRequestParser) -> Int32) -> Int32 {
        Unmanaged<HTTPRequestParser>.fromOpaque(p!.pointee.data)._withUnsafeGuaranteedRef(body)
    }

    /// Parses `bytes` until they run out, a request completes (then it pauses) or an error.
    /// Returns how many bytes were consumed, or the error.
    func parse(_ bytes: UnsafeRawBufferPointer) -> Result<Int, HTTPParseError> {
        // A paused parser takes nothing, so the head validator must not see these bytes yet
        // either: it sees each byte once, when http_parser does.
        if parser.pointee.http_errno == HPE_PAUSED.rawValue { return .success(0) }
        if !head.isDone, let problem = head.scan(bytes) { return .failure(.malformed(problem.reason)) }
        if heldLine != nil { return holdRequestLine(bytes) }
        parser.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        let consumed = http_parser_execute(parser, settings, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count)
        let errno = http_errno(rawValue: parser.pointee.http_errno)
        if errno == HPE_OK || errno == HPE_PAUSED { return .success(consumed) }
        if let failure { return .failure(failure) }
        if errno == HPE_HEADER_OVERFLOW { return .failure(.headersTooLarge) }
        if errno == HPE_INVALID_METHOD {
            heldLine = []
            return holdRequestLine(bytes)
        }
        return .failure(.malformed(String(cString: http_errno_description(errno))))
    }

    /// The longest request line with an unknown method held while it comes in pieces.
    static let maxHeldRequestLine = 8 * 1024

    /// After http_parser stopped at a method it does not know: the bytes from there on, until
    /// the request line's CRLF has come (a client may send it in pieces) or it is too long.
    private var heldLine: [UInt8]?

    /// Holds `bytes` of a request line with an unknown method, judged as they come: a byte that
    /// cannot belong to `token SP target SP HTTP/1.x CRLF` (a TLS handshake's first, say) makes it
    /// malformed at once; the whole line gives `unknownMethod` with its target.
    private func holdRequestLine(_ bytes: UnsafeRawBufferPointer) -> Result<Int, HTTPParseError> {
        heldLine!.append(contentsOf: bytes)
        switch HTTPRequestParser.judgeRequestLine(heldLine!) {
        case .partial where heldLine!.count <= HTTPRequestParser.maxHeldRequestLine:
            inHeaders = true  // the header clock runs for it as for any request's head
            return .success(bytes.count)
        case .whole(let target):
            heldLine = nil
            return .failure(.unknownMethod(target: target))
        case .otherVersion:
            heldLine = nil
            return .failure(.versionNotSupported)  // `PRI * HTTP/2.0`, HTTP/2's preface, among them
        case .partial, .invalid:
            heldLine = nil
            return .failure(.malformed(String(cString: http_errno_description(HPE_INVALID_METHOD))))
        }
    }

    enum RequestLine: Equatable { case whole(target: [UInt8]), otherVersion, partial, invalid }

    /// Whether `line` is the rest of a request line, `method-or-its-end SP target SP HTTP/1.x
    /// CRLF`, a beginning of one, or neither (http_parser stops at the first byte of a method it
    /// does not know, so the line is held from that byte on, or from the start of the method when
    /// it was cut within a known method's prefix). Only on that error: not a hot path.
    static func judgeRequestLine(_ line: [UInt8]) -> RequestLine {
        var i = 0
        while i < line.count, line[i] != 0x20 {
            guard RequestHeadValidator.isTokenByte(line[i]) else { return .invalid }
            i += 1
        }
        guard i < line.count else { return .partial }
        guard i > 0 else { return .invalid }
        i += 1
        let start = i
        while i < line.count, line[i] != 0x20 {
            guard line[i] > 0x20, line[i] < 0x7F else { return .invalid }
            i += 1
        }
        guard i < line.count else { return .partial }
        guard i > start else { return .invalid }
        let target = Array(line[start..<i])
        let version = line[(i + 1)...].prefix(10)
        var other = false  // HTTP/d.d other than 1.0 and 1.1: 505, as for a known method
        for (k, c) in version.enumerated() {
            let want = HTTPRequestParser.versionText[k]
            if (k == 5 || k == 7) && c >= 0x30 && c <= 0x39 {
                if c != want && !(k == 7 && c == UInt8(ascii: "0")) { other = true }
                continue
            }
            guard c == want else { return .invalid }
        }
        guard version.count == 10 else { return .partial }
        return other ? .otherVersion : .whole(target: target)
    }
    private static let versionText = Array("HTTP/1.1\r\n".utf8)

    /// Lets the parser continue after a completed request.
    func resume() { http_parser_pause(parser, 0) }

    /// Returns 0, or -1 to fail the request (for this callback 1 and 2 mean "no body").
    private func headersComplete(_ p: UnsafeMutablePointer<http_parser>) -> Int32 {
        if inValue, !commitHeader() { return -1 }
        inHeaders = false
        inBody = true  // until on_message_complete, which comes at once for a request without one
        request.method = HTTPMethod(parserMethod: UInt32(p.pointee.method))
        request.versionMajor = Int(p.pointee.http_major)
        request.versionMinor = Int(p.pointee.http_minor)
        request.keepAlive = http_should_keep_alive(p) != 0
        // http_parser reads a request line without a version as HTTP/0.9, and takes any digits.
        if request.versionMajor != 1 || request.versionMinor > 1 {
            failure = request.versionMajor == 0 && request.versionMinor == 9
                ? .malformed("no HTTP/1.0 or HTTP/1.1 version in the request line") : .versionNotSupported
            return -1
        }
        // RFC 9112 §3: `method SP request-target SP HTTP-version`, one SP each; http_parser, built
        // lenient, takes runs of spaces (the version is 8 bytes: HTTP/1.0 or HTTP/1.1 by now).
        let method = Int(Glibc.strlen(http_method_str(http_method(rawValue: UInt32(p.pointee.method)))))
        if head.requestLineLength != method + request.target.count + 10 {
            failure = .malformed("request line is not method SP target SP version")
            return -1
        }
        if request.target.first != UInt8(ascii: "/"), !request.takeAbsoluteForm() {
            failure = .malformed("userinfo in an absolute-form target")
            return -1
        }
        if let why = request.framingProblem {
            failure = .malformed(why)
            return -1
        }
        switch request.transferCoding {
        case .chunkedOrNone: break
        case .otherCoding:
            failure = .codingNotImplemented
            return -1
        case .chunkedNotLast:
            failure = .malformed("Transfer-Encoding without chunked last")
            return -1
        }
        let length = p.pointee.content_length
        if request.contentLengthCount == 1, length != UInt64.max, length > UInt64(maxBody) {
            failure = .bodyTooLarge
            return -1
        }
        delegate?.parserDidCompleteHeaders(request)
        return 0
    }

    /// Keeps the value of a header the proxy acts on; returns false to reject the request.
    private func commitHeader() -> Bool {
        defer {
            field.clear()
            value.clear()
            inValue = false
        }
        // Whitespace after the value is not part of it (RFC 9112 §5; http_parser drops only the
        // whitespace before it).
        while let last = value.last, last == 32 || last == 9 { value.removeLast() }
        switch kind {
        case .host:
            request.hostCount += 1
            swap(&request.host, &value)  // no copy: `value` takes the old buffer, cleared below
        case .expect: request.expectContinue = value[...].equalsIgnoringCase("100-continue")
        case .contentType: request.contentType.keep(value)
        case .authorization: request.authorization.keep(value)
        case .lastEventID: request.lastEventID.keep(value)
        case .ifNoneMatch: HTTPRequestParser.join(&request.ifNoneMatch, value)
        case .contentLength: request.contentLengthCount += 1
        case .forwardedFor: request.forwardedFor.keep(value)
        case .transferEncoding:
            request.transferEncodingCount += 1
            // Only `chunked` is known: another coding before it (`gzip, chunked`) is 501 (RFC 9112
            // §6.1); chunked not last makes the body's length unknown: 400 (§6.3).
            let last = (value.lastIndex(of: UInt8(ascii: ",")).map { value[($0 + 1)...] } ?? value[...])
                .drop { $0 == 32 || $0 == 9 }
            if !last.equalsIgnoringCase("chunked") {
                request.transferCoding = .chunkedNotLast
            } else if !value[...].equalsIgnoringCase("chunked") {
                request.transferCoding = .otherCoding
            }
        case .upgrade: HTTPRequestParser.join(&request.upgrade, value)
        case .connection: HTTPRequestParser.join(&request.connection, value)
        case .webSocketVersion: HTTPRequestParser.join(&request.webSocketVersion, value)
        case .webSocketKey: HTTPRequestParser.join(&request.webSocketKey, value)
        case .webSocketProtocol: HTTPRequestParser.join(&request.webSocketProtocol, value)
        case .webSocketExtensions: HTTPRequestParser.join(&request.webSocketExtensions, value)
        case .origin: request.origin.keep(value)
        case .other: break
        }
        return true
    }

    /// A list header's value: a second line of the same name is joined with ", " (RFC 9110 §5.3).
    private static func join(_ kept: inout [UInt8], _ value: [UInt8]) {
        if kept.isEmpty { return kept.keep(value) }
        kept.append(contentsOf: [UInt8(ascii: ","), UInt8(ascii: " ")])
        kept.append(contentsOf: value)
    }

    /// The headers the proxy acts on, known by name once the name is complete.
    private enum HeaderKind {
        case other, host, expect, contentType, authorization, lastEventID, ifNoneMatch, contentLength, forwardedFor
        case transferEncoding, upgrade, connection, webSocketVersion, webSocketKey, webSocketProtocol, webSocketExtensions
        case origin

        init(_ name: [UInt8]) {
            let n = name[...]
            switch name.count {
            case 4 where n.equalsIgnoringCase("host"): self = .host
            case 6 where n.equalsIgnoringCase("expect"): self = .expect
            case 6 where n.equalsIgnoringCase("origin"): self = .origin
            case 12 where n.equalsIgnoringCase("content-type"): self = .contentType
            case 13 where n.equalsIgnoringCase("authorization"): self = .authorization
            case 13 where n.equalsIgnoringCase("last-event-id"): self = .lastEventID
            case 13 where n.equalsIgnoringCase("if-none-match"): self = .ifNoneMatch
            case 14 where n.equalsIgnoringCase("content-length"): self = .contentLength
            case 15 where n.equalsIgnoringCase("x-forwarded-for"): self = .forwardedFor
            case 17 where n.equalsIgnoringCase("transfer-encoding"): self = .transferEncoding
            case 7 where n.equalsIgnoringCase("upgrade"): self = .upgrade
            case 10 where n.equalsIgnoringCase("connection"): self = .connection
            case 21 where n.equalsIgnoringCase("sec-websocket-version"): self = .webSocketVersion
            case 17 where n.equalsIgnoringCase("sec-websocket-key"): self = .webSocketKey
            case 22 where n.equalsIgnoringCase("sec-websocket-protocol"): self = .webSocketProtocol
            case 24 where n.equalsIgnoringCase("sec-websocket-extensions"): self = .webSocketExtensions
            default: self = .other
            }
        }

        /// Whether the value's bytes are read (the counted ones need only to be seen;
        /// Transfer-Encoding's is read to tell `chunked` from other codings).
        var keepsValue: Bool {
            switch self {
            case .other, .contentLength: false
            default: true
            }
        }
    }
}
