import ArgumentParser
import ScopeLua
import ScopeLuaServe

#if canImport(Glibc)
import Glibc
#endif

/// `scopelua`: run Lua pipelines whose resources the runtime owns.
struct ScopeluaCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scopelua",
        abstract: "Run Lua 5.4 scripts and event pipelines with runtime-owned resources.",
        discussion: """
            Every resource a script acquires (files, timers, SQLite connections, ...) is owned \
            by a tree of scopes in the runtime and released exactly once, newest first, however \
            the script ends: normal exit, break, an error, an abandoned coroutine.

            `scopelua` alone on a terminal starts the REPL; `scopelua job.lua [args]` runs \
            the script as `scopelua run job.lua [args]` does (as `lua job.lua` would).

            Exit status: 0 success; 1 script error, aborted pipeline or failed write of its \
            output; 2 usage error (bad option, unreadable script or input, --output or \
            --dead-letter naming the input file, a checkpoint that cannot be resumed); 130/143 after a stop by \
            SIGINT/SIGTERM; 141 when the reader of the pipeline's output went away (EPIPE: the \
            run stopped gracefully, like `cmd | head`).
            """,
        version: ScopeluaVersion.description,
        subcommands: [Run.self, ReplCommand.self, Serve.self]
    )
}

/// `scopelua run`: like the `lua` command, plus resource tracing and a report.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a Lua script (like `lua script.lua args...`).",
        discussion: """
            The script sees `arg` and `...` exactly as under `lua`, except that the runner \
            options below may also follow the script name (they are taken out of `arg`; \
            everything after `--` goes to the script untouched). `-e` and `-l` run before the \
            script, in the order given. An uncaught error releases every scope (files are \
            complete on disk), then prints the message and a traceback to stderr and exits 1.

            With --input, the script's pipeline then runs over JSON-lines events (one JSON \
            object per line); events leaving the last stage are written as JSON lines to \
            --output. Lines that are not JSON objects are rejected (with their line number) \
            to --dead-letter or stderr, and the run goes on. What is written to --output \
            and --dead-letter reaches its reader (a file, a pipe) in whole lines, at once \
            when the input has nothing more to read and within about 100 ms while events \
            flow.

            With --follow, the end of the --input file is not the end of the input: the \
            file is followed by its name as it grows (rotation, truncation, a file that \
            does not exist yet; notes on stderr say what happened), timers keep firing, \
            and SIGINT/SIGTERM end the run gracefully (stages close, report, exit \
            130/143).

            With --replay, --input is a dead-letter file an earlier run wrote: each record's \
            event goes back into the stage that failed, by name (the stages before it already \
            ran and do not run again), and a rejected line is read again from its raw text \
            (through the whole pipeline, or rejected again). Fix the bug, then replay: \
            `scopelua run job.lua --input dead.jsonl --replay --dead-letter dead2.jsonl`. An \
            event that fails again is dead-lettered with "attempt": 2 (one more than the \
            record's) and its original line; a line that is no dead-letter record, or names \
            a stage the pipeline no longer has, is rejected with its line number and why. \
            The report counts the replayed records.

            SIGINT/SIGTERM stop the run in every mode: the script gets the error \
            "stopped by SIGTERM" at its next instruction, so its scopes unwind with it (a \
            pipeline stops between events: input stops, the current event finishes, stages \
            close, the report is printed); exit 130/143. A second signal or --grace running \
            out forces the stop: every Lua instruction raises, nothing can catch it, what the \
            runtime owns is released; one more grace period later a run stuck outside Lua \
            flushes its output and exits at once.

            os.exit releases every scope before leaving (as an error for a failure status).

            A write to --output or --dead-letter that fails (a full disk, /dev/full) stops \
            the run gracefully (no more input, stages close, report) and exits 1 naming the \
            file and the reason. When the output's reader goes away (`... | head -2`) the run \
            stops the same way and exits 141, as a shell reports SIGPIPE. An event whose \
            output cannot be encoded as JSON (infinity, a function) is an error of the last \
            stage: its on_error policy applies. --output and --dead-letter may not name the \
            input file (exit 2, nothing truncated).

            Stages may define flush(ctx, why): it runs at every barrier, in pipeline order, \
            before any close: at the end of the input, on a graceful stop, and every \
            --checkpoint-every. With --checkpoint FILE each barrier then syncs --output and \
            --dead-letter and commits the input position, their lengths and the counts to FILE \
            (SQLite); the same command run again resumes after the last committed line, with \
            those files truncated back (exactly once), while stdout and pipes get the lines after \
            it again (at-least-once). A checkpoint that does not match the input file (another \
            file, shorter, rewritten), the pipeline or the outputs is refused (exit 2); \
            --checkpoint-reset starts over.

            Exit status: 0 success; 1 script error, aborted pipeline or failed write of its \
            output; 2 usage error, or a checkpoint that cannot be resumed; 130/143 after a stop \
            by SIGINT/SIGTERM; 141 when the reader of the output went away.

            Examples:
              scopelua run scripts/tour.lua
              scopelua run --trace --report job.lua input.txt
              scopelua run scripts/analytics.lua --input events.jsonl --output out.jsonl --report
              scopelua run job.lua --input dead.jsonl --replay --output out.jsonl --dead-letter dead2.jsonl
              scopelua run scripts/analytics.lua --input events.jsonl --output out.jsonl --checkpoint state.db
              scopelua run -e 'print(timer.now())'
            """
    )

    @Option(name: .customShort("e"), help: ArgumentHelp("Execute the Lua chunk CHUNK before the script.", valueName: "CHUNK"))
    var execute: [String] = []

    @Option(name: .customShort("l"), help: ArgumentHelp("Require MODULE before the script and set global MODULE.", valueName: "MODULE"))
    var library: [String] = []

    @Flag(help: "Print every acquire and release (id, kind, label, scope, site) to stderr.")
    var trace = false

    @Flag(help: "Print the resource ledger and timer statistics to stderr at exit.")
    var report = false

    @Option(help: ArgumentHelp("Run the script's pipeline over JSON-lines events from FILE ('-': stdin).", valueName: "FILE"))
    var input: String?

    @Option(help: ArgumentHelp("Which registered pipeline --input drives (needed when there are several).", valueName: "NAME"))
    var pipeline: String?

    @Option(help: ArgumentHelp("Where events leaving the last stage go, as JSON lines ('-': stdout, the default; 'none': count them, write nothing).", valueName: "FILE"))
    var output: String?

    @Option(name: .customLong("dead-letter"), help: ArgumentHelp("Write dead letters and rejected input lines to FILE as JSON lines (default: stderr).", valueName: "FILE"))
    var deadLetter: String?

    @Flag(help: "Treat --input as a dead-letter file: put each record's event back into the stage that failed (the stages before it do not run again); re-read rejected lines from their raw text.")
    var replay = false
    @Flag(help: "Keep reading the --input file as it grows, like `tail -F`, until SIGINT/SIGTERM: a rotated file (the path names a new file) is read to its end, then the new one from its start; a truncated file is read again from its start; a file that does not exist yet is waited for. Not with stdin ('-').")
    var follow = false

    @Option(help: ArgumentHelp("Keep a checkpoint in the SQLite file FILE: a rerun of the same command resumes after the last committed input line, with --output and --dead-letter truncated back to their committed lengths. The input must be a file (not stdin or a pipe).", valueName: "FILE"))
    var checkpoint: String?

    @Option(name: .customLong("checkpoint-every"), help: ArgumentHelp("How often a barrier runs (each stage's flush, the output synced, the checkpoint committed): events (5000), seconds (2s, 500ms) or both, whichever comes first (5000,2s). Default with --checkpoint: 10000,5s; without it, barriers run only at the end (and on a stop) unless this is given.", valueName: "N|Ns"))
    var checkpointEvery: String?

    @Flag(name: .customLong("checkpoint-reset"), help: "Forget what --checkpoint FILE committed and start over (the output is written from the start).")
    var checkpointReset = false

    @Option(help: ArgumentHelp("Run the stages in N workers, each its own Lua state on its own thread ('auto': one per core; default 1: in the main state). Each worker loads the script and opens its own stages; lines go to workers in blocks of 256 (or by the pipeline's partition_by key); the output keeps input order unless the pipeline says ordered = false.", valueName: "N|auto"))
    var workers: String?

    @Option(name: .customLong("metrics-listen"), help: ArgumentHelp("Serve GET /metrics (Prometheus text), /resources (the open handles, JSON) and /healthz at HOST:PORT while the pipeline runs (port 0: one the system picks; a line on stderr says which). Needs --input.", valueName: "HOST:PORT"))
    var metricsListen: String?

    @Option(name: .customLong("memory-limit"), help: ArgumentHelp("The most memory Lua code may hold in each Lua state (each worker's, with --workers): bytes, or with a unit, 64MB, 512MiB, 2G (units of 1024). Beyond it an allocation fails as Lua's 'not enough memory' in the script; with --workers the worker whose state ran out is replaced by a fresh one, and the event it was processing follows its stage's on_error.", valueName: "SIZE"))
    var memoryLimit: String?

    @OptionGroup(title: "Permissions")
    var permissionOptions: PermissionOptions

    @Flag(help: "Run the script's top level (where stages and pipelines are registered) and check its pipelines, then stop: no stage opens, no input is read. Exit 0 or 1.")
    var check = false

    @Option(help: ArgumentHelp("Seconds a stop (SIGINT/SIGTERM) may take before it is forced (and releases then get as long again); more than 0, at most 86400.", valueName: "SECONDS"))
    var grace: Double = 10

    @Argument(help: ArgumentHelp("The Lua script to run; '-' reads it from stdin.", valueName: "script"))
    var script: String?

    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("Arguments for the script (arg[1], arg[2], ... and `...`).", valueName: "args"))
    var scriptArguments: [String] = []

    func validate() throws {
        if script == nil && execute.isEmpty && library.isEmpty {
            throw ValidationError("missing script (or -e CHUNK / -l MODULE)")
        }
        try Self.checkGrace(grace, text: String(grace))
    }

    /// The grace period is a number of seconds in (0, 86400]: NaN, infinity, zero, a
    /// negative number or more than a day is a usage error (never a trap later).
    static func checkGrace(_ grace: Double, text: String) throws {
        let limit = ScriptRunner.maxGrace
        guard grace > 0, grace <= Double(limit) else {
            throw ValidationError("--grace must be a number of seconds greater than 0 and at most \(limit) (got '\(text)')")
        }
    }

    /// `--checkpoint-every`: `5000`, `2s`, `500ms` or `5000,2s`, in range; anything else
    /// is a usage error naming the forms allowed.
    static func checkpointInterval(_ text: String) throws -> CheckpointInterval {
        guard let interval = CheckpointInterval.parse(text) else {
            throw ValidationError("--checkpoint-every must be \(CheckpointInterval.forms) (got '\(text)')")
        }
        return interval
    }

    /// `--memory-limit`: bytes, or a number with K, M, G (KB, MB, GB, KiB, MiB, GiB: all
    /// powers of 1024), at least 1 MiB (a state needs some to start).
    static func size(_ text: String) throws -> Int {
        guard let bytes = Report.parseBytes(text), bytes >= 1 << 20 else {
            throw ValidationError("--memory-limit must be a size of at least 1MB: bytes, or a number with KB, MB or GB (got '\(text)')")
        }
        return bytes
    }

    /// The most workers a run may have (a forced stop reaches 64 states: the main one and
    /// 63 workers, signals.c).
    static let maxWorkers = 63

    /// `--workers`: a count from 1 to `maxWorkers`, or `auto` (the cores this process
    /// may run on).
    static func workerCount(_ text: String) throws -> Int {
        if text == "auto" {
            return min(max(1, Int(ScriptRunner.usableCPUs)), maxWorkers)
        }
        guard let n = Int(text), n >= 1, n <= maxWorkers else {
            throw ValidationError("--workers must be a number from 1 to \(maxWorkers), or 'auto' for one per core (got '\(text)')")
        }
        return n
    }

    /// Runner options may also follow the script (`scopelua run p.lua --input x`); they
    /// are taken out of the script's arguments. `--` passes everything after it verbatim.
    static let runnerOptions: [String] = ["--input", "--pipeline", "--output", "--dead-letter", "--replay", "--follow", "--grace", "--report", "--trace", "--check",
                                          "--checkpoint", "--checkpoint-every", "--checkpoint-reset", "--workers", "--memory-limit", "--metrics-listen"]
                                          + PermissionOptions.names

    /// The runner option `option` was probably meant to be (`--inptu`: `--input`), if any:
    /// at most two edits away, the closest first.
    static func suggestion(for option: String) -> String? {
        guard option.hasPrefix("--"), !runnerOptions.contains(option) else { return nil }
        let scored = runnerOptions.map { ($0, editDistance(option, $0)) }.filter { $0.1 <= 2 }
        return scored.min { $0.1 < $1.1 }?.0
    }

    /// Levenshtein distance (options are short).
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var row = Array(0...b.count)
        for i in 1...max(1, a.count) where !a.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in stride(from: 1, through: b.count, by: 1) {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return a.isEmpty ? b.count : row[b.count]
    }

    /// `--input` may be given once, before or after the script.
    func checkSingleInput(_ raw: [String]) throws {
        let given = raw.filter { $0 == "--input" || $0.hasPrefix("--input=") }.count
        if given > 1 { throw ValidationError("--input given \(given) times: a run reads one input") }
    }

    mutating func takeRunnerOptions() throws {
        var rest: [String] = []
        var i = 0
        let args = scriptArguments
        func value(_ name: String) throws -> String {
            guard i + 1 < args.count else { throw ValidationError("missing value for '\(name)'") }
            i += 1
            return args[i]
        }
        // Options given twice: ArgumentParser keeps the last silently; count them among
        // what precedes the script and what follows it (up to `--`).
        let beforeScript = Array(CommandLine.arguments.dropFirst().prefix(while: { $0 != script }))
        let afterScript = Array(args.prefix(while: { $0 != "--" }))
        try checkSingleInput(beforeScript + afterScript)
        while i < args.count {
            let a = args[i]
            let (name, inline): (String, String?) = {
                if let eq = a.firstIndex(of: "="), a.hasPrefix("--") { return (String(a[..<eq]), String(a[a.index(after: eq)...])) }
                return (a, nil)
            }()
            switch name {
            case "--":
                rest += args[(i + 1)...]
                i = args.count
                continue
            case "--input": input = try inline ?? value(name)
            case "--pipeline": pipeline = try inline ?? value(name)
            case "--output": output = try inline ?? value(name)
            case "--dead-letter": deadLetter = try inline ?? value(name)
            case "--checkpoint": checkpoint = try inline ?? value(name)
            case "--checkpoint-every": checkpointEvery = try inline ?? value(name)
            case "--checkpoint-reset": checkpointReset = true
            case "--workers": workers = try inline ?? value(name)
            case "--memory-limit": memoryLimit = try inline ?? value(name)
            case "--metrics-listen": metricsListen = try inline ?? value(name)
            case "--grace":
                let text = try inline ?? value(name)
                guard let g = Double(text) else {
                    throw ValidationError("--grace must be a number of seconds greater than 0 and at most \(ScriptRunner.maxGrace) (got '\(text)')")
                }
                try Self.checkGrace(g, text: text)
                grace = g
            case "--follow": follow = true
            case "--report": report = true
            case "--trace": trace = true
            case "--check": check = true
            case "--replay": replay = true
            case _ where PermissionOptions.names.contains(name):
                _ = try permissionOptions.take(name) { try inline ?? value(name) }
            default:
                if let meant = Self.suggestion(for: name) {
                    StandardError.write(line: "scopelua: note: '\(a)' goes to the script (arg[\(rest.count + 1)]); did you mean '\(meant)'?")
                }
                rest.append(a)
            }
            i += 1
        }
        scriptArguments = rest
    }

    mutating func run() throws {
        try takeRunnerOptions()
        if input == nil, pipeline != nil || output != nil || deadLetter != nil {
            throw ValidationError("--pipeline, --output and --dead-letter need --input FILE")
        }
        if input == nil, replay {
            throw ValidationError("--replay needs --input FILE (the dead-letter file to replay)")
        }
        if input == nil, follow {
            throw ValidationError("--follow needs --input FILE (the file to follow)")
        }
        if follow, input == "-" {
            throw ValidationError("--follow follows a file by its name: stdin ('-') is read until its writer closes it (a pipe streams without --follow)")
        }
        if input == nil, checkpoint != nil || checkpointEvery != nil || checkpointReset {
            throw ValidationError("--checkpoint, --checkpoint-every and --checkpoint-reset need --input FILE")
        }
        if input == nil, metricsListen != nil {
            throw ValidationError("--metrics-listen needs --input FILE (it watches the pipeline's run)")
        }
        let metricsAddress = try metricsListen.map { text in
            try Serve.address(text, option: "--metrics-listen")
        }
        if checkpointReset, checkpoint == nil {
            throw ValidationError("--checkpoint-reset needs --checkpoint FILE (the checkpoint to start over)")
        }
        let every = try checkpointEvery.map(Self.checkpointInterval)
        let workerCount = try workers.map(Self.workerCount) ?? 1
        if workerCount > 1, input == nil {
            throw ValidationError("--workers needs --input FILE (the workers run the pipeline's stages over it)")
        }
        if workerCount > 1, replay {
            throw ValidationError("--workers cannot be used with --replay (replay runs in one state; drop --workers)")
        }
        var request = RunRequest(script: script)
        if let input {
            var p = RunRequest.PipelineOptions(input: input)
            p.name = pipeline
            p.output = output ?? "-"
            p.deadLetter = deadLetter
            p.replay = replay
            p.follow = follow
            p.checkpoint = checkpoint
            p.checkpointEvery = every
            p.checkpointReset = checkpointReset
            p.workers = workerCount
            request.pipeline = p
        }
        request.grace = grace
        request.check = check
        request.scriptArguments = scriptArguments
        request.report = report
        let raw = CommandLine.arguments
        // `arg[-n]...arg[-1]`: what precedes the script on the command line, as lua.c does.
        let scriptIndex = script == nil ? raw.count : raw.count - scriptArguments.count - 1
        request.interpreterArguments = Array(raw[..<max(0, min(scriptIndex, raw.count))])
        request.actions = Self.actionsInOrder(Array(request.interpreterArguments.dropFirst()),
                                              execute: execute, library: library)
        var options = RuntimeOptions()
        options.trace = trace
        options.memoryLimit = try memoryLimit.map(Self.size)
        options.permissions = try permissionOptions.permissions()
        var server: Server?
        if let (host, port) = metricsAddress {
            let board = RunBoard()
            request.pipeline?.board = board
            server = try Self.startMetrics(host: host, port: port, board: board)
        }
        let status = ScriptRunner.run(request, options: options)
        server?.stop()
        if status != 0 { throw ExitCode(status) }
    }

    /// `--metrics-listen`: the views of `scopelua serve` (no POST /events) on the same
    /// server, reading the run's board; the readiness line names the port.
    static func startMetrics(host: String, port: Int, board: RunBoard) throws -> Server {
        var o = Server.Options()
        o.host = host
        o.port = port
        o.ingest = false
        let server = Server(options: o, queue: nil, board: board)
        switch server.start() {
        case .success(let bound):
            StandardError.write(line: "scopelua: listening on http://\(host.contains(":") ? "[\(host)]" : host):\(bound) (GET /metrics, /resources, /healthz)")
            return server
        case .failure(let failure):
            StandardError.write(line: "scopelua: cannot listen on \(host):\(port) for --metrics-listen: \(failure.message)")
            throw ExitCode(1)
        }
    }

    /// `-e` and `-l` in the order the command line gave them (lua.c runs them so).
    static func actionsInOrder(_ raw: [String], execute: [String], library: [String]) -> [RunRequest.Action] {
        var actions: [RunRequest.Action] = []
        var e = execute[...], l = library[...]
        var i = 0
        while i < raw.count {
            let a = raw[i]
            if a == "-e" || a.hasPrefix("-e") && a.count > 2, let chunk = e.popFirst() {
                actions.append(.execute(chunk))
                if a == "-e" { i += 1 }
            } else if a == "-l" || a.hasPrefix("-l") && a.count > 2, let module = l.popFirst() {
                actions.append(.require(module))
                if a == "-l" { i += 1 }
            }
            i += 1
        }
        actions += e.map { .execute($0) } + l.map { .require($0) }
        return actions
    }
}

@main
enum Main {
    /// What follows `scopelua` that is not a subcommand or a top-level option runs as
    /// `scopelua run ...` (`scopelua job.lua args`, `scopelua -e 'print(1)'`), as lua does.
    static func arguments() -> [String] {
        let args = Array(CommandLine.arguments.dropFirst())
        guard let first = args.first else { return args }
        let own: Set<String> = ["run", "repl", "serve", "help", "-h", "--help", "--version"]
        return own.contains(first) ? args : ["run"] + args
    }

    static func main() {
        if CommandLine.arguments.count == 1, isatty(0) != 0 {
            do { try ReplCommand.start(options: RuntimeOptions()) } catch { exit(1) }
            return
        }
        var command: ParsableCommand
        do {
            command = try ScopeluaCommand.parseAsRoot(arguments())
        } catch {
            fail(error, usage: ScopeluaCommand.self)
        }
        do {
            try command.run()
        } catch {
            // An error found while running (an option after the script, say) shows the
            // usage of the command that was running, not the top-level one.
            fail(error, usage: command is Run ? Run.self : command is ReplCommand ? ReplCommand.self : ScopeluaCommand.self)
        }
    }

    static func fail(_ error: Error, usage: ParsableCommand.Type) -> Never {
        // Usage errors exit with 2 (ArgumentParser's default is 64).
        if usage.exitCode(for: error) == .validationFailure {
            StandardError.write(line: usage == Run.self ? runUsage(for: error)
                                      : usage == ReplCommand.self ? replUsage(for: error) : usage.fullMessage(for: error))
            exit(ScriptRunner.usageError)
        }
        usage.exit(withError: error)
    }

    /// The REPL's own usage message, named as it is typed (`scopelua repl`).
    static func replUsage(for error: Error) -> String {
        ReplCommand.fullMessage(for: error)
            .replacing("Usage: repl ", with: "Usage: scopelua repl ")
            .replacing("See 'repl --help'", with: "See 'scopelua repl --help'")
    }

    /// Run's own usage message, named as it is typed (`scopelua run`).
    static func runUsage(for error: Error) -> String {
        Run.fullMessage(for: error)
            .replacing("Usage: run ", with: "Usage: scopelua run ")
            .replacing("See 'run --help'", with: "See 'scopelua run --help'")
    }
}
