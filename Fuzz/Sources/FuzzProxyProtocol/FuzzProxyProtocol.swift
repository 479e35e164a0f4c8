import FuzzSupport
@testable import UVProxy
#if canImport(Glibc)
import Glibc
#endif

// The PROXY protocol header parser and encoder (docs/RELIABILITY.md, "Fuzzing").
//
// Input: byte 0 seeds the cuts and picks `maxLength` (the parser's default, what the daemon
// uses, when its top bit is clear, else 16 + 4 × its low seven bits); the rest is what a
// client connection starts with (scripts/fuzz runs this target with a larger -max_len).
// Invariants:
// - the outcome (header or reason) and where the header ends do not depend on how the bytes
//   are cut (whole, one byte at a time, random pieces with empty ones);
// - no call says more bytes were header than it was given; a v1 header is at most 107 bytes, a
//   v2 one at most `maxLength`;
// - once done or refused, a feed answers the same (`.done` with `consumed: 0`);
// - a small reference written from the spec (v2 byte by byte; v1 by splitting the line at
//   spaces and reading addresses with glibc's inet_pton) agrees: a complete header it accepts
//   is read the same, one it refuses is refused, an incomplete one is not read; for v2, where
//   every check is at a fixed byte, "needs more" agrees exactly too;
// - a `.proxied` result written again with `ProxyProtocol.header`, v1 and v2, reads back the
//   same; its address text reads back to the same bytes and, for IPv6, is inet_ntop's (but for
//   the deprecated IPv4-compatible addresses, which glibc writes dotted);
// - never a crash.

typealias Outcome = ProxyHeaderParser.Outcome
typealias Header = ProxyProtocol.Header

/// An outcome with the header's end counted from the start of the stream.
struct Result: Equatable {
    var outcome: Outcome
    var headerLength: Int?
}

func parse(_ bytes: UnsafeRawBufferPointer, maxLength: Int,
           cut: (UnsafeRawBufferPointer, (UnsafeRawBufferPointer) -> Void) -> Void) -> Result {
    var parser = ProxyHeaderParser(maxLength: maxLength)
    var result = Result(outcome: .needMore, headerLength: nil)
    var before = 0
    cut(bytes) { piece in
        let outcome = parser.feed(piece)
        switch (result.outcome, outcome) {
        case (.needMore, .needMore):
            before += piece.count
        case (.needMore, .done(let h, let consumed)):
            fuzzCheck(consumed >= 0 && consumed <= piece.count, "consumed \(consumed) of \(piece.count)")
            fuzzCheck(consumed > 0, "a header ended in a read that gave none of it")
            result = Result(outcome: .done(h, consumed: 0), headerLength: before + consumed)
        case (.needMore, .invalid(let why)):
            fuzzCheck(!why.isEmpty, "no reason")
            result.outcome = outcome
        case (.done(let h, _), _):
            fuzzCheck(outcome == .done(h, consumed: 0), "after done: \(outcome)")
        case (.invalid, _):
            fuzzCheck(outcome == result.outcome, "after invalid: \(outcome), was \(result.outcome)")
        }
    }
    return result
}

func whole(_ b: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) { body(b) }
func bytewise(_ b: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) {
    for i in 0..<b.count { body(UnsafeRawBufferPointer(rebasing: b[i..<(i + 1)])) }
}

// MARK: Reference

enum Reference: Equatable {
    case incomplete
    case invalid
    case done(Header, Int)
}

let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

func referenceV2(_ b: [UInt8], maxLength: Int) -> Reference {
    let n = b.count
    for k in 0..<min(12, n) where b[k] != signature[k] { return .invalid }
    guard n > 12 else { return .incomplete }
    let command = b[12] & 0x0F
    guard b[12] >> 4 == 2, command <= 1 else { return .invalid }
    guard n > 13 else { return .incomplete }
    let family = b[13]
    let blocks: [UInt8: Int] = [0x00: 0, 0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216]
    if command == 1 && blocks[family] == nil { return .invalid }
    guard n > 15 else { return .incomplete }
    let length = Int(b[14]) * 256 + Int(b[15])
    guard 16 + length <= maxLength else { return .invalid }
    if command == 1 && length < blocks[family]! { return .invalid }
    guard n >= 16 + length else { return .incomplete }
    guard command == 1 && (family == 0x11 || family == 0x21) else { return .done(.local, 16 + length) }
    let size = family == 0x11 ? 4 : 16
    let ports = 16 + 2 * size
    let source = ProxyProtocol.Endpoint(address: Array(b[16..<(16 + size)]),
                                        port: UInt16(b[ports]) << 8 | UInt16(b[ports + 1]))
    let destination = ProxyProtocol.Endpoint(address: Array(b[(16 + size)..<(16 + 2 * size)]),
                                             port: UInt16(b[ports + 2]) << 8 | UInt16(b[ports + 3]))
    return .done(.proxied(source: source, destination: destination), 16 + length)
}

func inetPton(_ field: ArraySlice<UInt8>, v6: Bool) -> [UInt8]? {
    guard !field.contains(0) else { return nil }
    let text = Array(field) + [0]
    var out = [UInt8](repeating: 0, count: v6 ? 16 : 4)
    let ok = text.withUnsafeBufferPointer { t in
        t.withMemoryRebound(to: CChar.self) { c in
            out.withUnsafeMutableBytes { inet_pton(v6 ? AF_INET6 : AF_INET, c.baseAddress, $0.baseAddress) }
        }
    }
    return ok == 1 ? out : nil
}

func referencePort(_ field: ArraySlice<UInt8>) -> UInt16? {
    guard (1...5).contains(field.count), field.allSatisfy({ $0 >= 48 && $0 <= 57 }),
          field.count == 1 || field.first != 48 else { return nil }
    let v = field.reduce(0) { $0 * 10 + Int($1 - 48) }
    return v <= 65535 ? UInt16(v) : nil
}

func referenceV1Line(_ line: ArraySlice<UInt8>) -> Header? {
    let proxy = Array("PROXY ".utf8), unknown = Array("UNKNOWN".utf8)
    guard line.starts(with: proxy) else { return nil }
    let rest = line.dropFirst(6)
    if rest.elementsEqual(unknown) || rest.starts(with: unknown + [32]) { return .local }
    let parts = rest.split(separator: 32, omittingEmptySubsequences: false)
    guard parts.count == 5 else { return nil }
    let v6: Bool
    if parts[0].elementsEqual("TCP4".utf8) { v6 = false } else if parts[0].elementsEqual("TCP6".utf8) { v6 = true } else { return nil }
    guard let s = inetPton(parts[1], v6: v6), let d = inetPton(parts[2], v6: v6),
          let sp = referencePort(parts[3]), let dp = referencePort(parts[4]) else { return nil }
    return .proxied(source: ProxyProtocol.Endpoint(address: s, port: sp), destination: ProxyProtocol.Endpoint(address: d, port: dp))
}

func referenceV1(_ b: [UInt8]) -> Reference {
    let n = b.count
    let proxy = Array("PROXY ".utf8)
    for k in 0..<min(6, n) where b[k] != proxy[k] { return .invalid }
    var k = 0
    while k < n && k < 107 {
        if b[k] == 10 { return .invalid }
        if b[k] == 13 {
            guard k + 1 < 107 else { return .invalid }
            guard k + 1 < n else { return .incomplete }
            guard b[k + 1] == 10 else { return .invalid }
            guard let header = referenceV1Line(b[0..<k]) else { return .invalid }
            return .done(header, k + 2)
        }
        k += 1
    }
    return n >= 107 ? .invalid : .incomplete
}

func reference(_ b: [UInt8], maxLength: Int) -> Reference {
    guard let first = b.first else { return .incomplete }
    if first == 0x0D { return referenceV2(b, maxLength: maxLength) }
    if first == UInt8(ascii: "P") { return referenceV1(b) }
    return .invalid
}

// MARK: Round trips

func ntop6(_ a: [UInt8]) -> String {
    var buf = [CChar](repeating: 0, count: 64)
    _ = a.withUnsafeBytes { inet_ntop(AF_INET6, $0.baseAddress, &buf, 64) }
    return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func checkText(_ e: ProxyProtocol.Endpoint) {
    let text = e.addressText
    fuzzCheck(ProxyProtocol.Endpoint(text, port: e.port) == e, "\(e.address) → \(text) does not read back")
    fuzzCheck(e.description.hasSuffix(":\(e.port)"), "description \(e.description)")
    if !e.isIPv4 {
        let compatible = e.address[0..<12].allSatisfy { $0 == 0 } && (e.address[12] != 0 || e.address[13] != 0)
        fuzzCheck(compatible || text == ntop6(e.address), "\(text) is not inet_ntop's \(ntop6(e.address))")
    }
}

func checkRoundTrip(_ source: ProxyProtocol.Endpoint, _ destination: ProxyProtocol.Endpoint) {
    checkText(source)
    checkText(destination)
    for version in [ProxyProtocol.Version.v1, .v2] {
        let header = ProxyProtocol.header(version, source: source, destination: destination)
        var parser = ProxyHeaderParser()
        let outcome = (header + [0x47]).withUnsafeBytes { parser.feed($0) }
        let mixed = source.isIPv4 != destination.isIPv4
        let expected = Header.proxied(source: mixed ? ProxyProtocol.Endpoint(address: source.ipv6Bytes, port: source.port) : source,
                                      destination: mixed ? ProxyProtocol.Endpoint(address: destination.ipv6Bytes, port: destination.port) : destination)
        fuzzCheck(outcome == .done(expected, consumed: header.count),
                  "\(source) \(destination) as \(version) reads back as \(outcome)")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzProxyProtocol(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    guard input.count >= 1 else { return 0 }
    let seed = input[0]
    let maxLength = seed & 0x80 == 0 ? ProxyHeaderParser().maxLength : 16 + 4 * Int(seed & 0x7F)
    let payload = UnsafeRawBufferPointer(rebasing: input[1...])

    let a = parse(payload, maxLength: maxLength, cut: whole)
    let b = parse(payload, maxLength: maxLength, cut: bytewise)
    var splitter = Splitter(seed: seed, length: payload.count)
    let c = parse(payload, maxLength: maxLength) { bytes, body in forEachPiece(bytes, &splitter, body) }
    fuzzCheck(a == b && a == c, "the outcome depends on the cuts: \(a) / \(b) / \(c)")

    let bytes = Array(payload)
    switch reference(bytes, maxLength: maxLength) {
    case .done(let header, let length):
        fuzzCheck(a == Result(outcome: .done(header, consumed: 0), headerLength: length),
                  "reference reads \(header) in \(length) bytes, parser \(a)")
    case .invalid:
        if case .invalid = a.outcome {} else { fuzzCheck(false, "reference refuses, parser \(a)") }
    case .incomplete:
        if case .done = a.outcome { fuzzCheck(false, "reference wants more, parser \(a)") }
        if bytes.first == 0x0D { fuzzCheck(a.outcome == .needMore, "v2: reference wants more, parser \(a)") }
    }

    if case .done(let header, _) = a.outcome, let length = a.headerLength {
        fuzzCheck(length <= bytes.count, "header of \(length) bytes in \(bytes.count)")
        fuzzCheck(bytes[0] == 0x0D ? length <= maxLength : length <= ProxyProtocol.v1MaxLength, "header of \(length) bytes")
        if case .proxied(let s, let d) = header {
            fuzzCheck(s.isIPv4 == d.isIPv4, "mixed families read: \(s) \(d)")
            checkRoundTrip(s, d)
        }
    }

    // The encoder on arbitrary endpoints: 16 + 16 address bytes and 4 port bytes from the input,
    // each address IPv4 (its first 4 bytes) or IPv6 as the seed's low bits say.
    if bytes.count >= 36 {
        let port = { (k: Int) in UInt16(bytes[k]) << 8 | UInt16(bytes[k + 1]) }
        let s = ProxyProtocol.Endpoint(address: seed & 1 == 0 ? Array(bytes[0..<4]) : Array(bytes[0..<16]), port: port(32))
        let d = ProxyProtocol.Endpoint(address: seed & 2 == 0 ? Array(bytes[16..<20]) : Array(bytes[16..<32]), port: port(34))
        checkRoundTrip(s, d)
    }
    return 0
}
