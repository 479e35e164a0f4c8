/// The web client served with `--web` or `--demo`: `Web/index.html` at `/`, `Web/client.js` and
/// `Web/client.css`, plain files with no build step. SwiftPM embeds them in the binary
/// (`.embedInCode` in Package.swift generates `PackageResources.index_html`, `.client_js` and
/// `.client_css`, each a `[UInt8]`), so a deployment is still one file.
///
/// Each file's bytes and ETag are made once, at the first request; every response sends those
/// same arrays (no copy). docs/DESIGN.md ("The web client") explains the page;
/// `scripts/browser-test` drives it in headless Chromium.
struct WebAsset: Sendable {
    let body: [UInt8]
    let contentType: StaticString
    /// A strong validator: `"` + FNV-1a 64 of the bytes in hex + `"`. It changes when the files
    /// do (a new binary); `If-None-Match` with it is answered `304`.
    let etag: [UInt8]

    init(_ body: [UInt8], contentType: StaticString) {
        self.body = body
        self.contentType = contentType
        etag = WebAsset.etag(of: body)
    }

    static let page = WebAsset(PackageResources.index_html, contentType: "text/html; charset=utf-8")
    static let script = WebAsset(PackageResources.client_js, contentType: "text/javascript; charset=utf-8")
    static let style = WebAsset(PackageResources.client_css, contentType: "text/css; charset=utf-8")
    /// The API's OpenAPI 3.1 document (docs/openapi.yaml), at `/openapi.yaml` whether or not the
    /// page is served, without a token (SPEC §2 Operations). `application/yaml`: RFC 9512.
    static let openAPI = WebAsset(PackageResources.openapi_yaml, contentType: "application/yaml")

    /// Sent with the page and its two files. Nothing inline (no `'unsafe-inline'`): script and
    /// style come only from these files; `fetch()` and EventSource only to this origin (the API);
    /// the favicon is a `data:` URL; the page may not be framed (clickjacking), may not submit a
    /// form anywhere (its forms are handled by script), and may not change its base URL.
    static let contentSecurityPolicy: StaticString = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

    static func etag(of bytes: [UInt8]) -> [UInt8] {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { hash = (hash ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        let digits: StaticString = "0123456789abcdef"
        var out: [UInt8] = [UInt8(ascii: "\"")]
        for shift in stride(from: 60, through: 0, by: -4) {
            out.append(digits.utf8Start[Int((hash >> UInt64(shift)) & 0xf)])
        }
        out.append(UInt8(ascii: "\""))
        return out
    }

    /// Whether an `If-None-Match` value names `etag` (RFC 9110 §13.1.2: `*`, or a list of entity
    /// tags compared weakly, so `W/"x"` matches `"x"`).
    static func matches(ifNoneMatch value: [UInt8], etag: [UInt8]) -> Bool {
        var rest = value[...]
        while !rest.isEmpty {
            let comma = rest.firstIndex(of: UInt8(ascii: ",")) ?? rest.endIndex
            var tag = rest[rest.startIndex..<comma]
            rest = comma == rest.endIndex ? rest[comma...] : rest[rest.index(after: comma)...]
            while let c = tag.first, c == 0x20 || c == 0x09 { tag = tag.dropFirst() }
            while let c = tag.last, c == 0x20 || c == 0x09 { tag = tag.dropLast() }
            if tag.count == 1, tag.first == UInt8(ascii: "*") { return true }
            if tag.count >= 2, tag.first == UInt8(ascii: "W"), tag[tag.index(after: tag.startIndex)] == UInt8(ascii: "/") {
                tag = tag.dropFirst(2)
            }
            if tag.elementsEqual(etag) { return true }
        }
        return false
    }
}
