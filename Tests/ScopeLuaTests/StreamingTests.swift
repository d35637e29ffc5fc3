import Foundation
import Testing
@testable import ScopeLua
import CScopeLua

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
@Suite(.timeLimit(testTimeLimit)) struct OutputLatencyTests {
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

/// `--follow` (issue 11, "Following and streaming"): the input file is followed by its
/// name as it grows, like `tail -F`. Each test waits for what it needs to see (output
/// lines, a note on stderr), never for a fixed time.
@Suite(.timeLimit(testTimeLimit)) struct FollowTests {
    static let identity = """
        stage "pass" { process = function(ctx, e) return e end }
        pipeline "p" { "pass" }
        """

    static func lines(_ ids: ClosedRange<Int>, key: String = "id") -> String {
        ids.map { "{\"\(key)\":\($0)}\n" }.joined()
    }

    /// Appends `text` to the file at `path` (created if missing), as a logging process does.
    static func append(_ text: String, to path: String) {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { Issue.record("cannot open \(path)"); return }
        defer { close(fd) }
        let written = text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
        #expect(written == text.utf8.count)
    }

    /// The child's output lines so far.
    static func output(_ child: StreamingChild) -> [String] {
        child.stdout.split(separator: "\n").map(String.init)
    }

    /// Stops the child with `signal` and checks the graceful end: the exit status, and
    /// the report (`--report`) with `read` events read.
    static func stop(_ child: StreamingChild, _ signal: Int32 = SIGTERM, read: Int,
                     sourceLocation: SourceLocation = #_sourceLocation) -> String {
        kill(child.pid, signal)
        let (status, stderr) = child.finish()
        #expect(status == 128 + signal, "\(stderr)", sourceLocation: sourceLocation)
        #expect(stderr.contains("events     read \(read)  emitted \(read)"), "\(stderr)", sourceLocation: sourceLocation)
        return stderr
    }

    @Test func appendedLinesArePickedUp() throws {
        let dir = temporaryDirectory()
        write(Self.identity, to: "p.lua", in: dir)
        write(Self.lines(1...2), to: "in.jsonl", in: dir)
        let child = try StreamingChild(["run", "p.lua", "--input", "in.jsonl", "--follow", "--report"], directory: dir)
        #expect(waitUntil(seconds: 20) { Self.output(child).count == 2 }, "\(child.stderr)")
        // The end of the file is not the end of the input.
        #expect(child.process.isRunning)
        Self.append(Self.lines(3...4), to: "\(dir)/in.jsonl")
        #expect(waitUntil(seconds: 20) { Self.output(child).count == 4 }, "\(child.stdout) \(child.stderr)")
        // A line written in two parts is read once it is whole.
        Self.append("{\"id\":", to: "\(dir)/in.jsonl")
        Self.append("5}\n", to: "\(dir)/in.jsonl")
        #expect(waitUntil(seconds: 20) { Self.output(child).count == 5 })
        _ = Self.stop(child, read: 5)
        #expect(Self.output(child) == Self.lines(1...5).split(separator: "\n").map(String.init))
    }

    /// logrotate's way: the file is renamed, the writer finishes its last line in the
    /// old file, a new file is created at the path. Both files' events are processed,
    /// the old file's first (its last line, without a newline, too).
    @Test func aRotatedFileIsReadToItsEndThenTheNewOneFromItsStart() throws {
        let dir = temporaryDirectory()
        write(Self.identity, to: "p.lua", in: dir)
        write(Self.lines(1...2), to: "app.log", in: dir)
        let child = try StreamingChild(["run", "p.lua", "--input", "app.log", "--follow", "--report"], directory: dir)
        #expect(waitUntil(seconds: 20) { Self.output(child).count == 2 }, "\(child.stderr)")
        #expect(rename("\(dir)/app.log", "\(dir)/app.log.1") == 0)
        Self.append(Self.lines(3...4) + "{\"id\":5}", to: "\(dir)/app.log.1")
        Self.append(Self.lines(6...7), to: "\(dir)/app.log")
        #expect(waitUntil(seconds: 20) { Self.output(child).count == 7 }, "\(child.stdout) \(child.stderr)")
        // And the new file is followed in its turn.
        Self.append(Self.lines(8...8), to: "\(dir)/app.log")
        #expect(waitUntil(seconds: 20) { Self.output(child).count == 8 })
        let stderr = Self.stop(child, read: 8)
        #expect(Self.output(child) == Self.lines(1...8).split(separator: "\n").map(String.init))
        #expect(stderr.contains("scopelua: input app.log was replaced by a new file (rotated)"), "\(stderr)")
    }

    /// A truncated file (copytruncate, `: > file`) is read again from its start, and
    /// stderr says so.
    @Test func aTruncatedFileIsReadAgainFromItsStart() throws {
        let dir = temporaryDirectory()
        write(Self.identity, to: "p.lua", in: dir)
        write(Self.lines(1...3), to: "in.jsonl", in: dir)
        let child = try StreamingChild(["run", "p.lua", "--input", "in.jsonl", "--follow", "--report"], directory: dir)
        #expect(waitUntil(seconds: 20) { Self.output(child).count == 3 }, "\(child.stderr)")
        #expect(truncate("\(dir)/in.jsonl", 0) == 0)
        // Truncation is seen by the file getting shorter than what was read: the new
        // lines are written once the note says it was seen (new lines written at once
        // could make the file as long as before, which no follower can tell apart).
        #expect(waitUntil(seconds: 20) { child.stderr.contains("scopelua: input in.jsonl was truncated (to 0 bytes, 27 had been read): reading it again from the start") },
                "\(child.stderr)")
        Self.append(Self.lines(1...2, key: "again"), to: "\(dir)/in.jsonl")
        #expect(waitUntil(seconds: 20) { Self.output(child).count == 5 }, "\(child.stdout) \(child.stderr)")
        _ = Self.stop(child, read: 5)
        #expect(Self.output(child) == (Self.lines(1...3) + Self.lines(1...2, key: "again")).split(separator: "\n").map(String.init))
    }

    /// A file that does not exist yet is waited for (said once), then read from its start.
    @Test func aMissingFileIsWaitedFor() throws {
        let dir = temporaryDirectory()
        write(Self.identity, to: "p.lua", in: dir)
        let child = try StreamingChild(["run", "p.lua", "--input", "late.jsonl", "--follow", "--report"], directory: dir)
        #expect(waitUntil(seconds: 20) { child.stderr.contains("scopelua: waiting for input late.jsonl to appear\n") }, "\(child.stderr)")
        #expect(child.process.isRunning)
        Self.append(Self.lines(1...3), to: "\(dir)/late.jsonl")
        #expect(waitUntil(seconds: 20) { Self.output(child).count == 3 }, "\(child.stdout) \(child.stderr)")
        let stderr = Self.stop(child, SIGINT, read: 3)
        #expect(stderr.components(separatedBy: "waiting for input").count == 2, "said once: \(stderr)")
        #expect(stderr.contains("scopelua: input late.jsonl appeared: reading it\n"))
    }

    /// SIGTERM ends a follow run gracefully while it waits for more: the stages close,
    /// the report is printed, exit 143. Timers fire while it waits.
    /// --follow with --checkpoint: a stopped follow run resumes in the same file after
    /// the last committed line, and the output holds every event once.
    @Test func aFollowRunResumesFromItsCheckpoint() throws {
        let dir = temporaryDirectory()
        write("""
            stage "s" { process = function(ctx, e) return e end }
            pipeline "p" { "s" }
            """, to: "p.lua", in: dir)
        write(Self.lines(1...3), to: "in.jsonl", in: dir)
        let arguments = ["run", "p.lua", "--input", "in.jsonl", "--follow", "--output", "out.jsonl", "--checkpoint", "state.db"]
        let first = try StreamingChild(arguments, directory: dir)
        #expect(waitUntil(seconds: 20) { read("\(dir)/out.jsonl") == Self.lines(1...3) }, "\(first.stderr)")
        kill(first.pid, SIGTERM)
        #expect(first.finish().status == 143)
        let more = FileHandle(forWritingAtPath: "\(dir)/in.jsonl")
        more?.seekToEndOfFile()
        more?.write(Data(Self.lines(4...5).utf8))
        try? more?.close()
        let second = try StreamingChild(arguments, directory: dir)
        #expect(waitUntil(seconds: 20) { read("\(dir)/out.jsonl") == Self.lines(1...5) }, "\(second.stderr)")
        kill(second.pid, SIGTERM)
        let (status, stderr) = second.finish()
        #expect(status == 143)
        #expect(stderr.contains("resuming from checkpoint state.db: in.jsonl after line 3"), "\(stderr)")
        #expect(read("\(dir)/out.jsonl") == Self.lines(1...5))
    }

    @Test func sigtermEndsAFollowRunGracefully() throws {
        let dir = temporaryDirectory()
        write("""
            stage "s" {
              open = function(ctx)
                ctx.state.n = 0
                timer.every(0.02, function() ctx:emit({ tick = true }) end)
              end,
              process = function(ctx, e) if not e.tick then ctx.state.n = ctx.state.n + 1 end; return e end,
              close = function(ctx, err)
                local f <close> = fs.open("closed.txt", "w")
                f:write("closed after ", ctx.state.n, " with ", tostring(err), "\\n")
              end,
            }
            pipeline "p" { "s" }
            """, to: "p.lua", in: dir)
        write(Self.lines(1...2), to: "in.jsonl", in: dir)
        let child = try StreamingChild(["run", "p.lua", "--input", "in.jsonl", "--follow", "--output", "out.jsonl", "--report"],
                                       directory: dir)
        // The two events, then ticks while the file has nothing new.
        #expect(waitUntil(seconds: 20) { (read("\(dir)/out.jsonl") ?? "").components(separatedBy: "tick").count > 3 },
                "\(child.stderr)")
        #expect((read("\(dir)/out.jsonl") ?? "").hasPrefix(Self.lines(1...2)))
        kill(child.pid, SIGTERM)
        let (status, stderr) = child.finish()
        #expect(status == 143, "\(stderr)")
        #expect(read("\(dir)/closed.txt") == "closed after 2 with nil\n")
        #expect(stderr.contains("scopelua: pipeline 'p': read 2, emitted 2,"), "\(stderr)")
        #expect(stderr.contains("events     read 2  emitted 2"), "\(stderr)")
        #expect(!stderr.contains("forced"))
    }

    /// What --follow refuses: stdin, anything but a regular file, no --input; and a
    /// file that appears as the run's own output.
    @Test func followRefusesWhatItCannotFollow() throws {
        let dir = temporaryDirectory()
        write(Self.identity, to: "p.lua", in: dir)
        let stdin = try scopelua(["run", "p.lua", "--input", "-", "--follow"], directory: dir)
        #expect(stdin.status == 2)
        #expect(stdin.stderr.hasPrefix("Error: --follow follows a file by its name: stdin ('-') is read until its writer closes it"), "\(stdin.stderr)")
        let none = try scopelua(["run", "p.lua", "--follow"], directory: dir)
        #expect(none.status == 2)
        #expect(none.stderr.hasPrefix("Error: --follow needs --input FILE"), "\(none.stderr)")
        #expect(mkfifo("\(dir)/fifo", 0o600) == 0)
        let fifo = try scopelua(["run", "p.lua", "--input", "fifo", "--follow"], directory: dir)
        #expect(fifo.status == 2)
        #expect(fifo.stderr.contains("scopelua: cannot follow input fifo: not a regular file"), "\(fifo.stderr)")
        let directory = try scopelua(["run", "p.lua", "--input", ".", "--follow"], directory: dir)
        #expect(directory.status == 2)
        #expect(directory.stderr == "scopelua: cannot follow input .: Is a directory\n", "\(directory.stderr)")

        // The followed path turns out to be the output file: the run stops with an error
        // instead of reading what it writes.
        let child = try StreamingChild(["run", "p.lua", "--input", "late.jsonl", "--follow", "--output", "out.jsonl"], directory: dir)
        #expect(waitUntil(seconds: 20) { child.stderr.contains("waiting for input late.jsonl") })
        #expect(link("\(dir)/out.jsonl", "\(dir)/late.jsonl") == 0)
        let (status, stderr) = child.finish()
        #expect(status == 1, "\(stderr)")
        #expect(stderr.contains("input late.jsonl is now the run's output or dead-letter file"), "\(stderr)")
    }

    @Test func runHelpExplainsFollow() throws {
        let help = try scopelua(["run", "--help"])
        #expect(help.status == 0)
        let text = help.stdout.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        #expect(text.contains("--follow Keep reading the --input file as it grows, like `tail -F`, until SIGINT/SIGTERM"), "\(help.stdout)")
        #expect(text.contains("With --follow, the end of the --input file is not the end of the input"))
    }

    /// The reader says where it stands after each line (for checkpoints): the file's
    /// device and inode, and the byte offset after the line; across a rotation, the new
    /// file from offset 0.
    @Test func theReaderReportsTheFileAndOffsetAfterEachLine() throws {
        let dir = temporaryDirectory()
        let path = write("{\"a\":1}\r\n\n{\"b\":22}\n", to: "in.jsonl", in: dir)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        let first = try #require(InputFile.identity(fd))
        let reader = LineReader(following: path, fd: fd, sinks: []) { _ in }
        func nextLine() -> (String, InputPosition)? {
            let deadline = sl_monotonic_ns() + 20_000_000_000
            while true {
                switch reader.next(deadline: deadline) {
                case .line(let bytes): return (String(decoding: bytes, as: UTF8.self), reader.position)
                case .idle, .stopped, .end, .failed, .tooLong: return nil
                }
            }
        }
        #expect(reader.position == InputPosition(identity: first, offset: 0))
        var got = nextLine()
        #expect(got?.0 == "{\"a\":1}")
        #expect(got?.1 == InputPosition(identity: first, offset: 9))
        got = nextLine()
        #expect(got?.0 == "")
        #expect(got?.1 == InputPosition(identity: first, offset: 10))
        got = nextLine()
        #expect(got?.1 == InputPosition(identity: first, offset: 19))
        #expect(rename(path, path + ".1") == 0)
        write("{\"c\":3}\n", to: "in.jsonl", in: dir)
        got = nextLine()
        #expect(got?.0 == "{\"c\":3}")
        let second = try #require(got?.1.identity)
        #expect(second != first)
        #expect(got?.1.offset == 8)
    }
}
