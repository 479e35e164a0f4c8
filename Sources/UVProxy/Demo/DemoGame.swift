/// A tiny line-based game server that runs on the proxy's own loop (`--demo`), so the proxy can
/// be tried with no MUD at hand. Not a MUD engine: greet, echo, `say`, `who`, `flood`, `quit`.
public final class DemoGame {
    private let loop: EventLoop
    private var listener: TCPListener?
    private var players: [ObjectIdentifier: DemoPlayer] = [:]
    private var nextNumber = 1

    /// The 64-byte pattern `flood` repeats; byte i of a flood is `floodPattern[i % 64]`
    /// (a flood asked for while another runs continues it).
    public static let floodPattern = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789\r\n".utf8)
    /// Largest flood one command may ask for.
    public static let maxFlood = 256 * 1024 * 1024

    public init(loop: EventLoop) {
        self.loop = loop
    }

    /// Listens (port 0 picks a free one) and returns the bound address.
    public func start(on address: SocketAddress) throws -> SocketAddress {
        let listener = try TCPListener(loop: loop, address: address) { [unowned self] stream in
            let player = DemoPlayer(stream: stream, game: self, number: self.nextNumber)
            self.nextNumber += 1
            self.players[ObjectIdentifier(player)] = player
            player.greet()
        }
        self.listener = listener
        return listener.localAddress
    }

    public func stop() {
        listener?.close()
        listener = nil
        for player in Array(players.values) { player.disconnect() }
    }

    fileprivate func left(_ player: DemoPlayer) { players[ObjectIdentifier(player)] = nil }

    fileprivate func broadcast(_ text: String) {
        // A player who reads nothing misses what others say past 1 MiB owed, as a MUD drops
        // output for a stuck connection, instead of growing the game without bound.
        for player in players.values where player.owed < DemoPlayer.maxOwed { player.send(text) }
    }

    fileprivate var names: [String] { players.values.map(\.name).sorted() }
}

private final class DemoPlayer: TCPStreamDelegate {
    let stream: TCPStream
    unowned let game: DemoGame
    let name: String
    private var line: [UInt8] = []
    private var floodLeft = 0
    private var floodPosition = 0
    private var gone = false
    /// Past this owed to a player, its commands are not read until it reads (the rule the proxy
    /// keeps with targets: a client that does not read cannot make us buffer without bound).
    static let readPauseOwed = 64 * 1024
    static let maxOwed = 1 << 20
    var owed: Int { stream.queuedWriteBytes }

    init(stream: TCPStream, game: DemoGame, number: Int) {
        self.stream = stream
        self.game = game
        self.name = "player\(number)"
        stream.delegate = self
        stream.startReading()
    }

    func greet() {
        send("\u{1b}[1;32mWelcome to the uvproxyd demo game!\u{1b}[0m You are \u{1b}[1;33m\(name)\u{1b}[0m.\r\n"
             + "Commands: \u{1b}[36msay <text>\u{1b}[0m, \u{1b}[36mwho\u{1b}[0m, \u{1b}[36mflood <bytes>\u{1b}[0m, \u{1b}[36mquit\u{1b}[0m. Anything else is echoed.\r\n")
    }

    func send(_ text: String) {
        guard !gone else { return }
        var bytes = Array(text.utf8)
        bytes.withUnsafeMutableBytes { _ = stream.write(UnsafeRawBufferPointer($0)) }
    }

    func disconnect() {
        guard !gone else { return }
        gone = true
        stream.close()
        game.left(self)
    }

    func stream(_ stream: TCPStream, didRead bytes: UnsafeRawBufferPointer) {
        defer { if !gone, owed > DemoPlayer.readPauseOwed { stream.stopReading() } }
        for byte in bytes {
            if byte == 0x0A {
                if line.last == 0x0D { line.removeLast() }
                let command = String(decoding: line, as: UTF8.self)
                line.removeAll(keepingCapacity: true)
                run(command)
                if gone { return }
            } else if line.count < 4096 {
                line.append(byte)
            }
        }
    }

    func stream(_ stream: TCPStream, didEnd error: Int32) { disconnect() }

    func streamDidDrainWrites(_ stream: TCPStream) {
        continueFlood()
        if !gone, owed <= DemoPlayer.readPauseOwed { stream.startReading() }
    }

    private func run(_ command: String) {
        let parts = command.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        let verb = parts.first.map { $0.lowercased() } ?? ""
        let rest = parts.count > 1 ? String(parts[1]) : ""
        switch verb {
        case "say":
            game.broadcast("\u{1b}[1;35m\(name) says:\u{1b}[0m \(rest)\r\n")
        case "who":
            send("Players online: \(game.names.joined(separator: ", "))\r\n")
        case "flood":
            guard let n = Int(rest), n >= 0, n <= DemoGame.maxFlood else {
                send("usage: flood <bytes> (at most \(DemoGame.maxFlood))\r\n")
                return
            }
            if floodLeft == 0 { floodPosition = 0 }  // a new flood starts the pattern again
            floodLeft += n
            continueFlood()
        case "quit":
            send("Goodbye.\r\n")
            gone = true
            stream.shutdown()
            game.left(self)
            stream.close()
        default:
            send("echo: \(command)\r\n")
        }
    }

    /// Writes the flood in 64 KiB pieces as the connection drains, never holding it all.
    private func continueFlood() {
        let pattern = DemoGame.floodPattern
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while floodLeft > 0, !gone, stream.queuedWriteBytes < 256 * 1024 {
            let n = min(floodLeft, chunk.count)
            for i in 0..<n { chunk[i] = pattern[(floodPosition + i) & 63] }
            floodPosition = (floodPosition + n) & 63
            floodLeft -= n
            chunk.withUnsafeBytes { _ = stream.write(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
    }
}
