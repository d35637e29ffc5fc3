import Testing
@testable import ScopeLua

/// The C bridge (ARCHITECTURE rule 1): Swift functions fail by returning a status; the
/// trampoline raises. Failing a million times must not leak anything.
@Suite(.timeLimit(testTimeLimit)) struct BridgeTests {
    /// In a scopelua process of its own: the resident size of the test process moves
    /// with whatever the suites running in parallel allocate (it failed now and then,
    /// 10 MiB of growth against a limit of 8).
    @Test func aMillionFailuresUnderPcallDoNotGrowMemory() throws {
        let dir = temporaryDirectory()
        let script = write("""
            local function rss()
              local f <close> = assert(io.open("/proc/self/status"))
              return tonumber(f:read("a"):match("VmRSS:%s*(%d+) kB"))
            end
            local function fail(n)
              local ok, e
              for i = 1, n do ok, e = pcall(timer.measure, i) end
              collectgarbage()
              return e, collectgarbage("count")
            end
            local _, warm = fail(100000)
            local before = rss()
            local e, heap = fail(1000000)
            print(e)
            print(math.floor(heap - warm))
            print(rss() - before)
            """, to: "fail.lua", in: dir)
        let r = try scopelua(["run", script])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        try #require(lines.count == 3, "\(r.stdout)")
        #expect(lines[0] == "bad argument #1 to '?' (string expected, got number)")
        let heapGrowth = try #require(Int(lines[1])), rssGrowth = try #require(Int(lines[2]))
        #expect(heapGrowth < 64, "Lua heap grew by \(heapGrowth) KiB")
        // A retained Swift object or string per failure would be tens of MiB. Not under
        // AddressSanitizer (scripts/ci-asan.sh sets SCOPELUA_ASAN): its quarantine holds
        // freed blocks back (RSS grew by 57 MiB there), so RSS says nothing under it; the
        // Lua heap check above still runs.
        if !runningUnderASan {
            #expect(rssGrowth < 8 * 1024, "RSS grew by \(rssGrowth) KiB")
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
