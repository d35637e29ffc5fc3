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
        /// `channel`: a worker's (Workers/): lines come from the coordinator, and what
        /// leaves the pipeline goes back to it.
        /// `stream`: a Redis stream's consumer group (RedisStream.swift).
        /// `ingest`: lines another thread hands the run (`scopelua serve`, Ingest.swift).
        package enum Input {
            case path(String), descriptor(Int32, name: String), list(Int32), stdin, channel(WorkerLink), stream(String)
            case ingest(any IngestFeed)
        }
        package enum Output { case path(String), function(Int32), collect, stdout, discard, channel, stream(String) }
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
        /// `--workers N`: more than 1 runs the stages in N worker states (Workers/), this
        /// run coordinating them; made on each worker's thread by `workerFactory`.
        var workers = 1
        var workerFactory: WorkerFactory?
        /// A worker's: `print` goes to stderr (the run's events go to stdout).
        var printsToStderr = false
        /// Where the run publishes what `/metrics` and `/resources` show (Board.swift);
        /// nil: the runtime's (`Runtime.board`, how a worker's run finds it), if any.
        package var board: RunBoard?
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
        /// Its limits (nil: none) and how often each was breached.
        var limits: StageLimitsRun?
        var breaches = Breaches()

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
    let timers: TimerState
    let definition: PipelineDefinition
    let options: Options
    var stages: [StageRun] = []
    /// What was opened, in order, to close in reverse.
    enum Opened { case stage(StageRun), scope(Scope) }
    var opened: [Opened] = []

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
    var lineReader: LineReader?
    /// Where the input stands: the file read and the byte offset after the last line
    /// read (nil for a list input, and before the input is read).
    var inputPosition: InputPosition? { lineReader?.position }
    /// The input's rejected lines, as stage errors are.
    var rejectNotices = Notices()
    /// Replaying dead-letter records (`Options.replay`): see Replay.swift.
    var replay = ReplayState()
    /// The input line (the position in a list input) of the event read that is going
    /// through the stages, with what it emitted; 0 while a timer fires and for the
    /// events a timer emitted, and outside the input loop.
    var eventLine = 0

    /// The stage whose `process` (or timer) is running, for ctx:emit / ctx:own.
    var runningStage: Int?
    /// Whether the running stage is in `open` (where ctx:emit has nowhere to send to).
    var opening = false
    /// Events emitted by the running stage: a Lua list and its top.
    var queue: Int32 = LUA_NOREF
    var queueTop: lua_Integer = 0
    /// Stack index of the traceback-capturing message handler.
    var msgh: Int32 = 0
    var output: EventSink?
    var deadLetter: RecordSink?
    var collected: Int32 = LUA_NOREF
    var abortMessage: String?
    /// The first write, flush or close of the output or dead-letter file that failed:
    /// the run stops gracefully (no more input, stages close) and fails.
    var sinkFailure: (message: String, brokenPipe: Bool)?
    /// The descriptor the input is read from (-1 for a list).
    var inputFD: Int32 = -1
    var inputEnded = false
    var startedAt = sl_monotonic_ns()
    /// Whether Lua's `print` writes to stderr during this run (the events go to stdout).
    private(set) var printsToStderr = false
    /// Whether this run draws the progress line (see `decideProgress`), and whether one
    /// is on the screen now.
    var drawsProgress = false
    var progressOnScreen = false
    /// The stage whose `close` runs, for `log` lines.
    var closingStage: Int?
    /// Whether timers are firing (a retry's wait inside one does not fire them again).
    var firingTimers = false
    /// When the run ended (its stages closed), for the elapsed time.
    var finishedAt: UInt64?
    var lastProgress: UInt64 = 0
    /// Barriers and the checkpoint (Barrier.swift).
    var checkpointing = Checkpointing()
    /// A Redis stream input, and the id of its entry going through the stages.
    var streamSource: RedisStreamSource?
    /// The feed of `scopelua serve`, while the run reads it.
    var ingestSource: IngestSource?
    var streamEntry: String?
    /// Why this worker's state must be replaced (it ran out of memory), once it did.
    var crashed: String?
    /// A worker's release failures (its coordinator reports them).
    var releaseFailures: [String] = []
    /// Coordinating workers (Workers/Coordinator.swift).
    var parallel: ParallelState?

    /// When the sinks are flushed next while events flow (see `flushIfDue`).
    var nextFlush: UInt64 = 0
    /// The board this run publishes to, this run's number there, and when it publishes
    /// next (Board.swift).
    let board: RunBoard?
    let boardGeneration: Int
    var nextPublish: UInt64 = 0

    package init(_ rt: Runtime, _ definition: PipelineDefinition, options: Options) {
        self.rt = rt
        self.timers = rt.timerState
        self.definition = definition
        self.options = options
        board = options.board ?? rt.board
        boardGeneration = board?.generation() ?? 0
    }

    // MARK: - Running

    /// Runs the pipeline to the end of its input (or a stop), in a child of `parent`.
    package func execute(_ L: LuaState, parent: Scope) -> Outcome {
        startedAt = sl_monotonic_ns()
        rt.activeRun = self
        defer { rt.activeRun = nil }
        // The last publication: the final counts, what is still open after the stages
        // closed (normally nothing). Runs after every other defer below.
        defer { publish(ended: true) }
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
        case .list, .channel: inputFD = -1
        case .stream(let url):
            inputFD = -1
            switch RedisStreamSource.open(url) {
            case .success(let source): streamSource = source
            case .failure(let problem): return .failed("cannot read input \(problem.message)")
            }
        case .ingest(let feed):
            inputFD = -1
            ingestSource = IngestSource(feed)
        }
        if options.workers > 1 { return executeParallel(L) }
        if inputFD >= 0 { checkpointing.source = makeLineSource() }
        if let refused = openCheckpoint() { return refused }
        defer { checkpointing.store?.close() }
        if let refused = openSinks(L) { return refused }
        // The events go to stdout: `print` goes to stderr until the run ends, and `log`
        // lines say which stage and input line they come from.
        if case .stdout = options.output { printsToStderr = true }
        if options.printsToStderr { printsToStderr = true }
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
        // (Not in a worker: it writes no descriptor, and the disposition is the process's,
        // which the coordinator set.)
        let worker: Bool = { if case .channel = options.input { return true } else { return false } }()
        let sigpipe = worker ? -1 : sl_sigpipe_ignore()
        defer { if !worker { sl_sigpipe_restore(sigpipe) } }
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
        var closeError: String?
        if case .channel(let link) = options.input {
            // A worker: the coordinator orders the final barrier and says whether it committed.
            switch feedChannel(L, link) {
            case .final(let reason, let committing):
                inputEnded = true
                eventLine = 0
                closeError = finishWorker(L, link, reason: reason, committing: committing)
            case .stopped(let why):
                closeError = why
            case .crashed:
                closeError = crashed
            case .failed:
                if let abortMessage { link.outbox.post(.failed(worker: link.number, message: abortMessage)) }
            }
            inputEnded = true
            eventLine = 0
        } else {
            _ = feedInput(L)
            inputEnded = true
            eventLine = 0
            clearProgress()
            // Every stage's flush, before any close (and the final checkpoint).
            finalBarrier(L)
            // What the final barrier did not settle never will be (an abort, a forced stop).
            ingestSource?.feed.abandon(abortMessage ?? sinkFailure?.message ?? (sl_stop_forced() != 0 ? "the stop was forced" : "the run ended"))
            if let stream = streamSource, let problem = stream.finish() {
                rt.diagnose("scopelua: cannot acknowledge what was read from \(stream.label): \(problem) (it stays pending and is delivered again)")
            }
            // What was written must be on its way before the stages close: a failure here
            // is known (and reported) while the report can still say so.
            flushSinks()
        }

        // Close, in reverse; the error that ended the run (if any) goes to close(ctx, err).
        // A failing output is a graceful stop: the stages close without an error.
        var errIndex: Int32 = 0
        if let abortMessage {
            Lua.push(L, abortMessage)
            errIndex = lua_gettop(L)
        } else if let uncommitted = closeError ?? uncommittedEnd {
            // With --checkpoint, what the last checkpoint does not cover rolls back.
            Lua.push(L, uncommitted)
            errIndex = lua_gettop(L)
        }
        let failures = closeAll(L, error: errIndex)
        closeSinks()
        finishedAt = sl_monotonic_ns()
        let signal = sl_stop_signal()
        if case .channel = options.input {
            // The coordinator sums up the workers' counts and reports once.
            releaseFailures = failures
        } else {
            summarize(ended: abortMessage != nil || sinkFailure != nil || !failures.isEmpty || signal != 0)
        }
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

    /// The limits of each stage, in the order `open` creates them.
    lazy var plannedLimits = definition.allStageLimits()

    /// The stage a forced stop interrupted, if one was running.
    var forcedStage: String?

    struct OpenFailure {
        var message: String
        var errorIndex: Int32
    }

    func open(_ L: LuaState, _ def: PipelineDefinition, parent: Scope, inherited: ErrorPolicy?) -> OpenFailure? {
        var scope = Scope(name: def.name, parent: parent)
        opened.append(.scope(scope))
        if opened.count == 1, case .channel(let link) = options.input {
            // run/analytics/worker2/enrich/task: a worker's stages are its own.
            scope = Scope(name: "worker\(link.number)", parent: scope)
            opened.append(.scope(scope))
        }
        let policy = def.policy ?? inherited
        for item in def.items {
            switch item {
            case .stage(let stageDef, let config):
                let stageScope = Scope(name: stageDef.name, parent: scope)
                let stage = StageRun(definition: stageDef, policy: stageDef.policy ?? policy ?? .abort, scope: stageScope)
                stage.ctx = makeContext(L, stageDef, config: config)
                if stages.count < plannedLimits.count, let l = plannedLimits[stages.count] {
                    stage.limits = StageLimitsRun(l, stage: stageDef.name)
                }
                stages.append(stage)
                opened.append(.stage(stage))
                if stageDef.open != LUA_NOREF {
                    rt.current = stageScope
                    runningStage = stages.count - 1
                    opening = true
                    lua_rawgeti(L, Lua.registry, lua_Integer(stageDef.open))
                    lua_rawgeti(L, Lua.registry, lua_Integer(stage.ctx))
                    var status = limitedCall(L, stage, .open, nargs: 1, nresults: 0)
                    opening = false
                    runningStage = nil
                    rt.current = scope
                    if status.breach != 0 { status.code = pushBreach(L, stage, status, .open, where: "in open").code }
                    if status.code != LUA_OK {
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

    /// ctx = { name, resumed, resumed_line, config, state } with the ctx metatable (which
    /// also answers ctx.line and ctx.committing). Returns its reference.
    func makeContext(_ L: LuaState, _ def: StageDefinition, config: Int32) -> Int32 {
        lua_createtable(L, 0, 4)
        Lua.push(L, def.name)
        Lua.setField(L, -2, "name")
        var resumedAt = checkpointing.resumed?.position
        var worker = 1, workers = 1
        if case .channel(let link) = options.input {
            resumedAt = link.resumed
            worker = link.number
            workers = link.workers
        }
        lua_pushboolean(L, resumedAt != nil ? 1 : 0)
        Lua.setField(L, -2, "resumed")
        if let resumedAt {
            // The line the checkpoint resumed after (what was committed up to).
            lua_pushinteger(L, lua_Integer(resumedAt.line))
            Lua.setField(L, -2, "resumed_line")
        }
        lua_pushinteger(L, lua_Integer(worker))
        Lua.setField(L, -2, "worker")
        lua_pushinteger(L, lua_Integer(workers))
        Lua.setField(L, -2, "workers")
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
    func closeAll(_ L: LuaState, error errIndex: Int32) -> [String] {
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
                    var status = limitedCall(L, stage, .close, nargs: 2, nresults: 0)
                    if status.breach != 0 { status.code = pushBreach(L, stage, status, .close, where: "in close").code }
                    if status.code != LUA_OK {
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
    func feedInput(_ L: LuaState) -> Bool {
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
        case .channel:
            return false  // see execute
        case .stream:
            guard let source = streamSource else { return false }
            return feedStream(L, source)
        case .ingest:
            guard let source = ingestSource else { return false }
            return feedIngest(L, source)
        }
    }

    /// The input as a checkpointable source; its reader follows the file by its name
    /// with `--follow` (made when first read, once the outputs are open).
    func makeLineSource() -> LineSource {
        let follow = options.follow
        let name = inputName
        return LineSource(fd: inputFD, name: name) { [unowned self] fd in
            follow ? self.followingReader(name) : LineReader(fd: fd)
        }
    }

    /// The reader for `--follow` over the file at `path`: never the run's own output or
    /// dead-letter file.
    func followingReader(_ path: String) -> LineReader {
        let sinks = [(output as? FileSink)?.identity, (deadLetter as? FileSink)?.identity].compactMap { $0 }
        return LineReader(following: path, fd: inputFD, sinks: sinks) { [unowned self] in self.rt.diagnose($0) }
    }

    /// The event read at `line` did not reach a category: it is in flight. Returns false
    /// (the run stops).
    func inFlight(line: Int) -> Bool {
        original.inFlight += 1
        inFlightLines.append(line)
        return false
    }

    func feedLines(_ L: LuaState, _ source: LineSource) -> Bool {
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
                guard reject(L, line: lineNumber, reason: Self.tooLong(length, limit: reader.limit),
                             raw: String(decoding: prefix, as: UTF8.self) + "...") else { return inFlight(line: lineNumber) }
            case .line(let bytes):
                lineNumber += 1
                if Self.isBlank(bytes) { continue }  // blank lines are not events
                if !takeLine(L, bytes, line: lineNumber, codec: codec) { return false }
            }
        }
    }

    /// Why a line over the reader's limit is rejected.
    static func tooLong(_ length: Int, limit: Int) -> String {
        "line is \(length) bytes long (the limit is \(limit >> 20) MiB)"
    }

    /// Whether a line holds nothing but spaces and tabs (it is not an event).
    @inline(__always)
    static func isBlank(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        bytes.isEmpty || bytes.allSatisfy({ $0 == 32 || $0 == 9 })
    }

    /// Input line `line` (not blank): checked, decoded and taken through the stages, or
    /// rejected. False when the run must stop (the line is then counted in flight).
    func takeLine(_ L: LuaState, _ bytes: UnsafeBufferPointer<UInt8>, line lineNumber: Int, codec: JSONCodec) -> Bool {
        read += 1
        guard isValidUTF8(bytes) else {
            return reject(L, line: lineNumber, reason: "line is not valid UTF-8",
                          raw: String(decoding: bytes, as: UTF8.self)) || inFlight(line: lineNumber)
        }
        _ = bytes.withMemoryRebound(to: CChar.self) { lua_pushlstring(L, $0.baseAddress, $0.count) }
        let text = lua_gettop(L)
        guard codec.decode(L, text) else {
            let reason = "not valid JSON: \(Lua.describe(L, -1))"
            lua_settop(L, text - 1)
            return reject(L, line: lineNumber, reason: reason,
                          raw: String(decoding: bytes, as: UTF8.self)) || inFlight(line: lineNumber)
        }
        guard lua_type(L, -1) == LUA_TTABLE, bytes.first(where: { $0 != 32 && $0 != 9 }) == 123 else {
            lua_settop(L, text - 1)
            return reject(L, line: lineNumber, reason: "not a JSON object",
                          raw: String(decoding: bytes, as: UTF8.self)) || inFlight(line: lineNumber)
        }
        sl_remove(L, text)
        eventLine = lineNumber
        if !(options.replay ? replayRecord(L, line: lineNumber) : deliver(L, 0, extra: false)) { return inFlight(line: lineNumber) }
        return true
    }
}

extension PipelineRun.Options.Input {
    var isList: Bool {
        if case .list = self { return true }
        return false
    }
}
