import Foundation
import Testing
@testable import ScopeLua

/// `scopelua repl` as a person uses it: in a real terminal (tmux), and with piped input.
@Suite(.serialized, .timeLimit(testTimeLimit)) struct ReplTerminalTests {
    @Test func pipedInputRunsWithoutPrompts() throws {
        let r = try scopelua(["repl"], stdin: "x = 20\n=x + 22\nfunction f()\nreturn 'multi'\nend\nf()\n")
        #expect(r.status == 0)
        #expect(r.stdout == "42\nmulti\nnothing to release\n")
    }

    /// Drives tmux on a private socket.
    struct Tmux {
        let socket = "scopelua-test-\(UUID().uuidString.prefix(8))"

        @discardableResult
        func run(_ args: [String]) throws -> String {
            try runProcess("/usr/bin/tmux", ["-L", socket] + args).stdout
        }

        /// Starts the server: its output is not captured (it outlives this call and would
        /// hold a pipe open).
        func start(_ args: [String]) throws {
            let quoted = (["/usr/bin/tmux", "-L", socket] + args).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
            _ = system(quoted.joined(separator: " ") + " </dev/null >/dev/null 2>&1")
        }

        func keys(_ keys: String...) throws { try run(["send-keys", "-t", "t"] + keys) }

        /// Types `text` literally (so that words like "end" are not key names), then Enter.
        func line(_ text: String) throws {
            try run(["send-keys", "-t", "t", "-l", text])
            try run(["send-keys", "-t", "t", "Enter"])
        }

        func screen() throws -> String { try run(["capture-pane", "-t", "t", "-p"]) }

        /// The last line of `screen` that is not empty (where the cursor is), without the
        /// spaces around it.
        static func lastLine(of screen: String) -> String {
            screen.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.last { !$0.isEmpty } ?? ""
        }

        /// Waits until `condition` holds for the screen (or gives up after 20 seconds).
        func waitFor(_ condition: (String) -> Bool) throws -> Bool {
            try waitUntil(seconds: 20) { try condition(screen()) }
        }

        /// Waits until the screen contains `text`.
        func waitFor(_ text: String) throws -> Bool { try waitFor { $0.contains(text) } }

        /// Waits until the REPL shows an empty prompt on its last line (it reads a new chunk).
        func waitForPrompt() throws -> Bool { try waitFor { Tmux.lastLine(of: $0) == ">" } }

        /// The scopelua process in the pane (a child of the pane's shell).
        func replProcess() throws -> pid_t? {
            let shell = pid_t(try run(["display-message", "-p", "-t", "t", "#{pane_pid}"]).trimmingCharacters(in: .whitespacesAndNewlines))
            return shell.flatMap { childProcesses(of: $0, named: "scopelua").first }
        }
    }

    @Test func aSessionInARealTerminal() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/tmux") else {
            Issue.record("tmux is not installed (scripts/install-deps.sh installs it)")
            return
        }
        let dir = temporaryDirectory()
        let tmux = Tmux()
        defer { _ = try? tmux.run(["kill-server"]) }
        try tmux.start(["new-session", "-d", "-s", "t", "-x", "120", "-y", "40",
                        "env HOME=\(dir) \(scopeluaPath) repl; echo EXITED $?; sleep 30"])
        #expect(try tmux.waitFor("scopelua REPL"), "\((try? tmux.screen()) ?? "")")
        let repl = try #require(try tmux.replProcess(), "no scopelua process in the tmux pane")
        // An expression.
        try tmux.line("1 + 41")
        #expect(try tmux.waitFor("42"))
        // A multi-line function.
        try tmux.line("function twice(x)")
        #expect(try tmux.waitFor(">>"), "\((try? tmux.screen()) ?? "")")
        try tmux.line("return x * 2")
        try tmux.line("end")
        try tmux.line("twice(50)")
        #expect(try tmux.waitFor("100"), "\((try? tmux.screen()) ?? "")")
        // A file, seen in :resources, released by hand.
        try tmux.line("f = fs.open('\(dir)/typed.txt', 'w')")
        try tmux.line(":resources")
        #expect(try tmux.waitFor("file#1 \"\(dir)/typed.txt\"  run/repl"))
        try tmux.line("f:release()")
        #expect(try tmux.waitFor("true"))
        // Ctrl-C on an endless loop: interrupted, its scope released (the REPL process
        // no longer holds loop.txt open), the prompt back.
        let loopFile = "\(dir)/loop.txt"
        try tmux.line("scope(function() local g = fs.open('\(loopFile)', 'w'); print('LOOP' .. 'ING'); while true do end end)")
        #expect(try tmux.waitFor("LOOPING"))
        #expect(openDescriptors(under: loopFile, process: repl) == 1)
        try tmux.keys("C-c")
        #expect(try tmux.waitFor("interrupted!"))
        #expect(openDescriptors(under: loopFile, process: repl) == 0)
        // An error; the prompt survives.
        try tmux.line("error('typed error')")
        #expect(try tmux.waitFor("stdin:1: typed error"))
        // History: Up recalls the last line onto the new prompt.
        #expect(try tmux.waitForPrompt(), "\((try? tmux.screen()) ?? "")")
        try tmux.keys("Up")
        #expect(try tmux.waitFor { Tmux.lastLine(of: $0) == "> error('typed error')" }, "\((try? tmux.screen()) ?? "")")
        try tmux.keys("C-u")
        // Ctrl-D with an open file: flushed, released, reported.
        try tmux.line("log = fs.open('\(dir)/last.txt', 'w'); log:write('flushed at exit')")
        #expect(try tmux.waitForPrompt(), "\((try? tmux.screen()) ?? "")")
        try tmux.keys("C-d")
        #expect(try tmux.waitFor("EXITED 0"))
        let screen = try tmux.screen()
        #expect(screen.contains("released file#"))
        #expect(read("\(dir)/last.txt") == "flushed at exit")
        #expect((read("\(dir)/.scopelua_history") ?? "").contains("twice(50)"))
    }
}
