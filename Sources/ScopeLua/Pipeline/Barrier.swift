import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Why a barrier runs: the second argument of a stage's `flush(ctx, why)`.
enum BarrierReason: String {
    /// `--checkpoint-every` came due: the run goes on after it.
    case checkpoint
    /// The input ended: the stages close next.
    case end
    /// A graceful stop (SIGINT / SIGTERM): the stages close next (with --checkpoint, a
    /// rerun resumes here).
    case stop
}

/// A run's barriers and its checkpoint (docs/ARCHITECTURE.md, "Barriers and checkpoints").
struct Checkpointing {
    var store: CheckpointStore?
    /// How often a barrier runs between events; nil: only at the end.
    var every: CheckpointInterval?
    /// The input read from a descriptor (nil for a list).
    var source: LineSource?
    /// The checkpoint this run resumed from.
    var resumed: CheckpointRecord?
    /// When the next barrier is due: `read` reaching `dueRead`, or the monotonic clock
    /// reaching `dueTime`.
    var dueRead = Int.max
    var dueTime = UInt64.max
    /// Barriers committed, those of the runs resumed from included.
    var barriers = 0
    /// Where the last commit of this run left the input.
    var committed: SourcePosition?
    /// The stage whose flush is running (what it emits is described so).
    var flushing: Int?
    /// While a barrier runs: the input line it commits (`ctx.committing`), the last line
    /// read before it. A stage that stores it in the transaction its flush commits knows,
    /// after a crash, which replayed events it already applied (README, "Checkpoints and
    /// delivery guarantees").
    var committing: Int?
    /// A worker's barrier commits this line (the coordinator's), not its own count.
    var committingOverride: Int?
    /// Whether the final barrier ran to its end (and committed, with a store).
    var finished = false
    /// `read` as restored from the checkpoint (not read by this process).
    var restoredRead = 0
}

/// What a resumed run does with an output or dead-letter file it opens.
enum SinkResumption: Equatable {
    /// Not resuming: truncated to nothing, as always.
    case fresh
    /// Truncated back to the committed length.
    case truncate(Int64)
    /// The checkpoint could not record a length (it was not a regular file then): kept
    /// whole, written after its end (at-least-once).
    case append
    case refused(String)
}

extension PipelineRun {
    /// The input as messages name it.
    var inputName: String {
        switch options.input {
        case .path(let path): return path
        case .descriptor(_, let name): return name
        case .stdin: return "stdin"
        case .list: return "the input list"
        case .channel(let link): return "worker \(link.number)'s input"
        case .stream: return streamSource?.label ?? "the Redis stream"
        case .ingest(let feed): return feed.name
        }
    }

    /// The output as the command line names it (what a checkpoint records).
    var outputName: String {
        switch options.output {
        case .path(let path): return path
        case .stdout: return "-"
        case .discard: return "none"
        case .collect: return "the collected list"
        case .function: return "the output function"
        case .channel: return "the coordinator"
        case .stream(let url): return RedisEndpoint.masked(url)
        }
    }

    // MARK: - Opening and resuming

    /// Opens `--checkpoint` and, when it holds a committed checkpoint, checks that this
    /// run may resume from it (same pipeline, input file, output and dead-letter file)
    /// and seeks the input there. A refusal (exit 2) truncates nothing: the sinks are
    /// opened after this.
    func openCheckpoint() -> Outcome? {
        // A Redis stream acknowledges its entries at barriers: they run by default.
        // So does an ingest feed, whose requests are answered at barriers (and at every
        // pause in what arrives, see feedIngest).
        checkpointing.every = options.checkpointEvery
            ?? (options.checkpoint != nil || streamSource != nil || ingestSource != nil ? .standard : nil)
        guard let path = options.checkpoint else { return nil }
        guard let source = checkpointing.source, source.identity() != nil else {
            return .refused("--checkpoint \(path): the input \(inputName) is not a regular file (stdin, a pipe): what was read cannot be read again, so a run over it cannot resume; give the input as a file")
        }
        if let problem = checkpointOverlaps(path) { return .refused(problem) }
        let store: CheckpointStore
        switch CheckpointStore.open(path, reset: options.checkpointReset) {
        case .success(let s): store = s
        case .failure(let problem): return .refused(problem.message)
        }
        let record: CheckpointRecord
        switch store.load() {
        case .failure(let problem):
            store.close()
            return .refused(problem.message)
        case .success(nil):
            checkpointing.store = store
            return nil
        case .success(let found?):
            record = found
        }
        let reset = " (the checkpoint is left as it was; --checkpoint-reset starts over)"
        func refuse(_ why: String) -> Outcome {
            store.close()
            return .refused("checkpoint \(path): \(why)" + reset)
        }
        guard record.pipeline == definition.name else {
            return refuse("it was made by pipeline '\(record.pipeline)', this run is pipeline '\(definition.name)'")
        }
        // Lines go to workers by their number: a stage that keeps the lines it committed
        // per worker (ctx.worker) finds each replayed line in the same worker only with
        // the same number of workers.
        let madeWith = record.counters.first { $0.0 == "workers" }?.1 ?? 1
        guard madeWith == max(1, options.workers) else {
            return refuse("it was made with --workers \(madeWith), this run has --workers \(max(1, options.workers)): resume with --workers \(madeWith) (each worker's stages committed their own lines)")
        }
        if let mismatch = record.identity.mismatch(source.fd, name: inputName) { return refuse(mismatch) }
        guard record.output == outputName else {
            return refuse("it was made with --output \(record.output), this run has --output \(outputName)")
        }
        guard record.deadLetter == options.deadLetter else {
            let was = record.deadLetter.map { "--dead-letter \($0)" } ?? "no --dead-letter"
            let now = options.deadLetter.map { "--dead-letter \($0)" } ?? "none"
            return refuse("it was made with \(was), this run has \(now)")
        }
        if let problem = source.resume(from: record.position) {
            store.close()
            return .failed("checkpoint \(path): \(problem)")
        }
        checkpointing.store = store
        checkpointing.resumed = record
        checkpointing.barriers = record.barriers
        checkpointing.committed = record.position
        var note = "scopelua: resuming from checkpoint \(path): \(inputName) after line \(record.position.line) (byte \(record.position.offset))"
        if record.outputLength == nil, case .stdout = options.output {
            note += "; the output (stdout) cannot be taken back: what was written after that line before the run ended is written again"
        }
        rt.diagnose(note)
        return nil
    }

    /// Why the checkpoint file cannot be `path`: it names the input, the output or the
    /// dead-letter file (a file SQLite writes would corrupt them, or they it).
    private func checkpointOverlaps(_ path: String) -> String? {
        let identity = { (p: String) in InputFile.identity(atPath: p, regularOnly: false) }
        let mine = identity(path)
        var others: [(String, String)] = [("input", inputName)]
        if case .path(let p) = options.output { others.append(("output", p)) }
        if let d = options.deadLetter { others.append(("dead-letter file", d)) }
        for (what, other) in others where other == path || mine != nil && identity(other) == mine {
            return "--checkpoint \(path) is the \(what) file: give the checkpoint a file of its own"
        }
        return nil
    }

    /// What to do with the output or dead-letter file open on `fd` (`what` as in
    /// openSinks) before the run writes to it.
    func resumption(of what: String, fd: Int32) -> SinkResumption {
        guard let record = checkpointing.resumed, let path = options.checkpoint else { return .fresh }
        let committed = what == "output" ? record.outputLength : record.deadLetterLength
        let name = what == "output" ? outputName : (options.deadLetter ?? "")
        guard let committed else { return .append }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return .append }
        guard Int64(st.st_size) >= committed else {
            return .refused("checkpoint \(path): the \(what) \(name) is shorter than the checkpoint says (\(committed) bytes committed, \(st.st_size) now): it was changed or replaced since, so resuming would lose events (the checkpoint is left as it was; --checkpoint-reset starts over)")
        }
        return .truncate(committed)
    }

    /// Brings a sink opened by a resumed run to its committed state. Nil, or the failure.
    func resume(_ sink: FileSink, _ keep: SinkResumption, _ L: LuaState) -> String? {
        switch keep {
        case .fresh, .refused: return nil
        case .truncate(let length):
            let code = sink.resume(at: length, L)
            return code == 0 ? nil : "cannot truncate \(sink.what) \(sink.name) back to its checkpoint (\(length) bytes): \(String(cString: strerror(code)))"
        case .append:
            guard let file = sink.file, fseeko(file, 0, SEEK_END) == 0 else {
                return "cannot write \(sink.what) \(sink.name) after its end: \(String(cString: strerror(errno)))"
            }
            return nil
        }
    }

    // MARK: - Counters

    /// The report's counts, as a checkpoint commits them. Stages are keyed by position
    /// and name (`stage.2.enrich.calls`): a rerun with another pipeline keeps the counts
    /// of the stages that match.
    func checkpointCounters() -> [(String, Int)] {
        var c: [(String, Int)] = [
            ("read", read), ("rejected", rejected), ("retried", retried),
            ("emitted", original.emitted), ("filtered", original.filtered), ("skipped", original.skipped),
            ("dead_lettered", original.deadLettered),
            ("fanout.created", fanoutCreated), ("fanout.emitted", fanout.emitted), ("fanout.filtered", fanout.filtered),
            ("fanout.skipped", fanout.skipped), ("fanout.dead_lettered", fanout.deadLettered),
        ]
        if options.workers > 1 { c.append(("workers", options.workers)) }
        for (i, s) in stages.enumerated() {
            let key = "stage.\(i).\(s.definition.name)."
            c += [(key + "calls", s.calls), (key + "errors", s.errors), (key + "skipped", s.skipped),
                  (key + "dead_lettered", s.deadLettered), (key + "retried", s.retried)]
        }
        return c
    }

    /// Continues the counts of the checkpoint resumed from (once the stages are open),
    /// and schedules the first barrier.
    func resumeCounters() {
        defer { scheduleBarrier() }
        guard let record = checkpointing.resumed else { return }
        let c = Dictionary(record.counters, uniquingKeysWith: { a, _ in a })
        read = c["read"] ?? 0
        rejected = c["rejected"] ?? 0
        retried = c["retried"] ?? 0
        original.emitted = c["emitted"] ?? 0
        original.filtered = c["filtered"] ?? 0
        original.skipped = c["skipped"] ?? 0
        original.deadLettered = c["dead_lettered"] ?? 0
        fanoutCreated = c["fanout.created"] ?? 0
        fanout.emitted = c["fanout.emitted"] ?? 0
        fanout.filtered = c["fanout.filtered"] ?? 0
        fanout.skipped = c["fanout.skipped"] ?? 0
        fanout.deadLettered = c["fanout.dead_lettered"] ?? 0
        for (i, s) in stages.enumerated() {
            let key = "stage.\(i).\(s.definition.name)."
            s.calls = c[key + "calls"] ?? 0
            s.errors = c[key + "errors"] ?? 0
            s.skipped = c[key + "skipped"] ?? 0
            s.deadLettered = c[key + "dead_lettered"] ?? 0
            s.retried = c[key + "retried"] ?? 0
        }
        checkpointing.restoredRead = read
    }

    // MARK: - The barrier

    /// Whether a periodic barrier is due (asked between events).
    var barrierDue: Bool {
        read >= checkpointing.dueRead || checkpointing.dueTime != .max && sl_monotonic_ns() >= checkpointing.dueTime
    }

    func scheduleBarrier() {
        guard let every = checkpointing.every else { return }
        checkpointing.dueRead = every.events.map { read.addingReportingOverflow($0).overflow ? .max : read + $0 } ?? .max
        checkpointing.dueTime = every.seconds.map { Self.later(sl_monotonic_ns(), by: Self.nanoseconds($0)) } ?? .max
    }

    /// A barrier, between events (every event read before it has left the pipeline):
    /// each stage's `flush(ctx, why)` in pipeline order (what a flush emits goes through
    /// the stages after it before their own flush); then the output and the dead-letter
    /// file are flushed (and synced, with a checkpoint); then, with --checkpoint, the
    /// input position, the sinks' lengths and the counts are committed in one
    /// transaction. False when the run must stop: a flush aborted (nothing is
    /// committed), a sink failed, or the commit failed.
    func barrier(_ L: LuaState, _ why: BarrierReason) -> Bool {
        let savedLine = eventLine
        let savedFiring = firingTimers
        eventLine = 0
        firingTimers = true  // no timer fires inside a barrier (a retry's wait included)
        // Every line read so far has left the pipeline: the checkpoint (if any) resumes
        // after this one. A list input has no checkpoint; its items are its lines.
        checkpointing.committing = checkpointing.committingOverride ?? checkpointing.source?.line ?? read
        defer {
            eventLine = savedLine
            firingTimers = savedFiring
            checkpointing.committing = nil
        }
        for i in stages.indices where stages[i].definition.flush != LUA_NOREF {
            guard runFlush(L, i, why) else { return false }
        }
        return commitBarrier()
    }

    /// Whether a barrier syncs the sinks: when something outside relies on it (a
    /// checkpoint, a Redis group's acknowledgement, an HTTP request's answer).
    var barrierSyncs: Bool {
        checkpointing.store != nil || streamSource != nil || ingestSource != nil
    }

    /// Flushes the output and dead-letter sinks (and syncs them when `barrierSyncs`).
    /// False when one failed (the run stops).
    func flushSinksForBarrier() -> Bool {
        for sink in [output, deadLetter as EventSink?].compactMap({ $0 }) {
            let code = sink.flush(durable: barrierSyncs)
            if code != 0 { return sinkFailed(sink, errno: code) }
        }
        return true
    }

    /// The end of a barrier, once every stage flushed (in every worker): the sinks are
    /// flushed (and synced, with a checkpoint), then the checkpoint commits. False when
    /// the run must stop.
    func commitBarrier() -> Bool {
        // (A sink synced since its last write, as the coordinator does while the workers
        // flush, is not synced again.)
        guard flushSinksForBarrier() else { return false }

        if let store = checkpointing.store, let source = checkpointing.source {
            guard let identity = source.identity() else {
                abortMessage = "cannot commit checkpoint \(store.path): the input \(inputName) is no longer a regular file"
                return false
            }
            let record = CheckpointRecord(
                pipeline: definition.name, input: inputName, identity: identity, position: source.position,
                output: outputName, outputLength: output?.checkpointState,
                deadLetter: options.deadLetter, deadLetterLength: deadLetter?.checkpointState,
                counters: checkpointCounters(), barriers: checkpointing.barriers + 1)
            if let problem = store.commit(record) {
                abortMessage = "cannot commit checkpoint \(store.path): \(problem) (the previous checkpoint stands)"
                return false
            }
            checkpointing.barriers += 1
            checkpointing.committed = record.position
        }
        // The board first: an HTTP request answered by the acknowledgement below is
        // already counted in /metrics when its answer goes out.
        publish()
        // What was read before this barrier is done and durable (committed): the source
        // may let it go now, never before (a Redis stream acknowledges its entries).
        let source: EventSource? = streamSource ?? ingestSource ?? checkpointing.source
        if let source, let problem = source.ack(upTo: source.position) {
            rt.diagnose("scopelua: cannot acknowledge what was read from \(source.name): \(problem) (it stays pending and is delivered again)")
        }
        scheduleBarrier()
        return true
    }

    /// The barrier at the end of the input or on a graceful stop, before any stage
    /// closes: not after an abort, a failed write, a forced stop, or with an event in
    /// flight (its effects are not all there: nothing after the last checkpoint is
    /// committed, and with --checkpoint the stages close with an error).
    func finalBarrier(_ L: LuaState, reason: BarrierReason? = nil) {
        guard abortMessage == nil, sinkFailure == nil, sl_stop_forced() == 0,
              original.inFlight == 0, fanout.inFlight == 0 else { return }
        checkpointing.finished = barrier(L, reason ?? (sl_stop_signal() != 0 ? .stop : .end))
    }

    /// With --checkpoint, the error the stages close with when the final barrier did not
    /// commit (and no abort explains it): their transactions roll back, and a rerun
    /// redoes what the last checkpoint does not cover.
    var uncommittedEnd: String? {
        guard let store = checkpointing.store, !checkpointing.finished, abortMessage == nil else { return nil }
        let line = checkpointing.committed?.line ?? 0
        let why = sinkFailure?.message ?? (sl_stop_forced() != 0 ? "stop forced" : "stopped with an event in flight")
        return "the run ended before its final checkpoint (\(why)): what came after line \(line), where checkpoint \(store.path) stands, is not committed"
    }

    /// Runs stage `i`'s flush(ctx, why) in its task scope (as process runs: what it
    /// acquires is released when it returns, unless moved with ctx:own); what it emitted
    /// goes downstream. A failure follows the stage's policy: a retry calls flush again;
    /// abort stops the run (the barrier commits nothing); skip and dead_letter (there is
    /// no event to skip or dead-letter) count and show the error as a timer's is, and the
    /// barrier goes on. False when the run must stop.
    private func runFlush(_ L: LuaState, _ i: Int, _ why: BarrierReason) -> Bool {
        let stage = stages[i]
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        Lua.reserve(L, 16, for: "a stage's flush")
        checkpointing.flushing = i
        defer { checkpointing.flushing = nil }
        var policy = stage.policy
        var attempt = 0
        let queueBase = queueTop
        while true {
            rt.current = stage.task
            runningStage = i
            lua_rawgeti(L, Lua.registry, lua_Integer(stage.definition.flush))
            lua_rawgeti(L, Lua.registry, lua_Integer(stage.ctx))
            Lua.push(L, why.rawValue)
            let call = limitedCall(L, stage, .flush, nargs: 2, nresults: 0)
            runningStage = nil
            var status = call.code
            var breachTraceback: String?
            if call.breach != 0 { (status, breachTraceback) = pushBreach(L, stage, call, .flush, where: "in flush") }
            let top = lua_gettop(L)  // the error object, if it failed
            let (failures, traceback) = endStageCall(L, stage, status: status, result: top, traceback: breachTraceback)
            if status == LUA_OK, failures == 0 {
                return deliverEmitted(L, after: i, from: queueBase)
            }
            _ = rt.mergeErrors(L, primary: status == LUA_OK ? 0 : top, failures: failures)
            let error = lua_gettop(L)
            stage.errors += 1
            let firstLine = Self.firstLine(Lua.describe(L, error))
            if stage.notices.first == nil { stage.notices.first = "in flush: \(firstLine)" }
            dropEmitted(L, from: queueBase)  // what the failed call emitted never existed
            if sl_stop_forced() != 0 {
                forcedStage = stage.definition.name
                return false
            }
            if case .retry(let times, let backoff, let then) = policy {
                var waited = true
                if attempt < times, backoff > 0 {
                    switch self.backoff(L, backoff * Double(1 << min(attempt, 20)), stage) {
                    case .waited: break
                    case .stopped: waited = false  // a stop does not wait out a backoff: `then` applies
                    case .failed: return false
                    }
                }
                if attempt < times, waited {
                    attempt += 1
                    retried += 1
                    stage.retried += 1
                    lua_settop(L, base)
                    continue
                }
                policy = then
            }
            switch policy {
            case .skip, .deadLetter:
                stage.notices.count += 1
                if stage.notices.shown < Notices.shownAtMost {
                    stage.notices.shown += 1
                    rt.diagnose("scopelua: stage '\(stage.definition.name)' failed in flush: \(firstLine) (the barrier goes on)")
                }
                return true
            case .abort, .retry:
                abortMessage = "pipeline '\(definition.name)' aborted: stage '\(stage.definition.name)' failed in flush (\(why.rawValue)): \(describeError(L, error, traceback: traceback))"
                return false
            }
        }
    }
}
