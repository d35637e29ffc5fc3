import ArgumentParser
import ScopeLua
import ScopeLuaServe

#if canImport(Glibc)
import Glibc
#endif

/// `scopelua serve`: the script's pipeline as a long-lived service fed over HTTP.
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the script's pipeline as a service: events arrive over HTTP (POST /events).",
        discussion: """
            The script runs as under `scopelua run` (its top level registers stages and \
            pipelines), then its pipeline opens and takes the events of every POST /events \
            request: JSON lines, a JSON array of objects, or one object. The answer comes once \
            the request's events have passed the pipeline and what they wrote to --output and \
            --dead-letter is on disk: 200 {"accepted": n, "rejected": [{"line": 3, "reason": \
            "..."}], "dead_lettered": k}, where a line that is not a JSON object is rejected \
            (by its number in the request) and the rest are accepted. A body over --max-body \
            is 413; when --queue events already wait, 503 with Retry-After (nothing of the \
            request was taken); while stopping, 503. GET /healthz answers while the process \
            lives, GET /readyz once the stages are open and until a stop begins. GET /metrics \
            (Prometheus text) and GET /resources (the open handles, JSON) watch the run (see \
            the README, "Watching a run").

            SIGINT/SIGTERM: new requests get 503, the events already taken finish, the final \
            barrier answers their requests, the stages close, the listener closes; exit \
            130/143 (a second signal, or --grace seconds, forces the stop).
            """
    )

    @Option(help: ArgumentHelp("Where to listen: HOST:PORT (port 0: one the system picks; the line on stderr says which).", valueName: "HOST:PORT"))
    var listen = "127.0.0.1:8080"

    @Option(help: ArgumentHelp("Which registered pipeline serves (needed when there are several).", valueName: "NAME"))
    var pipeline: String?

    @Option(help: ArgumentHelp("Where events leaving the last stage go, as JSON lines ('-': stdout, the default; 'none': count them, write nothing).", valueName: "FILE"))
    var output: String?

    @Option(name: .customLong("dead-letter"), help: ArgumentHelp("Write dead letters and rejected events to FILE as JSON lines (default: stderr).", valueName: "FILE"))
    var deadLetter: String?

    @Option(name: .customLong("max-body"), help: ArgumentHelp("The largest request body POST /events takes: bytes, or with a unit (1MB, 16MiB; default 16MB). Beyond it, 413.", valueName: "SIZE"))
    var maxBody = "16MB"

    @Option(help: ArgumentHelp("How many events may wait for the pipeline (default 10000): a request that would take the queue past it gets 503 with Retry-After, so memory stays bounded.", valueName: "N"))
    var queue = 10_000

    @Option(help: ArgumentHelp("Run the stages in N workers, each its own Lua state on its own thread ('auto': one per core), as `scopelua run --workers` does; each request's events go to one worker (with partition_by: by key) and are answered once through. The output keeps each request's order (with partition_by: each key's), or arrival order if the pipeline says ordered = true.", valueName: "N|auto"))
    var workers: String?

    @Option(name: .customLong("memory-limit"), help: ArgumentHelp("The most memory Lua code may hold in the Lua state (as `scopelua run --memory-limit`).", valueName: "SIZE"))
    var memoryLimit: String?

    @OptionGroup(title: "Permissions")
    var permissionOptions: PermissionOptions

    @Option(help: ArgumentHelp("Seconds a stop (SIGINT/SIGTERM) may take before it is forced; more than 0, at most 86400.", valueName: "SECONDS"))
    var grace: Double = 10

    @Flag(help: "Print the run report (events, stages, resources) to stderr at exit.")
    var report = false

    @Flag(help: "Print every acquire and release to stderr.")
    var trace = false

    @Argument(help: ArgumentHelp("The Lua script that registers the pipeline (options may come before or after it; the script gets no arguments: configure it with ctx.config or the environment).", valueName: "script"))
    var script: String

    /// `HOST:PORT` (`[::1]:PORT` for IPv6).
    static func address(_ text: String, option: String = "--listen") throws -> (host: String, port: Int) {
        let bad = ValidationError("\(option) must be HOST:PORT, like 127.0.0.1:8080 or [::1]:8080 (got '\(text)')")
        guard let colon = text.lastIndex(of: ":") else { throw bad }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { throw bad }
        return (host, port)
    }

    func run() throws {
        try Run.checkGrace(grace, text: String(grace))
        let (host, port) = try Self.address(listen)
        guard let maxBodyBytes = Report.parseBytes(maxBody), maxBodyBytes >= 1 else {
            throw ValidationError("--max-body must be a size: bytes, or a number with KB, MB or GB (got '\(maxBody)')")
        }
        guard queue >= 1 else { throw ValidationError("--queue must be at least 1 (got \(queue))") }
        var options = RuntimeOptions()
        options.trace = trace
        options.memoryLimit = try memoryLimit.map(Run.size)
        options.permissions = try permissionOptions.permissions()

        guard let ingest = IngestQueue(name: "HTTP (\(host):\(port))", capacity: queue) else {
            StandardError.write(line: "scopelua: cannot make the ingest queue's pipe: \(String(cString: strerror(errno)))")
            throw ExitCode(1)
        }
        var serverOptions = Server.Options()
        serverOptions.host = host
        serverOptions.port = port
        serverOptions.maxBody = maxBodyBytes
        let board = RunBoard()
        Server.runTasksOnEventLoops()
        let server = Server(options: serverOptions, queue: ingest, board: board)
        switch server.start() {
        case .success(let bound):
            StandardError.write(line: "scopelua: listening on http://\(host.contains(":") ? "[\(host)]" : host):\(bound) (POST /events; GET /healthz, /readyz, /metrics, /resources)")
        case .failure(let failure):
            StandardError.write(line: "scopelua: cannot listen on \(listen): \(failure.message)")
            throw ExitCode(1)
        }

        var request = RunRequest(script: script)
        var p = RunRequest.PipelineOptions(input: "http://\(listen)")
        p.ingest = ingest
        p.board = board
        p.name = pipeline
        p.output = output ?? "-"
        p.deadLetter = deadLetter
        p.workers = try workers.map(Run.workerCount) ?? 1
        request.pipeline = p
        request.grace = grace
        request.report = report
        request.interpreterArguments = ["scopelua"]
        let status = ScriptRunner.run(request, options: options)
        // The run is over (the script failed, the pipeline ended or stopped): whatever is
        // still offered is refused, then the server stops once its answers are out.
        ingest.close("the server is stopping")
        ingest.abandon("the run ended")
        server.stop()
        if status != 0 { throw ExitCode(status) }
    }
}
