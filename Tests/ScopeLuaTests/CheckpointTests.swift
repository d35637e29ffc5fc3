import Foundation
import Testing
@testable import ScopeLua

/// Barriers, flush hooks and checkpoints (issue 11): kill -9 at points the tests choose,
/// then the same command again, must leave the output, the dead letters and a SQLite
/// table exactly as an uninterrupted run does. Children block where the test wants them
/// (a marker file says they got there) and are killed there: nothing waits on a clock.
@Suite(.timeLimit(testTimeLimit)) struct CheckpointTests {
    /// The pipeline the kill tests run. Every kind of event and sink is there: filtered
    /// events, dead letters (stage errors and rejected lines), events emitted in process
    /// and in flush, and a stage that inserts every event into SQLite and commits in
    /// flush. Environment variables choose where a run blocks (writing `reached`):
    ///   GATE_LINE=n             in process, at the event with id n
    ///   KILL_AFTER_BARRIER=n    in process, at the first event after this process's n-th barrier (the commit is done)
    ///   KILL_IN_FLUSH=n         in the store's n-th flush, before its commit
    ///   BLOCK_AFTER_STORE=n     in a later stage's n-th flush (the store has committed, the checkpoint not yet)
    ///   WAIT_FOR_GO=n           at the event with id n until a file `go` exists
    ///   IDEMPOTENT=1            the store replaces rows by key instead of inserting
    ///   SKIP_APPLIED=1          the store (plain INSERT) keeps the line it committed (ctx.committing) in its own
    ///                           table and skips the write of an event at or below it (ctx.line): README's pattern
    ///   NO_WINDOW=1             the window stage does not emit (its windows depend on where barriers fall)
    static let job = """
        local env = os.getenv
        local function exists(p) local f = io.open(p) if f then f:close() end return f ~= nil end
        local function touch(p) local f = assert(io.open(p, "w")) f:close() end
        local function block() touch("reached") while true do timer.sleep(0.01) end end

        stage "gate" {
          open = function(ctx) ctx.state.flushes = 0 end,
          process = function(ctx, e)
            if ctx.state.block_next or tonumber(env("GATE_LINE")) == e.id then block() end
            if tonumber(env("WAIT_FOR_GO")) == e.id then
              touch("reached")
              while not exists("go") do timer.sleep(0.01) end
            end
            return e
          end,
          flush = function(ctx, why)
            ctx.state.flushes = ctx.state.flushes + 1
            if tonumber(env("KILL_AFTER_BARRIER")) == ctx.state.flushes then ctx.state.block_next = true end
          end,
        }

        stage "shape" {
          process = function(ctx, e)
            if e.id % 5 == 0 then return nil end
            if e.id % 11 == 0 then error("eleven") end
            if e.id % 7 == 0 then ctx:emit({ derived = e.id, key = "d" .. e.id }) end
            e.key = "e" .. e.id
            return e
          end,
          on_error = "dead_letter",
        }

        stage "window" {
          open = function(ctx) ctx.state.n = 0 end,
          process = function(ctx, e)
            if ctx.state.n == 0 then ctx.state.first = e.key end
            ctx.state.n = ctx.state.n + 1
            return e
          end,
          flush = function(ctx, why)
            if ctx.state.n > 0 and not env("NO_WINDOW") then
              ctx:emit({ window = ctx.state.n, key = "w" .. ctx.state.first })
            end
            ctx.state.n = 0
          end,
        }

        stage "store" {
          open = function(ctx)
            local s = ctx.state
            s.db = assert(sql.open("rows.db"))
            if env("IDEMPOTENT") then
              s.db:exec("CREATE TABLE IF NOT EXISTS rows(key TEXT PRIMARY KEY, window INTEGER)")
              s.insert = s.db:prepare("INSERT OR REPLACE INTO rows VALUES (?, ?)")
            else
              s.db:exec("CREATE TABLE IF NOT EXISTS rows(key TEXT, window INTEGER)")  -- a duplicate would show
              s.insert = s.db:prepare("INSERT INTO rows VALUES (?, ?)")
            end
            s.tx, s.flushes = s.db:transaction(), 0
            if env("SKIP_APPLIED") then
              s.db:exec("CREATE TABLE IF NOT EXISTS applied(id INTEGER PRIMARY KEY, line INTEGER NOT NULL)")
              s.mark = s.db:prepare("INSERT OR REPLACE INTO applied VALUES (1, ?)")
              local row = s.db:first("SELECT line FROM applied")
              s.applied = ctx.resumed and row and row.line or 0
            end
          end,
          process = function(ctx, e)
            local s = ctx.state
            if s.mark and ctx.line and ctx.line <= s.applied then return e end  -- in the last commit already
            s.insert:exec(e.key, e.window)
            return e
          end,
          flush = function(ctx, why)
            local s = ctx.state
            s.flushes = s.flushes + 1
            if tonumber(env("KILL_IN_FLUSH")) == s.flushes then block() end
            if s.mark then s.mark:exec(ctx.committing) end
            s.tx:commit()
            s.tx = ctx:own(s.db:transaction())
          end,
        }

        stage "audit" {
          open = function(ctx) ctx.state.flushes = 0 end,
          process = function(ctx, e) return e end,
          flush = function(ctx, why)
            ctx.state.flushes = ctx.state.flushes + 1
            if tonumber(env("BLOCK_AFTER_STORE")) == ctx.state.flushes then block() end
          end,
        }

        pipeline "p" { "gate", "shape", "window", "store", "audit" }
        """

    /// 2000 lines: events with ids 1...2000, every 97th line not JSON (a rejected line).
    static let input: String = (1...2000).map { i in
        i % 97 == 0 ? "not json \(i)\n" : "{\"id\":\(i),\"kind\":\"k\(i % 3)\"}\n"
    }.joined()

    static let command = ["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--dead-letter", "dead.jsonl",
                          "--checkpoint", "state.db", "--checkpoint-every", "300", "--report"]

    /// A directory with the job and its input.
    static func setUp() -> String {
        let dir = temporaryDirectory()
        write(job, to: "job.lua", in: dir)
        write(input, to: "in.jsonl", in: dir)
        return dir
    }

    /// Starts scopelua in `dir` (stdout and stderr to files there).
    static func start(_ arguments: [String], in dir: String, environment: [String: String] = [:]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: scopeluaPath)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: dir)
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        _ = FileManager.default.createFile(atPath: "\(dir)/stderr.txt", contents: nil)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: "\(dir)/stderr.txt")
        process.standardInput = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Runs the command until it blocks where `environment` says (the marker file
    /// `reached` appears), then kills it with SIGKILL. Returns whether it got there.
    static func killWhenBlocked(in dir: String, _ environment: [String: String], command: [String] = command,
                                sourceLocation: SourceLocation = #_sourceLocation) throws -> Bool {
        try? FileManager.default.removeItem(atPath: "\(dir)/reached")
        let child = try start(command, in: dir, environment: environment)
        let reached = waitUntil { FileManager.default.fileExists(atPath: "\(dir)/reached") || !child.isRunning }
        let blocked = reached && child.isRunning
        kill(child.processIdentifier, SIGKILL)
        child.waitUntilExit()
        #expect(blocked, "the run did not block (\(environment)): \(read("\(dir)/stderr.txt") ?? "")", sourceLocation: sourceLocation)
        return blocked
    }

    /// What a finished run left: the output and the dead letters as multisets of JSON
    /// values (keys sorted; a dead letter without its `time`), the rows of the store.
    struct Outcome: Equatable {
        var output: [String]
        var deadLetters: [String]
        var rows: [String]
    }

    static func normalized(_ text: String?, dropping: Set<String> = []) -> [String] {
        (text ?? "").split(separator: "\n").map { line -> String in
            guard var object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                return "not an object: \(line)"
            }
            for key in dropping { object.removeValue(forKey: key) }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            return String(decoding: data, as: UTF8.self)
        }.sorted()
    }

    static func outcome(_ dir: String) -> Outcome {
        let rows = runLua("""
            local db <close> = sql.open('\(dir)/rows.db')
            local t = {}
            for r in db:rows("SELECT key, window FROM rows ORDER BY key, window") do t[#t + 1] = r.key .. "=" .. tostring(r.window) end
            return table.concat(t, ",")
            """)
        return Outcome(output: normalized(read("\(dir)/out.jsonl")),
                       deadLetters: normalized(read("\(dir)/dead.jsonl"), dropping: ["time"]),
                       rows: rows.text.split(separator: ",").map(String.init))
    }

    /// `got` is `expected` (as multisets); a failure names what differs, not everything.
    static func expectSame(_ got: Outcome, _ expected: Outcome, sourceLocation: SourceLocation = #_sourceLocation) {
        for (what, g, e) in [("output", got.output, expected.output), ("dead letters", got.deadLetters, expected.deadLetters),
                             ("rows", got.rows, expected.rows)] where g != e {
            var surplus = g, missing: [String] = []
            for item in e {
                if let i = surplus.firstIndex(of: item) { surplus.remove(at: i) } else { missing.append(item) }
            }
            Issue.record("\(what): \(g.count) instead of \(e.count); \(surplus.count) extra, e.g. \(surplus.prefix(3)); \(missing.count) missing, e.g. \(missing.prefix(3))",
                         sourceLocation: sourceLocation)
        }
    }

    /// The committed input line of a checkpoint file (nil when none is committed).
    static func committedLine(_ dir: String) -> Int? {
        let r = runLua("""
            local db <close> = sql.open('\(dir)/state.db', { readonly = true })
            local row = db:first("SELECT input_line FROM checkpoint")
            return row and row.input_line
            """)
        if case .integer(let n)? = r.values.first { return Int(n) }
        return nil
    }

    /// The report's `events` line.
    static func eventsLine(_ stderr: String) -> String? {
        stderr.split(separator: "\n").first { $0.hasPrefix("  events ") }.map(String.init)
    }

    /// The same job run once without interruption, in a directory of its own.
    static func reference(_ environment: [String: String] = [:]) throws -> (Outcome, ProcessResult) {
        let dir = setUp()
        let r = try runProcess(scopeluaPath, command, directory: dir, environment: environment)
        #expect(r.status == 0, "\(r.stderr)")
        return (outcome(dir), r)
    }

    // MARK: - kill -9

    /// Killed inside a stage, inside a flush hook (before the stage's commit) and right
    /// after a checkpoint commit, resumed each time with the same command: the output,
    /// the dead letters, the rows and the counts are those of an uninterrupted run.
    @Test func killNineAtSeveralPointsThenResumeIsExactlyOnce() throws {
        let (expected, full) = try Self.reference()
        #expect(expected.rows.count == expected.output.count)
        #expect(expected.output.contains { $0.contains("\"window\"") })
        #expect(!expected.deadLetters.isEmpty)
        let dir = Self.setUp()

        // 1. Inside a stage, at line 1000: barriers committed at lines 300, 600 and 900.
        guard try Self.killWhenBlocked(in: dir, ["GATE_LINE": "1000"]) else { return }
        #expect(Self.committedLine(dir) == 900)

        // 2. Resumed at 900, killed in the store's second flush (at line 1500), before its
        //    commit: the checkpoint stays at 1200.
        guard try Self.killWhenBlocked(in: dir, ["KILL_IN_FLUSH": "2"]) else { return }
        #expect(Self.committedLine(dir) == 1200)
        #expect(read("\(dir)/stderr.txt")?.contains("scopelua: resuming from checkpoint state.db: in.jsonl after line 900 (byte ") == true)

        // 3. Resumed at 1200, killed at the first event after its second barrier (1800):
        //    the commit is done.
        guard try Self.killWhenBlocked(in: dir, ["KILL_AFTER_BARRIER": "2"]) else { return }
        #expect(Self.committedLine(dir) == 1800)

        // 4. The same command again, to the end.
        let r = try runProcess(scopeluaPath, Self.command, directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("resuming from checkpoint state.db: in.jsonl after line 1800"), "\(r.stderr)")
        #expect(r.stderr.contains("  checkpoint state.db: resumed after line 1800 (byte "), "\(r.stderr)")
        #expect(r.stderr.contains("committed after line 2000 (byte \(Self.input.utf8.count)), 7 barriers in all"), "\(r.stderr)")
        #expect(Self.committedLine(dir) == 2000)
        let got = Self.outcome(dir)
        Self.expectSame(got, expected)
        #expect(Set(got.rows).count == got.rows.count)
        // The counts continue across the runs.
        #expect(Self.eventsLine(r.stderr) == Self.eventsLine(full.stderr), "\(r.stderr)")
        #expect(Self.eventsLine(r.stderr)?.contains("read 2000  emitted ") == true)
    }

    /// Killed after a stage committed its batch in flush but before the checkpoint
    /// commit: the batch since the last checkpoint is replayed. A stage whose writes are
    /// keyed (INSERT OR REPLACE) ends with exactly one row per event; the output is
    /// exactly once whatever the stages do.
    @Test func killAfterAStageCommittedReplaysItsBatch() throws {
        let env = ["IDEMPOTENT": "1"]
        let (expected, _) = try Self.reference(env)
        let dir = Self.setUp()
        guard try Self.killWhenBlocked(in: dir, env.merging(["BLOCK_AFTER_STORE": "3"]) { $1 }) else { return }
        #expect(Self.committedLine(dir) == 600)
        // The store committed the batch up to line 900 already.
        let rows = runLua("local db <close> = sql.open('\(dir)/rows.db'); return db:first(\"SELECT count(*) AS n FROM rows WHERE key = 'e899'\").n")
        #expect(rows.values == [.integer(1)])
        let r = try runProcess(scopeluaPath, Self.command, directory: dir, environment: env)
        #expect(r.status == 0, "\(r.stderr)")
        let got = Self.outcome(dir)
        Self.expectSame(got, expected)
    }

    /// The same kill with README's pattern and a plain INSERT: the store keeps the line
    /// its flush committed (ctx.committing) in the same transaction, reads it back in
    /// open, and skips the write of the replayed events at or below it (ctx.line): one
    /// row per event, the output exactly once, the windows a flush emitted included.
    @Test func aStageThatStoresTheLineItCommittedSkipsTheReplayedBatch() throws {
        let env = ["SKIP_APPLIED": "1"]
        let (expected, _) = try Self.reference(env)
        #expect(expected.rows.count == expected.output.count)
        #expect(expected.rows.contains { $0.hasPrefix("we") })  // a window a flush emitted
        let dir = Self.setUp()
        guard try Self.killWhenBlocked(in: dir, env.merging(["BLOCK_AFTER_STORE": "3"]) { $1 }) else { return }
        #expect(Self.committedLine(dir) == 600)
        let stored = runLua("""
            local db <close> = sql.open('\(dir)/rows.db')
            return db:first("SELECT line FROM applied").line, db:first("SELECT count(*) AS n FROM rows WHERE key = 'e899'").n
            """)
        #expect(stored.values == [.integer(900), .integer(1)])
        let r = try runProcess(scopeluaPath, Self.command, directory: dir, environment: env)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("resuming from checkpoint state.db: in.jsonl after line 600"), "\(r.stderr)")
        let got = Self.outcome(dir)
        Self.expectSame(got, expected)
        #expect(Set(got.rows).count == got.rows.count)
        #expect(Set(got.output).count == got.output.count)
    }

    /// ctx.line is the input line of the event in process (and of what it emitted; the
    /// line a barrier commits for what a flush emitted; nil for a timer's), nil in flush,
    /// open and close; ctx.committing is the last line read before the barrier, in flush
    /// only; ctx.resumed_line is the line the checkpoint resumed after, nil when not
    /// resuming. Blank and rejected lines count as lines.
    @Test func ctxLineCommittingAndResumedLine() throws {
        let dir = temporaryDirectory()
        write("""
            local function log(...) local f <close> = assert(io.open("log.txt", "a")) f:write(table.concat({...}, " "), "\\n") end
            local function s(v) return tostring(v) end
            stage "a" {
              open = function(ctx) log("open", s(ctx.resumed), s(ctx.resumed_line), s(ctx.line), s(ctx.committing)) end,
              process = function(ctx, e)
                log("a", e.id, s(ctx.line), s(ctx.committing))
                if e.id == 3 then ctx:emit({ id = 30 }) end
                return e
              end,
              flush = function(ctx, why) log("a flush", why, s(ctx.line), s(ctx.committing)) ctx:emit({ id = 99 }) end,
              close = function(ctx) log("close", s(ctx.line), s(ctx.committing)) end,
            }
            stage "b" {
              process = function(ctx, e) log("b", e.id, s(ctx.line)) return e end,
            }
            pipeline "p" { "a", "b" }
            """, to: "job.lua", in: dir)
        // Lines: 1 {1}, 2 blank, 3 {2}, 4 not JSON, 5 {3}, 6 {4}, 7 {5}; a barrier every
        // 2 events read (a rejected line is one, a blank line is not).
        write("{\"id\":1}\n\n{\"id\":2}\nnope\n{\"id\":3}\n{\"id\":4}\n{\"id\":5}\n", to: "in.jsonl", in: dir)
        let command = ["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--checkpoint", "state.db",
                       "--checkpoint-every", "2"]
        let r = try runProcess(scopeluaPath, command, directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(read("\(dir)/log.txt") == """
            open false nil nil nil
            a 1 1 nil
            b 1 1
            a 2 3 nil
            b 2 3
            a flush checkpoint nil 3
            b 99 3
            a 3 5 nil
            b 30 5
            b 3 5
            a flush checkpoint nil 5
            b 99 5
            a 4 6 nil
            b 4 6
            a 5 7 nil
            b 5 7
            a flush checkpoint nil 7
            b 99 7
            a flush end nil 7
            b 99 7
            close nil nil

            """)
        // A rerun resumes after line 7: nothing left to read, the final barrier commits it again.
        try? FileManager.default.removeItem(atPath: "\(dir)/log.txt")
        let again = try runProcess(scopeluaPath, command, directory: dir)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(read("\(dir)/log.txt") == """
            open true 7 nil nil
            a flush end nil 7
            b 99 7
            close nil nil

            """)
        // A list input: its items are its lines.
        let list = runLua("""
            local seen = {}
            stage "l" {
              process = function(ctx, e) seen[#seen + 1] = e.id .. "@" .. tostring(ctx.line) return e end,
              flush = function(ctx) seen[#seen + 1] = "flush@" .. tostring(ctx.committing) end,
            }
            local pl = pipeline "pl" { "l" }
            pl:run{ input = { { id = 1 }, { id = 2 } } }
            return table.concat(seen, " ")
            """)
        #expect(list.text == "1@1 2@2 flush@2")
    }

    /// SIGTERM: the event being processed finishes, the barrier runs (flush with "stop")
    /// and commits, the run exits 143; the same command resumes after that line. While a
    /// run uses a checkpoint, another run with it is refused.
    @Test func aGracefulStopCommitsAndTheRerunResumes() throws {
        let env = ["NO_WINDOW": "1"]
        let (expected, _) = try Self.reference(env)
        let dir = Self.setUp()
        let child = try Self.start(Self.command, in: dir, environment: env.merging(["WAIT_FOR_GO": "1000"]) { $1 })
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(dir)/reached") })
        // Meanwhile a second run with the same checkpoint is refused.
        let second = try runProcess(scopeluaPath, Self.command, directory: dir, environment: env)
        #expect(second.status == 2)
        #expect(second.stderr.contains("scopelua: checkpoint state.db: in use by another run"), "\(second.stderr)")
        kill(child.processIdentifier, SIGTERM)
        // Delivered (the stop is noted) before the stage may finish its event.
        #expect(waitUntil {
            !processStatus(child.processIdentifier, "ShdPnd", has: SIGTERM) && !processStatus(child.processIdentifier, "SigPnd", has: SIGTERM)
        })
        write("", to: "go", in: dir)
        child.waitUntilExit()
        #expect(child.terminationStatus == 143, "\(read("\(dir)/stderr.txt") ?? "")")
        #expect(Self.committedLine(dir) == 1000)
        let r = try runProcess(scopeluaPath, Self.command, directory: dir, environment: env)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("after line 1000"))
        let got = Self.outcome(dir)
        Self.expectSame(got, expected)
    }

    // MARK: - Barrier order

    /// Each stage's flush runs before the commit: a flush sees the position the barrier
    /// before committed. Stages flush in pipeline order, and what a flush emits goes
    /// through the stages after it before their own flush.
    @Test func flushesRunInOrderBeforeTheCommit() throws {
        let dir = temporaryDirectory()
        write("""
            local function log(...) local f <close> = assert(io.open("log.txt", "a")) f:write(table.concat({...}, " "), "\\n") end
            local function committed()
              local db <close> = sql.open("state.db", { readonly = true })
              local row = db:first("SELECT input_line FROM checkpoint")
              return row and row.input_line or 0
            end
            stage "a" {
              process = function(ctx, e) return e end,
              flush = function(ctx, why) log("a flush", why, "committed", committed()) ctx:emit({ from = "a" }) end,
            }
            stage "b" {
              process = function(ctx, e) if e.from then log("b process", e.from) end return e end,
              flush = function(ctx, why) log("b flush", why, "committed", committed()) end,
              close = function(ctx, err) log("b close", tostring(err)) end,
            }
            pipeline "p" { "a", "b" }
            """, to: "job.lua", in: dir)
        write(PipelineIOTests.events(25), to: "in.jsonl", in: dir)
        let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl",
                                              "--checkpoint", "state.db", "--checkpoint-every", "10"], directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(read("\(dir)/log.txt") == """
            a flush checkpoint committed 0
            b process a
            b flush checkpoint committed 0
            a flush checkpoint committed 10
            b process a
            b flush checkpoint committed 10
            a flush end committed 20
            b process a
            b flush end committed 20
            b close nil

            """)
        #expect(Self.committedLine(dir) == 25)
    }

    /// A flush that fails under the abort policy stops the run and blocks the commit:
    /// the checkpoint keeps the barrier before, the stages close with the error (a
    /// transaction rolls back), and a rerun resumes from there to the same result.
    @Test func aFailingFlushBlocksTheCommit() throws {
        let (expected, _) = try Self.reference()
        let dir = Self.setUp()
        // The store's third flush fails (at line 900) instead of committing.
        var job = Self.job.replacingOccurrences(of: "if tonumber(env(\"KILL_IN_FLUSH\")) == s.flushes then block() end",
                                                with: "if tonumber(env(\"FAIL_IN_FLUSH\")) == s.flushes then error(\"flush broke\") end")
        job = job.replacingOccurrences(of: "stage \"audit\" {", with: """
            stage "audit" {
              close = function(ctx, err) local f <close> = assert(io.open("closed.txt", "w")) f:write(tostring(err)) end,
            """)
        write(job, to: "job.lua", in: dir)
        let failed = try runProcess(scopeluaPath, Self.command, directory: dir, environment: ["FAIL_IN_FLUSH": "3"])
        #expect(failed.status == 1)
        #expect(failed.stderr.contains("scopelua: pipeline 'p' aborted: stage 'store' failed in flush (checkpoint): job.lua:"), "\(failed.stderr)")
        #expect(failed.stderr.contains("flush broke"))
        #expect(Self.committedLine(dir) == 600)
        #expect(read("\(dir)/closed.txt")?.contains("flush broke") == true)
        let r = try runProcess(scopeluaPath, Self.command, directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("after line 600"))
        let got = Self.outcome(dir)
        Self.expectSame(got, expected)
    }

    /// At the end of the input every flush runs, in order, before any close; also from
    /// p:run and without a checkpoint. A flush that is not a function is refused when the
    /// stage is registered.
    @Test func theEndOfTheInputFlushesBeforeAnyClose() {
        let r = runLua("""
            local log = {}
            stage "window" {
              open = function(ctx) ctx.state.n = 0 end,
              process = function(ctx, e) ctx.state.n = ctx.state.n + 1 end,
              flush = function(ctx, why) log[#log + 1] = "window flush " .. why; ctx:emit({ count = ctx.state.n }) end,
              close = function(ctx) log[#log + 1] = "window close" end,
            }
            stage "sink" {
              process = function(ctx, e) log[#log + 1] = "sink got " .. e.count; return e end,
              flush = function(ctx, why) log[#log + 1] = "sink flush " .. why end,
              close = function(ctx) log[#log + 1] = "sink close" end,
            }
            local p = pipeline "p" { "window", "sink" }
            local report = p:run{ input = { {}, {}, {} } }
            log[#log + 1] = "output " .. #report.output .. " count " .. report.output[1].count
            log[#log + 1] = "fanout " .. report.fanout.created .. " " .. report.fanout.emitted
            local ok, err = pcall(stage, "bad", { process = function() end, flush = 3 })
            log[#log + 1] = tostring(err)
            return table.concat(log, "\\n")
            """)
        #expect(r.error == nil, "\(String(describing: r.error))")
        #expect(r.text == """
            window flush end
            sink got 3
            sink flush end
            sink close
            window close
            output 1 count 3
            fanout 1 1
            stage 'bad': flush must be a function (got a number)
            """)
    }

    // MARK: - What a checkpoint refuses

    /// A different file at the input's path, a shorter one, or one rewritten in place is
    /// refused (exit 2, naming the checkpoint and the reason) and nothing is truncated;
    /// --checkpoint-reset starts over on purpose.
    @Test func aDifferentInputIsRefusedAndResetStartsOver() throws {
        let dir = temporaryDirectory()
        write(PipelineIOTests.identity, to: "p.lua", in: dir)
        let events = PipelineIOTests.events(50)
        write(events, to: "in.jsonl", in: dir)
        let command = ["run", "p.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--checkpoint", "state.db"]
        let first = try scopelua(command, directory: dir)
        #expect(first.status == 0, "\(first.stderr)")
        #expect(read("\(dir)/out.jsonl") == events)

        func refused(_ reason: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
            let r = try scopelua(command, directory: dir)
            #expect(r.status == 2, sourceLocation: sourceLocation)
            #expect(r.stderr.hasPrefix("scopelua: checkpoint state.db: the input in.jsonl "), "\(r.stderr)", sourceLocation: sourceLocation)
            #expect(r.stderr.contains(reason), "\(r.stderr)", sourceLocation: sourceLocation)
            #expect(r.stderr.contains("--checkpoint-reset starts over"), sourceLocation: sourceLocation)
            #expect(read("\(dir)/out.jsonl") == events, sourceLocation: sourceLocation)
        }
        // Shorter (the same file, truncated).
        #expect(truncate("\(dir)/in.jsonl", 100) == 0)
        try refused("is shorter than when the checkpoint was committed (491 bytes, now 100)")
        // Another file (the same content) under the same name.
        write(events, to: "copy.jsonl", in: dir)
        #expect(rename("\(dir)/copy.jsonl", "\(dir)/in.jsonl") == 0)
        try refused("is not the file the checkpoint was made with")
        // The same file rewritten in place (same inode, same length), after a reset
        // made a checkpoint of it.
        let reset = try scopelua(command + ["--checkpoint-reset"], directory: dir)
        #expect(reset.status == 0, "\(reset.stderr)")
        #expect(!reset.stderr.contains("resuming"))
        let handle = try #require(FileHandle(forUpdatingAtPath: "\(dir)/in.jsonl"))
        try handle.write(contentsOf: Data("{\"id\":9}".utf8))
        try handle.close()
        try refused("changed since the checkpoint was committed (its first 491 bytes differ)")

        // --checkpoint-reset: from the start, over the file as it is now.
        let again = try scopelua(command + ["--checkpoint-reset"], directory: dir)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(read("\(dir)/out.jsonl")?.hasPrefix("{\"id\":9}\n{\"id\":2}\n") == true)
        #expect(read("\(dir)/out.jsonl")?.split(separator: "\n").count == 50)
        // The same command once more: nothing new to read, nothing written twice.
        let rerun = try scopelua(command, directory: dir)
        #expect(rerun.status == 0, "\(rerun.stderr)")
        #expect(rerun.stderr.contains("resuming from checkpoint state.db: in.jsonl after line 50"))
        #expect(read("\(dir)/out.jsonl")?.split(separator: "\n").count == 50)
        // Lines appended since are read, after the ones read before.
        let more = (51...60).map { "{\"id\":\($0)}\n" }.joined()
        let appender = try #require(FileHandle(forUpdatingAtPath: "\(dir)/in.jsonl"))
        try appender.seekToEnd()
        try appender.write(contentsOf: Data(more.utf8))
        try appender.close()
        let appended = try scopelua(command, directory: dir)
        #expect(appended.status == 0, "\(appended.stderr)")
        #expect(read("\(dir)/out.jsonl")?.hasSuffix(more) == true)
        #expect(read("\(dir)/out.jsonl")?.split(separator: "\n").count == 60)
    }

    /// A checkpoint made with other outputs, an output shortened since, or another
    /// pipeline is refused; so are stdin and a pipe as input, a checkpoint file that is
    /// the output, and --checkpoint-reset without --checkpoint.
    @Test func whatCannotBeResumedIsAUsageError() throws {
        let dir = temporaryDirectory()
        write(PipelineIOTests.identity, to: "p.lua", in: dir)
        write(PipelineIOTests.events(20), to: "in.jsonl", in: dir)
        let base = ["run", "p.lua", "--input", "in.jsonl", "--checkpoint", "state.db"]
        #expect(try scopelua(base + ["--output", "out.jsonl"], directory: dir).status == 0)
        let other = try scopelua(base + ["--output", "other.jsonl"], directory: dir)
        #expect(other.status == 2)
        #expect(other.stderr.contains("checkpoint state.db: it was made with --output out.jsonl, this run has --output other.jsonl"), "\(other.stderr)")
        let dead = try scopelua(base + ["--output", "out.jsonl", "--dead-letter", "dead.jsonl"], directory: dir)
        #expect(dead.status == 2)
        #expect(dead.stderr.contains("it was made with no --dead-letter, this run has --dead-letter dead.jsonl"), "\(dead.stderr)")
        #expect(truncate("\(dir)/out.jsonl", 5) == 0)
        let short = try scopelua(base + ["--output", "out.jsonl"], directory: dir)
        #expect(short.status == 2)
        #expect(short.stderr.contains("the output out.jsonl is shorter than the checkpoint says"), "\(short.stderr)")
        #expect(read("\(dir)/out.jsonl")?.utf8.count == 5)

        let stdin = try scopelua(["run", "p.lua", "--input", "-", "--checkpoint", "s2.db"], stdin: "{}\n", directory: dir)
        #expect(stdin.status == 2)
        #expect(stdin.stderr.contains("--checkpoint s2.db needs an input file: stdin is a stream"), "\(stdin.stderr)")
        let pipe = try PipelineIOTests.bash("$SCOPELUA run p.lua --input <(cat in.jsonl) --checkpoint s3.db", in: dir)
        #expect(pipe.status == 2)
        #expect(pipe.stderr.contains("is not a regular file (stdin, a pipe)"), "\(pipe.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/s3.db"))
        let same = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "o.jsonl", "--checkpoint", "o.jsonl"], directory: dir)
        #expect(same.status == 2)
        #expect(same.stderr.contains("--checkpoint o.jsonl is the output file"), "\(same.stderr)")
        let reset = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--checkpoint-reset"], directory: dir)
        #expect(reset.status == 2)
        #expect(reset.stderr.contains("--checkpoint-reset needs --checkpoint FILE"), "\(reset.stderr)")
        let notADatabase = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--checkpoint", "p.lua"], directory: dir)
        #expect(notADatabase.status == 2)
        #expect(notADatabase.stderr.contains("checkpoint p.lua: not a scopelua checkpoint"), "\(notADatabase.stderr)")
    }

    /// stdout cannot be taken back: a resumed run says so (at-least-once).
    @Test func aResumedRunToStdoutSaysItIsAtLeastOnce() throws {
        let dir = temporaryDirectory()
        write(PipelineIOTests.identity, to: "p.lua", in: dir)
        write(PipelineIOTests.events(20), to: "in.jsonl", in: dir)
        let command = ["run", "p.lua", "--input", "in.jsonl", "--checkpoint", "state.db"]
        let first = try scopelua(command, directory: dir)
        #expect(first.status == 0)
        #expect(first.stdout == PipelineIOTests.events(20))
        let second = try scopelua(command, directory: dir)
        #expect(second.status == 0)
        #expect(second.stdout == "")
        #expect(second.stderr.contains("the output (stdout) cannot be taken back"), "\(second.stderr)")
    }

    // MARK: - --checkpoint-every

    @Test func checkpointEveryTakesEventsSecondsOrBoth() throws {
        #expect(CheckpointInterval.parse("5000") == CheckpointInterval(events: 5000, seconds: nil))
        #expect(CheckpointInterval.parse("2s") == CheckpointInterval(events: nil, seconds: 2))
        #expect(CheckpointInterval.parse("1.5s") == CheckpointInterval(events: nil, seconds: 1.5))
        #expect(CheckpointInterval.parse("500ms") == CheckpointInterval(events: nil, seconds: 0.5))
        #expect(CheckpointInterval.parse("5000,2s") == CheckpointInterval(events: 5000, seconds: 2))
        #expect(CheckpointInterval.parse("2s, 5000") == CheckpointInterval(events: 5000, seconds: 2))
        for bad in ["", "0", "-1", "1e3", "1.5", "nans", "infs", "0x10s", "2x", "s", "1..5s", "0s", "0.0001s",
                    "90000s", "1000000001", "99999999999999999999", "1,2", "2s,3s", "1,2s,3", "5000,"] {
            #expect(CheckpointInterval.parse(bad) == nil, "\(bad)")
        }
        let dir = temporaryDirectory()
        write(PipelineIOTests.identity, to: "p.lua", in: dir)
        write(PipelineIOTests.events(3), to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--checkpoint-every", "1e400"], directory: dir)
        #expect(r.status == 2)
        #expect(r.stderr.contains("--checkpoint-every must be a number of events (5000), of seconds (2s, 500ms) or both"), "\(r.stderr)")
        #expect(r.stderr.contains("(got '1e400')"))
        // Without --checkpoint, barriers (flush hooks) run at that interval all the same.
        write("""
            stage "s" { process = function(ctx, e) return e end, flush = function(ctx, why) io.stderr:write("flush ", why, "\\n") end }
            pipeline "p" { "s" }
            """, to: "f.lua", in: dir)
        write(PipelineIOTests.events(5), to: "five.jsonl", in: dir)
        let every = try scopelua(["run", "f.lua", "--input", "five.jsonl", "--output", "none", "--checkpoint-every", "2"], directory: dir)
        #expect(every.status == 0)
        #expect(every.stderr == "flush checkpoint\nflush checkpoint\nflush end\n")
        let once = try scopelua(["run", "f.lua", "--input", "five.jsonl", "--output", "none"], directory: dir)
        #expect(once.stderr == "flush end\n")
    }
}
