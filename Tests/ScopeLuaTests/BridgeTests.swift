import Testing
@testable import ScopeLua

/// The C bridge (ARCHITECTURE rule 1): Swift functions fail by returning a status; the
/// trampoline raises. Failing a million times must not leak anything.
@Suite(.timeLimit(.minutes(1))) struct BridgeTests {
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
        // A retained Swift object or string per failure would be tens of MiB. Not under
        // AddressSanitizer (scripts/ci-asan.sh sets SCOPELUA_ASAN): its quarantine holds
        // freed blocks back (RSS grew by 57 MiB there), so RSS says nothing under it; the
        // Lua heap check above still runs.
        if !runningUnderASan {
            #expect(rssAfter - rssBefore < 8 * 1024, "RSS grew by \(rssAfter - rssBefore) KiB")
        }
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
