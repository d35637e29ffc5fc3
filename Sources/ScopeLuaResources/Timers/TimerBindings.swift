import CLua
import CScopeLua
import ScopeLuaCore

/// The `timer` module: `measure`, `now` (and, with pipelines, `every` / `after`).
package enum TimerBindings: RuntimeModule {
    package static func install(_ rt: Runtime, _ L: LuaState) {
        HandleBindings.makeMetatable(rt, L, kind: .timer, methods: [("elapsed", elapsed)])
        // label string → index into the ledger's timer statistics
        lua_createtable(L, 0, 8)
        rt.timerLabelsRef = luaL_ref(L, Lua.registry)

        // The C fast path needs the kind.
        rt.info.pointee.timerkind = Int32(ResourceKind.timer.index)

        lua_createtable(L, 0, 4)
        lua_rawgeti(L, Lua.registry, lua_Integer(rt.metatableRefs[ResourceKind.timer.index]))
        sl_pushtimermeasure(L, measure)
        Lua.setField(L, -2, "measure")
        Lua.setFunction(L, -1, "now", now)
        Lua.setFunction(L, -1, "every", every)
        Lua.setFunction(L, -1, "after", after)
        Lua.setFunction(L, -1, "sleep", sleep)
        Lua.setFunction(L, -1, "loop", loop)
        Bindings.publishModule(L, "timer")
    }

    /// A plain script whose timers never fired is told why.
    package static func willClose(_ rt: Runtime) {
        let idle = rt.scheduled.filter { $0.handle != nil && $0.fired == 0 }
        if !idle.isEmpty {
            let sites = idle.compactMap { $0.handle.map { rt.describe($0.pointee.site) } }.joined(separator: ", ")
            rt.diagnose("scopelua: \(idle.count) timer\(idle.count == 1 ? " was" : "s were") scheduled but never fired (\(sites)): outside a pipeline, timers fire in timer.sleep and timer.loop")
        }
    }

    /// timer.measure(label) when the C fast path (sl_pushtimermeasure) declines: a new
    /// label or calling function (this refreshes its caches), or tracing.
    static let measure: SwiftLuaFunction = { L in
        let L = L.unsafelyUnwrapped
        return Runtime.unretained(L)._withUnsafeGuaranteedRef { rt in
            guard lua_type(L, 1) == LUA_TSTRING else {
                Lua.pushTypeError(L, 1, "string")
                return raise
            }
            let index = labelIndex(rt, L)
            rt.acquire(.timer, nil, L, site: rt.currentSite(L), aux: Int32(index))
            return 1
        }
    }

    /// The ledger index of the label at index 1. Cached label strings are pinned, so
    /// the same string (Lua interns short strings) is found by address alone.
    static func labelIndex(_ rt: Runtime, _ L: LuaState) -> Int {
        let cached = sl_label_lookup(L, 1)
        if cached >= 0 { return Int(cached) }
        lua_rawgeti(L, Lua.registry, lua_Integer(rt.timerLabelsRef))
        lua_pushvalue(L, 1)
        let index: Int
        if lua_rawget(L, -2) == LUA_TNUMBER {
            index = Int(lua_tointegerx(L, -1, nil))
            sl_pop(L, 2)
        } else {
            sl_pop(L, 1)
            index = rt.ledger.addTimerLabel(Lua.string(L, 1) ?? "")
            lua_pushvalue(L, 1)
            lua_pushinteger(L, lua_Integer(index))
            lua_rawset(L, -3)
            sl_pop(L, 1)
        }
        lua_pushvalue(L, 1)
        sl_label_remember(L, Int32(index))
        return index
    }

    static let elapsed: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let h = HandleBindings.check(rt, L, 1, kind: .timer) else { return raise }
        let nanos = h.pointee.isOpen || h.pointee.record != nil ? sl_elapsed_ns(h.pointee.start) : UInt64(h.pointee.value)
        lua_pushnumber(L, Double(nanos) / 1e9)
        return 1
    }

    static let every: SwiftLuaFunction = { L in schedule(L, repeats: true) }
    static let after: SwiftLuaFunction = { L in schedule(L, repeats: false) }

    /// timer.every(seconds, fn) / timer.after(seconds, fn) → a timer handle.
    static func schedule(_ L: LuaState?, repeats: Bool) -> Int32 {
        let (rt, L) = Runtime.from(L)
        guard lua_type(L, 1) == LUA_TNUMBER else {
            Lua.pushTypeError(L, 1, "number")
            return raise
        }
        let seconds = lua_tonumberx(L, 1, nil)  // NaN fails every comparison below
        guard repeats ? seconds > 0 : seconds >= 0, seconds <= ScheduledTimer.maxSeconds else {
            Lua.pushArgError(L, 1, repeats ? "interval must be more than 0 and at most 1e9 seconds"
                                           : "delay must be between 0 and 1e9 seconds")
            return raise
        }
        guard lua_type(L, 2) == LUA_TFUNCTION else {
            Lua.pushTypeError(L, 2, "function")
            return raise
        }
        lua_pushvalue(L, 2)
        let t = ScheduledTimer(function: luaL_ref(L, Lua.registry), delay: seconds, repeats: repeats, owner: rt.current)
        let h = rt.acquire(.timer, t, L, site: rt.currentSite(L))
        t.handle = h
        lua_pushvalue(L, -1)
        t.anchor = luaL_ref(L, Lua.registry)
        rt.timerState.scheduled.append(t)
        return 1
    }

    /// timer.sleep(seconds): waits, firing this state's due timers meanwhile (outside a
    /// pipeline, timers fire only here, in timer.loop and at the REPL's prompt). A
    /// failing callback's error, or a stop signal, is raised from here.
    static let sleep: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard lua_type(L, 1) == LUA_TNUMBER else {
            Lua.pushTypeError(L, 1, "number")
            return raise
        }
        let seconds = lua_tonumberx(L, 1, nil)
        guard seconds.isFinite, seconds >= 0, seconds <= 1e9 else {
            Lua.pushArgError(L, 1, "seconds must be between 0 and 1e9")
            return raise
        }
        let deadline = sl_monotonic_ns() &+ UInt64(seconds * 1e9)
        return raiseFiring(rt.runTimers(L, until: deadline), L)
    }

    /// timer.loop(): fires timers as they fall due until none is pending (every timer
    /// released, the last `after` fired) or a stop signal arrives.
    static let loop: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        return raiseFiring(rt.runTimers(L, until: nil), L)
    }

    /// 0 results, or the failed callback's error raised with the traceback from where it
    /// happened.
    static func raiseFiring(_ firing: Runtime.Firing, _ L: LuaState) -> Int32 {
        guard case .failed(let traceback, _) = firing else { return 0 }
        guard let traceback else { return ScopeBindings.raising(L) }
        Lua.push(L, traceback)
        lua_rotate(L, -2, 1)  // the error stays on top
        return ScopeBindings.raising(L, traceback: lua_gettop(L) - 1)
    }

    static let now: SwiftLuaFunction = { L in
        guard let L else { return 0 }
        lua_pushnumber(L, Double(sl_monotonic_ns()) / 1e9)
        return 1
    }
}
