import Foundation
import Testing
@testable import ScopeLua

/// A `scopelua` child whose stderr the test reads as it comes, so that it can wait for a
/// readiness marker the script prints before sending a signal (never a fixed sleep).
/// Stderr is read without blocking, from the test's own thread (no reader thread).
final class WatchedChild {
    let process = Process()
    private let input = Pipe()
    private let errors = Pipe()
    private var text = ""
    private var atEnd = false

    init(_ arguments: [String], directory: String, stdin: String? = nil) throws {
        process.executableURL = URL(fileURLWithPath: scopeluaPath)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.standardInput = input
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let fd = errors.fileHandleForReading.fileDescriptor
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        if let stdin {
            send(stdin)
            closeInput()
        }
    }

    var pid: Int32 { process.processIdentifier }

    /// Everything the child wrote to stderr so far.
    var stderr: String {
        drain()
        return text
    }

    private func drain() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !atEnd {
            let n = read(errors.fileHandleForReading.fileDescriptor, &buffer, buffer.count)
            if n > 0 {
                text += String(decoding: buffer[..<n], as: UTF8.self)
            } else {
                if n == 0 { atEnd = true }
                return
            }
        }
    }

    func send(_ text: String) { input.fileHandleForWriting.write(Data(text.utf8)) }
    func closeInput() { try? input.fileHandleForWriting.close() }
    func signal(_ sig: Int32) { kill(pid, sig) }

    /// Waits until stderr contains `marker` (false if the child ended without it, or
    /// after `seconds`).
    func waitFor(_ marker: String, seconds: Double = 30) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if stderr.contains(marker) { return true }
            if !process.isRunning { return stderr.contains(marker) }
            usleep(5_000)
        }
        return false
    }

    /// Waits for the child to exit and returns its status, or nil (after killing it) if
    /// it is still running after `seconds`: a broken stop must not hang the tests.
    func finish(seconds: Double = 30) -> Int32? {
        let end = Date().addingTimeInterval(seconds)
        while process.isRunning, Date() < end { usleep(5_000) }
        if process.isRunning {
            kill(pid, SIGKILL)
            let killed = Date().addingTimeInterval(5)
            while process.isRunning, Date() < killed { usleep(5_000) }
            return nil
        }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// All of stderr, once the child (and anything holding its stderr) is gone.
    func allErrors(seconds: Double = 10) -> String {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            drain()
            if atEnd { break }
            usleep(5_000)
        }
        return text
    }
}

/// The rows of table `t` in the SQLite database at `path` (nil if it cannot be read),
/// counted by a scopelua child (nothing of it stays in the test process).
func rowCount(_ path: String) -> Int64? {
    let r = try? scopelua(["run", "-e", "local db <close> = sql.open([[\(path)]]); print(db:first('SELECT count(*) AS n FROM t').n)"])
    return r.flatMap { Int64($0.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) }
}

/// SIGINT / SIGTERM in every run mode (issue 9, items 11 and 12).
@Suite struct StopTests {
    /// What every stop test script holds when the signal comes: a runtime file with
    /// buffered data, a transaction with a row in it, a deferred function that writes
    /// down the error it sees. The data must be on disk, the row rolled back.
    static let holdings = """
        local f = fs.open("out.txt", "w"); f:setvbuf("full"); f:write("complete\\n")
        local db = sql.open("t.db"); db:exec("CREATE TABLE IF NOT EXISTS t(x)")
        local tx = db:transaction(); db:exec("INSERT INTO t VALUES (1)")
        defer(function(err) local g <close> = fs.open("defer.txt", "w"); g:write(tostring(err), "\\n") end)
        """

    /// `deferSaw`: the error the deferred function saw, or its end when `exact` is false
    /// (a forced stop raises wherever the script happens to be).
    static func expectReleased(_ dir: String, deferSaw: String, exact: Bool = true, _ stderr: String,
                               sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(read("\(dir)/out.txt") == "complete\n", "\(stderr)", sourceLocation: sourceLocation)
        let saw = read("\(dir)/defer.txt") ?? "(nothing)"
        #expect(exact ? saw == deferSaw + "\n" : saw.hasSuffix(deferSaw + "\n"), "\(saw) \(stderr)", sourceLocation: sourceLocation)
        #expect(rowCount("\(dir)/t.db") == 0, "the transaction was not rolled back", sourceLocation: sourceLocation)
    }

    enum Mode: String, CaseIterable, Sendable {
        case scriptFile, chunkOption, scriptFromStdin
    }

    /// Item 11: the stop is an error raised in the script at its next instruction, so
    /// scopes unwind with it (the defer sees it, the transaction rolls back, the file is
    /// flushed and closed), then the run exits with 128 + the signal.
    @Test(.timeLimit(testTimeLimit), arguments: Mode.allCases, [SIGINT, SIGTERM])
    func aStopUnwindsAPlainScriptWithTheStopAsItsError(mode: Mode, signal: Int32) throws {
        let dir = temporaryDirectory()
        let body = Self.holdings + """

            io.stderr:write("ready\\n")
            while true do end
            """
        let child: WatchedChild
        let chunk: String
        switch mode {
        case .scriptFile:
            write(body, to: "stop.lua", in: dir)
            child = try WatchedChild(["run", "stop.lua"], directory: dir)
            chunk = "stop.lua"
        case .chunkOption:
            child = try WatchedChild(["run", "-e", body], directory: dir)
            chunk = "(command line)"
        case .scriptFromStdin:
            child = try WatchedChild(["run", "-"], directory: dir, stdin: body)
            chunk = "stdin"
        }
        #expect(child.waitFor("ready\n"))
        child.signal(signal)
        let status = child.finish()
        let stderr = child.allErrors()
        let name = signal == SIGINT ? "SIGINT" : "SIGTERM"
        #expect(status == 128 + signal, "\(stderr)")
        // Raised at the next instruction: in the loop (line 6), or as `write` (line 5),
        // still running when the test saw "ready", returns.
        let saw = read("\(dir)/defer.txt") ?? ""
        #expect(["\(chunk):6: stopped by \(name)\n", "stopped by \(name)\n"].contains(saw), "\(saw)")
        Self.expectReleased(dir, deferSaw: "stopped by \(name)", exact: false, stderr)
        #expect(stderr.hasSuffix("scopelua: \(saw)stack traceback:\n\t" + (saw.hasPrefix(chunk) ? "" : "[C]: in method 'write'\n\t")
                                 + "\(chunk):\(saw.hasPrefix(chunk) ? 6 : 5): in main chunk\n"), "\(stderr)")
    }

    /// Item 11: a pipeline run from a script (`p:run{}`) stops between events like an
    /// `--input` run (the stages close), then the stop reaches the script as an error.
    @Test(.timeLimit(testTimeLimit)) func aStopEndsPRunBetweenEventsThenUnwindsTheScript() throws {
        let dir = temporaryDirectory()
        write(Self.holdings + """

            stage "s" {
              process = function(ctx, e) io.stderr:write("processed ", e.id, "\\n"); return e end,
              close = function(ctx, err) io.stderr:write("closed with ", tostring(err), "\\n") end,
            }
            local p = pipeline "p" { "s" }
            p:run{ input = "/dev/stdin", output = "events.jsonl" }
            io.stderr:write("not reached\\n")
            """, to: "prun.lua", in: dir)
        let child = try WatchedChild(["run", "prun.lua"], directory: dir)
        child.send("{\"id\":1}\n")
        #expect(child.waitFor("processed 1\n"))
        child.signal(SIGINT)
        let status = child.finish()
        let stderr = child.allErrors()
        #expect(status == 130, "\(stderr)")
        #expect(stderr.contains("closed with nil\n"))
        #expect(!stderr.contains("not reached"))
        #expect(read("\(dir)/events.jsonl") == "{\"id\":1}\n")
        Self.expectReleased(dir, deferSaw: "prun.lua:10: stopped by SIGINT", stderr)
    }

    /// Item 11: `--input` pipelines keep stopping gracefully between events, and what
    /// the script holds in the run scope is released after them.
    @Test(.timeLimit(testTimeLimit)) func anInputPipelineStillStopsBetweenEvents() throws {
        let dir = temporaryDirectory()
        write("""
            local f = fs.open("out.txt", "w"); f:setvbuf("full"); f:write("complete\\n")
            stage "s" { process = function(ctx, e) io.stderr:write("processed ", e.id, "\\n"); return e end }
            pipeline "p" { "s" }
            """, to: "p.lua", in: dir)
        let child = try WatchedChild(["run", "p.lua", "--input", "-", "--output", "events.jsonl", "--report"], directory: dir)
        child.send("{\"id\":1}\n{\"id\":2}\n")
        #expect(child.waitFor("processed 2\n"))
        child.signal(SIGTERM)
        let status = child.finish()
        let stderr = child.allErrors()
        #expect(status == 143, "\(stderr)")
        #expect(stderr.contains("read 2  emitted 2"))
        #expect(read("\(dir)/events.jsonl") == "{\"id\":1}\n{\"id\":2}\n")
        #expect(read("\(dir)/out.txt") == "complete\n")
    }

    /// Ways a script can try to survive a stop. Each says "ready" from where it catches
    /// errors, so that the graceful stop, wherever it lands, is swallowed.
    static let swallowers: [String: String] = [
        "pcall": """
            local said = false
            while true do
              local ok, e = pcall(function()
                if not said then said = true; io.stderr:write("ready\\n") end
                while true do end
              end)
              io.stderr:write("caught ", tostring(e), "\\n")
            end
            """,
        "debug.sethook": """
            local said = false
            while true do
              pcall(function()
                if not said then said = true; io.stderr:write("ready\\n") end
                while true do debug.sethook() end
              end)
              debug.sethook()
            end
            """,
        "xpcall with debug.sethook as handler": """
            local said = false
            while true do
              xpcall(function()
                if not said then said = true; io.stderr:write("ready\\n") end
                while true do end
              end, function() debug.sethook() end)
            end
            """,
        "coroutine": """
            local said = false
            local co = coroutine.wrap(function()
              while true do
                pcall(function()
                  if not said then said = true; io.stderr:write("ready\\n") end
                  while true do end
                end)
              end
            end)
            while true do pcall(co) end
            """,
    ]

    /// Item 12: once forced (here by the grace period), the stop ends the run whatever
    /// the script does, and still releases what the runtime owns.
    @Test(.timeLimit(testTimeLimit), arguments: swallowers.keys.sorted())
    func aForcedStopCannotBeSwallowed(_ name: String) throws {
        let dir = temporaryDirectory()
        write(Self.holdings + "\n" + (Self.swallowers[name] ?? ""), to: "loop.lua", in: dir)
        let child = try WatchedChild(["run", "--grace", "0.5", "loop.lua"], directory: dir)
        #expect(child.waitFor("ready\n"))
        child.signal(SIGTERM)
        let status = child.finish()
        let stderr = child.allErrors()
        #expect(status == 143, "\(stderr)")
        #expect(stderr.contains("scopelua: stop forced: everything still open was released\n"), "\(stderr)")
        #expect(!stderr.contains("did not end within the grace period"), "\(stderr)")
        Self.expectReleased(dir, deferSaw: "stopped by SIGTERM (forced)", exact: false, stderr)
    }

    /// Item 12: a second signal forces the stop at once, even with a long grace period.
    @Test(.timeLimit(testTimeLimit)) func aSecondSignalForcesAStopTheScriptCaught() throws {
        let dir = temporaryDirectory()
        write(Self.holdings + "\n" + (Self.swallowers["pcall"] ?? ""), to: "loop.lua", in: dir)
        let child = try WatchedChild(["run", "--grace", "600", "loop.lua"], directory: dir)
        #expect(child.waitFor("ready\n"))
        child.signal(SIGINT)
        #expect(child.waitFor("stopped by SIGINT\n"))  // "caught ...": the script swallowed the graceful stop
        child.signal(SIGINT)
        let status = child.finish()
        let stderr = child.allErrors()
        #expect(status == 130, "\(stderr)")
        Self.expectReleased(dir, deferSaw: "stopped by SIGINT (forced)", exact: false, stderr)
    }

    /// Item 12: a pipeline stage looping around pcall is interrupted by force too.
    @Test(.timeLimit(testTimeLimit)) func aForcedStopEndsAStageThatSwallowsErrors() throws {
        let dir = temporaryDirectory()
        write("""
            stage "stubborn" {
              open = function(ctx) ctx.state.f = fs.open("out.txt", "w"); ctx.state.f:setvbuf("full"); ctx.state.f:write("complete\\n") end,
              process = function(ctx, e)
                io.stderr:write("ready\\n")
                while true do pcall(function() while true do end end) end
              end,
            }
            pipeline "p" { "stubborn" }
            """, to: "p.lua", in: dir)
        let child = try WatchedChild(["run", "p.lua", "--input", "-", "--grace", "0.5"], directory: dir)
        child.send("{\"id\":1}\n")
        #expect(child.waitFor("ready\n"))
        child.signal(SIGTERM)
        let status = child.finish()
        let stderr = child.allErrors()
        #expect(status == 143, "\(stderr)")
        #expect(stderr.contains("scopelua: stop forced while stage 'stubborn' was still running: everything still open was released"), "\(stderr)")
        #expect(read("\(dir)/out.txt") == "complete\n")
    }

    /// Item 12: after a forced stop, Lua code run by releases gets one more grace period;
    /// a deferred function that never ends fails then, and the rest is still released.
    @Test(.timeLimit(testTimeLimit)) func releaseCodeIsBoundedAfterAForcedStop() throws {
        let dir = temporaryDirectory()
        write("""
            local f = fs.open("out.txt", "w"); f:setvbuf("full"); f:write("complete\\n")
            defer(function(err) io.stderr:write("looping\\n"); while true do end end)
            io.stderr:write("ready\\n")
            while true do end
            """, to: "d.lua", in: dir)
        let child = try WatchedChild(["run", "--grace", "0.5", "d.lua"], directory: dir)
        #expect(child.waitFor("ready\n"))
        child.signal(SIGTERM)
        let status = child.finish()
        let stderr = child.allErrors()
        #expect(status == 143, "\(stderr)")
        #expect(stderr.contains("looping\n"))
        #expect(stderr.contains("\trelease error: d.lua:2: stopped by SIGTERM (forced)"), "\(stderr)")
        #expect(read("\(dir)/out.txt") == "complete\n")
    }

    /// Item 12: a run stuck outside Lua (here in os.execute) is ended by the last resort:
    /// output flushed, exit 128 + the signal.
    @Test(.timeLimit(testTimeLimit)) func theLastResortFlushesAndExits() throws {
        let dir = temporaryDirectory()
        write("""
            local f = fs.open("out.txt", "w"); f:setvbuf("full"); f:write("complete\\n")
            os.execute("echo $$ > sleep.pid; echo ready >&2; exec sleep 60 >/dev/null 2>&1")
            """, to: "stuck.lua", in: dir)
        let child = try WatchedChild(["run", "--grace", "0.3", "stuck.lua"], directory: dir)
        #expect(child.waitFor("ready\n"))
        child.signal(SIGTERM)
        #expect(child.waitFor("scopelua: stop forced, but the run did not end within the grace period (stuck outside Lua): output flushed, exiting without releasing the rest\n"))
        // The sleep outlives scopelua and holds what it inherited (the pipes that tell
        // Process it ended): end it.
        if let pid = read("\(dir)/sleep.pid").flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
            kill(pid, SIGTERM)
        }
        let status = child.finish()
        let stderr = child.allErrors()
        #expect(status == 143, "\(stderr)")
        #expect(read("\(dir)/out.txt") == "complete\n")
    }
}
