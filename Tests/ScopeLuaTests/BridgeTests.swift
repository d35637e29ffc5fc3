import Testing
@testable import ScopeLua

/// The C bridge (ARCHITECTURE rule 1): Swift functions fail by returning a status; the
/// trampoline raises. Failing a million times must not leak anything.
@Suite struct BridgeTests {
    @Test func aMillionFailuresUnderPcallDoNotGrowMemory() {
        let rt = Runtime()
        defer { rt.close() }
        let loop = """
            local n = ...
            local ok, e
            for i = 1, n do ok, e = pcall(timer.measure, i) end
            collectgarbage()
            return e, collectgarbage("count")
            """
        func fail(_ n: Int) -> [LuaValue] {
            (try? rt.execute("return (function(...) \(loop) end)(\(n))")) ?? []
        }
        let warm = fail(100_000)
        let rssBefore = residentKiB()
        let after = fail(1_000_000)
        let rssAfter = residentKiB()
        #expect(after.first == .string("bad argument #1 to '?' (string expected, got number)"))
        if case .number(let kb1)? = warm.last, case .number(let kb2)? = after.last {
            #expect(kb2 < kb1 + 64, "Lua heap grew from \(kb1) KiB to \(kb2) KiB")
        } else {
            Issue.record("no memory figures: \(warm) \(after)")
        }
        // A retained Swift object or string per failure would be tens of MiB.
        #expect(rssAfter - rssBefore < 8 * 1024, "RSS grew by \(rssAfter - rssBefore) KiB")
    }

    @Test func errorsFromSwiftCarryScriptPositions() {
        #expect(runLua("\n\ntimer.measure(nil)").error?.message
            == "test:3: bad argument #1 to 'measure' (string expected, got nil)")
    }

    @Test func tracebackPointsWhereTheErrorHappenedInsideScope() {
        let rt = Runtime()
        defer { rt.close() }
        do {
            try rt.execute("""
                local function inner() error("deep") end
                scope(function() inner() end)
                """, name: "=tb")
            Issue.record("no error")
        } catch {
            #expect(error.message == "tb:1: deep")
            #expect(error.traceback?.contains("tb:1: in upvalue 'inner'") == true, "\(error.traceback ?? "")")
        }
    }

    /// Issue 9, item 5: a traceback belongs to one error object. An error that scope()
    /// re-raised and a Lua pcall caught must lend its traceback to no later error
    /// (not even one with the same text), and must not be kept alive for it.
    @Test func aTracebackBelongsToItsErrorAlone() {
        let rt = Runtime()
        defer { rt.close() }
        for later in ["error('later')", "error('', 0)"] {
            do {
                try rt.execute("""
                    pcall(scope, function() error("", 0) end)
                    local function unrelated() \(later) end
                    unrelated()
                    """, name: "=tb")
                Issue.record("no error")
            } catch {
                #expect(error.traceback?.contains("tb:2: in local 'unrelated'") == true, "\(error.traceback ?? "nil")")
            }
        }
        // Re-raised through nested scopes with a release error appended, the error keeps
        // the traceback of where it happened.
        do {
            try rt.execute("""
                local function inner() error("deep") end
                scope(function()
                  scope(function() defer(function() error("defer failed", 0) end); inner() end)
                end)
                """, name: "=tb")
            Issue.record("no error")
        } catch {
            #expect(error.message == "tb:1: deep\n\trelease error: defer failed")
            #expect(error.traceback?.contains("tb:1: in upvalue 'inner'") == true, "\(error.traceback ?? "nil")")
        }
        let collected = try? rt.execute("""
            local weak = setmetatable({}, { __mode = "k" })
            do
              local e = {}
              weak[e] = true
              pcall(scope, function() error(e) end)
              pcall(with_resource, function() error(e) end)
            end
            collectgarbage(); collectgarbage()
            return next(weak) == nil
            """, name: "=gc")
        #expect(collected == [.boolean(true)])
    }

    @Test func stockBehaviourIsUnchanged() {
        let run = runLua("""
            local ok, e = pcall(error, {x = 1})
            local co = coroutine.create(function(a) local b = coroutine.yield(a + 1); return b * 2 end)
            local _, y = coroutine.resume(co, 1)
            local _, z = coroutine.resume(co, 5)
            return type(e), y, z, select('#', pcall(string.rep)), (pcall(string.rep)), collectgarbage("isrunning"),
              math.type(1), tostring(nil)
            """)
        #expect(run.values.prefix(7) == [.string("table"), .integer(2), .integer(10), .integer(2), .boolean(false),
                                         .boolean(true), .string("integer")])
    }
}
