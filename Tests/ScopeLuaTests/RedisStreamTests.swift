import Foundation
import Testing
@testable import ScopeLua

/// Redis streams as a pipeline's input (a consumer group) and output (issue 13), against
/// a real redis-server each test starts on a free loopback port.
@Suite(.timeLimit(testTimeLimit)) struct RedisStreamTests {
    /// A stage that records what it saw, and blocks (writing `reached`) at the event with
    /// id BLOCK_AT, or after BLOCK_AFTER events, until killed.
    static let job = """
        local env = os.getenv
        local function touch(p) local f <close> = assert(io.open(p, "w")) end
        local seen = 0
        stage "s" {
          process = function(ctx, e)
            seen = seen + 1
            if tonumber(env("BLOCK_AT")) == e.id or tonumber(env("BLOCK_AFTER")) == seen then
              touch(env("MARK") or "reached")
              while true do timer.sleep(0.01) end
            end
            if e.id == tonumber(env("FAIL")) then error("no such user") end
            e.by = env("CONSUMER")
            return e
          end,
          on_error = "dead_letter",
        }
        pipeline "p" { "s" }
        """

    static func setUp(_ server: RedisServer, entries: Int, stream: String = "events") throws -> String {
        let dir = temporaryDirectory()
        write(job, to: "job.lua", in: dir)
        // One XADD per entry through a pipe to redis-cli would be slow: a Lua script adds them.
        _ = try server.cli("EVAL", "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'event', '{\"id\":' .. i .. '}') end return 1",
                           "1", stream, String(entries))
        return dir
    }

    static func input(_ server: RedisServer, consumer: String, _ extra: String = "&idle_exit=0.5") -> String {
        "\(server.url)/events?group=g&consumer=\(consumer)&start=0\(extra)"
    }

    /// The ids in the output stream, sorted.
    static func outputIDs(_ server: RedisServer, stream: String = "out") throws -> [Int] {
        let text = try server.cli("EVAL", "local t = {} for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do t[#t + 1] = cjson.decode(e[2][2]).id end return table.concat(t, ',')",
                                  "1", stream)
        return text.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }.sorted()
    }

    static func pending(_ server: RedisServer) throws -> Int {
        Int(try server.cli("XPENDING", "events", "g").split(separator: "\n").first?.trimmingCharacters(in: .whitespaces) ?? "") ?? -1
    }

    static func start(_ arguments: [String], in dir: String, environment: [String: String]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: scopeluaPath)
        p.arguments = arguments
        p.currentDirectoryURL = URL(fileURLWithPath: dir)
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let name = environment["CONSUMER"] ?? "run"
        _ = FileManager.default.createFile(atPath: "\(dir)/stderr-\(name).txt", contents: nil)
        p.standardError = FileHandle(forWritingAtPath: "\(dir)/stderr-\(name).txt")
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        return p
    }

    /// The group is created (from the stream's start); every entry goes through to the
    /// output stream; nothing stays pending; dead letters and rejects name the entry id.
    @Test func aConsumerGroupDrainsAStreamIntoAnOutputStream() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let dir = try Self.setUp(server, entries: 300)
        _ = try server.cli("XADD", "events", "*", "event", "not json")
        let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", Self.input(server, consumer: "c1"),
                                              "--output", "\(server.url)/out", "--dead-letter", "dead.jsonl", "--report"],
                               directory: dir, environment: ["FAIL": "7", "CONSUMER": "c1"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try Self.outputIDs(server) == Array(1...6) + Array(8...300))
        #expect(try Self.pending(server) == 0)
        #expect(try server.cli("XINFO", "GROUPS", "events").contains("g"))
        #expect(r.stderr.contains("  events     read 301  emitted 299  filtered 0  skipped 0  dead-lettered 1  rejected 1"), "\(r.stderr)")
        let dead = read("\(dir)/dead.jsonl") ?? ""
        #expect(dead.contains("\"entry\":\""), "\(dead)")
        #expect(dead.contains("\"raw\":\"not json\""), "\(dead)")
        #expect(r.stderr.contains("the first on entry "), "\(r.stderr)")
        #expect(r.stderr.contains("  source     \(server.url)/events: acknowledged 301, claimed from other consumers 0"), "\(r.stderr)")
    }

    /// Killed with kill -9 between processing and the barrier: nothing it read after the
    /// last barrier was acknowledged, so a restart of the same consumer reads its own
    /// pending entries first, and every entry's effect is there.
    @Test func entriesAreAcknowledgedOnlyAfterTheBarrier() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let dir = try Self.setUp(server, entries: 400)
        let args = ["run", "job.lua", "--input", Self.input(server, consumer: "c1"), "--output", "\(server.url)/out",
                    "--checkpoint-every", "150"]
        let child = try Self.start(args, in: dir, environment: ["BLOCK_AT": "250", "CONSUMER": "c1"])
        defer { if child.isRunning { kill(child.processIdentifier, SIGKILL) } }
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(dir)/reached") })
        // The barrier after entry 150 acknowledged 1...150 (EventSource.ack(upTo:)).
        let pendingAtKill = try Self.pending(server)
        kill(child.processIdentifier, SIGKILL)
        child.waitUntilExit()
        // Exactly what was read after that barrier: 151...200 of the second read, and
        // 201...300, the read it blocked in (entries come 100 at a time).
        #expect(pendingAtKill == 150, "\(pendingAtKill) pending")
        #expect(try Self.pending(server) == pendingAtKill)
        let r = try runProcess(scopeluaPath, args, directory: dir, environment: ["CONSUMER": "c1"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(Set(try Self.outputIDs(server)) == Set(1...400))
        #expect(try Self.pending(server) == 0)
    }

    /// An entry whose processing kills its consumer is delivered again each restart; past
    /// max_deliveries it goes to the dead letters with its count and is acknowledged.
    @Test func aPoisonEntryReachesTheDeadLettersAfterMaxDeliveries() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let dir = try Self.setUp(server, entries: 20)
        // One entry at a time, acknowledged at once: only the poison entry is pending when
        // the consumer dies (entries read with it would be delivered again too).
        let args = ["run", "job.lua", "--input", Self.input(server, consumer: "c1", "&idle_exit=0.5&max_deliveries=2&count=1"),
                    "--output", "\(server.url)/out", "--dead-letter", "dead.jsonl", "--checkpoint-every", "1"]
        for _ in 1...2 {
            try? FileManager.default.removeItem(atPath: "\(dir)/reached")
            let child = try Self.start(args, in: dir, environment: ["BLOCK_AT": "5", "CONSUMER": "c1"])
            #expect(waitUntil { FileManager.default.fileExists(atPath: "\(dir)/reached") })
            kill(child.processIdentifier, SIGKILL)
            child.waitUntilExit()
        }
        let r = try runProcess(scopeluaPath, args, directory: dir, environment: ["BLOCK_AT": "5", "CONSUMER": "c1"])
        #expect(r.status == 0, "\(r.stderr)")
        let dead = read("\(dir)/dead.jsonl") ?? ""
        #expect(dead.contains("delivered 3 times, more than max_deliveries (2): a poison entry"), "\(dead)")
        #expect(dead.contains("\"raw\":\"event={\\\"id\\\":5}\""), "\(dead)")
        #expect(Set(try Self.outputIDs(server)) == Set((1...20).filter { $0 != 5 }))
        #expect(try Self.pending(server) == 0)
    }

    /// Three consumers of one group over 100 000 entries; one is killed with kill -9 in the
    /// middle; the others claim its pending entries once they are idle for claim_idle:
    /// every entry's effect is in the output stream, none missing, nothing pending.
    @Test func threeConsumersOneKilledTheOthersClaimItsEntries() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let total = 100_000
        let dir = try Self.setUp(server, entries: total)
        func args(_ c: String) -> [String] {
            ["run", "job.lua", "--input", Self.input(server, consumer: c, "&claim_idle=0.3&idle_exit=1&count=50"),
             "--output", "\(server.url)/out"]
        }
        let victim = try Self.start(args("c2"), in: dir, environment: ["BLOCK_AFTER": "500", "CONSUMER": "c2", "MARK": "c2-reached"])
        defer { if victim.isRunning { kill(victim.processIdentifier, SIGKILL) } }
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(dir)/c2-reached") })
        let others = try ["c1", "c3"].map { try Self.start(args($0), in: dir, environment: ["CONSUMER": $0]) }
        defer { for o in others where o.isRunning { kill(o.processIdentifier, SIGKILL) } }
        kill(victim.processIdentifier, SIGKILL)
        victim.waitUntilExit()
        for o in others {
            #expect(waitUntil(seconds: 50) { !o.isRunning })
            o.waitUntilExit()
            #expect(o.terminationStatus == 0, "\(read("\(dir)/stderr-c1.txt") ?? "")")
        }
        let ids = try Self.outputIDs(server)
        #expect(Set(ids) == Set(1...total), "\(Set(1...total).subtracting(ids).count) missing")
        #expect(try Self.pending(server) == 0)
    }

    /// Without idle_exit a consumer waits for new entries until SIGTERM, which ends it
    /// promptly (a read blocks at most `block`), after the final barrier acknowledged what
    /// it finished.
    @Test func sigtermEndsAConsumerWaitingForEntries() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let dir = try Self.setUp(server, entries: 10)
        let child = try Self.start(["run", "job.lua", "--input", Self.input(server, consumer: "c1", ""), "--output", "\(server.url)/out"],
                                   in: dir, environment: ["CONSUMER": "c1"])
        defer { if child.isRunning { kill(child.processIdentifier, SIGKILL) } }
        #expect(waitUntil { (try? Self.outputIDs(server)) == Array(1...10) })
        #expect(waitUntil { (try? Self.pending(server)) == 0 })  // acknowledged when the stream went idle
        _ = try server.cli("XADD", "events", "*", "event", "{\"id\":11}")
        #expect(waitUntil { (try? Self.outputIDs(server)) == Array(1...11) })
        kill(child.processIdentifier, SIGTERM)
        #expect(waitUntil(seconds: 5) { !child.isRunning })
        child.waitUntilExit()
        #expect(child.terminationStatus == 143, "\(read("\(dir)/stderr-c1.txt") ?? "")")
        #expect(try Self.pending(server) == 0)
    }

    /// idle_exit counts from the first read, not from the start: stages that take longer
    /// than idle_exit to open still get the whole stream.
    @Test func idleExitCountsFromTheFirstReadNotFromTheStart() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let dir = try Self.setUp(server, entries: 500)
        write("stage 'slow' { open = function() timer.sleep(0.6) end, process = function(ctx, e) return e end }\npipeline 'p' { 'slow' }\n",
              to: "slow.lua", in: dir)
        let r = try runProcess(scopeluaPath, ["run", "slow.lua", "--input", Self.input(server, consumer: "c1", "&idle_exit=0.2"),
                                              "--output", "\(server.url)/out", "--report"], directory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("  events     read 500  emitted 500"), "\(r.stderr)")
        #expect(try Self.pending(server) == 0)
    }

    @Test func badStreamURLsAndUnreachableServersAreClearErrors() throws {
        let dir = temporaryDirectory()
        write(Self.job, to: "job.lua", in: dir)
        let (listener, port) = try loopbackListener(backlog: 1)
        close(listener)  // nothing listens there now
        for (input, status, message) in [
            ("redis://127.0.0.1:\(port)/events?consumer=c", 1, "cannot read input redis://127.0.0.1:\(port)/events: a source needs ?group=NAME (the consumer group)"),
            ("redis://127.0.0.1:\(port)/events?group=g", 1, "a source needs &consumer=NAME"),
            ("redis://127.0.0.1:\(port)?group=g&consumer=c", 1, "no stream: write redis://host:port/STREAM"),
            ("redis://127.0.0.1:\(port)/events?group=g&consumer=c&colour=red", 1, "unknown parameter 'colour'"),
            ("redis://127.0.0.1:\(port)/events?group=g&consumer=c&count=0", 1, "count must be a number from 1 to 100000 (got '0')"),
            ("redis://127.0.0.1:\(port)/events?group=%zz&consumer=c", 1, "parameter 'group' has a bad percent-escape or is not UTF-8"),
            ("redis://127.0.0.1:\(port)/events?group=g&consumer=c", 1, "cannot connect to redis://127.0.0.1:\(port): Connection refused"),
        ] {
            let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", input, "--output", "none"], directory: dir)
            #expect(r.status == Int32(status), "\(input): \(r.stderr)")
            #expect(r.stderr.contains(message), "\(input): \(r.stderr)")
        }
        let stream = "redis://127.0.0.1:1/e?group=g&consumer=c"
        for (extra, message) in [
            (["--checkpoint", "s.db"], "a Redis stream input needs no checkpoint file: the consumer group's pending list is its checkpoint"),
            (["--workers", "2"], "--workers with a Redis stream input: run several scopelua processes as consumers of the group instead"),
            (["--follow"], "--follow follows a file: a Redis stream input is read until SIGINT/SIGTERM"),
        ] {
            let r = try runProcess(scopeluaPath, ["run", "job.lua", "--input", stream] + extra, directory: dir)
            #expect(r.status == 2, "\(extra): \(r.stderr)")
            #expect(r.stderr.contains(message), "\(extra): \(r.stderr)")
        }
        // An output stream nothing listens for: the run fails before any stage opens.
        write("{\"id\":1}\n", to: "in.jsonl", in: dir)
        let out = try runProcess(scopeluaPath, ["run", "job.lua", "--input", "in.jsonl", "--output", "redis://127.0.0.1:\(port)/out"], directory: dir)
        #expect(out.status == 1, "\(out.stderr)")
        #expect(out.stderr.contains("scopelua: cannot open output cannot connect to redis://127.0.0.1:\(port): Connection refused"), "\(out.stderr)")
    }
}
