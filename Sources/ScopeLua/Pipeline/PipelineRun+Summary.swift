import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// What the run tells its user: notices, the end summary, descriptions of events,
/// print and log while it runs, the progress line and the report table.
extension PipelineRun {
    // MARK: - Notices and the summary

    /// An event's error that the run went on after (skipped, dead-lettered): shown on
    /// stderr while the stage has shown fewer than `Notices.shownAtMost`, else counted.
    func notice(_ L: LuaState, _ stage: StageRun, event: Int32, extra: Bool, error: String, outcome: String) {
        stage.notices.count += 1
        guard stage.notices.shown < Notices.shownAtMost else { return }
        stage.notices.shown += 1
        rt.diagnose("scopelua: stage '\(stage.definition.name)' failed on \(describeEvent(L, event, extra: extra)): \(Self.firstLine(error)) (\(outcome))")
    }

    static func firstLine(_ text: String) -> String {
        text.firstIndex(of: "\n").map { String(text[..<$0]) } ?? text
    }

    /// Seconds from the start of the run to its end (or to now, while it runs).
    var elapsed: Double {
        Double((finishedAt ?? sl_monotonic_ns()) &- startedAt) / 1e9
    }

    /// Events read per second of the run.
    var eventsPerSecond: Double {
        let seconds = elapsed
        return seconds > 0 ? Double(read - checkpointing.restoredRead) / seconds : 0
    }

    /// The counts of the run in one line: `pipeline 'p': read 2104, emitted 0, ...
    /// in 412.35ms (5102 events/s)`.
    var summaryLine: String {
        var parts = ["read \(read)", "emitted \(original.emitted)", "filtered \(original.filtered)",
                     "skipped \(original.skipped)", "dead-lettered \(original.deadLettered)", "rejected \(rejected)"]
        if retried > 0 { parts.append("retried \(retried)") }
        if options.replay { parts.append("replayed \(replay.count)") }
        if original.inFlight > 0 {
            let what = options.input.isList ? "event" : "line"
            parts.append("in flight \(original.inFlight) (\(what)\(inFlightLines.count == 1 ? "" : "s") \(Report.ranges(inFlightLines)))")
        }
        var line = "pipeline '\(definition.name)': " + parts.joined(separator: ", ")
        if fanoutCreated > 0 {
            var fan = ["created \(fanoutCreated)", "emitted \(fanout.emitted)", "filtered \(fanout.filtered)",
                       "skipped \(fanout.skipped)", "dead-lettered \(fanout.deadLettered)"]
            if fanout.inFlight > 0 { fan.append("in flight \(fanout.inFlight)") }
            line += "; fan-out " + fan.joined(separator: ", ")
        }
        return line + " in \(Report.seconds(elapsed)) (\(Report.rate(eventsPerSecond)) events/s)"
    }

    /// At the end of a run with anything to say (an error the run went on after, a
    /// rejected line, an event in flight, an early end), or on a terminal: the errors
    /// not shown ("... 2099 more like this"), the counts, elapsed time and rate, and per
    /// stage with errors its counts and first error. A clean run in a script or a pipe
    /// stays silent.
    func summarize(ended early: Bool) {
        let erring = stages.filter { $0.errors > 0 }
        let inFlight = original.inFlight + fanout.inFlight
        guard early || options.progress || !erring.isEmpty || rejected > 0 || inFlight > 0 else { return }
        for stage in erring where stage.notices.unshown > 0 {
            rt.diagnose("scopelua: stage '\(stage.definition.name)': ... \(stage.notices.unshown) more like this")
        }
        if rejectNotices.unshown > 0 {
            rt.diagnose("scopelua: input: ... \(rejectNotices.unshown) more like this")
        }
        var lines = ["scopelua: " + summaryLine]
        for stage in erring {
            var counts: [String] = []
            if stage.retried > 0 { counts.append("retried \(stage.retried)") }
            if stage.skipped > 0 { counts.append("skipped \(stage.skipped)") }
            if stage.deadLettered > 0 { counts.append("dead-lettered \(stage.deadLettered)") }
            if stage.breaches.total > 0 { counts.append("limits breached: \(stage.breaches.summary)") }
            let what = counts.isEmpty ? "" : " (\(counts.joined(separator: ", ")))"
            let first = stage.notices.first.map { ", the first \($0)" } ?? ""
            lines.append("  stage '\(stage.definition.name)': \(stage.errors) error\(stage.errors == 1 ? "" : "s")\(what)\(first)")
        }
        if rejected > 0, let first = rejectNotices.first {
            lines.append("  input: \(rejected) rejected, the first \(first)")
        }
        rt.diagnose(lines.joined(separator: "\n"))
    }

    // MARK: - Descriptions

    /// The event at `event`, by where it came from: `line 1742 (id 17)` (`event 3` for
    /// a list input), `an event emitted for line 1742 (id 5)` when a stage emitted it
    /// while processing that line. Ids are not unique (two lines may both say id 1),
    /// line numbers are; an event a timer emitted has none, and is shown by its id or,
    /// without one, its JSON (shortened).
    func describeEvent(_ L: LuaState, _ event: Int32, extra: Bool) -> String {
        let id = eventID(L, event)
        if eventLine == 0, let i = checkpointing.flushing, i < stages.count {
            let what = "an event emitted by the flush of stage '\(stages[i].definition.name)'"
            return id.map { "\(what) (id \($0))" } ?? "\(what) (\(eventJSON(L, event)))"
        }
        guard eventLine > 0 else {
            if let id { return "an event emitted by a timer (id \(id))" }
            return "an event emitted by a timer (\(eventJSON(L, event)))"
        }
        let place = replayPlace ?? streamEntry.map { "entry \($0)" } ?? "\(options.input.isList ? "event" : "line") \(eventLine)"
        let described = extra ? "an event emitted for \(place)" : place
        return id.map { "\(described) (id \($0))" } ?? described
    }

    /// The event's `id` field as text (shortened), or nil when it has none.
    func eventID(_ L: LuaState, _ event: Int32) -> String? {
        defer { sl_pop(L, 1) }
        guard Lua.rawField(L, event, "id") != LUA_TNIL else { return nil }
        // An id a script computed as a float: show 3.0 as 3.
        if lua_type(L, -1) == LUA_TNUMBER, lua_isinteger(L, -1) == 0 {
            let d = lua_tonumberx(L, -1, nil)
            if d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) }
        }
        let text = Lua.describe(L, -1, metamethods: false)
        return text.count > 60 ? String(text.prefix(60)) + "..." : text
    }

    /// The event as JSON, shortened to 200 characters (what JSON cannot hold is shown as
    /// a string).
    func eventJSON(_ L: LuaState, _ event: Int32) -> String {
        if !encodeAnyway(L, event) {
            sl_pop(L, 1)
            lua_pushnil(L)
        }
        defer { sl_pop(L, 1) }
        guard var text = Lua.string(L, -1) else { return "not encodable" }
        if text.count > 200 { text = String(text.prefix(200)) + "..." }
        return text
    }

    /// The error's message and, when one was captured for it, its traceback.
    func describeError(_ L: LuaState, _ error: Int32, traceback: String? = nil) -> String {
        let e = rt.takeError(copyOf: error, L, traceback: traceback)
        return e.traceback.map { "\(e.message)\n\($0)" } ?? e.message
    }

    func wallClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    enum Backoff {
        case waited
        /// A stop signal came (also before the wait).
        case stopped
        /// A timer that fired meanwhile stopped the run (its abort, a failed write).
        case failed
    }

    /// Waits `seconds` before `stage` retries a call, or less if a stop signal arrives.
    /// Due timers fire meanwhile, as between events (not when the event waiting is one
    /// a timer emitted: timers do not fire inside a timer's firing). The time waited is
    /// the stage's backoff in the report.
    func backoff(_ L: LuaState, _ seconds: Double, _ stage: StageRun) -> Backoff {
        let start = sl_monotonic_ns()
        defer { stage.backoffNanos &+= sl_monotonic_ns() &- start }
        let end = Self.later(start, by: Self.nanoseconds(seconds))
        let stopFD = sl_stop_fd()
        guard flushBeforeWaiting() else { return .failed }
        while sl_stop_signal() == 0 {
            if !firingTimers, !fireTimers(L) { return .failed }
            let now = sl_monotonic_ns()
            guard now < end else { return .waited }
            var wake = end
            if !firingTimers, let due = rt.nextTimerDue { wake = min(wake, max(due, now)) }
            let ms = Int32(min(UInt64(Int32.max), max(1, (wake - now + 999_999) / 1_000_000)))
            var fds = [pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, stopFD >= 0 ? 1 : 0, ms)
        }
        return .stopped
    }

    /// Seconds as nanoseconds, saturating (a NaN or negative wait is none, an infinite
    /// one the longest there is): never a trap on a value a script chose.
    static func nanoseconds(_ seconds: Double) -> UInt64 {
        guard seconds > 0 else { return 0 }
        let ns = seconds * 1e9
        return ns < 1.8e19 ? UInt64(ns) : UInt64.max
    }

    /// `time + ns`, saturating at the end of time.
    static func later(_ time: UInt64, by ns: UInt64) -> UInt64 {
        let (sum, overflow) = time.addingReportingOverflow(ns)
        return overflow ? .max : sum
    }

    // MARK: - print and log

    /// Puts `print` in place of Lua's own for the run when it writes its events to stdout
    /// (a `print` in a stage would write into the JSON stream). A print the script
    /// defined itself is left alone. Returns whether it replaced it.
    func replacePrint(_ L: LuaState) -> Bool {
        guard printsToStderr || drawsProgress else { return false }
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        Bindings.getGlobal(L, "print")
        Lua.getRegistryField(L, "scopelua.print")
        guard lua_rawequal(L, -1, -2) != 0 else { return false }
        Lua.getRegistryField(L, "scopelua.print.run")
        Bindings.setGlobal(L, "print")
        return true
    }

    /// Puts Lua's print back, unless the script assigned another meanwhile.
    func restorePrint(_ L: LuaState) {
        let base = lua_gettop(L)
        defer { lua_settop(L, base) }
        Bindings.getGlobal(L, "print")
        Lua.getRegistryField(L, "scopelua.print.run")
        guard lua_rawequal(L, -1, -2) != 0 else { return }
        Lua.getRegistryField(L, "scopelua.print")
        Bindings.setGlobal(L, "print")
    }

    /// Where a `log` line comes from: `enrich (line 1742)` in process, the stage's name
    /// in open, close and its timers; nil outside a stage.
    var logContext: String? {
        guard let i = runningStage ?? closingStage, i < stages.count else { return nil }
        let name = stages[i].definition.name
        guard eventLine > 0 else { return name }
        return "\(name) (\(options.input.isList ? "event" : "line") \(eventLine))"
    }

    // MARK: - Progress

    /// Whether to draw the live progress line (asked for: stderr is a terminal). Not
    /// when the events go to stdout and stdout is that same terminal, as curl leaves
    /// out its progress meter when the data goes to the terminal: the line would run
    /// into the events. (With the events elsewhere, what else reaches the terminal,
    /// `print` included, clears the line first.)
    func decideProgress() -> Bool {
        guard options.progress else { return false }
        guard case .stdout = options.output else { return true }
        return !Self.sameTerminal(1, 2)
    }

    /// Whether descriptors `a` and `b` are the same terminal (same device and inode).
    static func sameTerminal(_ a: Int32, _ b: Int32) -> Bool {
        guard isatty(a) != 0, isatty(b) != 0 else { return false }
        var sa = stat(), sb = stat()
        guard fstat(a, &sa) == 0, fstat(b, &sb) == 0 else { return false }
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
    }

    /// Before something is written to stdout: a progress line on the screen is cleared
    /// (it is drawn again at its next update).
    func clearProgressBeforeOutput() {
        guard progressOnScreen else { return }
        sl_eprogress("")
        progressOnScreen = false
    }

    /// The feed loops call this between events: it also publishes to the run's board
    /// when due (Board.swift), so every loop that shows progress publishes.
    func showProgress() {
        publishIfDue()
        guard drawsProgress else { return }
        let now = sl_monotonic_ns()
        guard now &- lastProgress > 500_000_000 else { return }
        lastProgress = now
        let seconds = Double(now &- startedAt) / 1e9
        let rate = Report.rate(seconds > 0 ? Double(read) / seconds : 0)
        sl_eprogress("scopelua: \(read) events read, \(original.emitted + fanout.emitted) out, \(rate) events/s")
        progressOnScreen = true
    }

    func clearProgress() {
        if drawsProgress, lastProgress != 0 { sl_eprogress("") }
        progressOnScreen = false
    }

    /// Drops the registry references this run holds (after execute).
    package func releaseReferences(_ L: LuaState) {
        luaL_unref(L, Lua.registry, queue)
        queue = LUA_NOREF
        if case .list(let ref) = options.input { luaL_unref(L, Lua.registry, ref) }
        if case .function(let ref) = options.output { luaL_unref(L, Lua.registry, ref) }
    }

    // MARK: - Report

    /// Pushes the report table (see `Report.pushPipeline`). Stack: +1.
    package func pushReport(_ L: LuaState) {
        Report.pushPipeline(self, L)
        if collected != LUA_NOREF {
            lua_rawgeti(L, Lua.registry, lua_Integer(collected))
            Lua.setField(L, -2, "output")
            luaL_unref(L, Lua.registry, collected)
            collected = LUA_NOREF
        }
    }
}
