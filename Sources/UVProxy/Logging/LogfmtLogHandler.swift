import Logging
#if canImport(Glibc)
import Glibc
#endif

/// `--log-format text` (the default): one logfmt line per event on stderr, readable as it is and
/// parseable by logfmt tools (Loki's `| logfmt`, lnav, hl):
///
///     time=2026-11-26T00:29:46.123Z level=info msg="session created" client=203.0.113.7:51234 session=Ab3dE5fG target=default
///
/// `time`, `level` and `msg` come first, then the metadata keys in order. A value is quoted when
/// it is empty or holds a space, `=`, `"` or a control byte, and inside quotes `"`, `\`, newline,
/// CR, tab and other control bytes are escaped: a header value a client wrote (a path,
/// `X-Forwarded-For`) can neither add a field nor start a line of its own.
public struct LogfmtLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    /// Where whole lines go (stderr; tests capture them).
    private let output: @Sendable ([UInt8]) -> Void

    public init(label: String, level: Logger.Level,
                output: @escaping @Sendable ([UInt8]) -> Void = JSONLogHandler.writeToStandardError) {
        self.logLevel = level
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line: [UInt8] = []
        line.reserveCapacity(256)
        line.append("time=")
        line.append(contentsOf: JSONLogHandler.timestamp().utf8)
        line.append(" level=")
        line.append(contentsOf: event.level.rawValue.utf8)
        line.append(" msg=")
        line.appendLogfmtValue(event.message.description.utf8)
        var fields = metadata
        if let extra = event.metadata { fields.merge(extra) { _, new in new } }
        for key in fields.keys.sorted() where !["time", "level", "msg"].contains(key) {
            line.append(UInt8(ascii: " "))
            line.appendLogfmtKey(key.utf8)
            line.append(UInt8(ascii: "="))
            line.appendLogfmtValue(LogfmtLogHandler.text(fields[key]!).utf8)
        }
        line.append(UInt8(ascii: "\n"))
        output(line)  // one write per line
    }

    private static func text(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let s): s
        case .stringConvertible(let c): c.description
        case .array, .dictionary: value.description
        }
    }
}

extension Array where Element == UInt8 {
    /// A logfmt key: ours are plain words; any byte that would break the pair becomes `_`.
    mutating func appendLogfmtKey<S: Collection>(_ key: S) where S.Element == UInt8 {
        if key.isEmpty { return append(UInt8(ascii: "_")) }
        for c in key {
            append(c <= 0x20 || c == 0x7F || c == UInt8(ascii: "=") || c == UInt8(ascii: "\"") ? UInt8(ascii: "_") : c)
        }
    }

    /// A logfmt value, quoted and escaped when it must be (see `LogfmtLogHandler`).
    mutating func appendLogfmtValue<S: Collection>(_ value: S) where S.Element == UInt8 {
        let needsQuotes = value.isEmpty || value.contains { c in
            c <= 0x20 || c == 0x7F || c == UInt8(ascii: "=") || c == UInt8(ascii: "\"")
        }
        guard needsQuotes else { return append(contentsOf: value) }
        appendJSONString(value)  // the same escapes: \" \\ \n \r \t and \u00XX for control bytes
    }
}
