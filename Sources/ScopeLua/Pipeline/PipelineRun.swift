import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// One run of a pipeline over a stream of events.
///
/// Lifecycle: a pipeline scope holds one scope per stage (`open` and `close` run there)
/// and nested pipelines' scopes; each event, in each stage, runs `process` in the
/// stage's task scope, which ends when the event leaves the stage. Stages open in
/// order and close in reverse. Every event read ends in exactly one category: output
/// (emitted), filtered, skipped, dead-lettered, rejected, or in flight (being processed
/// when the run aborted, was forced to stop, stopped during a retry's wait or could not
/// write its output), and the counts add up.
package final class PipelineRun {
    package struct Options {
        package init() {}
        /// `descriptor`: already open (and checked) by the caller, who closes it.
        package enum Input { case path(String), descriptor(Int32, name: String), list(Int32), stdin }
        package enum Output { case path(String), function(Int32), collect, stdout, discard }
        package var input: Input = .stdin
        package var output: Output = .stdout
        var deadLetter: String?
        /// `--follow`: the input file (`.path`, or `.descriptor` with its path as name;
        /// descriptor -1 while it does not exist) is followed by name as it grows, and
        /// only a stop ends the input (see `FollowedFile`).
        var follow = false
        /// A live progress line on stderr (when it is a terminal).
        var progress = false
        /// Run by `scopelua run --input`, which prints its report.
        var commandLine = false
        /// Each input line (list item) is a dead-letter record to replay (Replay.swift).
        var replay = false
        /// `--checkpoint FILE`, `--checkpoint-every`, `--checkpoint-reset` (Barrier.swift).
        var checkpoint: String?
        var checkpointEvery: CheckpointInterval?
        var checkpointReset = false
    }

    package enum Outcome: Equatable {
        case finished
        case stopped(signal: Int32)
        case failed(String)
        /// The output's reader went away (EPIPE): the run stopped gracefully.
        case readerGone(String)
        /// Refused before anything ran or was truncated (the output is the input file).
        case refused(String)
    }

    /// A stage in this run.
    final class StageRun {
        let definition: StageDefinition
        let policy: ErrorPolicy
        let scope: Scope
        /// The task scope, reused from event to event (reopened when it ends).
        let task: Scope
        /// Registry reference of the stage's ctx table.
        var ctx: Int32 = LUA_NOREF
        /// Whether `open` completed: `close` runs only for stages that opened.
        var opened = false
        var calls = 0
        var errors = 0
        var time = Histogram()
        /// The stage's share of the run's counts: events its policy skipped or
        /// dead-lettered, calls it retried.
        var skipped = 0
        var deadLettered = 0
        var retried = 0
        /// Errors shown on stderr as they happened, and the first error of the stage
        /// (`on line 3 (id 1): job.lua:4: boom`), for the summary.
        var notices = Notices()
        /// Time spent waiting to retry (the policy's backoff), in nanoseconds.
        var backoffNanos: UInt64 = 0

        init(definition: StageDefinition, policy: ErrorPolicy, scope: Scope) {
            self.definition = definition
            self.policy = policy
            self.scope = scope
            self.task = Scope(name: "task", parent: scope)
        }
    }

    /// Errors of one origin (a stage, or the input's rejected lines) that the run went on
    /// after: the first few are shown on stderr as they happen, the rest are counted and
    /// summed up at the end ("... 2099 more like this").
    struct Notices {
        static let shownAtMost = 3
        var count = 0
        var shown = 0
        var first: String?
        var unshown: Int { count - shown }
    }

    /// Per-outcome counts (for events read, and separately for events created by
    /// `ctx:emit`).
    struct Outcomes {
        var emitted = 0
        var filtered = 0
        var skipped = 0
        var deadLettered = 0
        /// Not finished when the run ended (see the class comment).
        var inFlight = 0
    }

    let rt: Runtime
    /// The timers module's state, taken once per run: the check between events reads it.
    private let timers: TimerState
    let definition: PipelineDefinition
    let options: Options
    private(set) var stages: [StageRun] = []
    /// What was opened, in order, to close in reverse.
    private enum Opened { case stage(StageRun), scope(Scope) }
    private var opened: [Opened] = []

    var read = 0
    var rejected = 0
    var retried = 0
    var original = Outcomes()
    var fanout = Outcomes()
    var fanoutCreated = 0
    /// Input line numbers (event numbers of a list) of the events read that were in
    /// flight when the run ended.
    var inFlightLines: [Int] = []
    /// The reader of a file or stream input, while the input is read.
    private(set) var lineReader: LineReader?
    /// Where the input stands: the file read and the byte offset after the last line
    /// read (nil for a list input, and before the input is read).
    var inputPosition: InputPosition? { lineReader?.position }
    /// The input's rejected lines, as stage errors are.
    private var rejectNotices = Notices()
    /// Replaying dead-letter records (`Options.replay`): see Replay.swift.
    var replay = ReplayState()
    /// The input line (the position in a list input) of the event read that is going
    /// through the stages, with what it emitted; 0 while a timer fires and for the
    /// events a timer emitted, and outside the input loop.
    var eventLine = 0

    /// The stage whose `process` (or timer) is running, for ctx:emit / ctx:own.
    var runningStage: Int?
    /// Whether the running stage is in `open` (where ctx:emit has nowhere to send to).
    private var opening = false
    /// Events emitted by the running stage: a Lua list and its top.
    private var queue: Int32 = LUA_NOREF
    var queueTop: lua_Integer = 0
    /// Stack index of the traceback-capturing message handler.
    var msgh: Int32 = 0
    var output: EventSink?
    var deadLetter: FileSink?
    private var collected: Int32 = LUA_NOREF
    var abortMessage: String?
    /// The first write, flush or close of the output or dead-letter file that failed:
    /// the run stops gracefully (no more input, stages close) and fails.
    var sinkFailure: (message: String, brokenPipe: Bool)?
    /// The descriptor the input is read from (-1 for a list).
    var inputFD: Int32 = -1
    private var inputEnded = false
    private var startedAt = sl_monotonic_ns()
    /// Whether Lua's `print` writes to stderr during this run (the events go to stdout).
    private(set) var printsToStderr = false
    /// Whether this run draws the progress line (see `decideProgress`), and whether one
    /// is on the screen now.
    private var drawsProgress = false
    private var progressOnScreen = false
    /// The stage whose `close` runs, for `log` lines.
    private var closingStage: Int?
    /// Whether timers are firing (a retry's wait inside one does not fire them again).
    var firingTimers = false
    /// When the run ended (its stages closed), for the elapsed time.
    private var finishedAt: UInt64?
    private var lastProgress: UInt64 = 0
    /// Barriers and the checkpoint (Barrier.swift).
    var checkpointing = Checkpointing()

    package init(_ rt: Runtime, _ definition: PipelineDefinition, options: Options) {
        self.rt = rt
        self.timers = rt.timerState
        self.definition = definition
        self.options = options
    }

    // MARK: - Running

    /// Runs the pipeline to the end of its input (or a stop), in a child of `parent`.
    package func execute(_ L: LuaState, parent: Scope) -> Outcome {
        startedAt = sl_monotonic_ns()
        rt.activeRun = self
        defer { rt.activeRun = nil }
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        Lua.reserve(L, 64, for: "a pipeline run")

        // The input is opened once, before anything else: the descriptor checked is the
        // one read (a pipe loses nothing), and the output can be compared with it.
        var ownedInput: Int32 = -1
        defer { if ownedInput >= 0 { Glibc.close(ownedInput) } }
        switch options.input {
        case .path(let path):
            switch options.follow ? FollowedFile.openBeforeRun(path) : InputFile.open(path) {
            case .success(let fd): ownedInput = fd; inputFD = fd
            case .failure(let problem): return .failed("cannot open input \(path): \(problem)")
            }
        case .descriptor(let fd, _): inputFD = fd
        case .stdin: inputFD = 0
        case .list: inputFD = -1
        }
        if inputFD >= 0 { checkpointing.source = makeLineSource() }
        if let refused = openCheckpoint() { return refused }
        defer { checkpointing.store?.close() }
        if let refused = openSinks(L) { return refused }
        // The events go to stdout: `print` goes to stderr until the run ends, and `log`
        // lines say which stage and input line they come from.
        if case .stdout = options.output { printsToStderr = true }
        drawsProgress = decideProgress()
        let replacedPrint = replacePrint(L)
        defer { if replacedPrint { restorePrint(L) } }
        // A line on stderr (an error shown, a log line, a leak warning) clears the
        // progress line first instead of running into it.
        let diagnostics = rt.options.diagnostics
        defer { rt.options.diagnostics = diagnostics }
        if drawsProgress {
            rt.options.diagnostics = { [weak self] line in
                self?.clearProgressBeforeOutput()
                diagnostics(line)
            }
        }
        rt.logContext = { [weak self] in self?.logContext }
        defer { rt.logContext = nil }
        // A reader that goes away is an EPIPE on the output (a graceful stop), not a
        // SIGPIPE that kills the process before the stages close.
        let sigpipe = sl_sigpipe_ignore()
        defer { sl_sigpipe_restore(sigpipe) }
        defer {
            // Normally closed (and checked) below; this covers the early returns.
            _ = output?.close()
            _ = deadLetter?.close()
        }

        lua_pushcclosure(L, sl_capturetraceback, 0)
        msgh = lua_gettop(L)
        lua_createtable(L, 16, 0)
        queue = luaL_ref(L, Lua.registry)
        if case .collect = options.output {
            lua_createtable(L, 0, 0)
            collected = luaL_ref(L, Lua.registry)
            output = CollectSink(list: collected)
        }
        // A stop (SIGINT / SIGTERM, see ScriptRunner) ends the run between events.
        sl_stop_pipeline(L, 1)
        defer { sl_stop_pipeline(L, 0) }

        // Open: stages in order, nested pipelines as nested lifecycles.
        let saved = rt.current
        defer { rt.current = saved }
        if let failure = open(L, definition, parent: parent, inherited: nil) {
            let closeFailures = closeAll(L, error: failure.errorIndex)
            if sl_stop_signal() != 0 { return .stopped(signal: sl_stop_signal()) }  // open was interrupted
            var message = failure.message
            for f in closeFailures { message += "\n\trelease error: \(f)" }
            return .failed(message)
        }

        resumeCounters()

        // Events.
        _ = feedInput(L)
        inputEnded = true
        eventLine = 0
        clearProgress()
        // Every stage's flush, before any close (and the final checkpoint).
        finalBarrier(L)
        // What was written must be on its way before the stages close: a failure here
        // is known (and reported) while the report can still say so.
        flushSinks()

        // Close, in reverse; the error that ended the run (if any) goes to close(ctx, err).
        // A failing output is a graceful stop: the stages close without an error.
        var errIndex: Int32 = 0
        if let abortMessage {
            Lua.push(L, abortMessage)
            errIndex = lua_gettop(L)
        } else if let uncommitted = uncommittedEnd {
            // With --checkpoint, what the last checkpoint does not cover rolls back.
            Lua.push(L, uncommitted)
            errIndex = lua_gettop(L)
        }
        let failures = closeAll(L, error: errIndex)
        closeSinks()
        finishedAt = sl_monotonic_ns()
        let signal = sl_stop_signal()
        summarize(ended: abortMessage != nil || sinkFailure != nil || !failures.isEmpty || signal != 0)
        // A forced stop wins over the errors it caused (the interrupted stage's, say).
        if signal != 0, abortMessage == nil || sl_stop_forced() != 0, failures.isEmpty || sl_stop_forced() != 0 {
            return .stopped(signal: signal)
        }
        let releaseErrors = failures.map { "\n\trelease error: \($0)" }.joined()
        if let abortMessage {
            let sink = sinkFailure.map { "\n\tand: \($0.message)" } ?? ""
            return .failed(abortMessage + sink + releaseErrors)
        }
        if let sinkFailure {
            let message = sinkFailure.message + releaseErrors
            return sinkFailure.brokenPipe ? .readerGone(message) : .failed(message)
        }
        if !failures.isEmpty {
            return .failed(failures.joined(separator: "\n\trelease error: "))
        }
        return signal != 0 ? .stopped(signal: signal) : .finished
    }

    /// The longest grace period (seconds) a run accepts.
    static let maxGrace: Double = 86_400

    /// The stage a forced stop interrupted, if one was running.
    var forcedStage: String?

    private struct OpenFailure {
        var message: String
        var errorIndex: Int32
    }

    private func open(_ L: LuaState, _ def: PipelineDefinition, parent: Scope, inherited: ErrorPolicy?) -> OpenFailure? {
        let scope = Scope(name: def.name, parent: parent)
        opened.append(.scope(scope))
        let policy = def.policy ?? inherited
        for item in def.items {
            switch item {
            case .stage(let stageDef, let config):
                let stageScope = Scope(name: stageDef.name, parent: scope)
                let stage = StageRun(definition: stageDef, policy: stageDef.policy ?? policy ?? .abort, scope: stageScope)
                stage.ctx = makeContext(L, stageDef, config: config)
                stages.append(stage)
                opened.append(.stage(stage))
                if stageDef.open != LUA_NOREF {
                    rt.current = stageScope
                    runningStage = stages.count - 1
                    opening = true
                    lua_rawgeti(L, Lua.registry, lua_Integer(stageDef.open))
                    lua_rawgeti(L, Lua.registry, lua_Integer(stage.ctx))
                    let status = sl_pcall(L, 1, 0, msgh)
                    opening = false
                    runningStage = nil
                    rt.current = scope
                    if status != LUA_OK {
                        let error = lua_gettop(L)  // the stage's scope still releases what open acquired
                        let described = describeError(L, error)
                        return OpenFailure(message: "pipeline '\(definition.name)': stage '\(stageDef.name)' failed to open: \(described)",
                                           errorIndex: error)
                    }
                }
                stage.opened = true
            case .pipeline(let nested):
                if let failure = open(L, nested, parent: scope, inherited: policy) { return failure }
            }
        }
        return nil
    }

    /// ctx = { name, config, state } with the ctx metatable. Returns its reference.
    private func makeContext(_ L: LuaState, _ def: StageDefinition, config: Int32) -> Int32 {
        lua_createtable(L, 0, 4)
        Lua.push(L, def.name)
        Lua.setField(L, -2, "name")
        lua_pushboolean(L, checkpointing.resumed != nil ? 1 : 0)
        Lua.setField(L, -2, "resumed")
        lua_rawgeti(L, Lua.registry, lua_Integer(config))
        Lua.setField(L, -2, "config")
        lua_createtable(L, 0, 0)
        Lua.setField(L, -2, "state")
        Lua.getRegistryField(L, "scopelua.ctx")
        _ = lua_setmetatable(L, -2)
        return luaL_ref(L, Lua.registry)
    }

    /// Closes everything opened, newest first: each stage's close(ctx, err) in its scope,
    /// then the scope. Returns the failures, described (rule 4: none stops the others).
    private func closeAll(_ L: LuaState, error errIndex: Int32) -> [String] {
        var failures: [String] = []
        let forced = sl_stop_forced() != 0
        while let item = opened.popLast() {
            let base = lua_gettop(L)
            switch item {
            case .stage(let stage):
                if stage.definition.close != LUA_NOREF, stage.opened, !forced {
                    closingStage = stages.firstIndex { $0 === stage }
                    defer { closingStage = nil }
                    rt.current = stage.scope
                    lua_rawgeti(L, Lua.registry, lua_Integer(stage.definition.close))
                    lua_rawgeti(L, Lua.registry, lua_Integer(stage.ctx))
                    if errIndex != 0 { lua_pushvalue(L, errIndex) } else { lua_pushnil(L) }
                    if sl_pcall(L, 2, 0, msgh) != LUA_OK {
                        failures.append("stage '\(stage.definition.name)' close: \(Lua.describe(L, -1))")
                    }
                    lua_settop(L, base)
                }
                let n = rt.endScope(stage.task, L, error: errIndex) + rt.endScope(stage.scope, L, error: errIndex)
                for i in 0..<n { failures.append(Lua.describe(L, base + 1 + i)) }
                luaL_unref(L, Lua.registry, stage.ctx)
            case .scope(let scope):
                let n = rt.endScope(scope, L, error: errIndex)
                for i in 0..<n { failures.append(Lua.describe(L, base + 1 + i)) }
            }
            lua_settop(L, base)
        }
        return failures
    }

    /// Whether `scope` is one this run opened and has not closed yet.
    func owns(_ scope: Scope) -> Bool {
        opened.contains { item in
            switch item {
            case .scope(let s): return s === scope
            case .stage(let stage): return stage.scope === scope || stage.task === scope
            }
        }
    }

    /// The pipeline's own scope (the outermost this run opened), while open.
    var outerScope: Scope? {
        if case .scope(let s)? = opened.first { return s }
        return nil
    }

    /// os.exit: closes everything still opened, newest first, as the end of a run does
    /// (stage closes run with the exit's error, or nil). Returns the failures.
    func closeForExit(_ L: LuaState, error errIndex: Int32) -> [String] {
        inputEnded = true  // no more timers
        return closeAll(L, error: errIndex)
    }

    /// Feeds the input through the stages. False when the run must stop (abort or stop).
    private func feedInput(_ L: LuaState) -> Bool {
        switch options.input {
        case .list(let ref):
            lua_rawgeti(L, Lua.registry, lua_Integer(ref))
            let list = lua_gettop(L)
            defer { lua_settop(L, list - 1) }
            let n = lua_rawlen(L, list)
            var i: lua_Unsigned = 1
            while i <= n {
                if sl_stop_signal() != 0 { return false }
                read += 1
                let number = Int(truncatingIfNeeded: i)
                eventLine = number
                lua_rawgeti(L, list, lua_Integer(i))
                if lua_type(L, -1) == LUA_TTABLE {
                    if !(options.replay ? replayRecord(L, line: number) : deliver(L, 0, extra: false)) { return inFlight(line: number) }
                } else {
                    let type = Lua.typeName(L, -1)
                    sl_pop(L, 1)
                    if !reject(L, line: number, reason: "event \(i) is a \(type), not a table", raw: nil) {
                        return inFlight(line: number)
                    }
                }
                if !fireTimers(L) { return false }
                i += 1
            }
            return true
        case .path, .descriptor, .stdin:
            return feedLines(L, checkpointing.source ?? makeLineSource())
        }
    }

    /// The input as a checkpointable source; its reader follows the file by its name
    /// with `--follow` (made when first read, once the outputs are open).
    private func makeLineSource() -> LineSource {
        let follow = options.follow
        let name = inputName
        return LineSource(fd: inputFD, name: name) { [unowned self] fd in
            follow ? self.followingReader(name) : LineReader(fd: fd)
        }
    }

    /// The reader for `--follow` over the file at `path`: never the run's own output or
    /// dead-letter file.
    private func followingReader(_ path: String) -> LineReader {
        let sinks = [(output as? FileSink)?.identity, deadLetter?.identity].compactMap { $0 }
        return LineReader(following: path, fd: inputFD, sinks: sinks) { [unowned self] in self.rt.diagnose($0) }
    }

    /// The event read at `line` did not reach a category: it is in flight. Returns false
    /// (the run stops).
    private func inFlight(line: Int) -> Bool {
        original.inFlight += 1
        inFlightLines.append(line)
        return false
    }

    private func feedLines(_ L: LuaState, _ source: LineSource) -> Bool {
        let reader = source.reader
        // Output latency: what was written leaves before the reader waits.
        reader.onIdle = { [unowned self] in self.flushBeforeWaiting() }
        lineReader = reader
        let codec = rt.json
        var lineNumber = source.line
        while true {
            source.line = lineNumber  // the line before has left the pipeline
            // A stop ends the run between events, also while lines wait in the buffer.
            if sl_stop_signal() != 0 { return false }
            if !fireTimers(L) { return false }
            if !flushIfDue() { return false }
            if barrierDue, !barrier(L, .checkpoint) { return false }
            showProgress()
            switch reader.next(deadline: nextWakeUp()) {
            case .idle:
                continue
            case .stopped:
                return false
            case .end:
                return true
            case .failed(let reason):
                abortMessage = "cannot read input: \(reason)"
                return false
            case .tooLong(let prefix, let length):
                lineNumber += 1
                read += 1
                guard reject(L, line: lineNumber, reason: "line is \(length) bytes long (the limit is \(reader.limit >> 20) MiB)",
                             raw: String(decoding: prefix, as: UTF8.self) + "...") else { return inFlight(line: lineNumber) }
            case .line(let bytes):
                lineNumber += 1
                if bytes.isEmpty || bytes.allSatisfy({ $0 == 32 || $0 == 9 }) { continue }  // blank lines are not events
                read += 1
                guard isValidUTF8(bytes) else {
                    guard reject(L, line: lineNumber, reason: "line is not valid UTF-8",
                                 raw: String(decoding: bytes, as: UTF8.self)) else { return inFlight(line: lineNumber) }
                    continue
                }
                _ = bytes.withMemoryRebound(to: CChar.self) { lua_pushlstring(L, $0.baseAddress, $0.count) }
                let text = lua_gettop(L)
                guard codec.decode(L, text) else {
                    let reason = "not valid JSON: \(Lua.describe(L, -1))"
                    lua_settop(L, text - 1)
                    guard reject(L, line: lineNumber, reason: reason,
                                 raw: String(decoding: bytes, as: UTF8.self)) else { return inFlight(line: lineNumber) }
                    continue
                }
                guard lua_type(L, -1) == LUA_TTABLE, bytes.first(where: { $0 != 32 && $0 != 9 }) == 123 else {
                    lua_settop(L, text - 1)
                    guard reject(L, line: lineNumber, reason: "not a JSON object",
                                 raw: String(decoding: bytes, as: UTF8.self)) else { return inFlight(line: lineNumber) }
                    continue
                }
                sl_remove(L, text)
                eventLine = lineNumber
                if !(options.replay ? replayRecord(L, line: lineNumber) : deliver(L, 0, extra: false)) { return inFlight(line: lineNumber) }
            }
        }
    }

    // MARK: - Events

    /// Takes the event on top of the stack through stages `i`... (pops it). Returns
    /// false when the run must stop: the event is then in no category yet (in flight;
    /// the caller counts it).
    func deliver(_ L: LuaState, _ i: Int, extra: Bool) -> Bool {
        let event = lua_gettop(L)
        defer { lua_settop(L, event - 1) }
        if i == stages.count {
            return writeOutput(L, event, extra: extra)
        }
        Lua.reserve(L, 16, for: "a stage call")
        let stage = stages[i]
        var policy = stage.policy
        var attempt = 0
        let queueBase = queueTop
        while true {
            rt.current = stage.task
            runningStage = i
            lua_rawgeti(L, Lua.registry, lua_Integer(stage.definition.process))
            lua_rawgeti(L, Lua.registry, lua_Integer(stage.ctx))
            lua_pushvalue(L, event)
            let t0 = sl_monotonic_ns()
            let status = sl_pcall(L, 2, 1, msgh)
            stage.time.record(sl_elapsed_ns(t0))
            stage.calls += 1
            runningStage = nil
            let result = lua_gettop(L)  // the result, or the error object
            // The error's traceback, taken before the releases run Lua code that may fail too.
            let traceback = status == LUA_OK ? nil : rt.takeTraceback(L, result)
            var failures: Int32 = 0
            if stage.task.openCount > 0 {
                failures = rt.endScope(stage.task, L, error: status == LUA_OK ? 0 : result)
            }
            stage.task.reopen()
            rt.current = stage.scope
            // What process returned: the event table, nil (filtered) or anything else,
            // which is an error of the event (a type check only on the hot path).
            var returnedOther = false
            if status == LUA_OK, failures == 0 {
                let type = lua_type(L, result)
                if type == LUA_TTABLE || type == LUA_TNIL {
                    // The event (if any) and what the stage emitted go downstream.
                    if !deliverEmitted(L, after: i, from: queueBase) { return false }
                    if type == LUA_TNIL {
                        if extra { fanout.filtered += 1 } else { original.filtered += 1 }
                        return true
                    }
                    lua_pushvalue(L, result)
                    return deliver(L, i + 1, extra: extra)
                }
                returnedOther = true
            }
            if returnedOther {
                // `return e.kind == "buy"` and the like: written out, it would be `true`.
                Lua.push(L, "stage '\(stage.definition.name)' returned a \(Lua.typeName(L, result)) (expected the event table or nil)")
            } else {
                // The call (or a release in its task scope) failed.
                _ = rt.mergeErrors(L, primary: status == LUA_OK ? 0 : result, failures: failures)
            }
            let error = lua_gettop(L)
            stage.errors += 1
            if stage.notices.first == nil {
                stage.notices.first = "on \(describeEvent(L, event, extra: extra)): \(Self.firstLine(Lua.describe(L, error)))"
            }
            dropEmitted(L, from: queueBase)
            if sl_stop_forced() != 0 {
                forcedStage = stage.definition.name
                return false
            }
            if case .retry(let times, let backoff, let then) = policy {
                // A stage that returned the wrong kind of value would return it again:
                // its `then` applies at once.
                if attempt < times, !returnedOther {
                    // A stop does not wait out a backoff (it could outlast the grace
                    // period): the retry does not happen, the event stays in flight and
                    // the run stops.
                    if backoff > 0 {
                        switch self.backoff(L, backoff * Double(1 << min(attempt, 20)), stage) {
                        case .waited: break
                        case .stopped:
                            rt.diagnose("scopelua: stopped while stage '\(stage.definition.name)' waited to retry \(describeEvent(L, event, extra: extra)): it was not finished (in flight)")
                            return false
                        case .failed:
                            return false
                        }
                    }
                    attempt += 1
                    retried += 1
                    stage.retried += 1
                    lua_settop(L, event)
                    continue
                }
                policy = then
            }
            switch policy {
            case .skip:
                if extra { fanout.skipped += 1 } else { original.skipped += 1 }
                stage.skipped += 1
                notice(L, stage, event: event, extra: extra, error: Lua.describe(L, error), outcome: "skipped")
                return true
            case .deadLetter:
                guard writeDeadLetter(L, event: event, stage: stage.definition.name, error: error, extra: extra, traceback: traceback) else { return false }
                if extra { fanout.deadLettered += 1 } else { original.deadLettered += 1 }
                stage.deadLettered += 1
                notice(L, stage, event: event, extra: extra, error: Lua.describe(L, error), outcome: "dead-lettered")
                return true
            case .abort, .retry:
                abortMessage = "pipeline '\(definition.name)' aborted: stage '\(stage.definition.name)' failed on \(describeEvent(L, event, extra: extra)): \(describeError(L, error, traceback: traceback))"
                return false
            }
        }
    }

    /// Delivers the events the call of stage `i` emitted (queue entries above `base`)
    /// to the stages after it, and empties them from the queue. When one of them stops
    /// the run, it and those not delivered yet are in flight.
    func deliverEmitted(_ L: LuaState, after i: Int, from base: lua_Integer) -> Bool {
        let count = queueTop - base
        guard count > 0 else { return true }
        lua_rawgeti(L, Lua.registry, lua_Integer(queue))
        let q = lua_gettop(L)
        defer { lua_settop(L, q - 1) }
        for k in 1...count {
            lua_rawgeti(L, q, base + k)
            if !deliver(L, i + 1, extra: true) {
                fanout.inFlight += Int(count - k + 1)
                dropEmitted(L, from: base, uncount: false)
                return false
            }
        }
        dropEmitted(L, from: base, uncount: false)
        return true
    }

    /// Empties the emit queue above `base`. Events emitted by a call that then failed
    /// are discarded (`uncount`): they never existed.
    func dropEmitted(_ L: LuaState, from base: lua_Integer, uncount: Bool = true) {
        guard queueTop > base else { return }
        lua_rawgeti(L, Lua.registry, lua_Integer(queue))
        for k in (base + 1)...queueTop {
            lua_pushnil(L)
            lua_rawseti(L, -2, k)
        }
        sl_pop(L, 1)
        if uncount { fanoutCreated -= Int(queueTop - base) }
        queueTop = base
    }

    /// ctx:emit(e): queue an extra event after the running stage. Nil, or a problem.
    func emit(_ L: LuaState, ctx: Int32, event: Int32) -> String? {
        guard let i = runningStage else { return "ctx:emit can only be used in process or a timer of a running stage" }
        guard !opening else {
            return "ctx:emit cannot be used in open (stage '\(stages[i].definition.name)'): no event is flowing yet; emit from process or from a timer"
        }
        guard isContext(L, ctx, of: stages[i]) else {
            return "ctx:emit: this ctx is not the one of stage '\(stages[i].definition.name)', which is running"
        }
        lua_rawgeti(L, Lua.registry, lua_Integer(queue))
        lua_pushvalue(L, event)
        queueTop += 1
        lua_rawseti(L, -2, queueTop)
        sl_pop(L, 1)
        fanoutCreated += 1
        return nil
    }

    /// ctx:own(h): the handle moves from the task scope to the stage scope.
    func own(_ L: LuaState, ctx: Int32, handle h: Handle) -> String? {
        guard let i = runningStage else { return "ctx:own can only be used in process of a running stage" }
        let stage = stages[i]
        guard isContext(L, ctx, of: stage) else {
            return "ctx:own: this ctx is not the one of stage '\(stage.definition.name)', which is running"
        }
        let owner = h.pointee.owningScope
        if owner === stage.scope { return nil }
        guard owner === stage.task else {
            return "ctx:own: \(rt.describe(h)) belongs to \(owner?.path ?? "no scope"), not to this event's task scope"
        }
        sl_registry_remove(h)
        stage.scope.add(h)
        return nil
    }

    private func isContext(_ L: LuaState, _ idx: Int32, of stage: StageRun) -> Bool {
        lua_rawgeti(L, Lua.registry, lua_Integer(stage.ctx))
        defer { sl_pop(L, 1) }
        return lua_rawequal(L, idx, -1) != 0
    }

    // MARK: - Timers

    /// The earliest of the next timer and the next progress update (monotonic ns).
    private func nextWakeUp() -> UInt64? {
        var wake: UInt64? = drawsProgress ? sl_monotonic_ns() &+ 500_000_000 : nil
        if checkpointing.dueTime != .max { wake = min(wake ?? checkpointing.dueTime, checkpointing.dueTime) }
        for t in timers.scheduled where t.handle != nil {
            wake = min(wake ?? t.due, t.due)
        }
        return wake
    }

    /// Fires due timers (between events only, never once the input has ended).
    private func fireTimers(_ L: LuaState) -> Bool {
        guard !timers.scheduled.isEmpty, !inputEnded else { return true }
        let now = sl_monotonic_ns()
        // A timer's events come from no input line. Timers may fire while an event
        // waits to be retried: its line, and what is queued below, are left as they were.
        let savedLine = eventLine
        defer { eventLine = savedLine }
        let queueBase = queueTop
        firingTimers = true
        defer { firingTimers = false }
        for t in timers.scheduled where t.due <= now {
            eventLine = 0
            guard let h = t.handle, h.pointee.isOpen else { continue }
            let base = lua_gettop(L)
            // The callback may release this very timer and collect its box: keep the
            // record for the message below.
            sl_rec_pin(h)
            defer { sl_rec_unpin(rt.arena.pool, h) }
            let stageIndex = stages.firstIndex { $0.scope === t.owner || $0.task === t.owner }
            runningStage = stageIndex
            let firing = rt.fireTimer(t, L, now: now)
            runningStage = nil
            if case .failed(let traceback) = firing {
                let name = stageIndex.map { stages[$0].definition.name } ?? definition.name
                let message = "timer \(rt.describe(h)) of stage '\(name)' failed: \(describeError(L, lua_gettop(L), traceback: traceback))"
                let policy = stageIndex.map { stages[$0].policy } ?? .abort
                dropEmitted(L, from: queueBase)  // what the failed call emitted never existed
                if policy == .abort {
                    if let i = stageIndex { stages[i].errors += 1 }
                    abortMessage = "pipeline '\(definition.name)' aborted: \(message)"
                    lua_settop(L, base)
                    return false
                }
                if let i = stageIndex {
                    // The firing is lost; the timer goes on (an interval fires again).
                    let stage = stages[i]
                    stage.errors += 1
                    let error = "\(rt.describe(h)): \(Self.firstLine(Lua.describe(L, lua_gettop(L))))"
                    if stage.notices.first == nil { stage.notices.first = "in timer \(error)" }
                    stage.notices.count += 1
                    if stage.notices.shown < Notices.shownAtMost {
                        stage.notices.shown += 1
                        rt.diagnose("scopelua: stage '\(name)' failed in timer \(error)")
                    }
                }
            }
            // Events the timer emitted go downstream of its stage.
            if let i = stageIndex, queueTop > queueBase, !deliverEmitted(L, after: i, from: queueBase) {
                lua_settop(L, base)
                return false
            }
            lua_settop(L, base)
        }
        return true
    }

    // MARK: - Output, dead letters, rejects

    /// Opens the output and dead-letter files. Neither may be the input file (same
    /// device and inode, whatever the name): both are opened without truncating,
    /// compared, and only then truncated, so a refused run destroys nothing.
    private func openSinks(_ L: LuaState) -> Outcome? {
        let input = InputFile.identity(inputFD)
        let inputName: String = {
            switch options.input {
            case .path(let path): return path
            case .descriptor(_, let name): return name
            case .stdin: return "stdin"
            case .list: return "the input list"
            }
        }()
        var opened: [(fd: Int32, path: String, what: String)] = []
        func discard() { for o in opened { Glibc.close(o.fd) } }
        var wanted: [(path: String, what: String)] = []
        if case .path(let path) = options.output { wanted.append((path, "output")) }
        if let path = options.deadLetter { wanted.append((path, "dead-letter file")) }
        var identities: [InputFile.Identity?] = []
        for (path, what) in wanted {
            let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o666)
            guard fd >= 0 else {
                let reason = String(cString: strerror(errno))
                discard()
                return .failed("cannot open \(what) \(path): \(reason)")
            }
            opened.append((fd, path, what))
            let identity = InputFile.identity(fd)
            if let identity, identity == input {
                discard()
                return .refused("the \(what) \(path) is the input file \(inputName): it would be truncated before it is read")
            }
            if let identity, identities.contains(identity) {
                discard()
                return .refused("the \(what) \(path) is also the output file: give them different files")
            }
            identities.append(identity)
        }
        // `>> events.jsonl` while reading events.jsonl would never end.
        if case .stdout = options.output, let input, InputFile.identity(1) == input {
            discard()
            return .refused("the output (stdout) is the input file \(inputName): it would grow while it is read")
        }
        // A resumed run keeps what its checkpoint covers (Barrier.swift).
        var kept: [SinkResumption] = []
        for o in opened {
            let keep = resumption(of: o.what, fd: o.fd)
            if case .refused(let message) = keep {
                discard()
                return .refused(message)
            }
            kept.append(keep)
        }
        for (i, o) in opened.enumerated() {
            // Truncated only now ("w"); a pipe or a device has nothing to truncate.
            if identities[i] != nil, kept[i] == .fresh, ftruncate(o.fd, 0) != 0 {
                let reason = String(cString: strerror(errno))
                discard()
                return .failed("cannot open \(o.what) \(o.path): \(reason)")
            }
        }
        for (i, o) in opened.enumerated() {
            guard let sink = FileSink(fd: o.fd, name: o.path, what: o.what) else {
                let reason = String(cString: strerror(errno))
                for later in opened[i...] { Glibc.close(later.fd) }
                _ = output?.close()
                output = nil
                return .failed("cannot open \(o.what) \(o.path): \(reason)")
            }
            if o.what == "output" { output = sink } else { deadLetter = sink }
            if let problem = resume(sink, kept[i], L) {
                for later in opened[(i + 1)...] { Glibc.close(later.fd) }
                _ = output?.close()
                _ = deadLetter?.close()
                output = nil
                deadLetter = nil
                return .failed(problem)
            }
        }
        switch options.output {
        case .stdout: output = FileSink(stdout: ())
        case .discard: output = DiscardSink()
        case .function(let ref): output = FunctionSink(function: ref)
        case .path, .collect: break
        }
        return nil
    }

    /// Records the first failure of a sink (the run then stops). Returns false.
    func sinkFailed(_ sink: EventSink, errno code: Int32) -> Bool {
        if sinkFailure == nil {
            sinkFailure = ("cannot write \(sink.what) \(sink.name): \(String(cString: strerror(code)))",
                           code == EPIPE && sink === output)
        }
        return false
    }

    /// Flushes both sinks (end of the input, before the stages close).
    private func flushSinks() {
        for sink in [output, deadLetter as EventSink?].compactMap({ $0 }) where sinkFailure == nil {
            let code = sink.flush(durable: false)
            if code != 0 { _ = sinkFailed(sink, errno: code) }
        }
    }

    /// How long an event written out may wait in a sink's buffer while events flow
    /// (checked between events): the sinks are flushed at most this often, never per
    /// event. When the input goes idle they are flushed at once.
    static let flushInterval: UInt64 = 100_000_000
    private var nextFlush: UInt64 = 0

    /// Flushes the sinks when `flushInterval` has passed since the last flush. False
    /// when a sink failed (the run stops).
    private func flushIfDue() -> Bool {
        guard output != nil || deadLetter != nil else { return true }
        let now = sl_monotonic_ns()
        guard now >= nextFlush else { return true }
        return flush(now: now)
    }

    /// Before the run waits (for input, a retry's backoff): what was written leaves now.
    /// False when a sink failed (the run stops).
    private func flushBeforeWaiting() -> Bool {
        guard output != nil || deadLetter != nil else { return true }
        return flush(now: sl_monotonic_ns())
    }

    private func flush(now: UInt64) -> Bool {
        nextFlush = now &+ Self.flushInterval
        flushSinks()
        return sinkFailure == nil
    }

    /// Closes both sinks; a failure is recorded unless one already was.
    private func closeSinks() {
        for sink in [output, deadLetter as EventSink?].compactMap({ $0 }) {
            let code = sink.close()
            if code != 0 { _ = sinkFailed(sink, errno: code) }
        }
        output = nil
        deadLetter = nil
    }

    /// The event at `event` leaves the last stage: written (or collected, or passed to
    /// the output function), then counted as emitted. False when the run must stop.
    private func writeOutput(_ L: LuaState, _ event: Int32, extra: Bool) -> Bool {
        if let output {
            switch output.write(L, event, codec: rt.json, msgh: msgh) {
            case .written: break
            case .unencodable: return unencodable(L, event, extra: extra)
            case .failed(let code): return sinkFailed(output, errno: code)
            case .raised:
                abortMessage = "pipeline '\(definition.name)' aborted: the output function failed on \(describeEvent(L, event, extra: extra)): \(describeError(L, lua_gettop(L)))"
                return false
            }
        }
        if extra { fanout.emitted += 1 } else { original.emitted += 1 }
        return true
    }

    /// The event at `event` cannot be written as JSON (the codec's message is on top,
    /// popped here). Encoding is part of the event's processing: the policy of the last
    /// stage applies (a retry would fail the same way: its `then` applies at once), and
    /// the error names the field. False when the run must stop.
    private func unencodable(_ L: LuaState, _ event: Int32, extra: Bool) -> Bool {
        let codecMessage = Lua.describe(L, -1)
        sl_pop(L, 1)
        let message = "cannot encode event: " + (Unencodable.problem(L, event) ?? codecMessage)
        guard let stage = stages.last else {
            abortMessage = "pipeline '\(definition.name)' aborted: \(message)"
            return false
        }
        stage.errors += 1
        if stage.notices.first == nil { stage.notices.first = "on \(describeEvent(L, event, extra: extra)): \(message)" }
        var policy = stage.policy
        if case .retry(_, _, let then) = policy { policy = then }
        switch policy {
        case .skip:
            if extra { fanout.skipped += 1 } else { original.skipped += 1 }
            stage.skipped += 1
            notice(L, stage, event: event, extra: extra, error: message, outcome: "skipped")
            return true
        case .deadLetter:
            Lua.push(L, message)
            defer { sl_pop(L, 1) }
            guard writeDeadLetter(L, event: event, stage: stage.definition.name, error: lua_gettop(L), extra: extra, traceback: nil) else { return false }
            if extra { fanout.deadLettered += 1 } else { original.deadLettered += 1 }
            stage.deadLettered += 1
            notice(L, stage, event: event, extra: extra, error: message, outcome: "dead-lettered")
            return true
        case .abort, .retry:
            abortMessage = "pipeline '\(definition.name)' aborted: stage '\(stage.definition.name)' failed on \(describeEvent(L, event, extra: extra)): \(message)"
            return false
        }
    }

    /// A dead-letter record: { event, stage, error, traceback, time, line, emitted }:
    /// `line` is the input line (list position) of the event, or of the event being
    /// processed when a stage emitted it (then `emitted` is true); none for an event a
    /// timer emitted. False when it could not be written (the run then stops).
    private func writeDeadLetter(_ L: LuaState, event: Int32, stage: String, error: Int32, extra: Bool, traceback given: String?) -> Bool {
        let traceback = given ?? rt.takeTraceback(L, error)
        lua_createtable(L, 0, 5)
        lua_pushvalue(L, event)
        Lua.setField(L, -2, "event")
        Lua.push(L, stage)
        Lua.setField(L, -2, "stage")
        Lua.push(L, Lua.describe(L, error))
        Lua.setField(L, -2, "error")
        if let traceback {
            Lua.push(L, traceback)
            Lua.setField(L, -2, "traceback")
        }
        lua_pushnumber(L, wallClock())
        Lua.setField(L, -2, "time")
        if eventLine > 0 {
            lua_pushinteger(L, lua_Integer(eventLine))
            Lua.setField(L, -2, "line")
        }
        if extra {
            lua_pushboolean(L, 1)
            Lua.setField(L, -2, "emitted")
        }
        if options.replay { annotateReplayed(L, deadLetter: true) }
        defer { sl_pop(L, 1) }
        return writeRecord(L, lua_gettop(L))
    }

    /// Rejects an input line (counted as rejected once its record is written). False
    /// when the record could not be written (the run then stops; the line is in flight).
    func reject(_ L: LuaState, line: Int, reason: String, raw: String?) -> Bool {
        // The first few are shown as they happen (also when the dead-letter file has
        // them), the rest summed up at the end.
        let place = replayPlace ?? "\(options.input.isList ? "event" : "line") \(line)"
        rejectNotices.count += 1
        if rejectNotices.first == nil { rejectNotices.first = "on \(place): \(reason)" }
        if rejectNotices.shown < Notices.shownAtMost {
            rejectNotices.shown += 1
            rt.diagnose("scopelua: input \(place) rejected: \(reason)")
        }
        guard deadLetter != nil else {
            rejected += 1
            return true
        }
        lua_createtable(L, 0, 4)
        lua_pushinteger(L, lua_Integer(line))
        Lua.setField(L, -2, "line")
        if let raw {
            Lua.push(L, raw)
            Lua.setField(L, -2, "raw")
        }
        Lua.push(L, reason)
        Lua.setField(L, -2, "error")
        lua_pushnumber(L, wallClock())
        Lua.setField(L, -2, "time")
        if options.replay { annotateReplayed(L, deadLetter: false) }
        defer { sl_pop(L, 1) }
        guard writeRecord(L, lua_gettop(L)) else { return false }
        rejected += 1
        return true
    }

    /// Writes the table at `idx` as a JSON line to the dead-letter file, or to stderr.
    /// A record whose event holds what JSON cannot (infinity, a function, a cycle) is
    /// written with those values replaced by strings saying what they were. False when
    /// the dead-letter file failed.
    private func writeRecord(_ L: LuaState, _ idx: Int32) -> Bool {
        if !rt.json.encode(L, idx) {
            sl_pop(L, 1)
            Unencodable.pushEncodable(L, idx, arrayMetatable: rt.info.pointee.jsonarraymt)
            let ok = rt.json.encode(L, -1)
            sl_remove(L, -2)
            guard ok else {
                rt.diagnose("scopelua: dead letter (not encodable): \(Lua.describe(L, -1))")
                sl_pop(L, 1)
                return true
            }
        }
        defer { sl_pop(L, 1) }
        var len = 0
        guard let p = lua_tolstring(L, -1, &len) else { return true }
        if let deadLetter {
            let code = deadLetter.writeLine(p, len)
            if code != 0 { return sinkFailed(deadLetter, errno: code) }
        } else {
            rt.diagnose("scopelua: dead letter: " + String(decoding: UnsafeRawBufferPointer(start: p, count: len), as: UTF8.self))
        }
        return true
    }

    // MARK: - Notices and the summary

    /// An event's error that the run went on after (skipped, dead-lettered): shown on
    /// stderr while the stage has shown fewer than `Notices.shownAtMost`, else counted.
    private func notice(_ L: LuaState, _ stage: StageRun, event: Int32, extra: Bool, error: String, outcome: String) {
        stage.notices.count += 1
        guard stage.notices.shown < Notices.shownAtMost else { return }
        stage.notices.shown += 1
        rt.diagnose("scopelua: stage '\(stage.definition.name)' failed on \(describeEvent(L, event, extra: extra)): \(Self.firstLine(error)) (\(outcome))")
    }

    static func firstLine(_ text: String) -> String {
        text.firstIndex(of: "\n").map { String(text[..<$0]) } ?? text
    }

    /// Seconds from the start of the run to its end (or to now, while it runs).
    var elapsed: Double {
        Double((finishedAt ?? sl_monotonic_ns()) &- startedAt) / 1e9
    }

    /// Events read per second of the run.
    var eventsPerSecond: Double {
        let seconds = elapsed
        return seconds > 0 ? Double(read - checkpointing.restoredRead) / seconds : 0
    }

    /// The counts of the run in one line: `pipeline 'p': read 2104, emitted 0, ...
    /// in 412.35ms (5102 events/s)`.
    var summaryLine: String {
        var parts = ["read \(read)", "emitted \(original.emitted)", "filtered \(original.filtered)",
                     "skipped \(original.skipped)", "dead-lettered \(original.deadLettered)", "rejected \(rejected)"]
        if retried > 0 { parts.append("retried \(retried)") }
        if options.replay { parts.append("replayed \(replay.count)") }
        if original.inFlight > 0 {
            let what = options.input.isList ? "event" : "line"
            parts.append("in flight \(original.inFlight) (\(what)\(inFlightLines.count == 1 ? "" : "s") \(inFlightLines.map(String.init).joined(separator: ", ")))")
        }
        var line = "pipeline '\(definition.name)': " + parts.joined(separator: ", ")
        if fanoutCreated > 0 {
            var fan = ["created \(fanoutCreated)", "emitted \(fanout.emitted)", "filtered \(fanout.filtered)",
                       "skipped \(fanout.skipped)", "dead-lettered \(fanout.deadLettered)"]
            if fanout.inFlight > 0 { fan.append("in flight \(fanout.inFlight)") }
            line += "; fan-out " + fan.joined(separator: ", ")
        }
        return line + " in \(Report.seconds(elapsed)) (\(Report.rate(eventsPerSecond)) events/s)"
    }

    /// At the end of a run with anything to say (an error the run went on after, a
    /// rejected line, an event in flight, an early end), or on a terminal: the errors
    /// not shown ("... 2099 more like this"), the counts, elapsed time and rate, and per
    /// stage with errors its counts and first error. A clean run in a script or a pipe
    /// stays silent.
    private func summarize(ended early: Bool) {
        let erring = stages.filter { $0.errors > 0 }
        let inFlight = original.inFlight + fanout.inFlight
        guard early || options.progress || !erring.isEmpty || rejected > 0 || inFlight > 0 else { return }
        for stage in erring where stage.notices.unshown > 0 {
            rt.diagnose("scopelua: stage '\(stage.definition.name)': ... \(stage.notices.unshown) more like this")
        }
        if rejectNotices.unshown > 0 {
            rt.diagnose("scopelua: input: ... \(rejectNotices.unshown) more like this")
        }
        var lines = ["scopelua: " + summaryLine]
        for stage in erring {
            var counts: [String] = []
            if stage.retried > 0 { counts.append("retried \(stage.retried)") }
            if stage.skipped > 0 { counts.append("skipped \(stage.skipped)") }
            if stage.deadLettered > 0 { counts.append("dead-lettered \(stage.deadLettered)") }
            let what = counts.isEmpty ? "" : " (\(counts.joined(separator: ", ")))"
            let first = stage.notices.first.map { ", the first \($0)" } ?? ""
            lines.append("  stage '\(stage.definition.name)': \(stage.errors) error\(stage.errors == 1 ? "" : "s")\(what)\(first)")
        }
        if rejected > 0, let first = rejectNotices.first {
            lines.append("  input: \(rejected) rejected, the first \(first)")
        }
        rt.diagnose(lines.joined(separator: "\n"))
    }

    // MARK: - Descriptions

    /// The event at `event`, by where it came from: `line 1742 (id 17)` (`event 3` for
    /// a list input), `an event emitted for line 1742 (id 5)` when a stage emitted it
    /// while processing that line. Ids are not unique (two lines may both say id 1),
    /// line numbers are; an event a timer emitted has none, and is shown by its id or,
    /// without one, its JSON (shortened).
    func describeEvent(_ L: LuaState, _ event: Int32, extra: Bool) -> String {
        let id = eventID(L, event)
        if eventLine == 0, let i = checkpointing.flushing, i < stages.count {
            let what = "an event emitted by the flush of stage '\(stages[i].definition.name)'"
            return id.map { "\(what) (id \($0))" } ?? "\(what) (\(eventJSON(L, event)))"
        }
        guard eventLine > 0 else {
            if let id { return "an event emitted by a timer (id \(id))" }
            return "an event emitted by a timer (\(eventJSON(L, event)))"
        }
        let place = replayPlace ?? "\(options.input.isList ? "event" : "line") \(eventLine)"
        let described = extra ? "an event emitted for \(place)" : place
        return id.map { "\(described) (id \($0))" } ?? described
    }

    /// The event's `id` field as text (shortened), or nil when it has none.
    private func eventID(_ L: LuaState, _ event: Int32) -> String? {
        defer { sl_pop(L, 1) }
        guard Lua.rawField(L, event, "id") != LUA_TNIL else { return nil }
        // An id a script computed as a float: show 3.0 as 3.
        if lua_type(L, -1) == LUA_TNUMBER, lua_isinteger(L, -1) == 0 {
            let d = lua_tonumberx(L, -1, nil)
            if d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) }
        }
        let text = Lua.describe(L, -1, metamethods: false)
        return text.count > 60 ? String(text.prefix(60)) + "..." : text
    }

    /// The event as JSON, shortened to 200 characters (what JSON cannot hold is shown as
    /// a string).
    private func eventJSON(_ L: LuaState, _ event: Int32) -> String {
        if !rt.json.encode(L, event) {
            sl_pop(L, 1)
            Unencodable.pushEncodable(L, event, arrayMetatable: rt.info.pointee.jsonarraymt)
            let ok = rt.json.encode(L, -1)
            sl_remove(L, -2)
            if !ok {
                sl_pop(L, 1)
                lua_pushnil(L)
            }
        }
        defer { sl_pop(L, 1) }
        guard var text = Lua.string(L, -1) else { return "not encodable" }
        if text.count > 200 { text = String(text.prefix(200)) + "..." }
        return text
    }

    /// The error's message and, when one was captured for it, its traceback.
    func describeError(_ L: LuaState, _ error: Int32, traceback: String? = nil) -> String {
        let e = rt.takeError(copyOf: error, L, traceback: traceback)
        return e.traceback.map { "\(e.message)\n\($0)" } ?? e.message
    }

    private func wallClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    enum Backoff {
        case waited
        /// A stop signal came (also before the wait).
        case stopped
        /// A timer that fired meanwhile stopped the run (its abort, a failed write).
        case failed
    }

    /// Waits `seconds` before `stage` retries a call, or less if a stop signal arrives.
    /// Due timers fire meanwhile, as between events (not when the event waiting is one
    /// a timer emitted: timers do not fire inside a timer's firing). The time waited is
    /// the stage's backoff in the report.
    func backoff(_ L: LuaState, _ seconds: Double, _ stage: StageRun) -> Backoff {
        let start = sl_monotonic_ns()
        defer { stage.backoffNanos &+= sl_monotonic_ns() &- start }
        let end = Self.later(start, by: Self.nanoseconds(seconds))
        let stopFD = sl_stop_fd()
        guard flushBeforeWaiting() else { return .failed }
        while sl_stop_signal() == 0 {
            if !firingTimers, !fireTimers(L) { return .failed }
            let now = sl_monotonic_ns()
            guard now < end else { return .waited }
            var wake = end
            if !firingTimers, let due = rt.nextTimerDue { wake = min(wake, max(due, now)) }
            let ms = Int32(min(UInt64(Int32.max), max(1, (wake - now + 999_999) / 1_000_000)))
            var fds = [pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, stopFD >= 0 ? 1 : 0, ms)
        }
        return .stopped
    }

    /// Seconds as nanoseconds, saturating (a NaN or negative wait is none, an infinite
    /// one the longest there is): never a trap on a value a script chose.
    static func nanoseconds(_ seconds: Double) -> UInt64 {
        guard seconds > 0 else { return 0 }
        let ns = seconds * 1e9
        return ns < 1.8e19 ? UInt64(ns) : UInt64.max
    }

    /// `time + ns`, saturating at the end of time.
    static func later(_ time: UInt64, by ns: UInt64) -> UInt64 {
        let (sum, overflow) = time.addingReportingOverflow(ns)
        return overflow ? .max : sum
    }

    // MARK: - print and log

    /// Puts `print` in place of Lua's own for the run when it writes its events to stdout
    /// (a `print` in a stage would write into the JSON stream). A print the script
    /// defined itself is left alone. Returns whether it replaced it.
    private func replacePrint(_ L: LuaState) -> Bool {
        guard printsToStderr || drawsProgress else { return false }
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        Bindings.getGlobal(L, "print")
        Lua.getRegistryField(L, "scopelua.print")
        guard lua_rawequal(L, -1, -2) != 0 else { return false }
        Lua.getRegistryField(L, "scopelua.print.run")
        Bindings.setGlobal(L, "print")
        return true
    }

    /// Puts Lua's print back, unless the script assigned another meanwhile.
    private func restorePrint(_ L: LuaState) {
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        Bindings.getGlobal(L, "print")
        Lua.getRegistryField(L, "scopelua.print.run")
        guard lua_rawequal(L, -1, -2) != 0 else { return }
        Lua.getRegistryField(L, "scopelua.print")
        Bindings.setGlobal(L, "print")
    }

    /// Where a `log` line comes from: `enrich (line 1742)` in process, the stage's name
    /// in open, close and its timers; nil outside a stage.
    var logContext: String? {
        guard let i = runningStage ?? closingStage, i < stages.count else { return nil }
        let name = stages[i].definition.name
        guard eventLine > 0 else { return name }
        return "\(name) (\(options.input.isList ? "event" : "line") \(eventLine))"
    }

    // MARK: - Progress

    /// Whether to draw the live progress line (asked for: stderr is a terminal). Not
    /// when the events go to stdout and stdout is that same terminal, as curl leaves
    /// out its progress meter when the data goes to the terminal: the line would run
    /// into the events. (With the events elsewhere, what else reaches the terminal,
    /// `print` included, clears the line first.)
    private func decideProgress() -> Bool {
        guard options.progress else { return false }
        guard case .stdout = options.output else { return true }
        return !Self.sameTerminal(1, 2)
    }

    /// Whether descriptors `a` and `b` are the same terminal (same device and inode).
    static func sameTerminal(_ a: Int32, _ b: Int32) -> Bool {
        guard isatty(a) != 0, isatty(b) != 0 else { return false }
        var sa = stat(), sb = stat()
        guard fstat(a, &sa) == 0, fstat(b, &sb) == 0 else { return false }
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
    }

    /// Before something is written to stdout: a progress line on the screen is cleared
    /// (it is drawn again at its next update).
    func clearProgressBeforeOutput() {
        guard progressOnScreen else { return }
        sl_eprogress("")
        progressOnScreen = false
    }

    private func showProgress() {
        guard drawsProgress else { return }
        let now = sl_monotonic_ns()
        guard now &- lastProgress > 500_000_000 else { return }
        lastProgress = now
        let seconds = Double(now &- startedAt) / 1e9
        let rate = seconds > 0 ? Int(Double(read) / seconds) : 0
        sl_eprogress("scopelua: \(read) events read, \(original.emitted + fanout.emitted) out, \(rate) events/s")
        progressOnScreen = true
    }

    private func clearProgress() {
        if drawsProgress, lastProgress != 0 { sl_eprogress("") }
        progressOnScreen = false
    }

    /// Drops the registry references this run holds (after execute).
    package func releaseReferences(_ L: LuaState) {
        luaL_unref(L, Lua.registry, queue)
        queue = LUA_NOREF
        if case .list(let ref) = options.input { luaL_unref(L, Lua.registry, ref) }
        if case .function(let ref) = options.output { luaL_unref(L, Lua.registry, ref) }
    }

    // MARK: - Report

    /// Pushes the report table (see `Report.pushPipeline`). Stack: +1.
    package func pushReport(_ L: LuaState) {
        Report.pushPipeline(self, L)
        if collected != LUA_NOREF {
            lua_rawgeti(L, Lua.registry, lua_Integer(collected))
            Lua.setField(L, -2, "output")
            luaL_unref(L, Lua.registry, collected)
            collected = LUA_NOREF
        }
    }
}

extension PipelineRun.Options.Input {
    var isList: Bool {
        if case .list = self { return true }
        return false
    }
}

/// A buffered output file (or stdout) written line by line. Every write, flush and
/// close says whether it failed (the errno, or 0): nothing written is lost silently.
/// Every write(2) ends at the end of a line (`sl_writeline`), so a reader of the file
/// never sees half a line; the run flushes it before it waits for input and every
/// `PipelineRun.flushInterval` while events flow (ARCHITECTURE.md, "Output latency").
final class FileSink {
    private(set) var file: UnsafeMutablePointer<FILE>?
    /// Opened by this run (not stdout): see `checkpointState` in Sinks.swift.
    let owned: Bool
    /// The path (or "stdout") and what it is ("output", "dead-letter file"), for messages.
    let name: String
    let what: String

    /// Takes over `fd` (open for writing); nil (fd left open) if stdio cannot.
    init?(fd: Int32, name: String, what: String) {
        guard let f = fdopen(fd, "w") else { return nil }
        file = f
        owned = true
        self.name = name
        self.what = what
    }

    /// The process's stdout, shared with Lua's `print` and `io.write` so that their
    /// output interleaves in order.
    init(stdout: ()) {
        file = sl_stdout()
        owned = false
        name = "stdout"
        what = "output"
    }

    /// The regular file written (nil for a pipe, a terminal, a device).
    var identity: InputFile.Identity? {
        file.flatMap { InputFile.identity(fileno($0)) }
    }

    func writeLine(_ p: UnsafePointer<CChar>, _ len: Int) -> Int32 {
        guard let file else { return EBADF }
        return sl_writeline(file, p, len)
    }

    func flush() -> Int32 {
        guard let file else { return 0 }
        errno = 0
        if fflush(file) != 0 || ferror(file) != 0 { return errno != 0 ? errno : EIO }
        return 0
    }

    /// Flushes and closes (stdout: flushes). Closing twice does nothing.
    func close() -> Int32 {
        guard let file else { return 0 }
        self.file = nil
        errno = 0
        let failed = ferror(file) != 0
        if owned {
            if fclose(file) != 0 || failed { return errno != 0 ? errno : EIO }
        } else if fflush(file) != 0 || failed {
            return errno != 0 ? errno : EIO
        }
        return 0
    }
}
