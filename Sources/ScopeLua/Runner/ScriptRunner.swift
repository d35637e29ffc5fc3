import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// What `scopelua run` was asked to do, as `lua.c` would see it.
public struct RunRequest: Sendable {
    /// Something to do before the script, in command-line order.
    public enum Action: Sendable, Equatable {
        /// `-e CHUNK`
        case execute(String)
        /// `-l MODULE`: `MODULE = require "MODULE"`
        case require(String)
    }

    /// The script path, `-` for stdin, or nil when only `-e` chunks run.
    public var script: String?
    /// Everything after the script: `arg[1]...` and the chunk's `...`.
    public var scriptArguments: [String] = []
    /// Everything before the script on the command line: `arg[-n]...arg[-1]`.
    public var interpreterArguments: [String] = []
    public var actions: [Action] = []
    /// Print the run report (resources, timers) to stderr at exit.
    public var report = false
    /// Seconds a stop (SIGINT / SIGTERM) may take before it is forced.
    public var grace: Double = 10
    /// `--check`: run the script's top level (where stages and pipelines are registered)
    /// and check the pipelines, then stop: no stage opens, no input is read.
    public var check = false

    /// Drive a registered pipeline over JSON-lines events after the script ran.
    public struct PipelineOptions: Sendable {
        /// A path, or `-` for stdin.
        public var input: String
        /// Which pipeline, when the script registered several.
        public var name: String?
        /// A path, `-` (the default) for stdout, or `none` to count events without writing them.
        public var output: String = "-"
        public var deadLetter: String?
        /// `--replay`: the input is a dead-letter file; its records' events go back into
        /// the stages that failed (see Replay.swift).
        public var replay = false
        /// `--follow`: follow the input file by its name as it grows (rotation,
        /// truncation, a file that appears later); only a stop ends the run. Not with
        /// stdin (`-`).
        public var follow = false
        /// `--checkpoint FILE`: resume after the last committed position, commit at every
        /// barrier (docs/ARCHITECTURE.md, "Barriers and checkpoints").
        public var checkpoint: String?
        /// `--checkpoint-every`: nil is the default (`CheckpointInterval.standard` with a
        /// checkpoint, else barriers only at the end).
        public var checkpointEvery: CheckpointInterval?
        /// `--checkpoint-reset`: forget the committed checkpoint and start over.
        public var checkpointReset = false
        /// `--workers N`: the stages run in N Lua states on N threads (1: in the main state).
        public var workers = 1
        /// `scopelua serve`: the lines come from this feed (the HTTP server), not `input`,
        /// which then only names it.
        package var ingest: (any IngestFeed)?
        /// `serve`, `run --metrics-listen`: where the run (each worker too) publishes what
        /// `/metrics` and `/resources` show.
        package var board: RunBoard?

        public init(input: String) {
            self.input = input
        }
    }

    public var pipeline: PipelineOptions?

    public init(script: String?) {
        self.script = script
    }
}

/// Runs scripts the way the stock `lua` command does, with every scope released before
/// the process reports an error or exits.
public enum ScriptRunner {
    /// Exit statuses (ARCHITECTURE / LUA-API: "The executable").
    public static let success: Int32 = 0
    public static let scriptError: Int32 = 1
    public static let usageError: Int32 = 2
    /// The reader of the pipeline's output went away (EPIPE): the run stopped
    /// gracefully and exits as a shell reports a process that SIGPIPE ended.
    public static let readerGone: Int32 = 128 + SIGPIPE
    /// The CPUs this process may run on (`--workers auto`).
    public static var usableCPUs: Int32 { sl_usable_cpus() }
    /// The longest grace period (seconds) `--grace` accepts.
    public static let maxGrace = Int(PipelineRun.maxGrace)

    /// Runs the request in a new runtime and returns the process exit status.
    public static func run(_ request: RunRequest, options: RuntimeOptions = RuntimeOptions()) -> Int32 {
        var options = options
        // --sandbox: `require` may load the modules next to the script (README, "Permissions").
        if var permissions = options.permissions, let script = request.script, script != "-" {
            permissions.allowModules(under: script.lastIndex(of: "/").map { i in i == script.startIndex ? "/" : String(script[..<i]) } ?? ".")
            options.permissions = permissions
        }
        // A script that cannot be read is a usage error (2), reported before any Lua runs.
        // It is opened once, here, and loaded from that descriptor: a script from a pipe
        // (`scopelua run <(...)`) loses nothing to the check.
        var scriptFD: Int32 = -1
        if let script = request.script, script != "-" {
            switch InputFile.open(script) {
            case .success(let fd): scriptFD = fd
            case .failure(let problem):
                options.diagnostics("scopelua: cannot open \(script): \(problem)")
                return usageError
            }
        }
        defer { if scriptFD >= 0 { close(scriptFD) } }
        // An output over the input is refused before the script runs (the run checks
        // again on the descriptors it opens).
        if let p = request.pipeline, let problem = outputOverInput(p) ?? unwritableOutput(p) ?? unresumableInput(p) {
            options.diagnostics("scopelua: \(problem)")
            return usageError
        }
        let rt = Runtime(options: options)
        defer { rt.close() }
        let L = rt.L
        setArgTable(L, request)
        // SIGINT / SIGTERM stop the run in every mode: the script gets the stop as an
        // error at its next instruction (a pipeline stops between events), so every
        // scope unwinds with it; then exit 130 / 143.
        sl_stop_install(L, request.grace)
        defer { sl_stop_uninstall() }
        if request.report { ExitBindings.reportAtExit(L) }

        var status = runActions(rt, request.actions)
        // With workers the script's bytes are kept: each worker loads them again.
        var scriptBytes: [UInt8]?
        if status == success, let script = request.script {
            if (request.pipeline?.workers ?? 1) > 1 {
                let read = readAll(script == "-" ? 0 : scriptFD)
                if scriptFD >= 0 { close(scriptFD) }
                scriptFD = -1
                switch read {
                case .success(let bytes): scriptBytes = bytes
                case .failure(let problem):
                    rt.diagnose("scopelua: cannot read \(script == "-" ? "stdin" : script): \(problem)")
                    return usageError
                }
            }
            status = runChunk(rt, name: script, arguments: request.scriptArguments) { L in
                if let scriptBytes {
                    return scriptBytes.withUnsafeBufferPointer { b in
                        b.withMemoryRebound(to: CChar.self) { sl_loadbytes(L, $0.baseAddress, $0.count, script == "-" ? "stdin" : script) }
                    }
                }
                if script == "-" { return luaL_loadfilex(L, nil, nil) }
                let fd = scriptFD
                scriptFD = -1  // sl_loadfd closes it
                return sl_loadfd(L, fd, script)
            }
        }
        if status == success, request.check {
            return checkPipelines(rt, request.pipeline)
        }
        if status == success, request.pipeline == nil, rt.pipelineRuns == 0 {
            // Runner options mistyped after the script go to its `arg`: say what did not run.
            let roots = rt.pipelines.outermostPipelines
            if !roots.isEmpty {
                let names = roots.map { "'\($0)'" }.joined(separator: ", ")
                rt.diagnose("scopelua: pipeline\(roots.count == 1 ? "" : "s") \(names) registered but no --input given: nothing ran")
            }
        }
        var forcedReported = false
        // The run holds no descriptor after it ends (--report says so): counted once the
        // script is loaded (its own descriptor closed) and the stop machinery set up.
        let descriptorsAtStart = openDescriptorCount()
        if status == success, let pipelineOptions = request.pipeline {
            let factory = pipelineOptions.workers > 1 ? workerFactory(request, scriptBytes: scriptBytes, options: rt.options) : nil
            status = runPipeline(rt, pipelineOptions, report: request.report, workers: factory)
            forcedReported = sl_stop_forced() != 0
        }
        let stop = sl_stop_signal()
        if status == success || stop != 0 && status == stopped(stop) {
            // Everything still open is released now; a failing release fails the run. A
            // script or pipeline that ended normally (a graceful stop of a pipeline is
            // one) releases without error; a forced stop releases with its error.
            var forcedError: String?
            if sl_stop_forced() != 0 {
                sl_stop_pusherror(L)
                forcedError = Lua.string(L, -1)
                sl_pop(L, 1)
            }
            let failures = rt.releaseAll(error: forcedError)
            if let first = failures.first {
                rt.diagnose("scopelua: " + ([first] + failures.dropFirst().map { "\trelease error: \($0)" }).joined(separator: "\n"))
                if status == success { status = scriptError }
            }
        }
        if stop != 0, status != usageError {
            if sl_stop_forced() != 0, !forcedReported {
                rt.diagnose("scopelua: stop forced: everything still open was released")
            }
            status = stopped(stop)
        }
        if request.report {
            rt.diagnose(Report.text(rt))
            // Whatever ran (workers included), the process holds what it held before.
            rt.diagnose("  descriptors open \(descriptorsAtStart) before the run, \(openDescriptorCount()) after")
        }
        return status
    }

    /// Exit statuses after a graceful stop: 128 + the signal, as shells report it.
    public static func stopped(_ signal: Int32) -> Int32 { 128 + signal }

    /// The pipeline `--input` would drive: the one named by --pipeline, or the only one
    /// no other pipeline contains. Reports why not and returns nil.
    static func selectPipeline(_ rt: Runtime, named name: String?) -> PipelineDefinition? {
        let registry = rt.pipelines
        if let name {
            guard let found = registry.pipelines[name] else {
                let known = registry.pipelineOrder.isEmpty ? "none" : registry.pipelineOrder.joined(separator: ", ")
                rt.diagnose("scopelua: no pipeline named '\(name)' (registered: \(known))")
                return nil
            }
            return found
        }
        let roots = registry.outermostPipelines
        guard roots.count == 1, let only = registry.pipelines[roots[0]] else {
            if registry.pipelineOrder.isEmpty {
                rt.diagnose("scopelua: --input given, but the script registered no pipeline")
            } else {
                rt.diagnose("scopelua: the script registered several pipelines (\(roots.joined(separator: ", "))): choose one with --pipeline NAME")
            }
            return nil
        }
        return only
    }

    /// `--check`: the script ran its top level without error (stages and pipelines are
    /// checked as they are registered); with --input, the pipeline to drive must be
    /// found. Says what it found on stderr; nothing is opened.
    static func checkPipelines(_ rt: Runtime, _ p: RunRequest.PipelineOptions?) -> Int32 {
        if let p, selectPipeline(rt, named: p.name) == nil { return scriptError }
        let names = rt.pipelines.pipelineOrder
        let stages = rt.pipelines.stages.count
        let what = names.isEmpty ? "no pipelines" : "pipeline\(names.count == 1 ? "" : "s") \(names.joined(separator: ", "))"
        rt.diagnose("scopelua: check passed: \(what), \(stages) stage\(stages == 1 ? "" : "s")")
        return success
    }

    /// Why `--output` or `--dead-letter` cannot be written (checked before the script runs,
    /// so a typo in a path is a usage error, not a failure after the stages opened).
    static func unwritableOutput(_ p: RunRequest.PipelineOptions) -> String? {
        var targets: [(String, String)] = []
        if p.output != "-", p.output != "none", !RedisStreamURL.isStream(p.output) { targets.append(("output", p.output)) }
        if let d = p.deadLetter { targets.append(("dead-letter file", d)) }
        for (what, path) in targets {
            var st = stat()
            if stat(path, &st) == 0 {
                if (st.st_mode & S_IFMT) == S_IFDIR { return "cannot write \(what) \(path): Is a directory" }
                if access(path, W_OK) != 0 { return "cannot write \(what) \(path): \(String(cString: strerror(errno)))" }
                continue
            }
            let slash = path.lastIndex(of: "/")
            let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
            if access(directory, W_OK | X_OK) != 0 {
                return "cannot write \(what) \(path): \(String(cString: strerror(errno))) (in directory \(directory))"
            }
        }
        return nil
    }

    /// Runs the selected pipeline over the input; prints its report when asked.
    static func runPipeline(_ rt: Runtime, _ p: RunRequest.PipelineOptions, report: Bool, workers: WorkerFactory? = nil) -> Int32 {
        guard let definition = selectPipeline(rt, named: p.name) else { return usageError }
        // An input that cannot be read is a usage error, like an unreadable script. It is
        // opened once: the reader gets this descriptor (a FIFO or a pipe loses nothing).
        var options = PipelineRun.Options()
        var inputFD: Int32 = -1
        defer { if inputFD >= 0 { close(inputFD) } }
        if let feed = p.ingest {
            options.input = .ingest(feed)
        } else if RedisStreamURL.isStream(p.input) {
            options.input = .stream(p.input)
        } else if p.follow {
            // A file followed by its name may not exist yet (the run waits for it);
            // anything but a regular file is refused.
            guard p.input != "-" else {
                rt.diagnose("scopelua: --follow follows a file by its name: stdin ('-') is read until its writer closes it")
                return usageError
            }
            switch FollowedFile.openBeforeRun(p.input) {
            case .success(let fd):
                inputFD = fd
                options.input = .descriptor(fd, name: p.input)
                options.follow = true
            case .failure(let problem):
                rt.diagnose("scopelua: cannot follow input \(p.input): \(problem)")
                return usageError
            }
        } else if p.input == "-" {
            options.input = .stdin
        } else {
            switch InputFile.open(p.input) {
            case .success(let fd):
                inputFD = fd
                options.input = .descriptor(fd, name: p.input)
            case .failure(let problem):
                rt.diagnose("scopelua: cannot open input \(p.input): \(problem)")
                return usageError
            }
        }
        switch p.output {
        case "-": options.output = .stdout
        case "none": options.output = .discard
        case let url where RedisStreamURL.isStream(url): options.output = .stream(url)
        default: options.output = .path(p.output)
        }
        options.deadLetter = p.deadLetter
        options.replay = p.replay
        options.checkpoint = p.checkpoint
        options.checkpointEvery = p.checkpointEvery
        options.checkpointReset = p.checkpointReset
        options.workers = workers != nil ? p.workers : 1
        options.workerFactory = workers
        options.board = p.board
        options.progress = sl_stderr_isatty() != 0
        // From here on a write to a pipe nobody reads fails with EPIPE (the run stops
        // gracefully) instead of killing the process: also for what is left in stdout's
        // buffer when the process exits.
        _ = sl_sigpipe_ignore()
        options.commandLine = true
        let run = PipelineRun(rt, definition, options: options)
        let outcome = run.execute(rt.L, parent: rt.root)
        run.releaseReferences(rt.L)
        if sl_stop_forced() != 0 {
            let stage = run.forcedStage.map { " while stage '\($0)' was still running" } ?? ""
            rt.diagnose("scopelua: stop forced\(stage): everything still open was released")
        }
        if report {
            if case .refused = outcome {} else { rt.diagnose(Report.pipelineText(run)) }  // nothing ran
        }
        switch outcome {
        case .finished:
            return success
        case .stopped(let signal):
            return stopped(signal)
        case .failed(let message):
            rt.diagnose("scopelua: \(message)")
            return scriptError
        case .readerGone(let message):
            rt.diagnose("scopelua: stopped: \(message) (the reader went away)")
            return readerGone
        case .refused(let message):
            rt.diagnose("scopelua: \(message)")
            return usageError
        }
    }

    /// How each worker gets its state: the script's actions (-e, -l) and its bytes run
    /// again there, with the same `arg`, and the pipeline of the same name is taken.
    static func workerFactory(_ request: RunRequest, scriptBytes: [UInt8]?, options: RuntimeOptions) -> WorkerFactory {
        let name = request.script == "-" ? "stdin" : request.script
        return WorkerFactory { number, diagnostics in
            var o = options
            o.diagnostics = diagnostics
            let rt = Runtime(options: o)
            rt.board = request.pipeline?.board  // the worker's run publishes there too
            setArgTable(rt.L, request)
            // The events go to stdout: what the worker's copy of the script prints while it
            // loads goes to stderr (the main state printed it to stdout already, before
            // the events), each line in one write (workers load at the same time).
            let quiet = request.pipeline?.output == "-"
            if quiet {
                Bindings.getGlobal(rt.L, "print")
                let shim = "local t, s = tostring, select return function(...) local n, o = s('#', ...), {} for i = 1, n do o[i] = t((s(i, ...))) end io.stderr:write(table.concat(o, '\\t') .. '\\n') end"
                if shim.withCString({ sl_loadbuffer(rt.L, $0, strlen($0), "=(worker print)") }) == LUA_OK, sl_pcall(rt.L, 0, 1, 0) == LUA_OK {
                    lua_pushvalue(rt.L, -1)
                    Lua.setRegistryField(rt.L, "scopelua.print.worker")
                    Bindings.setGlobal(rt.L, "print")
                } else {
                    sl_pop(rt.L, 1)
                }
            }
            var status = runActions(rt, request.actions)
            if status == success, let name, let scriptBytes {
                status = runChunk(rt, name: name, arguments: request.scriptArguments) { L in
                    scriptBytes.withUnsafeBufferPointer { b in
                        b.withMemoryRebound(to: CChar.self) { sl_loadbytes(L, $0.baseAddress, $0.count, name) }
                    }
                }
            }
            if quiet {
                // Lua's own print back (the run puts the stderr one in place again while
                // it runs), unless the script assigned another.
                Bindings.getGlobal(rt.L, "print")
                Lua.getRegistryField(rt.L, "scopelua.print.worker")
                let untouched = lua_rawequal(rt.L, -1, -2) != 0
                sl_pop(rt.L, 2)
                if untouched { Bindings.setGlobal(rt.L, "print") } else { sl_pop(rt.L, 1) }
            }
            guard status == success else {
                rt.close()
                return .failed("its copy of the script failed (the error is above)")
            }
            guard let definition = selectPipeline(rt, named: request.pipeline?.name) else {
                rt.close()
                return .failed("the script registered no pipeline to run")
            }
            return .ready(rt, definition)
        }
    }

    /// How many descriptors this process has open (-1 if /proc cannot say).
    static func openDescriptorCount() -> Int {
        guard let dir = opendir("/proc/self/fd") else { return -1 }
        var n = 0
        while let entry = readdir(dir) {
            let name = entry.pointee.d_name.0
            if name != 46 { n += 1 }  // not "." or ".."
        }
        closedir(dir)
        return n - 1  // the directory's own descriptor
    }

    /// Everything readable from `fd` (not closed here).
    static func readAll(_ fd: Int32) -> Result<[UInt8], InputFile.Problem> {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 { bytes += chunk[0..<n] } else if n == 0 { return .success(bytes) } else if errno != EINTR {
                return .failure(InputFile.Problem(errno))
            }
        }
    }

    /// `--checkpoint` over stdin: what was read from a stream cannot be read again, so
    /// the run could never resume (a pipe given by name is refused when it is opened).
    static func unresumableInput(_ p: RunRequest.PipelineOptions) -> String? {
        if RedisStreamURL.isStream(p.input) {
            if let checkpoint = p.checkpoint {
                return "--checkpoint \(checkpoint): a Redis stream input needs no checkpoint file: the consumer group's pending list is its checkpoint (entries are acknowledged after each barrier, --checkpoint-every)"
            }
            if p.follow { return "--follow follows a file: a Redis stream input is read until SIGINT/SIGTERM (or its idle_exit)" }
            if p.replay { return "--replay reads a dead-letter file: give the file as --input" }
            if p.workers > 1 {
                return "--workers with a Redis stream input: run several scopelua processes as consumers of the group instead (each gets its own entries)"
            }
            return nil
        }
        guard let checkpoint = p.checkpoint, p.input == "-" else { return nil }
        return "--checkpoint \(checkpoint) needs an input file: stdin is a stream, which cannot be read again after a crash (give --input FILE)"
    }

    /// Why `--output` or `--dead-letter` cannot be used with this input: it names the
    /// input file (same device and inode, through any link), or nil.
    static func outputOverInput(_ p: RunRequest.PipelineOptions) -> String? {
        let identity = { (path: String) in InputFile.identity(atPath: path) }
        let input = p.input == "-" ? InputFile.identity(0) : identity(p.input)
        guard let input else { return nil }
        let name = p.input == "-" ? "stdin" : p.input
        if p.output != "-", p.output != "none", identity(p.output) == input {
            return "--output \(p.output) is the input file \(name): it would be truncated before it is read"
        }
        if let dl = p.deadLetter, identity(dl) == input {
            return "--dead-letter \(dl) is the input file \(name): it would be truncated before it is read"
        }
        return nil
    }

    /// `arg` as lua.c builds it: the script at 0, interpreter arguments below, script
    /// arguments above.
    static func setArgTable(_ L: LuaState, _ request: RunRequest) {
        let before = request.interpreterArguments
        lua_createtable(L, Int32(clamping: request.scriptArguments.count), Int32(clamping: before.count + 1))
        for (i, a) in before.enumerated() {
            Lua.push(L, a)
            lua_rawseti(L, -2, lua_Integer(i - before.count))
        }
        if let script = request.script {
            Lua.push(L, script)
            lua_rawseti(L, -2, 0)
        }
        for (i, a) in request.scriptArguments.enumerated() {
            Lua.push(L, a)
            lua_rawseti(L, -2, lua_Integer(i + 1))
        }
        Bindings.setGlobal(L, "arg")
    }

    /// Loads a chunk with `load` (which pushes it or an error message) and calls it with
    /// `arguments` in the root scope. An error releases every scope first, then is
    /// reported with its traceback. Returns the exit status.
    static func runChunk(_ rt: Runtime, name: String, arguments: [String] = [],
                         load: (LuaState) -> Int32) -> Int32 {
        let L = rt.L
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        let loaded = load(L)
        if loaded != LUA_OK {
            let message = Lua.describe(L, -1)
            if loaded == LUA_ERRFILE {
                rt.diagnose("scopelua: \(message)")
                return usageError
            }
            rt.diagnose("scopelua: \(message)")
            return scriptError
        }
        for a in arguments { Lua.push(L, a) }
        return finishCall(rt, nargs: Int32(clamping: arguments.count))
    }

    /// `-e` and `-l` in command-line order, until one fails. Returns the exit status.
    static func runActions(_ rt: Runtime, _ actions: [RunRequest.Action]) -> Int32 {
        var status = success
        for action in actions where status == success {
            switch action {
            case .execute(let chunk):
                status = runChunk(rt, name: "=(command line)") { L in
                    chunk.withCString { sl_loadbuffer(L, $0, strlen($0), "=(command line)") }
                }
            case .require(let module):
                status = runRequire(rt, module)
            }
        }
        return status
    }

    /// `-l MODULE`: `MODULE = require "MODULE"`.
    static func runRequire(_ rt: Runtime, _ module: String) -> Int32 {
        let L = rt.L
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        Bindings.getGlobal(L, "require")
        Lua.push(L, module)
        lua_pushcclosure(L, sl_capturetraceback, 0)
        lua_rotate(L, base + 1, 1)
        if sl_pcall(L, 1, 1, base + 1) != LUA_OK {
            return reportError(rt, errorIndex: lua_gettop(L))
        }
        Bindings.setGlobal(L, module)
        return success
    }

    /// Calls the function below `nargs` arguments with a traceback handler.
    private static func finishCall(_ rt: Runtime, nargs: Int32) -> Int32 {
        let L = rt.L
        let fn = lua_gettop(L) - nargs
        lua_pushcclosure(L, sl_capturetraceback, 0)
        lua_rotate(L, fn, 1)
        if sl_pcall(L, nargs, 0, fn) != LUA_OK {
            return reportError(rt, errorIndex: lua_gettop(L))
        }
        return success
    }

    /// The script failed with the error at `errorIndex`: release every scope with that
    /// error (rule 4: release errors are attached), then print message and traceback.
    static func reportError(_ rt: Runtime, errorIndex: Int32) -> Int32 {
        let L = rt.L
        let traceback = rt.takeTraceback(L, errorIndex)  // before the releases run Lua code
        rt.current = rt.root
        let failures = rt.endScope(rt.root, L, error: errorIndex)
        _ = rt.mergeErrors(L, primary: errorIndex, failures: failures)
        let error = rt.takeError(L, traceback: traceback)
        var text = "scopelua: \(error.message)"
        if let tb = error.traceback { text += "\n" + tb }
        rt.diagnose(text)
        return scriptError
    }
}
