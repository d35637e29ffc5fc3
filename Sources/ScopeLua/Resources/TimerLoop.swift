import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Firing `timer.every` / `timer.after` callbacks outside a pipeline: `timer.sleep` and
/// `timer.loop` wait while firing the state's due timers, and the REPL fires them while
/// it waits at the prompt; a running pipeline fires them between events through
/// `fireTimer` too, and applies its stages' error policies to a failure.
extension Runtime {
    /// The earliest due time of an open scheduled timer (monotonic ns), if any.
    var nextTimerDue: UInt64? {
        var due: UInt64?
        for t in scheduled where t.handle != nil {
            due = min(due ?? t.due, t.due)
        }
        return due
    }

    /// Runs `t`'s callback in a `timer` scope under the scope that created it; a one-shot
    /// timer is released afterwards. Returns false with one error object on top (the
    /// callback's error with release failures attached) when it failed. Stack: 0 / +1.
    func fireTimer(_ t: ScheduledTimer, _ L: LuaState, now: UInt64) -> Bool {
        guard let h = t.handle, h.pointee.isOpen else { return true }
        // The callback may release this very timer and collect its box: keep the record
        // until the firing is done.
        sl_rec_pin(h)
        defer { sl_rec_unpin(arena.pool, h) }
        t.fired += 1
        if let interval = t.interval {
            // Intervals are at most 1e9 s (checked when the timer is made): no overflow.
            t.due = max(t.due &+ UInt64(interval * 1e9), now)
        }
        let base = lua_gettop(L)
        let callScope = Scope(name: "timer", parent: t.owner)
        let saved = current
        current = callScope
        lua_pushcclosure(L, sl_capturetraceback, 0)
        t.pushFunction(L)
        let status = sl_pcall(L, 0, 0, base + 1)
        current = saved
        let errIndex: Int32 = status == LUA_OK ? 0 : base + 2
        var failures = endScope(callScope, L, error: errIndex)
        if t.interval == nil, h.pointee.isOpen {
            failures += release(h, L, cause: .handle(h.pointee.site), error: errIndex)
        }
        if status == LUA_OK, failures == 0 {
            lua_settop(L, base)
            return true
        }
        _ = mergeErrors(L, primary: errIndex, failures: failures)
        lua_copy(L, -1, base + 1)
        lua_settop(L, base + 1)
        return false
    }

    /// Fires every due timer once, in creation order. Stops at the first failing one
    /// (false, its error on top). Stack: 0 / +1.
    func fireDueTimers(_ L: LuaState) -> Bool {
        let now = sl_monotonic_ns()
        for t in scheduled where t.due <= now && t.handle != nil {
            if !fireTimer(t, L, now: now) { return false }
        }
        return true
    }

    /// Waits until `deadline` (monotonic ns; nil: until no timer is pending), firing due
    /// timers meanwhile. Returns false with an error on top when a callback failed or a
    /// stop signal arrived (the stop becomes an error, so scopes unwind with it).
    /// Stack: 0 / +1.
    func runTimers(_ L: LuaState, until deadline: UInt64?) -> Bool {
        while true {
            if !fireDueTimers(L) { return false }
            let now = sl_monotonic_ns()
            if let deadline, now >= deadline { return true }
            guard let next = [deadline, nextTimerDue].compactMap({ $0 }).min() else { return true }
            let waitNanos = next > now ? next - now : 0
            let stopFD = sl_stop_fd()
            var fds = [pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
            // Round up so a wait never ends just before the timer is due.
            let ms = Int32(clamping: (waitNanos + 999_999) / 1_000_000)
            _ = poll(&fds, stopFD >= 0 ? 1 : 0, ms)
            let signal = sl_stop_signal()
            if signal != 0 {
                Lua.pushError(L, "interrupted by \(signal == SIGINT ? "SIGINT" : signal == SIGTERM ? "SIGTERM" : "signal \(signal)")", level: 0)
                return false
            }
        }
    }
}
