import Foundation
import Testing
@testable import ScopeLua
import CLua
import CScopeLua

/// The pipeline runner's I/O, end to end (issue 9, items 3, 6, 7, 13, 17, 18, 19):
/// inputs opened once, write failures reported, a reader going away, events whose
/// output cannot be encoded, every event read in exactly one category, the output
/// never over the input, no trap on a numeric option.
@Suite struct PipelineIOTests {
    static let identity = """
        stage "pass" { process = function(ctx, e) return e end }
        pipeline "p" { "pass" }
        """

    /// `bash -c SCRIPT` in `dir`, with `$SCOPELUA` the built executable.
    static func bash(_ script: String, in dir: String) throws -> ProcessResult {
        try runProcess("/bin/bash", ["-c", script], directory: dir, environment: ["SCOPELUA": scopeluaPath])
    }

    static func events(_ n: Int) -> String {
        (1...n).map { "{\"id\":\($0)}\n" }.joined()
    }

    /// The counts of the report's `events` line (and `fan-out` line, prefixed "fanout ").
    static func counts(_ stderr: String) -> [String: Int] {
        var result: [String: Int] = [:]
        for line in stderr.split(separator: "\n") {
            let prefix: String
            if line.hasPrefix("  events ") { prefix = "" } else if line.hasPrefix("  fan-out ") { prefix = "fanout " } else { continue }
            let words = line.split(separator: " ")
            for (i, w) in words.enumerated() where i + 1 < words.count {
                if let n = Int(words[i + 1]) { result[prefix + String(w)] = n }
            }
        }
        return result
    }

    /// read = emitted + filtered + skipped + dead-lettered + rejected + in-flight.
    static func addsUp(_ c: [String: Int]) -> Bool {
        let categories = ["emitted", "filtered", "skipped", "dead-lettered", "rejected", "in-flight"]
        return c["read"] == categories.reduce(0) { $0 + (c[$1] ?? 0) }
    }

    /// Descriptors of process `pid` whose target is `path`.
    static func descriptors(of pid: Int32, to path: String) -> Int {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        return fds.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) == path }.count
    }


    // MARK: - Item 6: every input opened (and read) once

    @Test(.timeLimit(.minutes(1))) func scriptFromAPipeRunsAsLuaRunsIt() throws {
        let dir = temporaryDirectory()
        let r = try Self.bash(#"$SCOPELUA run <(printf 'print(1)\n')"#, in: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "1\n")
        // A '#' first line is skipped and line numbers stay right, as lua does it.
        let e = try Self.bash(#"$SCOPELUA run <(printf '#!/usr/bin/env lua\nerror("here")\n')"#, in: dir)
        #expect(e.status == 1)
        #expect(e.stderr.range(of: #"^scopelua: /dev/fd/[0-9]+:2: here\n"#, options: .regularExpression) != nil, "\(e.stderr)")
    }


    // MARK: - Item 7: write failures

    @Test func aFileWhoseWriteFailedEarlierFailsItsRelease() throws {
        // stdio forgets the failure (fclose then succeeds): the release must not.
        let r = try scopelua(["run", "-e", "local f = fs.open('/dev/full', 'w'); f:write(string.rep('x', 10000))"])
        #expect(r.status == 1)
        #expect(r.stderr == "scopelua: release of file#1 \"/dev/full\" failed: an earlier write or flush failed (what it held was not written)\n")
        let flushed = runLua("""
            local f = fs.open('/dev/full', 'w')
            f:write('x')
            local ok, message = f:flush()
            return ok, pcall(f.release, f)
            """)
        #expect(flushed.values == [.nil, .boolean(false),
                                   .string("release of file#1 \"/dev/full\" failed: an earlier write or flush failed (what it held was not written)")])
    }

    /// A stop signal that arrives while the output blocks in write(2) must not turn it
    /// into EINTR (stdio would drop the buffer): the handlers restart the call.
    @Test(.timeLimit(.minutes(1))) func aStopWhileTheOutputBlocksLosesNothing() throws {
        let dir = temporaryDirectory()
        write(Self.identity, to: "p.lua", in: dir)
        let count = 20000  // about 300 KB of output: far more than a pipe holds
        write(Self.events(count), to: "in.jsonl", in: dir)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: scopeluaPath)
        process.arguments = ["run", "p.lua", "--input", "in.jsonl", "--report"]
        process.currentDirectoryURL = URL(fileURLWithPath: dir)
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let pid = process.processIdentifier
        // Readiness: the child sleeps in the kernel's pipe write (the pipe is full and
        // nobody reads; "pipe_write" or "anon_pipe_write" depending on the kernel).
        let blocked = PipelineCommandTests.waitFor({
            (try? String(contentsOfFile: "/proc/\(pid)/wchan", encoding: .utf8))?.hasSuffix("pipe_write") == true
        }, seconds: 20)
        #expect(blocked)
        kill(pid, SIGTERM)
        // Readiness: the handler ran (nothing pending any more) while the write was still
        // blocked. Only then is the pipe drained: the write either resumed (SA_RESTART) or
        // already failed with EINTR, whatever the timing.
        let handled = PipelineCommandTests.waitFor({
            guard process.isRunning else { return true }  // it failed at once (EINTR)
            let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
            let pending = status.split(separator: "\n").filter { $0.hasPrefix("SigPnd:") || $0.hasPrefix("ShdPnd:") }
            return pending.count == 2 && pending.allSatisfy { $0.hasSuffix("0000000000000000") }
        }, seconds: 20)
        #expect(handled)
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 143, "\(stderr)")
        let c = Self.counts(stderr)
        let lines = stdout.split(separator: 10).count
        #expect(c["emitted"] == lines, "\(c), \(lines) lines")
        #expect(Self.addsUp(c), "\(c)")
        #expect(!stderr.contains("Interrupted system call"))
    }


    // MARK: - Item 17: an event that cannot be encoded

    @Test func findingTheFieldThatCannotBeEncoded() {
        let rt = Runtime()
        defer { rt.close() }
        let L = rt.L
        func problem(_ chunk: String) -> String? {
            _ = try? rt.execute("__t = " + chunk, name: "=t")
            Bindings.getGlobal(L, "__t")
            defer { sl_pop(L, 1) }
            #expect(!rt.json.encode(L, -1))
            sl_pop(L, 1)
            return Unencodable.problem(L, -1)
        }
        #expect(problem("{ ok = 1, deep = { { a = 1 }, { b = { c = 1/0 } } } }") == "field 'deep[2].b.c': number is infinite")
        #expect(problem("(function() local c = { name = 'x' }; c.self = c; return c end)()") == "field 'self': the table contains itself")
        #expect(problem("{ inner = { [true] = 1 } }") == "field 'inner': a key is a boolean (keys must be strings or numbers)")
        #expect(problem("{ list = { [1] = 1, [100] = 2 } }") == "field 'list': excessively sparse array")
        #expect(problem("{ co = coroutine.create(print) }") == "field 'co': thread values cannot be encoded")
    }


    // MARK: - Item 3: numbers from outside never trap

    @Test func policyNumbersOutOfRangeAreLuaErrors() {
        let expected = "on_error must be \"abort\", \"skip\", \"dead_letter\" or { retry = n, backoff = seconds, [\"then\"] = ... }"
        let cases: [(String, String)] = [
            ("{ retry = 2, backoff = math.huge }", "backoff must be a number of seconds from 0 to 3600, got inf"),
            ("{ retry = 2, backoff = 0/0 }", "backoff must be a number of seconds from 0 to 3600, got "),
            ("{ retry = 2, backoff = -1 }", "backoff must be a number of seconds from 0 to 3600, got -1"),
            ("{ retry = 2, backoff = 1e300 }", "backoff must be a number of seconds from 0 to 3600, got 1e+300"),
            ("{ retry = 1e300 }", "retry must be an integer from 1 to 1000, got 1e+300"),
            ("{ retry = -1 }", "retry must be an integer from 1 to 1000, got -1"),
            ("{ retry = 0/0 }", "retry must be an integer from 1 to 1000, got "),
            ("{ retry = math.maxinteger }", "retry must be an integer from 1 to 1000, got 9223372036854775807"),
            ("{ retry = 2.5 }", "retry must be an integer from 1 to 1000, got 2.5"),
        ]
        for (policy, reason) in cases {
            for owner in ["stage('x', { process = print, on_error = POLICY })", "stage('s', { process = print }); pipeline('p', { 's', on_error = POLICY })"] {
                let message = runLua(owner.replacingOccurrences(of: "POLICY", with: policy)).error?.message ?? ""
                #expect(message.contains(": \(expected) (\(reason)"), "\(policy): \(message)")
            }
        }
        // In range, an integral float is an integer.
        #expect(runLua("stage('x', { process = print, on_error = { retry = 3.0, backoff = 3600 } })").error == nil)
    }
}
