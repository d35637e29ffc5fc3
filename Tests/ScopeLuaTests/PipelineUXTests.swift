import Foundation
import Testing
@testable import ScopeLua
@testable import ScopeLuaRepl
import CLua

/// What a user of a pipeline sees when something goes wrong (issue 10): no silent wrong
/// result, errors that say where, a summary on stderr.
@Suite(.timeLimit(testTimeLimit)) struct PipelineUXTests {
    // MARK: - process returns neither a table nor nil

    @Test func aPredicateStyleReturnIsAnErrorOfTheEvent() {
        let dir = temporaryDirectory()
        let run = runLua("""
            stage "keep_buys" { process = function(ctx, e) return e.kind == "buy" end }
            local ok, err = pcall(function() return pipeline("p", { "keep_buys" }):run{ input = { { kind = "buy" } } } end)
            local s = pipeline("s", { { name = "str", process = function(ctx, e) return "yes" end, on_error = "skip" } })
              :run{ input = { { id = 1 }, { id = 2 } } }
            -- A retry would get the same answer: its "then" applies at once.
            local r = pipeline("r", { { name = "num", process = function(ctx, e) return 1 end,
                                        on_error = { retry = 3, backoff = 10, ["then"] = "dead_letter" } } })
              :run{ input = { { id = 1 } }, dead_letter = "\(dir)/dl.jsonl" }
            return ok, err:match("^[^\\n]*"), s.skipped, #s.output, r.retried, r.dead_lettered, r.stages.num.calls
            """)
        #expect(run.error == nil, "\(run.error?.message ?? "")")
        #expect(run.values == [.boolean(false),
                               .string("test:2: pipeline 'p' aborted: stage 'keep_buys' failed on event 1: stage 'keep_buys' returned a boolean (expected the event table or nil)"),
                               .integer(2), .integer(0), .integer(0), .integer(1), .integer(1)])
        #expect(read("\(dir)/dl.jsonl")?.contains("\"error\":\"stage 'num' returned a number (expected the event table or nil)\"") == true)
    }

    @Test func aPredicateStyleReturnFailsTheCommand() throws {
        let dir = temporaryDirectory()
        write("""
            stage "keep_buys" { process = function(ctx, e) return e.kind == "buy" end }
            pipeline "p" { "keep_buys" }
            """, to: "p.lua", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "-"], stdin: "{\"kind\":\"buy\"}\n", directory: dir)
        #expect(r.status == 1)
        #expect(r.stdout == "")
        #expect(r.stderr.contains("scopelua: pipeline 'p' aborted: stage 'keep_buys' failed on line 1: stage 'keep_buys' returned a boolean (expected the event table or nil)\n"), "\(r.stderr)")
    }

    // MARK: - events named by their input line

    @Test func errorsNameTheInputLineAndTheId() throws {
        let dir = temporaryDirectory()
        write("""
            stage "split" { process = function(ctx, e) if e.n then ctx:emit({ id = 7, bad = true }) end return e end }
            stage "enrich" {
              process = function(ctx, e) if e.bad then error("no price") end return e end,
              on_error = "dead_letter",
            }
            pipeline "p" { "split", "enrich" }
            """, to: "p.lua", in: dir)
        // Two lines say id 1: only the line number tells them apart.
        write("{\"id\":1}\n\n{\"id\":1,\"bad\":true}\n{\"n\":1}\n", to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "none", "--dead-letter", "dl.jsonl"], directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let records = (read("\(dir)/dl.jsonl") ?? "").split(separator: "\n").map(String.init)
        #expect(records.count == 2)
        #expect(records.first?.contains("\"line\":3") == true, "\(records)")
        #expect(records.first?.contains("\"emitted\"") == false, "\(records)")
        #expect(records.last?.contains("\"line\":4") == true && records.last?.contains("\"emitted\":true") == true, "\(records)")

        write("""
            stage "enrich" { process = function(ctx, e) if e.bad then error("no price") end return e end }
            pipeline "p" { "enrich" }
            """, to: "abort.lua", in: dir)
        let a = try scopelua(["run", "abort.lua", "--input", "in.jsonl", "--output", "none"], directory: dir)
        #expect(a.status == 1)
        #expect(a.stderr.contains("scopelua: pipeline 'p' aborted: stage 'enrich' failed on line 3 (id 1): abort.lua:1: no price\n"), "\(a.stderr)")
    }

    @Test func eventsEmittedByAStageOrATimerAreNamedByWhereTheyCameFrom() {
        let run = runLua("""
            stage "split" { process = function(ctx, e) ctx:emit({ id = e.id * 10 }) return nil end }
            stage "check" { process = function(ctx, e) if e.id == 20 then error("bad", 0) end return e end }
            local ok, err = pcall(function() return pipeline("p", { "split", "check" }):run{ input = { { id = 1 }, { id = 2 } } } end)
            stage "tick" {
              open = function(ctx) timer.after(0, function() ctx:emit({ from = "timer" }) end) end,
              process = function(ctx, e) return e end,
            }
            stage "reject_timer_events" { process = function(ctx, e) if e.from then error("bad", 0) end return e end }
            local ok2, err2 = pcall(function() return pipeline("t", { "tick", "reject_timer_events" }):run{ input = { { id = 1 }, { id = 2 } } } end)
            return err:match("^[^\\n]*"), err2:match("^[^\\n]*")
            """)
        #expect(run.values == [
            .string("test:3: pipeline 'p' aborted: stage 'check' failed on an event emitted for event 2 (id 20): bad"),
            .string("test:9: pipeline 't' aborted: stage 'reject_timer_events' failed on an event emitted by a timer ({\"from\":\"timer\"}): bad"),
        ])
    }

    // MARK: - skips, dead letters and rejects are never silent

    static func events(_ n: Int) -> String {
        (1...n).map { "{\"id\":\($0)}\n" }.joined()
    }

    @Test func skippedEventsAreShownThenCountedThenSummedUp() throws {
        let dir = temporaryDirectory()
        write("""
            stage "buggy" { process = function(ctx, e) return e.missing.field end, on_error = "skip" }
            pipeline "p" { "buggy" }
            """, to: "p.lua", in: dir)
        write(Self.events(2104), to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "out.jsonl"], directory: dir)
        #expect(r.status == 0)
        let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let message = "p.lua:1: attempt to index a nil value (field 'missing')"
        #expect(Array(lines.prefix(4)) == [
            "scopelua: stage 'buggy' failed on line 1 (id 1): \(message) (skipped)",
            "scopelua: stage 'buggy' failed on line 2 (id 2): \(message) (skipped)",
            "scopelua: stage 'buggy' failed on line 3 (id 3): \(message) (skipped)",
            "scopelua: stage 'buggy': ... 2101 more like this",
        ], "\(r.stderr)")
        #expect(lines.count == 7, "\(r.stderr)")
        #expect(lines.dropFirst(4).first?.hasPrefix("scopelua: pipeline 'p': read 2104, emitted 0, filtered 0, skipped 2104, dead-lettered 0, rejected 0 in ") == true, "\(r.stderr)")
        #expect(lines.dropFirst(5).first == "  stage 'buggy': 2104 errors (skipped 2104), the first on line 1 (id 1): \(message)", "\(r.stderr)")
    }

    @Test func deadLettersAndRetriesAreSummedUpByStageFromLuaToo() {
        let dir = temporaryDirectory()
        let run = runLua("""
            local calls = 0
            stage "flaky" {
              process = function(ctx, e) calls = calls + 1; if e.id == 2 or calls == 1 then error("down", 0) end return e end,
              on_error = { retry = 1, ["then"] = "dead_letter" },
            }
            stage "fine" { process = function(ctx, e) return e end }
            local r = pipeline("p", { "flaky", "fine" }):run{ input = { { id = 1 }, { id = 2 }, { id = 3 } }, dead_letter = "\(dir)/dl.jsonl" }
            return r.stages.flaky.retried, r.stages.flaky.dead_lettered, r.stages.flaky.skipped
            """)
        #expect(run.error == nil, "\(run.error?.message ?? "")")
        #expect(run.values == [.integer(2), .integer(1), .integer(0)])
        #expect(run.diagnostics.count == 2, "\(run.diagnostics)")
        #expect(run.diagnostics.first == "scopelua: stage 'flaky' failed on event 2 (id 2): down (dead-lettered)")
        let summary = run.diagnostics.last?.split(separator: "\n").map(String.init) ?? []
        #expect(summary.count == 2, "\(summary)")
        #expect(summary.first?.hasPrefix("scopelua: pipeline 'p': read 3, emitted 2, filtered 0, skipped 0, dead-lettered 1, rejected 0, retried 2 in ") == true, "\(summary)")
        #expect(summary.last == "  stage 'flaky': 3 errors (retried 2, dead-lettered 1), the first on event 1 (id 1): down")
    }

    @Test func aCleanRunOutsideATerminalIsSilent() throws {
        let dir = temporaryDirectory()
        write("stage 'pass' { process = function(ctx, e) return e end }\npipeline 'p' { 'pass' }\n", to: "p.lua", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "-"], stdin: Self.events(3), directory: dir)
        #expect(r.status == 0)
        #expect(r.stderr == "")
        let run = runLua("return pipeline('p', { { process = function(ctx, e) return e end } }):run{ input = { {} } }.emitted")
        #expect(run.values == [.integer(1)])
        #expect(run.diagnostics.isEmpty, "\(run.diagnostics)")
    }

    // MARK: - elapsed time and events/s

    @Test func theSummaryAndTheReportGiveElapsedTimeAndRate() throws {
        let dir = temporaryDirectory()
        write("""
            stage "s" { process = function(ctx, e) if e.id == 2 then error("bad", 0) end return e end, on_error = "skip" }
            pipeline "p" { "s" }
            """, to: "p.lua", in: dir)
        write(Self.events(3), to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "none", "--report"], directory: dir)
        #expect(r.status == 0)
        let summary = #/scopelua: pipeline 'p': read 3, emitted 2, filtered 0, skipped 1, dead-lettered 0, rejected 0 in [0-9.]+(ns|us|ms|s) \([0-9]+ events/s\)\n/#
        #expect(r.stderr.contains(summary), "\(r.stderr)")
        #expect(r.stderr.contains(#/\n  time       elapsed [0-9.]+(ns|us|ms|s)  [0-9]+ events/s\n/#), "\(r.stderr)")
        let run = runLua("""
            local r = pipeline('p', { { process = function(ctx, e) return e end } }):run{ input = { {}, {} } }
            return math.type(r.elapsed), r.elapsed > 0, r.events_per_second > 0
            """)
        #expect(run.values == [.string("float"), .boolean(true), .boolean(true)])
    }

    // MARK: - print and log while a pipeline writes to stdout

    @Test func printInAStageGoesToStderrWhileTheEventsGoToStdout() throws {
        let dir = temporaryDirectory()
        write("""
            stage "enrich" {
              open = function(ctx) print("opening"); log.info("opened") end,
              process = function(ctx, e) print("got", e.id); log.warn("price missing"); return e end,
              close = function(ctx) log.info("closing") end,
            }
            pipeline "p" { "enrich" }
            """, to: "p.lua", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "-"], stdin: "\n{\"id\":1}\n", directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "{\"id\":1}\n")
        #expect(r.stderr == "opening\ninfo: enrich: opened\ngot\t1\nwarn: enrich (line 2): price missing\ninfo: enrich: closing\n")
        // With the events in a file, print writes to stdout as usual.
        let f = try scopelua(["run", "p.lua", "--input", "-", "--output", "out.jsonl"], stdin: "{\"id\":1}\n", directory: dir)
        #expect(f.stdout == "opening\ngot\t1\n")
    }

    @Test func printIsLuasOwnAgainAfterTheRunAndAScriptsOwnPrintIsLeftAlone() throws {
        let rt = Runtime()
        defer { rt.close() }
        let L = rt.L
        _ = try rt.execute("""
            original = print
            stage "s" { process = function(ctx, e) during = print; return nil end }
            pipeline "p" { "s" }
            """, name: "=test")
        func runOnce() {
            // A list input of one event, filtered: nothing reaches stdout.
            var options = PipelineRun.Options()
            _ = try? rt.execute("events = { { id = 1 } }", name: "=test")
            Bindings.getGlobal(L, "events")
            options.input = .list(luaL_ref(L, Lua.registry))
            options.output = .stdout
            guard let def = rt.pipelines.pipelines["p"] else { return }
            let run = PipelineRun(rt, def, options: options)
            _ = run.execute(L, parent: rt.root)
            run.releaseReferences(L)
        }
        runOnce()
        #expect(try rt.execute("return during ~= original, print == original", name: "=test") == [.boolean(true), .boolean(true)])
        _ = try rt.execute("function print(...) end; mine = print", name: "=test")
        runOnce()
        #expect(try rt.execute("return during == mine, print == mine", name: "=test") == [.boolean(true), .boolean(true)])
    }

    @Test func logLinesNameTheStageAndTheEvent() {
        let run = runLua("""
            stage "enrich" {
              open = function(ctx) log.info("open"); timer.after(0, function() log.warn("tick") end) end,
              process = function(ctx, e) log.error("event", e.id); return e end,
            }
            pipeline("p", { "enrich" }):run{ input = { { id = 7 }, { id = 8 } } }
            log.info("after")
            """)
        #expect(run.error == nil)
        #expect(run.diagnostics == ["info: enrich: open", "error: enrich (event 1): event\t7", "warn: enrich: tick",
                                    "error: enrich (event 2): event\t8", "info: after"])
    }

    // MARK: - a name registered twice

    @Test func aDuplicateStageOrPipelineNameIsAnErrorNamingBothLines() throws {
        #expect(runLua("""
            stage "enrich" { process = function(ctx, e) return e end }
            stage "other" { process = function(ctx, e) return e end }
            stage "enrich" { process = function(ctx, e) return nil end }
            """).error?.message == "test:3: stage 'enrich' is already defined at test:1")
        #expect(runLua("""
            stage("s", { process = function(ctx, e) return e end })
            pipeline("p", { "s" })

            pipeline "p" { "s" }
            """).error?.message == "test:4: pipeline 'p' is already defined at test:2")
        // Inline stages are not registered by name: two may share one.
        #expect(runLua("""
            pipeline "a" { { name = "x", process = function(ctx, e) return e end } }
            pipeline "b" { { name = "x", process = function(ctx, e) return e end } }
            """).error == nil)
        let dir = temporaryDirectory()
        write("""
            stage "enrich" { process = function(ctx, e) return e end }
            pipeline "p" { "enrich" }
            stage "enrich" { process = function(ctx, e) return nil end }
            """, to: "job.lua", in: dir)
        let r = try scopelua(["run", "job.lua", "--input", "-"], stdin: "{}\n", directory: dir)
        #expect(r.status == 1)
        #expect(r.stdout == "")
        #expect(r.stderr.hasPrefix("scopelua: job.lua:3: stage 'enrich' is already defined at job.lua:1\n"), "\(r.stderr)")
    }

    // MARK: - ctx.emit for ctx:emit

    @Test func aCtxMethodCalledWithADotSaysToUseAColon() {
        let run = runLua("""
            local function fails(process)
              local ok, err = pcall(function() return pipeline("p" .. tostring(process), { { name = "s", process = process } }):run{ input = { {} } } end)
              return (err:match("failed on event 1: ([^\\n]*)"))
            end
            return fails(function(ctx, e) ctx.emit(e) return e end),
                   fails(function(ctx, e) ctx.emit({ extra = true }, e) return e end),
                   fails(function(ctx, e) ctx.own(fs.open("/dev/null")) return e end),
                   fails(function(ctx, e) ctx:emit() return e end)
            """)
        #expect(run.error == nil, "\(run.error?.message ?? "")")
        #expect(run.values == [.string("test:5: ctx.emit was called with a dot: use ctx:emit(e) (with a colon)"),
                               .string("test:6: ctx.emit was called with a dot: use ctx:emit(e) (with a colon)"),
                               .string("test:7: ctx.own was called with a dot: use ctx:own(h) (with a colon)"),
                               .string("test:8: bad argument #1 to 'emit' (table expected, got no value)")])
    }

    // MARK: - retry backoff

    @Test func timersFireWhileAnEventWaitsToBeRetriedAndTheWaitIsReported() throws {
        let run = runLua("""
            local ticks, ticks_at_retry = 0, nil
            stage "ticker" {
              open = function(ctx) timer.every(0.01, function() ticks = ticks + 1 end) end,
              process = function(ctx, e) return e end,
            }
            local calls = 0
            stage "flaky" {
              process = function(ctx, e)
                calls = calls + 1
                if calls == 1 then error("down", 0) end
                ticks_at_retry = ticks
                return e
              end,
              on_error = { retry = 1, backoff = 0.2 },
            }
            local r = pipeline("p", { "ticker", "flaky" }):run{ input = { { id = 1 } } }
            return ticks_at_retry > 0, r.stages.flaky.backoff >= 0.2, r.stages.ticker.backoff, r.emitted, r.retried
            """)
        #expect(run.error == nil, "\(run.error?.message ?? "")")
        #expect(run.values == [.boolean(true), .boolean(true), .number(0), .integer(1), .integer(1)])

        let dir = temporaryDirectory()
        write("""
            stage "flaky" {
              open = function(ctx) ctx.state.n = 0 end,
              process = function(ctx, e) ctx.state.n = ctx.state.n + 1; if ctx.state.n == 1 then error("down", 0) end return e end,
              on_error = { retry = 2, backoff = 0.05 },
            }
            pipeline "p" { "flaky" }
            """, to: "p.lua", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "-", "--output", "none", "--report"], stdin: "{\"id\":1}\n", directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("  stages     stage     calls   errors        p50        p99        max    backoff\n"), "\(r.stderr)")
        #expect(r.stderr.contains(#/\n             flaky         2        1 +[0-9.]+(ns|us|ms) +[0-9.]+(ns|us|ms) +[0-9.]+(ns|us|ms) +[0-9.]+ms\n/#), "\(r.stderr)")
    }

    @Test func aTimerThatAbortsDuringABackoffLeavesTheWaitingEventInFlight() throws {
        let dir = temporaryDirectory()
        write("""
            stage "ticker" {
              open = function(ctx) timer.after(0.01, function() error("tick failed", 0) end) end,
              process = function(ctx, e) return e end,
            }
            stage "flaky" { process = function(ctx, e) error("down", 0) end, on_error = { retry = 1, backoff = 30 } }
            pipeline "p" { "ticker", "flaky" }
            """, to: "p.lua", in: dir)
        let started = Date()
        let r = try scopelua(["run", "p.lua", "--input", "-", "--output", "none", "--report"], stdin: "{\"id\":1}\n", directory: dir)
        #expect(Date().timeIntervalSince(started) < 20, "the run waited out the backoff")
        #expect(r.status == 1)
        #expect(r.stderr.contains("scopelua: pipeline 'p' aborted: timer timer#"), "\(r.stderr)")
        #expect(r.stderr.contains("read 1  emitted 0  filtered 0  skipped 0  dead-lettered 0  rejected 0  retried 0  in-flight 1 (line 1)"), "\(r.stderr)")
    }

    // MARK: - the progress line and the output on one terminal

    /// Runs `command` (bash, in `dir`, `$SCOPELUA` the executable) with stdin, stdout
    /// and stderr on one pseudo-terminal (util-linux `script`); returns what the terminal
    /// showed.
    static func onATerminal(_ command: String, in dir: String) throws -> ProcessResult {
        try runProcess("/usr/bin/script", ["-qec", command, "/dev/null"], directory: dir,
                       environment: ["SCOPELUA": scopeluaPath])
    }

    @Test func theProgressLineNeverRunsIntoTheOutputOnTheSameTerminal() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/script") else {
            Issue.record("script (util-linux) is not installed")
            return
        }
        let dir = temporaryDirectory()
        write("""
            stage "pass" { process = function(ctx, e) log.info("seen", e.id) return e end }
            pipeline "p" { "pass" }
            """, to: "p.lua", in: dir)
        write(Self.events(2), to: "in.jsonl", in: dir)
        // The events go to the terminal: no progress line at all.
        let same = try Self.onATerminal("$SCOPELUA run p.lua --input in.jsonl </dev/null", in: dir)
        #expect(same.status == 0, "\(same.stdout)")
        #expect(same.stdout.contains("{\"id\":1}"), "\(same.stdout)")
        #expect(!same.stdout.contains("events read"), "\(same.stdout.debugDescription)")
        #expect(!same.stdout.contains("\u{1b}[K"), "\(same.stdout.debugDescription)")
        // The events go to a file: the progress line is drawn, and a line on stderr
        // clears it first instead of running into it.
        let file = try Self.onATerminal("$SCOPELUA run p.lua --input in.jsonl --output out.jsonl </dev/null", in: dir)
        #expect(file.status == 0, "\(file.stdout)")
        #expect(file.stdout.contains("events read"), "\(file.stdout.debugDescription)")
        #expect(file.stdout.contains("events/s\r\u{1b}[Kinfo: pass (line 1): seen\t1"), "\(file.stdout.debugDescription)")
        #expect(read("\(dir)/out.jsonl") == Self.events(2))
    }

    // MARK: - a failing timer under a policy that goes on

    @Test func aTimerThatFailsIsShownAndWhatItEmittedIsDiscarded() {
        let run = runLua("""
            stage "tick" {
              open = function(ctx) timer.after(0, function() ctx:emit({ half = true }); error("tick failed", 0) end) end,
              process = function(ctx, e) return e end,
              on_error = "skip",
            }
            local r = pipeline("p", { "tick" }):run{ input = { { id = 1 }, { id = 2 } } }
            return #r.output, r.fanout.created, r.stages.tick.errors
            """)
        #expect(run.error == nil, "\(run.error?.message ?? "")")
        #expect(run.values == [.integer(2), .integer(0), .integer(1)])
        #expect(run.diagnostics.first?.hasPrefix("scopelua: stage 'tick' failed in timer timer#") == true, "\(run.diagnostics)")
        #expect(run.diagnostics.first?.hasSuffix(": tick failed") == true, "\(run.diagnostics)")
        #expect(run.diagnostics.last?.contains("\n  stage 'tick': 1 error, the first in timer timer#") == true, "\(run.diagnostics)")
        #expect(run.diagnostics.last?.hasSuffix(": tick failed") == true, "\(run.diagnostics)")
    }
}
