import CLua
import CScopeLua
import ScopeLuaCore

#if canImport(Glibc)
import Glibc
#endif

/// The timers module's state on a runtime (see `RuntimeModule`).
package final class TimerState {
    /// Timers from timer.every / timer.after, in creation order.
    package var scheduled: [ScheduledTimer] = []
}

/// Firing `timer.every` / `timer.after` callbacks outside a pipeline: `timer.sleep` and
/// `timer.loop` wait while firing the state's due timers, and the REPL fires them while
/// it waits at the prompt; a running pipeline fires them between events through
/// `fireTimer` too, and applies its stages' error policies to a failure.
extension Runtime {
    /// The timers module's state. A lookup: a pipeline run takes it once.
    package var timerState: TimerState { state(TimerState.self) { TimerState() } }

    /// Timers from timer.every / timer.after, in creation order.
    package var scheduled: [ScheduledTimer] { timerState.scheduled }

    /// The earliest due time of an open scheduled timer (monotonic ns), if any.
    package var nextTimerDue: UInt64? {
        var due: UInt64?
        for t in scheduled where t.handle != nil {
            due = min(due ?? t.due, t.due)
        }
        return due
    }

    /// How a timer's firing went: a failure leaves one error object on top (the
    /// callback's error with release failures attached) and carries the traceback taken
    /// where the callback failed.
    package enum Firing {
        case ok
        /// `breach`: the limit the callback breached (SL_BREACH_*), 0: none.
        case failed(traceback: String?, breach: Int32 = 0)
    }

    /// Runs `t`'s callback in a `timer` scope under the scope that created it; a one-shot
    /// timer is released afterwards. With `limits` (a stage's, and its time in ns), the
    /// callback runs under them (CScopeLua/limits.c): a breach fails the firing whatever
    /// the callback did. Stack: 0, or +1 when it failed.
    package func fireTimer(_ t: ScheduledTimer, _ L: LuaState, now: UInt64,
                           limits: (UnsafePointer<sl_Limits>, time: UInt64)? = nil) -> Firing {
        guard let h = t.handle, h.pointee.isOpen else { return .ok }
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
        let t0 = sl_monotonic_ns()
        if let limits { sl_limits_begin(L, limits.0, limits.time, t0) }
        var status = sl_pcall(L, 0, 0, base + 1)
        let breach = limits == nil ? 0 : sl_limits_end(L, sl_elapsed_ns(t0))
        if breach != 0, status == LUA_OK {
            // What it was is the caller's to say (it knows the stage and its limits).
            Lua.push(L, "limit breached")
            status = LUA_ERRRUN
        }
        current = saved
        let errIndex: Int32 = status == LUA_OK ? 0 : base + 2
        // The traceback, taken before the releases run Lua code that may fail too.
        let traceback = status == LUA_OK ? nil : takeTraceback(L, errIndex)
        var failures = endScope(callScope, L, error: errIndex)
        if t.interval == nil, h.pointee.isOpen {
            failures += release(h, L, cause: .handle(h.pointee.site), error: errIndex)
        }
        if status == LUA_OK, failures == 0 {
            lua_settop(L, base)
            return .ok
        }
        _ = mergeErrors(L, primary: errIndex, failures: failures)
        lua_copy(L, -1, base + 1)
        lua_settop(L, base + 1)
        return .failed(traceback: traceback, breach: breach)
    }

    /// Fires every due timer once, in creation order. Stops at the first failing one
    /// (its error on top). Stack: 0 / +1.
    package func fireDueTimers(_ L: LuaState) -> Firing {
        let now = sl_monotonic_ns()
        for t in scheduled where t.due <= now && t.handle != nil {
            if case .failed(let traceback, _) = fireTimer(t, L, now: now) { return .failed(traceback: traceback) }
        }
        return .ok
    }

    /// Waits until `deadline` (monotonic ns; nil: until no timer is pending) or a stop
    /// signal, firing due timers meanwhile. A failing callback ends it (its error on
    /// top). Stack: 0 / +1.
    func runTimers(_ L: LuaState, until deadline: UInt64?) -> Firing {
        while sl_stop_signal() == 0 {
            if case .failed(let traceback, _) = fireDueTimers(L) { return .failed(traceback: traceback) }
            let now = sl_monotonic_ns()
            if let deadline, now >= deadline { return .ok }
            guard let next = [deadline, nextTimerDue].compactMap({ $0 }).min() else { return .ok }
            let waitNanos = next > now ? next - now : 0
            let stopFD = sl_stop_fd()
            var fds = [pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
            // Round up so a wait never ends just before the timer is due.
            let ms = Int32(clamping: (waitNanos + 999_999) / 1_000_000)
            _ = poll(&fds, stopFD >= 0 ? 1 : 0, ms)
            // A stop signal ends the wait at once (the loop's condition); the stop itself
            // is raised by the runner's hook at the script's next instruction (or, in a
            // pipeline, between events), as everywhere else.
        }
        return .ok
    }
}
