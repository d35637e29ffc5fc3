import CLua
import CScopeLua

/// `scope(fn, ...)`, `scope.current()`, `defer(fn)`, `with_resource(r..., fn)`.
package enum ScopeBindings {

    static func install(_ rt: Runtime, _ L: LuaState) {
        // The `scope` global: a table (for scope.current) that can be called.
        lua_createtable(L, 0, 1)
        Lua.setFunction(L, -1, "current", current)
        lua_createtable(L, 0, 1)
        Lua.setFunction(L, -1, "__call", call)
        _ = lua_setmetatable(L, -2)
        Bindings.setGlobal(L, "scope")

        Lua.push(L, deferFunction)
        Bindings.setGlobal(L, "defer")
        Lua.push(L, withResource)
        Bindings.setGlobal(L, "with_resource")

        // Metatable of the objects scope.current() returns.
        lua_createtable(L, 0, 4)
        Lua.push(L, "scope")
        Lua.setField(L, -2, "__name")
        lua_createtable(L, 0, 4)
        Lua.setFunction(L, -1, "path", path)
        Lua.setFunction(L, -1, "resources", resources)
        Lua.setFunction(L, -1, "is_open", scopeIsOpen)
        Lua.setField(L, -2, "__index")
        Lua.setFunction(L, -1, "__tostring", scopeToString)
        Lua.setFunction(L, -1, "__gc", scopeCollect)
        Lua.setRegistryField(L, "scopelua.scope")
    }

    // MARK: scope(fn, ...)

    /// Runs fn(...) in a new child scope; releases what it acquired, newest first, when
    /// it ends; returns its results or raises its error (release errors attached).
    static let call: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard lua_type(L, 2) == LUA_TFUNCTION else {
            Lua.pushError(L, "bad argument #1 to 'scope' (function expected, got \(Lua.typeName(L, 2)))")
            return raising(L)
        }
        return runInScope(rt, L, Scope(name: "scope", parent: rt.current), functionIndex: 2)
    }

    /// Raises the error on top, announcing the traceback at `traceback` (a stack index,
    /// 0 for none) as the one it came with: a re-raise keeps the traceback from where
    /// the error happened, any other raise cancels an earlier announcement (see
    /// sl_tracebackreraise). Every raise of scope() and with_resource() goes through it.
    package static func raising(_ L: LuaState, traceback: Int32 = 0) -> Int32 {
        sl_tracebackreraise(L, -1, traceback)
        return raise
    }

    /// Calls the function at `functionIndex` with everything above it as arguments, in
    /// `scope`, then ends the scope. Returns the result count or `raise`.
    static func runInScope(_ rt: Runtime, _ L: LuaState, _ scope: Scope, functionIndex: Int32) -> Int32 {
        let nargs = lua_gettop(L) - functionIndex
        let parent = rt.current
        rt.current = scope
        lua_pushcclosure(L, sl_capturetraceback, 0)
        lua_rotate(L, functionIndex, 1)
        let status = sl_pcall(L, nargs, LUA_MULTRET, functionIndex)
        rt.current = parent
        let first = functionIndex + 1  // results, or the error object
        if status == LUA_OK {
            guard roomAfterResults(L, above: functionIndex, "scope") else {
                let failures = rt.endScope(scope, L, error: first)
                _ = rt.mergeErrors(L, primary: first, failures: failures)
                return raise
            }
            let nres = lua_gettop(L) - functionIndex
            let failures = rt.endScope(scope, L, error: 0)
            if rt.mergeErrors(L, primary: 0, failures: failures) { return raising(L) }
            return nres
        }
        // Its traceback, taken before the releases run Lua code that may fail too.
        if sl_taketraceback(L, first) == 0 { lua_pushnil(L) }
        let traceback = first + 1
        let failures = rt.endScope(scope, L, error: first)
        _ = rt.mergeErrors(L, primary: first, failures: failures)
        return raising(L, traceback: traceback)
    }

    /// After a body's results (any number, above `base`): room for the releases that
    /// follow. When the results filled the stack to its limit, they are replaced by a
    /// "stack overflow" error (at base + 1) and false is returned.
    static func roomAfterResults(_ L: LuaState, above base: Int32, _ name: String) -> Bool {
        if Lua.checkStack(L, LUA_MINSTACK) { return true }
        lua_settop(L, base)
        Lua.push(L, "stack overflow (too many results from the function given to \(name))")
        return false
    }

    // MARK: defer(fn)

    /// Registers fn(err) to run when the current scope ends.
    static let deferFunction: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard lua_type(L, 1) == LUA_TFUNCTION else {
            Lua.pushTypeError(L, 1, "function")
            return raise
        }
        let site = rt.currentSite(L)
        lua_settop(L, 1)
        let call = DeferredCall(function: luaL_ref(L, Lua.registry))
        rt.acquire(.defer, call, L, site: site)
        call.anchor = luaL_ref(L, Lua.registry)
        return 0
    }

    // MARK: with_resource(r1, ..., rn, fn)

    static let withResource: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        let n = lua_gettop(L)
        guard n >= 1, lua_type(L, n) == LUA_TFUNCTION else {
            Lua.pushTypeError(L, max(n, 1), "function")
            return raising(L)
        }
        // The call below copies the handles (the originals stay below it, pinned until
        // they are released) and adds the message handler: more than the LUA_MINSTACK
        // slots a C function is guaranteed, and as many as the script passes.
        guard Lua.checkStack(L, n + 1) else {
            Lua.pushError(L, "stack overflow (too many arguments to with_resource)")
            return raise
        }
        var held: [Handle] = []
        held.reserveCapacity(Int(n - 1))
        for i in 1..<n {
            // `with_resource(fs.open(path), fn)` with a missing file: the reason is the
            // open's message (passed along when the open came last, remembered when Lua
            // cut its results to the nil), not a type error about nil.
            if lua_type(L, i) == LUA_TNIL {
                var reason: String?
                if i + 1 < n, lua_type(L, i + 1) == LUA_TSTRING {
                    reason = Lua.string(L, i + 1)
                } else {
                    Lua.getRegistryField(L, SL_LASTFAILURE)
                    reason = Lua.string(L, -1)
                    sl_pop(L, 1)
                }
                if let reason {
                    Lua.pushError(L, "\(reason) (resource #\(i) of 'with_resource' is nil)")
                    return raise
                }
            }
            guard let h = HandleBindings.checkOpen(rt, L, i) else { return raising(L) }
            held.append(h)
        }
        let site = rt.currentSite(L)
        // Stack: r1..rn-1 fn | msgh fn r1..rn-1
        lua_pushcclosure(L, sl_capturetraceback, 0)
        let msgh = lua_gettop(L)
        lua_pushvalue(L, n)
        for i in 1..<n { lua_pushvalue(L, i) }
        var status = sl_pcall(L, n - 1, LUA_MULTRET, msgh)
        let first = msgh + 1
        if status == LUA_OK, !roomAfterResults(L, above: msgh, "with_resource") { status = LUA_ERRRUN }
        let errIndex: Int32 = status == LUA_OK ? 0 : first
        if status != LUA_OK, sl_taketraceback(L, first) == 0 { lua_pushnil(L) }
        let traceback = first + 1
        var failures: Int32 = 0
        for h in held.reversed() {
            failures += rt.release(h, L, cause: .handle(site), error: errIndex)
        }
        if status == LUA_OK {
            if rt.mergeErrors(L, primary: 0, failures: failures) { return raising(L) }
            return lua_gettop(L) - msgh
        }
        _ = rt.mergeErrors(L, primary: errIndex, failures: failures)
        return raising(L, traceback: traceback)
    }

    // MARK: scope.current() and scope objects

    static let current: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        pushScope(rt.current, L)
        return 1
    }

    static func pushScope(_ scope: Scope, _ L: LuaState) {
        let ud = lua_newuserdatauv(L, MemoryLayout<UnsafeMutableRawPointer?>.size, 0).unsafelyUnwrapped
        ud.storeBytes(of: Unmanaged.passRetained(scope).toOpaque(), as: UnsafeMutableRawPointer?.self)
        Lua.getRegistryField(L, "scopelua.scope")
        _ = lua_setmetatable(L, -2)
    }

    /// The scope behind the object at `idx`, or a type error pushed.
    static func checkScope(_ L: LuaState, _ idx: Int32) -> Scope? {
        if lua_type(L, idx) == LUA_TUSERDATA, lua_getmetatable(L, idx) != 0 {
            Lua.getRegistryField(L, "scopelua.scope")
            let same = lua_rawequal(L, -1, -2) != 0
            sl_pop(L, 2)
            if same, let raw = lua_touserdata(L, idx)?.load(as: UnsafeMutableRawPointer?.self) {
                return Unmanaged<Scope>.fromOpaque(raw).takeUnretainedValue()
            }
        }
        Lua.pushTypeError(L, idx, "scope")
        return nil
    }

    static let path: SwiftLuaFunction = { L in
        let (_, L) = Runtime.from(L)
        guard let s = checkScope(L, 1) else { return raise }
        Lua.push(L, s.path)
        return 1
    }

    static let scopeIsOpen: SwiftLuaFunction = { L in
        let (_, L) = Runtime.from(L)
        guard let s = checkScope(L, 1) else { return raise }
        lua_pushboolean(L, s.ended ? 0 : 1)
        return 1
    }

    /// What the scope owns, oldest first, as descriptor tables
    /// `{ id, kind, label, site, scope, age }` (age in seconds since acquisition).
    /// Descriptors, not the handles themselves: finding a handle from its record would
    /// need a weak registry entry per handle, a quarter of an acquire/release pair.
    static let resources: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let s = checkScope(L, 1) else { return raise }
        let open = s.openHandles.filter { $0.pointee.resource?.isHandle ?? true }
        lua_createtable(L, Int32(clamping: open.count), 0)  // a size hint
        for (i, r) in open.enumerated() {
            rt.pushDescriptor(r, L)
            lua_rawseti(L, -2, lua_Integer(i + 1))
        }
        return 1
    }

    static let scopeToString: SwiftLuaFunction = { L in
        let (_, L) = Runtime.from(L)
        guard let s = checkScope(L, 1) else { return raise }
        var state = "ended"
        if !s.ended {
            // The same count as #s:resources(); pending defers are not resources.
            let (resources, defers) = s.visibleCounts
            state = "open, \(resources) open resource\(resources == 1 ? "" : "s")"
            if defers > 0 { state += ", \(defers) deferred call\(defers == 1 ? "" : "s")" }
        }
        Lua.push(L, "scope \(s.path) (\(state))")
        return 1
    }

    static let scopeCollect: SwiftLuaFunction = { L in
        guard let L, let ud = lua_touserdata(L, 1),
              let raw = ud.load(as: UnsafeMutableRawPointer?.self) else { return 0 }
        ud.storeBytes(of: nil, as: UnsafeMutableRawPointer?.self)
        Unmanaged<Scope>.fromOpaque(raw).release()
        return 0
    }
}
