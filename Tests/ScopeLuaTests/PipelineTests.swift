import Foundation
import Testing
@testable import ScopeLua

/// Pipelines driven from Lua with p:run (in process).
@Suite(.timeLimit(testTimeLimit)) struct PipelineTests {
    @Test func stagesOpenInOrderAndCloseInReverseWithNesting() {
        let run = runLua("""
            local log = {}
            local function managed(name)
              return {
                open = function(ctx) log[#log+1] = "open " .. scope.current():path() end,
                process = function(ctx, e) e.seen = (e.seen or "") .. name; return e end,
                close = function(ctx, err) log[#log+1] = "close " .. name .. " " .. tostring(err) end,
              }
            end
            stage("a", managed("a")); stage("b", managed("b")); stage("c", managed("c"))
            local inner = pipeline "inner" { "b" }
            local report = pipeline("outer", { "a", inner, "c" }):run{ input = { {id = 1} } }
            return table.concat(log, ","), report.output[1].seen, report.emitted
            """)
        #expect(run.error == nil)
        #expect(run.values == [
            .string("open run/outer/a,open run/outer/inner/b,open run/outer/c,close c nil,close b nil,close a nil"),
            .string("abc"), .integer(1)])
    }

    @Test func failingOpenClosesWhatWasOpenedInReverseAndRunsNothingElse() {
        let run = runLua("""
            local log = {}
            stage "a" { open = function() log[#log+1] = "open a" end, process = function(ctx, e) log[#log+1] = "process"; return e end,
                        close = function(ctx, err) log[#log+1] = "close a: " .. tostring(err):match("boom") end }
            stage "b" { open = function() defer(function() log[#log+1] = "b released" end); error("boom") end,
                        process = function(ctx, e) return e end, close = function() log[#log+1] = "close b" end }
            stage "c" { open = function() log[#log+1] = "open c" end, process = function(ctx, e) return e end }
            local ok, e = pcall(function() return pipeline("p", { "a", "b", "c" }):run{ input = { {id = 1} } } end)
            return ok, e:match("^[^\\n]*"), table.concat(log, ",")
            """)
        #expect(run.values == [.boolean(false),
                               .string("test:7: pipeline 'p': stage 'b' failed to open: test:4: boom"),
                               .string("open a,b released,close a: boom")])
    }

    @Test func processErrorsUnderEachPolicy() {
        let run = runLua("""
            local function failing(policy)
              return { process = function(ctx, e) if e.id == 2 then error("bad event") end; return e end, on_error = policy }
            end
            local events = { {id = 1}, {id = 2}, {id = 3} }
            local skip = pipeline("s", { failing("skip") }):run{ input = events }
            local dl = pipeline("d", { failing("dead_letter") }):run{ input = events, dead_letter = "\(temporaryDirectory())/dl.jsonl" }
            local ok, abort = pcall(function() return pipeline("a", { failing("abort") }):run{ input = events } end)
            return skip.emitted, skip.skipped, dl.emitted, dl.dead_lettered, ok, abort:match("^[^\\n]*")
            """)
        #expect(run.values == [.integer(2), .integer(1), .integer(2), .integer(1), .boolean(false),
                               .string("test:7: pipeline 'a' aborted: stage 'a[1]' failed on event 2 (id 2): test:2: bad event")])
    }

    @Test func retryThenDeadLetter() {
        let dir = temporaryDirectory()
        let run = runLua("""
            local attempts = 0
            local flaky = { name = "flaky", process = function(ctx, e)
              attempts = attempts + 1
              if e.id == 1 and attempts < 3 then error("transient") end
              if e.id == 2 then error("permanent") end
              return e
            end, on_error = { retry = 2, backoff = 0, ["then"] = "dead_letter" } }
            local r = pipeline("p", { flaky }):run{ input = { {id = 1}, {id = 2} }, dead_letter = "\(dir)/dl.jsonl" }
            return r.emitted, r.retried, r.dead_lettered, r.stages.flaky.errors, r.stages.flaky.calls
            """)
        // event 1 fails twice then passes; event 2 fails three times: 5 errors, 4 retries.
        #expect(run.values == [.integer(1), .integer(4), .integer(1), .integer(5), .integer(6)])
        let record = read("\(dir)/dl.jsonl") ?? ""
        #expect(record.contains("\"stage\":\"flaky\""))
        #expect(record.contains("\"error\":\"test:5: permanent\""))
        #expect(record.contains("\"event\":{\"id\":2}"))
        #expect(record.contains("\"traceback\":\"stack traceback:"))
        #expect(record.contains("\"time\":"))
    }

    @Test func taskScopeReleasesPerEventUnlessOwned() {
        let dir = temporaryDirectory()
        let run = runLua(watching: dir, """
            local kept
            stage "s" { process = function(ctx, e)
              local f = fs.open("\(dir)/" .. e.id, "w")
              if e.id == 2 then kept = ctx:own(f) end
              e.path = scope.current():path()
              e.open_after = nil
              return e
            end }
            local r = pipeline("p", { "s" }):run{ input = { {id = 1}, {id = 2} } }
            return r.output[1].path, kept:is_open(), r.resources.released_by_scope, tostring(kept)
            """)
        #expect(run.values == [.string("run/p/s/task"), .boolean(false), .integer(2),
                               .string("file#2 \"\(dir)/2\" (released)")])
        #expect(run.openDescriptors == 0)
    }

    @Test func fanOutIsCountedSeparatelyAndTheIdentityHolds() {
        let run = runLua("""
            stage "split" { process = function(ctx, e)
              for i = 1, e.n do ctx:emit({ id = e.id * 10 + i }) end
              if e.n == 0 then return nil end
              return e
            end }
            stage "drop_odd" { process = function(ctx, e) if e.id % 2 == 0 then return e end end }
            local r = pipeline("p", { "split", "drop_odd" }):run{ input = { {id = 1, n = 2}, {id = 2, n = 0}, {id = 4, n = 1}, "junk" } }
            local ids = {}
            for _, e in ipairs(r.output) do ids[#ids+1] = e.id end
            return table.concat(ids, ","), r.read, r.emitted, r.filtered, r.rejected, r.fanout.created, r.fanout.emitted, r.fanout.filtered,
              r.read == r.emitted + r.filtered + r.skipped + r.dead_lettered + r.rejected
            """)
        #expect(run.values == [.string("12,4"), .integer(4), .integer(1), .integer(2), .integer(1), .integer(3),
                               .integer(1), .integer(2), .boolean(true)])
    }

    @Test func registrationErrorsNameTheLine() {
        #expect(runLua("stage 'x' { open = function() end }").error?.message == "test:1: stage 'x' has no process function")
        #expect(runLua("\npipeline 'p' { 'nope' }").error?.message == "test:2: pipeline 'p': unknown stage 'nope' (item 1)")
        #expect(runLua("stage('x', { process = print, on_error = 'explode' })").error?.message
            == "test:1: stage 'x': on_error must be \"abort\", \"skip\", \"dead_letter\" or { retry = n, backoff = seconds, [\"then\"] = ... } (got \"explode\")")
        #expect(runLua("stage('x', { process = print, on_error = { retry = 0 } })").error?.message
            == "test:1: stage 'x': on_error must be \"abort\", \"skip\", \"dead_letter\" or { retry = n, backoff = seconds, [\"then\"] = ... } (retry must be an integer from 1 to 1000, got 0)")
        #expect(runLua("pipeline 'p' { 42 }").error?.message
            == "test:1: pipeline 'p': item 1 must be a stage name, a stage definition, { name, key = value, ... } or a pipeline (got a number)")
        #expect(runLua("stage 'x' { process = 5 }").error?.message == "test:1: stage 'x': process must be a function (got a number)")
    }

    @Test func configAndStateAreThere() {
        let run = runLua("""
            stage "s" {
              open = function(ctx) ctx.state.n = 0 end,
              process = function(ctx, e) ctx.state.n = ctx.state.n + 1; e.k = ctx.config.k; e.name = ctx.name; e.n = ctx.state.n; return e end,
            }
            local r = pipeline("p", { { "s", k = "v" } }):run{ input = { {}, {} } }
            return r.output[2].k, r.output[2].name, r.output[2].n, r.output[1].k
            """)
        #expect(run.values == [.string("v"), .string("s"), .integer(2), .string("v")])
    }

    @Test func emitOutsideARunIsAClearError() {
        let run = runLua("""
            local saved
            stage "s" { process = function(ctx, e) saved = ctx; return e end }
            pipeline("p", { "s" }):run{ input = { {} } }
            saved:emit({})
            """)
        #expect(run.error?.message == "test:4: ctx:emit can only be used while the pipeline runs")
    }

    @Test func timersAreCancelledWithTheirScope() {
        let run = runLua("""
            local t
            stage "s" {
              open = function(ctx) t = timer.every(0.01, function() end) end,
              process = function(ctx, e) return e end,
            }
            pipeline("p", { "s" }):run{ input = { {} } }
            return t:is_open(), t.kind, t.label
            """)
        #expect(run.values == [.boolean(false), .string("timer"), .string("every 0.01s")])
    }

    @Test func descriptorCountIsUnchangedUnderEveryPolicy() {
        let dir = temporaryDirectory()
        for policy in ["skip", "dead_letter", "{ retry = 2 }", "abort"] {
            let run = runLua(watching: dir, """
                stage "s" {
                  open = function(ctx) ctx.state.log = fs.open("\(dir)/stage.log", "w") end,
                  process = function(ctx, e)
                    local a = fs.open("\(dir)/a.txt", "w")
                    local b <close> = fs.open("\(dir)/b.txt", "w")
                    local c = io.open("\(dir)/c.txt", "w")
                    if e.id % 2 == 0 then error("even") end
                    return e
                  end,
                  on_error = \(policy),
                }
                local events = {}
                for i = 1, 500 do events[i] = { id = i } end
                return pcall(function() return pipeline("p", { "s" }):run{ input = events, dead_letter = "\(dir)/dl.jsonl" } end)
                """)
            #expect(run.error == nil, "\(policy): \(run.error?.message ?? "")")
            #expect(run.openDescriptors == 0, "policy \(policy)")
            #expect(run.countsBeforeClose.acquired == run.countsBeforeClose.released, "policy \(policy)")
            #expect(run.counts.leaked == 0)
        }
    }
}
