import Foundation
import Testing
@testable import ScopeLua
@testable import ScopeLuaRepl
import CScopeLua

/// The REPL's logic, without a terminal.
@Suite(.serialized, .timeLimit(testTimeLimit)) struct ReplTests {
    final class Output: @unchecked Sendable {
        var lines: [String] = []
    }

    func session() -> (Repl, Output) {
        let out = Output()
        let repl = Repl { out.lines.append($0) }
        return (repl, out)
    }

    @Test func expressionsPrintAndGlobalsPersist() {
        let (repl, out) = session()
        defer { repl.quit() }
        repl.handle("1 + 41")
        repl.handle("x = 'kept'")
        repl.handle("x, 2, nil")
        repl.handle("=x")
        repl.handle("local y = 5")
        #expect(out.lines == ["42", "kept\t2\tnil", "kept"])
    }

    /// Timers fire while the prompt waits (the front end asks how long it may wait and
    /// calls fireTimers when the wait ends); a failing callback is reported.
    @Test func timersFireAtThePrompt() {
        let (repl, out) = session()
        defer { repl.quit() }
        #expect(repl.millisecondsToNextTimer == nil)
        repl.handle("n = 0; t = timer.every(3600, function() n = n + 1 end)")
        #expect((repl.millisecondsToNextTimer ?? 0) > 3_000_000)
        #expect(!repl.fireTimers())
        repl.handle("timer.after(0, function() n = n + 1; error('tick', 0) end)")
        #expect(repl.millisecondsToNextTimer == 0)
        #expect(repl.fireTimers())
        repl.handle("t:release()")
        repl.handle("=n")
        #expect(out.lines.count == 4)
        #expect(out.lines.first == "timer#2 \"after 0s\" (open, run/repl)")
        #expect(out.lines.dropFirst().first?.hasPrefix("timer: tick\nstack traceback:") == true)
        #expect(out.lines.suffix(2) == ["true", "1"])
        #expect(repl.errors == 1)
        #expect(repl.millisecondsToNextTimer == nil)
    }

    /// With stdin not a terminal the REPL is `lua -`: errors on stderr, the first ends the
    /// run with exit 1 and the session's scopes are released as by an error.
    @Test func pipedInputStopsAtTheFirstError() throws {
        let dir = temporaryDirectory()
        let r = try scopelua(["repl"], stdin: """
            db = sql.open("\(dir)/r.db"); db:exec("create table t(x)")
            tx = db:transaction(); db:exec("insert into t values (1)")
            print("before")
            error("boom")
            print("never")

            """)
        #expect(r.status == 1)
        #expect(r.stdout == "before\n")
        #expect(r.stderr.hasPrefix("stdin:1: boom\nstack traceback:"))
        #expect(r.stderr.contains("released transaction#2"))
        let check = try scopelua(["run", "-e", "print(sql.open('\(dir)/r.db'):first('select count(*) n from t').n)"])
        #expect(check.stdout == "0\n")
    }

    @Test func incompleteChunksContinue() {
        let (repl, out) = session()
        defer { repl.quit() }
        repl.handle("function f(a)")
        #expect(repl.prompt == .continuation)
        repl.handle("  return a * 2")
        repl.handle("end")
        #expect(repl.prompt == .primary)
        repl.handle("f(21)")
        repl.handle("x = = 1")
        #expect(out.lines == ["42", "stdin:1: unexpected symbol near '='"])
    }

    @Test func errorsPrintMessageAndTracebackAndThePromptSurvives() {
        let (repl, out) = session()
        defer { repl.quit() }
        repl.handle("error('boom')")
        repl.handle("1")
        #expect(out.lines.first?.hasPrefix("stdin:1: boom\nstack traceback:") == true)
        #expect(out.lines.last == "1")
    }

    @Test func globalsKeepResourcesOpenAndCloseVariablesEndWithTheirChunk() {
        let dir = temporaryDirectory()
        let (repl, out) = session()
        repl.handle("log = fs.open('\(dir)/kept.txt', 'w')")
        repl.handle("local tmp <close> = fs.open('\(dir)/tmp.txt', 'w'); t = tmp")
        repl.handle("log:is_open(), t:is_open()")
        repl.handle(":resources")
        repl.handle(":scopes")
        #expect(out.lines[0] == "true\tfalse")
        #expect(out.lines[1].hasPrefix("file#1 \"\(dir)/kept.txt\"  run/repl  "))
        #expect(out.lines[1].hasSuffix("  stdin:1"))
        #expect(out.lines[2] == "run (0 open)\n  repl (1 open)")
        #expect(openDescriptors(under: dir) == 1)
        #expect(repl.quit() == "released file#1 \"\(dir)/kept.txt\"")
        #expect(openDescriptors(under: dir) == 0)
    }

    /// Runs `chunk`, simulating Ctrl-C from another thread (the hook is signal-safe) once
    /// the chunk holds a file open under `dir`: then it is in its loop. Whether that was
    /// seen before the interrupt.
    func interruptOnceRunning(_ repl: Repl, holdingFileUnder dir: String, _ chunk: String) -> Bool {
        final class Flag: @unchecked Sendable { var ready = false }  // read after done.wait()
        let running = Flag()
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            running.ready = waitUntil { openDescriptors(under: dir) == 1 }
            sl_repl_interrupt_now()
            done.signal()
        }
        repl.handle(chunk)
        done.wait()
        return running.ready
    }

    @Test func interruptStopsAnEndlessChunkAndReleasesItsScopes() {
        let dir = temporaryDirectory()
        let (repl, out) = session()
        defer { repl.quit() }
        // The loop gives up after 40 s, so a broken interrupt fails the test instead of
        // hanging it (it reads the clock rarely: the interrupt lands in Lua code, as in an
        // endless loop).
        #expect(interruptOnceRunning(repl, holdingFileUnder: dir, """
            scope(function()
              local f = fs.open('\(dir)/held.txt', 'w')
              local stop, n = os.time() + 40, 0
              while n % (1 << 24) ~= 0 or os.time() < stop do n = n + 1 end
            end)
            """))
        // "interrupted!", positioned ("stdin:4: interrupted!") when the hook lands in
        // the Lua loop rather than in os.time, as lua.c words it either way.
        let first = out.lines.first.map { String($0.prefix { $0 != "\n" }) }
        #expect(first?.hasSuffix("interrupted!") == true, "\(out.lines)")
        #expect(openDescriptors(under: dir) == 0)
        repl.handle("'alive'")
        #expect(out.lines.last == "alive")
    }

    /// Each interrupt prints its own traceback: after a first Ctrl-C, a second one in
    /// another function used to print the first one's traceback again.
    @Test func everyInterruptHasItsOwnTraceback() {
        let dir = temporaryDirectory()
        let (repl, out) = session()
        defer { repl.quit() }
        repl.handle("""
            function spin(name)
              scope(function()
                local f = fs.open('\(dir)/' .. name, 'w')
                local stop, n = os.time() + 40, 0
                while n % (1 << 24) ~= 0 or os.time() < stop do n = n + 1 end
              end)
            end
            function first_spin() spin('a') end
            function second_spin() spin('b') end
            """)
        for name in ["first_spin", "second_spin"] {
            #expect(interruptOnceRunning(repl, holdingFileUnder: dir, "\(name)()"))
        }
        #expect(out.lines.count == 2)
        let second = out.lines.last ?? ""
        #expect(second.prefix { $0 != "\n" }.hasSuffix("interrupted!"), "\(second)")
        #expect(second.contains("second_spin"), "\(second)")
        #expect(!second.contains("first_spin"), "\(second)")
    }

    /// (From the pipeline-usability work; here because every in-process REPL shares the
    /// process's Ctrl-C state, so REPL tests must not run side by side.)
    @Test func theReplMayRedefineAndSaysSo() {
        final class Lines: @unchecked Sendable { var all: [String] = [] }
        let said = Lines(), diagnostics = Lines()
        var options = RuntimeOptions()
        options.diagnostics = { diagnostics.all.append($0) }
        let repl = Repl(options: options) { said.all.append($0) }
        defer { repl.quit() }
        repl.handle("stage 'enrich' { process = function(ctx, e) return e end }")
        repl.handle("stage 'enrich' { process = function(ctx, e) e.v = 2; return e end }")
        repl.handle("pipeline 'p' { 'enrich' }")
        repl.handle("pipeline 'p' { 'enrich' }")
        repl.handle("=pipeline('p', { 'enrich' }):run{ input = { {} } }.output[1].v")
        #expect(repl.errors == 0, "\(said.all)")
        #expect(diagnostics.all == ["stage 'enrich' redefined (was stdin:1)", "pipeline 'p' redefined (was stdin:1)",
                                    "pipeline 'p' redefined (was stdin:1)"])
        #expect(said.all.last == "2")
    }

    @Test func metaCommands() {
        let dir = temporaryDirectory()
        write("""
            stage "up" { process = function(ctx, e) e.name = e.name:upper(); return e end }
            pipeline "shout" { "up" }
            """, to: "p.lua", in: dir)
        write("{\"name\":\"ada\"}\n", to: "in.jsonl", in: dir)
        let (repl, out) = session()
        defer { repl.quit() }
        repl.handle(":load \(dir)/p.lua")
        repl.handle(":run shout \(dir)/in.jsonl")
        repl.handle(":run shout")
        #expect(repl.prompt == .event)
        repl.handle("{\"name\":\"grace\"}")
        repl.handle("")
        repl.handle(":trace on")
        repl.handle("t = timer.measure('x')")
        repl.handle(":trace off")
        repl.handle(":run nope")
        repl.handle(":bogus")
        #expect(out.lines[0] == "loaded \(dir)/p.lua; pipelines: shout")
        #expect(out.lines[1] == "{\"name\":\"ADA\"}")
        #expect(out.lines[2].hasPrefix("pipeline shout\n  events     read 1  emitted 1"))
        #expect(out.lines[3] == "type events, one JSON object per line; an empty line runs them")
        #expect(out.lines[4] == "{\"name\":\"GRACE\"}")
        #expect(out.lines[6] == "trace on")
        #expect(out.lines[7] == "trace off")
        #expect(out.lines[8] == "no pipeline named 'nope' (registered: shout)")
        #expect(out.lines[9] == "unknown command :bogus (:help lists them)")
    }

    @Test func completion() {
        let (repl, _) = session()
        defer { repl.quit() }
        #expect(repl.completions(for: "string.fo") == ["string.format"])
        #expect(repl.completions(for: ":re") == [":resources", ":report"])
        #expect(repl.completions(for: "with_") == ["with_resource"])
        #expect(repl.completions(for: "timer.me") == ["timer.measure"])
    }

    @Test func quitReleasesNewestFirst() {
        let (repl, _) = session()
        repl.handle("a = timer.measure('first')")
        repl.handle("b = timer.measure('second')")
        #expect(repl.quit() == "released timer#2 \"second\"\nreleased timer#1 \"first\"")
        #expect(repl.finished)
    }
}
