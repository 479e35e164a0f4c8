/// A session id: 128 bits from the OS CSPRNG, written as 22 characters of base64url.
/// Kept as two integers so that looking one up hashes 16 bytes and allocates nothing.
public struct SessionID: Hashable, Sendable, CustomStringConvertible {
    let hi: UInt64
    let lo: UInt64

    /// The bits are random already: one word is plenty for a hash.
    public func hash(into hasher: inout Hasher) { hasher.combine(hi ^ lo) }

    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    static let textLength = 22
    /// base64url digit values by byte, 0xFF for bytes outside the alphabet.
    static let decodeTable: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (value, c) in alphabet.enumerated() { table[Int(c)] = UInt8(value) }
        return table
    }()

    init(hi: UInt64, lo: UInt64) {
        self.hi = hi
        self.lo = lo
    }

    /// A fresh id from the OS CSPRNG.
    public static func random() -> SessionID {
        let (hi, lo) = SystemRandom.words()
        return SessionID(hi: hi, lo: lo)
    }

    /// Parses the 22-character form; anything else is no id of ours.
    public init?<C: Collection>(text: C) where C.Element == UInt8 {
        guard text.count == SessionID.textLength else { return nil }
        var hi: UInt64 = 0
        var lo: UInt64 = 0
        let table = SessionID.decodeTable
        let valid = text.withContiguousStorageIfAvailable { chars in
            table.withUnsafeBufferPointer { t in
                // 22 × 6 = 132 bits: 10 characters fill 60 bits of hi, the 11th splits 4 + 2,
                // ten more fill 60 bits of lo, the last carries 2 bits and 4 zero bits.
                var bad: UInt8 = 0  // any 0xFF digit leaves its top bits set
                @inline(__always) func digit(_ i: Int) -> UInt64 {
                    let d = t[Int(chars[i])]
                    bad |= d
                    return UInt64(d & 63)
                }
                for i in 0..<10 { hi = (hi << 6) | digit(i) }
                let split = digit(10)
                hi = (hi << 4) | (split >> 2)
                lo = split & 3
                for i in 11..<21 { lo = (lo << 6) | digit(i) }
                let last = digit(21)
                lo = (lo << 2) | (last >> 4)
                return bad & 0xC0 == 0 && last & 0xF == 0
            }
        } ?? SessionID(text: Array(text)).map { id in hi = id.hi; lo = id.lo; return true }
        guard valid == true else { return nil }
        self.hi = hi
        self.lo = lo
    }

    /// Parses the form a node writes: `prefix` (`NAME-` with `--node-id`, else empty), then the
    /// 22 characters. An id with another node's prefix, or none where one is due, is no id of ours.
    public init?(text: ArraySlice<UInt8>, prefix: [UInt8]) {
        guard !prefix.isEmpty else { self.init(text: text); return }
        guard text.count == prefix.count + SessionID.textLength, text.starts(with: prefix) else { return nil }
        self.init(text: text.dropFirst(prefix.count))
    }

    /// Appends the form a node writes: `prefix`, then the 22 characters.
    public func write(to out: inout [UInt8], prefix: [UInt8]) {
        out.append(contentsOf: prefix)
        write(to: &out)
    }

    /// Appends the 22-character form.
    public func write(to out: inout [UInt8]) {
        // 128 bits as 21 full sextets plus 2 bits padded with 4 zero bits.
        for i in 0..<10 { out.append(SessionID.alphabet[Int((hi >> UInt64(58 - 6 * i)) & 63)]) }
        out.append(SessionID.alphabet[Int(((hi & 0xF) << 2) | (lo >> 62))])
        for i in 0..<10 { out.append(SessionID.alphabet[Int((lo >> UInt64(56 - 6 * i)) & 63)]) }
        out.append(SessionID.alphabet[Int((lo & 3) << 4)])
    }

    public var description: String {
        var out: [UInt8] = []
        write(to: &out)
        return String(decoding: out, as: UTF8.self)
    }
}
