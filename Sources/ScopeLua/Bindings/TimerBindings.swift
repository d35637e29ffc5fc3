import CLua
import CScopeLua

/// The `timer` module: `measure`, `now` (and, with pipelines, `every` / `after`).
enum TimerBindings {
    static func install(_ rt: Runtime, _ L: LuaState) {
        HandleBindings.makeMetatable(rt, L, kind: .timer, methods: [("elapsed", elapsed)])
        // label string → index into the ledger's timer statistics
        lua_createtable(L, 0, 8)
        rt.timerLabelsRef = luaL_ref(L, Lua.registry)

        lua_createtable(L, 0, 4)
        Lua.setFunction(L, -1, "measure", measure)
        Lua.setFunction(L, -1, "now", now)
        Bindings.publishModule(L, "timer")
    }

    static let measure: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard lua_type(L, 1) == LUA_TSTRING else {
            Lua.pushTypeError(L, 1, "string")
            return raise
        }
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
        let timer = TimerResource(id: rt.newID(), label: rt.ledger.timerLabels[index], labelIndex: index,
                                  site: rt.currentSite(L))
        rt.acquire(timer, L, labelIndex: 1)
        return 1
    }

    static let elapsed: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let h = HandleBindings.check(rt, L, 1, kind: .timer) else { return raise }
        if let t = rt.resource(at: 1, L) as? TimerResource {
            lua_pushnumber(L, t.elapsed)
        } else {
            lua_pushnumber(L, Double(h.pointee.value) / 1e9)
        }
        return 1
    }

    static let now: SwiftLuaFunction = { L in
        guard let L else { return 0 }
        lua_pushnumber(L, Double(sl_monotonic_ns()) / 1e9)
        return 1
    }
}
