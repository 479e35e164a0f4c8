import XCTest
@testable import UVProxy

final class SessionIndexTests: XCTestCase {
    let target = Target(name: "t", address: try! SocketAddress(host: "127.0.0.1", port: 9))
    let table = SessionTable(settings: SessionSettings(), deadlines: .manual(), clock: { 0 }) { _ in FakeLink() }

    func session(_ id: SessionID) -> Session {
        Session(id: id, target: target, bufferSize: 1024, now: 0, table: table)
    }

    /// Random inserts and removals, many of them colliding on the low bits, against a Dictionary.
    func testMatchesADictionaryUnderCollisionsAndRemovals() {
        var index = SessionIndex()
        var model: [SessionID: Session] = [:]
        var rng = SystemRandomNumberGenerator()
        var ids: [SessionID] = []
        for step in 0..<4_000 {
            if ids.isEmpty || Int.random(in: 0..<3, using: &rng) > 0 {
                // Low bits drawn from a small set: long clusters that wrap around the table.
                let id = SessionID(hi: rng.next(), lo: UInt64.random(in: 0..<64, using: &rng) | (rng.next() << 20))
                guard model[id] == nil else { continue }
                let s = session(id)
                index.insert(s)
                model[id] = s
                ids.append(id)
            } else {
                let k = Int.random(in: 0..<ids.count, using: &rng)
                let id = ids.remove(at: k)
                index.remove(id)
                model[id] = nil
            }
            if step % 199 == 0 {
                for id in ids { XCTAssertTrue(index.find(id) === model[id], "step \(step)") }
                XCTAssertNil(index.find(SessionID.random()))
            }
            XCTAssertEqual(index.count, model.count)
        }
        XCTAssertEqual(Set(index.all.map(\.id)), Set(model.keys))
    }

    func testRemovingAMissingIDChangesNothing() {
        var index = SessionIndex()
        let a = session(SessionID.random())
        index.insert(a)
        index.remove(SessionID.random())
        XCTAssertEqual(index.count, 1)
        XCTAssertTrue(index.find(a.id) === a)
    }
}
