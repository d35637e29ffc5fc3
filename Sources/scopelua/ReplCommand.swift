import ArgumentParser
import CLineEdit
import ScopeLua
import ScopeLuaRepl

#if canImport(Glibc)
import Glibc
#endif

/// `scopelua repl`: an interactive Lua prompt that shows who owns what.
struct ReplCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "repl",
        abstract: "An interactive Lua prompt where the runtime's scopes and resources can be watched.",
        discussion: """
            Chunks run in the session scope: resources kept in globals stay open until \
            released or until the session ends; `local x <close>` closes at the end of its \
            chunk. An expression prints its value (`=x` works too), an incomplete chunk \
            continues on a `>>` prompt. Ctrl-C interrupts a running chunk (releasing what it \
            acquired in its scopes) or clears the line; Ctrl-D or :quit ends the session, \
            releasing everything, newest first. :help lists the meta-commands (:resources, \
            :scopes, :trace on|off, :load FILE, :run PIPELINE [FILE], :report, :limits, :quit).

            With stdin not a terminal, chunks are read from stdin without prompts or line \
            editing. History is kept in ~/.scopelua_history (last 1000 lines).

            --sandbox and the --allow-* options work as for `scopelua run` (README, \
            "Permissions"): `scopelua repl --sandbox --allow-read=data/`. :limits shows \
            what applies. Files named by :load and :run are opened by the REPL, not checked.
            """
    )

    @Flag(help: "Start with acquire/release tracing on (:trace on).")
    var trace = false

    @Option(name: .customLong("memory-limit"), help: ArgumentHelp("The most memory Lua code may hold in the session's Lua state: bytes, or with a unit, 64MB, 512MiB, 2G (units of 1024). Beyond it an allocation fails as Lua's 'not enough memory' in the chunk.", valueName: "SIZE"))
    var memoryLimit: String?

    @OptionGroup(title: "Permissions")
    var permissionOptions: PermissionOptions

    func run() throws {
        var options = RuntimeOptions()
        options.trace = trace
        options.memoryLimit = try memoryLimit.map(Run.size)
        options.permissions = try permissionOptions.permissions()
        try Self.start(options: options)
    }

    static func start(options: RuntimeOptions) throws {
        let interactive = isatty(0) != 0
        let repl = Repl(options: options) { text in
            guard !text.isEmpty else { return }
            print(text)
            fflushStdout()
        }
        if interactive {
            interactiveLoop(repl)
        } else {
            // As `lua -`: errors go to stderr and the first one ends the run (exit 1),
            // after the session's resources are released.
            let answers = repl.write
            repl.write = { [unowned repl] text in
                if repl.errors > 0 { StandardError.write(line: text) } else { answers(text) }
            }
            var failed = false
            while let line = readLine(strippingNewline: true) {
                let before = repl.errors
                repl.handle(line)
                if repl.errors > before {
                    failed = true
                    break
                }
                if repl.finished { return }
            }
            if failed {
                let released = repl.quit(error: "the session ended on an error")
                if released != "nothing to release" { StandardError.write(line: released) }
                throw ExitCode(1)
            }
            if !repl.finished { repl.write(repl.quit()) }
            return
        }
        if !repl.finished { repl.write(repl.quit()) }
    }

    static func interactiveLoop(_ repl: Repl) {
        print("scopelua REPL (Lua 5.4) — :help for commands, Ctrl-D to quit")
        activeRepl = repl
        let history = getenv("HOME").map { String(cString: $0) + "/.scopelua_history" }
        // Timers fire while the prompt waits (see Repl.fireTimers). Before le_setup:
        // libedit picks its key reader when it initializes.
        le_set_idle({ Int32(activeRepl?.millisecondsToNextTimer ?? -1) }, { activeRepl?.fireTimers() == true ? 1 : 0 })
        le_setup(history, 1000, completer)
        while !repl.finished {
            let prompt: String
            switch repl.prompt {
            case .primary: prompt = "> "
            case .continuation: prompt = ">> "
            case .event: prompt = "event> "
            }
            var cancelled: Int32 = 0
            guard let raw = le_readline(prompt, &cancelled) else {
                print("")
                return
            }
            let line = String(cString: raw)
            free(raw)
            if cancelled != 0 {
                print("")
                repl.cancelInput()
                continue
            }
            le_remember(line)
            repl.handle(line)
        }
    }
}

/// The REPL the completion callback asks (libedit's callback cannot carry a context).
nonisolated(unsafe) var activeRepl: Repl?

/// libedit's completer: a malloc'd, NULL-terminated list of malloc'd strings.
let completer: le_completer = { text in
    guard let text, let repl = activeRepl else { return nil }
    let matches = repl.completions(for: String(cString: text))
    guard !matches.isEmpty else { return nil }
    // readline's convention: entry 0 is the common prefix (substituted on TAB).
    var common = matches[0]
    for m in matches.dropFirst() {
        while !m.hasPrefix(common) { common.removeLast() }
    }
    let list = [common] + (matches.count > 1 ? matches : [])
    let array = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: list.count + 1)
    for (i, s) in list.enumerated() { array[i] = strdup(s) }
    array[list.count] = nil
    return array
}

func fflushStdout() {
    StandardError.flushStdout()
}
