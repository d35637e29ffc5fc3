import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// A worker's end of the channel (confined to the worker's thread, except the inbox and
/// outbox it holds): where what its events produce is collected until it is posted.
package final class WorkerLink {
    /// 1...N: ctx.worker, the scope `workerN`.
    let number: Int
    /// How many workers the run has (ctx.workers).
    let workers: Int
    let inbox: Inbox
    let outbox: Outbox
    /// Whether the run has a dead-letter file (else dead letters go to stderr, as without workers).
    let hasDeadLetter: Bool
    /// The checkpoint the run resumed from (ctx.resumed, ctx.resumed_line).
    let resumed: SourcePosition?
    var results = WorkerResults()
    /// What output written now belongs to: the event with this sequence number (`own`),
    /// or comes after it (a timer, a flush).
    var seq = -1
    var own = false
    /// The counts of the states this worker had before (each crashed and was replaced).
    var carried: WorkerCounts?
    /// `--output none`: events are counted, not encoded (only the done marks go back).
    var discardsOutput = false
    /// `scopelua serve`: the feed the lines came from, told of rejects and dead letters by
    /// line (it is thread-safe; the lines keep the numbers the coordinator gave them).
    var ingest: (any IngestFeed)?

    init(number: Int, workers: Int, inbox: Inbox, outbox: Outbox, hasDeadLetter: Bool, resumed: SourcePosition?) {
        self.number = number
        self.workers = workers
        self.inbox = inbox
        self.outbox = outbox
        self.hasDeadLetter = hasDeadLetter
        self.resumed = resumed
    }

    func append(_ kind: WorkerResults.Kind, _ p: UnsafePointer<CChar>, _ len: Int) {
        let start = results.bytes.count
        p.withMemoryRebound(to: UInt8.self, capacity: len) {
            results.bytes.append(contentsOf: UnsafeBufferPointer(start: $0, count: len))
        }
        results.entries.append(.init(kind: kind, seq: seq, own: own, start: start, end: results.bytes.count))
    }

    func done(_ seq: Int) {
        results.entries.append(.init(kind: .done, seq: seq, own: true, start: 0, end: 0))
        self.seq = seq
        own = false
    }

    /// Hands what was collected to the coordinator.
    func post() {
        guard !results.isEmpty else { return }
        outbox.post(.results(worker: number, results))
        results = WorkerResults()
        results.bytes.reserveCapacity(1 << 16)
    }
}

/// A worker's output and dead-letter sink: encoded lines go to its link, and from there
/// to the coordinator, which writes them (in input order, unless `ordered = false`).
final class ChannelSink: RecordSink {
    let what: String
    let name: String
    let link: WorkerLink
    let kind: WorkerResults.Kind

    init(_ link: WorkerLink, kind: WorkerResults.Kind) {
        self.link = link
        self.kind = kind
        what = kind == .output ? "output" : "dead-letter file"
        name = "worker \(link.number)'s channel"
    }

    func write(_ L: LuaState, _ event: Int32, codec: JSONCodec, msgh: Int32) -> SinkWrite {
        guard codec.encode(L, event) else { return .unencodable }
        var len = 0
        if let p = lua_tolstring(L, -1, &len) { link.append(kind, p, len) }
        sl_pop(L, 1)
        return .written
    }

    func writeLine(_ p: UnsafePointer<CChar>, _ len: Int) -> Int32 {
        link.append(kind, p, len)
        return 0
    }

    /// What was written goes to the coordinator (which flushes, and syncs, the files).
    func flush(durable: Bool) -> Int32 {
        link.post()
        return 0
    }

    var checkpointState: Int64? { nil }
    func resume(at state: Int64, _ L: LuaState) -> Int32 { ESPIPE }

    func close() -> Int32 {
        link.post()
        return 0
    }
}

/// How a worker's feed of orders ended.
enum ChannelEnd {
    /// The final barrier was ordered (the input ended, or a graceful stop).
    case final(BarrierReason, committing: Int)
    /// Told to stop (another worker failed): close with this error.
    case stopped(String)
    /// The worker's state ran out of memory (`crashed`): it closes and is replaced.
    case crashed
    /// This worker must stop: its abort (abortMessage) or a forced stop.
    case failed
}

extension PipelineRun {
    /// The worker's loop: batches of lines through the stages, barriers when told, due
    /// timers between events and while it waits for orders.
    func feedChannel(_ L: LuaState, _ link: WorkerLink) -> ChannelEnd {
        let codec = rt.json
        while true {
            if sl_stop_forced() != 0 { return .failed }
            if !fireTimers(L) { return .failed }
            publishIfDue()
            guard let order = link.inbox.next(deadline: nextWakeUp()) else {
                link.post()  // what timers emitted
                continue
            }
            switch order {
            case .batch(let batch):
                let ok = batch.bytes.withUnsafeBufferPointer { bytes in
                    for (k, item) in batch.items.enumerated() {
                        if link.inbox.stopRequested || sl_stop_forced() != 0 { return true }
                        link.seq = item.seq
                        link.own = true
                        let slice = UnsafeBufferPointer(rebasing: bytes[item.start..<item.end])
                        let taken: Bool
                        if item.tooLong > 0 {
                            read += 1
                            taken = reject(L, line: item.line, reason: Self.tooLong(item.tooLong, limit: LineReader.defaultLimit),
                                           raw: String(decoding: slice, as: UTF8.self) + "...") || inFlight(line: item.line)
                        } else {
                            taken = takeLine(L, slice, line: item.line, codec: codec)
                        }
                        guard taken, original.inFlight == 0 else { return false }
                        link.done(item.seq)
                        if crashed != nil {
                            // The lines after it go to the state that replaces this one.
                            var rest = WorkBatch()
                            rest.bytes = batch.bytes
                            rest.items = Array(batch.items[(k + 1)...])
                            if !rest.items.isEmpty { link.inbox.putBack(.batch(rest)) }
                            return true
                        }
                        eventLine = 0
                        if !fireTimers(L) { return false }
                    }
                    return true
                }
                link.post()
                if !ok { return .failed }
                if crashed != nil { return .crashed }
            case .barrier(let reason, let lastSeq, let committing):
                link.seq = lastSeq
                link.own = false
                guard reason == .checkpoint else { return .final(reason, committing: committing) }
                checkpointing.committingOverride = committing
                let ok = barrier(L, .checkpoint)
                checkpointing.committingOverride = nil
                link.post()
                link.outbox.post(.barrierDone(worker: link.number, failure: ok ? nil : barrierFailure(link),
                                              counts: workerCounts(histograms: false)))
                if !ok { return .failed }
            case .finish:
                continue  // only after a final barrier (see `finishWorker`)
            case .stop(let why):
                return .stopped(why)
            }
        }
    }

    /// Why this worker's barrier failed, for its acknowledgement: its abort (a flush's
    /// error), else the bare fact.
    func barrierFailure(_ link: WorkerLink) -> String {
        abortMessage ?? "pipeline '\(definition.name)': worker \(link.number)'s barrier failed"
    }

    /// After the final barrier was ordered: runs it, tells the coordinator, and waits
    /// for its verdict. Returns the error the stages close with (nil: none).
    func finishWorker(_ L: LuaState, _ link: WorkerLink, reason: BarrierReason, committing: Int) -> String? {
        checkpointing.committingOverride = committing
        finalBarrier(L, reason: reason)
        checkpointing.committingOverride = nil
        link.post()
        link.outbox.post(.barrierDone(worker: link.number, failure: checkpointing.finished ? nil : barrierFailure(link),
                                      counts: workerCounts(histograms: false)))
        while true {
            switch link.inbox.next(deadline: nil) {
            case .finish(let uncommitted)?: return uncommitted
            case .stop(let why)?: return why
            default: continue
            }
        }
    }

    /// This worker's counts, for the coordinator to add up.
    func workerCounts(histograms: Bool) -> WorkerCounts {
        var c = WorkerCounts()
        c.read = read
        c.rejected = rejected
        c.retried = retried
        c.replayed = replay.count
        c.original = original
        c.fanout = fanout
        c.fanoutCreated = fanoutCreated
        c.rejectNotices = rejectNotices
        c.stages = stages.map { s in
            StageCounts(calls: s.calls, errors: s.errors, skipped: s.skipped, deadLettered: s.deadLettered,
                        retried: s.retried, backoffNanos: s.backoffNanos, breaches: s.breaches, notices: s.notices,
                        histogram: histograms ? s.time.snapshot : nil)
        }
        // What the states this worker replaced had counted.
        if case .channel(let link) = options.input, let carried = link.carried {
            var withCarried = carried
            if !histograms { for i in withCarried.stages.indices { withCarried.stages[i].histogram = nil } }
            withCarried.add(c)
            return withCarried
        }
        return c
    }
}
