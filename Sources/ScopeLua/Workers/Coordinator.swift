import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// How a worker gets its Lua state and its pipeline: made on the worker's own thread (a
/// `Runtime` belongs to the thread that creates it), by loading the script again there.
///
/// Why `@unchecked Sendable`: `make` is called once per worker thread; what it captures
/// (the request, the script's bytes, the runtime options) is only read, and the
/// options' diagnostics closure writes through the run's `Console`, which locks.
package struct WorkerFactory: @unchecked Sendable {
    package enum Made {
        case ready(Runtime, PipelineDefinition)
        case failed(String)
    }

    /// (worker number 1...N, where its diagnostics go) -> its runtime and pipeline.
    let make: (Int, @escaping @Sendable (String) -> Void) -> Made

    package init(make: @escaping (Int, @escaping @Sendable (String) -> Void) -> Made) {
        self.make = make
    }
}

/// Consecutive ingest lines that went to one worker (`ParallelState.runs`): by sequence
/// number, and the sync count when all of them were first seen written (nil: not yet).
struct IngestRun {
    var first: Int
    var last: Int
    var worker: Int
    var writtenAt: Int?
    /// Unordered output: every line of the run before this one is known to be done. The
    /// next look starts here, so a line is looked at until it is done, not on every turn
    /// of the feed loop while the rest of its run is worked on.
    var checked: Int

    init(first: Int, last: Int, worker: Int) {
        self.first = first
        self.last = last
        self.worker = worker
        checked = first
    }
}

/// The coordinator's side of a run with workers. A class: the feed loop changes it for
/// every line, in place.
final class ParallelState {
    let count: Int
    let inboxes: [Inbox]
    let outbox: Outbox
    let console: Console
    var threads: [pthread_t] = []
    var window: ReorderWindow
    /// Lines read and not yet sent, per worker.
    var pending: [WorkBatch]
    /// The worker the last line went to (a batch is sent when the next line goes elsewhere).
    var lastWorker: Int?
    /// `scopelua serve`: the worker the last ingest request went to (the rest of a request
    /// cut where a take ended goes there too).
    var lastIngestWorker: Int?
    /// Lines a batch holds at most.
    let batchSize: Int
    let ordered: Bool
    let partition: ((UnsafeBufferPointer<UInt8>) -> Int?)?
    /// Barrier acknowledgements this barrier, and the first failure one of them gave.
    var acks = 0
    var ackFailure: String?
    /// The barrier under way: every line up to this sequence number is before it; and
    /// whether the sinks were already synced for it (see `awaitAcks`).
    var barrierSeq = -1
    var barrierSynced = false
    /// `scopelua serve`: each worker's own barriers (see `feedWorkers(from:)`), by worker
    /// index: lines dispatched to it and not done; the last line dispatched to it; the
    /// last line (of any worker) its latest barrier was ordered after, and the one its
    /// latest acknowledged barrier was (every line of its own up to it is flushed); its
    /// barrier under way (nil: none).
    var outstanding: [Int]
    var lastDispatched: [Int]
    var coveredUpTo: [Int]
    var flushedUpTo: [Int]
    var barrierOf: [Int?]
    /// The lines dispatched and not answered yet, as runs of consecutive lines that went
    /// to one worker, in order; `breakRun`: the next line starts a new run (a barrier was
    /// ordered after the last one).
    var runs: [IngestRun] = []
    var breakRun = false
    /// How many times the sinks were synced for ingest lines (a run written before the
    /// latest sync began is durable in the sinks).
    var syncs = 0
    /// The first failure an own barrier's acknowledgement gave (nil: all succeeded).
    var ownBarrierFailure: String?
    /// The counts each worker gave at its last barrier, and at its end.
    var lastCounts: [WorkerCounts]
    var ends: [WorkerEnd?]
    /// The counts restored from the checkpoint (the workers count from zero).
    var restored = WorkerCounts()
    /// A worker failed: no more lines are dispatched.
    var failed = false
    /// Lines written to the output (for the progress line).
    var written = 0
    /// A forced stop was passed on to the workers.
    var forcedPassedOn = false

    init(count: Int, inboxes: [Inbox], outbox: Outbox, console: Console, window: ReorderWindow, batchSize: Int,
         ordered: Bool, partition: ((UnsafeBufferPointer<UInt8>) -> Int?)?) {
        self.count = count
        self.inboxes = inboxes
        self.outbox = outbox
        self.console = console
        self.window = window
        self.pending = Array(repeating: WorkBatch(), count: count)
        self.batchSize = batchSize
        self.ordered = ordered
        self.partition = partition
        lastCounts = Array(repeating: WorkerCounts(), count: count)
        ends = Array(repeating: nil, count: count)
        outstanding = Array(repeating: 0, count: count)
        lastDispatched = Array(repeating: -1, count: count)
        coveredUpTo = Array(repeating: -1, count: count)
        flushedUpTo = Array(repeating: -1, count: count)
        barrierOf = Array(repeating: nil, count: count)
    }
}

extension PipelineRun {
    /// Runs the pipeline on `options.workers` workers: this thread reads the input,
    /// hands lines to the workers, writes what comes back (in input order unless the
    /// pipeline says `ordered = false`), runs the barriers and commits the checkpoint
    /// (docs/ARCHITECTURE.md, "Workers").
    func executeParallel(_ L: LuaState) -> Outcome {
        guard let factory = options.workerFactory, inputFD >= 0 || options.follow || ingestSource != nil, !options.replay else {
            return .refused("--workers needs an input file or stdin (and is not available with --replay)")
        }
        // The main state runs no Lua meanwhile: a graceful stop must not be left armed on
        // it for the code that runs after the run (the pipeline hold, as in one state).
        sl_stop_pipeline(L, 1)
        defer { sl_stop_pipeline(L, 0) }
        if ingestSource == nil { checkpointing.source = makeLineSource() }
        if let refused = openCheckpoint() { return refused }
        defer { checkpointing.store?.close() }
        if let refused = openSinks(L) { return refused }
        defer {
            _ = output?.close()
            _ = deadLetter?.close()
        }
        guard let outbox = Outbox() else { return .failed("cannot start workers: \(String(cString: strerror(errno)))") }
        let count = options.workers
        let console = Console()
        drawsProgress = decideProgress()
        let diagnostics = rt.options.diagnostics
        defer { rt.options.diagnostics = diagnostics }
        rt.options.diagnostics = { line in console.line(line) }
        let sigpipe = sl_sigpipe_ignore()
        defer { sl_sigpipe_restore(sigpipe) }

        // Counts: the stages as the workers number them; the checkpoint's counts go on.
        stages = definition.allStages.map { StageRun(definition: $0, policy: $0.policy ?? .abort, scope: Scope(name: $0.name, parent: rt.root)) }
        // What the workers' stages run under, for the report.
        for (stage, limits) in zip(stages, definition.allStageLimits()) {
            stage.limits = limits.map { StageLimitsRun($0, stage: stage.definition.name) }
        }
        resumeCounters()
        let state = ParallelState(
            count: count, inboxes: (0..<count).map { _ in Inbox() }, outbox: outbox, console: console,
            window: ReorderWindow(capacity: max(4096, count * 1024)), batchSize: Self.batchSize, ordered: ordersOutput,
            partition: definition.partitionBy.map { PipelineRun.partitioner($0, workers: count) })
        state.restored = workerCounts(histograms: false)
        parallel = state

        // The workers: each loads the script in its own state and opens its stages.
        let resumed = checkpointing.resumed?.position
        let hasDeadLetter = deadLetter != nil
        let discardsOutput = output is DiscardSink
        let printsToStderr: Bool = { if case .stdout = options.output { return true } else { return false } }()
        let ingest = ingestSource?.feed
        for i in 0..<count {
            let inbox = state.inboxes[i], number = i + 1
            let started = startThread(named: "scopelua-w\(number)") {
                Self.runWorker(number: number, workers: count, factory: factory, inbox: inbox, outbox: outbox, console: console,
                               hasDeadLetter: hasDeadLetter, discardsOutput: discardsOutput, resumed: resumed, printsToStderr: printsToStderr,
                               ingest: ingest)
            }
            guard let started else {
                abortMessage = "cannot start worker \(number): \(String(cString: strerror(errno)))"
                break
            }
            parallel?.threads.append(started)
        }

        if abortMessage == nil {
            if let source = ingestSource { _ = feedWorkers(from: source) } else { _ = feedWorkers(L) }
        }
        inputEnded = true
        finishWorkers()
        // What the final barrier did not settle never will be (an abort, a forced stop).
        ingestSource?.feed.abandon(abortMessage ?? sinkFailure?.message ?? (sl_stop_forced() != 0 ? "the stop was forced" : "the run ended"))
        for t in parallel?.threads ?? [] { pthread_join(t, nil) }
        mergeWorkerCounts()
        clearProgress()
        parallel?.console.progress("")
        flushSinks()
        closeSinks()
        finishedAt = sl_monotonic_ns()
        let signal = sl_stop_signal()
        let failures = parallel?.ends.compactMap { $0 }.flatMap(\.releaseFailures) ?? []
        summarize(ended: abortMessage != nil || sinkFailure != nil || !failures.isEmpty || signal != 0)
        if signal != 0, abortMessage == nil || sl_stop_forced() != 0 { return .stopped(signal: signal) }
        let releaseErrors = failures.map { "\n\trelease error: \($0)" }.joined()
        if let abortMessage {
            let sink = sinkFailure.map { "\n\tand: \($0.message)" } ?? ""
            return .failed(abortMessage + sink + releaseErrors)
        }
        if let sinkFailure {
            let message = sinkFailure.message + releaseErrors
            return sinkFailure.brokenPipe ? .readerGone(message) : .failed(message)
        }
        if !failures.isEmpty { return .failed(failures.joined(separator: "\n\trelease error: ")) }
        return .finished
    }

    /// The worker thread's body: its runtime, its run over the orders it gets, its end.
    private static func runWorker(number: Int, workers: Int, factory: WorkerFactory, inbox: Inbox, outbox: Outbox, console: Console,
                                  hasDeadLetter: Bool, discardsOutput: Bool, resumed: SourcePosition?, printsToStderr: Bool,
                                  ingest: (any IngestFeed)?) {
        var carried: WorkerCounts?
        var restarts = 0
        var releaseFailures: [String] = []
        var resources = ResourceCountsSnapshot()
        while true {
            let rt: Runtime, definition: PipelineDefinition
            switch factory.make(number, { console.line($0) }) {
            case .failed(let message):
                var end = WorkerEnd(counts: carried ?? WorkerCounts(), failure: "worker \(number) could not start: \(message)")
                end.restarts = restarts
                outbox.post(.ended(worker: number, end))
                return
            case .ready(let r, let d):
                rt = r
                definition = d
            }
            _ = sl_stop_attach(rt.L)
            let link = WorkerLink(number: number, workers: workers, inbox: inbox, outbox: outbox, hasDeadLetter: hasDeadLetter, resumed: resumed)
            link.carried = carried
            link.discardsOutput = discardsOutput
            link.ingest = ingest
            var options = PipelineRun.Options()
            options.input = .channel(link)
            options.output = .channel
            options.printsToStderr = printsToStderr
            let run = PipelineRun(rt, definition, options: options)
            let outcome = run.execute(rt.L, parent: rt.root)
            run.releaseReferences(rt.L)
            var end = WorkerEnd(counts: run.workerCounts(histograms: true))
            if case .failed(let message) = outcome { end.failure = message }
            if case .refused(let message) = outcome { end.failure = message }
            releaseFailures += run.releaseFailures + rt.releaseAll()
            let c = rt.resourceCounts
            resources.acquired += c.acquired
            resources.released += c.released
            resources.leaked += c.leaked
            resources.releaseErrors += c.releaseErrors
            sl_stop_detach(rt.L)
            rt.close()
            if let crash = run.crashed, end.failure == nil, run.abortMessage == nil {
                // Torn down (its scopes released above); a fresh state opens the stages
                // again and takes the next lines.
                console.line("scopelua: \(crash)")
                carried = end.counts
                restarts += 1
                continue
            }
            end.releaseFailures = releaseFailures
            end.resources = resources
            end.restarts = restarts
            end.busyNanos = end.counts.stages.reduce(0) { $0 &+ ($1.histogram?.total ?? 0) }
            outbox.post(.ended(worker: number, end))
            return
        }
    }

    /// Reads the input and hands its lines to the workers until it ends, a stop, or a
    /// failure. False when the run must stop without its final barrier.
    func feedWorkers(_ L: LuaState) -> Bool {
        guard let source = checkpointing.source else { return false }
        let reader = source.reader
        reader.wakeFD = parallel?.outbox.fd ?? -1
        reader.onIdle = { [unowned self] in
            self.sendPending()
            return self.flushBeforeWaiting()
        }
        lineReader = reader
        var lineNumber = source.line
        while true {
            source.line = lineNumber
            guard handleMessages() else { return false }
            if sl_stop_signal() != 0 { return true }  // the final barrier runs with .stop
            if !flushIfDue() { return false }
            if barrierDue, !parallelBarrier(.checkpoint) { return false }
            showParallelProgress()
            if parallel?.window.isFull ?? false {
                // Backpressure: nothing more is read until the oldest lines are done.
                sendPending()
                parallel?.outbox.wait(until: nextParallelWakeUp())
                continue
            }
            switch reader.next(deadline: nextParallelWakeUp()) {
            case .idle:
                continue
            case .stopped:
                return true
            case .end:
                return true
            case .failed(let reason):
                abortMessage = "cannot read input: \(reason)"
                return false
            case .tooLong(let prefix, let length):
                lineNumber += 1
                prefix.withUnsafeBufferPointer { dispatch($0, line: lineNumber, tooLong: length) }
            case .line(let bytes):
                lineNumber += 1
                if Self.isBlank(bytes) { continue }
                dispatch(bytes, line: lineNumber, tooLong: 0)
            }
        }
    }

    /// The coordinator's loop over an ingest feed (`scopelua serve --workers N`): each
    /// request's lines go to the worker with the fewest lines to do (whole, when they fit
    /// in one take; by the partition key when the pipeline has one), under the numbers
    /// the feed gave them. A request is answered once its lines are done, written, the
    /// sinks synced, and every worker that had some of them ran a barrier after them.
    /// Those barriers are each worker's own (docs/ARCHITECTURE.md, "Serving"): a worker
    /// whose lines are all done while nothing waits in the feed flushes at once, while the
    /// others go on with theirs, so one worker's flush (a database's commit, waiting for
    /// the disk) overlaps the other's work instead of stopping every worker at once. A
    /// graceful stop takes nothing new but dispatches what the feed holds; the final
    /// barrier is everyone's. The workers tell the feed of rejects and dead letters
    /// themselves, before they acknowledge a barrier.
    func feedWorkers(from source: IngestSource) -> Bool {
        guard let p = parallel else { return false }
        var stopping = false
        while true {
            guard handleMessages(), settleIngest(p, source) else { return false }
            if sl_stop_signal() != 0, !stopping {
                stopping = true
                source.feed.stopAccepting()
            }
            if !flushIfDue() { return false }
            if barrierDue { orderWorkerBarriers(p, idleOnly: false) }
            showParallelProgress()
            let take = Self.ingestTake(room: p.window.room)
            if take == 0 {
                sendPending()
                p.outbox.wait(until: nextParallelWakeUp())
                continue
            }
            let flushable = (0..<p.count).contains { Self.flushesNow(p, $0, idleOnly: true) }
            let wait = stopping || flushable ? 0 : nextParallelWakeUp()
            switch source.feed.next(deadline: wait, wake: p.outbox.fd, max: take) {
            case .idle:
                // All it held was taken: the barriers under way end, then the final
                // barrier settles the rest.
                if stopping { return awaitWorkerBarriers(p, source) }
                orderWorkerBarriers(p, idleOnly: true)
                sendPending()
                if !flushBeforeWaiting() { return false }
            case .end:
                return awaitWorkerBarriers(p, source)
            case .lines(var first, let chunks):
                for chunk in chunks {
                    let worker = p.partition == nil ? Self.ingestWorker(p, for: chunk) : nil
                    _ = chunk.forEachLine(first: first) { line, number in
                        dispatch(line, line: number, tooLong: 0, to: worker)
                        return true
                    }
                    first += chunk.count
                    source.handedOut = first - 1
                }
                sendPending()  // a request's events go out now, not when a batch fills
            }
        }
    }

    /// Whether the workers' output is written in input order (`ordered`, by default when
    /// reading a file or a stream) or as each worker's lines finish. `scopelua serve`
    /// keeps each request's order by default (with `partition_by`, each key's), not the
    /// order across requests: a request's lines go to one worker, which runs them in
    /// order, and its answer waits only for them. In the server's arrival order, every
    /// answer would also wait for every earlier line of the other workers, so one slow
    /// event held every request in flight (and a client cannot tell which of two
    /// requests in flight together arrived first).
    var ordersOutput: Bool {
        definition.ordered ?? (ingestSource == nil)
    }

    /// The worker a chunk of an ingest request goes to: the worker with the fewest lines
    /// to do, or, for the rest of a request cut where a take ended, the worker that has
    /// its beginning (its lines stay in order without ordered output).
    static func ingestWorker(_ p: ParallelState, for chunk: IngestChunk) -> Int {
        if chunk.continues, let last = p.lastIngestWorker { return last }
        let worker = leastBusy(p)
        p.lastIngestWorker = worker
        return worker
    }

    /// The worker with the fewest lines to do (the first of those).
    static func leastBusy(_ p: ParallelState) -> Int {
        var best = 0
        for w in p.outstanding.indices where p.outstanding[w] < p.outstanding[best] { best = w }
        return best
    }

    /// Whether worker `w` gets a barrier now: it has lines no barrier covers, none under
    /// way, and (`idleOnly`) all its lines are done.
    static func flushesNow(_ p: ParallelState, _ w: Int, idleOnly: Bool) -> Bool {
        p.lastDispatched[w] > p.coveredUpTo[w] && p.barrierOf[w] == nil && (!idleOnly || p.outstanding[w] == 0)
    }

    /// Orders a barrier to each worker that `flushesNow`, after every line dispatched so
    /// far. What its flush emits is written after the lines before it (lines of other
    /// workers done meanwhile may come first: nothing resumes from a position here).
    private func orderWorkerBarriers(_ p: ParallelState, idleOnly: Bool) {
        let due = (0..<p.count).filter { Self.flushesNow(p, $0, idleOnly: idleOnly) }
        guard !due.isEmpty else { return }
        sendPending()
        let upTo = p.window.next - 1
        for w in due {
            p.barrierOf[w] = upTo
            p.coveredUpTo[w] = upTo
            p.inboxes[w].send(.barrier(reason: .checkpoint, lastSeq: upTo, committing: read))
        }
        p.breakRun = true
    }

    /// Answers the requests whose lines are durable: done and written, the sinks synced
    /// after that, and flushed by a barrier of the worker that had them. The sinks are
    /// synced as soon as written lines a barrier covers are not (while the worker still
    /// flushes). A request waits for its own worker's flush only, not for the others'
    /// (and, when the output is ordered, for the lines before it to be done). False
    /// when the run must stop.
    private func settleIngest(_ p: ParallelState, _ source: IngestSource) -> Bool {
        if let failure = p.ownBarrierFailure {
            if abortMessage == nil, sinkFailure == nil { abortMessage = failure }
            return false
        }
        for i in p.runs.indices where p.runs[i].writtenAt == nil {
            // Ordered, a line is written once every line before it is done; unordered,
            // once it is done (what it produced was written as it came).
            if p.runs[i].last < p.window.base {
                p.runs[i].writtenAt = p.syncs
            } else if !p.ordered {
                while p.runs[i].checked <= p.runs[i].last, p.window.isDone(p.runs[i].checked) { p.runs[i].checked += 1 }
                if p.runs[i].checked > p.runs[i].last { p.runs[i].writtenAt = p.syncs }
            }
        }
        // Written since the last sync, and a barrier of its worker covers it (under way:
        // the sync overlaps the worker's flush).
        if p.runs.contains(where: { $0.writtenAt == p.syncs && p.coveredUpTo[$0.worker] >= $0.last }) {
            p.syncs += 1
            guard flushSinksForBarrier() else { return false }
        }
        let durable = { (run: IngestRun) in
            (run.writtenAt.map { $0 < p.syncs } ?? false) && run.last <= p.flushedUpTo[run.worker]
        }
        guard p.runs.contains(where: durable) else { return true }
        applyCounts()
        read = p.restored.read + p.window.next
        publish()  // an answered request is counted in /metrics when its answer goes
        // Ingest lines are numbered in dispatch order: line = sequence number + offset.
        let offset = source.handedOut - (p.window.next - 1)
        for run in p.runs where durable(run) {
            source.feed.settle(lines: (run.first + offset)...(run.last + offset))
        }
        p.runs.removeAll(where: durable)
        scheduleBarrier()
        return true
    }

    /// Waits until no worker's own barrier is under way (before the final barrier, which
    /// is everyone's). False when the run must stop.
    private func awaitWorkerBarriers(_ p: ParallelState, _ source: IngestSource) -> Bool {
        while true {
            guard handleMessages(), settleIngest(p, source) else { return false }
            if !p.barrierOf.contains(where: { $0 != nil }) { return true }
            if p.ends.contains(where: { $0 != nil }) { return false }
            p.outbox.wait(until: nextParallelWakeUp())
        }
    }

    /// How many lines the coordinator takes from an ingest feed when the reorder window
    /// has `room`: a whole batch, or none (backpressure). Never more than fit: a ring that
    /// overflowed would overwrite lines it still holds.
    static func ingestTake(room: Int) -> Int {
        room >= ingestBatch ? ingestBatch : 0
    }

    /// Puts one line in its worker's batch: the `chosen` one (an ingest request's), else by
    /// its partition key, else by its number (round-robin blocks of `batchSize` lines, the
    /// same for every run over the input).
    private func dispatch(_ bytes: UnsafeBufferPointer<UInt8>, line: Int, tooLong: Int, to chosen: Int? = nil) {
        guard let p = parallel else { return }
        let worker: Int
        if let chosen {
            worker = chosen
        } else if let partition = p.partition, tooLong == 0 {
            worker = partition(bytes) ?? 0
        } else {
            worker = ((line - 1) / p.batchSize) % p.count
        }
        if let last = p.lastWorker, last != worker, !p.pending[last].items.isEmpty {
            send(p, last)
        }
        p.lastWorker = worker
        let seq = p.window.add(line: line)
        p.outstanding[worker] += 1
        p.lastDispatched[worker] = seq
        if ingestSource != nil {
            if !p.breakRun, let last = p.runs.last, last.worker == worker, last.last == seq - 1, last.writtenAt == nil {
                p.runs[p.runs.count - 1].last = seq
            } else {
                p.runs.append(IngestRun(first: seq, last: seq, worker: worker))
                p.breakRun = false
            }
        }
        let start = p.pending[worker].bytes.count
        p.pending[worker].bytes.append(contentsOf: bytes)
        p.pending[worker].items.append(.init(seq: seq, line: line, start: start, end: p.pending[worker].bytes.count, tooLong: tooLong))
        read = p.restored.read + p.window.next
        if p.pending[worker].items.count >= p.batchSize { send(p, worker) }
    }

    private func send(_ p: ParallelState, _ worker: Int) {
        let batch = p.pending[worker]
        p.pending[worker] = WorkBatch()
        p.pending[worker].bytes.reserveCapacity(batch.bytes.count)
        p.inboxes[worker].send(.batch(batch))
    }

    /// Sends every batch not yet sent (before the reader waits, a barrier, the end).
    func sendPending() {
        guard let p = parallel else { return }
        for w in 0..<p.count where !p.pending[w].items.isEmpty { send(p, w) }
    }

    /// Takes what the workers posted: writes what is due, records barrier
    /// acknowledgements and ends. False when the run must stop (a worker failed, a sink
    /// failed).
    @discardableResult
    func handleMessages() -> Bool {
        guard let p = parallel else { return false }
        for message in p.outbox.take() {
            switch message {
            case .results(let w, let results):
                let bytes = ResultBytes(results.bytes)
                for e in results.entries {
                    if e.kind == .done {
                        p.window.markDone(e.seq)
                        if p.outstanding.indices.contains(w - 1) { p.outstanding[w - 1] -= 1 }
                        continue
                    }
                    let chunk = ReorderWindow.Chunk(kind: e.kind, bytes: bytes, start: e.start, end: e.end)
                    if p.ordered, !p.window.writableNow(e.seq, own: e.own) {
                        p.window.keep(chunk, at: e.seq)
                    } else {
                        p.written += writeChunk(chunk)
                    }
                }
                var written = 0
                p.window.drain { written += writeChunk($0) }
                p.written += written
            case .barrierDone(let w, let failure, let counts) where p.barrierOf.indices.contains(w - 1) && p.barrierOf[w - 1] != nil:
                // A worker's own barrier (`feedWorkers(from:)`).
                if let upTo = p.barrierOf[w - 1] { p.flushedUpTo[w - 1] = upTo }
                p.barrierOf[w - 1] = nil
                if p.ownBarrierFailure == nil { p.ownBarrierFailure = failure }
                p.lastCounts[w - 1] = counts
            case .barrierDone(let w, let failure, let counts):
                p.acks += 1
                if p.ackFailure == nil { p.ackFailure = failure }
                p.lastCounts[w - 1] = counts
            case .failed(_, let message):
                if abortMessage == nil { abortMessage = message }
                stopWorkers(p, because: "the run stopped: \(message)")
            case .ended(let w, let end):
                p.ends[w - 1] = end
                p.lastCounts[w - 1] = end.counts
                if let failure = end.failure, abortMessage == nil {
                    abortMessage = failure
                    stopWorkers(p, because: "the run stopped: \(failure)")
                }
            }
        }
        if sl_stop_forced() != 0, !p.forcedPassedOn {
            p.forcedPassedOn = true
            stopWorkers(p, because: "stop forced")
        }
        return !p.failed && sinkFailure == nil
    }

    private func stopWorkers(_ p: ParallelState, because why: String) {
        p.failed = true
        for inbox in p.inboxes { inbox.send(.stop(why)) }
    }

    /// Writes a chunk to its sink. Returns the output lines written (0 or 1).
    private func writeChunk(_ chunk: ReorderWindow.Chunk) -> Int {
        guard sinkFailure == nil else { return 0 }
        return chunk.bytes.bytes.withUnsafeBufferPointer { all -> Int in
            guard let base = all.baseAddress else { return 0 }
            let start = UnsafeRawPointer(base + chunk.start).assumingMemoryBound(to: CChar.self)
            let len = chunk.end - chunk.start
            switch chunk.kind {
            case .output:
                if let file = output as? FileSink {
                    let code = file.writeLine(start, len)
                    if code != 0 { _ = sinkFailed(file, errno: code) }
                }
                return 1
            case .deadLetter:
                if let file = deadLetter {
                    let code = file.writeLine(start, len)
                    if code != 0 { _ = sinkFailed(file, errno: code) }
                }
                return 0
            case .done:
                return 0
            }
        }
    }

    /// A barrier across the workers: each runs its stages' flush once every line sent
    /// to it has left its pipeline, then the sinks flush and the checkpoint commits the
    /// position read so far (the watermark: every line before it is done). False when
    /// the run must stop.
    func parallelBarrier(_ why: BarrierReason) -> Bool {
        guard startBarrier(why) else { return false }
        guard let ok = awaitAcks(), ok else {
            if abortMessage == nil, sinkFailure == nil {
                abortMessage = parallel?.ackFailure ?? "pipeline '\(definition.name)': a worker's barrier failed"
            }
            return false
        }
        applyCounts()
        return commitBarrier()
    }

    /// Sends the barrier to every worker, after every line read so far.
    private func startBarrier(_ why: BarrierReason) -> Bool {
        sendPending()
        guard let p = parallel, !p.failed else { return false }
        p.acks = 0
        p.ackFailure = nil
        let lastSeq = p.window.next - 1
        p.barrierSeq = lastSeq
        p.barrierSynced = false
        let committing = checkpointing.source?.line ?? read
        for inbox in p.inboxes { inbox.send(.barrier(reason: why, lastSeq: lastSeq, committing: committing)) }
        return true
    }

    /// Waits for every worker's acknowledgement (writing what arrives meanwhile): whether
    /// all succeeded (else `ackFailure` says why), or nil when a worker failed or ended
    /// first.
    private func awaitAcks() -> Bool? {
        while true {
            let ok = handleMessages()
            guard let p = parallel else { return nil }
            if p.acks >= p.count {
                return p.ackFailure == nil && ok
            }
            if !ok || p.ends.contains(where: { $0 != nil }) { return nil }
            // Every line before the barrier is written: the sinks are synced now, while the
            // workers still run their stages' flush (their own syncs: a database's commit),
            // not after. What a flush emits comes later and is synced at the commit.
            if !p.barrierSynced, barrierSyncs, p.window.base > p.barrierSeq {
                p.barrierSynced = true
                guard flushSinksForBarrier() else { return nil }
                continue
            }
            // What arrives is written out promptly, also while a slow worker is awaited.
            guard flushIfDue() else { return nil }
            p.outbox.wait(until: nextParallelWakeUp())
        }
    }

    /// After the input: the final barrier (unless the run failed or the stop was forced),
    /// the verdict to the workers (their stages close), and their ends.
    func finishWorkers() {
        guard parallel != nil else { return }
        var finished = false
        if abortMessage == nil, sinkFailure == nil, sl_stop_forced() == 0, !(parallel?.failed ?? true),
           startBarrier(sl_stop_signal() != 0 ? .stop : .end), let ok = awaitAcks(), ok {
            applyCounts()
            finished = commitBarrier()
        }
        checkpointing.finished = finished
        if let p = parallel {
            let verdict: WorkerOrder = finished ? .finish(uncommitted: nil)
                : .finish(uncommitted: uncommittedEnd ?? abortMessage.map { "the run stopped: \($0)" })
            for inbox in p.inboxes { inbox.send(verdict) }
            if !finished { stopWorkers(p, because: abortMessage.map { "the run stopped: \($0)" } ?? "the run stopped") }
            p.failed = false
        }
        // Their ends (and what they wrote while closing).
        while let p = parallel, p.ends.contains(where: { $0 == nil }) {
            handleMessages()
            guard let p = parallel, p.ends.contains(where: { $0 == nil }) else { break }
            p.outbox.wait(until: sl_monotonic_ns() &+ 100_000_000)
        }
        handleMessages()
        guard let p = parallel else { return }
        var written = 0
        p.window.drainAll { written += writeChunk($0) }
        p.written += written
    }

    /// The run's counts: the checkpoint's plus every worker's latest.
    private func applyCounts() {
        guard let p = parallel else { return }
        var total = p.restored
        for c in p.lastCounts { total.add(c) }
        read = total.read
        rejected = total.rejected
        retried = total.retried
        original = total.original
        fanout = total.fanout
        fanoutCreated = total.fanoutCreated
        rejectNotices = total.rejectNotices
        for (i, s) in stages.enumerated() where i < total.stages.count {
            let c = total.stages[i]
            s.calls = c.calls
            s.errors = c.errors
            s.skipped = c.skipped
            s.deadLettered = c.deadLettered
            s.retried = c.retried
            s.backoffNanos = c.backoffNanos
            s.breaches = c.breaches
            s.notices = c.notices
        }
    }

    /// At the end: the counts as above, lines never done in flight, the workers' stage
    /// timings merged.
    private func mergeWorkerCounts() {
        guard let p = parallel else { return }
        applyCounts()
        // The coordinator read every line it dispatched; those not done are in flight.
        read = p.restored.read + p.window.next
        inFlightLines = p.window.undoneLines
        original.inFlight = inFlightLines.count
        for end in p.ends.compactMap({ $0 }) {
            for (i, s) in end.counts.stages.enumerated() where i < stages.count {
                if let h = s.histogram { stages[i].time.merge(h) }
            }
        }
    }

    /// The earliest of a barrier due by time and the next progress update.
    private func nextParallelWakeUp() -> UInt64? {
        var wake: UInt64? = drawsProgress ? sl_monotonic_ns() &+ 500_000_000 : nil
        if checkpointing.dueTime != .max { wake = min(wake ?? checkpointing.dueTime, checkpointing.dueTime) }
        if output != nil || deadLetter != nil { wake = min(wake ?? nextFlush, nextFlush) }
        return wake
    }

    /// The progress line, and the board's snapshot (at most every 250 ms each).
    private func showParallelProgress() {
        publishIfDue()
        guard drawsProgress, let p = parallel else { return }
        let now = sl_monotonic_ns()
        guard now &- lastProgress > 500_000_000 else { return }
        lastProgress = now
        let seconds = Double(now &- startedAt) / 1e9
        let rate = Report.rate(seconds > 0 ? Double(p.window.next) / seconds : 0)
        p.console.progress("scopelua: \(read) events read, \(p.written) out, \(rate) events/s, \(p.count) workers")
    }

    /// Which worker an event goes to by the value at `path` (a field, or fields joined
    /// by dots): found without decoding the line (the worker decodes it once).
    static func partitioner(_ key: PartitionKey, workers: Int) -> (UnsafeBufferPointer<UInt8>) -> Int? {
        return { bytes in
            guard case .key(let hash) = key.locate(bytes) else { return nil }
            return Int(hash % UInt64(workers))
        }
    }
}

extension WorkerCounts {
    /// Adds another worker's counts (stages by position).
    mutating func add(_ o: WorkerCounts) {
        read += o.read
        rejected += o.rejected
        retried += o.retried
        replayed += o.replayed
        original.add(o.original)
        fanout.add(o.fanout)
        fanoutCreated += o.fanoutCreated
        rejectNotices.add(o.rejectNotices)
        if stages.count < o.stages.count { stages += Array(repeating: StageCounts(), count: o.stages.count - stages.count) }
        for (i, s) in o.stages.enumerated() {
            stages[i].calls += s.calls
            stages[i].errors += s.errors
            stages[i].skipped += s.skipped
            stages[i].deadLettered += s.deadLettered
            stages[i].retried += s.retried
            stages[i].backoffNanos &+= s.backoffNanos
            stages[i].breaches.add(s.breaches)
            stages[i].notices.add(s.notices)
            if let h = s.histogram { stages[i].histogram = stages[i].histogram.map { $0.adding(h) } ?? h }
        }
    }
}

extension PipelineRun.Outcomes {
    mutating func add(_ o: Self) {
        emitted += o.emitted
        filtered += o.filtered
        skipped += o.skipped
        deadLettered += o.deadLettered
        inFlight += o.inFlight
    }
}

extension PipelineRun.Notices {
    mutating func add(_ o: Self) {
        count += o.count
        shown += o.shown
        if first == nil { first = o.first }
    }
}

extension PipelineRun {
    /// Lines a batch holds at most: enough that the coordinator's cost per batch is small
    /// next to the workers' (Benchmarks: 64 left the coordinator a fifth of a core).
    static let batchSize = 256
}

/// Starts a thread running `body` (joinable). Nil (errno set) if it cannot. Its `name`
/// (cut to 15 bytes, the kernel's limit) is what `top -H`, `ps -L`, perf and gdb show,
/// so an operator can tell a busy worker from the coordinator and the HTTP threads.
func startThread(named name: String, _ body: @escaping @Sendable () -> Void) -> pthread_t? {
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var thread = pthread_t()
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    defer { pthread_attr_destroy(&attr) }
    pthread_attr_setstacksize(&attr, 16 << 20)  // Lua's C stack (deep pcall nesting) and Swift frames
    let rc = pthread_create(&thread, &attr, { raw in
        guard let raw else { return nil }
        Unmanaged<ThreadBody>.fromOpaque(raw).takeRetainedValue().body()
        return nil
    }, box)
    guard rc == 0 else {
        Unmanaged<ThreadBody>.fromOpaque(box).release()
        errno = rc
        return nil
    }
    _ = sl_name_thread(thread, name)  // a name is a help, not a need: a failure is ignored
    return thread
}

/// What a new thread runs (handed through pthread_create's one pointer).
private final class ThreadBody: @unchecked Sendable {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}
