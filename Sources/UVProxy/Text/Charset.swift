/// The character set a target's bytes are in, used wherever they become text (SSE). SPEC §3:
/// IANA names, case-insensitive, plus the aliases `latin1` and `cp437`.
public enum Charset: Sendable, Equatable, CustomStringConvertible {
    case utf8
    case latin1
    case cp437

    public init?(name: String) {
        switch name.lowercased() {
        case "utf-8", "utf8", "csutf8": self = .utf8
        case "iso-8859-1", "iso_8859-1", "iso_8859-1:1987", "latin1", "l1", "iso-ir-100", "ibm819", "cp819",
             "csisolatin1":
            self = .latin1
        case "ibm437", "cp437", "437", "cspc8codepage437": self = .cp437
        default: return nil
        }
    }

    /// The IANA name.
    public var description: String {
        switch self {
        case .utf8: "UTF-8"
        case .latin1: "ISO-8859-1"
        case .cp437: "IBM437"
        }
    }
}
