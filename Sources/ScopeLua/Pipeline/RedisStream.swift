import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// `--input redis://HOST:PORT/STREAM?group=G&consumer=C&...` and `--output
/// redis://HOST:PORT/STREAM`: Redis Streams as a source (a consumer group's consumer) and a
/// sink (XADD), docs/ARCHITECTURE.md, "Redis streams".
struct RedisStreamURL {
    var endpoint: RedisEndpoint
    var stream: String
    /// The query parameters that are the source's or the sink's (not the connection's).
    var parameters: [String: String]
    /// The URL as messages show it (no password).
    var label: String

    /// Parameters the connection itself takes (RedisEndpoint).
    static let connectionParameters: Set<String> = ["db", "password", "username"]

    /// `%41` → `A`, as the connection's part of the URL is read (nil: a bad escape or not UTF-8).
    static func decodedText(_ text: String, what: String) -> String? {
        guard let bytes = try? RedisEndpoint.decode(Array(text.utf8), what: what) else { return nil }
        return String(validating: bytes, as: UTF8.self)
    }

    static func isStream(_ text: String) -> Bool {
        text.hasPrefix("redis://") || text.hasPrefix("unix://")
    }

    /// Splits the URL: the stream is the path of a redis:// URL (`/events`) or the
    /// `stream` parameter of a unix:// one; `allowed` are the parameters this use takes.
    static func parse(_ text: String, allowed: Set<String>) -> Result<RedisStreamURL, RedisClient.Problem> {
        let masked = RedisEndpoint.masked(text)
        func fail(_ why: String) -> Result<RedisStreamURL, RedisClient.Problem> {
            .failure(RedisClient.Problem("bad Redis stream URL \"\(masked)\": \(why)"))
        }
        var base = text
        var query = ""
        if let q = text.firstIndex(of: "?") {
            base = String(text[..<q])
            query = String(text[text.index(after: q)...])
        }
        var parameters: [String: String] = [:]
        var kept: [String] = []
        for pair in query.split(separator: "&") where !pair.isEmpty {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = String(parts[0]), value = parts.count > 1 ? String(parts[1]) : ""
            if connectionParameters.contains(key) {
                kept.append(String(pair))
                continue
            }
            guard allowed.contains(key) || key == "stream" else {
                return fail("unknown parameter '\(key)' (this one takes \(allowed.sorted().joined(separator: ", ")))")
            }
            guard parameters[key] == nil else { return fail("'\(key)' is given twice") }
            guard let decoded = decodedText(value, what: "parameter '\(key)'") else {
                return fail("parameter '\(key)' has a bad percent-escape or is not UTF-8")
            }
            parameters[key] = decoded
        }
        var stream: String?
        if base.hasPrefix("redis://") {
            // redis://[user:password@]host:port/STREAM: the path is the stream (the database
            // goes in ?db=N here).
            let afterScheme = base.dropFirst("redis://".count)
            guard let slash = afterScheme.firstIndex(of: "/") else {
                return fail("no stream: write redis://host:port/STREAM")
            }
            stream = decodedText(String(afterScheme[afterScheme.index(after: slash)...]), what: "stream")
            base = "redis://" + afterScheme[..<slash]
            if parameters["stream"] != nil { return fail("the stream is the URL's path; drop 'stream='") }
        } else {
            stream = parameters.removeValue(forKey: "stream")
        }
        guard let stream, !stream.isEmpty else {
            return fail(base.hasPrefix("unix://") ? "no stream: add ?stream=NAME" : "no stream: write redis://host:port/STREAM")
        }
        let connection = base + (kept.isEmpty ? "" : "?" + kept.joined(separator: "&"))
        switch RedisEndpoint.parse(connection) {
        case .failure(let error): return fail(error.reason)
        case .success(let endpoint):
            let label = base.hasPrefix("unix://") ? "\(endpoint.label) stream \(stream)" : "\(endpoint.label)/\(stream)"
            return .success(RedisStreamURL(endpoint: endpoint, stream: stream, parameters: parameters, label: label))
        }
    }

    static func shown(_ n: Double) -> String {
        n == n.rounded() && abs(n) < 1e15 ? String(Int64(n)) : String(n)
    }

    func number(_ key: String, default value: Double, range: ClosedRange<Double>) -> Result<Double, RedisClient.Problem> {
        guard let text = parameters[key] else { return .success(value) }
        guard let n = Double(text), n.isFinite, range.contains(n) else {
            return .failure(RedisClient.Problem("\(label): \(key) must be a number from \(Self.shown(range.lowerBound)) to \(Self.shown(range.upperBound)) (got '\(text)')"))
        }
        return .success(n)
    }
}

/// A consumer of a consumer group (docs/ARCHITECTURE.md, "Redis streams"): first its own
/// pending entries (what it read before a crash and never acknowledged), then new ones,
/// and now and then the entries other consumers left pending for longer than
/// `claim_idle` (they died). Entries are acknowledged only after a barrier.
final class RedisStreamSource: EventSource {
    struct Entry {
        var id: String
        var fields: [([UInt8], [UInt8])]
        /// How often the group delivered it (this delivery included); 1 for a new entry.
        var deliveries: Int
    }

    enum Next {
        case entries([Entry])
        case idle
        case end
        case failed(String)
    }

    static let parameters: Set<String> = ["group", "consumer", "count", "block", "start", "claim_idle", "max_deliveries", "format", "idle_exit"]

    let url: RedisStreamURL
    let client: RedisClient
    let group: String
    let consumer: String
    let count: Int
    let blockMs: Int
    let claimIdleMs: Int
    let maxDeliveries: Int
    let fieldsFormat: Bool
    let idleExit: UInt64?
    /// Reading this consumer's own pending entries from this id (nil: reading new ones).
    private var pendingFrom: String? = "0"
    private var nextClaim: UInt64
    private var claimCursor = "0-0"
    /// When something was last read (for idle_exit); the clock starts at the first read,
    /// not when the source opened (the stages may take long to open).
    private var lastActivity: UInt64 = 0
    /// Entries handed out and not acknowledged yet, oldest first.
    private(set) var unacknowledged: [String] = []
    /// Entries acknowledged by this run.
    private(set) var acknowledged = 0
    private(set) var claimed = 0

    var label: String { url.label }
    var name: String { url.label }

    /// Entries handed out by this run (`line`); a stream has no byte offset.
    var position: SourcePosition { SourcePosition(offset: 0, line: handedOutCount) }
    private var handedOutCount = 0

    /// A stream is not read again from a position: its group's pending list is where it
    /// resumes.
    func identity() -> SourceIdentity? { nil }
    func resume(from position: SourcePosition) -> String? {
        "\(label) resumes from its consumer group's pending entries, not from a position"
    }

    func ack(upTo position: SourcePosition) -> String? {
        let count = min(unacknowledged.count, max(0, position.line - (handedOutCount - unacknowledged.count)))
        return acknowledge(first: count)
    }

    private init(url: RedisStreamURL, client: RedisClient, group: String, consumer: String, count: Int, blockMs: Int,
                 claimIdleMs: Int, maxDeliveries: Int, fieldsFormat: Bool, idleExit: UInt64?) {
        self.url = url
        self.client = client
        self.group = group
        self.consumer = consumer
        self.count = count
        self.blockMs = blockMs
        self.claimIdleMs = claimIdleMs
        self.maxDeliveries = maxDeliveries
        self.fieldsFormat = fieldsFormat
        self.idleExit = idleExit
        nextClaim = sl_monotonic_ns()
    }

    /// Connects, creates the group if it is missing. Nil and why not.
    static func open(_ text: String) -> Result<RedisStreamSource, RedisClient.Problem> {
        let url: RedisStreamURL
        switch RedisStreamURL.parse(text, allowed: parameters) {
        case .success(let u): url = u
        case .failure(let p): return .failure(p)
        }
        func problem(_ why: String) -> Result<RedisStreamSource, RedisClient.Problem> {
            .failure(RedisClient.Problem("\(url.label): \(why)"))
        }
        guard let group = url.parameters["group"], !group.isEmpty else { return problem("a source needs ?group=NAME (the consumer group)") }
        guard let consumer = url.parameters["consumer"], !consumer.isEmpty else {
            return problem("a source needs &consumer=NAME (this process's name in the group, the same after a restart)")
        }
        let start = url.parameters["start"] ?? "$"
        guard start == "$" || start == "0" else { return problem("start must be $ (new entries only, the default) or 0 (the whole stream), got '\(start)'") }
        let format = url.parameters["format"] ?? "json"
        guard format == "json" || format == "fields" else {
            return problem("format must be json (the field 'event' holds the event, the default) or fields (all fields make a flat table), got '\(format)'")
        }
        let numbers: [(String, Double, ClosedRange<Double>)] = [
            ("count", 100, 1...100_000), ("block", 1000, 1...3_600_000), ("claim_idle", 30, 0.001...86_400),
            ("max_deliveries", 5, 1...1_000_000), ("idle_exit", 0, 0.001...86_400),
        ]
        var values: [String: Double] = [:]
        for (key, value, range) in numbers {
            switch url.number(key, default: value, range: range) {
            case .success(let n): values[key] = n
            case .failure(let p): return .failure(p)
            }
        }
        let client: RedisClient
        switch RedisClient.connect(url.endpoint, connectTimeout: 5, timeout: 10) {
        case .success(let c): client = c
        case .failure(let p): return .failure(p)
        }
        let create = client.call([Array("XGROUP".utf8), Array("CREATE".utf8), Array(url.stream.utf8), Array(group.utf8),
                                  Array(start.utf8), Array("MKSTREAM".utf8)])
        switch create {
        case .failure(let p): return .failure(p)
        case .success(.error(let message)) where !message.hasPrefix("BUSYGROUP"):
            return problem("cannot create consumer group \(group): \(message)")
        default: break
        }
        let idle = url.parameters["idle_exit"] != nil ? PipelineRun.nanoseconds(values["idle_exit"] ?? 0) : nil
        return .success(RedisStreamSource(url: url, client: client, group: group, consumer: consumer,
                                          count: Int(values["count"] ?? 100), blockMs: Int(values["block"] ?? 1000),
                                          claimIdleMs: Int((values["claim_idle"] ?? 30) * 1000),
                                          maxDeliveries: Int(values["max_deliveries"] ?? 5), fieldsFormat: format == "fields",
                                          idleExit: idle))
    }

    private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    /// The next entries, waiting at most until `deadline` (the run's timers, barriers).
    func next(deadline: UInt64?) -> Next {
        let now = sl_monotonic_ns()
        if lastActivity == 0 { lastActivity = now }
        // XACK replies owed from the last barrier are read first (they were not waited for).
        if let failure = client.drain() { return .failed(failure) }
        if now >= nextClaim {
            nextClaim = now &+ UInt64(max(1, claimIdleMs / 2)) * 1_000_000
            switch claim() {
            case .failed(let why): return .failed(why)
            case .entries(let e) where !e.isEmpty: return .entries(e)
            default: break
            }
        }
        if let from = pendingFrom {
            // This consumer's own pending entries (read before a crash, never acknowledged).
            let reply = client.call([bytes("XREADGROUP"), bytes("GROUP"), bytes(group), bytes(consumer), bytes("COUNT"),
                                     bytes(String(count)), bytes("STREAMS"), bytes(url.stream), bytes(from)])
            switch reply {
            case .failure(let p): return .failed(p.message)
            case .success(.error(let message)): return .failed("\(label): XREADGROUP: \(message)")
            case .success(let value):
                let entries = parse(value)
                guard let last = entries.last else {
                    pendingFrom = nil
                    return .idle
                }
                pendingFrom = last.id
                lastActivity = sl_monotonic_ns()
                return withDeliveries(entries)
            }
        }
        // idle_exit: nothing new for that long, nothing unacknowledged, nothing pending in
        // the group (no other consumer's entries left to claim).
        if let idleExit {
            let quietUntil = lastActivity &+ idleExit
            if now >= quietUntil, unacknowledged.isEmpty, groupPending() == 0 { return .end }
        }
        // New entries, blocking until the deadline at most (never BLOCK 0: that is forever).
        var block = blockMs
        var until = deadline
        if let idleExit { until = min(until ?? .max, max(lastActivity &+ idleExit, now &+ 1_000_000)) }
        if let until {
            let left = until > now ? Int((until - now) / 1_000_000) : 0
            block = min(block, left)
        }
        var command = [bytes("XREADGROUP"), bytes("GROUP"), bytes(group), bytes(consumer), bytes("COUNT"), bytes(String(count))]
        if block > 0 { command += [bytes("BLOCK"), bytes(String(block))] }
        command += [bytes("STREAMS"), bytes(url.stream), bytes(">")]
        switch client.call(command, wait: UInt64(max(0, block)) * 1_000_000) {
        case .failure(let p): return .failed(p.message)
        case .success(.error(let message)): return .failed("\(label): XREADGROUP: \(message)")
        case .success(let value):
            let entries = parse(value).map { e -> Entry in var e = e; e.deliveries = 1; return e }
            if !entries.isEmpty {
                lastActivity = sl_monotonic_ns()
                return .entries(entries)
            }
            return .idle
        }
    }

    /// Entries other consumers left pending longer than claim_idle (XAUTOCLAIM), now this
    /// consumer's, with their delivery counts.
    private func claim() -> Next {
        var claimedNow: [Entry] = []
        while claimedNow.count < count {
            let reply = client.call([bytes("XAUTOCLAIM"), bytes(url.stream), bytes(group), bytes(consumer),
                                     bytes(String(claimIdleMs)), bytes(claimCursor), bytes("COUNT"), bytes(String(count))])
            guard case .success(.array(let parts)) = reply, parts.count >= 2, let cursor = parts[0].text else {
                if case .failure(let p) = reply { return .failed(p.message) }
                if case .success(.error(let message)) = reply { return .failed("\(label): XAUTOCLAIM: \(message)") }
                return .entries(claimedNow)
            }
            claimCursor = cursor
            claimedNow += entries(parts[1])
            if cursor == "0-0" { break }
        }
        guard !claimedNow.isEmpty else { return .entries([]) }
        claimed += claimedNow.count
        lastActivity = sl_monotonic_ns()
        return withDeliveries(claimedNow)
    }

    /// The entries with their delivery counts from the group's pending list.
    private func withDeliveries(_ entries: [Entry]) -> Next {
        guard let first = entries.first?.id, let last = entries.last?.id else { return .entries(entries) }
        let reply = client.call([bytes("XPENDING"), bytes(url.stream), bytes(group), bytes(first), bytes(last),
                                 bytes(String(entries.count * 2 + 10)), bytes(consumer)])
        var counts: [String: Int] = [:]
        if case .success(.array(let rows)) = reply {
            for case .array(let row) in rows where row.count >= 4 {
                if let id = row[0].text, case .integer(let n) = row[3] { counts[id] = Int(n) }
            }
        } else if case .failure(let p) = reply {
            return .failed(p.message)
        }
        return .entries(entries.map { e in var e = e; e.deliveries = counts[e.id] ?? 1; return e })
    }

    /// The group's pending entries (all consumers').
    private func groupPending() -> Int {
        if case .success(.array(let summary)) = client.call([bytes("XPENDING"), bytes(url.stream), bytes(group)]),
           case .integer(let n)? = summary.first {
            return Int(n)
        }
        return 1
    }

    /// XREADGROUP's reply: [[stream, [[id, [field, value, ...]], ...]]].
    private func parse(_ value: RedisClient.Value) -> [Entry] {
        guard case .array(let streams) = value, case .array(let first)? = streams.first, first.count >= 2 else { return [] }
        return entries(first[1])
    }

    private func entries(_ value: RedisClient.Value) -> [Entry] {
        guard case .array(let items) = value else { return [] }
        return items.compactMap { item -> Entry? in
            guard case .array(let pair) = item, pair.count >= 2, let id = pair[0].text else { return nil }
            var fields: [([UInt8], [UInt8])] = []
            if case .array(let flat) = pair[1] {
                var i = 0
                while i + 1 < flat.count {
                    if case .string(let k) = flat[i], case .string(let v) = flat[i + 1] { fields.append((k, v)) }
                    i += 2
                }
            }
            return Entry(id: id, fields: fields, deliveries: 1)
        }
    }

    /// After the final barrier: the replies of its acknowledgements are read (an entry
    /// whose XACK failed is delivered again). Nil, or why not.
    func finish() -> String? {
        client.drain()
    }

    /// An entry was handed to the pipeline (it is acknowledged at the next barrier).
    func handedOut(_ id: String) {
        unacknowledged.append(id)
        handedOutCount += 1
    }

    /// The first `count` entries handed out and not acknowledged are done (a barrier
    /// committed): XACK them. Nil, or why not (they stay pending and are delivered again:
    /// at-least-once).
    private func acknowledge(first count: Int) -> String? {
        guard count > 0 else { return nil }
        var done = 0
        // Sent without waiting for the replies (a round trip per barrier saved): they are
        // read before the next command (`RedisClient.drain`); an entry whose XACK is lost
        // stays pending and is delivered again.
        var commands: [[[UInt8]]] = []
        while done < count {
            let chunk = unacknowledged[done..<min(count, done + 1000)]
            commands.append([bytes("XACK"), bytes(url.stream), bytes(group)] + chunk.map(bytes))
            done += chunk.count
        }
        if let failure = client.sendOwingReplies(commands) { return failure }
        acknowledged += count
        unacknowledged.removeFirst(count)
        return nil
    }
}

/// `--output redis://HOST:PORT/STREAM[?maxlen=~N]`: every event is appended with XADD
/// (field `event`, the event as JSON), pipelined; `flush` waits for every reply, so after a
/// barrier the events are in Redis. What was added cannot be taken back: at-least-once.
final class RedisStreamSink: EventSink {
    let what = "output"
    let name: String
    let url: RedisStreamURL
    let client: RedisClient
    private let trim: [[UInt8]]
    private var pending: [[[UInt8]]] = []
    private var outstanding = 0
    /// Why the sink failed, for the run's message.
    private(set) var problem: String?
    static let batch = 512

    private init(url: RedisStreamURL, client: RedisClient, trim: [[UInt8]]) {
        self.url = url
        self.client = client
        self.trim = trim
        name = url.label
    }

    static func open(_ text: String) -> Result<RedisStreamSink, RedisClient.Problem> {
        let url: RedisStreamURL
        switch RedisStreamURL.parse(text, allowed: ["maxlen"]) {
        case .success(let u): url = u
        case .failure(let p): return .failure(p)
        }
        var trim: [[UInt8]] = []
        if let maxlen = url.parameters["maxlen"] {
            let approximate = maxlen.hasPrefix("~")
            guard let n = Int(approximate ? String(maxlen.dropFirst()) : maxlen), n > 0 else {
                return .failure(RedisClient.Problem("\(url.label): maxlen must be a count, or ~count for an approximate trim (got '\(maxlen)')"))
            }
            trim = [Array("MAXLEN".utf8)] + (approximate ? [Array("~".utf8)] : []) + [Array(String(n).utf8)]
        }
        switch RedisClient.connect(url.endpoint, connectTimeout: 5, timeout: 10) {
        case .success(let c): return .success(RedisStreamSink(url: url, client: c, trim: trim))
        case .failure(let p): return .failure(p)
        }
    }

    func write(_ L: LuaState, _ event: Int32, codec: JSONCodec, msgh: Int32) -> SinkWrite {
        guard codec.encode(L, event) else { return .unencodable }
        var len = 0
        let p = lua_tolstring(L, -1, &len)
        let json = p.map { Array(UnsafeRawBufferPointer(start: $0, count: len)) } ?? []
        sl_pop(L, 1)
        pending.append([Array("XADD".utf8), Array(url.stream.utf8)] + trim + [Array("*".utf8), Array("event".utf8), json])
        if pending.count >= Self.batch { return send() == 0 ? .written : .failed(EIO) }
        return .written
    }

    /// Sends what waits; reads the replies of earlier batches so that no more than two
    /// batches are ever unanswered.
    private func send() -> Int32 {
        guard !pending.isEmpty else { return 0 }
        if let failure = client.send(pending) { return fail(failure) }
        outstanding += pending.count
        pending.removeAll(keepingCapacity: true)
        if outstanding > 2 * Self.batch { return collect(outstanding - Self.batch) }
        return 0
    }

    private func collect(_ n: Int) -> Int32 {
        guard n > 0 else { return 0 }
        switch client.receive(n) {
        case .failure(let p): return fail(p.message)
        case .success(let replies):
            outstanding -= n
            for case .error(let message) in replies { return fail("XADD: \(message)") }
            return 0
        }
    }

    private func fail(_ why: String) -> Int32 {
        if problem == nil { problem = why }
        return EIO
    }

    func flush(durable: Bool) -> Int32 {
        let code = send()
        return code != 0 ? code : collect(outstanding)
    }

    var checkpointState: Int64? { nil }
    func resume(at state: Int64, _ L: LuaState) -> Int32 { ESPIPE }

    func close() -> Int32 {
        let code = flush(durable: false)
        client.close()
        return code
    }
}

extension PipelineRun {
    /// The field an entry's event is in (format=json).
    static let eventField = Array("event".utf8)

    /// The feed loop over a Redis stream (as `feedLines` over a file): entries are
    /// numbered in the order this run reads them (ctx.line), named by their id in
    /// messages and dead letters, and handed to the source's acknowledgement list once
    /// they left the pipeline. False when the run must stop.
    func feedStream(_ L: LuaState, _ source: RedisStreamSource) -> Bool {
        let codec = rt.json
        var number = 0
        while true {
            if sl_stop_signal() != 0 { return false }
            if !fireTimers(L) { return false }
            if !flushIfDue() { return false }
            if barrierDue, !barrier(L, .checkpoint) { return false }
            showProgress()
            switch source.next(deadline: nextWakeUp()) {
            case .idle:
                // Nothing new: what was read is acknowledged now (a barrier), not at the
                // next --checkpoint-every, and what was written leaves.
                if !source.unacknowledged.isEmpty, !barrier(L, .checkpoint) { return false }
                if !flushBeforeWaiting() { return false }
            case .end:
                return true
            case .failed(let why):
                abortMessage = "cannot read input \(why)"
                return false
            case .entries(let entries):
                for entry in entries {
                    // A stop ends the run between entries: those not handed out stay
                    // pending for this consumer, which reads them first next time.
                    if sl_stop_signal() != 0 { return false }
                    number += 1
                    streamEntry = entry.id
                    let ok = take(L, entry, number: number, source: source, codec: codec)
                    streamEntry = nil
                    guard ok else { return false }
                    source.handedOut(entry.id)
                    if barrierDue, !barrier(L, .checkpoint) { return false }
                }
            }
        }
    }

    /// One entry through the stages, or rejected (a poison entry, no `event` field,
    /// not JSON). False when the run must stop (it is in flight).
    private func take(_ L: LuaState, _ entry: RedisStreamSource.Entry, number: Int, source: RedisStreamSource, codec: JSONCodec) -> Bool {
        // The entry as text, for a record of it: only a rejected entry needs it.
        var raw: String {
            entry.fields.map { "\(String(decoding: $0.0, as: UTF8.self))=\(String(decoding: $0.1, as: UTF8.self))" }.joined(separator: " ")
        }
        if entry.deliveries > source.maxDeliveries {
            read += 1
            return reject(L, line: number, reason: "delivered \(entry.deliveries) times, more than max_deliveries (\(source.maxDeliveries)): a poison entry",
                          raw: raw) || inFlight(line: number)
        }
        if source.fieldsFormat {
            read += 1
            lua_createtable(L, 0, Int32(clamping: entry.fields.count))
            for (k, v) in entry.fields {
                _ = k.withUnsafeBufferPointer { lua_pushlstring(L, UnsafeRawPointer($0.baseAddress)?.assumingMemoryBound(to: CChar.self), $0.count) }
                _ = v.withUnsafeBufferPointer { lua_pushlstring(L, UnsafeRawPointer($0.baseAddress)?.assumingMemoryBound(to: CChar.self), $0.count) }
                lua_rawset(L, -3)
            }
            eventLine = number
            return deliver(L, 0, extra: false) || inFlight(line: number)
        }
        guard let json = entry.fields.first(where: { $0.0 == Self.eventField })?.1 else {
            read += 1
            return reject(L, line: number, reason: "the entry has no field 'event' (format=fields takes all its fields as the event)",
                          raw: raw) || inFlight(line: number)
        }
        return json.withUnsafeBufferPointer { takeLine(L, $0, line: number, codec: codec) }
    }
}
