/// The status codes the proxy sends, with their reason phrases.
public enum HTTPStatus: Int, Sendable {
    case `continue` = 100
    case switchingProtocols = 101
    case ok = 200
    case created = 201
    case noContent = 204
    case notModified = 304
    case badRequest = 400
    case unauthorized = 401
    case forbidden = 403
    case notFound = 404
    case methodNotAllowed = 405
    case requestTimeout = 408
    case conflict = 409
    case payloadTooLarge = 413
    case upgradeRequired = 426
    case tooManyRequests = 429
    case headersTooLarge = 431
    case internalServerError = 500
    case notImplemented = 501
    case badGateway = 502
    case serviceUnavailable = 503
    case gatewayTimeout = 504
    case httpVersionNotSupported = 505

    /// The whole status line, ready to write.
    var statusLine: StaticString {
        switch self {
        case .continue: return "HTTP/1.1 100 Continue\r\n"
        case .switchingProtocols: return "HTTP/1.1 101 Switching Protocols\r\n"
        case .ok: return "HTTP/1.1 200 OK\r\n"
        case .created: return "HTTP/1.1 201 Created\r\n"
        case .noContent: return "HTTP/1.1 204 No Content\r\n"
        case .notModified: return "HTTP/1.1 304 Not Modified\r\n"
        case .badRequest: return "HTTP/1.1 400 Bad Request\r\n"
        case .unauthorized: return "HTTP/1.1 401 Unauthorized\r\n"
        case .forbidden: return "HTTP/1.1 403 Forbidden\r\n"
        case .notFound: return "HTTP/1.1 404 Not Found\r\n"
        case .methodNotAllowed: return "HTTP/1.1 405 Method Not Allowed\r\n"
        case .requestTimeout: return "HTTP/1.1 408 Request Timeout\r\n"
        case .conflict: return "HTTP/1.1 409 Conflict\r\n"
        case .payloadTooLarge: return "HTTP/1.1 413 Payload Too Large\r\n"
        case .upgradeRequired: return "HTTP/1.1 426 Upgrade Required\r\n"
        case .tooManyRequests: return "HTTP/1.1 429 Too Many Requests\r\n"
        case .headersTooLarge: return "HTTP/1.1 431 Request Header Fields Too Large\r\n"
        case .internalServerError: return "HTTP/1.1 500 Internal Server Error\r\n"
        case .notImplemented: return "HTTP/1.1 501 Not Implemented\r\n"
        case .badGateway: return "HTTP/1.1 502 Bad Gateway\r\n"
        case .serviceUnavailable: return "HTTP/1.1 503 Service Unavailable\r\n"
        case .gatewayTimeout: return "HTTP/1.1 504 Gateway Timeout\r\n"
        case .httpVersionNotSupported: return "HTTP/1.1 505 HTTP Version Not Supported\r\n"
        }
    }
}

/// Appending text to a byte buffer without going through `String`.
extension Array where Element == UInt8 {
    @inline(__always) mutating func append(_ s: StaticString) {
        append(contentsOf: UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    /// `s` as a JSON string literal, with quotes (also a quoted logfmt value: `LogfmtLogHandler`).
    mutating func appendJSONString<S: Sequence>(_ s: S) where S.Element == UInt8 {
        append(UInt8(ascii: "\""))
        for c in s {
            switch c {
            case UInt8(ascii: "\""): append("\\\"")
            case UInt8(ascii: "\\"): append("\\\\")
            case 0x0A: append("\\n")
            case 0x0D: append("\\r")
            case 0x09: append("\\t")
            case 0..<0x20, 0x7F:  // DEL too: harmless in JSON, and logfmt lines share this
                let hex: StaticString = "0123456789abcdef"
                append("\\u00")
                append(hex.utf8Start[Int(c >> 4)])
                append(hex.utf8Start[Int(c & 15)])
            default: append(c)
            }
        }
        append(UInt8(ascii: "\""))
    }
}
