import Foundation
import Testing
import CScopeLua
@testable import ScopeLua
import ScopeLuaRepl

/// Per-stage limits (`limits = { time, instructions, memory }`) and the state-wide
/// `--memory-limit`, against hostile and buggy stages: every breach is an error of the
/// event under the stage's on_error, the run goes on with the other events, and what the
/// event acquired is released (the ledger and the process's descriptors back where they
/// started).
@Suite(.timeLimit(testTimeLimit))
struct LimitTests {
    /// A pipeline whose stage opens a file for every event (in its task scope) and runs
    /// `hostile` on event 3; it logs "after" when code after the hostile part runs.
    static func job(limits: String = "{ time = 0.2 }", policy: String = "\"dead_letter\"", hostile: String,
                    extra: String = "") -> String {
        """
        local function log(text)
          local f <close> = assert(io.open("log.txt", "a"))
          f:write(text, "\\n")
        end
        stage "enrich" {
          limits = \(limits),
          on_error = \(policy),
          \(extra)
          process = function(ctx, e)
            local f = fs.open("scratch-" .. e.n .. ".txt", "w")
            f:write(e.n)
            if e.n == 3 then
              \(hostile)
              log("after")
            end
            return e
          end,
        }
        pipeline "p" { "enrich" }
        """
    }

    static func events(_ n: Int) -> String {
        (1...n).map { "{\"n\":\($0)}\n" }.joined()
    }

    struct Outcome {
        var result: ProcessResult
        var output: [Int]
        var dead: [[String: Any]]
        var log: String
    }

    static func run(_ script: String, events n: Int = 6, options: [String] = [], environment: [String: String] = [:],
                    sourceLocation: SourceLocation = #_sourceLocation) throws -> Outcome {
        let dir = temporaryDirectory()
        write(script, to: "job.lua", in: dir)
        write(events(n), to: "in.jsonl", in: dir)
        let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl",
                                              "--dead-letter", "dead.jsonl", "--report"] + options,
                               directory: dir, environment: environment, sourceLocation: sourceLocation)
        let output = (read("\(dir)/out.jsonl") ?? "").split(separator: "\n").compactMap { line -> Int? in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))).flatMap { ($0 as? [String: Any])?["n"] as? Int }
        }
        let dead = (read("\(dir)/dead.jsonl") ?? "").split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        }
        return Outcome(result: r, output: output, dead: dead, log: read("\(dir)/log.txt") ?? "")
    }

    /// Every resource released (by its scope, or a one-shot timer by its firing), none
    /// leaked, and the process's descriptors back to their count before the run (the
    /// report of the process under test).
    static func expectClean(_ r: ProcessResult, sourceLocation: SourceLocation = #_sourceLocation) {
        let resources = r.stderr.split(separator: "\n").first { $0.contains("resources  acquired") }.map(String.init) ?? ""
        let n = resources.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        // acquired A released R (by handle H, by scope end S, leaked L) release errors E
        #expect(n.count == 6 && n[0] > 0 && n[1] == n[0] && n[2] + n[3] == n[0] && n[4] == 0 && n[5] == 0, "\(resources)",
                sourceLocation: sourceLocation)
        let line = r.stderr.split(separator: "\n").first { $0.contains("descriptors open") }.map(String.init) ?? ""
        let numbers = line.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        #expect(numbers.count == 2 && numbers[0] == numbers[1], "\(line)", sourceLocation: sourceLocation)
    }

    static let timeBreach = "stage 'enrich' exceeded its time limit (0.2 s) on event line 3"

    // MARK: - time

    /// An endless loop in process under each policy: the run finishes, the other events
    /// all pass, the event follows the policy with the limit's message.
    @Test(arguments: ["\"dead_letter\"", "\"skip\"", "{ retry = 1, [\"then\"] = \"dead_letter\" }"])
    func anEndlessLoopIsAnErrorOfItsEventUnderEachPolicy(policy: String) throws {
        let o = try Self.run(Self.job(policy: policy, hostile: "while true do end"))
        #expect(o.result.status == 0, "\(o.result.stderr)")
        #expect(o.output == [1, 2, 4, 5, 6])
        #expect(o.log == "")
        if policy == "\"skip\"" {
            #expect(o.dead.isEmpty)
            #expect(o.result.stderr.contains("skipped 1"), "\(o.result.stderr)")
        } else {
            #expect(o.dead.count == 1)
            #expect(o.dead.first?["error"] as? String == Self.timeBreach)
            #expect(o.dead.first?["line"] as? Int == 3)
            // Where the loop was, for whoever reads the dead letter.
            let traceback = o.dead.first?["traceback"] as? String ?? ""
            #expect(traceback.contains("job.lua:"), "\(o.dead)")
        }
        let retried = policy.contains("retry")
        #expect(o.result.stderr.contains("limits     enrich: time 0.2 s; breached: time \(retried ? 2 : 1)"), "\(o.result.stderr)")
        Self.expectClean(o.result)
    }

    /// Under abort, the breach stops the run with its message (exit 1).
    @Test func anEndlessLoopUnderAbortStopsTheRunWithTheLimitsMessage() throws {
        let o = try Self.run(Self.job(policy: "\"abort\"", hostile: "while true do end"))
        #expect(o.result.status == 1)
        #expect(o.result.stderr.contains("pipeline 'p' aborted: stage 'enrich' failed on line 3: \(Self.timeBreach)"), "\(o.result.stderr)")
        #expect(o.output == [1, 2])
        Self.expectClean(o.result)
    }

    /// The script's own pcall cannot swallow a breach: the code after it never runs (each
    /// instruction of the call raises the breach again), and the event fails with it.
    @Test func aPcallThatSwallowsErrorsCannotSwallowTheBreach() throws {
        let o = try Self.run(Self.job(hostile: """
            for _ = 1, 3 do pcall(function() while true do end end) end
            local ok = pcall(error, "x")
            log("swallowed " .. tostring(ok))
            """))
        #expect(o.result.status == 0, "\(o.result.stderr)")
        #expect(o.log == "")
        #expect(o.dead.first?["error"] as? String == Self.timeBreach)
        #expect(o.output == [1, 2, 4, 5, 6])
        Self.expectClean(o.result)
    }

    /// A loop inside a coroutine (resumed, or wrapped and called under pcall) is reached
    /// by the limit too, and the resumer cannot go on after it.
    @Test(arguments: ["local co = coroutine.create(function() while true do end end)\n log(tostring(coroutine.resume(co)))",
                      "pcall(coroutine.wrap(function() while true do end end))",
                      "local co = coroutine.wrap(function() while true do coroutine.yield() end end)\n while true do co() end"])
    func anEndlessLoopInsideACoroutine(hostile: String) throws {
        let o = try Self.run(Self.job(hostile: hostile))
        #expect(o.result.status == 0, "\(o.result.stderr)")
        #expect(o.log == "")
        #expect(o.dead.first?["error"] as? String == Self.timeBreach)
        #expect(o.output == [1, 2, 4, 5, 6])
        Self.expectClean(o.result)
    }

    /// A call that spends its time in C (no instruction to interrupt) gets the breach at
    /// its first instruction after the C function returns.
    @Test func aCallTooLongInsideCBreachesWhenItComesBack() throws {
        let o = try Self.run(Self.job(hostile: "os.execute('sleep 0.3')"))
        #expect(o.dead.first?["error"] as? String == Self.timeBreach)
        #expect(o.log == "")
        #expect(o.output == [1, 2, 4, 5, 6])
    }

    // MARK: - instructions

    /// A call over its instruction budget fails with it; a call within it passes. (The
    /// count starts a few milliseconds into a call: see CScopeLua/limits.c.)
    @Test func anInstructionBudgetStopsALongCall() throws {
        let script = Self.job(limits: "{ instructions = 5e6 }", hostile: "for i = 1, 1e9 do end").replacingOccurrences(
            of: "if e.n == 3 then", with: "if e.n == 1 then for i = 1, 1e5 do end end\n    if e.n == 3 then")
        let o = try Self.run(script)
        #expect(o.result.status == 0, "\(o.result.stderr)")
        #expect(o.dead.first?["error"] as? String == "stage 'enrich' exceeded its instruction limit (5000000 instructions) on event line 3")
        #expect(o.output == [1, 2, 4, 5, 6])
        #expect(o.result.stderr.contains("limits     enrich: instructions 5000000; breached: instructions 1"), "\(o.result.stderr)")
    }

    /// A state the watchdog cannot take (every slot taken) counts every instruction from
    /// the start of each call: the budget is then exact. (The switch is process-wide; the
    /// other tests here that run limited calls run them in child processes.)
    @Test func withoutTheWatchdogTheBudgetIsExact() throws {
        sl_limits_usewatchdog(0)
        defer { sl_limits_usewatchdog(1) }
        // 100 iterations fit 300 instructions, 1000 do not.
        let r = runLua("""
            stage "s" { limits = { instructions = 300 }, on_error = "skip",
                        process = function(ctx, e) for i = 1, e.n do end return e end }
            local p = pipeline "p" { "s" }
            local out = {}
            p:run{ input = { { n = 100 }, { n = 1000 }, { n = 50 } }, output = function(e) out[#out + 1] = e.n end }
            return table.concat(out, ",")
            """)
        #expect(r.error == nil, "\(String(describing: r.error))")
        #expect(r.text == "100,50")
    }

    // MARK: - memory

    static let memoryBreach = "stage 'enrich' exceeded its memory limit (8MB) on event line 3"

    /// A memory bomb under the call's limit, outside and inside pcall, through table
    /// growth (Lua retries after a collection) and a string buffer (lauxlib does not).
    @Test(arguments: ["local t = {} for i = 1, 1e8 do t[i] = i end",
                      "pcall(function() local t = {} for i = 1, 1e8 do t[i] = i end end)",
                      "local ok = pcall(string.rep, 'x', 100 * 1024 * 1024)\n log(tostring(ok))"])
    func aMemoryBombBreachesTheCallsLimit(hostile: String) throws {
        let o = try Self.run(Self.job(limits: "{ memory = \"8MB\" }", hostile: hostile))
        #expect(o.result.status == 0, "\(o.result.stderr)")
        #expect(o.dead.first?["error"] as? String == Self.memoryBreach, "\(o.dead)")
        #expect(o.log == "")
        #expect(o.output == [1, 2, 4, 5, 6])
        Self.expectClean(o.result)
    }

    /// Memory a call allocates and drops again (garbage the collector frees) is not held
    /// against it: the limit is net of what it frees.
    @Test func garbageIsNotABreach() throws {
        let o = try Self.run(Self.job(limits: "{ memory = \"2MB\" }",
                                      hostile: "local s for i = 1, 100000 do s = ('x'):rep(200) .. i end"))
        #expect(o.result.status == 0, "\(o.result.stderr)")
        #expect(o.dead.isEmpty, "\(o.dead)")
        #expect(o.log == "after\n")
        #expect(o.output == [1, 2, 3, 4, 5, 6])
    }

    /// The state's --memory-limit: "not enough memory" in the script, which a pcall may
    /// handle (the event then passes) or the policy does; the host never aborts.
    @Test func theStatesMemoryLimitIsAnErrorTheScriptOrThePolicyHandles() throws {
        let bomb = "local t = {} for i = 1, 1e8 do t[i] = i end"
        let caught = try Self.run(Self.job(limits: "{}", hostile: "log(tostring(select(2, pcall(function() \(bomb) end))))"),
                                  options: ["--memory-limit", "32MB"])
        #expect(caught.result.status == 0, "\(caught.result.stderr)")
        #expect(caught.log == "not enough memory\nafter\n")
        #expect(caught.output == [1, 2, 3, 4, 5, 6])
        let uncaught = try Self.run(Self.job(limits: "{}", hostile: bomb), options: ["--memory-limit", "32MB"])
        #expect(uncaught.result.status == 0, "\(uncaught.result.stderr)")
        #expect(uncaught.dead.first?["error"] as? String == "not enough memory")
        #expect(uncaught.output == [1, 2, 4, 5, 6])
        Self.expectClean(uncaught.result)
    }

    /// Recursion to stack overflow is an ordinary error of the event, with or without
    /// limits. (Lua's million-slot stack and its call records take about 100 MB before
    /// the overflow: a memory limit under that is breached first.)
    @Test(arguments: ["{}", "{ time = 5, memory = \"256MB\" }"])
    func recursionToStackOverflowIsAnErrorOfTheEvent(limits: String) throws {
        let o = try Self.run(Self.job(limits: limits, hostile: "local function f() return 1 + f() end f()"))
        #expect(o.result.status == 0, "\(o.result.stderr)")
        let error = o.dead.first?["error"] as? String ?? ""
        #expect(error.contains("stack overflow"), "\(o.dead)")
        #expect(o.output == [1, 2, 4, 5, 6])
        Self.expectClean(o.result)
    }

    // MARK: - open, flush, close

    @Test func aBreachInOpenFailsTheRun() throws {
        let o = try Self.run(Self.job(limits: "{ time = 5, open_time = 0.2 }", hostile: "",
                                      extra: "open = function(ctx) local f = fs.open('o.txt', 'w') while true do end end,"))
        #expect(o.result.status == 1)
        #expect(o.result.stderr.contains("pipeline 'p': stage 'enrich' failed to open: stage 'enrich' exceeded its time limit (0.2 s) in open"),
                "\(o.result.stderr)")
        #expect(o.output.isEmpty)
        Self.expectClean(o.result)
    }

    @Test func aBreachInCloseIsAReleaseError() throws {
        let o = try Self.run(Self.job(limits: "{ time = 0.2 }", hostile: "",
                                      extra: "close = function(ctx) local t = {} while true do t[1] = 1 end end,"))
        #expect(o.result.status == 1)
        #expect(o.result.stderr.contains("stage 'enrich' close: stage 'enrich' exceeded its time limit (0.2 s) in close"), "\(o.result.stderr)")
        #expect(o.output == [1, 2, 3, 4, 5, 6])
        Self.expectClean(o.result)
    }

    @Test func aBreachInFlushIsTheFlushsError() throws {
        let o = try Self.run(Self.job(limits: "{ instructions = 1e6 }", policy: "\"abort\"", hostile: "",
                                      extra: "flush = function(ctx, why) local f = fs.open('f.txt', 'w') while true do end end,"))
        #expect(o.result.status == 1)
        #expect(o.result.stderr.contains("stage 'enrich' exceeded its instruction limit (1000000 instructions) in flush"), "\(o.result.stderr)")
        Self.expectClean(o.result)
    }

    /// A timer callback of the stage runs under the stage's limits: the firing fails
    /// with the breach (lost, under a policy that goes on), the events all pass.
    @Test func aTimerOfTheStageRunsUnderItsLimits() throws {
        let o = try Self.run(Self.job(hostile: "", extra: """
            open = function(ctx) timer.after(0, function() local f = fs.open("t.txt", "w") while true do end end) end,
            """))
        #expect(o.result.status == 0, "\(o.result.stderr)")
        #expect(o.output == [1, 2, 3, 4, 5, 6])
        #expect(o.result.stderr.contains("scopelua: stage 'enrich' failed in timer timer#1: "), "\(o.result.stderr)")
        #expect(o.result.stderr.contains(": stage 'enrich' exceeded its time limit (0.2 s) in timer timer#1"), "\(o.result.stderr)")
        #expect(o.result.stderr.contains("limits     enrich: time 0.2 s; breached: time 1"), "\(o.result.stderr)")
        Self.expectClean(o.result)
    }

    // MARK: - the hook cannot be removed

    @Test func debugSethookCannotLiftTheLimits() throws {
        let o = try Self.run(Self.job(hostile: "local ok, err = pcall(debug.sethook)\n log(err)\n debug.sethook()\n while true do end"))
        #expect(o.log == "debug.sethook cannot be used in a call under limits (stage 'enrich'): the runtime's hook enforces them\n")
        let error = o.dead.first?["error"] as? String ?? ""
        #expect(error.hasSuffix("debug.sethook cannot be used in a call under limits (stage 'enrich'): the runtime's hook enforces them"),
                "\(o.dead)")
        #expect(o.output == [1, 2, 4, 5, 6])
    }

    /// A hook the script set itself outside any stage call is back after each limited call.
    @Test func aScriptsOwnHookIsGivenBackAfterTheCall() throws {
        let script = "local calls = 0\ndebug.sethook(function() calls = calls + 1 end, \"\", 1000)\n"
            + Self.job(hostile: "", extra: "close = function() log(debug.gethook() ~= nil and 'hook back' or 'hook lost') end,")
        let o = try Self.run(script)
        #expect(o.result.status == 0, "\(o.result.stderr)")
        #expect(o.log == "after\nhook back\n")
    }

    // MARK: - workers

    /// With two workers an endless loop in one is that worker's event error; the rest of
    /// the run goes on, and the report sums the breaches.
    @Test func aBreachInOneWorkerLeavesTheOthersUndisturbed() throws {
        let o = try Self.run(Self.job(hostile: "while true do end"), events: 600, options: ["--workers", "2"])
        #expect(o.result.status == 0, "\(o.result.stderr)")
        #expect(o.output == [1, 2] + Array(4...600))
        #expect(o.dead.first?["error"] as? String == Self.timeBreach)
        #expect(o.result.stderr.contains("limits     enrich: time 0.2 s; breached: time 1"), "\(o.result.stderr)")
    }

    /// A memory bomb in one worker hits that worker's own --memory-limit (its state is
    /// replaced) while the other goes on.
    @Test func aMemoryBombInOneWorkerHitsItsOwnCap() throws {
        let o = try Self.run(Self.job(limits: "{}", hostile: "local t = {} for i = 1, 1e9 do t[i] = i end"), events: 600,
                             options: ["--workers", "2", "--memory-limit", "32MB"])
        #expect(o.result.status == 0, "\(o.result.stderr)")
        #expect(o.output == [1, 2] + Array(4...600))
        let error = o.dead.first?["error"] as? String ?? ""
        #expect(error.hasPrefix("worker 1 crashed: not enough memory (the state's --memory-limit, 32 MiB) in stage 'enrich'"),
                "\(o.dead)")
    }

    // MARK: - definitions

    /// A pipeline's limits apply to its stages field by field, a stage's own win.
    @Test func aPipelinesLimitsApplyToItsStages() throws {
        let script = """
            stage "a" { limits = { instructions = 1000 }, process = function(ctx, e) return e end }
            stage "b" { process = function(ctx, e) return e end }
            pipeline "inner" { "b", limits = { memory = "1MB" } }
            pipeline "p" { "a", "inner", limits = { time = 2, instructions = 5e7 } }
            """
        let o = try Self.run(script, events: 1)
        #expect(o.result.status == 0, "\(o.result.stderr)")
        #expect(o.result.stderr.contains("limits     a: time 2 s, instructions 1000; breached: none"), "\(o.result.stderr)")
        #expect(o.result.stderr.contains("limits     b: time 2 s, instructions 50000000, memory 1MB; breached: none"), "\(o.result.stderr)")
    }

    /// The REPL's :limits names each registered stage's limits.
    @Test func theReplShowsTheLimitsOfEachStage() throws {
        var lines: [String] = []
        let repl = Repl(options: RuntimeOptions()) { lines.append($0) }
        repl.handle("stage 'a' { limits = { time = 0.5, memory = '64MB' }, process = function(ctx, e) return e end }")
        repl.handle("stage 'b' { process = function(ctx, e) return e end }")
        repl.handle("pipeline 'p' { 'a', 'b', limits = { instructions = 5e7 } }")
        repl.handle(":limits")
        _ = repl.quit()
        #expect(lines.joined(separator: "\n").contains("""
            stage    a in p: time 0.5 s, instructions 50000000, memory 64MB
            stage    b in p: instructions 50000000
            """), "\(lines)")
    }

    @Test(arguments: [
        ("{ tiem = 1 }", "stage 'x': limits has no field 'tiem' (its fields: time, instructions, memory, open_time, flush_time, close_time)"),
        ("{ time = -1 }", "stage 'x': limits.time must be a number of seconds above 0 and at most 86400 (got -1)"),
        ("{ time = 0/0 }", "stage 'x': limits.time must be a number of seconds above 0 and at most 86400 (got "),
        ("{ instructions = 1.5 }", "stage 'x': limits.instructions must be a whole number of VM instructions from 1 to 2^53, like 5e7 (got 1.5)"),
        ("{ memory = \"lots\" }", "stage 'x': limits.memory must be a size of at least 1KB: bytes, or a number with KB, MB or GB like \"64MB\" (got lots)"),
        ("5", "stage 'x': limits must be a table like { time = 0.5, instructions = 5e7, memory = \"64MB\" } (got a number)"),
    ])
    func badLimitsAreRefusedAtRegistration(limits: String, message: String) throws {
        let r = runLua("stage 'x' { limits = \(limits), process = function(ctx, e) return e end }")
        #expect(r.error?.message.contains(message) == true, "\(String(describing: r.error))")
    }
}
