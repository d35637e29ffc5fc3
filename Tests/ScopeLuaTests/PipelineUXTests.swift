import Foundation
import Testing
@testable import ScopeLua

/// What a user of a pipeline sees when something goes wrong (issue 10): no silent wrong
/// result, errors that say where, a summary on stderr.
@Suite struct PipelineUXTests {
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
}
