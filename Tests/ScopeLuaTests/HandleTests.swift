import Testing
@testable import ScopeLua

/// What every handle does: <close>, release, is_open, kind, id, tostring, use after
/// release, leaks.
@Suite(.timeLimit(testTimeLimit)) struct HandleTests {
    /// A `<close>` variable holding a timer whose release is logged through a defer in
    /// an inner scope is awkward; instead each test checks `is_open` from outside.
    @Test func closeOnNormalExitBreakGotoReturnAndError() {
        let run = runLua("""
            local log = {}
            local h
            do local t <close> = timer.measure("block"); h = t end
            log[#log+1] = "block:" .. tostring(h:is_open())
            for i = 1, 3 do local t <close> = timer.measure("break"); h = t; break end
            log[#log+1] = "break:" .. tostring(h:is_open())
            do
              local t <close> = timer.measure("goto"); h = t
              goto out
            end
            ::out::
            log[#log+1] = "goto:" .. tostring(h:is_open())
            local function f() local t <close> = timer.measure("return"); h = t; return 1 end
            f()
            log[#log+1] = "return:" .. tostring(h:is_open())
            pcall(function() local t <close> = timer.measure("error"); h = t; error("x") end)
            log[#log+1] = "error:" .. tostring(h:is_open())
            return table.concat(log, ",")
            """)
        #expect(run.text == "block:false,break:false,goto:false,return:false,error:false")
        #expect(run.counts.releasedByHandle == 5)
    }

    @Test func releaseReturnsTrueThenFalse() {
        let run = runLua("""
            local t = timer.measure("x")
            return t:release(), t:release(), t:is_open()
            """)
        #expect(run.values == [.boolean(true), .boolean(false), .boolean(false)])
        #expect(run.counts.releasedByHandle == 1)
    }

    @Test func kindIdAndTostring() {
        let run = runLua("""
            local t = timer.measure("parse")
            local open = tostring(t)
            t:release()
            return t.kind, math.type(t.id), open, tostring(t), t.label
            """)
        #expect(run.values == [.string("timer"), .string("integer"), .string("timer#1 \"parse\" (open, run)"),
                               .string("timer#1 \"parse\" (released)"), .string("parse")])
    }

    @Test func idsAreUniqueInTheRun() {
        let run = runLua("""
            local seen, n = {}, 0
            for i = 1, 100 do
              local t <close> = timer.measure("x")
              if not seen[t.id] then n = n + 1 end
              seen[t.id] = true
            end
            return n
            """)
        #expect(run.values == [.integer(100)])
    }

    @Test func useAfterReleaseNamesTheHandleAndWhereItWasReleased() throws {
        let dir = temporaryDirectory()
        let run = runLua("""
            local f = fs.open("\(dir)/events.log", "w")
            f:release()
            f:write("late")
            """)
        #expect(run.error?.message == "test:3: file#1 \"\(dir)/events.log\" used after release (released at test:2)")
    }

    @Test func useAfterCloseAndAfterScopeEnd() {
        let dir = temporaryDirectory()
        let closed = runLua("""
            local keep
            do
              local f <close> = fs.open("\(dir)/a.txt", "w")
              keep = f
            end
            keep:read("a")
            """)
        #expect(closed.error?.message == "test:6: file#1 \"\(dir)/a.txt\" used after release (released by <close> at the end of the block that acquired it at test:3)")
        let scoped = runLua("""
            local keep
            scope(function() keep = fs.open("\(dir)/b.txt", "w") end)
            keep:write("x")
            """)
        #expect(scoped.error?.message == "test:3: file#1 \"\(dir)/b.txt\" used after release (released at the end of scope run/scope)")
    }

    @Test func methodsCheckTheirSelf() {
        let run = runLua("local t = timer.measure('x'); return pcall(t.release, 42)")
        #expect(run.values == [.boolean(false), .string("bad argument #1 to '?' (resource handle expected, got number)")])
        let method = runLua("local t = timer.measure('x'); t.elapsed({})")
        #expect(method.error?.message == "test:1: bad argument #1 to 'elapsed' (timer expected, got table)")
    }

    @Test func droppedOpenHandleIsALeakWithItsAcquisitionSite() {
        let dir = temporaryDirectory()
        let run = runLua(watching: dir, """
            local function forget()
              fs.open("\(dir)/out.log", "w")
            end
            forget()
            collectgarbage()
            collectgarbage()
            return #scope.current():resources()
            """)
        #expect(run.values == [.integer(0)])
        #expect(run.diagnostics == ["scopelua: leak: file#1 \"\(dir)/out.log\" acquired at test:2 was never released (reclaimed by the garbage collector)"])
        #expect(run.counts.leaked == 1)
        #expect(run.openDescriptors == 0)
    }

    @Test func releasedHandlesAreNotLeaks() {
        let run = runLua("""
            for i = 1, 1000 do local t = timer.measure("x"); t:release() end
            collectgarbage(); collectgarbage()
            """)
        #expect(run.diagnostics.isEmpty)
        #expect(run.counts.leaked == 0)
    }

    @Test func closeAttachesAReleaseFailureToTheBlocksError() {
        // /dev/full accepts buffered writes and fails when they are flushed at release.
        let run = runLua("""
            local ok, e = pcall(function()
              local f <close> = fs.open("/dev/full", "w")
              f:write("data")
              error("body failed", 0)
            end)
            return e
            """)
        #expect(run.text == "body failed\n\trelease error: release of file#1 \"/dev/full\" failed: No space left on device")
        #expect(run.counts.releaseErrors == 1)
    }

    @Test func failingReleaseAlone() {
        let run = runLua("""
            local f = fs.open("/dev/full", "w")
            f:write("data")
            local ok, e = pcall(f.release, f)
            return ok, e, f:is_open()
            """)
        #expect(run.values == [.boolean(false), .string("release of file#1 \"/dev/full\" failed: No space left on device"),
                               .boolean(false)])
    }

    @Test func traceShowsAcquireAndRelease() {
        let run = runLua("""
            scope(function()
              local t <close> = timer.measure("x")
              local u = timer.measure("y")
            end)
            """, trace: true)
        #expect(run.diagnostics == [
            "scopelua: trace: acquire timer#1 \"x\" in run/scope at test:2",
            "scopelua: trace: acquire timer#2 \"y\" in run/scope at test:3",
            "scopelua: trace: release timer#1 \"x\" by <close>",
            "scopelua: trace: release timer#2 \"y\" by the end of run/scope",
        ])
    }
}
