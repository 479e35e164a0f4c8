import Logging
#if canImport(Glibc)
import Glibc
#endif

/// `--log-format json`: one JSON object per line on stderr, for log shippers:
/// `{"time": "2026-11-26T00:29:46.123Z", "level": "info", "message": "session closed", "session": "…", …}`.
/// Metadata keys become top-level fields (nested values as JSON strings, lists as arrays).
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    private let label: String
    /// Where whole lines go (stderr; tests capture them).
    private let output: @Sendable ([UInt8]) -> Void

    public init(label: String, level: Logger.Level,
                output: @escaping @Sendable ([UInt8]) -> Void = JSONLogHandler.writeToStandardError) {
        self.label = label
        self.logLevel = level
        self.output = output
    }

    /// One write per line, so lines from anywhere never interleave.
    public static func writeToStandardError(_ line: [UInt8]) {
        line.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line: [UInt8] = []
        line.reserveCapacity(256)
        line.append("{\"time\": \"")
        line.append(contentsOf: JSONLogHandler.timestamp().utf8)
        line.append("\", \"level\": \"")
        line.append(contentsOf: event.level.rawValue.utf8)
        line.append("\", \"logger\": ")
        line.appendJSONString(label.utf8)
        line.append(", \"message\": ")
        line.appendJSONString(event.message.description.utf8)
        var fields = metadata
        if let extra = event.metadata { fields.merge(extra) { _, new in new } }
        for key in fields.keys.sorted() where !["time", "level", "logger", "message"].contains(key) {
            line.append(", ")
            line.appendJSONString(key.utf8)
            line.append(": ")
            JSONLogHandler.append(fields[key]!, to: &line)
        }
        line.append("}\n")
        output(line)
    }

    private static func append(_ value: Logger.Metadata.Value, to line: inout [UInt8]) {
        switch value {
        case .string(let s): line.appendJSONString(s.utf8)
        case .stringConvertible(let c): line.appendJSONString(c.description.utf8)
        case .array(let values):
            line.append("[")
            for (i, v) in values.enumerated() {
                if i > 0 { line.append(", ") }
                append(v, to: &line)
            }
            line.append("]")
        case .dictionary(let d):
            line.append("{")
            for (i, key) in d.keys.sorted().enumerated() {
                if i > 0 { line.append(", ") }
                line.appendJSONString(key.utf8)
                line.append(": ")
                append(d[key]!, to: &line)
            }
            line.append("}")
        }
    }

    /// UTC, ISO 8601 with milliseconds.
    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var parts = tm()
        gmtime_r(&t, &parts)
        func pad(_ n: Int32, _ width: Int) -> String {
            let s = String(n)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(parts.tm_year + 1900)-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(ts.tv_nsec / 1_000_000), 3))Z"
    }
}

/// The daemon's logging set-up (`--log-level`, `--log-format`).
public enum ProxyLogging {
    /// Installs the process-wide log handler. Call once, before the daemon starts.
    public static func bootstrap(format: String, level: Logger.Level) {
        LoggingSystem.bootstrap { label in
            if format == "json" { return JSONLogHandler(label: label, level: level) }
            return LogfmtLogHandler(label: label, level: level)
        }
    }
}

extension String {
    var trimmingSpaces: String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
