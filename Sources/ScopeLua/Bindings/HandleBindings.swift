import CLua
import CScopeLua

/// The metatable every resource handle shares the shape of: common methods (`release`,
/// `is_open`), fields (`kind`, `id`), `__close`, `__gc`, `__tostring`; each kind adds
/// its own methods.
enum HandleBindings {
    /// Builds and registers the metatable for `kind`. `methods` are Swift functions;
    /// `extra`, when given, adds C closures to the methods table on top of the stack.
    static func makeMetatable(_ rt: Runtime, _ L: LuaState, kind: ResourceKind,
                              methods: [(String, SwiftLuaFunction)],
                              extra: ((LuaState) -> Void)? = nil) {
        lua_createtable(L, 0, 6)
        Lua.push(L, kind.name)
        Lua.setField(L, -2, "__name")
        lua_createtable(L, 0, Int32(methods.count + 2))
        Lua.setFunction(L, -1, "release", release)
        Lua.setFunction(L, -1, "is_open", isOpen)
        for (name, fn) in methods { Lua.setFunction(L, -1, name, fn) }
        extra?(L)
        sl_pushindex(L, fields)
        Lua.setField(L, -2, "__index")
        Lua.setFunction(L, -1, "__close", close)
        sl_pushhandlegc(L, leak)
        Lua.setField(L, -2, "__gc")
        Lua.setFunction(L, -1, "__tostring", tostring)
        rt.metatablePointers[kind.index] = lua_topointer(L, -1)
        rt.kindNames[kind.index] = kind.name
        rt.metatableRefs[kind.index] = luaL_ref(L, Lua.registry)
    }

    /// The handle at `idx` (open or released), or an argument error pushed. Stack: 0 / +1.
    static func check(_ rt: Runtime, _ L: LuaState, _ idx: Int32, kind: ResourceKind? = nil) -> UnsafeMutablePointer<sl_Handle>? {
        if let h = rt.handle(at: idx, L, kind: kind) { return h }
        Lua.pushTypeError(L, idx, kind?.name ?? "resource handle")
        return nil
    }

    /// The open resource at `idx`; pushes "used after release" or a type error otherwise.
    static func checkOpen(_ rt: Runtime, _ L: LuaState, _ idx: Int32, kind: ResourceKind? = nil) -> Resource? {
        guard let h = check(rt, L, idx, kind: kind) else { return nil }
        guard let raw = h.pointee.record else {
            rt.pushUseAfterRelease(h, L, idx)
            return nil
        }
        return Unmanaged<Resource>.fromOpaque(raw).takeUnretainedValue()
    }

    /// h:release() → true, or false when it was already released.
    static let release: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let h = check(rt, L, 1) else { return raise }
        guard let raw = h.pointee.record else {
            lua_pushboolean(L, 0)
            return 1
        }
        let r = Unmanaged<Resource>.fromOpaque(raw).takeUnretainedValue()
        let failures = rt.release(r, L, cause: .handle(rt.currentSite(L)), error: 0)
        if rt.mergeErrors(L, primary: 0, failures: failures) { return raise }
        lua_pushboolean(L, 1)
        return 1
    }

    static let isOpen: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let h = check(rt, L, 1) else { return raise }
        lua_pushboolean(L, h.pointee.record != nil ? 1 : 0)
        return 1
    }

    /// __close(h, err): leaving a `<close>` block. With an error, the error stays
    /// primary and a release failure is attached to it (rule 4).
    static let close: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let r = rt.resource(at: 1, L) else { return 0 }
        let errIndex: Int32 = sl_isnoneornil(L, 2) != 0 ? 0 : 2
        let failures = rt.release(r, L, cause: .closed, error: errIndex)
        if failures == 0 { return 0 }
        _ = rt.mergeErrors(L, primary: errIndex, failures: failures)
        return raise
    }

    /// Called by the C finalizer for a handle collected while open: a leak. Warn with
    /// the acquisition site, count it, and release the resource now.
    static let leak: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let raw = lua_touserdata(L, 1)?.bindMemory(to: sl_Handle.self, capacity: 1).pointee.record else { return 0 }
        let r = Unmanaged<Resource>.fromOpaque(raw).takeUnretainedValue()
        rt.diagnose("scopelua: leak: \(rt.describe(r)) acquired at \(rt.describe(r.site)) was never released (reclaimed by the garbage collector)")
        let base = lua_gettop(L)
        let failures = rt.release(r, L, cause: .collected, error: 0)
        for i in 0..<failures {
            rt.diagnose("scopelua: release error: \(Lua.describe(L, base + 1 + i))")
        }
        lua_settop(L, base)
        return 0
    }

    /// `file#7 "events.log" (open, run/analytics/log_events)` or `... (released)`.
    static let tostring: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let h = rt.handle(at: 1, L) else {
            Lua.push(L, "resource")
            return 1
        }
        let state: String
        if let r = rt.resource(at: 1, L) {
            state = "open, \(r.scope?.path ?? r.owner.map(rt.describe) ?? "?")"
        } else {
            state = "released"
        }
        Lua.push(L, "\(rt.describeHandle(h, L, 1)) (\(state))")
        return 1
    }

    /// Fields: `kind`, `id`, `label`, and whatever the kind adds (`path`).
    static let fields: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let h = rt.handle(at: 1, L), let key = Lua.string(L, 2) else {
            lua_pushnil(L)
            return 1
        }
        switch key {
        case "kind": Lua.push(L, rt.kindNames[Int(h.pointee.kind)])
        case "id": lua_pushinteger(L, lua_Integer(h.pointee.id))
        case "label": lua_getiuservalue(L, 1, 1)
        default:
            guard let r = rt.resource(at: 1, L) ?? nil, r.pushField(key, rt, L) else {
                if key == "path", h.pointee.kind == Int32(ResourceKind.file.index) {
                    lua_getiuservalue(L, 1, 1)
                } else {
                    lua_pushnil(L)
                }
                return 1
            }
        }
        return 1
    }
}
