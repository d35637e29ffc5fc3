import Foundation
import Testing

/// A minimal HTTP/1.1 client over a loopback socket, for tests of `scopelua serve`: one
/// request per connection (`Connection: close`), the whole response read. Raw sockets, so
/// that a test can also send half a request and hang up.
struct HTTPResponse {
    var status: Int
    var headers: [String: String]
    var body: String
}

enum HTTPClient {
    /// A connected socket to 127.0.0.1:`port`, or nil.
    static func connect(_ port: Int) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var timeout = timeval(tv_sec: 30, tv_usec: 0)  // a hung server fails the test, not the suite
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard ok == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    static func send(_ fd: Int32, _ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            sent += n
        }
    }

    /// `method path` with `body`; nil when the connection failed or broke.
    static func request(_ port: Int, _ method: String, _ path: String, body: String = "") -> HTTPResponse? {
        guard let fd = connect(port) else { return nil }
        defer { close(fd) }
        let bytes = Array(body.utf8)
        let head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: \(bytes.count)\r\n\r\n"
        send(fd, Array(head.utf8) + bytes)
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            data += buffer[..<n]
        }
        return parse(data)
    }

    static func post(_ port: Int, _ path: String, _ body: String) -> HTTPResponse? {
        request(port, "POST", path, body: body)
    }

    static func get(_ port: Int, _ path: String) -> HTTPResponse? {
        request(port, "GET", path)
    }

    /// Status, headers (lowercased names) and body (chunked transfer decoded).
    static func parse(_ data: [UInt8]) -> HTTPResponse? {
        let text = String(decoding: data, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { return nil }
        let lines = text[..<split.lowerBound].components(separatedBy: "\r\n")
        guard let statusLine = lines.first, statusLine.hasPrefix("HTTP/1.1 "),
              let status = Int(statusLine.dropFirst(9).prefix(3)) else { return nil }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = String(text[split.upperBound...])
        if headers["transfer-encoding"] == "chunked" {
            var decoded = ""
            var rest = Substring(body)
            while let eol = rest.range(of: "\r\n"), let size = Int(rest[..<eol.lowerBound], radix: 16), size > 0 {
                let start = eol.upperBound
                let end = rest.utf8.index(start, offsetBy: size, limitedBy: rest.endIndex) ?? rest.endIndex
                decoded += rest[start..<end]
                rest = rest[end...].dropFirst(2)
            }
            body = decoded
        }
        return HTTPResponse(status: status, headers: headers, body: body)
    }
}

/// A `scopelua serve` process on a free loopback port, stopped (SIGKILL if still alive)
/// when the test is done with it.
final class ServeProcess {
    let process = Process()
    let directory: String
    private(set) var port = 0
    private let errPipe = Pipe()
    private let outPipe = Pipe()
    private let stderrBox = Box()

    final class Box: @unchecked Sendable {
        let lock = NSLock()
        var text = ""
    }

    /// Starts `scopelua serve job.lua --listen 127.0.0.1:0 ARGS` in `directory` and waits
    /// for its "listening on" line (the readiness marker), then for /readyz. `command`
    /// replaces `serve --listen 127.0.0.1:0` (`run --metrics-listen 127.0.0.1:0`).
    init(_ arguments: [String], in directory: String, environment: [String: String] = [:],
         command: [String] = ["serve", "--listen", "127.0.0.1:0"],
         sourceLocation: SourceLocation = #_sourceLocation) throws {
        self.directory = directory
        process.executableURL = URL(fileURLWithPath: scopeluaPath)
        process.arguments = command + arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardError = errPipe
        process.standardOutput = outPipe
        let box = stderrBox
        errPipe.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            box.lock.lock()
            box.text += String(decoding: data, as: UTF8.self)
            box.lock.unlock()
        }
        try process.run()
        let found = waitUntil(seconds: 30) {
            let marker = "listening on http://127.0.0.1:"
            guard let at = stderr.range(of: marker), let port = Int(stderr[at.upperBound...].prefix(while: \.isNumber)) else {
                return !process.isRunning
            }
            self.port = port
            return true
        }
        #expect(found && port > 0, "serve did not start: \(stderr)", sourceLocation: sourceLocation)
        _ = waitUntil(seconds: 30) { HTTPClient.get(port, "/readyz")?.status == 200 || !process.isRunning }
    }

    var stderr: String {
        stderrBox.lock.lock()
        defer { stderrBox.lock.unlock() }
        return stderrBox.text
    }

    /// Sends `signal` and waits for the exit (at most 30 s); the exit status.
    func stop(_ signal: Int32 = SIGTERM) -> Int32 {
        kill(process.processIdentifier, signal)
        let ended = waitUntil(seconds: 30) { !process.isRunning }
        if !ended { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        errPipe.fileHandleForReading.readabilityHandler = nil
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}
