import Testing
@testable import ScopeLua

/// The `log` module: lines to stderr (the diagnostics sink), never to stdout.
@Suite(.timeLimit(testTimeLimit)) struct LogTests {
    @Test func levelsAndArgumentsAsPrintJoinsThem() {
        let run = runLua("""
            log.info("started", 3, nil, true)
            log.warn(setmetatable({}, { __tostring = function() return "custom" end }))
            require("scope.log").error("failed")
            """)
        #expect(run.error == nil)
        #expect(run.diagnostics == ["info: started\t3\tnil\ttrue", "warn: custom", "error: failed"])
    }

    @Test func aFailingTostringIsTheCallersError() {
        let run = runLua("""
            log.info(setmetatable({}, { __tostring = function() error("no text", 0) end }))
            """)
        #expect(run.error?.message == "no text")
        #expect(run.diagnostics.isEmpty)
    }
}
