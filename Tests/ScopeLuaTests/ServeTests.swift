import Foundation
import Testing
@testable import ScopeLua

/// `scopelua serve` over real HTTP on a free loopback port: each body format, per-line
/// rejects, 413, backpressure, a graceful stop with requests in flight, a client that
/// hangs up mid-request.
@Suite(.timeLimit(testTimeLimit))
struct ServeTests {
    /// A stage that dead-letters `bad` events; with `gate`, an event with `wait = true`
    /// writes `started` and then holds the run until the file `go` exists.
    static let job = """
        stage "enrich" {
          on_error = "dead_letter",
          process = function(ctx, e)
            if e.bad then error("bad event") end
            if e.wait then
              local f = assert(io.open("started", "w")) f:close()
              while not io.open("go") do os.execute("sleep 0.01") end
            end
            e.seen = true
            return e
          end,
        }
        pipeline "p" { "enrich" }
        """

    static func start(_ extra: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) throws -> ServeProcess {
        let dir = temporaryDirectory()
        write(job, to: "job.lua", in: dir)
        return try ServeProcess(["job.lua", "--output", "out.jsonl", "--dead-letter", "dead.jsonl", "--report"] + extra, in: dir,
                                sourceLocation: sourceLocation)
    }

    static func lines(_ path: String) -> [String] {
        (read(path) ?? "").split(separator: "\n").map(String.init)
    }

    /// The JSON objects of a JSON-lines file (key order aside).
    static func objects(_ path: String) -> [NSDictionary] {
        objects(from: lines(path))
    }

    static func objects(from lines: [String]) -> [NSDictionary] {
        lines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? NSDictionary }
    }

    @Test func jsonLinesWithRejectsAndDeadLetters() throws {
        let s = try Self.start()
        let r = HTTPClient.post(s.port, "/events", "{\"a\":1}\n{\"bad\":true}\nnot json\n\n{\"a\":2}\n")
        #expect(r?.status == 200)
        #expect(r?.body == """
            {"accepted":3,"rejected":[{"line":3,"reason":"not valid JSON: Expected value but found invalid token at character 1"}],"dead_lettered":1}

            """)
        // A 200 means durable: the output and dead letters are on disk now.
        #expect(Self.lines("\(s.directory)/out.jsonl").count == 2)
        #expect(Self.lines("\(s.directory)/dead.jsonl").count == 2)  // the dead letter and the rejected line
        #expect(s.stop() == 143)
    }

    @Test func anArrayOfObjectsAndOneObject() throws {
        let s = try Self.start()
        let array = HTTPClient.post(s.port, "/events", " [ {\"a\":1}, {\"b\":[1,\"]\"]}, 5 ] ")
        #expect(array?.body == "{\"accepted\":2,\"rejected\":[{\"line\":3,\"reason\":\"not a JSON object\"}],\"dead_lettered\":0}\n")
        let one = HTTPClient.post(s.port, "/events", "{\n  \"c\": 3,\n  \"d\": {\"e\": 4}\n}\n")
        #expect(one?.body == "{\"accepted\":1,\"rejected\":[],\"dead_lettered\":0}\n")
        let broken = HTTPClient.post(s.port, "/events", "[{\"a\":1}, {\"a\":")
        #expect(broken?.status == 400)
        #expect(broken?.body == "{\"error\":\"not a JSON array: the array's element 2 does not end (unbalanced brackets or an unterminated string)\"}\n")
        let empty = HTTPClient.post(s.port, "/events", " \n ")
        #expect(empty?.status == 400)
        #expect(s.stop() == 143)
        #expect(Self.objects("\(s.directory)/out.jsonl") == Self.objects(from: [
            "{\"seen\":true,\"a\":1}", "{\"seen\":true,\"b\":[1,\"]\"]}", "{\"seen\":true,\"c\":3,\"d\":{\"e\":4}}"]))
    }

    @Test func aBodyOverMaxBodyIs413AndTakesNothing() throws {
        let s = try Self.start(["--max-body", "64"])
        let r = HTTPClient.post(s.port, "/events", String(repeating: "{\"a\":1}\n", count: 20))
        #expect(r?.status == 413)
        #expect(r?.body == "{\"error\":\"the body is over --max-body (64 bytes)\"}\n")
        #expect(HTTPClient.post(s.port, "/events", "{\"a\":1}")?.status == 200)
        #expect(s.stop() == 143)
        #expect(Self.lines("\(s.directory)/out.jsonl").count == 1)
    }

    /// One event holds the run; two more fill a queue of 2; the next request is refused
    /// with 503 and Retry-After, and nothing of it is taken. Released, the held ones finish.
    @Test func aFullQueueIs503WithRetryAfter() throws {
        let s = try Self.start(["--queue", "2"])
        let held = Held(), port = s.port
        Thread { held.set(HTTPClient.post(port, "/events", "{\"wait\":true}")) }.start()
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(s.directory)/started") })
        let queued = Held()
        Thread { queued.set(HTTPClient.post(port, "/events", "{\"q\":1}\n{\"q\":2}")) }.start()
        // The two wait in the queue (their request is answered only once they are
        // through). A request of 3 events never fits a queue of 2, so it is refused at
        // once, and its message says how many wait: the readiness marker.
        #expect(waitUntil {
            HTTPClient.post(s.port, "/events", "{}\n{}\n{}")?.body.contains("(2 events wait, --queue 2)") == true
        })
        let refused = HTTPClient.post(s.port, "/events", "{\"r\":1}")
        #expect(refused?.status == 503)
        #expect(refused?.headers["retry-after"] == "1")
        #expect(refused?.body == "{\"error\":\"the queue is full (2 events wait, --queue 2)\"}\n")
        write("", to: "go", in: s.directory)
        #expect(waitUntil { held.value?.status == 200 && queued.value?.status == 200 })
        #expect(queued.value?.body == "{\"accepted\":2,\"rejected\":[],\"dead_lettered\":0}\n")
        #expect(s.stop() == 143)
        let out = Self.lines("\(s.directory)/out.jsonl")
        #expect(out.count == 3 && !out.contains { $0.contains("\"r\"") }, "\(out)")
    }

    /// SIGTERM with one request in the stage and one queued: new requests get 503, the
    /// two finish and are answered 200 with their events on disk; exit 143.
    @Test func aGracefulStopAnswersWhatItTookAndRefusesTheRest() throws {
        let s = try Self.start()
        let held = Held(), queued = Held(), port = s.port
        Thread { held.set(HTTPClient.post(port, "/events", "{\"wait\":true}")) }.start()
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(s.directory)/started") })
        Thread { queued.set(HTTPClient.post(port, "/events", "{\"q\":1}\n{\"q\":2}")) }.start()
        // Queued (the readiness marker: /metrics' queue depth), and not answered yet.
        #expect(waitUntil { MetricsTests.value(MetricsTests.scrape(port), "scopelua_ingest_queue_depth") == 2 })
        #expect(HTTPClient.get(port, "/readyz")?.status == 200)
        #expect(queued.value == nil)
        kill(s.process.processIdentifier, SIGTERM)
        #expect(waitUntil { HTTPClient.get(s.port, "/readyz")?.status == 503 })
        let late = HTTPClient.post(s.port, "/events", "{\"late\":1}")
        #expect(late?.status == 503)
        #expect(late?.body == "{\"error\":\"the server is stopping\"}\n")
        write("", to: "go", in: s.directory)
        #expect(waitUntil { !s.process.isRunning })
        #expect(s.stop() == 143)
        #expect(held.value?.status == 200)
        #expect(queued.value?.status == 200)
        let out = Self.lines("\(s.directory)/out.jsonl")
        #expect(out.count == 3 && !out.contains { $0.contains("late") }, "\(out)")
    }

    /// A run that aborts while requests are taken: the one whose event aborted it and the
    /// one queued behind are answered 503 "not done" (never 200), the server stops, exit 1.
    @Test func anAbortAnswersWhatWasTakenAsNotDone() throws {
        let dir = temporaryDirectory()
        write(Self.job.replacingOccurrences(of: "on_error = \"dead_letter\"", with: "on_error = \"abort\""), to: "job.lua", in: dir)
        let s = try ServeProcess(["job.lua", "--output", "out.jsonl"], in: dir)
        let held = Held(), queued = Held(), port = s.port
        Thread { held.set(HTTPClient.post(port, "/events", "{\"wait\":true}\n{\"bad\":true}")) }.start()
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(dir)/started") })
        Thread { queued.set(HTTPClient.post(port, "/events", "{\"q\":1}")) }.start()
        #expect(waitUntil { MetricsTests.value(MetricsTests.scrape(port), "scopelua_ingest_queue_depth") == 1 })
        write("", to: "go", in: dir)
        #expect(waitUntil { held.value != nil && queued.value != nil })
        #expect(held.value?.status == 503)
        #expect(held.value?.body.hasPrefix("{\"error\":\"not done: pipeline 'p' aborted: stage 'enrich' failed on line 2: job.lua:4: bad event") == true,
                "\(held.value?.body ?? "")")
        #expect(queued.value?.status == 503)
        // It stops by itself (a signal now would kill it while its server shuts down).
        #expect(waitUntil { !s.process.isRunning })
        #expect(s.stop() == 1)
        #expect(s.stderr.contains("scopelua: pipeline 'p' aborted: stage 'enrich' failed on line 2"), "\(s.stderr)")
    }

    /// A port another process listens on: the error names it, exit 1, nothing runs.
    @Test func anAddressInUseIsAnError() throws {
        let s = try Self.start()
        let r = try scopelua(["serve", "--listen", "127.0.0.1:\(s.port)", "job.lua"], directory: s.directory)
        #expect(r.status == 1)
        #expect(r.stderr.hasPrefix("scopelua: cannot listen on 127.0.0.1:\(s.port): "), "\(r.stderr)")
        #expect(s.stop() == 143)
    }

    /// A client that sends half a body and hangs up: nothing is taken, the server goes on.
    @Test func aClientThatHangsUpMidRequest() throws {
        let s = try Self.start()
        if let fd = HTTPClient.connect(s.port) {
            HTTPClient.send(fd, Array("POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"half\":".utf8))
            close(fd)
        }
        let r = HTTPClient.post(s.port, "/events", "{\"a\":1}")
        #expect(r?.status == 200)
        #expect(s.stop() == 143)
        #expect(Self.objects("\(s.directory)/out.jsonl") == Self.objects(from: ["{\"seen\":true,\"a\":1}"]))
    }

    /// With --workers 2: a request's events go to one worker (600 events: taken in parts
    /// of 256, each to the worker that had the first), rejects and dead letters are
    /// reported from the workers by line, and the answer comes once all are through.
    @Test func withTwoWorkers() throws {
        let s = try Self.start(["--workers", "2"])
        let small = HTTPClient.post(s.port, "/events", "{\"a\":1}\n{\"bad\":true}\nnot json\n{\"a\":2}")
        #expect(small?.body == """
            {"accepted":3,"rejected":[{"line":3,"reason":"not valid JSON: Expected value but found invalid token at character 1"}],"dead_lettered":1}

            """)
        let many = (1...600).map { $0 == 300 ? "{\"bad\":true}" : $0 == 500 ? "[]" : "{\"i\":\($0)}" }.joined(separator: "\n")
        let big = HTTPClient.post(s.port, "/events", many)
        #expect(big?.body == "{\"accepted\":599,\"rejected\":[{\"line\":500,\"reason\":\"not a JSON object\"}],\"dead_lettered\":1}\n")
        #expect(Self.lines("\(s.directory)/out.jsonl").count == 2 + 598)
        #expect(s.stop() == 143)
        // One request after the other, each to the worker with the fewest lines to do (the
        // first of equals): worker 1.
        #expect(s.stderr.contains("  worker 1   read 604 "), "\(s.stderr)")
        #expect(s.stderr.contains("  worker 2   read 0 "), "\(s.stderr)")
    }

    /// Each worker's thread is named for it (what `top -H`, `ps -L` and perf show), so an
    /// operator can tell a busy worker from the coordinator (the main thread) and HTTP.
    @Test func workerThreadsAreNamed() throws {
        let s = try Self.start(["--workers", "2"])
        let tasks = "/proc/\(s.process.processIdentifier)/task"
        let names = try FileManager.default.contentsOfDirectory(atPath: tasks).compactMap {
            read("\(tasks)/\($0)/comm")?.trimmingCharacters(in: .newlines)
        }
        #expect(names.filter { $0.hasPrefix("scopelua-w") }.sorted() == ["scopelua-w1", "scopelua-w2"], "\(names)")
        #expect(s.stop() == 143)
    }

    /// A stage that holds an event with `wait = true` until the file `go` exists (after
    /// writing `started`), and marks an event with `mark = "name"` by making that file.
    static func gatedJob(ordering: String) -> String {
        """
        stage "enrich" {
          process = function(ctx, e)
            if e.wait then
              local f = assert(io.open("started", "w")) f:close()
              while not io.open("go") do os.execute("sleep 0.01") end
            end
            if e.mark then local f = assert(io.open(e.mark, "w")) f:close() end
            return e
          end,
        }
        pipeline "p" { "enrich"\(ordering) }
        """
    }

    /// With workers, a request waits for the barrier of the worker that had its events,
    /// not for every worker's, and (serve's default order: each request's) not for the
    /// lines the other worker took before it: while one worker holds an event, a request
    /// the other worker took is answered, its events on disk; the held one once it is let
    /// go. (With one barrier for all workers, or the output in arrival order, the second
    /// answer waited for the held event.)
    @Test(arguments: ["", ", ordered = false"])
    func aRequestWaitsOnlyForItsOwnWorkersBarrier(ordering: String) throws {
        let dir = temporaryDirectory()
        write(Self.gatedJob(ordering: ordering), to: "job.lua", in: dir)
        let s = try ServeProcess(["job.lua", "--output", "out.jsonl", "--workers", "2"], in: dir)
        let held = Held(), port = s.port
        Thread { held.set(HTTPClient.post(port, "/events", "{\"wait\":true}")) }.start()
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(s.directory)/started") })
        let other = HTTPClient.post(port, "/events", "{\"b\":1}\n{\"b\":2}")
        #expect(other?.body == "{\"accepted\":2,\"rejected\":[],\"dead_lettered\":0}\n")
        #expect(held.value == nil)
        #expect(Self.objects("\(s.directory)/out.jsonl").map { $0["b"] as? Int } == [1, 2])
        write("", to: "go", in: s.directory)
        #expect(waitUntil { held.value?.status == 200 })
        #expect(held.value?.body == "{\"accepted\":1,\"rejected\":[],\"dead_lettered\":0}\n")
        #expect(s.stop() == 143)
        #expect(Self.objects("\(s.directory)/out.jsonl").map { $0["b"] as? Int } == [1, 2, nil])
    }

    /// `ordered = true` said on the pipeline keeps the server's arrival order in serve too:
    /// the other worker's request, done while the first one's event is held, is written
    /// (and answered) after it.
    @Test func anOrderedPipelineKeepsArrivalOrder() throws {
        let dir = temporaryDirectory()
        write(Self.gatedJob(ordering: ", ordered = true"), to: "job.lua", in: dir)
        let s = try ServeProcess(["job.lua", "--output", "out.jsonl", "--workers", "2"], in: dir)
        let held = Held(), other = Held(), port = s.port
        Thread { held.set(HTTPClient.post(port, "/events", "{\"wait\":true}")) }.start()
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(s.directory)/started") })
        Thread { other.set(HTTPClient.post(port, "/events", "{\"b\":1}\n{\"b\":2,\"mark\":\"b-done\"}")) }.start()
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(s.directory)/b-done") })
        write("", to: "go", in: s.directory)
        #expect(waitUntil { held.value?.status == 200 && other.value?.status == 200 })
        #expect(s.stop() == 143)
        #expect(Self.objects("\(s.directory)/out.jsonl").map { $0["b"] as? Int } == [nil, 1, 2])
    }

    /// A request too big for one take (256 events) is cut; with workers its rest goes to
    /// the worker that has its beginning, so its events come out in order even while that
    /// worker is held on its first event and the other worker is free.
    @Test func aCutRequestStaysOnOneWorker() throws {
        let dir = temporaryDirectory()
        write(Self.gatedJob(ordering: ""), to: "job.lua", in: dir)
        let s = try ServeProcess(["job.lua", "--output", "out.jsonl", "--workers", "2", "--report"], in: dir)
        let held = Held(), port = s.port
        let body = (["{\"wait\":true,\"i\":1}"] + (2...600).map { "{\"i\":\($0)}" }).joined(separator: "\n")
        Thread { held.set(HTTPClient.post(port, "/events", body)) }.start()
        #expect(waitUntil { FileManager.default.fileExists(atPath: "\(s.directory)/started") })
        write("", to: "go", in: s.directory)
        #expect(waitUntil { held.value?.status == 200 })
        #expect(held.value?.body == "{\"accepted\":600,\"rejected\":[],\"dead_lettered\":0}\n")
        #expect(s.stop() == 143)
        #expect(Self.objects("\(s.directory)/out.jsonl").map { $0["i"] as? Int } == Array(1...600))
        #expect(s.stderr.contains("  worker 1   read 600 ") && s.stderr.contains("  worker 2   read 0 "), "\(s.stderr)")
    }

    /// With workers, a stage whose flush fails at a worker's own barrier: the request it
    /// was to make durable is answered 503 "not done" (never 200), the run stops with the
    /// flush's error, exit 1.
    @Test func aWorkersFailingFlushAnswersNotDone() throws {
        let dir = temporaryDirectory()
        write("""
            stage "s" {
              process = function(ctx, e) return e end,
              flush = function(ctx) error("flush broke") end,
            }
            pipeline "p" { "s" }
            """, to: "job.lua", in: dir)
        let s = try ServeProcess(["job.lua", "--output", "out.jsonl", "--workers", "2"], in: dir)
        let answer = HTTPClient.post(s.port, "/events", "{\"a\":1}\n{\"a\":2}")
        #expect(answer?.status == 503)
        #expect(answer?.body.hasPrefix("{\"error\":\"not done: pipeline 'p' aborted: stage 's' failed in flush (checkpoint): job.lua:3: flush broke") == true,
                "\(answer?.body ?? "")")
        #expect(waitUntil { !s.process.isRunning })
        #expect(s.stop() == 1)
        #expect(s.stderr.contains("scopelua: pipeline 'p' aborted: stage 's' failed in flush (checkpoint): job.lua:3: flush broke"), "\(s.stderr)")
    }

    /// Many clients at once with --workers 2 (4800 events in flight, more than the
    /// workers' reorder window of 4096 lines): every request is answered, and each one's
    /// events come out together and in order, each once (serve's default order is each
    /// request's; a request of up to 256 events is never split between takes).
    @Test func manyClientsWithWorkers() throws {
        let s = try Self.start(["--workers", "2"])
        let port = s.port, clients = 48, rounds = 3
        let answers = Held()
        let group = DispatchGroup()
        for c in 0..<clients {
            group.enter()
            Thread {
                for r in 0..<rounds {
                    let body = (0..<100).map { "{\"c\":\(c),\"r\":\(r),\"k\":\($0)}" }.joined(separator: "\n")
                    if let a = HTTPClient.post(port, "/events", body), a.status == 200 { answers.count() }
                }
                group.leave()
            }.start()
        }
        #expect(group.wait(timeout: .now() + 50) == .success)
        #expect(answers.counted == clients * rounds)
        #expect(s.stop() == 143)
        let out = Self.objects("\(s.directory)/out.jsonl").map { (($0["c"] as? Int) ?? -1, ($0["r"] as? Int) ?? -1, ($0["k"] as? Int) ?? -1) }
        #expect(out.count == clients * rounds * 100)
        // Each request's 100 events together and in order.
        var ok = out.count % 100 == 0
        for start in stride(from: 0, to: out.count - 99, by: 100) where ok {
            let (c, r, _) = out[start]
            ok = (0..<100).allSatisfy { out[start + $0] == (c, r, $0) }
        }
        #expect(ok)
        #expect(Set(out.map { "\($0.0)/\($0.1)" }).count == clients * rounds)
    }

    /// How much the coordinator takes from the feed: a whole batch, or nothing. Taking a
    /// batch of 256 whenever the window was not full overflowed its ring, overwriting lines
    /// it still held (output out of order, lines lost, a run stalled under 64 wrk
    /// connections); the load above does not always reach that edge, this does.
    @Test func theCoordinatorTakesOnlyWholeBatchesThatFit() {
        #expect(PipelineRun.ingestTake(room: 4096) == 256)
        #expect(PipelineRun.ingestTake(room: 256) == 256)
        #expect(PipelineRun.ingestTake(room: 255) == 0)
        #expect(PipelineRun.ingestTake(room: 1) == 0)
        #expect(PipelineRun.ingestTake(room: 0) == 0)
    }

    @Test func healthAndReadiness() throws {
        let s = try Self.start()
        #expect(HTTPClient.get(s.port, "/healthz")?.body == "ok\n")
        #expect(HTTPClient.get(s.port, "/readyz")?.body == "ready\n")
        #expect(HTTPClient.get(s.port, "/nope")?.status == 404)
        #expect(s.stop(SIGINT) == 130)
    }

    @Test func usageErrors() throws {
        let bad = try scopelua(["serve", "job.lua", "--listen", "localhost"])
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("--listen must be HOST:PORT, like 127.0.0.1:8080 or [::1]:8080 (got 'localhost')"), "\(bad.stderr)")
        let queue = try scopelua(["serve", "job.lua", "--queue", "0"])
        #expect(queue.status == 2)
        #expect(queue.stderr.contains("--queue must be at least 1 (got 0)"), "\(queue.stderr)")
    }

    /// A value one thread sets and another waits for.
    final class Held: @unchecked Sendable {
        private let lock = NSLock()
        private var held: HTTPResponse?
        private var n = 0
        func count() { lock.lock(); n += 1; lock.unlock() }
        var counted: Int { lock.lock(); defer { lock.unlock() }; return n }
        func set(_ v: HTTPResponse?) { lock.lock(); held = v; lock.unlock() }
        var value: HTTPResponse? { lock.lock(); defer { lock.unlock() }; return held }
    }
}
