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
/// order and close in reverse. Every event ends as output, filtered, skipped,
/// dead-lettered or rejected, and the counts add up.
final class PipelineRun {
    struct Options {
        enum Input { case path(String), list(Int32), stdin }
        enum Output { case path(String), function(Int32), collect, stdout, discard }
        var input: Input = .stdin
        var output: Output = .stdout
        var deadLetter: String?
        /// A live progress line on stderr (when it is a terminal).
        var progress = false
        /// Run by `scopelua run --input`, which prints its report.
        var commandLine = false
    }

    enum Outcome: Equatable {
        case finished
        case stopped(signal: Int32)
        case failed(String)
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

        init(definition: StageDefinition, policy: ErrorPolicy, scope: Scope) {
            self.definition = definition
            self.policy = policy
            self.scope = scope
            self.task = Scope(name: "task", parent: scope)
        }
    }

    /// Per-outcome counts (for events read, and separately for events created by
    /// `ctx:emit`).
    struct Outcomes {
        var emitted = 0
        var filtered = 0
        var skipped = 0
        var deadLettered = 0
    }

    let rt: Runtime
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

    /// The stage whose `process` (or timer) is running, for ctx:emit / ctx:own.
    private(set) var runningStage: Int?
    /// Events emitted by the running stage: a Lua list and its top.
    private var queue: Int32 = LUA_NOREF
    private var queueTop: lua_Integer = 0
    /// Stack index of the traceback-capturing message handler.
    private var msgh: Int32 = 0
    private var output: FileSink?
    private var deadLetter: FileSink?
    private var collected: Int32 = LUA_NOREF
    private var abortMessage: String?
    private var inputEnded = false
    private var startedAt = sl_monotonic_ns()
    private var lastProgress: UInt64 = 0

    init(_ rt: Runtime, _ definition: PipelineDefinition, options: Options) {
        self.rt = rt
        self.definition = definition
        self.options = options
    }

    // MARK: - Running

    /// Runs the pipeline to the end of its input (or a stop), in a child of `parent`.
    func execute(_ L: LuaState, parent: Scope) -> Outcome {
        rt.activeRun = self
        defer { rt.activeRun = nil }
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        _ = lua_checkstack(L, 64)
        lua_pushcclosure(L, sl_capturetraceback, 0)
        msgh = lua_gettop(L)
        lua_createtable(L, 16, 0)
        queue = luaL_ref(L, Lua.registry)
        if case .collect = options.output {
            lua_createtable(L, 0, 0)
            collected = luaL_ref(L, Lua.registry)
        }
        if let problem = openSinks() { return .failed(problem) }
        defer {
            output?.close()
            deadLetter?.close()
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

        // Events.
        _ = feedInput(L)
        inputEnded = true
        clearProgress()

        // Close, in reverse; the error that ended the run (if any) goes to close(ctx, err).
        var errIndex: Int32 = 0
        if let abortMessage {
            Lua.push(L, abortMessage)
            errIndex = lua_gettop(L)
        }
        let failures = closeAll(L, error: errIndex)
        // A forced stop wins over the errors it caused (the interrupted stage's, say).
        let signal = sl_stop_signal()
        if signal != 0, abortMessage == nil || sl_stop_forced() != 0, failures.isEmpty || sl_stop_forced() != 0 {
            return .stopped(signal: signal)
        }
        if let abortMessage {
            var message = abortMessage
            for f in failures { message += "\n\trelease error: \(f)" }
            return .failed(message)
        }
        if !failures.isEmpty {
            return .failed(failures.joined(separator: "\n\trelease error: "))
        }
        return signal != 0 ? .stopped(signal: signal) : .finished
    }

    /// The stage a forced stop interrupted, if one was running.
    private(set) var forcedStage: String?

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
                    lua_rawgeti(L, Lua.registry, lua_Integer(stageDef.open))
                    lua_rawgeti(L, Lua.registry, lua_Integer(stage.ctx))
                    let status = sl_pcall(L, 1, 0, msgh)
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
        lua_createtable(L, 0, 3)
        Lua.push(L, def.name)
        Lua.setField(L, -2, "name")
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
                lua_rawgeti(L, list, lua_Integer(i))
                if lua_type(L, -1) == LUA_TTABLE {
                    if !deliver(L, 0, extra: false) { return false }
                } else {
                    reject(L, line: Int(i), reason: "event \(i) is a \(Lua.typeName(L, -1)), not a table", raw: nil)
                    sl_pop(L, 1)
                }
                if !fireTimers(L) { return false }
                i += 1
            }
            return true
        case .path(let path):
            let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                abortMessage = "cannot open input \(path): \(String(cString: strerror(errno)))"
                return false
            }
            defer { Glibc.close(fd) }
            return feedLines(L, LineReader(fd: fd))
        case .stdin:
            return feedLines(L, LineReader(fd: 0))
        }
    }

    private func feedLines(_ L: LuaState, _ reader: LineReader) -> Bool {
        let codec = rt.json
        var lineNumber = 0
        while true {
            if !fireTimers(L) { return false }
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
                reject(L, line: lineNumber, reason: "line is \(length) bytes long (the limit is \(reader.limit >> 20) MiB)",
                       raw: String(decoding: prefix, as: UTF8.self) + "...")
            case .line(let bytes):
                lineNumber += 1
                if bytes.isEmpty || bytes.allSatisfy({ $0 == 32 || $0 == 9 }) { continue }  // blank lines are not events
                read += 1
                guard isValidUTF8(bytes) else {
                    reject(L, line: lineNumber, reason: "line is not valid UTF-8", raw: String(decoding: bytes, as: UTF8.self))
                    continue
                }
                _ = bytes.withMemoryRebound(to: CChar.self) { lua_pushlstring(L, $0.baseAddress, $0.count) }
                let text = lua_gettop(L)
                guard codec.decode(L, text) else {
                    reject(L, line: lineNumber, reason: "not valid JSON: \(Lua.describe(L, -1))", raw: String(decoding: bytes, as: UTF8.self))
                    lua_settop(L, text - 1)
                    continue
                }
                guard lua_type(L, -1) == LUA_TTABLE, bytes.first(where: { $0 != 32 && $0 != 9 }) == 123 else {
                    reject(L, line: lineNumber, reason: "not a JSON object", raw: String(decoding: bytes, as: UTF8.self))
                    lua_settop(L, text - 1)
                    continue
                }
                sl_remove(L, text)
                if !deliver(L, 0, extra: false) { return false }
            }
        }
    }

    // MARK: - Events

    /// Takes the event on top of the stack through stages `i`... (pops it). Returns
    /// false when the run must stop.
    private func deliver(_ L: LuaState, _ i: Int, extra: Bool) -> Bool {
        let event = lua_gettop(L)
        defer { lua_settop(L, event - 1) }
        if i == stages.count {
            if extra { fanout.emitted += 1 } else { original.emitted += 1 }
            return writeOutput(L, event)
        }
        _ = lua_checkstack(L, 16)
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
            if status == LUA_OK, failures == 0 {
                // The event (if any) and what the stage emitted go downstream.
                let emittedCount = queueTop - queueBase
                if emittedCount > 0 {
                    lua_rawgeti(L, Lua.registry, lua_Integer(queue))
                    let q = lua_gettop(L)
                    for k in 1...emittedCount {
                        lua_rawgeti(L, q, queueBase + k)
                        if !deliver(L, i + 1, extra: true) { return false }
                    }
                    for k in 1...emittedCount {
                        lua_pushnil(L)
                        lua_rawseti(L, q, queueBase + k)
                    }
                    queueTop = queueBase
                    sl_pop(L, 1)
                }
                if lua_type(L, result) == LUA_TNIL {
                    if extra { fanout.filtered += 1 } else { original.filtered += 1 }
                    return true
                }
                lua_pushvalue(L, result)
                return deliver(L, i + 1, extra: extra)
            }
            // The call (or a release in its task scope) failed.
            _ = rt.mergeErrors(L, primary: status == LUA_OK ? 0 : result, failures: failures)
            let error = lua_gettop(L)
            stage.errors += 1
            dropEmitted(L, from: queueBase)
            if sl_stop_forced() != 0 {
                forcedStage = stage.definition.name
                return false
            }
            if case .retry(let times, let backoff, let then) = policy {
                if attempt < times {
                    attempt += 1
                    retried += 1
                    if backoff > 0 { pause(backoff * Double(1 << min(attempt - 1, 20))) }
                    lua_settop(L, event)
                    continue
                }
                policy = then
            }
            switch policy {
            case .skip:
                if extra { fanout.skipped += 1 } else { original.skipped += 1 }
                return true
            case .deadLetter:
                if extra { fanout.deadLettered += 1 } else { original.deadLettered += 1 }
                writeDeadLetter(L, event: event, stage: stage.definition.name, error: error, traceback: traceback)
                return true
            case .abort, .retry:
                abortMessage = "pipeline '\(definition.name)' aborted: stage '\(stage.definition.name)' failed on \(describeEvent(L, event)): \(describeError(L, error, traceback: traceback))"
                return false
            }
        }
    }

    /// Empties the emit queue above `base`. Events emitted by a call that then failed
    /// are discarded (`uncount`): they never existed.
    private func dropEmitted(_ L: LuaState, from base: lua_Integer, uncount: Bool = true) {
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
        var wake: UInt64? = options.progress ? sl_monotonic_ns() &+ 500_000_000 : nil
        for t in rt.scheduled where t.handle != nil {
            wake = min(wake ?? t.due, t.due)
        }
        return wake
    }

    /// Fires due timers (between events only, never once the input has ended).
    private func fireTimers(_ L: LuaState) -> Bool {
        guard !rt.scheduled.isEmpty, !inputEnded else { return true }
        let now = sl_monotonic_ns()
        for t in rt.scheduled where t.due <= now {
            guard let h = t.handle, h.pointee.isOpen else { continue }
            if let interval = t.interval {
                t.due = max(t.due &+ UInt64(interval * 1e9), now)
            }
            let base = lua_gettop(L)
            let stageIndex = stages.firstIndex { $0.scope === t.owner || $0.task === t.owner }
            let callScope = Scope(name: "timer", parent: t.owner)
            let saved = rt.current
            rt.current = callScope
            runningStage = stageIndex
            t.pushFunction(L)
            let status = sl_pcall(L, 0, 0, msgh)
            runningStage = nil
            rt.current = saved
            let traceback = status == LUA_OK ? nil : rt.takeTraceback(L, -1)
            let failures = rt.endScope(callScope, L, error: status == LUA_OK ? 0 : lua_gettop(L))
            if t.interval == nil, h.pointee.isOpen {
                rt.release(h, L, cause: .handle(h.pointee.site), error: 0)
            }
            if status != LUA_OK || failures > 0 {
                _ = rt.mergeErrors(L, primary: status == LUA_OK ? 0 : base + 1, failures: failures)
                let name = stageIndex.map { stages[$0].definition.name } ?? definition.name
                if let i = stageIndex { stages[i].errors += 1 }
                let message = "timer \(rt.describe(h)) of stage '\(name)' failed: \(describeError(L, lua_gettop(L), traceback: traceback))"
                let policy = stageIndex.map { stages[$0].policy } ?? .abort
                if policy == .abort {
                    abortMessage = "pipeline '\(definition.name)' aborted: \(message)"
                    lua_settop(L, base)
                    return false
                }
                rt.diagnose("scopelua: \(message)")
            }
            // Events the timer emitted go downstream of its stage.
            if let i = stageIndex, queueTop > 0 {
                let count = queueTop
                lua_rawgeti(L, Lua.registry, lua_Integer(queue))
                let q = lua_gettop(L)
                for k in 1...count {
                    lua_rawgeti(L, q, k)
                    if !deliver(L, i + 1, extra: true) { return false }
                }
                dropEmitted(L, from: 0, uncount: false)
            }
            lua_settop(L, base)
        }
        return true
    }

    // MARK: - Output, dead letters, rejects

    private func openSinks() -> String? {
        switch options.output {
        case .path(let path):
            guard let sink = FileSink(path: path) else { return "cannot open output \(path): \(String(cString: strerror(errno)))" }
            output = sink
        case .stdout:
            output = FileSink(stdout: ())
        default: break
        }
        if let path = options.deadLetter {
            guard let sink = FileSink(path: path) else { return "cannot open dead-letter file \(path): \(String(cString: strerror(errno)))" }
            deadLetter = sink
        }
        return nil
    }

    private func writeOutput(_ L: LuaState, _ event: Int32) -> Bool {
        switch options.output {
        case .discard:
            return true
        case .collect:
            lua_rawgeti(L, Lua.registry, lua_Integer(collected))
            lua_pushvalue(L, event)
            lua_rawseti(L, -2, lua_Integer(lua_rawlen(L, -2) + 1))
            sl_pop(L, 1)
            return true
        case .function(let ref):
            lua_rawgeti(L, Lua.registry, lua_Integer(ref))
            lua_pushvalue(L, event)
            if sl_pcall(L, 1, 0, msgh) != LUA_OK {
                abortMessage = "pipeline '\(definition.name)' aborted: the output function failed on \(describeEvent(L, event)): \(describeError(L, lua_gettop(L)))"
                return false
            }
            return true
        case .path, .stdout:
            guard let output else { return true }
            let codec = rt.json
            guard codec.encode(L, event) else {
                abortMessage = "pipeline '\(definition.name)' aborted: cannot encode an output event as JSON: \(Lua.describe(L, -1))"
                return false
            }
            var len = 0
            if let p = lua_tolstring(L, -1, &len) { output.writeLine(p, len) }
            sl_pop(L, 1)
            return true
        }
    }

    /// A dead-letter record: { event, stage, error, traceback, time }.
    private func writeDeadLetter(_ L: LuaState, event: Int32, stage: String, error: Int32, traceback given: String?) {
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
        writeRecord(L, lua_gettop(L))
        sl_pop(L, 1)
    }

    private func reject(_ L: LuaState, line: Int, reason: String, raw: String?) {
        rejected += 1
        guard deadLetter != nil else {
            rt.diagnose("scopelua: input \(options.input.isList ? "event" : "line") \(line) rejected: \(reason)")
            return
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
        writeRecord(L, lua_gettop(L))
        sl_pop(L, 1)
    }

    /// Writes the table at `idx` as a JSON line to the dead-letter file, or to stderr.
    private func writeRecord(_ L: LuaState, _ idx: Int32) {
        guard rt.json.encode(L, idx) else {
            rt.diagnose("scopelua: dead letter (not encodable): \(Lua.describe(L, -1))")
            sl_pop(L, 1)
            return
        }
        var len = 0
        if let p = lua_tolstring(L, -1, &len) {
            if let deadLetter {
                deadLetter.writeLine(p, len)
            } else {
                rt.diagnose("scopelua: dead letter: " + String(decoding: UnsafeRawBufferPointer(start: p, count: len), as: UTF8.self))
            }
        }
        sl_pop(L, 1)
    }

    // MARK: - Descriptions

    /// `event 17` (its id), or its JSON (shortened) when it has no id.
    private func describeEvent(_ L: LuaState, _ event: Int32) -> String {
        if Lua.rawField(L, event, "id") != LUA_TNIL {
            defer { sl_pop(L, 1) }
            // An id a script computed as a float: show 3.0 as 3.
            if lua_type(L, -1) == LUA_TNUMBER, lua_isinteger(L, -1) == 0 {
                let d = lua_tonumberx(L, -1, nil)
                if d == d.rounded(), abs(d) < 1e15 { return "event \(Int64(d))" }
            }
            return "event \(Lua.describe(L, -1, metamethods: false))"
        }
        sl_pop(L, 1)
        if rt.json.encode(L, event), var text = Lua.string(L, -1) {
            sl_pop(L, 1)
            if text.count > 200 { text = String(text.prefix(200)) + "..." }
            return "event \(text)"
        }
        sl_pop(L, 1)
        return "an event"
    }

    /// The error's message and, when one was captured for it, its traceback.
    private func describeError(_ L: LuaState, _ error: Int32, traceback: String? = nil) -> String {
        let e = rt.takeError(copyOf: error, L, traceback: traceback)
        return e.traceback.map { "\(e.message)\n\($0)" } ?? e.message
    }

    private func wallClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    private func pause(_ seconds: Double) {
        var ts = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - Double(Int(seconds))) * 1e9))
        var left = timespec()
        while nanosleep(&ts, &left) != 0, errno == EINTR, sl_stop_signal() == 0 { ts = left }
    }

    // MARK: - Progress

    private func showProgress() {
        guard options.progress else { return }
        let now = sl_monotonic_ns()
        guard now &- lastProgress > 500_000_000 else { return }
        lastProgress = now
        let seconds = Double(now &- startedAt) / 1e9
        let rate = seconds > 0 ? Int(Double(read) / seconds) : 0
        sl_eprogress("scopelua: \(read) events read, \(original.emitted + fanout.emitted) out, \(rate) events/s")
    }

    private func clearProgress() {
        if options.progress, lastProgress != 0 { sl_eprogress("") }
    }

    /// Drops the registry references this run holds (after execute).
    func releaseReferences(_ L: LuaState) {
        luaL_unref(L, Lua.registry, queue)
        queue = LUA_NOREF
        if case .list(let ref) = options.input { luaL_unref(L, Lua.registry, ref) }
        if case .function(let ref) = options.output { luaL_unref(L, Lua.registry, ref) }
    }

    // MARK: - Report

    /// Pushes the report table (see `Report.pushPipeline`). Stack: +1.
    func pushReport(_ L: LuaState) {
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

/// A buffered output file (or stdout) written line by line.
final class FileSink {
    private let file: UnsafeMutablePointer<FILE>
    private let owned: Bool

    init?(path: String) {
        guard let f = fopen(path, "w") else { return nil }
        file = f
        owned = true
    }

    /// The process's stdout, shared with Lua's `print` and `io.write` so that their
    /// output interleaves in order.
    init(stdout: ()) {
        file = sl_stdout()
        owned = false
    }

    func writeLine(_ p: UnsafePointer<CChar>, _ len: Int) {
        fwrite(p, 1, len, file)
        fputc(10, file)
    }

    func close() {
        if owned { fclose(file) } else { fflush(file) }
    }
}
