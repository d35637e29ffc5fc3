import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// What leaves the pipeline: the output, dead letters and rejected input lines.
extension PipelineRun {
    // MARK: - Output, dead letters, rejects

    /// Opens the output and dead-letter files. Neither may be the input file (same
    /// device and inode, whatever the name): both are opened without truncating,
    /// compared, and only then truncated, so a refused run destroys nothing.
    func openSinks(_ L: LuaState) -> Outcome? {
        if case .channel(let link) = options.input {
            // A worker's sinks: its coordinator writes what they take.
            output = link.discardsOutput ? DiscardSink() : ChannelSink(link, kind: .output)
            deadLetter = link.hasDeadLetter ? ChannelSink(link, kind: .deadLetter) : nil
            return nil
        }
        let input = InputFile.identity(inputFD)
        var opened: [(fd: Int32, path: String, what: String)] = []
        func discard() { for o in opened { Glibc.close(o.fd) } }
        var wanted: [(path: String, what: String)] = []
        if case .path(let path) = options.output { wanted.append((path, "output")) }
        if let path = options.deadLetter { wanted.append((path, "dead-letter file")) }
        var identities: [InputFile.Identity?] = []
        for (path, what) in wanted {
            let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o666)
            guard fd >= 0 else {
                let reason = String(cString: strerror(errno))
                discard()
                return .failed("cannot open \(what) \(path): \(reason)")
            }
            opened.append((fd, path, what))
            let identity = InputFile.identity(fd)
            if let identity, identity == input {
                discard()
                return .refused("the \(what) \(path) is the input file \(inputName): it would be truncated before it is read")
            }
            if let identity, identities.contains(identity) {
                discard()
                return .refused("the \(what) \(path) is also the output file: give them different files")
            }
            identities.append(identity)
        }
        // `>> events.jsonl` while reading events.jsonl would never end.
        if case .stdout = options.output, let input, InputFile.identity(1) == input {
            discard()
            return .refused("the output (stdout) is the input file \(inputName): it would grow while it is read")
        }
        // A resumed run keeps what its checkpoint covers (Barrier.swift).
        var kept: [SinkResumption] = []
        for o in opened {
            let keep = resumption(of: o.what, fd: o.fd)
            if case .refused(let message) = keep {
                discard()
                return .refused(message)
            }
            kept.append(keep)
        }
        for (i, o) in opened.enumerated() {
            // Truncated only now ("w"); a pipe or a device has nothing to truncate.
            if identities[i] != nil, kept[i] == .fresh, ftruncate(o.fd, 0) != 0 {
                let reason = String(cString: strerror(errno))
                discard()
                return .failed("cannot open \(o.what) \(o.path): \(reason)")
            }
        }
        for (i, o) in opened.enumerated() {
            guard let sink = FileSink(fd: o.fd, name: o.path, what: o.what) else {
                let reason = String(cString: strerror(errno))
                for later in opened[i...] { Glibc.close(later.fd) }
                _ = output?.close()
                output = nil
                return .failed("cannot open \(o.what) \(o.path): \(reason)")
            }
            if o.what == "output" { output = sink } else { deadLetter = sink }
            if let problem = resume(sink, kept[i], L) {
                for later in opened[(i + 1)...] { Glibc.close(later.fd) }
                _ = output?.close()
                _ = deadLetter?.close()
                output = nil
                deadLetter = nil
                return .failed(problem)
            }
        }
        switch options.output {
        case .stdout: output = FileSink(stdout: ())
        case .discard: output = DiscardSink()
        case .function(let ref): output = FunctionSink(function: ref)
        case .stream(let url):
            switch RedisStreamSink.open(url) {
            case .success(let sink): output = sink
            case .failure(let problem):
                _ = deadLetter?.close()
                deadLetter = nil
                return .failed("cannot open output \(problem.message)")
            }
        case .path, .collect, .channel: break
        }
        return nil
    }

    /// Records the first failure of a sink (the run then stops). Returns false.
    func sinkFailed(_ sink: EventSink, errno code: Int32) -> Bool {
        if sinkFailure == nil {
            let reason = (sink as? RedisStreamSink)?.problem ?? String(cString: strerror(code))
            sinkFailure = ("cannot write \(sink.what) \(sink.name): \(reason)",
                           code == EPIPE && sink === output)
        }
        return false
    }

    /// Flushes both sinks (end of the input, before the stages close).
    func flushSinks() {
        for sink in [output, deadLetter as EventSink?].compactMap({ $0 }) where sinkFailure == nil {
            let code = sink.flush(durable: false)
            if code != 0 { _ = sinkFailed(sink, errno: code) }
        }
    }

    /// How long an event written out may wait in a sink's buffer while events flow
    /// (checked between events): the sinks are flushed at most this often, never per
    /// event. When the input goes idle they are flushed at once.
    static let flushInterval: UInt64 = 100_000_000

    /// Flushes the sinks when `flushInterval` has passed since the last flush. False
    /// when a sink failed (the run stops).
    func flushIfDue() -> Bool {
        guard output != nil || deadLetter != nil else { return true }
        let now = sl_monotonic_ns()
        guard now >= nextFlush else { return true }
        return flush(now: now)
    }

    /// Before the run waits (for input, a retry's backoff): what was written leaves now.
    /// False when a sink failed (the run stops).
    func flushBeforeWaiting() -> Bool {
        guard output != nil || deadLetter != nil else { return true }
        return flush(now: sl_monotonic_ns())
    }

    func flush(now: UInt64) -> Bool {
        nextFlush = now &+ Self.flushInterval
        flushSinks()
        return sinkFailure == nil
    }

    /// Closes both sinks; a failure is recorded unless one already was.
    func closeSinks() {
        for sink in [output, deadLetter as EventSink?].compactMap({ $0 }) {
            let code = sink.close()
            if code != 0 { _ = sinkFailed(sink, errno: code) }
        }
        output = nil
        deadLetter = nil
    }

    /// The event at `event` leaves the last stage: written (or collected, or passed to
    /// the output function), then counted as emitted. False when the run must stop.
    func writeOutput(_ L: LuaState, _ event: Int32, extra: Bool) -> Bool {
        if let output {
            switch output.write(L, event, codec: rt.json, msgh: msgh) {
            case .written: break
            case .unencodable: return unencodable(L, event, extra: extra)
            case .failed(let code): return sinkFailed(output, errno: code)
            case .raised:
                abortMessage = "pipeline '\(definition.name)' aborted: the output function failed on \(describeEvent(L, event, extra: extra)): \(describeError(L, lua_gettop(L)))"
                return false
            }
        }
        if extra { fanout.emitted += 1 } else { original.emitted += 1 }
        return true
    }

    /// The event at `event` cannot be written as JSON (the codec's message is on top,
    /// popped here). Encoding is part of the event's processing: the policy of the last
    /// stage applies (a retry would fail the same way: its `then` applies at once), and
    /// the error names the field. False when the run must stop.
    func unencodable(_ L: LuaState, _ event: Int32, extra: Bool) -> Bool {
        let codecMessage = Lua.describe(L, -1)
        sl_pop(L, 1)
        let message = "cannot encode event: " + (Unencodable.problem(L, event) ?? codecMessage)
        guard let stage = stages.last else {
            abortMessage = "pipeline '\(definition.name)' aborted: \(message)"
            return false
        }
        stage.errors += 1
        if stage.notices.first == nil { stage.notices.first = "on \(describeEvent(L, event, extra: extra)): \(message)" }
        var policy = stage.policy
        if case .retry(_, _, let then) = policy { policy = then }
        switch policy {
        case .skip:
            if extra { fanout.skipped += 1 } else { original.skipped += 1 }
            stage.skipped += 1
            notice(L, stage, event: event, extra: extra, error: message, outcome: "skipped")
            return true
        case .deadLetter:
            Lua.push(L, message)
            defer { sl_pop(L, 1) }
            guard writeDeadLetter(L, event: event, stage: stage.definition.name, error: lua_gettop(L), extra: extra, traceback: nil) else { return false }
            if extra { fanout.deadLettered += 1 } else { original.deadLettered += 1 }
            stage.deadLettered += 1
            notice(L, stage, event: event, extra: extra, error: message, outcome: "dead-lettered")
            return true
        case .abort, .retry:
            abortMessage = "pipeline '\(definition.name)' aborted: stage '\(stage.definition.name)' failed on \(describeEvent(L, event, extra: extra)): \(message)"
            return false
        }
    }

    /// A dead-letter record: { event, stage, error, traceback, time, line, emitted }:
    /// `line` is the input line (list position) of the event, or of the event being
    /// processed when a stage emitted it (then `emitted` is true); none for an event a
    /// timer emitted. False when it could not be written (the run then stops).
    func writeDeadLetter(_ L: LuaState, event: Int32, stage: String, error: Int32, extra: Bool, traceback given: String?) -> Bool {
        let traceback = given ?? rt.takeTraceback(L, error)
        lua_createtable(L, 0, 5)
        lua_pushvalue(L, event)
        Lua.setField(L, -2, "event")
        Lua.push(L, stage)
        Lua.setField(L, -2, "stage")
        Lua.push(L, Lua.describe(L, error))
        Lua.setField(L, -2, "error")
        if let traceback {
            Lua.push(L, traceback)
            Lua.setField(L, -2, "traceback")
        }
        lua_pushnumber(L, wallClock())
        Lua.setField(L, -2, "time")
        if eventLine > 0 {
            lua_pushinteger(L, lua_Integer(eventLine))
            Lua.setField(L, -2, "line")
        }
        if let streamEntry {
            Lua.push(L, streamEntry)
            Lua.setField(L, -2, "entry")
        }
        if extra {
            lua_pushboolean(L, 1)
            Lua.setField(L, -2, "emitted")
        }
        if options.replay { annotateReplayed(L, deadLetter: true) }
        defer { sl_pop(L, 1) }
        guard writeRecord(L, lua_gettop(L)) else { return false }
        if eventLine > 0 { ingestFeed?.deadLettered(line: eventLine) }
        return true
    }

    /// Rejects an input line (counted as rejected once its record is written). False
    /// when the record could not be written (the run then stops; the line is in flight).
    func reject(_ L: LuaState, line: Int, reason: String, raw: String?) -> Bool {
        // The first few are shown as they happen (also when the dead-letter file has
        // them), the rest summed up at the end.
        let place = replayPlace ?? streamEntry.map { "entry \($0)" } ?? "\(options.input.isList ? "event" : "line") \(line)"
        ingestFeed?.rejected(line: line, reason: reason)
        rejectNotices.count += 1
        if rejectNotices.first == nil { rejectNotices.first = "on \(place): \(reason)" }
        if rejectNotices.shown < Notices.shownAtMost {
            rejectNotices.shown += 1
            rt.diagnose("scopelua: input \(place) rejected: \(reason)")
        }
        guard deadLetter != nil else {
            rejected += 1
            return true
        }
        lua_createtable(L, 0, 4)
        lua_pushinteger(L, lua_Integer(line))
        Lua.setField(L, -2, "line")
        if let streamEntry {
            Lua.push(L, streamEntry)
            Lua.setField(L, -2, "entry")
        }
        if let raw {
            Lua.push(L, raw)
            Lua.setField(L, -2, "raw")
        }
        Lua.push(L, reason)
        Lua.setField(L, -2, "error")
        lua_pushnumber(L, wallClock())
        Lua.setField(L, -2, "time")
        if options.replay { annotateReplayed(L, deadLetter: false) }
        defer { sl_pop(L, 1) }
        guard writeRecord(L, lua_gettop(L)) else { return false }
        rejected += 1
        return true
    }

    /// Pushes the value at `idx` as JSON, with what JSON cannot hold (infinity, a
    /// function, a cycle) replaced by strings saying what it was. False (the codec's
    /// message pushed instead) when even that cannot be encoded.
    func encodeAnyway(_ L: LuaState, _ idx: Int32) -> Bool {
        if rt.json.encode(L, idx) { return true }
        sl_pop(L, 1)
        Unencodable.pushEncodable(L, idx, arrayMetatable: rt.info.pointee.jsonarraymt)
        let ok = rt.json.encode(L, -1)
        sl_remove(L, -2)
        return ok
    }

    /// Writes the table at `idx` as a JSON line to the dead-letter file, or to stderr.
    /// A record whose event holds what JSON cannot (infinity, a function, a cycle) is
    /// written with those values replaced by strings saying what they were. False when
    /// the dead-letter file failed.
    func writeRecord(_ L: LuaState, _ idx: Int32) -> Bool {
        guard encodeAnyway(L, idx) else {
            rt.diagnose("scopelua: dead letter (not encodable): \(Lua.describe(L, -1))")
            sl_pop(L, 1)
            return true
        }
        defer { sl_pop(L, 1) }
        var len = 0
        guard let p = lua_tolstring(L, -1, &len) else { return true }
        if let deadLetter {
            let code = deadLetter.writeLine(p, len)
            if code != 0 { return sinkFailed(deadLetter, errno: code) }
        } else {
            rt.diagnose("scopelua: dead letter: " + String(decoding: UnsafeRawBufferPointer(start: p, count: len), as: UTF8.self))
        }
        return true
    }
}
