import Foundation
import Testing
@testable import ScopeLua

/// `scopelua run script.lua --input ...` end to end, signals included.
@Suite(.timeLimit(testTimeLimit)) struct PipelineCommandTests {
    static let identity = """
        stage "pass" { process = function(ctx, e) return e end }
        pipeline "p" { "pass" }
        """

    @Test func runsOverAFileAndWritesJSONLines() throws {
        let dir = temporaryDirectory()
        write(Self.identity, to: "p.lua", in: dir)
        write("{\"id\":1,\"tags\":[]}\n{\"id\":2,\"x\":null}\n", to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--report"], directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let lines = (read("\(dir)/out.jsonl") ?? "").split(separator: "\n").map(String.init)
        #expect(lines.count == 2)
        #expect(lines.first.map { $0.contains("\"tags\":[]") && $0.contains("\"id\":1") } == true)
        #expect(lines.last.map { $0.contains("\"x\":null") } == true)
        #expect(r.stderr.contains("  events     read 2  emitted 2  filtered 0  skipped 0  dead-lettered 0  rejected 0  retried 0"))
    }

    @Test func badLinesAreRejectedWithTheirLineNumberAndTheRunGoesOn() throws {
        let dir = temporaryDirectory()
        write(Self.identity, to: "p.lua", in: dir)
        var input = Data("{\"id\":1}\n{bad json\n[1,2]\n\n\"text\"\n".utf8)
        input.append(contentsOf: [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xFF, 0xFE, 0x22, 0x7D, 0x0A])  // {"a":"\xff\xfe"}
        input.append(Data(repeating: 0x20, count: 17 << 20))                                     // a line over 16 MiB
        input.append(Data("\n{\"id\":9}\n".utf8))
        _ = FileManager.default.createFile(atPath: "\(dir)/in.jsonl", contents: input)
        let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--report"], directory: dir)
        #expect(r.status == 0)
        // The first three as they happen, then a count (the dead-letter file would have
        // them all).
        let rejects = r.stderr.split(separator: "\n").filter { $0.hasPrefix("scopelua: input") }.map(String.init)
        #expect(rejects == [
            "scopelua: input line 2 rejected: not valid JSON: Expected object key string but found invalid token at character 2",
            "scopelua: input line 3 rejected: not a JSON object",
            "scopelua: input line 5 rejected: not a JSON object",
            "scopelua: input: ... 2 more like this",
        ])
        #expect(r.stderr.contains("\n  input: 5 rejected, the first on line 2: not valid JSON: Expected object key string but found invalid token at character 2\n"), "\(r.stderr)")
        #expect(r.stderr.contains("read 7  emitted 2  filtered 0  skipped 0  dead-lettered 0  rejected 5"))
        #expect((read("\(dir)/out.jsonl") ?? "").split(separator: "\n").count == 2)
    }

    @Test func rejectedLinesGoToTheDeadLetterFileWithTheRawText() throws {
        let dir = temporaryDirectory()
        write(Self.identity, to: "p.lua", in: dir)
        write("{\"id\":1}\nnot json at all\n", to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "none", "--dead-letter", "dl.jsonl"], directory: dir)
        #expect(r.status == 0)
        let record = read("\(dir)/dl.jsonl") ?? ""
        #expect(record.contains("\"raw\":\"not json at all\""))
        #expect(record.contains("\"line\":2"))
        #expect(record.contains("\"error\":\"not valid JSON: Expected value but found invalid token at character 1\""))
        // Shown on stderr as well, as every error the run goes on after.
        #expect(r.stderr.hasPrefix("scopelua: input line 2 rejected: not valid JSON: Expected value but found invalid token at character 1\n"), "\(r.stderr)")
        #expect(r.stderr.contains("\n  input: 1 rejected, the first on line 2: not valid JSON"), "\(r.stderr)")
    }

    @Test func abortStopsReleasesAndExits1WithTraceback() throws {
        let dir = temporaryDirectory()
        write("""
            stage "log" { open = function(ctx) ctx.state.f = fs.open("log.txt", "w") end,
                          process = function(ctx, e) ctx.state.f:write(e.id, "\\n"); return e end }
            stage "check" { process = function(ctx, e)
              if e.id == 3 then error("invalid amount") end
              return e
            end }
            pipeline "p" { "log", "check" }
            """, to: "p.lua", in: dir)
        write((1...5).map { "{\"id\":\($0)}" }.joined(separator: "\n") + "\n", to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "out.jsonl"], directory: dir)
        #expect(r.status == 1)
        // The summary of the run, then the error that ended it.
        #expect(r.stderr.hasPrefix("scopelua: pipeline 'p': read 3, emitted 2, filtered 0, skipped 0, dead-lettered 0, rejected 0, in flight 1 (line 3) in "), "\(r.stderr)")
        #expect(r.stderr.contains("\nscopelua: pipeline 'p' aborted: stage 'check' failed on line 3 (id 3): p.lua:4: invalid amount\nstack traceback:"))
        #expect(r.stderr.contains("p.lua:4: in function <p.lua:3>"))
        #expect(read("\(dir)/log.txt") == "1\n2\n3\n")
        #expect(read("\(dir)/out.jsonl") == "{\"id\":1}\n{\"id\":2}\n")
    }

    @Test func choosingAPipeline() throws {
        let dir = temporaryDirectory()
        write("""
            stage "s" { process = function(ctx, e) return e end }
            pipeline "a" { "s" }
            pipeline "b" { "s" }
            """, to: "p.lua", in: dir)
        write("{}\n", to: "in.jsonl", in: dir)
        let several = try scopelua(["run", "p.lua", "--input", "in.jsonl"], directory: dir)
        #expect(several.status == 2)
        #expect(several.stderr == "scopelua: the script registered several pipelines (a, b): choose one with --pipeline NAME\n")
        let chosen = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--pipeline", "b"], directory: dir)
        #expect(chosen.status == 0)
        #expect(chosen.stdout == "{}\n")
        let unknown = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--pipeline", "c"], directory: dir)
        #expect(unknown.status == 2)
        #expect(unknown.stderr == "scopelua: no pipeline named 'c' (registered: a, b)\n")
        let missing = try scopelua(["run", "p.lua", "--input", "nope.jsonl", "--pipeline", "a"], directory: dir)
        #expect(missing.status == 2)
        #expect(missing.stderr == "scopelua: cannot open input nope.jsonl: No such file or directory\n")
    }

    @Test func argumentsAfterTheScriptAndDoubleDash() throws {
        let dir = temporaryDirectory()
        write("print(select('#', ...), ...)\n" + Self.identity, to: "p.lua", in: dir)
        write("{}\n", to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "p.lua", "x", "--input", "in.jsonl", "--output", "none", "--", "--input", "y"], directory: dir)
        #expect(r.status == 0)
        #expect(r.stdout == "3\tx\t--input\ty\n")
    }

    /// A process with a pipe on stdin that the test controls.
    final class Child {
        let process = Process()
        let input = Pipe()
        let errors = Pipe()

        init(_ arguments: [String], directory: String) throws {
            process.executableURL = URL(fileURLWithPath: scopeluaPath)
            process.arguments = arguments
            process.currentDirectoryURL = URL(fileURLWithPath: directory)
            process.standardInput = input
            process.standardError = errors
            process.standardOutput = FileHandle.nullDevice
            try process.run()
        }

        func send(_ text: String) { input.fileHandleForWriting.write(Data(text.utf8)) }

        var pid: pid_t { process.processIdentifier }

        /// Closes stdin and waits; a child still running after `timeout` seconds is
        /// killed (and reported as status -1), so a broken stop cannot hang the tests.
        func finish(timeout: Double = 30) -> (status: Int32, stderr: String) {
            try? input.fileHandleForWriting.close()
            let exited = waitUntil(seconds: timeout) { !self.process.isRunning }
            if !exited { kill(pid, SIGKILL) }
            let err = errors.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return (exited ? process.terminationStatus : -1, String(decoding: err, as: UTF8.self))
        }

        /// Whether the child catches `signal` (its stop handlers are installed).
        func catches(_ signal: Int32) -> Bool { processStatus(pid, "SigCgt", has: signal) }

        /// Whether a `signal` sent to the child is still waiting to be delivered.
        func hasPending(_ signal: Int32) -> Bool {
            processStatus(pid, "ShdPnd", has: signal) || processStatus(pid, "SigPnd", has: signal)
        }
    }

    func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    /// Timers fire while the input is idle. A timer the script released, and one made
    /// while an event was processed (its task scope ended with the event), never fire
    /// again: checked while the run goes on and another timer keeps firing, which shows
    /// there was time for them to fire.
    @Test func timersFireWhileTheInputIsIdleAndStopWithTheirScope() throws {
        let dir = temporaryDirectory()
        write("""
            stage "batcher" {
              open = function(ctx)
                local f = fs.open("ticks.txt", "w")
                ctx.state.f = f
                ctx.state.ticker = timer.every(0.02, function()
                  f:write("tick\\n"):flush()
                  ctx:emit({ tick = true })
                end)
                timer.every(0.02, function() f:write("beat\\n"):flush() end)
              end,
              process = function(ctx, e)
                local f = ctx.state.f
                if e.id == 1 then
                  timer.every(0.001, function() f:write("task timer\\n"):flush() end)
                  f:write("event 1 done\\n"):flush()
                elseif e.id == 2 then
                  ctx.state.ticker:release()
                  f:write("ticker released\\n"):flush()
                end
                return e
              end,
            }
            pipeline "p" { "batcher" }
            """, to: "p.lua", in: dir)
        let child = try Child(["run", "p.lua", "--input", "-", "--output", "out.jsonl", "--report"], directory: dir)
        /// How often `line` is in the log (from the line `after` on).
        func count(_ line: String, after marker: String? = nil) -> Int {
            var lines = (read("\(dir)/ticks.txt") ?? "").split(separator: "\n").map(String.init)
            if let marker { lines = Array(lines.drop { $0 != marker }) }
            return lines.filter { $0 == line }.count
        }
        // No input at all: the timers fire anyway.
        #expect(waitUntil { count("tick") >= 3 })
        child.send("{\"id\":1}\n")
        #expect(waitUntil { count("beat", after: "event 1 done") >= 5 })
        #expect(count("task timer") == 0)
        child.send("{\"id\":2}\n")
        #expect(waitUntil { count("beat", after: "ticker released") >= 5 })
        #expect(count("tick", after: "ticker released") == 0)
        let ticks = count("tick")
        let (status, stderr) = child.finish()
        #expect(status == 0, "\(stderr)")
        #expect(stderr.contains("read 2  emitted 2"))
        #expect(stderr.contains("fan-out    created \(ticks)  emitted \(ticks)"), "\(stderr)")
    }

    /// Each signal test waits for the child to be where the test needs it (a file the
    /// stage creates) instead of sleeping: on a loaded machine a fixed sleep can send the
    /// signal before the events are processed or before the handlers exist.
    @Test func sigtermStopsGracefully() throws {
        let dir = temporaryDirectory()
        write("""
            stage "s" {
              open = function(ctx) ctx.state.n = 0 end,
              process = function(ctx, e)
                ctx.state.n = ctx.state.n + 1
                if ctx.state.n == 100 then fs.open("seen-100", "w"):release() end
                return e
              end,
              close = function(ctx, err)
                local f <close> = fs.open("closed.txt", "w")
                f:write("closed after ", ctx.state.n, "\\n")
              end,
            }
            pipeline "p" { "s" }
            """, to: "p.lua", in: dir)
        let child = try Child(["run", "p.lua", "--input", "-", "--output", "out.jsonl", "--report"], directory: dir)
        child.send((1...100).map { "{\"id\":\($0)}\n" }.joined())
        // The stage has seen the 100 events (the stop handlers exist before the first one).
        #expect(waitUntil { self.exists("\(dir)/seen-100") })
        #expect(child.catches(SIGTERM))
        kill(child.pid, SIGTERM)
        let (status, stderr) = child.finish()
        #expect(status == 143, "\(stderr)")
        #expect(read("\(dir)/closed.txt") == "closed after 100\n")
        #expect((read("\(dir)/out.jsonl") ?? "").split(separator: "\n").count == 100)
        #expect(stderr.contains("read 100  emitted 100"))
    }

    @Test func graceRunningOutForcesTheReleaseAndNamesTheStage() throws {
        let dir = temporaryDirectory()
        write("""
            stage "slow" {
              open = function(ctx) ctx.state.f = fs.open("held.txt", "w"); ctx.state.f:write("held") end,
              process = function(ctx, e) fs.open("looping", "w"):release(); while true do end end,
            }
            pipeline "p" { "slow" }
            """, to: "p.lua", in: dir)
        let child = try Child(["run", "p.lua", "--input", "-", "--grace", "1"], directory: dir)
        child.send("{\"id\":1}\n")
        #expect(waitUntil { self.exists("\(dir)/looping") })
        kill(child.pid, SIGTERM)
        let (status, stderr) = child.finish()
        #expect(status == 143)
        #expect(stderr.contains("scopelua: stop forced while stage 'slow' was still running: everything still open was released"))
        #expect(read("\(dir)/held.txt") == "held")  // released (flushed and closed)
    }

    @Test func secondSignalForcesAtOnce() throws {
        let dir = temporaryDirectory()
        write("""
            stage "slow" { process = function(ctx, e) fs.open("looping", "w"):release(); while true do end end }
            pipeline "p" { "slow" }
            """, to: "p.lua", in: dir)
        let child = try Child(["run", "p.lua", "--input", "-", "--grace", "60"], directory: dir)
        child.send("{\"id\":1}\n")
        #expect(waitUntil { self.exists("\(dir)/looping") })
        kill(child.pid, SIGINT)
        // Two signals sent before the first is delivered are one signal to the kernel: the
        // second goes once the first has left the pending set.
        #expect(waitUntil { !child.hasPending(SIGINT) })
        kill(child.pid, SIGINT)
        let started = Date()
        let (status, stderr) = child.finish()
        #expect(status == 130)
        #expect(Date().timeIntervalSince(started) < 10)
        #expect(stderr.contains("stop forced while stage 'slow' was still running"))
    }
}
