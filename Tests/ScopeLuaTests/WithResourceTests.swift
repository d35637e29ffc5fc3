import Testing
@testable import ScopeLua

@Suite(.timeLimit(testTimeLimit)) struct WithResourceTests {
    @Test func releasesAllNewestFirstAndReturnsResults() {
        let run = runLua("""
            local a, b = timer.measure("a"), timer.measure("b")
            local order = {}
            scope(function()
              defer(function() order[#order+1] = "scope end" end)
            end)
            local x, y = with_resource(a, b, function(p, q)
              return rawequal(p, a) and rawequal(q, b), "done"
            end)
            return x, y, a:is_open(), b:is_open(), #scope.current():resources()
            """, trace: true)
        #expect(run.values == [.boolean(true), .string("done"), .boolean(false), .boolean(false), .integer(0)])
        let releases = run.diagnostics.filter { $0.contains("release timer") }
        #expect(releases == ["scopelua: trace: release timer#2 \"b\" at test:6",
                             "scopelua: trace: release timer#1 \"a\" at test:6"])
    }

    @Test func releasesOnErrorAndReraises() {
        let run = runLua("""
            local a, b = timer.measure("a"), timer.measure("b")
            local ok, e = pcall(with_resource, a, b, function() error("inside", 0) end)
            return ok, e, a:is_open(), b:is_open()
            """)
        #expect(run.values == [.boolean(false), .string("inside"), .boolean(false), .boolean(false)])
    }

    @Test func releaseErrorAfterFailingBodyIsAttached() {
        let run = runLua("""
            local f = fs.open("/dev/full", "w")
            local ok, e = pcall(with_resource, f, function(f) f:write("x"); error("body", 0) end)
            return e
            """)
        #expect(run.text == "body\n\trelease error: release of file#1 \"/dev/full\" failed: No space left on device")
    }

    /// `with_resource(fs.open(missing), fn)`: the open's own message, not "got nil".
    @Test func aFailedOpenRaisesItsMessage() {
        #expect(runLua("with_resource(fs.open('/nonexistent/x.txt'), function() end)").error?.message
            == "test:1: /nonexistent/x.txt: No such file or directory (resource #1 of 'with_resource' is nil)")
    }

    @Test func badArguments() {
        #expect(runLua("with_resource(1, function() end)").error?.message
            == "test:1: bad argument #1 to 'with_resource' (resource handle expected, got number)")
        #expect(runLua("with_resource(timer.measure('x'), 5)").error?.message
            == "test:1: bad argument #2 to 'with_resource' (function expected, got number)")
        #expect(runLua("local t = timer.measure('x'); t:release(); with_resource(t, print)").error?.message
            == "test:1: timer#1 \"x\" used after release (released at test:1)")
    }
}
