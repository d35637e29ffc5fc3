import Foundation
import Testing
@testable import ScopeLua

/// Workers and delivery (issue 12): a graceful stop with 4 workers in the middle of a
/// stream, kill -9 and resume with 2 workers, timers that fire in every worker.
@Suite(.timeLimit(testTimeLimit)) struct WorkerDeliveryTests {
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
        try CheckpointTests.killWhenBlocked(in: dir, environment, command: command, sourceLocation: sourceLocation)
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

/// Crash isolation and aborts with workers (issue 12).
@Suite(.timeLimit(testTimeLimit)) struct WorkerCrashTests {
    static let job = """
        local function log(ctx, ...)
          local f <close> = assert(io.open("log-" .. ctx.worker .. ".txt", "a"))
          f:write(table.concat({...}, " "), "\\n")
        end
        stage "hog" {
          open = function(ctx) log(ctx, "open") end,
          process = function(ctx, e)
            if e.id == tonumber(os.getenv("HOG")) then
              local t = {}
              for i = 1, 1e9 do t[i] = ("x"):rep(100) .. i end
            end
            if e.id == tonumber(os.getenv("FAIL")) then error("no such user") end
            return e
          end,
          close = function(ctx, err) log(ctx, "close", tostring(err)) end,
          on_error = os.getenv("POLICY") or "dead_letter",
        }
        pipeline "p" { "hog" }
        """

    static let crash = "worker 2 crashed: not enough memory (the state's --memory-limit, 64 MiB) in stage 'hog'; its state is replaced by a fresh one"

    /// Line 300 goes to worker 2 (lines 257...512), whose stage exhausts its state's memory:
    /// the worker's stages close with the crash, a fresh state opens them again and takes
    /// the rest of its lines; the event is dead-lettered with the crash as its error; the
    /// other worker goes on; the run completes.
    @Test func aWorkerThatRunsOutOfMemoryIsReplacedAndTheRunCompletes() throws {
        let dir = temporaryDirectory()
        write(Self.job, to: "job.lua", in: dir)
        write(WorkerTests.events(600), to: "in.jsonl", in: dir)
        let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--dead-letter", "dead.jsonl",
                                              "--workers", "2", "--memory-limit", "64MB", "--report"],
                               directory: dir, environment: ["HOG": "300"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(read("\(dir)/log-1.txt") == "open\nclose nil\n")
        #expect(read("\(dir)/log-2.txt") == "open\nclose \(Self.crash)\nopen\nclose nil\n")
        #expect(WorkerTests.ids(read("\(dir)/out.jsonl") ?? "") == Array(1...299) + Array(301...600))
        let dead = read("\(dir)/dead.jsonl") ?? ""
        #expect(dead.contains("\"line\":300"), "\(dead)")
        #expect(dead.contains("\"error\":\"\(Self.crash)\""), "\(dead)")
        #expect(r.stderr.contains("  events     read 600  emitted 599  filtered 0  skipped 0  dead-lettered 1  rejected 0"), "\(r.stderr)")
        #expect(r.stderr.contains("  worker 2   read 256  busy "), "\(r.stderr)")
        #expect(r.stderr.contains("restarts 1  resources acquired"), "\(r.stderr)")
    }

    /// Without workers the same error follows the policy and the state goes on.
    @Test func withoutWorkersRunningOutOfMemoryIsTheStagesError() throws {
        let dir = temporaryDirectory()
        write(Self.job, to: "job.lua", in: dir)
        write(WorkerTests.events(100), to: "in.jsonl", in: dir)
        let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--dead-letter", "dead.jsonl",
                                              "--memory-limit", "64MB"],
                               directory: dir, environment: ["HOG": "77"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(read("\(dir)/log-1.txt") == "open\nclose nil\n")
        #expect((read("\(dir)/dead.jsonl") ?? "").contains("\"error\":\"not enough memory\""))
        #expect(WorkerTests.ids(read("\(dir)/out.jsonl") ?? "").count == 99)
    }

    /// An abort in one worker stops the run: the other workers stop between events and
    /// close with the abort as their error, nothing is committed, exit 1; the counts add
    /// up (what was dispatched and not finished is in flight).
    @Test func anAbortInOneWorkerStopsTheRun() throws {
        let dir = temporaryDirectory()
        write(Self.job, to: "job.lua", in: dir)
        write(WorkerTests.events(3000), to: "in.jsonl", in: dir)
        let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--workers", "3", "--report"],
                               directory: dir, environment: ["FAIL": "600", "POLICY": "abort"])
        #expect(r.status == 1, "\(r.stderr)")
        let abort = "pipeline 'p' aborted: stage 'hog' failed on line 600 (id 600): job.lua:12: no such user"
        #expect(r.stderr.contains("scopelua: \(abort)"), "\(r.stderr)")
        // Line 600 is worker 3's (513...768): it closes with the abort; the others with the stop.
        #expect(read("\(dir)/log-3.txt")?.hasPrefix("open\nclose \(abort)") == true, "\(read("\(dir)/log-3.txt") ?? "")")
        for w in [1, 2] {
            #expect(read("\(dir)/log-\(w).txt")?.hasPrefix("open\nclose the run stopped: \(abort)") == true, "\(read("\(dir)/log-\(w).txt") ?? "")")
        }
        let events = r.stderr.split(separator: "\n").first { $0.hasPrefix("  events") }.map(String.init) ?? ""
        let numbers = events.split(separator: " ").compactMap { Int($0) }
        // read = emitted + filtered + skipped + dead-lettered + rejected + retried(0) + in flight
        #expect(numbers.count >= 8, "\(events)")
        if numbers.count >= 8 {
            #expect(numbers[0] == numbers[1] + numbers[2] + numbers[3] + numbers[4] + numbers[5] + numbers[7], "\(events)")
        }
        #expect(events.contains("in-flight"), "\(events)")
    }
}

/// A forced stop reaches a worker stuck in Lua (its state is a stop target of its own).
@Suite(.timeLimit(testTimeLimit)) struct WorkerForcedStopTests {
    /// SIGTERM, then the grace period runs out (two signals sent back to back may reach
    /// the process as one): the forced stop interrupts the worker spinning in Lua (even
    /// through pcall), the run ends with 143.
    @Test func theForcedStopReachesAWorkerStuckInALoop() throws {
        let dir = temporaryDirectory()
        write("""
            stage "spin" {
              process = function(ctx, e)
                if e.id == 70 then
                  local f <close> = assert(io.open("reached", "w"))
                  f:close()
                  while true do pcall(function() while true do end end) end
                end
                return e
              end,
            }
            pipeline "p" { "spin" }
            """, to: "job.lua", in: dir)
        write(WorkerTests.events(200), to: "in.jsonl", in: dir)
        let child = try CheckpointTests.start(["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--workers", "2", "--grace", "1"],
                                              in: dir)
        defer { if child.isRunning { kill(child.processIdentifier, SIGKILL) } }
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(dir)/reached") })
        kill(child.processIdentifier, SIGTERM)
        #expect(waitUntil { !child.isRunning })
        child.waitUntilExit()
        let stderr = read("\(dir)/stderr.txt") ?? ""
        #expect(child.terminationStatus == 143, "\(stderr)")
        #expect(stderr.contains("stage 'spin': 1 error, the first on line 70 (id 70): stopped by SIGTERM (forced)"), "\(stderr)")
        #expect(stderr.contains("stop forced"), "\(stderr)")
        #expect(!stderr.contains("did not end within the grace period"), "\(stderr)")
    }
}

/// --follow with workers: a file that appears later, then is rotated; what was written
/// reaches the output while the input is idle; SIGTERM ends the run (143).
@Suite(.timeLimit(testTimeLimit)) struct WorkerFollowTests {
    @Test func followingALateAndRotatedFileWithWorkers() throws {
        let dir = temporaryDirectory()
        write("stage 's' { process = function(ctx, e) e.w = ctx.worker return e end }\npipeline 'p' { 's' }\n", to: "job.lua", in: dir)
        let child = try CheckpointTests.start(["run", "job.lua", "--input", "in.jsonl", "--follow", "--output", "out.jsonl", "--workers", "2"], in: dir)
        defer { if child.isRunning { kill(child.processIdentifier, SIGKILL) } }
        #expect(waitUntil { (read("\(dir)/stderr.txt") ?? "").contains("waiting for input in.jsonl to appear") })
        write(WorkerTests.events(300), to: "in.jsonl", in: dir)
        #expect(waitUntil { WorkerTests.ids(read("\(dir)/out.jsonl") ?? "").count == 300 }, "\(read("\(dir)/stderr.txt") ?? "")")
        try FileManager.default.moveItem(atPath: "\(dir)/in.jsonl", toPath: "\(dir)/in.jsonl.1")
        write((301...310).map { "{\"id\":\($0)}\n" }.joined(), to: "in.jsonl", in: dir)
        #expect(waitUntil { WorkerTests.ids(read("\(dir)/out.jsonl") ?? "").count == 310 })
        kill(child.processIdentifier, SIGTERM)
        child.waitUntilExit()
        #expect(child.terminationStatus == 143, "\(read("\(dir)/stderr.txt") ?? "")")
        #expect(WorkerTests.ids(read("\(dir)/out.jsonl") ?? "") == Array(1...310))
        #expect((read("\(dir)/out.jsonl") ?? "").contains("\"w\":2"))
    }
}
