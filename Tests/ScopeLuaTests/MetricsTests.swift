import Foundation
import ScopeLua
import ScopeLuaCore
import Testing

/// `GET /metrics` and `GET /resources` over real HTTP: `scopelua serve`, and
/// `scopelua run --metrics-listen` on a followed file (with and without workers).
@Suite(.timeLimit(testTimeLimit))
struct MetricsTests {
    /// `enrich` keeps a file open from `open` to `close` (`kept.log`); dead-letters `bad`
    /// events; an event with `open = NAME` opens that file and keeps it in the stage
    /// (`ctx:own`) until an event with `close = true` releases it; an event with `hold =
    /// true` writes `started` and waits in the stage for the file `go`. `drop_odd`
    /// filters events with an odd `n`.
    static let job = """
        stage "enrich" {
          on_error = "dead_letter",
          open = function(ctx) ctx.state.kept = assert(fs.open("kept.log", "w")) end,
          process = function(ctx, e)
            if e.bad then error("bad event") end
            local t <close> = timer.measure("enrich.work")
            if e.open then ctx.state.held = ctx:own(assert(fs.open(e.open, "w"))) end
            if e.close then ctx.state.held:release() ctx.state.held = nil end
            if e.hold then
              local f = assert(io.open("started", "w")) f:close()
              while not io.open("go") do os.execute("sleep 0.01") end
            end
            e.seen = true
            return e
          end,
        }
        stage "drop_odd" { process = function(ctx, e) if (e.n or 0) % 2 == 0 then return e end end }
        pipeline "p" { "enrich", "drop_odd" }
        """

    static func directory() -> String {
        let dir = temporaryDirectory()
        write(job, to: "job.lua", in: dir)
        return dir
    }

    static func serve(_ extra: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) throws -> ServeProcess {
        try ServeProcess(["job.lua", "--output", "out.jsonl", "--dead-letter", "dead.jsonl"] + extra, in: directory(),
                         sourceLocation: sourceLocation)
    }

    /// `scopelua run job.lua --input in.jsonl --follow --metrics-listen 127.0.0.1:0 ARGS`,
    /// over `lines` written to in.jsonl first.
    static func follow(_ lines: [String], _ extra: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) throws -> ServeProcess {
        let dir = directory()
        write(lines.map { $0 + "\n" }.joined(), to: "in.jsonl", in: dir)
        return try ServeProcess(["job.lua", "--input", "in.jsonl", "--follow", "--output", "out.jsonl", "--dead-letter", "dead.jsonl"] + extra,
                                in: dir, command: ["run", "--metrics-listen", "127.0.0.1:0"], sourceLocation: sourceLocation)
    }

    // MARK: - The Prometheus text format, parsed

    struct Sample: Equatable {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    /// Every sample of an exposition: `name{a="x",b="y"} value` (HELP and TYPE lines
    /// checked for form, then skipped). Label values are unescaped (`\\`, `\"`, `\n`).
    static func parse(_ text: String) -> [Sample]? {
        var samples: [Sample] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix("#") {
                guard line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") else { return nil }
                continue
            }
            var chars = Substring(line)
            let name = chars.prefix { $0.isLetter || $0.isNumber || $0 == "_" || $0 == ":" }
            guard !name.isEmpty else { return nil }
            chars = chars.dropFirst(name.count)
            var labels: [String: String] = [:]
            if chars.first == "{" {
                chars = chars.dropFirst()
                while chars.first != "}" {
                    let key = chars.prefix { $0 != "=" }
                    chars = chars.dropFirst(key.count)
                    guard chars.hasPrefix("=\"") else { return nil }
                    chars = chars.dropFirst(2)
                    var value = ""
                    while let c = chars.first, c != "\"" {
                        chars = chars.dropFirst()
                        if c == "\\", let next = chars.first {
                            chars = chars.dropFirst()
                            value.append(next == "n" ? "\n" : next)
                        } else {
                            value.append(c)
                        }
                    }
                    guard chars.first == "\"" else { return nil }
                    chars = chars.dropFirst()
                    labels[String(key)] = value
                    if chars.first == "," { chars = chars.dropFirst() }
                    guard !chars.isEmpty else { return nil }
                }
                chars = chars.dropFirst()
            }
            guard chars.first == " " else { return nil }
            let text = chars.dropFirst()
            guard let value = text == "+Inf" ? Double.infinity : Double(text) else { return nil }
            samples.append(Sample(name: String(name), labels: labels, value: value))
        }
        return samples
    }

    /// The scraped samples (nil when the scrape failed or did not parse).
    static func scrape(_ port: Int) -> [Sample]? {
        guard let r = HTTPClient.get(port, "/metrics"), r.status == 200 else { return nil }
        return parse(r.body)
    }

    /// The value of the one sample named `name` with exactly these labels.
    static func value(_ samples: [Sample]?, _ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples?.first { $0.name == name && $0.labels == labels }?.value
    }

    static func events(_ samples: [Sample]?) -> [String: Double] {
        var out: [String: Double] = [:]
        for s in samples ?? [] where s.name == "scopelua_events_total" { out[s.labels["outcome"] ?? "?"] = s.value }
        return out
    }

    /// `/resources`, decoded.
    static func resources(_ port: Int) -> [String: Any]? {
        guard let r = HTTPClient.get(port, "/resources"), r.status == 200 else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(r.body.utf8))) as? [String: Any]
    }

    /// Every handle of every state: (state, handle).
    static func handles(_ port: Int) -> [(state: String, handle: [String: Any])] {
        guard let states = resources(port)?["states"] as? [[String: Any]] else { return [] }
        return states.flatMap { s in
            ((s["handles"] as? [[String: Any]]) ?? []).map { (s["state"] as? String ?? "?", $0) }
        }
    }

    // MARK: - Tests

    @Test func theParserReadsLabelsEscapesAndInfinity() {
        let text = "# HELP x_total A help.\n# TYPE x_total counter\nx_total{a=\"q\\\"uo\\\\te\\n\",b=\"2\"} 3\ny 1.5e-05\nz_bucket{le=\"+Inf\"} 4\n"
        #expect(Self.parse(text) == [
            Sample(name: "x_total", labels: ["a": "q\"uo\\te\n", "b": "2"], value: 3),
            Sample(name: "y", labels: [:], value: 1.5e-05),
            Sample(name: "z_bucket", labels: ["le": "+Inf"], value: 4),
        ])
        #expect(Self.parse("x{a=\"1\" 2\n") == nil)
    }

    /// The engine's fine histogram mapped onto the Prometheus buckets: each sample lands
    /// in the first bound at or above it; count and sum are exact.
    @Test func latencyBucketsFromTheEnginesHistogram() {
        let h = Histogram()
        for ns: UInt64 in [40, 5_000, 5_000, 9_000, 30_000, 2_000_000, 20_000_000_000] { h.record(ns) }
        let l = LatencySnapshot(h.snapshot)
        #expect(l.count == 7)
        #expect(abs(l.sumSeconds - 20.002049040) < 1e-12)
        let bounds = LatencySnapshot.bounds
        func at(_ bound: Double) -> UInt64 { l.buckets[bounds.firstIndex(of: bound) ?? -1] }
        #expect(at(0.00001) == 4)      // 40 ns, 5 µs twice, 9 µs
        #expect(at(0.00005) == 1)      // 30 µs
        #expect(at(0.0025) == 1)       // 2 ms
        #expect(l.buckets.last == 1)   // 20 s: above 10 s
        #expect(l.buckets.reduce(0, +) == 7)
    }

    /// After known traffic, /metrics says what the run counted, exactly: events by
    /// outcome, the stages' calls, errors and latency counts, the resources by kind, the
    /// queue.
    @Test func metricsAfterKnownTraffic() throws {
        let s = try Self.serve()
        let r = HTTPClient.post(s.port, "/events", "{\"n\":2}\n{\"bad\":true}\nnot json\n{\"n\":3}\n{\"n\":4}\n[1]\n")
        #expect(r?.body == "{\"accepted\":4,\"rejected\":[{\"line\":3,\"reason\":\"not valid JSON: Expected value but found invalid token at character 1\"},{\"line\":6,\"reason\":\"not a JSON object\"}],\"dead_lettered\":1}\n")
        // The board is published before the barrier answers the request: no wait needed,
        // but a scrape racing the publication would only be early, so poll.
        var samples: [Sample]?
        #expect(waitUntil(seconds: 10) {
            samples = Self.scrape(s.port)
            return Self.events(samples)["read"] == 6
        })
        #expect(Self.events(samples) == ["read": 6, "emitted": 2, "filtered": 1, "skipped": 0, "dead_lettered": 1, "rejected": 2])
        #expect(Self.value(samples, "scopelua_stage_calls_total", ["stage": "enrich"]) == 4)
        #expect(Self.value(samples, "scopelua_stage_calls_total", ["stage": "drop_odd"]) == 3)
        #expect(Self.value(samples, "scopelua_stage_errors_total", ["stage": "enrich"]) == 1)
        #expect(Self.value(samples, "scopelua_stage_events_total", ["stage": "enrich", "outcome": "dead_lettered"]) == 1)
        #expect(Self.value(samples, "scopelua_stage_limit_breaches_total", ["stage": "enrich", "kind": "time"]) == 0)
        #expect(Self.value(samples, "scopelua_stage_call_duration_seconds_count", ["stage": "enrich"]) == 4)
        #expect(Self.value(samples, "scopelua_stage_call_duration_seconds_bucket", ["stage": "drop_odd", "le": "+Inf"]) == 3)
        // Buckets are cumulative: never fewer under a larger bound.
        let buckets = (samples ?? []).filter { $0.name == "scopelua_stage_call_duration_seconds_bucket" && $0.labels["stage"] == "enrich" }
        #expect(buckets.count == LatencySnapshot.bounds.count + 1)
        #expect(zip(buckets, buckets.dropFirst()).allSatisfy { $0.value <= $1.value })
        // timer.measure ran for the three events that did not fail before it.
        #expect(Self.value(samples, "scopelua_timer_duration_seconds_count", ["label": "enrich.work"]) == 3)
        // The file kept from open; three timers, all released.
        #expect(Self.value(samples, "scopelua_resources_open", ["kind": "file"]) == 1)
        #expect(Self.value(samples, "scopelua_resources_acquired_total", ["kind": "file"]) == 1)
        #expect(Self.value(samples, "scopelua_resources_acquired_total", ["kind": "timer"]) == 3)
        #expect(Self.value(samples, "scopelua_resources_released_total", ["kind": "timer"]) == 3)
        #expect(Self.value(samples, "scopelua_resources_open", ["kind": "timer"]) == 0)
        #expect(Self.value(samples, "scopelua_resources_leaked_total", ["kind": "file"]) == 0)
        #expect(Self.value(samples, "scopelua_ingest_queue_depth") == 0)
        #expect(Self.value(samples, "scopelua_worker_restarts_total") == 0)

        // More traffic: the counters go on from there.
        #expect(HTTPClient.post(s.port, "/events", "{\"n\":6}\n")?.status == 200)
        #expect(waitUntil(seconds: 10) { Self.events(Self.scrape(s.port))["emitted"] == 3 })
        #expect(Self.value(Self.scrape(s.port), "scopelua_events_total", ["outcome": "read"]) == 7)
        #expect(s.stop() == 143)
    }

    /// `serve --workers 2`: the counts are the workers' summed, and /resources has a
    /// state per worker, each with the file its `open` keeps.
    @Test func serveWithTwoWorkers() throws {
        let s = try Self.serve(["--workers", "2"])
        let body = (1...600).map { "{\"n\":\($0)}" }.joined(separator: "\n") + "\n{\"bad\":true}\nnot json\n"
        #expect(HTTPClient.post(s.port, "/events", body)?.status == 200)
        var samples: [Sample]?
        #expect(waitUntil(seconds: 10) {
            samples = Self.scrape(s.port)
            return Self.events(samples)["read"] == 602
        })
        #expect(Self.events(samples) == ["read": 602, "emitted": 300, "filtered": 300, "skipped": 0, "dead_lettered": 1, "rejected": 1])
        #expect(Self.value(samples, "scopelua_stage_calls_total", ["stage": "enrich"]) == 601)
        #expect(Self.value(samples, "scopelua_resources_open", ["kind": "file"]) == 2)
        let resources = HTTPClient.get(s.port, "/resources")?.body ?? ""
        #expect(resources.contains("\"worker 1\"") && resources.contains("\"worker 2\""), "\(resources)")
        #expect(s.stop() == 143)
    }

    /// A handle a stage holds shows in /resources (kind, label, scope, site, age) and is
    /// gone once released; the file `open` keeps shows in the stage's scope throughout.
    @Test func resourcesShowAHeldHandleUntilItIsReleased() throws {
        let s = try Self.serve()
        let kept = Self.handles(s.port).filter { $0.handle["label"] as? String == "kept.log" }
        #expect(kept.count == 1)
        #expect(kept.first?.state == "run")
        #expect(kept.first?.handle["scope"] as? String == "run/p/enrich")
        #expect(kept.first?.handle["kind"] as? String == "file")
        #expect(kept.first?.handle["site"] as? String == "job.lua:3")

        #expect(HTTPClient.post(s.port, "/events", "{\"n\":2,\"open\":\"held.txt\"}\n")?.status == 200)
        var held: [String: Any]?
        #expect(waitUntil(seconds: 10) {
            held = Self.handles(s.port).first { $0.handle["label"] as? String == "held.txt" }?.handle
            return held != nil
        })
        #expect(held?["kind"] as? String == "file")
        #expect(held?["scope"] as? String == "run/p/enrich")
        #expect(held?["site"] as? String == "job.lua:7")
        #expect((held?["age_seconds"] as? Double ?? -1) >= 0)
        #expect(Self.value(Self.scrape(s.port), "scopelua_resources_open", ["kind": "file"]) == 2)

        #expect(HTTPClient.post(s.port, "/events", "{\"n\":4,\"close\":true}\n")?.status == 200)
        #expect(waitUntil(seconds: 10) {
            Self.handles(s.port).compactMap { $0.handle["label"] as? String } == ["kept.log"]
        })
        #expect(Self.value(Self.scrape(s.port), "scopelua_resources_released_total", ["kind": "file"]) == 1)
        #expect(s.stop() == 143)
    }

    /// The board is written between events: while a stage call runs, /resources shows
    /// the state as it was before it, and says how old that is (`published_ms_ago` grows);
    /// once the run is back between events, it publishes again (also while idle).
    @Test func aLongStageCallShowsAsAnAgingSnapshot() throws {
        let s = try Self.serve()
        func age() -> Int? {
            ((Self.resources(s.port)?["states"] as? [[String: Any]])?.first?["published_ms_ago"] as? Int)
        }
        #expect(waitUntil(seconds: 10) { (age() ?? .max) < 500 })  // idle, yet fresh
        let answer = Box()
        let port = s.port
        let t = Thread { answer.set(HTTPClient.post(port, "/events", "{\"n\":2,\"hold\":true}\n")?.status) }
        t.start()
        #expect(waitUntil(seconds: 20) { FileManager.default.fileExists(atPath: "\(s.directory)/started") })
        #expect(waitUntil(seconds: 10) { (age() ?? 0) >= 1000 })
        write("", to: "go", in: s.directory)
        #expect(waitUntil(seconds: 20) { answer.get() == 200 })
        #expect(waitUntil(seconds: 10) { (age() ?? .max) < 500 })
        #expect(s.stop() == 143)
    }

    /// `run --metrics-listen` on a followed file: the same views (no POST /events), the
    /// counts growing as the file does.
    @Test func runMetricsListenOnAFollowedFile() throws {
        let s = try Self.follow(["{\"n\":2}", "{\"bad\":true}", "oops"])
        #expect(waitUntil(seconds: 10) { Self.events(Self.scrape(s.port))["read"] == 3 })
        #expect(Self.events(Self.scrape(s.port)) == ["read": 3, "emitted": 1, "filtered": 0, "skipped": 0, "dead_lettered": 1, "rejected": 1])
        #expect(HTTPClient.get(s.port, "/healthz")?.status == 200)
        #expect(HTTPClient.post(s.port, "/events", "{\"n\":1}\n")?.status == 404)
        #expect(Self.value(Self.scrape(s.port), "scopelua_ingest_queue_depth") == nil)

        let more = FileHandle(forWritingAtPath: "\(s.directory)/in.jsonl")
        more?.seekToEndOfFile()
        more?.write(Data("{\"n\":4}\n{\"n\":5}\n".utf8))
        try more?.close()
        #expect(waitUntil(seconds: 10) { Self.events(Self.scrape(s.port))["read"] == 5 })
        let samples = Self.scrape(s.port)
        #expect(Self.events(samples) == ["read": 5, "emitted": 2, "filtered": 1, "skipped": 0, "dead_lettered": 1, "rejected": 1])
        #expect(Self.value(samples, "scopelua_stage_calls_total", ["stage": "enrich"]) == 4)
        #expect(Self.handles(s.port).map { $0.handle["label"] as? String } == ["kept.log"])
        #expect(s.stop() == 143)
        #expect(s.stderr.contains("(GET /metrics, /resources, /healthz)"))
    }

    /// With `--workers 2` every worker publishes its own state: the counts add up across
    /// them, and /resources lists the coordinator and each worker, each worker with the
    /// file its copy of the stage keeps.
    @Test func workersPublishTheirOwnStates() throws {
        // 600 lines: blocks of 256 go to worker 1, 2, then 1 again.
        let lines = (1...600).map { "{\"n\":\($0)}" }
        let s = try Self.follow(lines, ["--workers", "2"])
        #expect(waitUntil(seconds: 20) { Self.events(Self.scrape(s.port))["read"] == 600 })
        let samples = Self.scrape(s.port)
        #expect(Self.events(samples) == ["read": 600, "emitted": 300, "filtered": 300, "skipped": 0, "dead_lettered": 0, "rejected": 0])
        #expect(Self.value(samples, "scopelua_stage_calls_total", ["stage": "enrich"]) == 600)
        #expect(Self.value(samples, "scopelua_stage_call_duration_seconds_count", ["stage": "drop_odd"]) == 600)
        #expect(Self.value(samples, "scopelua_resources_open", ["kind": "file"]) == 2)
        #expect(Self.value(samples, "scopelua_worker_restarts_total") == 0)

        let states = (Self.resources(s.port)?["states"] as? [[String: Any]]) ?? []
        #expect(states.compactMap { $0["state"] as? String } == ["coordinator", "worker 1", "worker 2"])
        let kept = Self.handles(s.port).filter { $0.handle["label"] as? String == "kept.log" }
        #expect(kept.map(\.state) == ["worker 1", "worker 2"])
        #expect(kept.compactMap { $0.handle["scope"] as? String } == ["run/p/worker1/enrich", "run/p/worker2/enrich"])
        #expect(s.stop() == 143)
    }

    final class Box: @unchecked Sendable {
        private let lock = NSLock()
        private var value: Int?
        func set(_ v: Int?) { lock.lock(); value = v; lock.unlock() }
        func get() -> Int? { lock.lock(); defer { lock.unlock() }; return value }
    }
}
