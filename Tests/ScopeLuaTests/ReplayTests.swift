import Foundation
import Testing
@testable import ScopeLua

/// Dead-letter replay (issue 11): `--replay` puts each dead-letter record's event back
/// into the stage that failed, re-reads rejected lines from their raw text, counts
/// replayed records and marks what fails again with its attempt. Every dead-letter
/// file replayed here was written by a run of the test itself.
@Suite(.timeLimit(testTimeLimit)) struct ReplayTests {
    /// Each stage appends its name to `trail`, so the output says which stages ran: an
    /// event replayed into `c` ends as "abcd" (a and b ran in the first run), one whose
    /// earlier stages ran again would end as "ababcd". `c` sits in a nested pipeline
    /// (its place in the flattened list is 3rd) and fails on even ids until the global
    /// FIXED is set (`-e FIXED=true`: the "fixed" script). `b` emits id 40 for id 4,
    /// which fails in `c` too (a dead letter with `emitted`).
    static let job = """
        local function mark(name) return function(ctx, e) e.trail = (e.trail or "") .. name; return e end end
        stage "a" { process = mark("a") }
        stage "b" { process = function(ctx, e)
          e.trail = (e.trail or "") .. "b"
          if e.id == 4 then ctx:emit({ id = 40, trail = e.trail }) end
          return e
        end }
        stage "c" { process = function(ctx, e)
          if not FIXED and e.id % 2 == 0 then error("bug on " .. e.id) end
          e.trail = e.trail .. "c"
          return e
        end }
        stage "d" { process = mark("d") }
        pipeline "inner" { "b", "c" }
        pipeline "p" { "a", "inner", "d", on_error = "dead_letter" }
        """

    /// Lines 3 (bad JSON) and 6 (not an object) are rejected; ids 2, 4 and 40 (emitted
    /// for line 5) are dead-lettered by `c`.
    static let input = "{\"id\":1}\n{\"id\":2}\n{bad\n{\"id\":3}\n{\"id\":4}\n[1]\n"

    /// A directory with job.lua, in.jsonl and dead.jsonl written by a first (buggy) run.
    static func firstRun() throws -> String {
        let dir = temporaryDirectory()
        write(job, to: "job.lua", in: dir)
        write(input, to: "in.jsonl", in: dir)
        let r = try scopelua(["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--dead-letter", "dead.jsonl"], directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(Set(try objects("\(dir)/out.jsonl").map { "\($0["id"] ?? "") \($0["trail"] ?? "")" }) == ["1 abcd", "3 abcd"])
        return dir
    }

    /// The JSON objects of a JSON-lines file.
    static func objects(_ path: String) throws -> [[String: Any]] {
        let text = read(path) ?? ""
        return try text.split(separator: "\n").map { line in
            let value = try JSONSerialization.jsonObject(with: Data(line.utf8))
            return try #require(value as? [String: Any], "not an object: \(line)")
        }
    }

    /// The event records of a dead-letter file, by event id: (stage, line, attempt, emitted).
    static func eventRecords(_ path: String) throws -> [Int: (stage: String, line: Int?, attempt: Int?, emitted: Bool)] {
        var result: [Int: (stage: String, line: Int?, attempt: Int?, emitted: Bool)] = [:]
        for r in try objects(path) {
            guard let event = r["event"] as? [String: Any], let id = event["id"] as? Int else { continue }
            result[id] = (r["stage"] as? String ?? "", r["line"] as? Int, r["attempt"] as? Int, r["emitted"] as? Bool ?? false)
        }
        return result
    }

    /// The rejected-line records of a dead-letter file: raw text, line, attempt.
    static func rejectRecords(_ path: String) throws -> [(raw: String, line: Int?, attempt: Int?, replay: Bool)] {
        try objects(path).filter { $0["raw"] != nil }.map {
            ($0["raw"] as? String ?? "", $0["line"] as? Int, $0["attempt"] as? Int, $0["replay"] as? Bool ?? false)
        }
    }

    /// `  events     read 5  emitted 3 ... replayed 5` as a dictionary.
    static func counts(_ stderr: String) -> [String: Int] { PipelineIOTests.counts(stderr) }

    /// Calls of `stage` in the `--report` stage table.
    static func calls(_ stderr: String, stage: String) -> Int? {
        for line in stderr.split(separator: "\n") {
            let words = line.split(separator: " ")
            if words.count > 2, words[0] == Substring(stage), !line.hasPrefix("  stages") { return Int(words[1]) }
        }
        return nil
    }

    @Test func theFirstRunDeadLettersTheEventsAtTheStageThatFailed() throws {
        let dir = try Self.firstRun()
        let records = try Self.eventRecords("\(dir)/dead.jsonl")
        #expect(Set(records.keys) == [2, 4, 40])
        #expect(records[2]?.stage == "c" && records[2]?.line == 2 && records[2]?.attempt == nil && records[2]?.emitted == false)
        #expect(records[4]?.line == 5 && records[40]?.line == 5 && records[40]?.emitted == true)
        #expect(try Self.rejectRecords("\(dir)/dead.jsonl").map(\.raw) == ["{bad", "[1]"])
    }

    @Test func afterTheFixReplayedEventsFinishFromTheStageThatFailed() throws {
        let dir = try Self.firstRun()
        let r = try scopelua(["run", "-e", "FIXED=true", "job.lua", "--input", "dead.jsonl", "--replay",
                              "--output", "out2.jsonl", "--dead-letter", "dead2.jsonl", "--report"], directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        // Exactly the dead-lettered events, each processed by c and d only.
        let out = try Self.objects("\(dir)/out2.jsonl")
        #expect(out.count == 3)
        #expect(Set(out.map { "\($0["id"] ?? "") \($0["trail"] ?? "")" }) == ["2 abcd", "4 abcd", "40 abcd"])
        #expect(Self.calls(r.stderr, stage: "a") == 0, "\(r.stderr)")
        #expect(Self.calls(r.stderr, stage: "b") == 0)
        #expect(Self.calls(r.stderr, stage: "c") == 3)
        #expect(Self.calls(r.stderr, stage: "d") == 3)
        // The report counts the replayed records (the two rejected lines were read
        // again too); the accounting still adds up.
        let c = Self.counts(r.stderr)
        #expect(c["read"] == 5 && c["emitted"] == 3 && c["rejected"] == 2 && c["replayed"] == 5, "\(r.stderr)")
        #expect(PipelineIOTests.addsUp(c))
        #expect(r.stderr.contains("scopelua: pipeline 'p': read 5, emitted 3, filtered 0, skipped 0, dead-lettered 0, rejected 2, replayed 5 in "), "\(r.stderr)")
        #expect(try Self.eventRecords("\(dir)/dead2.jsonl").isEmpty)
    }

    @Test func anEventThatFailsAgainIsDeadLetteredWithItsAttemptAndOriginalLine() throws {
        let dir = try Self.firstRun()
        let r = try scopelua(["run", "job.lua", "--input", "dead.jsonl", "--replay", "--output", "out2.jsonl",
                              "--dead-letter", "dead2.jsonl", "--report"], directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(read("\(dir)/out2.jsonl") == "")
        let again = try Self.eventRecords("\(dir)/dead2.jsonl")
        #expect(Set(again.keys) == [2, 4, 40])
        #expect(again[2]?.stage == "c" && again[2]?.line == 2 && again[2]?.attempt == 2 && again[2]?.emitted == false)
        #expect(again[4]?.line == 5 && again[4]?.attempt == 2)
        #expect(again[40]?.line == 5 && again[40]?.attempt == 2 && again[40]?.emitted == true)
        // The message names the original line and where it was replayed from.
        #expect(r.stderr.contains("scopelua: stage 'c' failed on line 2 (replayed from line 1, attempt 2) (id 2): job.lua:"), "\(r.stderr)")
        let c = Self.counts(r.stderr)
        #expect(c["dead-lettered"] == 3 && c["replayed"] == 5 && PipelineIOTests.addsUp(c), "\(r.stderr)")
        // And once more: the attempt goes on counting from the record's own.
        let r3 = try scopelua(["run", "job.lua", "--input", "dead2.jsonl", "--replay", "--output", "none",
                               "--dead-letter", "dead3.jsonl"], directory: dir)
        #expect(r3.status == 0, "\(r3.stderr)")
        let third = try Self.eventRecords("\(dir)/dead3.jsonl")
        #expect(third.values.map(\.attempt) == [3, 3, 3])
        #expect(third[2]?.line == 2)
        #expect(try Self.rejectRecords("\(dir)/dead3.jsonl").map(\.attempt) == [3, 3])
    }

    @Test func rejectedLinesAreReadAgainFromTheirRawText() throws {
        let dir = try Self.firstRun()
        // A record whose raw text is valid JSON (someone mended it by hand in the file)
        // goes through the whole pipeline; the others are rejected again.
        let mended = #"{"line":8,"raw":"{\"id\":6}","error":"not valid JSON: ...","time":0}"#
        try (read("\(dir)/dead.jsonl").map { $0 + mended + "\n" } ?? "").write(toFile: "\(dir)/dead.jsonl", atomically: true, encoding: .utf8)
        let r = try scopelua(["run", "-e", "FIXED=true", "job.lua", "--input", "dead.jsonl", "--replay",
                              "--output", "out2.jsonl", "--dead-letter", "dead2.jsonl", "--report"], directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        let out = try Self.objects("\(dir)/out2.jsonl")
        #expect(out.contains { $0["id"] as? Int == 6 && $0["trail"] as? String == "abcd" }, "\(out)")
        #expect(out.count == 4)
        let rejected = try Self.rejectRecords("\(dir)/dead2.jsonl")
        #expect(rejected.map(\.raw) == ["{bad", "[1]"])
        #expect(rejected.map(\.line) == [3, 6])
        #expect(rejected.map(\.attempt) == [2, 2])
        #expect(rejected.allSatisfy { !$0.replay })
        #expect(r.stderr.contains("scopelua: input line 3 (replayed from line 2, attempt 2) rejected: not valid JSON: "), "\(r.stderr)")
        let c = Self.counts(r.stderr)
        #expect(c["read"] == 6 && c["emitted"] == 4 && c["rejected"] == 2 && c["replayed"] == 6 && PipelineIOTests.addsUp(c), "\(r.stderr)")
    }

    @Test func aRecordForAnUnknownStageOrNoRecordIsRejectedWithItsLineAndCanBeReplayedLater() throws {
        let dir = try Self.firstRun()
        // The stage was renamed: its records cannot be replayed into this pipeline.
        write(Self.job.replacingOccurrences(of: "\"c\"", with: "\"c2\""), to: "renamed.lua", in: dir)
        let dead = read("\(dir)/dead.jsonl") ?? ""
        write(dead + "{\"id\":7}\n[2]\n", to: "dead.jsonl", in: dir)
        let r = try scopelua(["run", "renamed.lua", "--input", "dead.jsonl", "--replay", "--output", "out2.jsonl",
                              "--dead-letter", "dead2.jsonl", "--report"], directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(read("\(dir)/out2.jsonl") == "")
        let lines = (read("\(dir)/dead.jsonl") ?? "").split(separator: "\n")
        let first = try #require(lines.firstIndex { $0.contains("\"stage\":\"c\"") }) + 1
        #expect(r.stderr.contains("scopelua: input line \(first) rejected: cannot replay the dead-letter record: stage 'c' is not in pipeline 'p' (its stages: a, b, c2, d)"), "\(r.stderr)")
        let c = Self.counts(r.stderr)
        #expect(c["read"] == 7 && c["rejected"] == 7 && c["replayed"] == 2 && PipelineIOTests.addsUp(c), "\(r.stderr)")
        #expect(r.stderr.contains("input: 7 rejected"), "\(r.stderr)")
        let records = try Self.objects("\(dir)/dead2.jsonl")
        let notARecord = try #require(records.first { $0["raw"] as? String == "{\"id\":7}" })
        #expect(notARecord["line"] as? Int == 6)
        #expect(notARecord["error"] as? String == "not a dead-letter record: neither \"event\" and \"stage\" nor \"raw\"")
        #expect(notARecord["replay"] as? Bool == true)
        let notAnObject = try #require(records.first { $0["raw"] as? String == "[2]" })
        #expect(notAnObject["line"] as? Int == 7 && notAnObject["error"] as? String == "not a JSON object")
        // Each unusable line keeps the record it held: with the stage back (and fixed),
        // a replay of this file replays those records.
        let r2 = try scopelua(["run", "-e", "FIXED=true", "job.lua", "--input", "dead2.jsonl", "--replay",
                               "--output", "out3.jsonl", "--dead-letter", "dead3.jsonl", "--report"], directory: dir)
        #expect(r2.status == 0, "\(r2.stderr)")
        #expect(Set(try Self.objects("\(dir)/out3.jsonl").map { "\($0["id"] ?? "") \($0["trail"] ?? "")" }) == ["2 abcd", "4 abcd", "40 abcd"])
        let c2 = Self.counts(r2.stderr)
        #expect(c2["read"] == 7 && c2["emitted"] == 3 && c2["rejected"] == 4 && PipelineIOTests.addsUp(c2), "\(r2.stderr)")
    }

    @Test func pRunReplaysFromLua() throws {
        let dir = temporaryDirectory()
        let job = Self.job.replacingOccurrences(of: "pipeline \"p\"", with: "local p = pipeline \"p\"")
        let run = runLua("""
            \(job)
            local dead = "\(dir)/dead.jsonl"
            local first = p:run{ input = { { id = 1 }, { id = 2 } }, output = function() end, dead_letter = dead }
            assert(first.dead_lettered == 1 and first.replayed == 0, "first run")
            FIXED = true
            local report = p:run{ input = dead, replay = true }
            local list = p:run{ replay = true, input = {
              { stage = "c", event = { id = 8, trail = "ab" }, line = 3 },
              { raw = '{"id":9}', line = 4 },
              { stage = "nope", event = {} },
            } }
            return report.replayed, report.read, report.output[1].id, report.output[1].trail, #report.output,
                   list.replayed, list.rejected, list.output[1].trail, list.output[2].trail
            """)
        #expect(run.error == nil, "\(String(describing: run.error)) \(run.diagnostics)")
        #expect(run.values.map(\.description) == ["1", "1", "2", "abcd", "1", "2", "1", "abcd", "abcd"], "\(run.diagnostics)")
        #expect(run.diagnostics.contains { $0.contains("input event 3 rejected: cannot replay the dead-letter record: stage 'nope' is not in pipeline 'p'") },
                "\(run.diagnostics)")
    }

    @Test func theCommandLineExplainsReplayAndNeedsAnInput() throws {
        let help = try scopelua(["run", "--help"])
        #expect(help.stdout.contains("--replay"), "\(help.stdout)")
        #expect(help.stdout.contains("dead-letter file"))
        let dir = temporaryDirectory()
        write(Self.job, to: "job.lua", in: dir)
        let r = try scopelua(["run", "job.lua", "--replay"], directory: dir)
        #expect(r.status == 2)
        #expect(r.stderr.hasPrefix("Error: --replay needs --input FILE (the dead-letter file to replay)"), "\(r.stderr)")
    }
}
