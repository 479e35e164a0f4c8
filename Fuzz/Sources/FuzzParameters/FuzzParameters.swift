import FuzzSupport
@testable import UVProxy

// Request-targets and form bodies: Router.split, Router.route, Parameters (lookups by slot and
// by scan, percent-decoding, numbers, seconds, flags) and LineEnding (docs/RELIABILITY.md).
//
// Input: a request-target, then optionally "\n" and a form body. Every answer is compared with
// a plain reference written here from SPEC §2's words (`name=value` pairs split on `&`, the
// first occurrence wins, the query wins over the form, `+` is a space, bad `%` escapes stay).

/// The names the API looks up (each has a slot) and some that fall back to a scan.
let names: [StaticString] = ["id", "cmd", "max", "seq", "raw", "wait", "since", "target",
                             "token", "charset", "i", "ids", "cm", "waits", ""]

func referenceLookup(_ name: StaticString, _ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8>? {
    let want = Array(UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
    var i = bytes.startIndex
    while i < bytes.endIndex {
        let end = bytes[i...].firstIndex(of: UInt8(ascii: "&")) ?? bytes.endIndex
        let pair = bytes[i..<end]
        let eq = pair.firstIndex(of: UInt8(ascii: "=")) ?? end
        if Array(bytes[i..<eq]) == want { return eq < end ? bytes[(eq + 1)..<end] : bytes[end..<end] }
        i = end + 1
    }
    return nil
}

func referenceDecode(_ raw: ArraySlice<UInt8>) -> [UInt8] {
    let r = Array(raw)
    var out: [UInt8] = []
    var i = 0
    while i < r.count {
        if r[i] == UInt8(ascii: "%"), i + 2 < r.count, let v = UInt8(String(decoding: r[(i + 1)...(i + 2)], as: UTF8.self), radix: 16),
           r[i + 1] != UInt8(ascii: "+"), r[i + 1] != UInt8(ascii: "-") {
            out.append(v)
            i += 3
        } else {
            out.append(r[i] == UInt8(ascii: "+") ? 0x20 : r[i])
            i += 1
        }
    }
    return out
}

func isDigits(_ s: ArraySlice<UInt8>) -> Bool { s.allSatisfy { $0 >= 48 && $0 <= 57 } }

/// Percent-encoded digits are digits (RFC 3986 §2.1: `%31` is `1`), so numbers are judged decoded.
func referenceUnsigned(_ raw: ArraySlice<UInt8>) -> UInt64? {
    let s = referenceDecode(raw)[...]
    guard !s.isEmpty, isDigits(s) else { return nil }
    return UInt64(String(decoding: s, as: UTF8.self)).flatMap { $0 <= UInt64(Int64.max) ? $0 : nil }  // below 2^63
}

func referenceSeconds(_ s: ArraySlice<UInt8>) -> UInt64? {
    plainSeconds(referenceDecode(s)[...]) ?? exponentSeconds(s)
}

/// `<plain seconds>e[+-]<digits>` (`+` also as a space or `%2B`), through Double.
func exponentSeconds(_ s: ArraySlice<UInt8>) -> UInt64? {
    let text = String(String(decoding: referenceDecode(s), as: UTF8.self).map { $0 == " " ? "+" : $0 })
    let parts = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "e" || $0 == "E" })
    guard parts.count == 2, plainSeconds(ArraySlice(parts[0].utf8)) != nil else { return nil }
    let digits = parts[1].hasPrefix("+") || parts[1].hasPrefix("-") ? parts[1].dropFirst() : parts[1][...]
    guard !digits.isEmpty, isDigits(ArraySlice(digits.utf8)), let value = Double(text), value.isFinite else { return nil }
    return UInt64((min(value, 1e9) * 1000).rounded(.down))
}

func plainSeconds(_ s: ArraySlice<UInt8>) -> UInt64? {
    let parts = s.split(separator: UInt8(ascii: "."), maxSplits: 1, omittingEmptySubsequences: false)
    let whole = parts[0]
    let fraction = parts.count > 1 ? parts[1] : []
    guard !(whole.isEmpty && fraction.isEmpty), isDigits(whole), isDigits(fraction) else { return nil }
    let significant = whole.drop { $0 == 48 }
    let seconds: UInt64 = significant.count > 10 ? 1_000_000_000
        : min(UInt64(String(decoding: significant, as: UTF8.self)) ?? 0, 1_000_000_000)
    var ms: UInt64 = 0
    for (k, c) in fraction.prefix(3).enumerated() { ms += UInt64(c - 48) * [100, 10, 1][k] }
    return seconds * 1000 + ms
}

func check(_ params: Parameters, query: ArraySlice<UInt8>, form: ArraySlice<UInt8>?) {
    for name in names {
        let q = referenceLookup(name, query)
        let f = form.flatMap { referenceLookup(name, $0) }
        let expected = q ?? f
        fuzzCheck(params.rawQuery(name).map(Array.init) == q.map(Array.init), "rawQuery(\(name)) wrong")
        fuzzCheck(params.rawForm(name).map(Array.init) == f.map(Array.init), "rawForm(\(name)) wrong")
        fuzzCheck(params.raw(name).map(Array.init) == expected.map(Array.init), "raw(\(name)) wrong")
        fuzzCheck(params.has(name) == (expected != nil), "has(\(name)) wrong")
        guard let expected else { continue }
        let decoded = referenceDecode(expected)
        fuzzCheck(params.bytes(name) == decoded, "decode(\(Array(expected))) = \(params.bytes(name)!), expected \(decoded)")
        fuzzCheck(decoded.count <= expected.count, "decoding grew the value")
        // A form value the query's overrides must be well formed too (a malformed parameter is 400).
        let shadow = q != nil ? f : nil
        func unlessShadowBad<T>(_ value: T?, _ valid: (ArraySlice<UInt8>) -> Bool) -> T? {
            guard let value else { return nil }
            if let shadow, !valid(shadow) { return nil }
            return value
        }
        let wantUnsigned = unlessShadowBad(referenceUnsigned(expected)) { referenceUnsigned($0) != nil }
        switch params.unsigned(name) {
        case .success(let n)?: fuzzCheck(wantUnsigned == n, "unsigned(\(Array(expected))) = \(n)")
        case .failure?: fuzzCheck(wantUnsigned == nil, "unsigned(\(Array(expected))) refused")
        case nil: fuzzCheck(false, "unsigned of a present name is nil")
        }
        let wantSeconds = unlessShadowBad(referenceSeconds(expected)) { referenceSeconds($0) != nil }
        switch params.milliseconds(name) {
        case .success(let ms)?: fuzzCheck(wantSeconds == ms, "milliseconds(\(Array(expected))) = \(ms)")
        case .failure?: fuzzCheck(wantSeconds == nil, "milliseconds(\(Array(expected))) refused")
        case nil: fuzzCheck(false, "milliseconds of a present name is nil")
        }
        let text = String(decoding: decoded, as: UTF8.self).lowercased()
        let flag = decoded.isEmpty || ["1", "true", "yes", "on"].contains(text) && decoded.count == text.utf8.count
        fuzzCheck(params.flag(name) == flag, "flag(\(Array(expected))) = \(params.flag(name))")
        func referenceBoolean(_ raw: ArraySlice<UInt8>) -> Bool? {
            let d = referenceDecode(raw)
            let t = String(decoding: d, as: UTF8.self).lowercased()
            guard d.count == t.utf8.count else { return nil }
            return d.isEmpty || ["1", "true", "yes", "on"].contains(t) ? true : ["0", "false", "no", "off"].contains(t) ? false : nil
        }
        let wantBoolean = unlessShadowBad(referenceBoolean(expected)) { referenceBoolean($0) != nil }
        fuzzCheck(referenceBoolean(expected) ?? false == flag, "the two boolean references disagree")
        switch params.boolean(name) {
        case .success(let b)?: fuzzCheck(wantBoolean == b, "boolean(\(Array(expected))) = \(b)")
        case .failure?: fuzzCheck(wantBoolean == nil, "boolean(\(Array(expected))) refused")
        case nil: fuzzCheck(false, "boolean of a present name is nil")
        }
        let (keep, crlf) = LineEnding.terminate(decoded)
        if decoded.last == 0x0A && decoded.dropLast().last == 0x0D {
            fuzzCheck(keep == decoded.count && !crlf, "CRLF-terminated command changed")
        } else if decoded.last == 0x0A {
            fuzzCheck(keep == decoded.count - 1 && crlf, "LF-terminated command not turned to CRLF")
        } else {
            fuzzCheck(keep == decoded.count && crlf, "unterminated command not given CRLF")
        }
    }
}

func checkRoute(_ target: [UInt8]) {
    let (path, query) = Router.split(target)
    let noFragment = target.split(separator: UInt8(ascii: "#"), maxSplits: 1, omittingEmptySubsequences: false)[0]
    let hasQuery = noFragment.contains(UInt8(ascii: "?"))
    fuzzCheck(Array(path) + (hasQuery ? [UInt8(ascii: "?")] + Array(query) : []) == Array(noFragment), "split lost bytes")
    fuzzCheck(!path.contains(UInt8(ascii: "?")), "path holds '?'")
    // Reference router: segments of the path (one trailing slash dropped).
    var p = Array(path)
    if p.count > 1, p.last == UInt8(ascii: "/") { p.removeLast() }
    let text = String(decoding: p, as: UTF8.self)
    let expected: String?
    let idOK = { (s: Substring) in
        (1...64).contains(s.utf8.count) && s.utf8.allSatisfy { c in
            (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 45 || c == 95
        }
    }
    let segments = text.split(separator: "/", omittingEmptySubsequences: false)
    switch text {
    case "/": expected = "webPage"
    case "/client.js": expected = "webScript"
    case "/client.css": expected = "webStyle"
    case "/mud": expected = "mud"
    case "/healthz": expected = "healthz"
    case "/metrics": expected = "metrics"
    case "/sessions": expected = "sessions"
    case "/ws": expected = "webSocketCreate"
    case "/openapi.yaml": expected = "openAPI"
    default:
        if segments.count >= 3, segments.count <= 5, segments[0].isEmpty, segments[1] == "sessions", idOK(segments[2]) {
            let id = SessionID(text: Array(segments[2].utf8)).map { "\($0)" } ?? "nil"
            let tail = segments.dropFirst(3).joined(separator: "/")
            switch tail {
            case "" where segments.count == 3: expected = "session \(id)"
            case "input", "events", "gmcp", "ws": expected = "\(tail) \(id)"
            case "gmcp/state": expected = "gmcpState \(id)"
            default: expected = nil
            }
        } else {
            expected = nil
        }
    }
    let actual: String?
    switch Router.route(path: path) {
    case .webPage?: actual = "webPage"
    case .webScript?: actual = "webScript"
    case .webStyle?: actual = "webStyle"
    case .mud?: actual = "mud"
    case .healthz?: actual = "healthz"
    case .metrics?: actual = "metrics"
    case .sessions?: actual = "sessions"
    case .session(let id)?: actual = "session \(id.map { "\($0)" } ?? "nil")"
    case .input(let id)?: actual = "input \(id.map { "\($0)" } ?? "nil")"
    case .events(let id)?: actual = "events \(id.map { "\($0)" } ?? "nil")"
    case .gmcp(let id)?: actual = "gmcp \(id.map { "\($0)" } ?? "nil")"
    case .gmcpState(let id)?: actual = "gmcpState \(id.map { "\($0)" } ?? "nil")"
    case .webSocket(let id)?: actual = "ws \(id.map { "\($0)" } ?? "nil")"
    case .webSocketCreate?: actual = "webSocketCreate"
    case .openAPI?: actual = "openAPI"
    case nil: actual = nil
    }
    // Non-UTF-8 paths cannot match a route: the String reference may not see them the same way.
    if String(validating: p, as: UTF8.self) != nil || actual != nil {
        fuzzCheck(actual == expected, "route(\(text)) = \(actual ?? "nil"), expected \(expected ?? "nil")")
    }
    if case .session(let id?)? = Router.route(path: path) {
        var out: [UInt8] = []
        id.write(to: &out)
        fuzzCheck(out == Array(segments[2].utf8), "a session id does not write back as it was read")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzParameters(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Array(fuzzInput(data, size))
    let newline = input.firstIndex(of: 0x0A)
    let target = Array(input[..<(newline ?? input.endIndex)])
    // The form as a slice that does not start at 0, as a request body's is not.
    let form: ArraySlice<UInt8>? = newline.map { input[($0 + 1)...] }
    checkRoute(target)
    let (_, query) = Router.split(target)
    check(Parameters(query: query, form: form), query: query, form: form)
    return 0
}
