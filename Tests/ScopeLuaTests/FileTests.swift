import Foundation
import Testing
@testable import ScopeLua

/// fs.open files and adopted io.open files.
@Suite(.timeLimit(testTimeLimit)) struct FileTests {
    @Test func writeReadLinesSeekLikeIo() {
        let dir = temporaryDirectory()
        let run = runLua("""
            do
              local f <close> = fs.open("\(dir)/data.txt", "w")
              f:write("alpha\\n", 42, "\\n", 1.5, "\\n")
            end
            local f <close> = fs.open("\(dir)/data.txt")
            local lines = {}
            for l in f:lines() do lines[#lines+1] = l end
            f:seek("set", 0)
            local n = f:read("l", "n")
            return table.concat(lines, "|"), n, f:seek("end"), f:is_open(), f.path == "\(dir)/data.txt"
            """)
        #expect(run.error == nil)
        #expect(run.values == [.string("alpha|42|1.5"), .string("alpha"), .integer(13), .boolean(true), .boolean(true)])
    }

    @Test func dataIsOnDiskOnceReleased() {
        let dir = temporaryDirectory()
        let run = runLua("""
            local f = fs.open("\(dir)/out.txt", "w")
            f:setvbuf("full")
            f:write("complete")
            f:release()
            """)
        #expect(run.error == nil)
        #expect(read("\(dir)/out.txt") == "complete")
    }

    @Test func failureConventionIsIoOpens() {
        let dir = temporaryDirectory()
        let run = runLua("return fs.open('\(dir)/missing/x.txt')")
        #expect(run.values == [.nil, .string("\(dir)/missing/x.txt: No such file or directory"), .integer(2)])
        #expect(runLua("fs.open('x', 'rw+')").error?.message == "test:1: bad argument #2 to 'open' (invalid mode)")
        #expect(runLua("fs.open()").error?.message == "test:1: bad argument #1 to 'open' (string expected, got no value)")
    }

    @Test func ioErrorsKeepIoWording() {
        let dir = temporaryDirectory()
        let run = runLua("local f = fs.open('\(dir)/w.txt', 'w'); f:write({})")
        #expect(run.error?.message == "test:1: bad argument #1 to 'write' (string expected, got table)")
        let fmt = runLua("local f = fs.open('\(dir)/w.txt', 'w'); f:read('x')")
        #expect(fmt.error?.message == "test:1: bad argument #1 to 'read' (invalid format)")
    }

    @Test func linesIteratorChecksTheHandleEachStep() {
        let dir = temporaryDirectory()
        write("a\nb\nc\n", to: "l.txt", in: dir)
        let run = runLua("""
            local f = fs.open("\(dir)/l.txt")
            for l in f:lines() do
              if l == "b" then f:release() end
            end
            """)
        #expect(run.error?.message == "test:2: file#1 \"\(dir)/l.txt\" used after release (released at test:3)")
    }

    @Test func closeIsReleaseSpelledLikeIo() {
        let dir = temporaryDirectory()
        let run = runLua("local f = fs.open('\(dir)/c.txt', 'w'); return f:close(), f:close(), f:is_open()")
        #expect(run.values == [.boolean(true), .boolean(false), .boolean(false)])
    }

    @Test func modulesAreAlsoRequireable() {
        let run = runLua("return require('scope.fs') == fs, require('scope.timer') == timer")
        #expect(run.values == [.boolean(true), .boolean(true)])
    }

    @Test func ioOpenFilesAreAdoptedByTheCurrentScope() {
        let dir = temporaryDirectory()
        let run = runLua(watching: dir, """
            local f
            scope(function()
              f = io.open("\(dir)/io.txt", "w")
              f:write("adopted")
            end)
            return io.type(f), io.open("\(dir)/missing.txt")
            """)
        #expect(run.values.prefix(2) == [.string("closed file"), .nil])
        #expect(read("\(dir)/io.txt") == "adopted")
        #expect(run.openDescriptors == 0)
    }

    /// An io.open file the collector reclaims while open is a leak like any other:
    /// warned once for its line, counted, summed up at the end.
    @Test func ioOpenFilesReclaimedOpenAreLeaks() {
        let dir = temporaryDirectory()
        let run = runLua("""
            for i = 1, 5 do
              local f = io.open("\(dir)/leak.txt", "w")
              f:write("x")
            end
            collectgarbage(); collectgarbage()
            return true
            """)
        #expect(run.counts.leaked == 5)
        #expect(run.diagnostics.count == 2)
        #expect(run.diagnostics.first?.hasSuffix("leak.txt\" acquired at test:2 was never released (reclaimed by the garbage collector)") == true)
        #expect(run.diagnostics.last == "scopelua: 4 more leaks of io files acquired at test:2")
    }

    @Test func ioFilesClosedByTheScriptAreSweptNotHeld() {
        let dir = temporaryDirectory()
        let run = runLua("""
            for i = 1, 5000 do
              local f = io.open("\(dir)/loop.txt", "w")
              f:close()
            end
            return #scope.current():resources()
            """)
        // The sweep keeps the registry small: far fewer than 5000 entries remain.
        if case .integer(let n)? = run.values.first { #expect(n < 128) } else { Issue.record("no count") }
        #expect(run.counts.acquired == 5000)
        #expect(run.counts.released == 5000)
    }

    @Test func descriptorCountIsUnchangedAfterThousandsOfFailedAcquisitions() {
        let dir = temporaryDirectory()
        write("x", to: "exists.txt", in: dir)
        let before = openDescriptors(under: dir)
        let run = runLua(watching: dir, """
            local failures = 0
            for i = 1, 3000 do
              local f, err = fs.open("\(dir)/missing/" .. i)
              if not f then failures = failures + 1 end
              local ok = pcall(function()
                local g <close> = fs.open("\(dir)/exists.txt")
                error("fail while holding")
              end)
              if not ok then failures = failures + 1 end
              pcall(scope, function()
                local h = fs.open("\(dir)/exists.txt")
                local k = io.open("\(dir)/exists.txt")
                error("fail in scope")
              end)
            end
            return failures
            """)
        #expect(run.values == [.integer(6000)])
        #expect(run.openDescriptors == before)
        #expect(run.countsBeforeClose.acquired == run.countsBeforeClose.released)
    }
}
