#if canImport(Glibc)
import Glibc
#endif

/// Request parameters from the query string and, for form posts, the body (SPEC §2:
/// "query string or application/x-www-form-urlencoded body"; the query wins).
///
/// The query and the form are each scanned once, when the value is made: the positions of the
/// names the API uses are kept in two SIMD vectors, so a lookup is a switch and a load, with no
/// allocation and no dictionary. Values are decoded only when used. Other names fall back to
/// a scan.
public struct Parameters {
    let query: ArraySlice<UInt8>
    let form: ArraySlice<UInt8>?
    /// Lanes 0–7: start index of each known name's value, lanes 8–15: end index; -1 if absent.
    private var queryIndex = SIMD16<Int32>(repeating: -1)
    private var formIndex = SIMD16<Int32>(repeating: -1)

    public init(query: ArraySlice<UInt8>, form: ArraySlice<UInt8>? = nil) {
        self.query = query
        self.form = form
        queryIndex = Parameters.index(query)
        if let form { formIndex = Parameters.index(form) }
    }

    /// The slot of a name the API looks up on every request.
    @inline(__always)
    static func slot(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int? {
        switch n {
        case 2: return p[0] == UInt8(ascii: "i") && p[1] == UInt8(ascii: "d") ? 0 : nil
        case 3:
            if memcmp(p, "cmd", 3) == 0 { return 1 }
            if memcmp(p, "max", 3) == 0 { return 2 }
            if memcmp(p, "seq", 3) == 0 { return 3 }
            if memcmp(p, "raw", 3) == 0 { return 4 }
            return nil
        case 4: return memcmp(p, "wait", 4) == 0 ? 5 : nil
        case 5: return memcmp(p, "since", 5) == 0 ? 6 : nil
        case 6: return memcmp(p, "target", 6) == 0 ? 7 : nil
        default: return nil
        }
    }

    /// Calls `body(name, value)` with each `name=value` pair, as index ranges into `bytes`,
    /// until it returns false.
    @inline(__always)
    private static func forEachPair(_ bytes: ArraySlice<UInt8>,
                                    _ body: (UnsafePointer<UInt8>, Range<Int>, Range<Int>) -> Bool) {
        let base = bytes.startIndex
        bytes.withUnsafeBufferPointer { buf in
            guard let p = buf.baseAddress else { return }
            let n = buf.count
            var i = 0
            while i < n {
                var j = i
                while j < n && p[j] != UInt8(ascii: "&") { j += 1 }
                var eq = i
                while eq < j && p[eq] != UInt8(ascii: "=") { eq += 1 }
                let value = eq < j ? (eq + 1)..<j : j..<j
                guard body(p + i, (base + i)..<(base + eq), (base + value.lowerBound)..<(base + value.upperBound)) else { return }
                i = j + 1
            }
        }
    }

    private static func index(_ bytes: ArraySlice<UInt8>) -> SIMD16<Int32> {
        var index = SIMD16<Int32>(repeating: -1)
        forEachPair(bytes) { name, nameRange, value in
            if let k = slot(name, nameRange.count), index[k] < 0 {  // the first occurrence wins
                index[k] = Int32(value.lowerBound)
                index[k + 8] = Int32(value.upperBound)
            }
            return true
        }
        return index
    }

    private static func lookup(_ name: StaticString, _ bytes: ArraySlice<UInt8>,
                               _ index: SIMD16<Int32>) -> ArraySlice<UInt8>? {
        if let k = slot(name.utf8Start, name.utf8CodeUnitCount) {
            let start = index[k]
            return start < 0 ? nil : bytes[Int(start)..<Int(index[k + 8])]
        }
        return find(name, in: bytes)
    }

    /// The raw (still percent-encoded) value of `name`, or nil if absent.
    public func raw(_ name: StaticString) -> ArraySlice<UInt8>? {
        if let v = rawQuery(name) { return v }
        return rawForm(name)
    }

    /// The value from the query string only.
    public func rawQuery(_ name: StaticString) -> ArraySlice<UInt8>? { Parameters.lookup(name, query, queryIndex) }

    /// The value from the form body only.
    public func rawForm(_ name: StaticString) -> ArraySlice<UInt8>? {
        guard let form else { return nil }
        return Parameters.lookup(name, form, formIndex)
    }

    public func has(_ name: StaticString) -> Bool { raw(name) != nil }

    /// The decoded value of `name`.
    public func bytes(_ name: StaticString) -> [UInt8]? { raw(name).map(Parameters.decode) }

    public func string(_ name: StaticString) -> String? { bytes(name).map { String(decoding: $0, as: UTF8.self) } }

    /// A form value of `name` that the query's overrides (nil without a form: every GET). It is
    /// still checked: a malformed parameter is 400 also where another wins over it (SPEC §2).
    @inline(__always)
    private func shadowed(_ name: StaticString) -> ArraySlice<UInt8>? {
        guard form != nil, rawQuery(name) != nil else { return nil }
        return rawForm(name)
    }

    /// A whole number from `minimum` to 2^63 - 1: nil if absent, `.failure` if not digits, too
    /// large or below `minimum`.
    public func unsigned(_ name: StaticString, atLeast minimum: UInt64 = 0) -> Result<UInt64, ParameterError>? {
        guard let raw = raw(name) else { return nil }
        guard let n = Parameters.wholeNumber(raw), let s = shadowed(name).map(Parameters.wholeNumber) ?? n else {
            return .failure(ParameterError("\(name) must be a non-negative integer below 2^63"))
        }
        guard n >= minimum, s >= minimum else { return .failure(ParameterError("\(name) must be at least \(minimum)")) }
        return .success(n)
    }

    /// Digits need no decoding; percent-encoded ones (`%31`, which RFC 3986 makes the same as
    /// `1`) are decoded only when the plain form fails. At most 2^63 - 1: what clients hold
    /// offsets in (int64, the OpenAPI document's format).
    @inline(__always)
    static func wholeNumber(_ raw: ArraySlice<UInt8>) -> UInt64? {
        guard let n = parseUnsigned(raw) ?? decodedOnly(raw, parseUnsigned), n <= UInt64(Int64.max) else { return nil }
        return n
    }

    /// `parse` of `raw` percent-decoded, when it holds a `%` (not a hot path: the plain form failed).
    static func decodedOnly<T>(_ raw: ArraySlice<UInt8>, _ parse: (ArraySlice<UInt8>) -> T?) -> T? {
        guard raw.contains(UInt8(ascii: "%")) else { return nil }
        return parse(decode(raw)[...])
    }

    /// Seconds with optional decimals ("2", "0.5") or an exponent ("1e-3"), as milliseconds.
    public func milliseconds(_ name: StaticString) -> Result<UInt64, ParameterError>? {
        guard let raw = raw(name) else { return nil }
        guard let ms = Parameters.seconds(raw), shadowed(name).map({ Parameters.seconds($0) != nil }) ?? true else {
            return .failure(ParameterError("\(name) must be a non-negative number of seconds"))
        }
        return .success(ms)
    }

    @inline(__always)
    static func seconds(_ raw: ArraySlice<UInt8>) -> UInt64? {
        // parseScientificSeconds decodes what it reads: decoded here only for plain seconds (once).
        parseSeconds(raw) ?? parseScientificSeconds(raw) ?? decodedOnly(raw, parseSeconds)
    }

    /// A flag: "1", "true", "yes", "on" (or present with no value) are true; anything else false.
    public func flag(_ name: StaticString) -> Bool {
        guard let raw = raw(name) else { return false }
        return Parameters.boolean(raw) ?? false
    }

    /// A boolean: nil if absent; "1", "true", "yes", "on" (any case) or no value are true, "0",
    /// "false", "no", "off" false, anything else `.failure` (a malformed parameter).
    public func boolean(_ name: StaticString) -> Result<Bool, ParameterError>? {
        guard let raw = raw(name) else { return nil }
        guard let b = Parameters.boolean(raw), shadowed(name).map({ Parameters.boolean($0) != nil }) ?? true else {
            return .failure(ParameterError("\(name) must be 1, true, yes or on, or 0, false, no or off"))
        }
        return .success(b)
    }

    static func boolean(_ raw: ArraySlice<UInt8>) -> Bool? {
        let v = Parameters.decode(raw)[...]
        if v.isEmpty || v.equals("1") || v.equalsIgnoringCase("true") || v.equalsIgnoringCase("yes") || v.equalsIgnoringCase("on") {
            return true
        }
        if v.equals("0") || v.equalsIgnoringCase("false") || v.equalsIgnoringCase("no") || v.equalsIgnoringCase("off") {
            return false
        }
        return nil
    }

    /// Scans `name=value&…` pairs for a name that has no slot.
    static func find(_ name: StaticString, in bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8>? {
        var found: Range<Int>?
        forEachPair(bytes) { p, nameRange, value in
            if nameRange.count == name.utf8CodeUnitCount && memcmp(p, name.utf8Start, nameRange.count) == 0 {
                found = value
                return false
            }
            return true
        }
        return found.map { bytes[$0] }
    }

    /// Percent-decoding with `+` as space (form encoding). Bad escapes are kept as they are.
    public static func decode(_ raw: ArraySlice<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(raw.count)
        var i = raw.startIndex
        while i < raw.endIndex {
            let c = raw[i]
            if c == UInt8(ascii: "+") {
                out.append(0x20)
            } else if c == UInt8(ascii: "%"), i + 2 < raw.endIndex,
                      let h = hex(raw[i + 1]), let l = hex(raw[i + 2]) {
                out.append(h << 4 | l)
                i += 3
                continue
            } else {
                out.append(c)
            }
            i += 1
        }
        return out
    }

    static func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    static func parseUnsigned(_ s: ArraySlice<UInt8>) -> UInt64? {
        guard !s.isEmpty else { return nil }  // leading zeros may make it long; overflow is checked per digit
        var n: UInt64 = 0
        for c in s {
            guard c >= 48 && c <= 57 else { return nil }
            let (m, o1) = n.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(UInt64(c - 48))
            if o1 || o2 { return nil }
            n = a
        }
        return n
    }

    /// "12", "0.5", "1.250" → milliseconds (digits past the third decimal are ignored;
    /// whole parts past 10⁹ seconds count as 10⁹).
    static func parseSeconds(_ s: ArraySlice<UInt8>) -> UInt64? {
        let dot = s.firstIndex(of: UInt8(ascii: "."))
        let whole = s[s.startIndex..<(dot ?? s.endIndex)]
        let fraction = dot.map { s[($0 + 1)...] } ?? []
        if whole.isEmpty && fraction.isEmpty { return nil }
        // Any whole number is well formed; huge ones saturate (the caller caps at max-wait).
        var seconds: UInt64 = 0
        for c in whole {
            guard c >= 48 && c <= 57 else { return nil }
            seconds = Swift.min(seconds * 10 + UInt64(c - 48), 1_000_000_000)
        }
        var ms: UInt64 = 0
        var scale: UInt64 = 100
        for c in fraction {
            guard c >= 48 && c <= 57 else { return nil }
            ms += UInt64(c - 48) * scale
            scale /= 10
        }
        return seconds * 1000 + ms
    }
}

extension Parameters {
    /// Seconds with an exponent (`1e-05`, `2.5e+3`: how JSON, JavaScript and Python write some
    /// numbers) → milliseconds, saturating as `parseSeconds` does; nil for anything else (no
    /// sign but the exponent's, no `inf`, `nan` or hex). Tried only when `parseSeconds` fails,
    /// so the plain numbers every client sends cost nothing more.
    static func parseScientificSeconds(_ raw: ArraySlice<UInt8>) -> UInt64? {
        // `+` is a space in form encoding, but no number has a space: either spelling is `+`.
        let text = decode(raw).map { $0 == 0x20 ? UInt8(ascii: "+") : $0 }
        guard let e = text.firstIndex(where: { $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") }) else { return nil }
        var exponent = text[(e + 1)...]
        if let sign = exponent.first, sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") { exponent = exponent.dropFirst() }
        guard parseSeconds(text[..<e]) != nil, !exponent.isEmpty, exponent.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              let seconds = Double(String(decoding: text, as: UTF8.self)), seconds.isFinite else { return nil }
        return UInt64((Swift.min(seconds, 1_000_000_000) * 1000).rounded(.down))
    }
}

public struct ParameterError: Error, Equatable {
    public let reason: String
    init(_ reason: String) { self.reason = reason }
}
