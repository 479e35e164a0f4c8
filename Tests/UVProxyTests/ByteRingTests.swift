import XCTest
@testable import UVProxy

final class ByteRingTests: XCTestCase {
    func append(_ ring: inout ByteRing, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { ring.append($0) }
    }

    func testStartsEmptyWithNoStorage() {
        let ring = ByteRing(limit: 1024)
        XCTAssertEqual(ring.capacity, 0)
        XCTAssertEqual(ring.room, 1024)
        XCTAssertEqual([ring.base, ring.acked, ring.end], [0, 0, 0])
    }

    func testOffsetsAdvanceAndReadsReturnBytesFromCursor() {
        var ring = ByteRing(limit: 1024)
        append(&ring, Array("hello ".utf8))
        append(&ring, Array("world".utf8))
        XCTAssertEqual(ring.end, 11)
        XCTAssertEqual(ring.bytes(from: 0), Array("hello world".utf8))
        XCTAssertEqual(ring.bytes(from: 6), Array("world".utf8))
        XCTAssertEqual(ring.bytes(from: 6, max: 2), Array("wo".utf8))
        XCTAssertEqual(ring.bytes(from: 11), [])
        XCTAssertEqual(ring.check(12), .beyondEnd)
    }

    func testAcknowledgeNeverMovesBack() {
        var ring = ByteRing(limit: 1024)
        append(&ring, [UInt8](repeating: 1, count: 100))
        ring.acknowledge(upTo: 60)
        ring.acknowledge(upTo: 20)
        XCTAssertEqual(ring.acked, 60)
        XCTAssertEqual(ring.unacknowledged, 40)
        XCTAssertEqual(ring.historyCount, 60)
    }

    func testRoomReachesZeroAtLimitOfUnacknowledgedBytes() {
        var ring = ByteRing(limit: 1000)
        append(&ring, [UInt8](repeating: 7, count: 1000))
        XCTAssertEqual(ring.room, 0, "backpressure threshold: unacknowledged bytes == buffer-size")
        ring.acknowledge(upTo: 300)
        XCTAssertEqual(ring.room, 300)
    }

    func testEvictsOnlyHistoryOldestFirst() {
        var ring = ByteRing(limit: 1000)
        let first = (0..<1000).map { UInt8($0 % 251) }
        append(&ring, first)
        ring.acknowledge(upTo: 400)
        append(&ring, [UInt8](repeating: 9, count: 250))
        // 250 history bytes were evicted, oldest first; no unacknowledged byte was.
        XCTAssertEqual(ring.base, 250)
        XCTAssertEqual(ring.check(249), .evicted)
        XCTAssertEqual(ring.bytes(from: 250, max: 150), Array(first[250..<400]))
        XCTAssertEqual(ring.bytes(from: 400, max: 600), Array(first[400..<1000]))
        XCTAssertEqual(ring.count, 1000)
    }

    func testHistoryIsKeptWhileThereIsRoom() {
        var ring = ByteRing(limit: 1000)
        append(&ring, [UInt8](repeating: 1, count: 300))
        ring.acknowledge(upTo: 300)
        append(&ring, [UInt8](repeating: 2, count: 300))
        XCTAssertEqual(ring.base, 0)
        XCTAssertEqual(ring.bytes(from: 0, max: 1), [1])
    }

    func testWrapAroundKeepsBytesExact() {
        var ring = ByteRing(limit: 512)
        var expected: [UInt8] = []
        var next: UInt8 = 0
        var cursor: UInt64 = 0
        // Many small appends and acks force the circle to wrap repeatedly.
        for round in 0..<200 {
            let n = 1 + (round * 37) % 200
            guard n <= ring.room else { ring.acknowledge(upTo: ring.end); cursor = ring.end; continue }
            let chunk = (0..<n).map { _ -> UInt8 in next &+= 1; return next }
            append(&ring, chunk)
            expected += chunk
            let got = ring.bytes(from: cursor)
            XCTAssertEqual(got, Array(expected[Int(cursor)...]), "round \(round)")
            if round % 3 == 0 { cursor = ring.end; ring.acknowledge(upTo: cursor) }
        }
        XCTAssertLessThanOrEqual(ring.capacity, 512)
    }

    func testGrowsOnDemandInPowersOfTwo() {
        var ring = ByteRing(limit: 1 << 20)
        append(&ring, [1, 2, 3])
        XCTAssertEqual(ring.capacity, ByteRing.minimumCapacity)
        append(&ring, [UInt8](repeating: 4, count: 5000))
        XCTAssertEqual(ring.capacity, 8192)
        XCTAssertEqual(ring.bytes(from: 0, max: 4), [1, 2, 3, 4])
    }

    func testGrowthAfterWrapPreservesOrder() {
        var ring = ByteRing(limit: 4096)
        append(&ring, [UInt8](repeating: 0, count: 200))
        ring.acknowledge(upTo: 200)
        append(&ring, [UInt8](repeating: 0, count: 50))  // 250 of 256: next append wraps
        let marker = (0..<100).map { UInt8($0) }
        append(&ring, marker)                             // wraps, then grows
        XCTAssertEqual(ring.bytes(from: 250), marker)
    }
}
