import CLua
import CScopeLua
import ScopeLua

/// The REPL's logic, independent of any terminal: feed it lines, it answers with what
/// to print and which prompt comes next. Chunks run in the session scope (a child of the
/// run's root), so resources kept in globals stay open until released by hand or until
/// the session ends; a `local x <close>` is closed at the end of its chunk, as in Lua.
public final class Repl {
    public enum Prompt: Equatable {
        /// `> `: a new chunk.
        case primary
        /// `>> `: the chunk so far is incomplete.
        case continuation
        /// `event> `: typing events for `:run PIPELINE`, until an empty line.
        case event
    }

    public let runtime: Runtime
    /// The session scope: `run/repl`.
    let session: Scope
    private var pending: [String] = []
    private var collecting: (pipeline: PipelineDefinition, events: [String])?
    /// Where the REPL's answers go (values, errors, meta-command output).
    public var write: (String) -> Void
    public private(set) var finished = false
    /// Errors reported so far (a failing chunk, a syntax error, a failing :load, :run or
    /// timer callback). With stdin not a terminal the first one ends the session, as
    /// under `lua -`.
    public private(set) var errors = 0

    public init(options: RuntimeOptions = RuntimeOptions(), write: @escaping (String) -> Void = { StandardError.write(line: $0) }) {
        runtime = Runtime(options: options)
        session = Scope(name: "repl", parent: runtime.root)
        runtime.current = session
        // Redefining a stage or pipeline is how one tries things out here (said, not an error).
        runtime.pipelines.allowsRedefinition = true
        self.write = write
    }

    /// The prompt for the next line.
    public var prompt: Prompt {
        if collecting != nil { return .event }
        return pending.isEmpty ? .primary : .continuation
    }

    /// Handles one line of input.
    public func handle(_ line: String) {
        if collecting != nil {
            collectEvent(line)
            return
        }
        if pending.isEmpty, line.hasPrefix(":") {
            meta(line)
            return
        }
        pending.append(line)
        let chunk = pending.joined(separator: "\n")
        switch compile(chunk) {
        case .incomplete:
            return
        case .failed(let message):
            pending = []
            fail(message)
        case .ready:
            pending = []
            execute()
        }
    }

    private func fail(_ message: String) {
        errors += 1
        write(message)
    }

    /// Milliseconds until the next `timer.every` / `timer.after` is due (0: now), or nil
    /// when none is pending: how long the prompt may wait before `fireTimers`.
    public var millisecondsToNextTimer: Int32? {
        guard let due = runtime.nextTimerDue else { return nil }
        let now = sl_monotonic_ns()
        return due <= now ? 0 : Int32(clamping: (due - now + 999_999) / 1_000_000)
    }

    /// Fires the timers that are due, in the session scope, while the REPL waits at its
    /// prompt (where people try out lifecycles); a failing callback is reported like a
    /// failing chunk. Returns whether any timer fired.
    @discardableResult
    public func fireTimers() -> Bool {
        let L = runtime.L
        let base = lua_gettop(L)
        guard let due = runtime.nextTimerDue, due <= sl_monotonic_ns() else { return false }
        inSession(base: base) {
            if case .failed(let traceback, _) = runtime.fireDueTimers(L) {
                let error = runtime.takeError(L, traceback: traceback)
                fail("timer: " + (error.traceback.map { "\(error.message)\n\($0)" } ?? error.message))
            }
        }
        return true
    }

    /// Ctrl-C at the prompt: forget the chunk being typed.
    public func cancelInput() {
        pending = []
        collecting = nil
    }

    // MARK: - Chunks (lua.c's loadline / addreturn / multiline)

    private enum Compiled {
        case ready
        case incomplete
        case failed(String)
    }

    /// Compiles the chunk, trying `return <chunk>` first so that expressions print; a
    /// leading `=` means `return`. Leaves the compiled function on the stack when ready.
    private func compile(_ chunk: String) -> Compiled {
        let L = runtime.L
        var source = chunk
        if source.hasPrefix("=") { source = "return " + source.dropFirst() }
        if !source.hasPrefix("return "), (try? runtime.load("return " + source + ";", name: "=stdin")) != nil {
            return .ready
        }
        do {
            try runtime.load(source, name: "=stdin")
            return .ready
        } catch {
            if case .syntax(incomplete: true) = error.kind { return .incomplete }
            _ = L
            return .failed(error.message)
        }
    }

    /// Runs the compiled chunk on top of the stack in the session scope and prints its
    /// results (tab-separated) or its error and traceback.
    private func execute() {
        let L = runtime.L
        let base = lua_gettop(L) - 1  // the compiled chunk is on top
        inSession(base: base) { runChunk(L, base: base) }
    }

    /// Runs `body` in the session scope with Ctrl-C interrupting it, then puts the stack
    /// back to `base`.
    private func inSession(base: Int32, _ body: () -> Void) {
        let L = runtime.L
        runtime.current = session
        sl_repl_interrupt_install(L)
        defer {
            sl_repl_interrupt_uninstall()
            runtime.current = session
            lua_settop(L, base)
        }
        body()
    }

    private func runChunk(_ L: LuaState, base: Int32) {
        do {
            try runtime.call(nargs: 0)
        } catch {
            fail(error.traceback.map { "\(error.message)\n\($0)" } ?? error.message)
            return
        }
        let n = lua_gettop(L) - base
        guard n > 0 else { return }
        guard Lua.checkStack(L, LUA_MINSTACK) else {  // describing a value pushes
            write("too many results to print")  // lua.c's words
            return
        }
        var values: [String] = []
        for i in 1...n { values.append(Lua.describe(L, base + i)) }
        write(values.joined(separator: "\t"))
    }

    // MARK: - Meta-commands

    static let help = """
        :help                 this list
        :resources            open handles: id, kind, label, owner scope, age, acquisition site
        :scopes               the scope tree, with the number of open resources in each
        :trace on|off         print acquires and releases as they happen
        :load FILE            run a script in the session (its stages and pipelines stay registered)
        :run PIPELINE [FILE]  run a registered pipeline over a JSON-lines file, or over events typed one per line (empty line ends)
        :report               resource counts and timer statistics so far
        :limits               what applies to the session: memory limit, stage limits, sandbox and permissions
        :quit                 end the session, releasing everything (also Ctrl-D)
        """

    private func meta(_ line: String) {
        let words = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        let command = words.first ?? ":"
        let args = Array(words.dropFirst())
        switch command {
        case ":help", ":h", ":?":
            write(Self.help)
        case ":resources":
            write(resourcesText())
        case ":scopes":
            write(scopesText())
        case ":trace":
            switch args.first {
            case "on": runtime.options.trace = true; write("trace on")
            case "off": runtime.options.trace = false; write("trace off")
            default: write("usage: :trace on|off")
            }
        case ":load":
            guard let path = args.first else {
                write("usage: :load FILE")
                return
            }
            load(path)
        case ":run":
            guard let name = args.first else {
                write("usage: :run PIPELINE [FILE]")
                return
            }
            guard let def = runtime.pipelines.pipelines[name] else {
                let known = runtime.pipelines.pipelineOrder.joined(separator: ", ")
                write("no pipeline named '\(name)' (registered: \(known.isEmpty ? "none" : known))")
                return
            }
            if let file = args.dropFirst().first {
                runPipeline(def, input: .path(file))
            } else {
                collecting = (def, [])
                write("type events, one JSON object per line; an empty line runs them")
            }
        case ":report":
            write(Report.text(runtime))
        case ":limits":
            write(limitsDescription())
        case ":quit", ":q", ":exit":
            write(quit())
        default:
            write("unknown command \(command) (:help lists them)")
        }
    }

    /// `:resources`: one line per open handle.
    func resourcesText() -> String {
        var lines: [String] = []
        for scope in [runtime.root, session] {
            for h in scope.openHandles where h.pointee.resource?.isHandle ?? true {
                let age = Double(sl_elapsed_ns(h.pointee.start)) / 1e9
                lines.append("\(runtime.describe(h))  \(scope.path)  \(Report.seconds(age))  \(runtime.describe(h.pointee.site))")
            }
        }
        return lines.isEmpty ? "no open resources" : lines.joined(separator: "\n")
    }

    /// `:limits`: what the session runs under, one line each: the state's memory limit,
    /// the limits of each registered pipeline's stages, then the sandbox and, under it,
    /// what each permission grants.
    public func limitsDescription() -> String {
        let options = runtime.options
        var lines = ["memory   " + (options.memoryLimit.map { "\(Report.bytes($0)) for the Lua state" } ?? "no limit (--memory-limit SIZE)")]
        let stages = runtime.pipelines.limitsSummary
        if stages.isEmpty {
            lines.append("stages   no limits (a stage's or pipeline's limits = { time = 0.5, instructions = 5e7, memory = \"64MB\" })")
        } else {
            lines += stages.map { "stage    \($0)" }
        }
        guard let permissions = options.permissions else {
            lines.append("sandbox  off: everything is allowed (--sandbox)")
            return lines.joined(separator: "\n")
        }
        lines.append("sandbox  on: what is not granted below is denied")
        lines += permissions.summary
        return lines.joined(separator: "\n")
    }

    /// `:scopes`: the tree with counts.
    func scopesText() -> String {
        "\(runtime.root.name) (\(runtime.root.openCount) open)\n  \(session.name) (\(session.openCount) open)"
    }

    private func load(_ path: String) {
        let L = runtime.L
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        let status = luaL_loadfilex(L, path, nil)
        guard status == LUA_OK else {
            fail(Lua.describe(L, -1))
            return
        }
        sl_repl_interrupt_install(L)
        defer { sl_repl_interrupt_uninstall() }
        do {
            try runtime.call(nargs: 0)
            let names = runtime.pipelines.pipelineOrder
            write("loaded \(path)" + (names.isEmpty ? "" : "; pipelines: \(names.joined(separator: ", "))"))
        } catch {
            fail(error.traceback.map { "\(error.message)\n\($0)" } ?? error.message)
        }
    }

    private func collectEvent(_ line: String) {
        guard var c = collecting else { return }
        if line.allSatisfy(\.isWhitespace) {
            collecting = nil
            let L = runtime.L
            lua_createtable(L, Int32(c.events.count), 0)
            let list = lua_gettop(L)
            var n: lua_Integer = 0
            for text in c.events {
                Lua.push(L, text)
                if runtime.json.decode(L, -1) {
                    sl_remove(L, -2)
                } else {
                    write("not a JSON object: \(text)")
                    lua_settop(L, list)
                    continue
                }
                n += 1
                lua_rawseti(L, list, n)
            }
            runPipeline(c.pipeline, input: .list(luaL_ref(L, Lua.registry)))
            return
        }
        c.events.append(line)
        collecting = c
    }

    private func runPipeline(_ def: PipelineDefinition, input: PipelineRun.Options.Input) {
        let L = runtime.L
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        var options = PipelineRun.Options()
        options.input = input
        options.output = .collect
        let run = PipelineRun(runtime, def, options: options)
        sl_repl_interrupt_install(L)
        let outcome = run.execute(L, parent: session)
        sl_repl_interrupt_uninstall()
        run.releaseReferences(L)
        if case .failed(let message) = outcome { fail(message) }
        // The events that came out, as JSON lines, then the report.
        run.pushReport(L)
        if Lua.rawField(L, -1, "output") == LUA_TTABLE {
            let codec = runtime.json
            let list = lua_gettop(L)
            let n = lua_rawlen(L, list)
            if n > 0 {
                for i in 1...n {
                    lua_rawgeti(L, list, lua_Integer(i))
                    if codec.encode(L, -1) { write(Lua.describe(L, -1)) }
                    lua_settop(L, list)
                }
            }
        }
        write(Report.pipelineText(run))
    }

    // MARK: - Completion

    /// Completions for the word ending the line: meta-commands, globals, table fields
    /// (`string.fo` → `string.format`).
    public func completions(for text: String) -> [String] {
        if text.hasPrefix(":") {
            return [":help", ":resources", ":scopes", ":trace", ":load", ":run", ":report", ":limits", ":quit"].filter { $0.hasPrefix(text) }
        }
        let L = runtime.L
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        var path = text.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        let last = path.removeLast()
        lua_rawgeti(L, Lua.registry, lua_Integer(LUA_RIDX_GLOBALS))
        for part in path {
            guard lua_type(L, -1) == LUA_TTABLE else { return [] }
            Lua.rawField(L, -1, part)
        }
        let prefix = path.isEmpty ? "" : path.joined(separator: ".") + "."
        var names = Set<String>()
        // The table's own keys, then those its __index table offers (string methods, handles).
        for _ in 0..<2 {
            guard lua_type(L, -1) == LUA_TTABLE else { break }
            lua_pushnil(L)
            while lua_next(L, -2) != 0 {
                if let key = Lua.string(L, -2), key.hasPrefix(last), !key.hasPrefix("__") { names.insert(prefix + key) }
                sl_pop(L, 1)
            }
            guard lua_getmetatable(L, -1) != 0 else { break }
            Lua.rawField(L, -1, "__index")
        }
        return names.sorted()
    }

    // MARK: - Ending

    /// Ends the session: releases everything, newest first, and says what was released.
    @discardableResult
    /// `error`, when given, ends the scopes as an error (transactions roll back, defers
    /// receive it): the session ends because something failed.
    public func quit(error: String? = nil) -> String {
        guard !finished else { return "" }
        finished = true
        let released = (session.openHandles + runtime.root.openHandles).reversed()
            .filter { $0.pointee.resource?.isHandle ?? true }
            .map { "released \(runtime.describe($0))" }
        let L = runtime.L
        let base = lua_gettop(L)
        var errIndex: Int32 = 0
        if let error {
            Lua.push(L, error)
            errIndex = lua_gettop(L)
        }
        let failures = runtime.endScope(session, L, error: errIndex)
        var lines = released
        let top = lua_gettop(L)
        for i in 0..<failures { lines.append("release error: \(Lua.describe(L, top - failures + 1 + i))") }
        lua_settop(L, base)
        for failure in runtime.releaseAll(error: error) { lines.append("release error: \(failure)") }
        runtime.close()
        return lines.isEmpty ? "nothing to release" : lines.joined(separator: "\n")
    }
}
