/// Text a client typed (UTF-8: a WebSocket's text frames) in a target's charset, the inverse
/// of `TextDecoder` (SPEC §8: text frames both ways, in the target's charset). A character the
/// charset cannot hold becomes `?`. A pure value: no I/O.
public enum TextEncoder {
    /// `utf8` (valid UTF-8, as a WebSocket's text is) in `charset`.
    public static func encode(_ utf8: [UInt8], to charset: Charset) -> [UInt8] {
        if charset == .utf8 || utf8.allSatisfy({ $0 < 0x80 }) { return utf8 }  // ASCII is the same in all three
        var out: [UInt8] = []
        out.reserveCapacity(utf8.count)
        for scalar in String(decoding: utf8, as: UTF8.self).unicodeScalars {
            let v = scalar.value
            if v < 0x80 {
                out.append(UInt8(v))
            } else if charset == .latin1 {
                out.append(v <= 0xFF ? UInt8(v) : UInt8(ascii: "?"))
            } else {
                out.append(cp437Byte[v] ?? UInt8(ascii: "?"))
            }
        }
        return out
    }

    /// Code page 437's bytes 0x80…0xFF by the character each stands for.
    static let cp437Byte: [UInt32: UInt8] = {
        var map: [UInt32: UInt8] = [:]
        for (i, c) in TextDecoder.cp437High.enumerated() { map[UInt32(c)] = UInt8(0x80 + i) }
        return map
    }()
}
