import CLua
import CScopeLua
import Foundation
import Testing
@testable import ScopeLua

/// What the test's thread and the worker threads share: each worker's progress (the
/// ticks its Lua loop made), whether its loop is to go on, its thread and its outcome.
/// The Lua loops reach it through `tick`, a C-callable function, hence a shared object.
/// The test's thread never touches a worker's Lua state: only this board.
final class StopBoard: @unchecked Sendable {
    static let shared = StopBoard()
    static let workers = 3  // ids 1 and 2 are used; 0 is the test's own thread

    private let lock = NSLock()
    private var ticks = [Int](repeating: 0, count: workers)
    private var goOn = [Bool](repeating: true, count: workers)
    private var threads = [pthread_t?](repeating: nil, count: workers)
    private var outcomes = [String?](repeating: nil, count: workers)

    /// `tick(id)` in Lua: counts one turn of worker `id`'s loop and says whether to go on.
    static let tick: SwiftLuaFunction = { L in
        guard let L else { return 0 }
        let id = Int(lua_tointegerx(L, 1, nil))
        lua_pushboolean(L, StopBoard.shared.tick(id) ? 1 : 0)
        return 1
    }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    private func tick(_ id: Int) -> Bool {
        locked {
            ticks[id] += 1
            return goOn[id]
        }
    }

    func ticks(_ id: Int) -> Int { locked { ticks[id] } }
    func stop(_ id: Int) { locked { goOn[id] = false } }
    func thread(_ id: Int) -> pthread_t? { locked { threads[id] } }
    func outcome(_ id: Int) -> String? { locked { outcomes[id] } }
    func started(_ id: Int) { locked { threads[id] = pthread_self() } }
    func finished(_ id: Int, _ outcome: String) { locked { outcomes[id] = outcome } }
}

/// The stop's targets (signals.c): the run's state and worker states, each on a thread of
/// its own, all reached by one SIGTERM, each with its own pipeline hold.
///
/// A stop signal is for the whole process (`sl_stop_signal` is process-wide), and other
/// suites run pipelines and timer loops in this process at the same time: a SIGTERM
/// raised here would stop them too. So each scenario runs as an exit test: its body runs
/// in a child copy of this test process, calls the C API directly from its own threads
/// (the test's thread is the run's state, two `Thread`s are the workers), and raises its
/// signals there; its expectations are reported back here.
@Suite(.serialized, .timeLimit(testTimeLimit)) struct StopTargetTests {
    /// A runtime that keeps its diagnostics to itself.
    static func quietRuntime() -> Runtime {
        var options = RuntimeOptions()
        options.diagnostics = { _ in }
        return Runtime(options: options)
    }

    /// Polls `condition` every millisecond for up to `seconds`: a readiness marker, never
    /// a fixed sleep.
    static func waitUntil(seconds: Double = 10, _ condition: () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while !condition() {
            if Date() > end { return false }
            usleep(1_000)
        }
        return true
    }

    /// The endless loop a worker runs: it ends only when the test says so (`tick` turns
    /// false) or when a stop raises in it; with `coroutine`, inside a coroutine.wrap.
    static func loop(_ id: Int, coroutine: Bool) -> String {
        coroutine
            ? "local loop = coroutine.wrap(function() while tick(\(id)) do end return 'finished' end) return loop()"
            : "while tick(\(id)) do end return 'finished'"
    }

    /// Starts worker `id` on a thread of its own: a runtime created there, attached as a
    /// stop target, running `script` (inside a pipeline hold with `hold`), then detached
    /// and closed there; its outcome ("returned ..." or the error) goes to the board.
    static func startWorker(_ id: Int, _ script: String, hold: Bool) {
        let thread = Thread {
            let rt = quietRuntime()
            let L = rt.L
            let attached = sl_stop_attach(L)
            StopBoard.shared.started(id)
            Lua.push(L, StopBoard.tick)
            lua_setglobal(L, "tick")
            if hold { sl_stop_pipeline(L, 1) }
            var outcome: String
            do throws(LuaError) {
                outcome = "returned " + (try rt.execute(script, name: "=worker\(id)")).map(\.description).joined(separator: ",")
            } catch {
                outcome = error.message
            }
            if hold { sl_stop_pipeline(L, 0) }
            sl_stop_detach(L)
            rt.close()
            StopBoard.shared.finished(id, attached == 1 ? outcome : "not attached")
        }
        thread.start()
    }

    /// Waits until both workers are running their loops (each has ticked).
    static func waitForWorkers() -> Bool {
        waitUntil { StopBoard.shared.ticks(1) > 0 && StopBoard.shared.ticks(2) > 0 }
    }

    /// Waits until both workers made `turns` more turns of their loops than `before`,
    /// without either having ended: they were not interrupted meanwhile.
    static func expectProgress(after before: (Int, Int), turns: Int = 20_000,
                               sourceLocation: SourceLocation = #_sourceLocation) {
        let board = StopBoard.shared
        let went = waitUntil { board.ticks(1) > before.0 + turns && board.ticks(2) > before.1 + turns }
        #expect(went, "the workers' loops did not go on", sourceLocation: sourceLocation)
        #expect(board.outcome(1) == nil && board.outcome(2) == nil,
                "\(board.outcome(1) ?? "running") / \(board.outcome(2) ?? "running")", sourceLocation: sourceLocation)
    }

    /// The outcomes of both workers once they ended; a worker that does not end fails the
    /// test and ends the (child) process: its thread cannot be stopped otherwise.
    static func joinWorkers() -> (String, String) {
        let board = StopBoard.shared
        if !waitUntil({ board.outcome(1) != nil && board.outcome(2) != nil }) {
            Issue.record("a worker did not end: \(board.outcome(1) ?? "running") / \(board.outcome(2) ?? "running")")
            exit(1)
        }
        return (board.outcome(1) ?? "", board.outcome(2) ?? "")
    }

    /// What running a line of Lua in the run's state gives: its results or its error.
    static func run(_ rt: Runtime, _ source: String) -> String {
        do throws(LuaError) {
            return "returned " + (try rt.execute(source, name: "=main")).map(\.description).joined(separator: ",")
        } catch {
            return error.message
        }
    }

    /// Ends the scenario as a run ends: uninstalled (the run's state is disarmed, so it
    /// runs Lua again), the stop forgotten, the runtime closed.
    static func finish(_ main: Runtime, sourceLocation: SourceLocation = #_sourceLocation) {
        sl_stop_uninstall()
        sl_stop_reset()
        #expect(run(main, "return 1 + 1") == "returned 2", sourceLocation: sourceLocation)
        main.close()
    }

    /// (a) The first signal is the graceful stop: it does not interrupt the Lua code of a
    /// worker in a pipeline hold (the pipeline polls the flag and stops between events),
    /// so both loops go on until they stop themselves. The run's state, in no hold, gets
    /// the graceful error at its next instruction, as a single-state run does.
    @Test func aGracefulStopDoesNotInterruptWorkersInAPipelineHold() async {
        await #expect(processExitsWith: .success) {
            let main = StopTargetTests.quietRuntime()
            sl_stop_install(main.L, 60)
            StopTargetTests.startWorker(1, StopTargetTests.loop(1, coroutine: false), hold: true)
            StopTargetTests.startWorker(2, StopTargetTests.loop(2, coroutine: true), hold: true)
            #expect(StopTargetTests.waitForWorkers())
            raise(SIGTERM)
            #expect(sl_stop_signal() == SIGTERM)
            #expect(sl_stop_forced() == 0)
            let board = StopBoard.shared
            StopTargetTests.expectProgress(after: (board.ticks(1), board.ticks(2)))
            board.stop(1)
            board.stop(2)
            let (one, two) = StopTargetTests.joinWorkers()
            #expect(one == "returned finished")
            #expect(two == "returned finished")
            #expect(StopTargetTests.run(main, "return 1").hasSuffix("main:1: stopped by SIGTERM"))
            StopTargetTests.finish(main)
        }
    }

    /// (b) The second signal forces the stop: both workers' loops, held or not, fail at
    /// their next instruction, the one inside a coroutine too. The second signal is taken
    /// by a worker's thread here (as the kernel may choose any thread): it arms its own
    /// state at once and the other two through their threads' arm signal. (The message
    /// has no position when the hook lands in `tick`, a C function: only its end counts.)
    @Test func aSecondSignalForcesEveryWorkerEvenFromAnotherThread() async {
        await #expect(processExitsWith: .success) {
            let main = StopTargetTests.quietRuntime()
            sl_stop_install(main.L, 60)
            StopTargetTests.startWorker(1, StopTargetTests.loop(1, coroutine: false), hold: true)
            StopTargetTests.startWorker(2, StopTargetTests.loop(2, coroutine: true), hold: true)
            #expect(StopTargetTests.waitForWorkers())
            raise(SIGTERM)
            let board = StopBoard.shared
            StopTargetTests.expectProgress(after: (board.ticks(1), board.ticks(2)))
            guard let worker1 = board.thread(1) else {
                Issue.record("worker 1 did not say its thread")
                exit(1)
            }
            pthread_kill(worker1, SIGTERM)
            let (one, two) = StopTargetTests.joinWorkers()
            #expect(sl_stop_forced() != 0)
            #expect(one.hasSuffix("stopped by SIGTERM (forced)"), "worker 1: \(one)")
            #expect(two.hasSuffix("stopped by SIGTERM (forced)"), "worker 2: \(two)")
            #expect(StopTargetTests.run(main, "return 1").hasSuffix("main:1: stopped by SIGTERM (forced)"))
            StopTargetTests.finish(main)
        }
    }

    /// The holds are per state: a graceful stop leaves the worker in a pipeline hold alone
    /// and interrupts the worker running plain Lua code, at its next instruction, inside
    /// its coroutine (its thread armed it through the arm signal).
    @Test func aGracefulStopInterruptsOnlyTheWorkersInNoHold() async {
        await #expect(processExitsWith: .success) {
            let main = StopTargetTests.quietRuntime()
            sl_stop_install(main.L, 60)
            StopTargetTests.startWorker(1, StopTargetTests.loop(1, coroutine: false), hold: true)
            StopTargetTests.startWorker(2, StopTargetTests.loop(2, coroutine: true), hold: false)
            #expect(StopTargetTests.waitForWorkers())
            raise(SIGTERM)
            let board = StopBoard.shared
            #expect(StopTargetTests.waitUntil { board.outcome(2) != nil })
            let two = board.outcome(2) ?? ""
            #expect(two.hasSuffix("stopped by SIGTERM"), "worker 2: \(two)")
            let before = board.ticks(1)
            #expect(StopTargetTests.waitUntil { board.ticks(1) > before + 20_000 })
            #expect(board.outcome(1) == nil)
            board.stop(1)
            let (one, _) = StopTargetTests.joinWorkers()
            #expect(one == "returned finished")
            StopTargetTests.finish(main)
        }
    }

    /// (c) Detaching races the stop: under a forced stop whose tick is hammered (SIGALRM
    /// re-arms every target, through their threads' arm signal), workers attach, run,
    /// detach and close runtime after runtime. A worker attached after the stop was forced
    /// fails at its first instruction; nothing touches a state once it was detached (run
    /// under ASan and TSan too).
    @Test func workersAttachAndDetachWhileTheForcedStopRearms() async {
        await #expect(processExitsWith: .success) {
            let main = StopTargetTests.quietRuntime()
            sl_stop_install(main.L, 60)
            raise(SIGTERM)
            raise(SIGTERM)
            #expect(sl_stop_forced() != 0)
            let rounds = 40
            for id in 1...2 {
                Thread {
                    StopBoard.shared.started(id)
                    var failures: [String] = []
                    for _ in 0..<rounds {
                        let rt = StopTargetTests.quietRuntime()
                        let L = rt.L
                        if sl_stop_attach(L) != 1 { failures.append("not attached") }
                        let got = StopTargetTests.run(rt, "local x = 0 for i = 1, 1000 do x = x + i end return x")
                        if !got.hasSuffix("stopped by SIGTERM (forced)") { failures.append(got) }
                        sl_stop_detach(L)
                        if StopTargetTests.run(rt, "return 2") != "returned 2" { failures.append("still armed after detach") }
                        rt.close()
                    }
                    StopBoard.shared.finished(id, failures.isEmpty ? "ok" : failures.joined(separator: "; "))
                }.start()
            }
            // Re-arm every target over and over while they come and go.
            let board = StopBoard.shared
            while board.outcome(1) == nil || board.outcome(2) == nil {
                raise(SIGALRM)
                usleep(200)
            }
            let (one, two) = StopTargetTests.joinWorkers()
            #expect(one == "ok")
            #expect(two == "ok")
            StopTargetTests.finish(main)
        }
    }

    /// The table has SL_STOP_MAXTARGETS slots: a state beyond them is no target (a stop
    /// does not reach it, it still sees the flag), a detached slot is free again, and a
    /// state detached before the stop is not reached either.
    @Test func aFullTableLeavesTheStateUnreachedAndDetachedSlotsAreReused() async {
        await #expect(processExitsWith: .success) {
            let main = StopTargetTests.quietRuntime()
            sl_stop_install(main.L, 60)
            var workers: [Runtime] = []
            for _ in 1..<Int(SL_STOP_MAXTARGETS) {
                let rt = StopTargetTests.quietRuntime()
                #expect(sl_stop_attach(rt.L) == 1)
                workers.append(rt)
            }
            let extra = StopTargetTests.quietRuntime()
            #expect(sl_stop_attach(extra.L) == 0, "the table is full")
            let first = workers.removeFirst()
            sl_stop_detach(first.L)
            #expect(sl_stop_attach(extra.L) == 1, "a detached slot is free again")
            #expect(sl_stop_attach(extra.L) == 1, "attaching twice is harmless")
            let unreached = StopTargetTests.quietRuntime()
            #expect(sl_stop_attach(unreached.L) == 0)
            raise(SIGTERM)
            raise(SIGTERM)
            #expect(sl_stop_signal() == SIGTERM && sl_stop_forced() != 0)
            let stopped = "stopped by SIGTERM (forced)"
            #expect(StopTargetTests.run(extra, "return 1").hasSuffix(stopped))
            #expect(StopTargetTests.run(workers[0], "return 1").hasSuffix(stopped))
            #expect(StopTargetTests.run(first, "return 1") == "returned 1", "detached before the stop")
            #expect(StopTargetTests.run(unreached, "return 1") == "returned 1", "no slot: not reached")
            for rt in workers + [extra, first, unreached] {
                sl_stop_detach(rt.L)
                #expect(StopTargetTests.run(rt, "return 2") == "returned 2", "detached: disarmed")
                rt.close()
            }
            StopTargetTests.finish(main)
        }
    }
}
