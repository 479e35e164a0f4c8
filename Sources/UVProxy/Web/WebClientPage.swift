/// The web client served at `/` with `--web` or `--demo`: one self-contained HTML file (no external
/// scripts or fonts), built into the binary so that a deployment is one file.
enum WebClientPage {
    static let bytes: [UInt8] = Array(html.utf8)

    static let html = #"""
<!doctype html>
<html><head><meta charset="utf-8"><title>uvproxyd</title></head>
<body><p>The web client is being written.</p></body></html>
"""#
}
