import Foundation
import Testing
@testable import ScopeLua

/// The record-ownership rule (docs/ARCHITECTURE.md, "Ownership of records"): the runtime
/// never keeps a pointer into memory the collector owns, so nothing a script does with
/// the collector, finalizers or the debug library can make it touch freed memory. Under
/// AddressSanitizer (scripts/ci-asan.sh) and valgrind (scripts/valgrind-scripts.sh) the
/// old design failed these with use-after-free reports; here they also check what the
/// script sees and that every record goes back to the pool.
@Suite(.timeLimit(testTimeLimit)) struct OwnershipTests {
    /// Runs `source`, collects garbage (finalizers included), and returns the run with the number of
    /// records still out of the pool before the runtime is closed.
    func runCounting(_ source: String) -> (LuaRun, live: Int64) {
        var live: Int64 = -1
        let run = runLua(source) { rt in
            // Incremental full collections run the pending finalizers too (generational
            // ones leave them for the next cycle).
            _ = try? rt.execute("collectgarbage('incremental'); collectgarbage(); collectgarbage()", name: "=gc")
            live = rt.arena.pool.pointee.live
        }
        return (run, live)
    }

    @Test func aDeferThatCollectsGarbageWhileItsScopeEnds() {
        let (run, live) = runCounting("""
            local log = {}
            for i = 1, 50 do
              scope(function()
                local t = timer.measure("t")
                defer(function() collectgarbage(); collectgarbage(); log[#log+1] = "d" end)
                defer(function(err) collectgarbage() end)
              end)
            end
            return #log
            """)
        #expect(run.error == nil)
        #expect(run.values == [.integer(50)])
        #expect(run.counts.releasedByScope == 150)
        #expect(live == 0)
    }

    @Test func aTimerCallbackThatReleasesItselfAndCollects() {
        let (run, live) = runCounting("""
            local fired = 0
            stage "s" {
              open = function(ctx)
                local t
                t = timer.after(0, function()
                  fired = fired + 1
                  t:release(); t = nil
                  collectgarbage(); collectgarbage()
                end)
              end,
              process = function(ctx, e) return e end,
            }
            local events = {}
            for i = 1, 20 do events[i] = { id = i } end
            local r = pipeline("p", { "s" }):run{ input = events }
            return fired, r.emitted
            """)
        #expect(run.error == nil)
        #expect(run.values == [.integer(1), .integer(20)])
        #expect(live == 0)
    }

    @Test func removingAHandlesMetatableCannotCorruptTheRuntime() throws {
        let dir = temporaryDirectory()
        let (run, live) = runCounting("""
            local f = assert(fs.open("\(dir)/a.txt", "w"))
            f:write("kept")
            debug.setmetatable(f, nil)          -- no finalizer any more
            f = nil
            collectgarbage(); collectgarbage()
            local t = timer.measure("x")
            debug.setmetatable(t, nil); t = nil
            collectgarbage(); collectgarbage()
            -- a handle wearing another kind's metatable is not that kind
            local g = assert(fs.open("\(dir)/b.txt", "w"))
            local timer_mt = debug.getmetatable(timer.measure("y"))
            debug.setmetatable(g, timer_mt)
            local ok, err = pcall(function() return g:elapsed() end)
            debug.setmetatable(g, nil)
            return ok, err
            """)
        #expect(run.values.first == .boolean(false))
        #expect(run.values.last?.description.contains("bad self (timer expected, got") == true)
        // The file whose box lost its finalizer is still released (by the end of the run)
        // and its data is on disk; the timer without a box is released too.
        #expect(try String(contentsOfFile: "\(dir)/a.txt", encoding: .utf8) == "kept")
        #expect(run.counts.acquired == run.counts.released)
        // Records whose box vanished without a finalizer stay allocated (the runtime can
        // no longer know when the box is gone): memory only, never a dangling pointer.
        #expect(live <= 4)
    }

    @Test func aFinalizerThatResurrectsALeakedHandle() {
        let (run, live) = runCounting("""
            local saved
            do
              local g = timer.measure("x")
              setmetatable({}, { __gc = function() saved = g end })
            end
            collectgarbage(); collectgarbage()
            local t = timer.measure("z"); t:release()  -- a safe point: the leak is released
            local ok, err = pcall(function() return saved:release() end)
            return tostring(saved), ok, err, saved:is_open()
            """)
        #expect(run.error == nil)
        #expect(run.values == [.string("timer#1 \"x\" (released)"), .boolean(true), .boolean(false), .boolean(false)])
        #expect(run.counts.leaked == 1)
        #expect(live == 0)
    }

    /// Finalizers only queue: a leak is released at the next safe point, never in the
    /// middle of the runtime's own work. Creating a savepoint while the collector
    /// reclaimed a dropped one used to roll back the new one with it.
    @Test func leakedSavepointsDoNotDestroyTheTransactionsBeingCreated() {
        let (run, live) = runCounting("""
            local db = sql.open(":memory:")
            db:exec("create table t(x)")
            collectgarbage("incremental", 10, 400)  -- collect all the time
            local failures, first = 0, nil
            for i = 1, 3000 do
              local outer <close> = db:transaction()
              do local leaked = db:transaction() end   -- dropped while open
              local ok, err = pcall(function()
                local tx <close> = db:transaction()
                db:exec("insert into t values (?)", i)
              end)
              if not ok then failures = failures + 1; first = first or err end
            end
            collectgarbage("generational")
            return failures, tostring(first)
            """)
        #expect(run.error == nil)
        #expect(run.values == [.integer(0), .string("nil")])
        #expect(run.counts.leaked > 0)
        #expect(run.diagnostics.first?.hasPrefix("scopelua: leak: transaction#") == true)
        #expect(run.diagnostics.last == "scopelua: \(run.counts.leaked - 1) more leaks of transactions acquired at test:7")
        #expect(run.diagnostics.count == 2)
        #expect(live <= 1)  // the connection, released when the runtime closes
    }

    @Test func recordsGoBackToThePool() {
        let (run, live) = runCounting("""
            for i = 1, 100000 do local t <close> = timer.measure("hot") end
            for i = 1, 1000 do local t = timer.measure("dropped") end
            for i = 1, 1000 do scope(function() local t = timer.measure("scoped") end) end
            return true
            """)
        #expect(run.error == nil)
        #expect(run.counts.acquired == 102_000)
        #expect(run.counts.leaked == 1000)
        #expect(live == 0)
    }

    /// `__close` trusts a box by its size and magic, and the record's kind decides what
    /// is released: a timer wearing a file's metatable is released as the timer it is.
    @Test func closeReleasesABoxAsWhatItsRecordSays() {
        let run = runLua("""
            local t = timer.measure("a")
            local timer_mt = debug.getmetatable(t)
            local file_mt = debug.getmetatable(fs.open("/dev/null"))
            debug.setmetatable(t, file_mt)
            do local x <close> = t end      -- a file's __close on a timer's box
            debug.setmetatable(t, timer_mt)
            return t:is_open(), tostring(t)
            """)
        #expect(run.error == nil)
        #expect(run.values == [.boolean(false), .string("timer#1 \"a\" (released)")])
        #expect(run.timers.first?.count == 1)
    }
}
