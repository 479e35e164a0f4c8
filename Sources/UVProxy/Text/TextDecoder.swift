/// PLACEHOLDER until the telnet branch lands: decodes a target's bytes into JSON string contents.
public struct TextDecoder {
    public let charset: Charset
    public init(charset: Charset) { self.charset = charset }
    public var pendingByteCount: Int { 0 }
    public mutating func decode(_ bytes: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        for b in bytes {
            switch b {
            case 0x22: out.append(0x5C); out.append(0x22)
            case 0x5C: out.append(0x5C); out.append(0x5C)
            case 0x0A: out.append(0x5C); out.append(0x6E)
            case 0x0D: out.append(0x5C); out.append(0x72)
            case 0..<0x20:
                let hex: [UInt8] = Array("0123456789abcdef".utf8)
                out.append(contentsOf: [0x5C, 0x75, 0x30, 0x30, hex[Int(b >> 4)], hex[Int(b & 15)]])
            default: out.append(b)
            }
        }
    }
    public mutating func finish(into out: inout [UInt8]) {}
    public mutating func reset() {}
}
