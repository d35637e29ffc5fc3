import Foundation
import Testing
@testable import ScopeLua

/// `os.exit` releases everything before leaving (issue 9, item 20).
@Suite struct ExitTests {
    /// A script holding a transaction as a `<close>` variable and another one owned by
    /// its scope, a runtime file with buffered data, and deferred functions that write
    /// down the error they see; it exits from inside a pcall, which cannot catch it.
    static func script(exit call: String) -> String {
        """
        local db = sql.open("t.db")
        db:exec("CREATE TABLE IF NOT EXISTS t(x)")
        local f = fs.open("out.txt", "w"); f:setvbuf("full"); f:write("complete\\n")
        defer(function(err) local g <close> = fs.open("root.txt", "w"); g:write(tostring(err), "\\n") end)
        scope(function()
          local tx <close> = db:transaction()
          db:exec("INSERT INTO t VALUES (1)")
          local tx2 = db:transaction()
          db:exec("INSERT INTO t VALUES (2)")
          defer(function(err) local g <close> = fs.open("inner.txt", "w"); g:write(tostring(err), "\\n") end)
          pcall(function() \(call) end)
          io.stderr:write("not reached\\n")
        end)
        io.stderr:write("not reached\\n")
        """
    }

    @Test(.timeLimit(testTimeLimit), arguments: [("os.exit(1, true)", Int32(1)), ("os.exit(false)", 1), ("os.exit(3)", 3), ("os.exit(false, true)", 1)])
    func aFailureStatusReleasesEverythingAsAnError(call: String, status: Int32) throws {
        let dir = temporaryDirectory()
        write(Self.script(exit: call), to: "exit.lua", in: dir)
        let r = try scopelua(["run", "exit.lua"], directory: dir)
        #expect(r.status == status, "\(r.stderr)")
        #expect(r.stderr == "")
        #expect(rowCount("\(dir)/t.db") == 0, "half a batch was committed")
        #expect(read("\(dir)/inner.txt") == "exit.lua:11: os.exit(\(status))\n")
        #expect(read("\(dir)/root.txt") == "exit.lua:11: os.exit(\(status))\n")
        #expect(read("\(dir)/out.txt") == "complete\n")
    }

    @Test(.timeLimit(testTimeLimit), arguments: ["os.exit(0, true)", "os.exit(true)", "os.exit()"])
    func aSuccessStatusReleasesEverythingNormally(call: String) throws {
        let dir = temporaryDirectory()
        write(Self.script(exit: call), to: "exit.lua", in: dir)
        let r = try scopelua(["run", "exit.lua"], directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr == "")
        #expect(rowCount("\(dir)/t.db") == 2)
        #expect(read("\(dir)/inner.txt") == "nil\n")
        #expect(read("\(dir)/root.txt") == "nil\n")
        #expect(read("\(dir)/out.txt") == "complete\n")
    }

    @Test(.timeLimit(testTimeLimit)) func aFailedReleaseTurnsSuccessIntoFailure() throws {
        let r = try scopelua(["run", "-e", "local f = fs.open('/dev/full', 'w'); f:write('x'); os.exit(0)"])
        #expect(r.status == 1)
        #expect(r.stderr == "scopelua: release error: release of file#1 \"/dev/full\" failed: No space left on device\n")
    }

    /// From a stage, os.exit closes the pipeline: every stage's close gets the error.
    @Test(.timeLimit(testTimeLimit)) func fromAStageItClosesThePipeline() throws {
        let dir = temporaryDirectory()
        write("""
            stage "a" {
              open = function(ctx) ctx.state.f = fs.open("a.txt", "w") end,
              process = function(ctx, e) ctx.state.f:write(e.id, "\\n"); return e end,
              close = function(ctx, err) io.stderr:write("a closes with ", tostring(err), "\\n") end,
            }
            stage "b" {
              process = function(ctx, e) if e.id == 2 then os.exit(5) end return e end,
              close = function(ctx, err) io.stderr:write("b closes with ", tostring(err), "\\n") end,
            }
            pipeline "p" { "a", "b" }
            """, to: "p.lua", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "-", "--output", "out.jsonl", "--report"],
                             stdin: "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n", directory: dir)
        #expect(r.status == 5, "\(r.stderr)")
        #expect(r.stderr.hasPrefix("b closes with p.lua:7: os.exit(5)\na closes with p.lua:7: os.exit(5)\npipeline p\n"), "\(r.stderr)")
        #expect(r.stderr.contains("scopelua report"))
        #expect(read("\(dir)/a.txt") == "1\n2\n")
        #expect(read("\(dir)/out.jsonl") == "{\"id\":1}\n")
    }
}
