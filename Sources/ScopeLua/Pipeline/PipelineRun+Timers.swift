import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Timers of a running pipeline: fired between events with their stage's policy.
extension PipelineRun {
    // MARK: - Timers

    /// The earliest of the next timer, the next progress update and the next
    /// publication to the board (monotonic ns).
    func nextWakeUp() -> UInt64? {
        var wake: UInt64? = drawsProgress ? sl_monotonic_ns() &+ 500_000_000 : nil
        if board != nil { wake = min(wake ?? nextPublish, nextPublish) }
        if checkpointing.dueTime != .max { wake = min(wake ?? checkpointing.dueTime, checkpointing.dueTime) }
        for t in timers.scheduled where t.handle != nil {
            wake = min(wake ?? t.due, t.due)
        }
        return wake
    }

    /// Fires due timers (between events only, never once the input has ended).
    func fireTimers(_ L: LuaState) -> Bool {
        guard !timers.scheduled.isEmpty, !inputEnded else { return true }
        let now = sl_monotonic_ns()
        // A timer's events come from no input line. Timers may fire while an event
        // waits to be retried: its line, and what is queued below, are left as they were.
        let savedLine = eventLine
        defer { eventLine = savedLine }
        let queueBase = queueTop
        firingTimers = true
        defer { firingTimers = false }
        for t in timers.scheduled where t.due <= now {
            eventLine = 0
            guard let h = t.handle, h.pointee.isOpen else { continue }
            let base = lua_gettop(L)
            // The callback may release this very timer and collect its box: keep the
            // record for the message below.
            sl_rec_pin(h)
            defer { sl_rec_unpin(rt.arena.pool, h) }
            let stageIndex = stages.firstIndex { $0.scope === t.owner || $0.task === t.owner }
            runningStage = stageIndex
            // A stage's timer callback runs under the stage's limits (its `time`).
            let limits = stageIndex.flatMap { stages[$0].limits }
            let firing = rt.fireTimer(t, L, now: now, limits: limits.map { (UnsafePointer($0.c), $0.time(of: .process)) })
            runningStage = nil
            if case .failed(let traceback, let breach) = firing {
                if breach != 0, let i = stageIndex, let limits {
                    // The breach, whatever the callback did with it.
                    stages[i].breaches.count(breach)
                    Lua.push(L, "\(limits.message(breach, .process)) in timer \(rt.describe(h))")
                    lua_copy(L, -1, -2)
                    sl_pop(L, 1)
                }
                let name = stageIndex.map { stages[$0].definition.name } ?? definition.name
                let message = "timer \(rt.describe(h)) of stage '\(name)' failed: \(describeError(L, lua_gettop(L), traceback: traceback))"
                let policy = stageIndex.map { stages[$0].policy } ?? .abort
                dropEmitted(L, from: queueBase)  // what the failed call emitted never existed
                if policy == .abort {
                    if let i = stageIndex { stages[i].errors += 1 }
                    abortMessage = "pipeline '\(definition.name)' aborted: \(message)"
                    lua_settop(L, base)
                    return false
                }
                if let i = stageIndex {
                    // The firing is lost; the timer goes on (an interval fires again).
                    let stage = stages[i]
                    stage.errors += 1
                    let error = "\(rt.describe(h)): \(Self.firstLine(Lua.describe(L, lua_gettop(L))))"
                    if stage.notices.first == nil { stage.notices.first = "in timer \(error)" }
                    stage.notices.count += 1
                    if stage.notices.shown < Notices.shownAtMost {
                        stage.notices.shown += 1
                        rt.diagnose("scopelua: stage '\(name)' failed in timer \(error)")
                    }
                }
            }
            // Events the timer emitted go downstream of its stage.
            if let i = stageIndex, queueTop > queueBase, !deliverEmitted(L, after: i, from: queueBase) {
                lua_settop(L, base)
                return false
            }
            lua_settop(L, base)
        }
        return true
    }
}
