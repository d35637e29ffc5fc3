import Foundation
import Testing
@testable import ScopeLua

/// What a new user types: the implicit `run`, --version, --check, mistyped runner
/// options, a second --input, an output that cannot be written, --help after an error.
@Suite(.timeLimit(testTimeLimit)) struct CommandLineTests {
    @discardableResult
    func pipelineScript(in dir: String) -> String {
        write("""
            stage "keep" { process = function(ctx, e) return e end }
            pipeline "p" { "keep" }
            """, to: "p.lua", in: dir)
    }

    @Test func aScriptRunsWithoutTheWordRunAsUnderLua() throws {
        let dir = temporaryDirectory()
        write("print(arg[0], ...)", to: "job.lua", in: dir)
        let r = try scopelua(["job.lua", "a", "b"], directory: dir)
        #expect(r.status == 0)
        #expect(r.stdout == "job.lua\ta\tb\n")
        let e = try scopelua(["-e", "print(6 * 7)"])
        #expect(e.stdout == "42\n")
    }

    @Test func versionNamesScopeluaAndTheLibraries() throws {
        let r = try scopelua(["--version"])
        #expect(r.status == 0)
        #expect(r.stdout == "\(ScopeluaVersion.description)\n")
        #expect(r.stdout.hasPrefix("scopelua \(ScopeluaVersion.number) (Lua 5.4."))
        #expect(r.stdout.contains(", SQLite 3."))
        #expect(r.stdout.contains(", hiredis 0.14."))
    }

    @Test func checkRegistersAndChecksWithoutRunning() throws {
        let dir = temporaryDirectory()
        write("""
            stage "s" { open = function() error("opened") end, process = function(ctx, e) return e end }
            pipeline "p" { "s" }
            """, to: "p.lua", in: dir)
        let ok = try scopelua(["run", "--check", "p.lua", "--input", "missing.jsonl"], directory: dir)
        #expect(ok.status == 0)
        #expect(ok.stderr == "scopelua: check passed: pipeline p, 1 stage\n")
        write("stage \"s\" { process = 1 }", to: "bad.lua", in: dir)
        let bad = try scopelua(["run", "--check", "bad.lua"], directory: dir)
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("bad.lua:1:"))
        let unknown = try scopelua(["run", "--check", "p.lua", "--input", "x", "--pipeline", "nope"], directory: dir)
        #expect(unknown.status == 1)
        #expect(unknown.stderr == "scopelua: no pipeline named 'nope' (registered: p)\n")
    }

    @Test func aMistypedRunnerOptionIsNamedAndNothingRunsSilently() throws {
        let dir = temporaryDirectory()
        pipelineScript(in: dir)
        let r = try scopelua(["run", "p.lua", "--inptu", "events.jsonl"], directory: dir)
        #expect(r.status == 0)
        #expect(r.stderr == """
            scopelua: note: '--inptu' goes to the script (arg[1]); did you mean '--input'?
            scopelua: pipeline 'p' registered but no --input given: nothing ran

            """)
    }

    @Test func aSecondInputIsAUsageError() throws {
        let dir = temporaryDirectory()
        pipelineScript(in: dir)
        let r = try scopelua(["run", "--input", "a.jsonl", "p.lua", "--input", "b.jsonl"], directory: dir)
        #expect(r.status == 2)
        #expect(r.stderr.hasPrefix("Error: --input given 2 times: a run reads one input\nUsage: scopelua run "))
    }

    @Test func anUnwritableOutputIsAUsageErrorBeforeAnythingRuns() throws {
        let dir = temporaryDirectory()
        write("""
            stage "s" { open = function() io.stderr:write("opened\\n") end, process = function(ctx, e) return e end }
            pipeline "p" { "s" }
            """, to: "p.lua", in: dir)
        write("{\"id\":1}\n", to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "no/such/dir/out.jsonl"], directory: dir)
        #expect(r.status == 2)
        #expect(r.stderr == "scopelua: cannot write output no/such/dir/out.jsonl: No such file or directory (in directory no/such/dir)\n")
        try FileManager.default.createDirectory(atPath: "\(dir)/dead", withIntermediateDirectories: true)
        let d = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--dead-letter", "dead"], directory: dir)
        #expect(d.status == 2)
        #expect(d.stderr == "scopelua: cannot write dead-letter file dead: Is a directory\n")
    }

    @Test func anErrorAfterTheScriptShowsRunsUsage() throws {
        let dir = temporaryDirectory()
        pipelineScript(in: dir)
        let r = try scopelua(["run", "p.lua", "--output", "o.jsonl"], directory: dir)
        #expect(r.status == 2)
        #expect(r.stderr.hasPrefix("Error: --pipeline, --output and --dead-letter need --input FILE\nUsage: scopelua run "))
        #expect(r.stderr.contains("See 'scopelua run --help'"))
    }

    @Test func suggestionsAreCloseRunnerOptionsOnly() throws {
        let dir = temporaryDirectory()
        write("print(select('#', ...))", to: "s.lua", in: dir)
        let r = try scopelua(["run", "s.lua", "--ouput", "--dead-leter", "--verbose", "--", "--inptu"], directory: dir)
        #expect(r.stdout == "4\n")
        #expect(r.stderr == """
            scopelua: note: '--ouput' goes to the script (arg[1]); did you mean '--output'?
            scopelua: note: '--dead-leter' goes to the script (arg[2]); did you mean '--dead-letter'?

            """)
    }
}
