import Foundation
import Testing
@testable import ScopeLua

/// The scripts users copy from must run.
@Suite(.timeLimit(testTimeLimit)) struct ExampleScriptTests {
    let events = "\(repositoryRoot)/scripts/data/events.jsonl"

    @Test func tour() throws {
        let dir = temporaryDirectory()
        let r = try scopelua(["run", "--report", "\(repositoryRoot)/scripts/tour.lua", events, "\(dir)/tour.log"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.hasPrefix("2000 lines, "))
        #expect(read("\(dir)/tour.log")?.hasSuffix("2000\t81\ndone\n") == true)
        #expect(r.stderr.contains("leaked 0"))
    }

    @Test func databaseCleanup() throws {
        let dir = temporaryDirectory()
        let r = try scopelua(["run", "\(repositoryRoot)/scripts/db_cleanup.lua", events, "\(dir)/events.db"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == "stored 1500 events (500 in rolled-back batches); table has 1500 rows\n")
        #expect(r.stderr.hasPrefix("batch rolled back: "))
        let check = runLua("local db <close> = sql.open('\(dir)/events.db'); return db:first('SELECT count(*) AS n, min(id) AS lo FROM events WHERE id BETWEEN 1000 AND 1499').n")
        #expect(check.values == [.integer(0)])
    }

    func runPipeline(_ script: String, _ extra: [String] = [], env: [String: String] = [:]) throws -> ProcessResult {
        let dir = temporaryDirectory()
        try FileManager.default.createDirectory(atPath: "\(dir)/out", withIntermediateDirectories: true)
        return try runProcess(scopeluaPath, ["run", "\(repositoryRoot)/scripts/\(script)", "--input", events, "--report"] + extra,
                              directory: dir, environment: env)
    }

    @Test func analytics() throws {
        let dir = temporaryDirectory()
        let r = try runPipeline("analytics.lua", ["--output", "\(dir)/kept.jsonl"], env: ["ANALYTICS_OUT": dir])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("seen=2000 kept=1327 click=618 buy=709"))
        #expect(r.stderr.contains("read 2000  emitted 1327  filtered 673  skipped 0  dead-lettered 0  rejected 0"))
        #expect((read("\(dir)/kept.jsonl") ?? "").split(separator: "\n").count == 1327)
        #expect((read("\(dir)/events.log") ?? "").split(separator: "\n").count == 1327)
        let rows = runLua("local db <close> = sql.open('\(dir)/analytics.db'); return db:first('SELECT count(*) AS n FROM events').n")
        #expect(rows.values == [.integer(1327)])
    }

    /// analytics.lua commits its rows in flush and keeps them when it resumes: a rerun of
    /// the same command with --checkpoint (after the run ended, so it resumes at the end of
    /// the input) changes neither the rows nor the output.
    @Test func analyticsResumesFromItsCheckpoint() throws {
        let dir = temporaryDirectory()
        let extra = ["--output", "\(dir)/kept.jsonl", "--checkpoint", "\(dir)/state.db", "--checkpoint-every", "500"]
        let first = try runPipeline("analytics.lua", extra, env: ["ANALYTICS_OUT": dir])
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stderr.contains("seen=2000 kept=1327 click=618 buy=709"))
        #expect(first.stderr.contains("committed after line 2000 (byte "), "\(first.stderr)")
        let again = try runPipeline("analytics.lua", extra, env: ["ANALYTICS_OUT": dir])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(again.stderr.contains("resumed after line 2000"), "\(again.stderr)")
        #expect(again.stderr.contains("read 2000  emitted 1327  filtered 673  skipped 0  dead-lettered 0  rejected 0"))
        #expect((read("\(dir)/kept.jsonl") ?? "").split(separator: "\n").count == 1327)
        let rows = runLua("local db <close> = sql.open('\(dir)/analytics.db'); return db:first('SELECT count(*) AS n FROM events').n")
        #expect(rows.values == [.integer(1327)])
    }

    @Test func logEvents() throws {
        let dir = temporaryDirectory()
        let r = try runPipeline("log_events.lua", ["--output", "none"], env: ["LOG_PATH": "\(dir)/log.jsonl"])
        #expect(r.status == 0, "\(r.stderr)")
        let log = read("\(dir)/log.jsonl") ?? ""
        #expect(log.split(separator: "\n").count == 2001)
        #expect(log.hasSuffix("# done\n"))
    }

    @Test func databaseStage() throws {
        let dir = temporaryDirectory()
        let r = try runPipeline("db_stage.lua", ["--output", "none"], env: ["DB_PATH": "\(dir)/db.sqlite"])
        #expect(r.status == 0, "\(r.stderr)")
        let rows = runLua("local db <close> = sql.open('\(dir)/db.sqlite'); return db:first('SELECT count(*) AS n FROM events').n")
        #expect(rows.values == [.integer(2000)])
        #expect(r.stderr.contains("leaked 0"))
    }

    @Test func timing() throws {
        let r = try runPipeline("timing.lua", ["--output", "none"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("             score           2000 "))
        #expect(r.stderr.contains("             buy_lookup       709 "))
    }

    @Test func nestedLifecycle() throws {
        let r = try runPipeline("nested.lua", ["--output", "none"])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stderr.split(separator: "\n").map(String.init).filter { $0.hasPrefix("open") || $0.hasPrefix("close") }
        #expect(lines == ["open  run/outer/parse", "open  run/outer/checks/validate", "open  run/outer/checks/enrich",
                          "open  run/outer/store", "close run/outer/store", "close run/outer/checks/enrich",
                          "close run/outer/checks/validate", "close run/outer/parse"])
    }
}
