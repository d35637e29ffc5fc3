import Testing
@testable import ScopeLua

/// scope(), defer(), scope.current(): ownership and LIFO release.
@Suite(.timeLimit(testTimeLimit)) struct ScopeTests {
    @Test func resourcesAndDefersReleaseNewestFirst() {
        let run = runLua("""
            local log = {}
            scope(function()
              defer(function() log[#log+1] = "defer1" end)
              local t1 = timer.measure("a")
              defer(function() log[#log+1] = "defer2:" .. tostring(t1:is_open()) end)
              local t2 = timer.measure("b")
              defer(function() log[#log+1] = "defer3:" .. tostring(t2:is_open()) end)
              _G.t1, _G.t2 = t1, t2
            end)
            log[#log+1] = tostring(t1:is_open()) .. tostring(t2:is_open())
            return table.concat(log, ",")
            """)
        #expect(run.error == nil)
        // defer3 runs while t2 is still open (it was acquired before), defer2 after t2 was released.
        #expect(run.text == "defer3:true,defer2:true,defer1,falsefalse")
    }

    @Test func scopeReturnsResultsAndPassesArguments() {
        let run = runLua("return scope(function(a, b) return a + b, 'x' end, 40, 2)")
        #expect(run.values == [.integer(42), .string("x")])
    }

    @Test func scopePathsNest() {
        let run = runLua("""
            local outer = scope.current():path()
            return outer, scope(function()
              return scope(function() return scope.current():path() end)
            end)
            """)
        #expect(run.values == [.string("run"), .string("run/scope/scope")])
    }

    @Test func deferReceivesTheErrorObjectThatEndsTheScope() {
        let run = runLua("""
            local seen
            local err = {code = 7}
            local ok, e = pcall(scope, function()
              defer(function(x) seen = x end)
              error(err)
            end)
            return ok, rawequal(e, err), rawequal(seen, err), scope(function() defer(function(x) seen = x end) end)
            """)
        #expect(run.values.prefix(3) == [.boolean(false), .boolean(true), .boolean(true)])
    }

    @Test func deferSeesNilOnNormalEnd() {
        let run = runLua("""
            local seen = "unset"
            scope(function() defer(function(x) seen = x end) end)
            return seen == nil
            """)
        #expect(run.values == [.boolean(true)])
    }

    @Test func failingReleaseDoesNotStopTheOthersAndIsRaised() {
        let run = runLua("""
            local log = {}
            local ok, e = pcall(scope, function()
              defer(function() log[#log+1] = "first" end)
              defer(function() error("release failed", 0) end)
              defer(function() log[#log+1] = "last" end)
            end)
            return ok, e, table.concat(log, ",")
            """)
        #expect(run.values == [.boolean(false), .string("release failed"), .string("last,first")])
        #expect(run.counts.releaseErrors == 1)
    }

    @Test func bodyErrorStaysPrimaryWithReleaseErrorsAppended() {
        let run = runLua("""
            local ok, e = pcall(scope, function()
              defer(function() error("second release", 0) end)
              defer(function() error("first release", 0) end)
              error("body failed", 0)
            end)
            return e
            """)
        #expect(run.text == "body failed\n\trelease error: first release\n\trelease error: second release")
    }

    @Test func goodBodyRaisesFirstReleaseErrorWithTheRestAttached() {
        let run = runLua("""
            local ok, e = pcall(scope, function()
              defer(function() error("older", 0) end)
              defer(function() error("newer", 0) end)
            end)
            return e
            """)
        #expect(run.text == "newer\n\trelease error: older")
    }

    @Test func tableErrorsCarryReleaseErrorsInAList() {
        let run = runLua("""
            local err = {}
            local ok, e = pcall(scope, function()
              defer(function() error("cleanup", 0) end)
              error(err)
            end)
            return rawequal(e, err), #e.release_errors, e.release_errors[1]
            """)
        #expect(run.values == [.boolean(true), .integer(1), .string("cleanup")])
    }

    @Test func badArgumentsAreClearErrors() {
        #expect(runLua("scope(42)").error?.message == "test:1: bad argument #1 to 'scope' (function expected, got number)")
        #expect(runLua("defer('x')").error?.message == "test:1: bad argument #1 to 'defer' (function expected, got string)")
    }

    @Test func resourcesListsDescriptorsOfOpenHandles() {
        let run = runLua("""
            return scope(function()
              local t = timer.measure("step")
              defer(function() end)
              local list = scope.current():resources()
              local d = list[1]
              return #list, d.kind, d.label, d.site, d.scope, d.id == t.id, type(d.age)
            end)
            """)
        #expect(run.values == [.integer(1), .string("timer"), .string("step"), .string("test:2"),
                               .string("run/scope"), .boolean(true), .string("number")])
    }

    @Test func scopeObjectDescribesItself() {
        let run = runLua("""
            local s
            scope(function() s = scope.current(); timer.measure("x") end)
            return tostring(scope.current()), tostring(s), s:is_open()
            """)
        #expect(run.values == [.string("scope run (open, 0 open resources)"), .string("scope run/scope (ended)"),
                               .boolean(false)])
    }

    /// The count in tostring(scope) is #scope:resources(); pending defers are named apart.
    @Test func scopeCountsAgreeWithResources() {
        let run = runLua("""
            return scope(function()
              local t = timer.measure("x")
              defer(function() end); defer(function() end)
              local s = scope.current()
              return #s:resources(), tostring(s)
            end)
            """)
        #expect(run.values == [.integer(1), .string("scope run/scope (open, 1 open resource, 2 deferred calls)")])
    }

    /// As Python's ExitStack: once a release or a defer fails, the ones after it in the
    /// same scope receive that error, and the scope raises it.
    @Test func aFailingReleaseIsPassedToTheReleasesAfterIt() {
        let run = runLua("""
            local log = {}
            local ok, e = pcall(scope, function()
              defer(function(err) log[#log+1] = "first got " .. tostring(err) end)
              defer(function(err) log[#log+1] = "second got " .. tostring(err); error("second failed", 0) end)
              defer(function(err) log[#log+1] = "third got " .. tostring(err) end)
            end)
            return table.concat(log, ", "), e
            """)
        #expect(run.values == [.string("third got nil, second got nil, first got second failed"),
                               .string("second failed")])
    }

    @Test func millionAcquireReleasePairsDoNotGrowTheScope() {
        let run = runLua("""
            local s = scope.current()
            for i = 1, 1000000 do
              local t <close> = timer.measure("loop")
            end
            return #s:resources()
            """)
        #expect(run.values == [.integer(0)])
        #expect(run.counts.acquired == 1_000_000)
        #expect(run.counts.releasedByHandle == 1_000_000)
    }
}
