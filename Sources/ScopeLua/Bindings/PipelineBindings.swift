import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// `stage(name, def)`, `pipeline(name, def)`, `p:run{...}`, and the `ctx` stages see.
enum PipelineBindings: RuntimeModule {
    static func install(_ rt: Runtime, _ L: LuaState) {
        Lua.push(L, stage)
        Bindings.setGlobal(L, "stage")
        Lua.push(L, pipeline)
        Bindings.setGlobal(L, "pipeline")

        // Stage definition tables get this metatable (a marker; nothing else changes).
        lua_createtable(L, 0, 1)
        Lua.push(L, "stage")
        Lua.setField(L, -2, "__name")
        rt.stageMetatable = lua_topointer(L, -1)
        Lua.setRegistryField(L, "scopelua.stage")

        // Pipeline objects: { name = ... } with :run{...}.
        lua_createtable(L, 0, 3)
        Lua.push(L, "pipeline")
        Lua.setField(L, -2, "__name")
        lua_createtable(L, 0, 1)
        Lua.setFunction(L, -1, "run", run)
        Lua.setField(L, -2, "__index")
        Lua.setFunction(L, -1, "__tostring", pipelineToString)
        rt.pipelineMetatable = lua_topointer(L, -1)
        Lua.setRegistryField(L, "scopelua.pipeline")

        // ctx: { name, config, state } with :emit(e) and :own(h). Their closures hold the
        // engine's state as an upvalue, so ctx:emit (per event) looks nothing up.
        let state = Unmanaged.passUnretained(rt.pipelineState).toOpaque()  // kept by the runtime
        lua_createtable(L, 0, 2)
        lua_createtable(L, 0, 2)
        lua_pushlightuserdata(L, state)
        sl_pushclosure(L, emit, 1)
        Lua.setField(L, -2, "emit")
        lua_pushlightuserdata(L, state)
        sl_pushclosure(L, own, 1)
        Lua.setField(L, -2, "own")
        // ctx.line and ctx.committing change from call to call: the methods table falls
        // back to a function for them, so setting up a call (and ctx:emit) costs nothing.
        lua_createtable(L, 0, 1)
        lua_pushlightuserdata(L, state)
        sl_pushclosure(L, ctxField, 1)
        Lua.setField(L, -2, "__index")
        _ = lua_setmetatable(L, -2)
        Lua.setField(L, -2, "__index")
        Lua.setRegistryField(L, "scopelua.ctx")

        // Lua's own print, and the one a run puts in its place while it writes events
        // to stdout (see PipelineRun.replacePrint).
        Bindings.getGlobal(L, "print")
        Lua.setRegistryField(L, "scopelua.print")
        Lua.push(L, runPrint)
        Lua.setRegistryField(L, "scopelua.print.run")
    }

    // MARK: - print while a pipeline runs

    /// `print` while a pipeline runs: as Lua's print (tostring of each argument, tabs,
    /// a newline, byte for byte), to stderr while the run writes its events to stdout,
    /// else to stdout (first clearing a progress line drawn on the same terminal).
    static let runPrint: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        let n = lua_gettop(L)
        var bytes: [UInt8] = []
        for i in stride(from: 1, through: n, by: 1) {
            lua_pushcclosure(L, sl_tostring, 0)
            lua_pushvalue(L, i)
            guard sl_pcall(L, 1, 1, 0) == LUA_OK else { return raise }  // __tostring failed
            if i > 1 { bytes.append(9) }
            var len = 0
            if let p = lua_tolstring(L, -1, &len) {
                bytes.append(contentsOf: UnsafeRawBufferPointer(start: p, count: len))
            }
            sl_pop(L, 1)
        }
        bytes.append(10)
        let run = rt.activeRun
        if run?.printsToStderr == true {
            bytes.withUnsafeBytes { buffer in
                var offset = 0
                while offset < buffer.count {
                    let written = Glibc.write(2, buffer.baseAddress.map { $0 + offset }, buffer.count - offset)
                    if written > 0 { offset += written } else if written < 0, errno == EINTR { continue } else { break }
                }
            }
        } else {
            run?.clearProgressBeforeOutput()
            let out = sl_stdout()
            _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, out) }
            fflush(out)
        }
        return 0
    }

    // MARK: - Registration

    /// stage(name, def) → def; stage "name" → function(def) (for `stage "name" { ... }`).
    static let stage: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let name = Lua.string(L, 1) else {
            Lua.pushTypeError(L, 1, "string")
            return raise
        }
        if sl_isnoneornil(L, 2) != 0 {
            lua_settop(L, 1)
            sl_pushclosure(L, curriedStage, 1)
            return 1
        }
        guard registerStage(rt, L, name: name, definition: 2) != nil else { return raise }
        return 1
    }

    static let curriedStage: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        lua_pushvalue(L, sl_upvalueindex(2))
        let name = Lua.string(L, -1) ?? "?"
        sl_pop(L, 1)
        guard registerStage(rt, L, name: name, definition: 1) != nil else { return raise }
        return 1
    }

    /// Validates and registers the stage definition table at `definition`; pushes it
    /// (or an error, returning nil).
    static func registerStage(_ rt: Runtime, _ L: LuaState, name: String, definition: Int32,
                              register: Bool = true) -> StageDefinition? {
        let def = lua_absindex(L, definition)
        let site = callerSite(L)
        if register, let earlier = rt.pipelines.stages[name] {
            guard redefine(rt, L, "stage '\(name)'", earlier: earlier.site) else { return nil }
        }
        guard lua_type(L, def) == LUA_TTABLE else {
            Lua.pushError(L, "stage '\(name)': the definition must be a table with a process function (got a \(Lua.typeName(L, def)))")
            return nil
        }
        var refs: [String: Int32] = [:]
        for field in ["process", "open", "close", "flush"] {
            switch Lua.rawField(L, def, field) {
            case LUA_TFUNCTION:
                refs[field] = luaL_ref(L, Lua.registry)
            case LUA_TNIL:
                sl_pop(L, 1)
                if field == "process" {
                    Lua.pushError(L, "stage '\(name)' has no process function")
                    return nil
                }
            default:
                let type = Lua.typeName(L, -1)
                sl_pop(L, 1)
                Lua.pushError(L, "stage '\(name)': \(field) must be a function (got a \(type))")
                return nil
            }
        }
        var policy: ErrorPolicy?
        if Lua.rawField(L, def, "on_error") != LUA_TNIL {
            switch ErrorPolicy.parse(L, -1) {
            case .success(let p): policy = p
            case .failure(let e):
                sl_pop(L, 1)
                Lua.pushError(L, "stage '\(name)': \(e.message)")
                return nil
            }
        }
        sl_pop(L, 1)
        var limits: StageLimits?
        switch StageLimits.field(L, def, owner: "stage '\(name)'") {
        case .success(let l): limits = l
        case .failure(let e):
            Lua.pushError(L, e.message)
            return nil
        }
        if lua_getmetatable(L, def) == 0 {
            Lua.getRegistryField(L, "scopelua.stage")
            _ = lua_setmetatable(L, def)
        } else {
            sl_pop(L, 1)
        }
        lua_pushvalue(L, def)
        let table = luaL_ref(L, Lua.registry)
        let stage = StageDefinition(name: name, process: refs["process"] ?? LUA_NOREF, open: refs["open"] ?? LUA_NOREF,
                                    close: refs["close"] ?? LUA_NOREF, flush: refs["flush"] ?? LUA_NOREF, policy: policy,
                                    table: table, site: site)
        stage.limits = limits
        if register { rt.pipelines.stages[name] = stage }
        rt.pipelines.stagesByTable[lua_topointer(L, def)] = stage
        lua_pushvalue(L, def)
        return stage
    }

    /// pipeline(name, def) → pipeline; pipeline "name" → function(def).
    static let pipeline: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let name = Lua.string(L, 1) else {
            Lua.pushTypeError(L, 1, "string")
            return raise
        }
        if sl_isnoneornil(L, 2) != 0 {
            lua_settop(L, 1)
            sl_pushclosure(L, curriedPipeline, 1)
            return 1
        }
        return registerPipeline(rt, L, name: name, definition: 2) ? 1 : raise
    }

    static let curriedPipeline: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        lua_pushvalue(L, sl_upvalueindex(2))
        let name = Lua.string(L, -1) ?? "?"
        sl_pop(L, 1)
        return registerPipeline(rt, L, name: name, definition: 1) ? 1 : raise
    }

    /// Validates and registers the pipeline definition at `definition`; pushes the
    /// pipeline object (or an error, returning false).
    static func registerPipeline(_ rt: Runtime, _ L: LuaState, name: String, definition: Int32) -> Bool {
        let def = lua_absindex(L, definition)
        let site = callerSite(L)
        if let earlier = rt.pipelines.pipelines[name] {
            guard redefine(rt, L, "pipeline '\(name)'", earlier: earlier.site) else { return false }
        }
        guard lua_type(L, def) == LUA_TTABLE else {
            Lua.pushError(L, "pipeline '\(name)': the definition must be a list of stages (got a \(Lua.typeName(L, def)))")
            return false
        }
        var items: [PipelineDefinition.Item] = []
        let count = lua_rawlen(L, def)
        guard count > 0 else {
            Lua.pushError(L, "pipeline '\(name)' has no stages")
            return false
        }
        // On an error the message is left on top and false returned: the trampoline
        // raises the top value, so what lies below it does not matter.
        for i in 1...count {
            let base = lua_gettop(L)
            lua_rawgeti(L, def, lua_Integer(i))
            let item = lua_gettop(L)
            switch lua_type(L, item) {
            case LUA_TSTRING:
                let stageName = Lua.string(L, item) ?? ""
                if let stage = rt.pipelines.stages[stageName] {
                    lua_createtable(L, 0, 0)
                    items.append(.stage(stage, config: luaL_ref(L, Lua.registry)))
                } else if let nested = rt.pipelines.pipelines[stageName], stageName != name {
                    items.append(.pipeline(nested))
                } else {
                    Lua.pushError(L, "pipeline '\(name)': unknown stage '\(stageName)' (item \(i))")
                    return false
                }
            case LUA_TTABLE:
                let mt: UnsafeRawPointer? = lua_getmetatable(L, item) != 0 ? lua_topointer(L, -1) : nil
                lua_settop(L, item)
                if mt != nil, mt == rt.pipelineMetatable, let nested = rt.pipelines.pipelinesByTable[lua_topointer(L, item)] {
                    items.append(.pipeline(nested))
                } else if mt != nil, mt == rt.stageMetatable, let stage = rt.pipelines.stagesByTable[lua_topointer(L, item)] {
                    lua_createtable(L, 0, 0)
                    items.append(.stage(stage, config: luaL_ref(L, Lua.registry)))
                } else if Lua.rawField(L, item, "process") != LUA_TNIL {
                    // An inline stage definition.
                    sl_pop(L, 1)
                    let inlineName = Lua.rawField(L, item, "name") == LUA_TSTRING ? Lua.string(L, -1) ?? "" : "\(name)[\(i)]"
                    sl_pop(L, 1)
                    guard registerStage(rt, L, name: inlineName, definition: item, register: false) != nil else {
                        return false
                    }
                    let stage = rt.pipelines.stagesByTable[lua_topointer(L, item)]
                    lua_createtable(L, 0, 0)
                    if let stage { items.append(.stage(stage, config: luaL_ref(L, Lua.registry))) }
                } else {
                    sl_pop(L, 1)
                    // { "name", key = value, ... }: a registered stage with its config.
                    guard lua_rawgeti(L, item, 1) == LUA_TSTRING, let stageName = Lua.string(L, -1) else {
                        Lua.pushError(L, "pipeline '\(name)': item \(i) must be a stage name, a stage definition, { name, key = value, ... } or a pipeline")
                        return false
                    }
                    sl_pop(L, 1)
                    guard let stage = rt.pipelines.stages[stageName] else {
                        Lua.pushError(L, "pipeline '\(name)': unknown stage '\(stageName)' (item \(i))")
                        return false
                    }
                    lua_createtable(L, 0, 4)
                    let config = lua_gettop(L)
                    lua_pushnil(L)
                    while lua_next(L, item) != 0 {
                        if lua_type(L, -2) == LUA_TNUMBER, lua_isinteger(L, -2) != 0, lua_tointegerx(L, -2, nil) == 1 {
                            sl_pop(L, 1)
                            continue
                        }
                        lua_pushvalue(L, -2)
                        lua_rotate(L, -2, 1)
                        lua_rawset(L, config)
                    }
                    items.append(.stage(stage, config: luaL_ref(L, Lua.registry)))
                }
            default:
                Lua.pushError(L, "pipeline '\(name)': item \(i) must be a stage name, a stage definition, { name, key = value, ... } or a pipeline (got a \(Lua.typeName(L, item)))")
                return false
            }
            lua_settop(L, base)
        }
        var policy: ErrorPolicy?
        if Lua.rawField(L, def, "on_error") != LUA_TNIL {
            switch ErrorPolicy.parse(L, -1) {
            case .success(let p): policy = p
            case .failure(let e):
                Lua.pushError(L, "pipeline '\(name)': \(e.message)")
                return false
            }
        }
        sl_pop(L, 1)
        let definitionObject = PipelineDefinition(name: name, items: items, policy: policy, site: site)
        switch StageLimits.field(L, def, owner: "pipeline '\(name)'") {
        case .success(let l): definitionObject.limits = l
        case .failure(let e):
            Lua.pushError(L, e.message)
            return false
        }
        switch Lua.rawField(L, def, "partition_by") {
        case LUA_TNIL: break
        case LUA_TSTRING:
            do {
                definitionObject.partitionBy = try PartitionKey(path: Lua.string(L, -1) ?? "")
            } catch {
                Lua.pushError(L, "pipeline '\(name)': \(error.message)")
                return false
            }
        default:
            Lua.pushError(L, "pipeline '\(name)': partition_by must be a string naming a field (\"user\" or \"user.id\"), got a \(Lua.typeName(L, -1))")
            return false
        }
        sl_pop(L, 1)
        switch Lua.rawField(L, def, "ordered") {
        case LUA_TNIL: break
        case LUA_TBOOLEAN: definitionObject.ordered = lua_toboolean(L, -1) != 0
        default:
            Lua.pushError(L, "pipeline '\(name)': ordered must be true (output in input order) or false (in completion order), got a \(Lua.typeName(L, -1))")
            return false
        }
        sl_pop(L, 1)
        rt.pipelines.pipelines[name] = definitionObject
        rt.pipelines.pipelineOrder.removeAll { $0 == name }
        rt.pipelines.pipelineOrder.append(name)
        lua_createtable(L, 0, 1)
        Lua.push(L, name)
        Lua.setField(L, -2, "name")
        Lua.getRegistryField(L, "scopelua.pipeline")
        _ = lua_setmetatable(L, -2)
        rt.pipelines.pipelinesByTable[lua_topointer(L, -1)] = definitionObject
        lua_pushvalue(L, -1)
        rt.pipelines.objects.append(luaL_ref(L, Lua.registry))  // keeps the object's address stable
        return true
    }

    /// `job.lua:3`: where the Lua code calling `stage` / `pipeline` is, or nil.
    static func callerSite(_ L: LuaState) -> String? {
        luaL_where(L, 1)
        defer { sl_pop(L, 1) }
        guard let text = Lua.string(L, -1), text.hasSuffix(": ") else { return nil }
        return String(text.dropLast(2))
    }

    /// `what` (`stage 'enrich'`) is registered again: an error naming both places
    /// (pushed; false), or in the REPL a note saying what it replaces (true).
    static func redefine(_ rt: Runtime, _ L: LuaState, _ what: String, earlier: String?) -> Bool {
        if rt.pipelines.allowsRedefinition {
            rt.diagnose("\(what) redefined" + (earlier.map { " (was \($0))" } ?? ""))
            return true
        }
        Lua.pushError(L, "\(what) is already defined" + (earlier.map { " at \($0)" } ?? ""))
        return false
    }

    static let pipelineToString: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard lua_type(L, 1) == LUA_TTABLE, let def = rt.pipelines.pipelinesByTable[lua_topointer(L, 1)] else {
            Lua.push(L, "pipeline")
            return 1
        }
        Lua.push(L, "pipeline \"\(def.name)\" (\(def.stageCount) stages)")
        return 1
    }

    // MARK: - ctx

    /// The running pipeline, or an error pushed saying `method` needs one. For the ctx
    /// methods, whose closures carry the engine's state (see `install`).
    static func activeRun(_ L: LuaState, for method: String) -> PipelineRun? {
        let state = lua_touserdata(L, sl_upvalueindex(2)).unsafelyUnwrapped
        if let run = Unmanaged<PipelineState>.fromOpaque(state).takeUnretainedValue().activeRun { return run }
        Lua.pushError(L, "ctx:\(method) can only be used while the pipeline runs")
        return nil
    }

    /// `ctx.line`: the input line (the position in a list input) of the event being
    /// processed, with what it emitted; for an event a flush emitted, the line that
    /// barrier commits; nil outside process and for the events a timer emitted.
    /// `ctx.committing`: during a barrier (flush), the input line it is about to commit,
    /// the last line read before it. Anything else a ctx does not hold is nil.
    static let ctxField: SwiftLuaFunction = { L in
        let L = L.unsafelyUnwrapped
        let state = lua_touserdata(L, sl_upvalueindex(2)).unsafelyUnwrapped
        guard lua_type(L, 2) == LUA_TSTRING,
              let run = Unmanaged<PipelineState>.fromOpaque(state).takeUnretainedValue().activeRun,
              let key = Lua.string(L, 2) else { return 0 }
        let value: Int?
        switch key {
        case "line":
            // An event a flush emitted belongs to the barrier: it is applied with (and
            // replayed as) the line the barrier commits. The flush itself has no event.
            guard let stage = run.runningStage else { value = nil; break }
            if run.eventLine > 0 {
                value = run.eventLine
            } else if let committing = run.checkpointing.committing, stage != run.checkpointing.flushing {
                value = committing
            } else {
                value = nil
            }
        case "committing": value = run.checkpointing.committing
        default: value = nil
        }
        guard let value else { return 0 }
        lua_pushinteger(L, lua_Integer(value))
        return 1
    }

    /// ctx:emit(e): sends an extra event downstream of the stage.
    static let emit: SwiftLuaFunction = { L in
        let L = L.unsafelyUnwrapped
        // Checked only once something is wrong: the common call pays nothing for it.
        guard let run = activeRun(L, for: "emit") else { return calledWithADot(L, "emit(e)") ?? raise }
        guard lua_type(L, 2) == LUA_TTABLE else {
            if let dot = calledWithADot(L, "emit(e)") { return dot }
            Lua.pushTypeError(L, 2, "table")
            return raise
        }
        if let problem = run.emit(L, ctx: 1, event: 2) {
            if let dot = calledWithADot(L, "emit(e)") { return dot }
            Lua.pushError(L, problem)
            return raise
        }
        return 0
    }

    /// `ctx.emit(e)` for `ctx:emit(e)`: the first argument is not a ctx. Pushes an error
    /// saying to use a colon and returns `raise`; nil when the first argument is a ctx.
    static func calledWithADot(_ L: LuaState, _ call: String) -> Int32? {
        var isContext = false
        if lua_getmetatable(L, 1) != 0 {
            Lua.getRegistryField(L, "scopelua.ctx")
            isContext = lua_rawequal(L, -1, -2) != 0
            sl_pop(L, 2)
        }
        guard !isContext else { return nil }
        let method = call.prefix { $0 != "(" }
        Lua.pushError(L, "ctx.\(method) was called with a dot: use ctx:\(call) (with a colon)")
        return raise
    }

    /// ctx:own(h): moves a handle from the task scope to the stage scope; returns it.
    static let own: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        if let dot = calledWithADot(L, "own(h)") { return dot }
        guard let run = activeRun(L, for: "own") else { return raise }
        guard let h = HandleBindings.checkOpen(rt, L, 2) else { return raise }
        if let problem = run.own(L, ctx: 1, handle: h) {
            Lua.pushError(L, problem)
            return raise
        }
        lua_settop(L, 2)
        return 1
    }

    // MARK: - p:run{...}

    /// p:run{ input = path | list, output = path | fn, dead_letter = path, replay = bool } → report.
    static let run: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard lua_type(L, 1) == LUA_TTABLE, let def = rt.pipelines.pipelinesByTable[lua_topointer(L, 1)] else {
            Lua.pushTypeError(L, 1, "pipeline")
            return raise
        }
        guard rt.activeRun == nil else {
            Lua.pushError(L, "pipeline '\(def.name)' cannot run while another pipeline runs")
            return raise
        }
        guard lua_type(L, 2) == LUA_TTABLE else {
            Lua.pushTypeError(L, 2, "table")
            return raise
        }
        // --sandbox: the files p:run opens are the script's to ask for (the runner's own
        // --input, --output and --dead-letter are not checked).
        if rt.isSandboxed {
            let files: [(String, Permissions.Access)] = [("input", .read), ("output", .write), ("dead_letter", .write)]
            for (field, access) in files {
                if Lua.rawField(L, 2, field) == LUA_TSTRING, let path = Lua.string(L, -1), let denial = rt.permit(access, path) {
                    Lua.pushError(L, denial)
                    return raise
                }
                sl_pop(L, 1)
            }
        }
        var options = PipelineRun.Options()
        switch Lua.rawField(L, 2, "input") {
        case LUA_TSTRING: options.input = .path(Lua.string(L, -1) ?? "")
        case LUA_TTABLE:
            lua_pushvalue(L, -1)
            options.input = .list(luaL_ref(L, Lua.registry))
        default:
            Lua.pushError(L, "bad argument #1 to 'run' (input must be a file path or a list of events)")
            return raise
        }
        switch Lua.rawField(L, 2, "output") {
        case LUA_TNIL: options.output = .collect
        case LUA_TSTRING: options.output = .path(Lua.string(L, -1) ?? "")
        case LUA_TFUNCTION:
            lua_pushvalue(L, -1)
            options.output = .function(luaL_ref(L, Lua.registry))
        default:
            Lua.pushError(L, "bad argument #1 to 'run' (output must be a file path or a function)")
            return raise
        }
        if Lua.rawField(L, 2, "dead_letter") == LUA_TSTRING { options.deadLetter = Lua.string(L, -1) }
        // Each input line (list item) is a dead-letter record to replay (Replay.swift).
        options.replay = Lua.rawField(L, 2, "replay") != LUA_TNIL && lua_toboolean(L, -1) != 0
        lua_settop(L, 2)
        let run = PipelineRun(rt, def, options: options)
        rt.pipelineRuns += 1
        let outcome = run.execute(L, parent: rt.current)
        run.releaseReferences(L)
        switch outcome {
        case .finished:
            run.pushReport(L)
            return 1
        case .stopped:
            // The run stopped between events (or by force): the script stops too, its
            // scopes unwinding with the stop as their error.
            sl_stop_pusherror(L)
            let stop = Lua.string(L, -1) ?? "stopped"
            sl_pop(L, 1)
            Lua.pushError(L, stop + (run.forcedStage.map { " while stage '\($0)' was still running" } ?? ""))
            return raise
        case .failed(let message), .readerGone(let message), .refused(let message):
            Lua.pushError(L, message)
            return raise
        }
    }
}
