import ArgumentParser
import ScopeLua

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

            Exit status: 0 success; 1 script error; 2 usage error (bad option, unreadable script).
            """,
        subcommands: [Run.self]
    )
}

/// `scopelua run`: like the `lua` command, plus resource tracing and a report.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a Lua script (like `lua script.lua args...`).",
        discussion: """
            The script sees `arg` and `...` exactly as under `lua`. Options given after the \
            script name belong to the script. `-e` and `-l` run before the script, in the \
            order given. An uncaught error releases every scope (files are complete on \
            disk), then prints the message and a traceback to stderr and exits with 1.

            Examples:
              scopelua run scripts/log_events.lua
              scopelua run --trace --report job.lua input.txt
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

    @Argument(help: ArgumentHelp("The Lua script to run; '-' reads it from stdin.", valueName: "script"))
    var script: String?

    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("Arguments for the script (arg[1], arg[2], ... and `...`).", valueName: "args"))
    var scriptArguments: [String] = []

    func validate() throws {
        if script == nil && execute.isEmpty && library.isEmpty {
            throw ValidationError("missing script (or -e CHUNK / -l MODULE)")
        }
    }

    func run() throws {
        var request = RunRequest(script: script)
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
        let status = ScriptRunner.run(request, options: options)
        if status != 0 { throw ExitCode(status) }
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
    static func main() {
        do {
            var command = try ScopeluaCommand.parseAsRoot()
            try command.run()
        } catch {
            // Usage errors exit with 2 (ArgumentParser's default is 64).
            if ScopeluaCommand.exitCode(for: error) == .validationFailure {
                let message = ScopeluaCommand.fullMessage(for: error)
                StandardError.write(line: message)
                exit(ScriptRunner.usageError)
            }
            ScopeluaCommand.exit(withError: error)
        }
    }
}
