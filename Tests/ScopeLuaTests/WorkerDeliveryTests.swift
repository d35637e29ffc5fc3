import Foundation
import Testing
@testable import ScopeLua

/// Workers and delivery (issue 12): a graceful stop with 4 workers in the middle of a
/// stream, kill -9 and resume with 2 workers, timers that fire in every worker.
@Suite(.timeLimit(.minutes(1))) struct WorkerDeliveryTests {
    /// Starts scopelua in `dir` with stdin from a pipe the test writes; stderr to a file.
    static func start(_ arguments: [String], in dir: String) throws -> (Process, FileHandle) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: scopeluaPath)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: dir)
        _ = FileManager.default.createFile(atPath: "\(dir)/stderr.txt", contents: nil)
        process.standardError = FileHandle(forWritingAtPath: "\(dir)/stderr.txt")
        process.standardOutput = FileHandle.nullDevice
        let input = Pipe()
        process.standardInput = input
        try process.run()
        return (process, input.fileHandleForWriting)
    }

    /// SIGTERM while 4 workers run over a stream that has not ended: every line read is
    /// finished (one worker was in the middle of one), each worker runs its final barrier
    /// (`flush stop`) and closes, one report, exit 143; the output holds every line read,
    /// once, in input order.
    @Test func sigtermWithFourWorkersMidStream() throws {
        let dir = temporaryDirectory()
        write("""
            local function exists(p) local f = io.open(p) if f then f:close() end return f ~= nil end
            local function log(ctx, ...)
              local f <close> = assert(io.open("log-" .. ctx.worker .. ".txt", "a"))
              f:write(table.concat({...}, " "), "\\n")
            end
            stage "s" {
              process = function(ctx, e)
                if e.id == 250 then
                  local f <close> = assert(io.open("reached", "w"))
                  while not exists("go") do timer.sleep(0.005) end
                end
                return e
              end,
              flush = function(ctx, why) log(ctx, "flush", why) end,
              close = function(ctx, err) log(ctx, "close", tostring(err)) end,
            }
            pipeline "p" { "s" }
            """, to: "job.lua", in: dir)
        let (child, stdin) = try Self.start(["run", "job.lua", "--input", "-", "--output", "out.jsonl", "--workers", "4", "--report"], in: dir)
        defer { if child.isRunning { kill(child.processIdentifier, SIGKILL) } }
        stdin.write(Data(WorkerTests.events(500).utf8))
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(dir)/reached") })
        kill(child.processIdentifier, SIGTERM)
        write("", to: "go", in: dir)
        #expect(waitUntil { !child.isRunning })
        try? stdin.close()
        child.waitUntilExit()
        let stderr = read("\(dir)/stderr.txt") ?? ""
        #expect(child.terminationStatus == 143, "\(stderr)")
        for w in 1...4 {
            #expect((read("\(dir)/log-\(w).txt") ?? "") == "flush stop\nclose nil\n", "worker \(w): \(stderr)")
        }
        let events = stderr.split(separator: "\n").first { $0.hasPrefix("  events") }.map(String.init) ?? ""
        let count = events.split(separator: " ").dropFirst(2).first.flatMap { Int($0) } ?? -1
        #expect(count >= 250, "\(stderr)")
        #expect(events.contains("read \(count)  emitted \(count)  filtered 0  skipped 0  dead-lettered 0  rejected 0"), "\(stderr)")
        #expect(!events.contains("in-flight"), "\(stderr)")
        #expect(WorkerTests.ids(read("\(dir)/out.jsonl") ?? "") == Array(1...max(1, count)))
    }

    // MARK: - kill -9 with 2 workers

    /// CheckpointTests' job with a database per worker (one SQLite file has one writer
    /// at a time, and each worker keeps its batch transaction open until its flush).
    static let job = CheckpointTests.job.replacingOccurrences(of: "sql.open(\"rows.db\")", with: "sql.open(\"rows\" .. ctx.worker .. \".db\")")
    static let command = CheckpointTests.command + ["--workers", "2"]

    static func setUp() -> String {
        let dir = temporaryDirectory()
        write(job, to: "job.lua", in: dir)
        write(CheckpointTests.input, to: "in.jsonl", in: dir)
        return dir
    }

    static func killWhenBlocked(in dir: String, _ environment: [String: String],
                                sourceLocation: SourceLocation = #_sourceLocation) throws -> Bool {
        try? FileManager.default.removeItem(atPath: "\(dir)/reached")
        let child = try CheckpointTests.start(command, in: dir, environment: environment)
        let reached = waitUntil { FileManager.default.fileExists(atPath: "\(dir)/reached") || !child.isRunning }
        let blocked = reached && child.isRunning
        kill(child.processIdentifier, SIGKILL)
        child.waitUntilExit()
        #expect(blocked, "the run did not block (\(environment)): \(read("\(dir)/stderr.txt") ?? "")", sourceLocation: sourceLocation)
        return blocked
    }

    /// The output and dead letters as multisets, and the rows of both workers' databases.
    static func outcome(_ dir: String) -> CheckpointTests.Outcome {
        var got = CheckpointTests.outcome(dir)
        got.rows = (1...2).flatMap { w -> [String] in
            let r = runLua("""
                local db <close> = sql.open('\(dir)/rows\(w).db')
                local t = {}
                for r in db:rows("SELECT key, window FROM rows") do t[#t + 1] = r.key .. "=" .. tostring(r.window) end
                return table.concat(t, ",")
                """)
            return r.text.split(separator: ",").map(String.init)
        }.sorted()
        return got
    }

    /// Killed inside a stage of one worker, then inside a worker's flush before its
    /// commit, each time resumed with the same command (2 workers): the output, the dead
    /// letters and every worker's rows are those of an uninterrupted run with 2 workers,
    /// and the counts continue.
    @Test func killNineWithTwoWorkersThenResumeIsExactlyOnce() throws {
        // A worker may commit its batch while another is killed before its own commit:
        // each keeps the line it committed (README's pattern), per worker, and skips what
        // it already applied. Lines go to the same worker again (by their number).
        let env = ["SKIP_APPLIED": "1"]
        let reference = Self.setUp()
        let full = try runProcess(scopeluaPath, Self.command, directory: reference, environment: env)
        #expect(full.status == 0, "\(full.stderr)")
        let expected = Self.outcome(reference)
        #expect(expected.rows.count == expected.output.count)
        #expect(expected.output.contains { $0.contains("\"window\"") })

        let dir = Self.setUp()
        guard try Self.killWhenBlocked(in: dir, env.merging(["GATE_LINE": "1000"]) { $1 }) else { return }
        #expect(CheckpointTests.committedLine(dir) == 900)
        guard try Self.killWhenBlocked(in: dir, env.merging(["KILL_IN_FLUSH": "2"]) { $1 }) else { return }
        #expect(CheckpointTests.committedLine(dir) == 1200)
        let r = try runProcess(scopeluaPath, Self.command, directory: dir, environment: env)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("resuming from checkpoint state.db: in.jsonl after line 1200"), "\(r.stderr)")
        let got = Self.outcome(dir)
        CheckpointTests.expectSame(got, expected)
        #expect(Set(got.rows).count == got.rows.count)
        #expect(CheckpointTests.eventsLine(r.stderr) == CheckpointTests.eventsLine(full.stderr), "\(r.stderr)")

        // The checkpoint says how many workers made it: another number is refused.
        let other = try runProcess(scopeluaPath, CheckpointTests.command + ["--workers", "3"], directory: dir)
        #expect(other.status == 2)
        #expect(other.stderr.contains("it was made with --workers 2, this run has --workers 3: resume with --workers 2"), "\(other.stderr)")
    }

    /// timer.every in open fires in every worker (in that worker's state, while it waits
    /// for lines), and its events go through the stages after it.
    @Test func aTimerInOpenFiresInEveryWorker() throws {
        let dir = temporaryDirectory()
        write("""
            stage "tick" {
              open = function(ctx)
                ctx:own(timer.every(0.01, function()
                  local f <close> = assert(io.open("tick-" .. ctx.worker, "a"))
                  f:write(scope.current():path(), "\\n")
                end, "tick"))
              end,
              process = function(ctx, e) return e end,
            }
            pipeline "p" { "tick" }
            """, to: "job.lua", in: dir)
        let (child, stdin) = try Self.start(["run", "job.lua", "--input", "-", "--output", "none", "--workers", "3"], in: dir)
        defer { if child.isRunning { kill(child.processIdentifier, SIGKILL) } }
        stdin.write(Data(WorkerTests.events(10).utf8))
        for w in 1...3 {
            #expect(waitUntil { FileManager.default.fileExists(atPath: "\(dir)/tick-\(w)") }, "worker \(w)'s timer did not fire")
        }
        try stdin.close()
        child.waitUntilExit()
        #expect(child.terminationStatus == 0, "\(read("\(dir)/stderr.txt") ?? "")")
        #expect(read("\(dir)/tick-2")?.hasPrefix("run/p/worker2/tick/timer\n") == true, "\(read("\(dir)/tick-2") ?? "")")
    }
}
