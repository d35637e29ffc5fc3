import Foundation
import Testing
@testable import ScopeLua
import CLua
import CScopeLua

/// The pipeline runner's I/O, end to end (issue 9, items 3, 6, 7, 13, 17, 18, 19):
/// inputs opened once, write failures reported, a reader going away, events whose
/// output cannot be encoded, every event read in exactly one category, the output
/// never over the input, no trap on a numeric option.
@Suite(.timeLimit(testTimeLimit)) struct PipelineIOTests {
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

    @Test func scriptFromAPipeRunsAsLuaRunsIt() throws {
        let dir = temporaryDirectory()
        let r = try Self.bash(#"$SCOPELUA run <(printf 'print(1)\n')"#, in: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "1\n")
        // A '#' first line is skipped and line numbers stay right, as lua does it.
        let e = try Self.bash(#"$SCOPELUA run <(printf '#!/usr/bin/env lua\nerror("here")\n')"#, in: dir)
        #expect(e.status == 1)
        #expect(e.stderr.range(of: #"^scopelua: /dev/fd/[0-9]+:2: here\n"#, options: .regularExpression) != nil, "\(e.stderr)")
    }

    @Test func inputFromAPipeLosesNothing() throws {
        let dir = temporaryDirectory()
        write(Self.identity, to: "p.lua", in: dir)
        write(Self.events(5000), to: "in.jsonl", in: dir)
        let r = try Self.bash("$SCOPELUA run p.lua --input <(cat in.jsonl) --output out.jsonl --report", in: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("  events     read 5000  emitted 5000  filtered 0  skipped 0  dead-lettered 0  rejected 0  retried 0\n"), "\(r.stderr)")
        #expect(read("\(dir)/out.jsonl") == Self.events(5000))
    }

    @Test func inputFromAFIFOIsOpenedOnceAndLosesNothing() throws {
        let dir = temporaryDirectory()
        write(Self.identity, to: "p.lua", in: dir)
        let fifo = "\(dir)/events.fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        let child = try PipelineCommandTests.Child(["run", "p.lua", "--input", fifo, "--output", "out.jsonl", "--report"], directory: dir)
        // Readiness: opening the FIFO for writing without blocking succeeds once the
        // child has it open for reading.
        var writer: Int32 = -1
        let opened = waitUntil(seconds: 20) {
            writer = open(fifo, O_WRONLY | O_NONBLOCK)
            return writer >= 0
        }
        #expect(opened)
        guard opened else {
            _ = child.finish(timeout: 1)
            return
        }
        // The child holds the FIFO open exactly once (its descriptor appears just after
        // the open that let ours succeed).
        let pid = child.process.processIdentifier
        #expect(waitUntil(seconds: 20) { Self.descriptors(of: pid, to: fifo) > 0 })
        #expect(Self.descriptors(of: pid, to: fifo) == 1)
        _ = fcntl(writer, F_SETFL, 0)  // blocking writes from here on
        let text = Self.events(3000)
        let written = text.utf8CString.withUnsafeBufferPointer { write(writer, $0.baseAddress, $0.count - 1) }
        #expect(written == text.utf8.count)
        close(writer)
        let (status, stderr) = child.finish(timeout: 20)
        #expect(status == 0, "\(stderr)")
        #expect(stderr.contains("read 3000  emitted 3000  filtered 0  skipped 0  dead-lettered 0  rejected 0"), "\(stderr)")
        #expect(read("\(dir)/out.jsonl") == text)
    }

    // MARK: - Item 7: write failures

    @Test func outputToAFullDeviceStopsTheRunAndFailsIt() throws {
        let dir = temporaryDirectory()
        write("""
            stage "s" {
              process = function(ctx, e) return e end,
              close = function(ctx, err) local f <close> = fs.open("closed.txt", "w"); f:write("closed ", tostring(err)) end,
            }
            pipeline "p" { "s" }
            """, to: "p.lua", in: dir)
        write(Self.events(5000), to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "/dev/full", "--report"], directory: dir)
        #expect(r.status == 1)
        #expect(r.stderr.contains("\nscopelua: cannot write output /dev/full: No space left on device\n"), "\(r.stderr)")
        #expect(read("\(dir)/closed.txt") == "closed nil")  // a graceful stop: the stages closed
        let c = Self.counts(r.stderr)
        #expect(c["read"].map { $0 < 5000 } == true, "reading stopped: \(c)")
        #expect(c["in-flight"] == 1)
        #expect(Self.addsUp(c), "\(c)")
        // One event: the failure comes with the last flush, and is reported all the same.
        write("{\"id\":1}\n", to: "one.jsonl", in: dir)
        let one = try scopelua(["run", "p.lua", "--input", "one.jsonl", "--output", "/dev/full"], directory: dir)
        #expect(one.status == 1)
        #expect(one.stderr.hasPrefix("scopelua: pipeline 'p': read 1, emitted 1, filtered 0, skipped 0, dead-lettered 0, rejected 0 in "), "\(one.stderr)")
        #expect(one.stderr.hasSuffix(" events/s)\nscopelua: cannot write output /dev/full: No space left on device\n"), "\(one.stderr)")
    }

    @Test func deadLettersToAFullDeviceFailTheRun() throws {
        let dir = temporaryDirectory()
        write("""
            stage "s" { process = function(ctx, e) error("bad") end, on_error = "dead_letter" }
            pipeline "p" { "s" }
            """, to: "p.lua", in: dir)
        write(Self.events(3), to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "none", "--dead-letter", "/dev/full", "--report"], directory: dir)
        #expect(r.status == 1)
        #expect(r.stderr.contains("\nscopelua: cannot write dead-letter file /dev/full: No space left on device\n"), "\(r.stderr)")
        let c = Self.counts(r.stderr)
        #expect(Self.addsUp(c), "\(c)")
    }

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
    @Test func aStopWhileTheOutputBlocksLosesNothing() throws {
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
        let blocked = waitUntil(seconds: 20) {
            (try? String(contentsOfFile: "/proc/\(pid)/wchan", encoding: .utf8))?.hasSuffix("pipe_write") == true
        }
        #expect(blocked)
        kill(pid, SIGTERM)
        // Readiness: the handler ran (nothing pending any more) while the write was still
        // blocked. Only then is the pipe drained: the write either resumed (SA_RESTART) or
        // already failed with EINTR, whatever the timing.
        let handled = waitUntil(seconds: 20) {
            guard process.isRunning else { return true }  // it failed at once (EINTR)
            let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
            let pending = status.split(separator: "\n").filter { $0.hasPrefix("SigPnd:") || $0.hasPrefix("ShdPnd:") }
            return pending.count == 2 && pending.allSatisfy { $0.hasSuffix("0000000000000000") }
        }
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

    // MARK: - Item 13: the reader going away

    @Test func aReaderThatGoesAwayStopsTheRunGracefully() throws {
        let dir = temporaryDirectory()
        write("""
            stage "store" {
              open = function(ctx)
                ctx.state.db = sql.open("events.db")
                ctx.state.db:exec("CREATE TABLE IF NOT EXISTS seen (id INTEGER)")
                ctx.state.tx = ctx.state.db:transaction()
              end,
              process = function(ctx, e) ctx.state.db:exec("INSERT INTO seen VALUES (?)", e.id); return e end,
              close = function(ctx, err)
                ctx.state.tx:commit()
                local f <close> = fs.open("closed.txt", "w")
                f:write("closed ", tostring(err))
              end,
            }
            pipeline "p" { "store" }
            """, to: "job.lua", in: dir)
        write(Self.events(100_000), to: "big.jsonl", in: dir)
        let r = try Self.bash(#"$SCOPELUA run job.lua --input big.jsonl --report | head -2; echo "status ${PIPESTATUS[0]}" >&2"#, in: dir)
        #expect(r.stdout == "{\"id\":1}\n{\"id\":2}\n")
        #expect(r.stderr.hasSuffix("status 141\n"), "\(r.stderr)")
        #expect(r.stderr.contains("scopelua: stopped: cannot write output stdout: Broken pipe (the reader went away)\n"))
        #expect(read("\(dir)/closed.txt") == "closed nil")
        let c = Self.counts(r.stderr)
        #expect(c["read"].map { $0 < 100_000 } == true, "\(c)")
        #expect(c["in-flight"] == 1)
        #expect(Self.addsUp(c), "\(c)")
        // The batch committed (every event the stage processed), the database closed cleanly.
        let rows = try scopelua(["run", "-e", "print(sql.open('events.db'):first('SELECT count(*) AS n FROM seen').n)"], directory: dir)
        #expect(rows.stdout == "\(c["read"] ?? -1)\n")
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/events.db-wal"))
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/events.db-shm"))
    }

    // MARK: - Item 17: an event that cannot be encoded

    static let unencodable = """
        stage "enrich" {
          process = function(ctx, e)
            if e.id == 2 then e.callback = print end
            if e.id == 3 then e.nested = { list = { 1, 2, 0/0 } } end
            return e
          end,
          on_error = POLICY,
        }
        pipeline "p" { "enrich" }
        """
    static let unencodableInput = "{\"id\":1,\"price\":1e400}\n{\"id\":2}\n{\"id\":3}\n{\"id\":4}\n"

    @Test func anUnencodableEventIsAnErrorOfTheLastStageUnderItsPolicy() throws {
        let dir = temporaryDirectory()
        write(Self.unencodableInput, to: "in.jsonl", in: dir)
        write(Self.unencodable.replacingOccurrences(of: "POLICY", with: "\"dead_letter\""), to: "dl.lua", in: dir)
        let dl = try scopelua(["run", "dl.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--dead-letter", "dl.jsonl", "--report"], directory: dir)
        #expect(dl.status == 0, "\(dl.stderr)")
        #expect(read("\(dir)/out.jsonl") == "{\"id\":4}\n")
        #expect(dl.stderr.contains("read 4  emitted 1  filtered 0  skipped 0  dead-lettered 3  rejected 0"), "\(dl.stderr)")
        let records = (read("\(dir)/dl.jsonl") ?? "").split(separator: "\n").map(String.init)
        #expect(records.count == 3)
        #expect(records.first?.contains("\"error\":\"cannot encode event: field 'price': number is infinite\"") == true)
        #expect(records.first?.contains("\"event\":{") == true && records.first?.contains("\"price\":\"inf\"") == true)
        #expect(records.first?.contains("\"stage\":\"enrich\"") == true)
        #expect(records.dropFirst().first?.contains("\"error\":\"cannot encode event: field 'callback': function values cannot be encoded\"") == true)
        #expect(records.last?.contains("\"error\":\"cannot encode event: field 'nested.list[3]': number is NaN\"") == true)

        write(Self.unencodable.replacingOccurrences(of: "POLICY", with: "\"skip\""), to: "skip.lua", in: dir)
        let skip = try scopelua(["run", "skip.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--report"], directory: dir)
        #expect(skip.status == 0)
        #expect(skip.stderr.contains("read 4  emitted 1  filtered 0  skipped 3  dead-lettered 0"), "\(skip.stderr)")

        // A retry would fail the same way: its "then" applies at once.
        write(Self.unencodable.replacingOccurrences(of: "POLICY", with: "{ retry = 3, backoff = 10, [\"then\"] = \"skip\" }"), to: "retry.lua", in: dir)
        let retry = try scopelua(["run", "retry.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--report"], directory: dir)
        #expect(retry.status == 0)
        #expect(retry.stderr.contains("read 4  emitted 1  filtered 0  skipped 3  dead-lettered 0  rejected 0  retried 0"), "\(retry.stderr)")

        write(Self.unencodable.replacingOccurrences(of: "POLICY", with: "\"abort\""), to: "abort.lua", in: dir)
        let abort = try scopelua(["run", "abort.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--report"], directory: dir)
        #expect(abort.status == 1)
        #expect(abort.stderr.contains("\nscopelua: pipeline 'p' aborted: stage 'enrich' failed on line 1 (id 1): cannot encode event: field 'price': number is infinite\n"), "\(abort.stderr)")
        #expect(abort.stderr.contains("read 1  emitted 0  filtered 0  skipped 0  dead-lettered 0  rejected 0  retried 0  in-flight 1 (line 1)"))
        #expect(read("\(dir)/out.jsonl") == "")
    }

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

    // MARK: - Item 18: every event read in exactly one category

    @Test func anAbortLeavesTheFailingEventInFlight() throws {
        let dir = temporaryDirectory()
        write("""
            stage "check" { process = function(ctx, e) if e.id == 3 then error("invalid") end return e end }
            pipeline "p" { "check" }
            """, to: "p.lua", in: dir)
        write(Self.events(5), to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "none", "--report"], directory: dir)
        #expect(r.status == 1)
        #expect(r.stderr.contains("  events     read 3  emitted 2  filtered 0  skipped 0  dead-lettered 0  rejected 0  retried 0  in-flight 1 (line 3)\n"), "\(r.stderr)")
    }

    @Test func fanOutInFlightIsCountedToo() throws {
        let dir = temporaryDirectory()
        write("""
            stage "split" { process = function(ctx, e) for i = 1, 3 do ctx:emit({ id = e.id * 10 + i }) end return e end }
            stage "check" { process = function(ctx, e) if e.id == 12 then error("invalid") end return e end }
            pipeline "p" { "split", "check" }
            """, to: "p.lua", in: dir)
        write(Self.events(2), to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "none", "--report"], directory: dir)
        #expect(r.status == 1)
        // Event 1 is in flight; of the three it emitted, 11 got out, 12 failed, 13 never ran.
        #expect(r.stderr.contains("read 1  emitted 0  filtered 0  skipped 0  dead-lettered 0  rejected 0  retried 0  in-flight 1 (line 1)"), "\(r.stderr)")
        #expect(r.stderr.contains("  fan-out    created 3  emitted 1  filtered 0  skipped 0  dead-lettered 0  in-flight 2\n"), "\(r.stderr)")
    }

    @Test func aForcedStopLeavesTheRunningEventInFlight() throws {
        let dir = temporaryDirectory()
        write("""
            stage "slow" { process = function(ctx, e)
              if e.id == 2 then io.stderr:write("busy\\n"); io.stderr:flush(); while true do end end
              return e
            end }
            pipeline "p" { "slow" }
            """, to: "p.lua", in: dir)
        // The grace period running out forces the stop (two signals sent at once could
        // arrive as one).
        let child = try PipelineCommandTests.Child(["run", "p.lua", "--input", "-", "--output", "none", "--grace", "1", "--report"], directory: dir)
        child.send(Self.events(2))
        #expect(try Self.waitForLine("busy", from: child.errors.fileHandleForReading))
        kill(child.process.processIdentifier, SIGTERM)
        let (status, rest) = child.finish()
        #expect(status == 143, "\(rest)")
        #expect(rest.contains("scopelua: stop forced while stage 'slow' was still running"), "\(rest)")
        #expect(rest.contains("read 2  emitted 1  filtered 0  skipped 0  dead-lettered 0  rejected 0  retried 0  in-flight 1 (line 2)"), "\(rest)")
    }

    @Test func aStopDuringARetryWaitEndsItAndLeavesTheEventInFlight() throws {
        let dir = temporaryDirectory()
        write("""
            stage "flaky" {
              process = function(ctx, e) io.stderr:write("attempt\\n"); io.stderr:flush(); error("down") end,
              on_error = { retry = 5, backoff = 30, ["then"] = "skip" },
            }
            pipeline "p" { "flaky" }
            """, to: "p.lua", in: dir)
        let child = try PipelineCommandTests.Child(["run", "p.lua", "--input", "-", "--output", "none", "--grace", "20", "--report"], directory: dir)
        child.send(Self.events(1))
        #expect(try Self.waitForLine("attempt", from: child.errors.fileHandleForReading))
        let started = Date()
        kill(child.process.processIdentifier, SIGTERM)
        let (status, rest) = child.finish()
        #expect(status == 143, "\(rest)")
        #expect(Date().timeIntervalSince(started) < 15, "the stop waited for the backoff")
        #expect(!rest.contains("stop forced"), "\(rest)")
        #expect(rest.contains("scopelua: stopped while stage 'flaky' waited to retry line 1 (id 1): it was not finished (in flight)\n"), "\(rest)")
        // The retry it waited for never ran.
        #expect(rest.contains("read 1  emitted 0  filtered 0  skipped 0  dead-lettered 0  rejected 0  retried 0  in-flight 1 (line 1)"), "\(rest)")
    }

    /// Reads `handle` until a line equal to `marker` arrives (the child's readiness).
    static func waitForLine(_ marker: String, from handle: FileHandle) throws -> Bool {
        var text = ""
        while true {
            let data = handle.availableData
            if data.isEmpty { return false }
            text += String(decoding: data, as: UTF8.self)
            if text.split(separator: "\n").contains(Substring(marker)) { return true }
        }
    }

    @Test func emitInOpenIsAnError() {
        let run = runLua("""
            stage "s" { open = function(ctx) ctx:emit({ early = true }) end, process = function(ctx, e) return e end }
            local ok, e = pcall(function() return pipeline("p", { "s" }):run{ input = { {id = 1} } } end)
            return ok, e:match("^[^\\n]*")
            """)
        #expect(run.values == [.boolean(false),
                               .string("test:2: pipeline 'p': stage 's' failed to open: test:1: ctx:emit cannot be used in open (stage 's'): no event is flowing yet; emit from process or from a timer")])
    }

    @Test func theReportTableHasInFlight() {
        let run = runLua("""
            local r = pipeline("p", { { process = function(ctx, e) return e end } }):run{ input = { {id = 1} } }
            return r.in_flight, #r.in_flight_lines, r.fanout.in_flight
            """)
        #expect(run.values == [.integer(0), .integer(0), .integer(0)])
    }

    // MARK: - Item 19: the output over the input

    @Test func anOutputNamingTheInputIsAUsageErrorAndTruncatesNothing() throws {
        let dir = temporaryDirectory()
        write(Self.identity, to: "p.lua", in: dir)
        let input = Self.events(3)
        write(input, to: "in.jsonl", in: dir)
        _ = symlink("\(dir)/in.jsonl", "\(dir)/sym.jsonl")
        _ = link("\(dir)/in.jsonl", "\(dir)/hard.jsonl")
        for (option, path) in [("--output", "in.jsonl"), ("--output", "./in.jsonl"), ("--output", "sym.jsonl"),
                               ("--output", "hard.jsonl"), ("--dead-letter", "sym.jsonl"), ("--dead-letter", "hard.jsonl")] {
            let r = try scopelua(["run", "p.lua", "--input", "in.jsonl", option, path], directory: dir)
            #expect(r.status == 2, "\(option) \(path)")
            #expect(r.stderr == "scopelua: \(option) \(path) is the input file in.jsonl: it would be truncated before it is read\n")
            #expect(read("\(dir)/in.jsonl") == input)
        }
        // The input on stdin, or through a link as the input.
        let stdin = try Self.bash("$SCOPELUA run p.lua --input - --output in.jsonl < hard.jsonl", in: dir)
        #expect(stdin.status == 2)
        #expect(stdin.stderr == "scopelua: --output in.jsonl is the input file stdin: it would be truncated before it is read\n")
        let appended = try Self.bash("$SCOPELUA run p.lua --input in.jsonl >> sym.jsonl", in: dir)
        #expect(appended.status == 2)
        #expect(appended.stderr == "scopelua: the output (stdout) is the input file in.jsonl: it would grow while it is read\n")
        #expect(read("\(dir)/in.jsonl") == input)
        // From Lua: an error, nothing truncated.
        let fromLua = runLua("""
            return pcall(function() return pipeline("p", { { process = function(ctx, e) return e end } }):run{ input = "\(dir)/in.jsonl", output = "\(dir)/hard.jsonl" } end)
            """)
        #expect(fromLua.values == [.boolean(false),
                                   .string("test:1: the output \(dir)/hard.jsonl is the input file \(dir)/in.jsonl: it would be truncated before it is read")])
        #expect(read("\(dir)/in.jsonl") == input)
        // Different files are fine.
        let fine = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "out.jsonl"], directory: dir)
        #expect(fine.status == 0)
        #expect(read("\(dir)/out.jsonl") == input)
    }

    // MARK: - Item 3: numbers from outside never trap

    @Test func graceOutOfRangeIsAUsageError() throws {
        let dir = temporaryDirectory()
        write(Self.identity, to: "p.lua", in: dir)
        write(Self.events(1), to: "in.jsonl", in: dir)
        for value in ["1e20", "nan", "-1", "0", "inf", "86401"] {
            for before in [true, false] {
                // `--grace=-1`: as a separate word, -1 would be read as an option.
                let args = before ? ["run", "--grace=\(value)", "p.lua", "--input", "in.jsonl", "--output", "none"]
                                  : ["run", "p.lua", "--input", "in.jsonl", "--output", "none", "--grace", value]
                let r = try scopelua(args, directory: dir)
                #expect(r.status == 2, "--grace \(value): \(r.stderr)")
                #expect(r.stderr.contains("Error: --grace must be a number of seconds greater than 0 and at most 86400 (got '"), "\(r.stderr)")
            }
        }
        let fine = try scopelua(["run", "p.lua", "--input", "in.jsonl", "--output", "none", "--grace", "86400"], directory: dir)
        #expect(fine.status == 0)
    }

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
