import Foundation
import Testing
@testable import ScopeLua

/// `--workers N` (issue 12): each worker its own Lua state, stages opened, flushed and
/// closed per worker; the output in input order (or completion order); the counts of
/// the run summed over the workers; stops, checkpoints and descriptors as with one.
@Suite(.timeLimit(testTimeLimit)) struct WorkerTests {
    /// A worker whose flush fails at a barrier says why in the acknowledgement itself:
    /// the coordinator may take it before the worker's `failed` message (posted just
    /// after), and the run's error (a serve request's 503) must still be the flush's
    /// error, not a bare "a worker's barrier failed" (a race CI hit).
    @Test func aFailedBarriersAcknowledgementSaysWhy() throws {
        let rt = Runtime()
        defer { rt.close() }
        _ = try rt.execute("""
            stage "s" {
              process = function(ctx, e) return e end,
              flush = function(ctx) error("flush broke") end,
            }
            pipeline "p" { "s" }
            """, name: "=job.lua")
        let definition = try #require(rt.pipelines.pipelines["p"])
        let inbox = Inbox()
        let outbox = try #require(Outbox())
        let link = WorkerLink(number: 1, workers: 2, inbox: inbox, outbox: outbox, hasDeadLetter: false, resumed: nil)
        var options = PipelineRun.Options()
        options.input = .channel(link)
        options.output = .channel
        let line = Array("{\"a\":1}".utf8)
        inbox.send(.batch(WorkBatch(bytes: line, items: [.init(seq: 0, line: 1, start: 0, end: line.count)])))
        inbox.send(.barrier(reason: .checkpoint, lastSeq: 0, committing: 1))
        let run = PipelineRun(rt, definition, options: options)
        _ = run.execute(rt.L, parent: rt.root)
        run.releaseReferences(rt.L)
        var failures: [String?] = []
        for case .barrierDone(_, let failure, _) in outbox.take() { failures.append(failure) }
        #expect(failures.count == 1)
        let failure = try #require(failures.first ?? nil)
        #expect(failure.hasPrefix("pipeline 'p' aborted: stage 's' failed in flush (checkpoint): job.lua:3: flush broke\n"), "\(failure)")
    }

    /// `n` events: ids 1...n, users u0...u6.
    static func events(_ n: Int) -> String {
        (1...n).map { "{\"id\":\($0),\"user\":{\"id\":\"u\($0 % 7)\"}}\n" }.joined()
    }

    /// Each worker logs its hooks to `log-<worker>.txt`: open with its scope path, every
    /// event, flush with the reason, close with the error.
    static let logging = """
        local function log(ctx, ...)
          local f <close> = assert(io.open("log-" .. ctx.worker .. ".txt", "a"))
          f:write(table.concat({...}, " "), "\\n")
        end
        stage "tag" {
          open = function(ctx) log(ctx, "open", scope.current():path()) end,
          process = function(ctx, e)
            log(ctx, "event", e.id, e.user.id, scope.current():path())
            e.worker = ctx.worker
            return e
          end,
          flush = function(ctx, why) log(ctx, "flush", why) end,
          close = function(ctx, err) log(ctx, "close", tostring(err)) end,
        }
        pipeline "p" { "tag", partition_by = os.getenv("PARTITION") }
        """

    static func logLines(_ dir: String, worker: Int) -> [String] {
        (read("\(dir)/log-\(worker).txt") ?? "").split(separator: "\n").map(String.init)
    }

    static func ids(_ output: String) -> [Int] {
        output.split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["id"] as? Int
        }
    }

    @Test func everyWorkerOpensFlushesAndClosesItsOwnStages() throws {
        let dir = temporaryDirectory()
        write(Self.logging, to: "job.lua", in: dir)
        write(Self.events(1000), to: "in.jsonl", in: dir)
        let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--workers", "4", "--report"],
                               directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        var seen = 0
        for w in 1...4 {
            let lines = Self.logLines(dir, worker: w)
            let hooks = lines.filter { !$0.hasPrefix("event ") }
            #expect(hooks == ["open run/p/worker\(w)/tag", "flush end", "close nil"], "worker \(w): \(hooks)")
            let events = lines.filter { $0.hasPrefix("event ") }
            #expect(!events.isEmpty, "worker \(w) got no event")
            #expect(events.allSatisfy { $0.hasSuffix(" run/p/worker\(w)/tag/task") })
            seen += events.count
        }
        #expect(seen == 1000)
        // Input order by default, each event once.
        let out = read("\(dir)/out.jsonl") ?? ""
        #expect(Self.ids(out) == Array(1...1000))
        #expect(r.stderr.contains("  events     read 1000  emitted 1000  filtered 0  skipped 0  dead-lettered 0  rejected 0"), "\(r.stderr)")
        for w in 1...4 { #expect(r.stderr.contains("  worker \(w)   read "), "\(r.stderr)") }
    }

    /// Without workers ctx.worker is 1 and the scope path has no worker level.
    @Test func oneStateHasWorkerOneAndNoWorkerScope() throws {
        let dir = temporaryDirectory()
        write(Self.logging, to: "job.lua", in: dir)
        write(Self.events(3), to: "in.jsonl", in: dir)
        let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--output", "none"], directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(Self.logLines(dir, worker: 1).first == "open run/p/tag")
    }

    /// partition_by = "user.id": every user's events reach one worker, in input order.
    @Test func aPartitionKeyKeepsEachKeyOnOneWorkerInOrder() throws {
        let dir = temporaryDirectory()
        write(Self.logging, to: "job.lua", in: dir)
        write(Self.events(700), to: "in.jsonl", in: dir)
        let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--workers", "3"],
                               directory: dir, environment: ["PARTITION": "user.id"])
        #expect(r.status == 0, "\(r.stderr)")
        var workerOf: [String: Int] = [:]
        var total = 0
        for w in 1...3 {
            var last: [String: Int] = [:]
            for line in Self.logLines(dir, worker: w) where line.hasPrefix("event ") {
                let parts = line.split(separator: " ")
                let id = Int(parts[1]) ?? 0, user = String(parts[2])
                #expect(workerOf[user, default: w] == w, "\(user) on workers \(workerOf[user] ?? 0) and \(w)")
                workerOf[user] = w
                #expect(id > last[user, default: 0], "\(user): \(id) after \(last[user, default: 0])")
                last[user] = id
                total += 1
            }
        }
        #expect(total == 700)
        #expect(workerOf.count == 7)
        #expect(Set(workerOf.values).count > 1, "every user on one worker: \(workerOf)")
        #expect(Self.ids(read("\(dir)/out.jsonl") ?? "") == Array(1...700))
    }

    /// partition_by and ordered are checked when the pipeline is registered.
    @Test func partitionByAndOrderedAreCheckedAtRegistration() throws {
        for (fields, message) in [
            ("partition_by = 'a..b'", "pipeline 'p': partition_by \"a..b\" has an empty name between two dots"),
            ("partition_by = ''", "pipeline 'p': partition_by is empty: it names a field (\"user\") or a path through nested objects (\"user.id\")"),
            ("partition_by = 3", "pipeline 'p': partition_by must be a string naming a field (\"user\" or \"user.id\"), got a number"),
            ("ordered = 'yes'", "pipeline 'p': ordered must be true (output in input order) or false (in completion order), got a string"),
        ] {
            let r = runLua("stage 's' { process = function(ctx, e) return e end }\nlocal ok, e = pcall(pipeline, 'p', { 's', \(fields) }) return e")
            #expect(r.text.contains(message), "\(fields): \(r.text)")
        }
    }

    /// A job whose worker 1 waits at its first event until `go` exists, and whose
    /// worker 2 says when it has finished its last line (512: it gets lines 257...512 of
    /// 600; lines go to workers in blocks of 256).
    static let slowFirst = """
        local function exists(p) local f = io.open(p) if f then f:close() end return f ~= nil end
        local function touch(p) local f <close> = assert(io.open(p, "w")) end
        stage "s" {
          process = function(ctx, e)
            if e.id == 1 then
              touch("waiting")
              while not exists("go") do timer.sleep(0.005) end
            end
            if e.id == 512 then touch("worker2-done") end
            return e
          end,
        }
        pipeline "p" { "s", ordered = os.getenv("ORDERED") ~= "0" }
        """

    /// Ordered, the output is in input order however long line 1 takes; unordered,
    /// worker 2's lines are written while worker 1 still waits at line 1.
    @Test(arguments: [true, false]) func orderedAndUnorderedOutput(ordered: Bool) throws {
        let dir = temporaryDirectory()
        write(Self.slowFirst, to: "job.lua", in: dir)
        write(Self.events(600), to: "in.jsonl", in: dir)
        let child = Process()
        child.executableURL = URL(fileURLWithPath: scopeluaPath)
        child.arguments = ["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--workers", "2"]
        child.currentDirectoryURL = URL(fileURLWithPath: dir)
        child.environment = ProcessInfo.processInfo.environment.merging(["ORDERED": ordered ? "1" : "0"]) { $1 }
        child.standardError = FileHandle.nullDevice
        try child.run()
        defer { if child.isRunning { kill(child.processIdentifier, SIGKILL) } }
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(dir)/waiting") })
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(dir)/worker2-done") })
        if !ordered {
            // Written (and flushed) while line 1 is still in worker 1's stage.
            #expect(waitUntil { Self.ids(read("\(dir)/out.jsonl") ?? "").count >= 256 })
        }
        write("", to: "go", in: dir)
        child.waitUntilExit()
        #expect(child.terminationStatus == 0)
        let ids = Self.ids(read("\(dir)/out.jsonl") ?? "")
        #expect(ids.sorted() == Array(1...600))
        if ordered {
            #expect(ids == Array(1...600))
        } else {
            #expect(ids.first != 1, "unordered output waited for line 1: \(ids.prefix(5))")
        }
    }

    /// Every policy across workers: the counts add up for the run, and they are those of
    /// the same run in one state.
    @Test func theCountsOfTheRunAddUpAcrossWorkers() throws {
        let dir = temporaryDirectory()
        write("""
            stage "filter" { process = function(ctx, e) if e.id % 5 == 0 then return nil end return e end }
            stage "skipper" { process = function(ctx, e) if e.id % 7 == 0 then error("seven") end return e end, on_error = "skip" }
            stage "dead" { process = function(ctx, e) if e.id % 11 == 0 then error("eleven") end return e end, on_error = "dead_letter" }
            stage "retry" {
              process = function(ctx, e)
                if e.id % 13 == 0 then error("thirteen") end
                if e.id % 3 == 0 then ctx:emit({ id = -e.id }) end
                return e
              end,
              on_error = { retry = 1, ["then"] = "dead_letter" },
            }
            pipeline "p" { "filter", "skipper", "dead", "retry" }
            """, to: "job.lua", in: dir)
        let input = (1...997).map { $0 % 101 == 0 ? "broken \($0)\n" : "{\"id\":\($0)}\n" }.joined()
        write(input, to: "in.jsonl", in: dir)
        func run(_ workers: String) throws -> (ProcessResult, String, String) {
            let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--output", "out-\(workers).jsonl",
                                                  "--dead-letter", "dead-\(workers).jsonl", "--workers", workers, "--report"], directory: dir)
            return (r, read("\(dir)/out-\(workers).jsonl") ?? "", read("\(dir)/dead-\(workers).jsonl") ?? "")
        }
        let (one, oneOut, oneDead) = try run("1")
        let (four, fourOut, fourDead) = try run("4")
        #expect(one.status == 0 && four.status == 0, "\(four.stderr)")
        let events = { (r: ProcessResult) in r.stderr.split(separator: "\n").filter { $0.hasPrefix("  events") || $0.hasPrefix("  fan-out") } }
        #expect(events(one) == events(four), "\(four.stderr)")
        #expect(events(four).first?.contains("read 997  emitted ") == true)
        // The same lines, in the same order; the same dead letters (their lines included).
        #expect(oneOut == fourOut)
        let deadLines = { (text: String) in
            text.split(separator: "\n").map { line -> String in
                let o = (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]) ?? [:]
                return "\(o["line"] ?? "-") \(o["stage"] ?? "input") \(o["error"] ?? "")"
            }
        }
        #expect(deadLines(oneDead) == deadLines(fourDead))
        #expect(deadLines(fourDead).contains("101 input not valid JSON: Expected value but found invalid token at character 1"), "\(deadLines(fourDead).prefix(3))")
        // Per stage as in one state.
        let stageLine = { (r: ProcessResult, name: String) in
            r.stderr.split(separator: "\n").first { $0.contains(" \(name) ") && $0.hasPrefix("             ") }?.split(separator: " ").prefix(3)
        }
        for name in ["filter", "skipper", "dead", "retry"] {
            #expect(stageLine(one, name) == stageLine(four, name), "\(name)")
        }
    }

    /// shared.dict: one dictionary for every worker of the run.
    @Test func aSharedDictionaryIsTheRunsNotTheWorkers() throws {
        let dir = temporaryDirectory()
        write("""
            stage "count" {
              open = function(ctx) ctx.state.d = shared.dict("counts") end,
              process = function(ctx, e)
                ctx.state.d:incr("events")
                if ctx.state.d:add("user:" .. e.user.id, ctx.worker) then ctx.state.d:incr("users") end
                return e
              end,
              close = function(ctx)
                local d = ctx.state.d
                if d:incr("closed") == 3 then
                  local f <close> = assert(io.open("totals.txt", "w"))
                  f:write(d:get("events"), " ", d:get("users"))
                end
              end,
            }
            pipeline "p" { "count" }
            """, to: "job.lua", in: dir)
        write(Self.events(999), to: "in.jsonl", in: dir)
        let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--output", "none", "--workers", "3"], directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(read("\(dir)/totals.txt") == "999 7")
    }

    /// A run with 4 workers, each with a database and a file open in its stage, holds no
    /// descriptor more after it ended than before (the process's own count, --report).
    @Test func descriptorsAreBackAfterARunWithFourWorkers() throws {
        let dir = temporaryDirectory()
        write("""
            stage "db" {
              open = function(ctx)
                ctx.state.db = assert(sql.open("w" .. ctx.worker .. ".db"))
                ctx.state.db:exec("CREATE TABLE IF NOT EXISTS t(id INTEGER)")
                ctx.state.log = assert(io.open("w" .. ctx.worker .. ".log", "w"))
              end,
              process = function(ctx, e)
                ctx.state.db:exec("INSERT INTO t VALUES (?)", e.id)
                ctx.state.log:write(e.id, "\\n")
                return e
              end,
            }
            pipeline "p" { "db" }
            """, to: "job.lua", in: dir)
        write(Self.events(400), to: "in.jsonl", in: dir)
        let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--workers", "4", "--report"],
                               directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let line = r.stderr.split(separator: "\n").first { $0.contains("descriptors open") }.map(String.init) ?? ""
        let numbers = line.split(separator: " ").compactMap { Int($0) }
        #expect(numbers.count == 2 && numbers[0] == numbers[1], "\(line)")
        #expect(r.stderr.contains("leaked 0"), "\(r.stderr)")
    }

    /// The script's top level runs in every worker too: with the events on stdout, what
    /// a worker's copy prints goes to stderr (the main state's print came before the events).
    @Test func aWorkersCopyOfTheScriptPrintsToStderrWhenTheEventsGoToStdout() throws {
        let dir = temporaryDirectory()
        write("print('loading', 1)\nstage 's' { process = function(ctx, e) return e end }\npipeline 'p' { 's' }\n", to: "job.lua", in: dir)
        write(Self.events(3), to: "in.jsonl", in: dir)
        let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--workers", "2"], directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.hasPrefix("loading\t1\n{"), "\(r.stdout)")
        #expect(Self.ids(r.stdout) == [1, 2, 3], "\(r.stdout)")
        #expect(r.stderr == "loading\t1\nloading\t1\n", "\(r.stderr)")
    }

    @Test func workersIsCheckedOnTheCommandLine() throws {
        let dir = temporaryDirectory()
        write(Self.logging, to: "job.lua", in: dir)
        for (args, message) in [
            (["--workers", "0"], "--workers must be a number from 1 to 63, or 'auto' for one per core (got '0')"),
            (["--workers", "64"], "--workers must be a number from 1 to 63, or 'auto' for one per core (got '64')"),
            (["--workers", "2", "--input", "in.jsonl", "--replay"], "--workers cannot be used with --replay"),
            (["--memory-limit", "10"], "--memory-limit must be a size of at least 1MB: bytes, or a number with KB, MB or GB (got '10')"),
            (["--memory-limit", "lots"], "--memory-limit must be a size of at least 1MB: bytes, or a number with KB, MB or GB (got 'lots')"),
            (["--memory-limit", "1e30GB"], "--memory-limit must be a size of at least 1MB: bytes, or a number with KB, MB or GB (got '1e30GB')"),
        ] {
            var full = ["run", "job.lua"] + args
            if !args.contains("--input") { full += ["--input", "in.jsonl"] }
            let r = try runProcess(scopeluaPath, full, directory: dir)
            #expect(r.status == 2, "\(args)")
            #expect(r.stderr.contains(message), "\(r.stderr)")
        }
        write(Self.events(5), to: "in.jsonl", in: dir)
        let auto = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--output", "none", "--workers", "auto"], directory: dir)
        #expect(auto.status == 0, "\(auto.stderr)")
    }

    /// In `scopelua serve`, the rest of a request cut where a take ended goes to the worker
    /// that has its beginning, however busy; a new request to the one with the fewest lines.
    @Test func theRestOfACutRequestGoesWhereItsBeginningWent() throws {
        let outbox = try #require(Outbox())
        let p = ParallelState(count: 2, inboxes: [Inbox(), Inbox()], outbox: outbox, console: Console(),
                              window: ReorderWindow(capacity: 4096), batchSize: 256, ordered: false, partition: nil)
        let piece = { (continues: Bool) in IngestChunk(bytes: [], ranges: [0..<0], continues: continues) }
        #expect(PipelineRun.ingestWorker(p, for: piece(false)) == 0)
        p.outstanding[0] = 256
        #expect(PipelineRun.ingestWorker(p, for: piece(true)) == 0)
        #expect(PipelineRun.ingestWorker(p, for: piece(false)) == 1)
        #expect(PipelineRun.ingestWorker(p, for: piece(true)) == 1)
    }
}
