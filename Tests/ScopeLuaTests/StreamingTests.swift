import Foundation
import Testing
@testable import ScopeLua

/// A `scopelua` child whose stdin the test writes and whose stdout and stderr it reads as
/// they come (without blocking, from the test's own thread), to wait for output lines
/// and notes instead of sleeping.
final class StreamingChild {
    let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private let errors = Pipe()
    private var out: [UInt8] = []
    private var err: [UInt8] = []
    private var outEnded = false
    private var errEnded = false

    init(_ arguments: [String], directory: String) throws {
        process.executableURL = URL(fileURLWithPath: scopeluaPath)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        for fd in [output.fileHandleForReading.fileDescriptor, errors.fileHandleForReading.fileDescriptor] {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
    }

    var pid: pid_t { process.processIdentifier }

    func send(_ text: String) { input.fileHandleForWriting.write(Data(text.utf8)) }
    func closeInput() { try? input.fileHandleForWriting.close() }

    private static func drain(_ fd: Int32, into bytes: inout [UInt8], ended: inout Bool) {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while !ended {
            let n = read(fd, &buffer, buffer.count)
            if n > 0 {
                bytes += buffer[..<n]
            } else {
                if n == 0 { ended = true }
                return
            }
        }
    }

    /// Everything the child wrote to stdout so far (raw bytes: a test of whole lines
    /// looks at the last one).
    var stdoutBytes: [UInt8] {
        Self.drain(output.fileHandleForReading.fileDescriptor, into: &out, ended: &outEnded)
        return out
    }

    var stdout: String { String(decoding: stdoutBytes, as: UTF8.self) }

    var stderr: String {
        Self.drain(errors.fileHandleForReading.fileDescriptor, into: &err, ended: &errEnded)
        return String(decoding: err, as: UTF8.self)
    }

    /// Waits for the child to exit (killing it after `seconds`: a broken stop must not
    /// hang the suite) and returns its status (nil if it had to be killed) and the rest
    /// of its stderr.
    func finish(seconds: Double = 30) -> (status: Int32?, stderr: String) {
        let exited = waitUntil(seconds: seconds) { !process.isRunning }
        if !exited {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
        _ = waitUntil(seconds: 5) { _ = stderr; return errEnded }
        process.waitUntilExit()
        return (exited ? process.terminationStatus : nil, stderr)
    }

    deinit {
        if process.isRunning { kill(pid, SIGKILL) }
    }
}

/// Output latency (issue 11, "Following and streaming"): an event that left the
/// pipeline reaches the output's reader promptly, also while the input is idle, and in
/// whole lines.
@Suite(.timeLimit(.minutes(1))) struct OutputLatencyTests {
    static let script = """
        stage "s" {
          on_error = "dead_letter",
          process = function(ctx, e) if e.fail then error("asked to fail") end; return e end,
        }
        pipeline "p" { "s" }
        """

    /// `--input - --output -`: one event in, its output line out through the pipe while
    /// stdin stays open (stdio used to hold it until the input ended).
    @Test func anOutputLineReachesAPipeWhileTheInputIsIdle() throws {
        let dir = temporaryDirectory()
        write(Self.script, to: "p.lua", in: dir)
        let child = try StreamingChild(["run", "p.lua", "--input", "-", "--output", "-"], directory: dir)
        child.send("{\"id\":1}\n")
        #expect(waitUntil(seconds: 20) { child.stdout.contains("\n") }, "stdout: \(child.stdout) stderr: \(child.stderr)")
        #expect(child.stdout == "{\"id\":1}\n")
        // And the next one, after a pause with nothing to read.
        child.send("{\"id\":2}\n")
        #expect(waitUntil(seconds: 20) { child.stdout.split(separator: "\n").count == 2 })
        #expect(child.process.isRunning)
        child.closeInput()
        let (status, stderr) = child.finish()
        #expect(status == 0, "\(stderr)")
        #expect(child.stdout == "{\"id\":1}\n{\"id\":2}\n")
    }

    /// The same for an output file and the dead-letter file: both readable, whole, while
    /// the input is idle.
    @Test func anOutputFileAndTheDeadLetterFileAreWrittenWhileTheInputIsIdle() throws {
        let dir = temporaryDirectory()
        write(Self.script, to: "p.lua", in: dir)
        let child = try StreamingChild(["run", "p.lua", "--input", "-", "--output", "out.jsonl",
                                        "--dead-letter", "dead.jsonl"], directory: dir)
        child.send("{\"id\":1}\n{\"fail\":true}\n")
        #expect(waitUntil(seconds: 20) { read("\(dir)/out.jsonl") == "{\"id\":1}\n" },
                "\(read("\(dir)/out.jsonl") ?? "nothing") \(child.stderr)")
        #expect(waitUntil(seconds: 20) { (read("\(dir)/dead.jsonl") ?? "").hasSuffix("}\n") })
        #expect((read("\(dir)/dead.jsonl") ?? "").contains("asked to fail"))
        #expect(child.process.isRunning)
        child.closeInput()
        let (status, stderr) = child.finish()
        #expect(status == 0, "\(stderr)")
    }

    /// While events flow, the output is flushed on a short timer: lines reach the reader
    /// long before the input ends, although the input never goes idle (the reader holds
    /// a thousand events read at once, and each takes 20 ms).
    @Test func whileEventsFlowTheOutputIsFlushedOnATimer() throws {
        let dir = temporaryDirectory()
        write("""
            stage "slow" { process = function(ctx, e) local t = timer.now(); repeat until timer.now() - t > 0.02; return e end }
            pipeline "p" { "slow" }
            """, to: "p.lua", in: dir)
        let child = try StreamingChild(["run", "p.lua", "--input", "-", "--output", "-"], directory: dir)
        child.send((1...1000).map { "{\"id\":\($0)}\n" }.joined())
        #expect(waitUntil(seconds: 20) { child.stdout.split(separator: "\n").count >= 10 })
        // Output arrives in whole lines.
        #expect(child.stdoutBytes.last == 10)
        #expect(child.process.isRunning)
        // A stop ends the reading although read lines wait in the reader's buffer: the
        // event being processed finishes, the rest is not started (no forced stop).
        kill(child.pid, SIGTERM)
        let (status, stderr) = child.finish()
        #expect(status == 143, "\(stderr)")
        #expect(!stderr.contains("forced"), "\(stderr)")
    }

    /// Every write(2) of a sink ends at the end of a line, whatever the lengths (some
    /// lines longer than the whole buffer): after each line written, the file on disk
    /// ends with a newline.
    @Test func aSinkWritesWholeLinesOnly() throws {
        let dir = temporaryDirectory()
        let path = "\(dir)/out.jsonl"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        try #require(fd >= 0)
        let sink = try #require(FileSink(fd: fd, name: path, what: "output"))
        let check = open(path, O_RDONLY | O_CLOEXEC)
        defer { close(check) }
        var generator = SystemRandomNumberGenerator()
        var expected = 0
        var partial = 0
        for i in 0..<400 {
            let length = i % 50 == 0 ? Int.random(in: 70_000...200_000, using: &generator) : Int.random(in: 1...5_000, using: &generator)
            let line = [CChar](repeating: 120, count: length)
            #expect(line.withUnsafeBufferPointer { b in b.baseAddress.map { sink.writeLine($0, length) } ?? -1 } == 0)
            expected += length + 1
            var st = stat()
            _ = fstat(check, &st)
            if st.st_size > 0 {
                var last: UInt8 = 0
                _ = pread(check, &last, 1, off_t(st.st_size - 1))
                if last != 10 { partial += 1 }
            }
        }
        #expect(partial == 0)
        #expect(sink.close() == 0)
        #expect((try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) == expected)
    }
}
