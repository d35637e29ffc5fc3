import Foundation
import Testing
@testable import ScopeLua

/// The scripts users copy from must run.
@Suite struct ExampleScriptTests {
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
}
