import Foundation
import XCTest
@testable import UVProxy

/// The web client's page and files (`--web`): `/`, `/client.js`, `/client.css`, embedded in the
/// binary (Package.swift `.embedInCode`), served with their types, the Content-Security-Policy,
/// `nosniff`, `Cache-Control: no-store` (SPEC §2: every response) and an ETag (docs/DESIGN.md, "The web client").
final class IntegrationWebClientTests: XCTestCase {
    private let files: [(path: String, type: String, bytes: [UInt8])] = [
        ("/", "text/html; charset=utf-8", PackageResources.index_html),
        ("/client.js", "text/javascript; charset=utf-8", PackageResources.client_js),
        ("/client.css", "text/css; charset=utf-8", PackageResources.client_css),
    ]

    func testPageAndFilesHaveTheirTypesCSPNosniffAndETag() throws {
        let d = try startDaemon { $0.web = true }
        let c = try d.client()
        var etags: Set<String> = []
        for (path, type, bytes) in files {
            XCTAssertFalse(bytes.isEmpty, path)
            let r = try c.request("GET", path)
            XCTAssertEqual(r.status, 200, path)
            XCTAssertEqual(r.header("Content-Type"), type, path)
            XCTAssertEqual(r.body, bytes, path)
            XCTAssertEqual(r.header("X-Content-Type-Options"), "nosniff", path)
            let csp = try XCTUnwrap(r.header("Content-Security-Policy"), path)
            XCTAssertEqual(csp, "\(WebAsset.contentSecurityPolicy)")
            XCTAssertFalse(csp.contains("unsafe"), csp)
            for directive in ["frame-ancestors 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"] {
                XCTAssertTrue(csp.contains(directive), "\(directive) in \(csp)")
            }
            XCTAssertEqual(r.header("Cache-Control"), "no-store", path)
            let etag = try XCTUnwrap(r.header("ETag"), path)
            XCTAssertTrue(etag.hasPrefix("\"") && etag.hasSuffix("\"") && etag.count == 18, etag)
            etags.insert(etag)
            XCTAssertEqual(try c.request("GET", path).header("ETag"), etag, "the same bytes, the same tag")

            // Revalidation: 304 with the same headers and no body; the connection goes on.
            let same = try c.request("GET", path, headers: ["If-None-Match": etag])
            XCTAssertEqual(same.status, 304, path)
            XCTAssertTrue(same.body.isEmpty, path)
            XCTAssertNil(same.header("Content-Length"), path)
            XCTAssertEqual(same.header("ETag"), etag, path)
            XCTAssertEqual(same.header("Cache-Control"), "no-store", path)
            XCTAssertEqual(same.header("X-Content-Type-Options"), "nosniff", path)
            for value in ["\"0000000000000000\", W/\(etag)", "*", " \(etag) "] {
                XCTAssertEqual(try c.request("GET", path, headers: ["If-None-Match": value]).status, 304, value)
            }
            for value in ["\"0000000000000000\"", String(etag.dropLast()) + "0\"", "W/", ","] {
                let other = try c.request("GET", path, headers: ["If-None-Match": String(value)])
                XCTAssertEqual(other.status, 200, "\(path) If-None-Match: \(value)")
                XCTAssertEqual(other.body, bytes, path)
            }

            // HEAD: the GET's head without its body (the next response on the connection parses).
            try c.send("HEAD", path)
            let head = try c.readResponse(head: true)
            XCTAssertEqual(head.status, 200, path)
            XCTAssertEqual(head.header("Content-Length"), "\(bytes.count)", path)
            XCTAssertEqual(head.header("Content-Type"), type, path)
            XCTAssertEqual(head.header("ETag"), etag, path)

            // Other methods: 405 with Allow, as every route.
            let post = try c.call("POST", path, body: "x")
            XCTAssertEqual(post.status, 405, path)
            XCTAssertEqual(post.header("Allow"), "GET, HEAD", path)
            XCTAssertEqual(try c.call("DELETE", path).status, 405, path)
        }
        XCTAssertEqual(etags.count, 3, "each file its own tag")
        XCTAssertEqual(try c.call("GET", "/healthz").text, "ok", "nothing was left on the connection")
    }

    func testWithoutWebTheyAre404AndWithATokenTheyArePublic() throws {
        let off = try startDaemon { $0.web = false }
        let c = try off.client()
        for (path, _, _) in files {
            XCTAssertEqual(try c.call("GET", path).status, 404, path)
            XCTAssertEqual(try c.call("POST", path).status, 404, "no such path before the method: \(path)")
        }

        let on = try startDaemon {
            $0.web = true
            $0.token = "s3cret"
        }
        let t = try on.client()
        for (path, _, bytes) in files {
            let r = try t.request("GET", path)
            XCTAssertEqual(r.status, 200, "\(path) needs no token")
            XCTAssertEqual(r.body, bytes)
        }
        XCTAssertEqual(try t.call("GET", "/metrics").status, 401, "the API still needs it")
    }

    /// The API's OpenAPI document (SPEC §2 Operations, docs/openapi.yaml): at `/openapi.yaml`
    /// with or without `--web`, never needing the token (as `/healthz`), `application/yaml`, with
    /// the ETag, `no-store` and `nosniff` of the page's files; `GET` and `HEAD` only.
    func testOpenAPIDocumentIsServedWithoutTokenAsYAML() throws {
        let bytes = PackageResources.openapi_yaml
        XCTAssertTrue(String(decoding: bytes.prefix(20), as: UTF8.self).hasPrefix("openapi: 3.1"))
        for web in [false, true] {
            let d = try startDaemon {
                $0.web = web
                $0.token = "s3cret"
            }
            let c = try d.client()
            let r = try c.request("GET", "/openapi.yaml")
            XCTAssertEqual(r.status, 200, "no token needed (web: \(web))")
            XCTAssertEqual(r.header("Content-Type"), "application/yaml")
            XCTAssertEqual(r.body, bytes)
            XCTAssertEqual(r.header("Cache-Control"), "no-store")
            XCTAssertEqual(r.header("X-Content-Type-Options"), "nosniff")
            let etag = try XCTUnwrap(r.header("ETag"))
            XCTAssertEqual(try c.request("GET", "/openapi.yaml", headers: ["If-None-Match": etag]).status, 304)
            try c.send("HEAD", "/openapi.yaml")
            let head = try c.readResponse(head: true)
            XCTAssertEqual(head.status, 200)
            XCTAssertEqual(head.header("Content-Length"), "\(bytes.count)")
            let post = try c.call("POST", "/openapi.yaml")
            XCTAssertEqual(post.status, 405)
            XCTAssertEqual(post.header("Allow"), "GET, HEAD")
            XCTAssertEqual(try c.call("GET", "/metrics").status, 401, "the API still needs the token")
        }
    }

    /// A HEAD answered with an error (here a 404) has no body either: the connection stays in step.
    func testHeadOfAnErrorSendsNoBody() throws {
        let d = try startDaemon { $0.web = true }
        let c = try d.client()
        try c.send("HEAD", "/nope")
        let r = try c.readResponse(head: true)
        XCTAssertEqual(r.status, 404)
        XCTAssertEqual(r.header("Cache-Control"), "no-store")
        try c.send("HEAD", "/sessions")
        XCTAssertEqual(try c.readResponse(head: true).status, 405)
        try c.send("HEAD", "/healthz")
        let head = try c.readResponse(head: true)
        XCTAssertEqual(head.status, 200, "HEAD /healthz, for uptime checkers")
        XCTAssertEqual(head.header("Content-Length"), "2")
        try c.send("HEAD", "/metrics")
        XCTAssertEqual(try c.readResponse(head: true).status, 200)
        XCTAssertEqual(try c.call("GET", "/healthz").text, "ok", "the connection is still in step")
    }

    /// The CSP allows no inline script or style: the page must have none.
    func testPageHasNoInlineScriptStyleOrHandler() throws {
        let page = String(decoding: PackageResources.index_html, as: UTF8.self)
        XCTAssertTrue(page.contains("<script src=\"/client.js\" defer></script>"))
        XCTAssertTrue(page.contains("<link rel=\"stylesheet\" href=\"/client.css\">"))
        XCTAssertEqual(page.components(separatedBy: "<script").count, 2, "one script element, the file")
        XCTAssertFalse(page.contains("<style"), "no style element")
        XCTAssertNil(page.range(of: #"\sstyle\s*="#, options: .regularExpression), "no style attribute")
        XCTAssertNil(page.range(of: #"\son[a-z]+\s*="#, options: [.regularExpression, .caseInsensitive]),
                     "no inline event handler")
        XCTAssertNil(page.range(of: "javascript:", options: .caseInsensitive))
        let script = String(decoding: PackageResources.client_js, as: UTF8.self)
        XCTAssertNil(script.range(of: #"setAttribute\(\s*["']style|\.innerHTML|eval\(|new Function"#,
                                  options: .regularExpression),
                     "no style attribute set by script, no markup from strings, no eval")
    }

    func testIfNoneMatchLists() {
        let tag = WebAsset.etag(of: Array("x".utf8))
        XCTAssertEqual(tag.count, 18)
        XCTAssertNotEqual(tag, WebAsset.etag(of: Array("y".utf8)))
        let m = { (v: String) in WebAsset.matches(ifNoneMatch: Array(v.utf8), etag: tag) }
        let t = String(decoding: tag, as: UTF8.self)
        XCTAssertTrue(m(t))
        XCTAssertTrue(m("W/\(t)"))
        XCTAssertTrue(m("\"a\",\(t)"))
        XCTAssertTrue(m("\"a\" ,\t\(t)\t, \"b\""))
        XCTAssertTrue(m("*"))
        XCTAssertFalse(m(""))
        XCTAssertFalse(m("\"a\""))
        XCTAssertFalse(m(String(t.dropFirst())))
        XCTAssertFalse(m("W/"))
        XCTAssertFalse(m("**"))
    }
}
