import CScopeLua
import CLua

/// The pipeline part of the run report (the resource and timer part is the core's,
/// ScopeLuaCore/Report.swift).
extension Report {
    /// Pushes the pipeline report table: read, emitted, filtered, skipped,
    /// dead_lettered, rejected, in_flight, in_flight_lines = { line, ... }, retried,
    /// replayed (dead-letter records put back into the pipeline, see Replay.swift),
    /// fanout = { created, emitted, filtered, skipped, dead_lettered, in_flight },
    /// elapsed (seconds), events_per_second (events read),
    /// stages[name] = { calls, errors, skipped, dead_lettered, retried, breaches = { time,
    /// instructions, memory }, backoff (seconds
    /// waited to retry), p50, p99, max },
    /// resources = { acquired, released, leaked, release_errors }, timers[label] = {...}.
    static func pushPipeline(_ run: PipelineRun, _ L: LuaState) {
        func set(_ key: String, _ value: Int) {
            lua_pushinteger(L, lua_Integer(value))
            Lua.setField(L, -2, key)
        }
        func set(_ key: String, _ value: Double) {
            lua_pushnumber(L, value)
            Lua.setField(L, -2, key)
        }
        lua_createtable(L, 0, 12)
        set("read", run.read)
        set("emitted", run.original.emitted)
        set("filtered", run.original.filtered)
        set("skipped", run.original.skipped)
        set("dead_lettered", run.original.deadLettered)
        set("rejected", run.rejected)
        set("in_flight", run.original.inFlight)
        lua_createtable(L, Int32(clamping: run.inFlightLines.count), 0)
        for (i, line) in run.inFlightLines.enumerated() {
            lua_pushinteger(L, lua_Integer(line))
            lua_rawseti(L, -2, lua_Integer(i + 1))
        }
        Lua.setField(L, -2, "in_flight_lines")
        set("retried", run.retried)
        set("replayed", run.replay.count)
        lua_createtable(L, 0, 6)
        set("created", run.fanoutCreated)
        set("emitted", run.fanout.emitted)
        set("filtered", run.fanout.filtered)
        set("skipped", run.fanout.skipped)
        set("dead_lettered", run.fanout.deadLettered)
        set("in_flight", run.fanout.inFlight)
        Lua.setField(L, -2, "fanout")
        set("elapsed", run.elapsed)
        set("events_per_second", run.eventsPerSecond)
        lua_createtable(L, 0, Int32(clamping: run.stages.count))
        for s in run.stages {
            lua_createtable(L, 0, 8)
            set("calls", s.calls)
            set("errors", s.errors)
            set("skipped", s.skipped)
            set("dead_lettered", s.deadLettered)
            set("retried", s.retried)
            set("backoff", Double(s.backoffNanos) / 1e9)
            lua_createtable(L, 0, 3)
            set("time", s.breaches.time)
            set("instructions", s.breaches.instructions)
            set("memory", s.breaches.memory)
            Lua.setField(L, -2, "breaches")
            set("p50", Double(s.time.quantile(0.5)) / 1e9)
            set("p99", Double(s.time.quantile(0.99)) / 1e9)
            set("max", Double(s.time.maxNanos) / 1e9)
            Lua.setField(L, -2, s.definition.name)
        }
        Lua.setField(L, -2, "stages")
        let c = run.rt.resourceCounts
        lua_createtable(L, 0, 6)
        set("acquired", c.acquired)
        set("released", c.released)
        set("released_by_handle", c.releasedByHandle)
        set("released_by_scope", c.releasedByScope)
        set("leaked", c.leaked)
        set("release_errors", c.releaseErrors)
        Lua.setField(L, -2, "resources")
        lua_createtable(L, 0, 0)
        for t in run.rt.timers {
            lua_createtable(L, 0, 5)
            set("count", t.count)
            set("total", t.total)
            set("p50", t.p50)
            set("p99", t.p99)
            set("max", t.max)
            Lua.setField(L, -2, t.label)
        }
        Lua.setField(L, -2, "timers")
    }

    /// Line numbers, consecutive ones as ranges: `3, 7-9, 12`.
    static func ranges(_ lines: [Int]) -> String {
        var parts: [String] = []
        var i = 0
        while i < lines.count {
            var j = i
            while j + 1 < lines.count, lines[j + 1] == lines[j] + 1 { j += 1 }
            parts.append(j > i ? "\(lines[i])-\(lines[j])" : String(lines[i]))
            i = j + 1
        }
        return parts.joined(separator: ", ")
    }

    /// The pipeline part of `--report`, as a readable table.
    package static func pipelineText(_ run: PipelineRun) -> String {
        var lines = ["pipeline \(run.definition.name)"]
        // In flight only when there is something: a run that ended normally has none.
        var inFlight = ""
        if run.original.inFlight > 0 {
            let lines = Report.ranges(run.inFlightLines)
            let what = run.options.input.isList ? "event" : "line"
            inFlight = "  in-flight \(run.original.inFlight) (\(what)\(run.inFlightLines.count == 1 ? "" : "s") \(lines))"
        }
        lines.append("  events     read \(run.read)  emitted \(run.original.emitted)  filtered \(run.original.filtered)  skipped \(run.original.skipped)  dead-lettered \(run.original.deadLettered)  rejected \(run.rejected)  retried \(run.retried)"
            + (run.options.replay ? "  replayed \(run.replay.count)" : "") + inFlight)
        if run.fanoutCreated > 0 {
            lines.append("  fan-out    created \(run.fanoutCreated)  emitted \(run.fanout.emitted)  filtered \(run.fanout.filtered)  skipped \(run.fanout.skipped)  dead-lettered \(run.fanout.deadLettered)"
                + (run.fanout.inFlight > 0 ? "  in-flight \(run.fanout.inFlight)" : ""))
        }
        if let store = run.checkpointing.store {
            // A resumed run says where it started; every run with a checkpoint, where it ended.
            var text = "  checkpoint \(store.path):"
            if let from = run.checkpointing.resumed?.position {
                text += " resumed after line \(from.line) (byte \(from.offset)),"
            }
            if let to = run.checkpointing.committed {
                text += " committed after line \(to.line) (byte \(to.offset)), \(run.checkpointing.barriers) barrier\(run.checkpointing.barriers == 1 ? "" : "s") in all"
            } else {
                text += " nothing committed"
            }
            lines.append(text)
        }
        if let stream = run.streamSource {
            lines.append("  source     \(stream.label): acknowledged \(stream.acknowledged), claimed from other consumers \(stream.claimed)")
        }
        lines.append("  time       elapsed \(seconds(run.elapsed))  \(rate(run.eventsPerSecond)) events/s")
        if let p = run.parallel {
            // Per worker: the lines it took, its time in stage calls, its restarts.
            for (i, end) in p.ends.enumerated() {
                guard let end else { continue }
                lines.append("  worker \(i + 1)   read \(end.counts.read)  busy \(seconds(Double(end.busyNanos) / 1e9))  restarts \(end.restarts)  resources acquired \(end.resources.acquired) released \(end.resources.released) leaked \(end.resources.leaked)")
            }
        }
        let width = max(5, run.stages.map(\.definition.name.count).max() ?? 5)
        lines.append("  stages     " + pad("stage", width) + "     calls   errors        p50        p99        max    backoff")
        for s in run.stages {
            lines.append("             " + pad(s.definition.name, width) + " " + right(String(s.calls), 9)
                + " " + right(String(s.errors), 8) + " " + right(seconds(Double(s.time.quantile(0.5)) / 1e9), 10)
                + " " + right(seconds(Double(s.time.quantile(0.99)) / 1e9), 10)
                + " " + right(seconds(Double(s.time.maxNanos) / 1e9), 10)
                + " " + right(s.backoffNanos > 0 ? seconds(Double(s.backoffNanos) / 1e9) : "-", 10))
        }
        // Limits and their breaches, for the stages that have limits.
        for s in run.stages {
            guard let limits = s.limits?.limits else { continue }
            let breached = s.breaches.total > 0 ? s.breaches.summary : "none"
            lines.append("  limits     \(s.definition.name): \(limits.summary); breached: \(breached)")
        }
        return lines.joined(separator: "\n")
    }
}
