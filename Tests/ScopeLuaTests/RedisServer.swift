import Foundation
import Testing

/// A `redis-server` of one test's own (scripts/install-deps.sh installs it; it is never
/// the system's service): on a free loopback port and a unix socket in a fresh
/// directory, no persistence. `start()` returns once it answers PING; `stop()` ends it
/// (SIGTERM, then waits). One per test, so tests running in parallel share nothing.
final class RedisServer {
    static let serverPath = "/usr/bin/redis-server"
    static let cliPath = "/usr/bin/redis-cli"

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    let port: Int
    let directory: String
    let process: Process
    var socketPath: String { "\(directory)/redis.sock" }
    /// `redis://127.0.0.1:PORT`
    var url: String { "redis://127.0.0.1:\(port)" }
    /// `unix:///tmp/.../redis.sock`
    var unixURL: String { "unix://\(socketPath)" }

    private init(port: Int, directory: String, process: Process) {
        self.port = port
        self.directory = directory
        self.process = process
    }

    /// Starts a server. The port is one the kernel just handed out for a socket bound to
    /// port 0 and closed again; another process may take it in between, so a server that
    /// exits without answering (its log says the address is in use) is started again on
    /// another port.
    static func start() throws -> RedisServer {
        guard FileManager.default.isExecutableFile(atPath: serverPath) else {
            throw Failure(description: "\(serverPath) is missing: run scripts/install-deps.sh")
        }
        var lastLog = ""
        for _ in 1...5 {
            let directory = temporaryDirectory()
            let (fd, port) = try loopbackListener(backlog: 1)
            close(fd)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: serverPath)
            process.arguments = [
                "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--unixsocket", "\(directory)/redis.sock", "--unixsocketperm", "700",
                "--dir", directory, "--daemonize", "no", "--logfile", "",
            ]
            let logPath = "\(directory)/server.log"
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
            let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
            process.standardOutput = log
            process.standardError = log
            process.standardInput = FileHandle.nullDevice
            try runUnblocked(process)
            try? log.close()
            let server = RedisServer(port: port, directory: directory, process: process)
            let answered = waitUntil {
                !process.isRunning || ((try? server.cli("PING")) == "PONG"
                    && FileManager.default.fileExists(atPath: server.socketPath))
            }
            if answered, process.isRunning { return server }
            server.stop()
            lastLog = read(logPath) ?? ""
            guard lastLog.contains("Address already in use") else { break }
        }
        throw Failure(description: "redis-server did not start:\n\(lastLog)")
    }

    /// Starts `process` with SIGTERM and SIGINT unblocked. A child inherits the signal
    /// mask of the thread that starts it, and the test runner's worker threads block
    /// nearly every signal: a server started from one would never see its SIGTERM (redis
    /// leaves its mask as it found it) and `stop()` would wait forever.
    private static func runUnblocked(_ process: Process) throws {
        var stops = sigset_t()
        sigemptyset(&stops)
        sigaddset(&stops, SIGTERM)
        sigaddset(&stops, SIGINT)
        var saved = sigset_t()
        pthread_sigmask(SIG_UNBLOCK, &stops, &saved)
        defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
        try process.run()
    }

    /// Ends the server (SIGTERM) and waits for it.
    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
        }
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// `redis-cli` against this server: its output without the last newline (a reply's
    /// text as redis-cli prints it without a terminal).
    func cli(_ arguments: String...) throws -> String {
        let result = try runProcess(Self.cliPath, ["-h", "127.0.0.1", "-p", String(port)] + arguments, timeout: 20)
        guard result.status == 0 else {
            throw Failure(description: "redis-cli \(arguments.joined(separator: " ")): \(result.stderr)")
        }
        var out = result.stdout
        if out.hasSuffix("\n") { out.removeLast() }
        return out
    }

    /// The clients connected other than the redis-cli asking.
    func clients() throws -> [String] {
        try cli("CLIENT", "LIST").split(separator: "\n").map(String.init).filter { !$0.contains("cmd=client|list") }
    }
}

/// How many descriptors of this process are TCP sockets connected to `port` on the
/// loopback: the sockets in /proc/net/tcp whose remote port it is, matched by inode with
/// the `socket:[inode]` links of /proc/self/fd. Tests running in parallel cannot disturb
/// it (each test's server has a port of its own). (`openDescriptors(under:)` cannot see
/// sockets: their links name no path.)
func openSockets(toPort port: Int) -> Int {
    // Read to the end: a /proc file reports size 0, and String(contentsOfFile:) stops
    // after its first page.
    guard let file = FileHandle(forReadingAtPath: "/proc/net/tcp") else { return -1 }
    defer { try? file.close() }
    let table = String(decoding: file.readDataToEndOfFile(), as: UTF8.self)
    var inodes = Set<String>()
    for line in table.split(separator: "\n").dropFirst() {
        let fields = line.split(separator: " ")
        guard fields.count > 9, let colon = fields[2].lastIndex(of: ":"),
              Int(fields[2][fields[2].index(after: colon)...], radix: 16) == port, fields[9] != "0" else { continue }
        inodes.insert(String(fields[9]))
    }
    let fdDirectory = "/proc/self/fd"
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: fdDirectory)) ?? []
    return fds.filter { fd in
        guard let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(fdDirectory)/\(fd)"),
              link.hasPrefix("socket:["), link.hasSuffix("]") else { return false }
        return inodes.contains(String(link.dropFirst(8).dropLast()))
    }.count
}

/// A TCP socket listening on 127.0.0.1 at a port the kernel chose, with `backlog`; never
/// accepting anything unless its owner does. Returns the descriptor and the port.
func loopbackListener(backlog: Int32) throws -> (Int32, Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw RedisServer.Failure(description: "socket: \(String(cString: strerror(errno)))") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p -> Bool in
            bind(fd, p, length) == 0 && listen(fd, backlog) == 0 && getsockname(fd, p, &length) == 0
        }
    }
    guard bound else {
        let reason = String(cString: strerror(errno))
        close(fd)
        throw RedisServer.Failure(description: "bind/listen on 127.0.0.1: \(reason)")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// A socket connecting to 127.0.0.1:`port` (non-blocking: the connect may still be under
/// way when this returns), or -1.
func loopbackConnect(port: Int, blocking: Bool) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return -1 }
    if !blocking { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(clamping: port).bigEndian
    _ = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    return fd
}
