import XCTest
@testable import UVProxy

/// The DNS rebinding check (SPEC §5) as a pure value.
final class HostCheckTests: XCTestCase {
    private func allows(_ check: HostCheck, _ host: String) -> Bool { check.allows(Array(host.utf8)) }

    func testLocalhostAndLoopbackWithOrWithoutPort() {
        let check = HostCheck(allowedHosts: [])
        for host in ["localhost", "LocalHost", "localhost:8181", "localhost.", "localhost.:80", "127.0.0.1",
                     "127.0.0.1:8181", "127.1.2.3", "127.255.255.255:1", "[::1]", "[::1]:8181", "", "localhost:",
                     "localhost \t"] {
            XCTAssertTrue(allows(check, host), host.debugDescription)
        }
    }

    /// `::1` however it is written (RFC 4291 §2.2): only `[::1]` passed (black-box probe).
    func testTheIPv6LoopbackInAnySpelling() {
        let check = HostCheck(allowedHosts: [])
        for host in ["[0:0:0:0:0:0:0:1]", "[0::1]:8181", "[::0:1]", "[::01]", "[0000:0000:0000:0000:0000:0000:0000:0001]:80"] {
            XCTAssertTrue(allows(check, host), host)
        }
        for host in ["[::0:2]", "[1::1]", "[::1%lo]", "[::1::]", "[0:0:0:0:0:0:0:0:1]", "[::g1]"] {
            XCTAssertFalse(allows(check, host), host)
        }
    }

    func testOtherNamesAreRefused() {
        let check = HostCheck(allowedHosts: [])
        for host in ["evil.example", "evil.example:8181", "localhost.evil.example", "evil-localhost", "mylocalhost",
                     "128.0.0.1", "10.0.0.1", "0.0.0.0", "127.0.0", "127.0.0.1.2", "127.0.0.256", "127.0.0.1x",
                     "1270.0.0.1", "127..0.1", "[::2]", "[::1", "[::1]x", "[::1]:80x", "localhost:80:80",
                     "localhost:123456", "localhost:abc", ":8181", "[::ffff:127.0.0.1]", "2130706433", "0x7f.0.0.1",
                     "localhost..", "xn--localhost"] {
            XCTAssertFalse(allows(check, host), host.debugDescription)
        }
    }

    func testAllowedHostsCaseInsensitiveWithAnyPort() {
        let check = HostCheck(allowedHosts: ["Mud.Example.org", "[fd00::1]", "192.168.1.5"])
        for host in ["mud.example.org", "MUD.EXAMPLE.ORG:8181", "mud.example.org.", "[fd00::1]:80", "[FD00::1]",
                     "192.168.1.5:8181"] {
            XCTAssertTrue(allows(check, host), host)
        }
        for host in ["example.org", "www.mud.example.org", "mud.example.org.evil", "192.168.1.6", "[fd00::2]"] {
            XCTAssertFalse(allows(check, host), host)
        }
    }

    func testValidNames() {
        for name in ["mud.example.org", "my_host", "Host-1", "[fd00::1]", "10.0.0.1"] {
            XCTAssertTrue(HostCheck.isValidName(name), name)
        }
        for name in ["", "a b", "mud.example.org:8181", "a,b", "a/b", "[]", "[zz::1]", "é.example"] {
            XCTAssertFalse(HostCheck.isValidName(name), name)
        }
    }

    func testLoopbackListenAddresses() throws {
        for text in ["127.0.0.1:0", "127.9.8.7:1", "[::1]:0", "[::ffff:127.0.0.1]:0"] {
            XCTAssertTrue(try SocketAddress(parsing: text).isLoopback, text)
        }
        for text in ["0.0.0.0:0", "10.0.0.1:0", "[::]:0", "[::2]:0", "[::ffff:10.0.0.1]:0", "128.0.0.1:0"] {
            XCTAssertFalse(try SocketAddress(parsing: text).isLoopback, text)
        }
    }

    func testAValidHostValueIsURIHostAndPort() {
        for good in ["", "localhost", "localhost:8080", "mud.example.org", "127.0.0.1", "[::1]", "[::1]:80",
                     "[::ffff:1.2.3.4]", "a-b_c~d.e", "xn--bcher-kva.example", "%41b", "h:", "name.  "] {
            XCTAssertTrue(HostCheck.isValidHostValue(Array(good.utf8)), good.debugDescription)
        }
        for bad in ["local host", "evil@localhost", "localhost:80x", "[::1", "[::1]x", "a/b", "[]", "a:1:2", "é.example",
                    "a\\b", "a?b", "a#b"] {
            XCTAssertFalse(HostCheck.isValidHostValue(Array(bad.utf8)), bad.debugDescription)
        }
    }
}
