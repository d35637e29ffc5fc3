import CLua
import CScopeLua

/// The metatable every resource handle shares the shape of: common methods (`release`,
/// `is_open`), fields (`kind`, `id`, `label`), `__close`, `__gc`, `__tostring`; each
/// kind adds its own methods.
@usableFromInline package enum HandleBindings {
    /// Builds and registers the metatables for `kind` (open, and the released twin
    /// without a finalizer). `methods` are Swift functions; `extra`, when given, adds C
    /// closures to the methods table on top of the stack.
    package static func makeMetatable(_ rt: Runtime, _ L: LuaState, kind: ResourceKind,
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
        sl_pushhandleclose(L, close)
        Lua.setField(L, -2, "__close")
        // Scripts cannot reach (or replace) the metamethods: __close relies on it.
        lua_pushboolean(L, 0)
        Lua.setField(L, -2, "__metatable")
        Lua.setFunction(L, -1, "__tostring", tostring)
        // The twin for released handles: the same fields, no finalizer, so the collector
        // has nothing to call for the (many) handles released before they die.
        lua_createtable(L, 0, 6)
        lua_pushnil(L)
        while lua_next(L, -3) != 0 {
            lua_pushvalue(L, -2)
            lua_rotate(L, -2, 1)
            lua_rawset(L, -4)
        }
        Lua.rawField(L, -2, "__close")  // the C release path switches timers to the twin
        sl_settwin(L, -1, -2)
        sl_pop(L, 1)
        rt.setMetatableIdentity(kind, released: true, lua_topointer(L, -1))
        rt.metatableRefs[ResourceKind.count + kind.index] = luaL_ref(L, Lua.registry)
        sl_pushhandlegc(L)
        Lua.setField(L, -2, "__gc")
        rt.setMetatableIdentity(kind, released: false, lua_topointer(L, -1))
        rt.kindNames[kind.index] = kind.name
        rt.metatableRefs[kind.index] = luaL_ref(L, Lua.registry)
    }

    /// The metatable of a kind whose boxes scripts never see (defers, adopted io files):
    /// only the finalizer, which every box needs so that its record is freed (or its
    /// leak noticed) when the collector reclaims it.
    package static func makeHiddenMetatable(_ rt: Runtime, _ L: LuaState, kind: ResourceKind) {
        lua_createtable(L, 0, 3)
        Lua.push(L, kind.name)
        Lua.setField(L, -2, "__name")
        lua_pushboolean(L, 0)
        Lua.setField(L, -2, "__metatable")
        sl_pushhandlegc(L)
        Lua.setField(L, -2, "__gc")
        rt.setMetatableIdentity(kind, released: false, lua_topointer(L, -1))
        rt.kindNames[kind.index] = kind.name
        rt.metatableRefs[kind.index] = luaL_ref(L, Lua.registry)
    }

    /// The handle at `idx` (open or released), or an argument error pushed. Stack: 0 / +1.
    @inlinable package static func check(_ rt: Runtime, _ L: LuaState, _ idx: Int32, kind: ResourceKind? = nil) -> Handle? {
        if let h = rt.handle(at: idx, L, kind: kind) { return h }
        Lua.pushTypeError(L, idx, kind?.name ?? "resource handle")
        return nil
    }

    /// The open handle at `idx`; pushes "used after release" or a type error otherwise.
    @inlinable package static func checkOpen(_ rt: Runtime, _ L: LuaState, _ idx: Int32, kind: ResourceKind? = nil) -> Handle? {
        guard let h = check(rt, L, idx, kind: kind) else { return nil }
        guard h.pointee.isOpen else {
            rt.pushUseAfterRelease(h, L, idx)
            return nil
        }
        return h
    }

    /// h:release() → true, or false when it was already released.
    package static let release: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let h = check(rt, L, 1) else { return raise }
        guard h.pointee.isOpen else {
            lua_pushboolean(L, 0)
            return 1
        }
        let failures = rt.release(h, L, cause: .handle(rt.currentSite(L)), error: 0)
        rt.retire(h, L, 1)
        if rt.mergeErrors(L, primary: 0, failures: failures) { return raise }
        lua_pushboolean(L, 1)
        return 1
    }

    static let isOpen: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let h = check(rt, L, 1) else { return raise }
        lua_pushboolean(L, h.pointee.isOpen ? 1 : 0)
        return 1
    }

    /// __close(h, err) for an open handle (the C side checked it): leaving a `<close>`
    /// block. With an error, the error stays primary and a release failure is attached
    /// to it (rule 4).
    static let close: SwiftLuaFunction = { L in
        let L = L.unsafelyUnwrapped
        return Runtime.unretained(L)._withUnsafeGuaranteedRef { rt in
            let h = sl_boxhandle(L, 1).unsafelyUnwrapped  // the C side checked the box
            let errIndex: Int32 = sl_isnoneornil(L, 2) != 0 ? 0 : 2
            let failures = rt.release(h, L, cause: .closed, error: errIndex)
            rt.retire(h, L, 1)
            if failures == 0 { return 0 }
            _ = rt.mergeErrors(L, primary: errIndex, failures: failures)
            return raise
        }
    }

    /// `file#7 "events.log" (open, run/analytics/log_events)` or `... (released)`.
    static let tostring: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let h = rt.handle(at: 1, L) else {
            Lua.push(L, "resource")
            return 1
        }
        let state: String
        if h.pointee.isOpen {
            state = "open, \(h.pointee.owningScope?.path ?? h.pointee.resource?.ownerHandle.map(rt.describe) ?? "?")"
        } else {
            state = "released"
        }
        Lua.push(L, "\(rt.describeHandle(h, L, 1)) (\(state))")
        return 1
    }

    /// Fields: `kind`, `id`, `label`, a file's `path`, and whatever the kind adds.
    static let fields: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let h = rt.handle(at: 1, L), let key = Lua.string(L, 2) else {
            lua_pushnil(L)
            return 1
        }
        switch key {
        case "kind": Lua.push(L, rt.kindNames[Int(h.pointee.kind)])
        case "id": lua_pushinteger(L, lua_Integer(h.pointee.id))
        case "label":
            if lua_getiuservalue(L, 1, 1) != LUA_TNONE { break }  // kinds with Swift state
            sl_pop(L, 1)
            if let label = rt.label(h) {
                Lua.push(L, label)
            } else {
                lua_pushnil(L)
            }
        case "path" where h.pointee.kind == ResourceKind.file.rawValue || h.pointee.kind == ResourceKind.sqlite.rawValue:
            lua_getiuservalue(L, 1, 1)
        default:
            guard let r = h.pointee.resource, r.pushField(key, rt, L) else {
                lua_pushnil(L)
                return 1
            }
        }
        return 1
    }
}
