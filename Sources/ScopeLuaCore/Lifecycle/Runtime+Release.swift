import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Acquiring and releasing: records and boxes, scope ends, leaks, error merging
/// (docs/ARCHITECTURE.md, "Ownership of records" and rule 4).
extension Runtime {

    /// Creates a handle of `kind`, registers it in `scope` (default: the current one)
    /// and pushes it. `resource` is the kind's Swift state, if it has any; its label is
    /// the Lua string at `labelIndex` when given. Stack: +1.
    @discardableResult
    package func acquire(_ kind: ResourceKind, _ resource: Resource?, _ L: LuaState, site: Site,
                 in scope: Scope? = nil, labelIndex: Int32 = 0, aux: Int32 = 0) -> Handle {
        let labelIndex = labelIndex == 0 ? 0 : lua_absindex(L, labelIndex)
        let h = sl_rec_new(arena.pool).unsafelyUnwrapped
        h.pointee = sl_Handle(
            record: resource.map { Unmanaged.passRetained($0).toOpaque() }, scope: nil,
            id: Int64(newID()), start: sl_monotonic_ns(), value: 0, detail: 0,
            kind: Int32(kind.index), how: Int32(SL_OPEN), slot: -1, aux: aux,
            source: site.source, line: site.line, relsource: 0, relline: 0, pins: 0, boxgone: 0)
        _ = sl_pushbox(L, h, resource == nil ? 0 : 1)
        if let resource {
            if labelIndex != 0 {
                lua_pushvalue(L, labelIndex)
            } else if let label = resource.label {
                Lua.push(L, label)
            } else {
                lua_pushnil(L)
            }
            lua_setiuservalue(L, -2, 1)
        }
        lua_rawgeti(L, Lua.registry, lua_Integer(metatableRefs[kind.index]))
        _ = lua_setmetatable(L, -2)
        let owner = scope ?? current
        owner.add(h)
        sl_kindcounts(info, kind.rawValue).pointee.acquired += 1
        if options.trace { traceAcquire(h, owner) }
        return h
    }

    /// Makes `child` owned by `owner` as well as by its scope: `owner` releases it first.
    package func adopt(_ child: Handle, by owner: Handle) {
        guard let r = owner.pointee.resource, let c = child.pointee.resource else { return }
        c.ownerHandle = owner
        r.children.append(child)
    }

    /// Releases the handle's resource once: marks it released, takes it out of its scope
    /// and owner, releases its children (newest first), then runs its release handler.
    /// Returns the number of failures, each pushed on the stack as an error object.
    ///
    /// `h` is pinned for the duration (release handlers may run Lua, which may collect
    /// the handle's box), and may be freed when this returns: callers do not touch it
    /// afterwards except through a box on the stack (`retire`).
    @discardableResult
    package func release(_ h: Handle, _ L: LuaState, cause: ReleaseCause, error errIndex: Int32) -> Int32 {
        guard h.pointee.isOpen else { return 0 }
        sl_rec_pin(h)
        defer { sl_rec_unpin(arena.pool, h) }
        let counts = sl_kindcounts(info, h.pointee.kind)
        switch cause {
        case .closed:
            h.pointee.how = Int32(SL_BY_CLOSE)
            counts.pointee.released_by_handle += 1
        case .handle(let site):
            h.pointee.how = Int32(SL_BY_HANDLE)
            h.pointee.relsource = site.source
            h.pointee.relline = site.line
            counts.pointee.released_by_handle += 1
        case .scopeEnd(let scope):
            h.pointee.how = Int32(SL_BY_SCOPE)
            h.pointee.detail = Int64(internPath(scope))
            counts.pointee.released_by_scope += 1
        case .parent(let owner):
            h.pointee.how = Int32(SL_BY_PARENT)
            h.pointee.relsource = owner.pointee.kind
            h.pointee.detail = owner.pointee.id
            counts.pointee.released_by_scope += 1
        case .collected:
            h.pointee.how = Int32(SL_BY_GC)
            counts.pointee.leaked += 1
        }
        sl_registry_remove(h)
        guard let raw = h.pointee.record else {
            if options.trace { traceRelease(h, cause) }
            closePlain(h)
            return 0
        }
        let r = Unmanaged<Resource>.fromOpaque(raw).takeUnretainedValue()
        if let owner = r.ownerHandle {
            r.ownerHandle = nil
            if let o = owner.pointee.resource, let i = o.children.lastIndex(of: h) { o.children.remove(at: i) }
        }
        if options.trace { traceRelease(h, cause) }
        var failures: Int32 = 0
        while !r.children.isEmpty, let child = r.children.popLast() {
            failures += release(child, L, cause: .parent(h), error: errIndex)
        }
        Lua.reserve(L, 8, for: "a release handler")
        if !r.close(self, L, h, error: errIndex) {
            counts.pointee.release_errors += 1
            failures += 1
        }
        h.pointee.record = nil
        Unmanaged<Resource>.fromOpaque(raw).release()
        return failures
    }

    /// Release handlers of kinds without Swift state.
    @inline(__always)
    private func closePlain(_ h: Handle) {
        if h.pointee.kind == ResourceKind.timer.rawValue {
            let elapsed = sl_elapsed_ns(h.pointee.start)
            h.pointee.value = Int64(elapsed)
            ledger.recordTimer(Int(h.pointee.aux), nanos: elapsed)
        }
    }

    @inline(never)
    private func traceAcquire(_ h: Handle, _ scope: Scope) {
        diagnose("scopelua: trace: acquire \(describe(h)) in \(scope.path) at \(describe(h.pointee.site))")
    }

    @inline(never)
    private func traceRelease(_ h: Handle, _ cause: ReleaseCause) {
        let how: String
        switch cause {
        case .handle(let site): how = "at \(describe(site))"
        case .closed: how = "by <close>"
        case .scopeEnd(let s): how = "by the end of \(s.path)"
        case .collected: how = "by the garbage collector"
        case .parent(let owner): how = "with \(describe(owner))"
        }
        diagnose("scopelua: trace: release \(describe(h)) \(how)")
    }

    /// Ends `scope`: releases everything still open in it, newest first, passing the
    /// error at `errIndex` (0: none) to each release handler. A failing release does not
    /// stop the others, and the ones after it receive its error when the scope had none
    /// (as Python's ExitStack passes a failing exit's exception on): a defer learns that
    /// the scope is failing. Returns the number of failures pushed on the stack.
    package func endScope(_ scope: Scope, _ L: LuaState, error errIndex: Int32) -> Int32 {
        if info.pointee.leakhead < info.pointee.nleaks { releaseLeaks(L) }
        var failures: Int32 = 0
        var passed = errIndex
        while let h = scope.popNewest() {
            let failed = release(h, L, cause: .scopeEnd(scope), error: passed)
            if failed > 0, passed == 0 { passed = lua_gettop(L) - failed + 1 }
            failures += failed
        }
        return failures
    }

    /// Applies rule 4 to an error and the release failures on top of the stack.
    ///
    /// `primary` is the stack index of the body's error (0 if the body succeeded);
    /// `failures` error objects sit on top. Leaves exactly one error object on top in
    /// place of the failures and returns true, or returns false (stack unchanged) when
    /// there is nothing to raise. A string error gets the release errors appended;
    /// a plain table gets them in a `release_errors` list; any other error object keeps
    /// its identity and the release errors go to the diagnostics sink.
    package func mergeErrors(_ L: LuaState, primary: Int32, failures: Int32) -> Bool {
        if failures == 0 {
            guard primary != 0 else { return false }
            lua_pushvalue(L, primary)
            return true
        }
        let top = lua_gettop(L)
        let first = top - failures + 1
        let main = primary != 0 ? primary : first
        var attached: [String] = []
        for i in first...top where i != main {
            attached.append(Lua.describe(L, i))
        }
        lua_pushvalue(L, main)
        if !attached.isEmpty {
            switch lua_type(L, -1) {
            case LUA_TSTRING:
                let text = Lua.describe(L, -1) + attached.map { "\n\trelease error: \($0)" }.joined()
                sl_pop(L, 1)
                Lua.push(L, text)
            case LUA_TTABLE where lua_getmetatable(L, -1) == 0:
                Lua.rawField(L, -1, "release_errors")
                if lua_type(L, -1) != LUA_TTABLE {
                    sl_pop(L, 1)
                    lua_createtable(L, Int32(attached.count), 0)
                    lua_pushvalue(L, -1)
                    Lua.setField(L, -3, "release_errors")
                }
                var n = lua_rawlen(L, -1)
                for message in attached {
                    n += 1
                    Lua.push(L, message)
                    lua_rawseti(L, -2, lua_Integer(n))
                }
                sl_pop(L, 1)
            default:
                if lua_type(L, -1) == LUA_TTABLE { sl_pop(L, 1) }  // the metatable
                for message in attached {
                    diagnose("scopelua: release error (the error being raised is a \(Lua.typeName(L, -1)) and cannot carry it): \(message)")
                }
            }
        }
        // Replace the failures by the merged error.
        lua_copy(L, -1, first)
        lua_settop(L, first)
        return true
    }

    /// Detaches the released handle's box at `idx` from its record (which may be freed:
    /// `h` is not to be used afterwards) and gives it the metatable without a finalizer.
    /// Stack: 0.
    @inlinable @inline(__always)
    package func retire(_ h: Handle, _ L: LuaState, _ idx: Int32) {
        let kind = Int(h.pointee.kind)
        guard sl_detach(L, idx) != 0 else { return }
        lua_rawgeti(L, Lua.registry, lua_Integer(metatableRefs[ResourceKind.count + kind]))
        _ = lua_setmetatable(L, idx)
    }

    /// Releases the handles whose boxes the collector reclaimed while they were open
    /// (leaks), queued by the finalizer. Runs only at safe points: on entry from Lua
    /// into the runtime, at the end of a scope, between events; never from inside an
    /// allocation. Warns with the acquisition site and counts each. Stack: 0.
    func releaseLeaks(_ L: LuaState) {
        while let h = sl_leak_pop(L) {
            if h.pointee.isOpen {
                noteLeak(h)
                let base = lua_gettop(L)
                let failures = release(h, L, cause: .collected, error: 0)
                for i in 0..<failures {
                    diagnose("scopelua: release error: \(Lua.describe(L, base + 1 + i))")
                }
                lua_settop(L, base)
            }
            sl_rec_unpin(arena.pool, h)
        }
    }

    /// The message for using the released handle at `idx`, positioned at the caller.
    @usableFromInline func pushUseAfterRelease(_ h: Handle, _ L: LuaState, _ idx: Int32) {
        Lua.pushError(L, "\(describeHandle(h, L, idx)) used after release (\(describeRelease(h)))")
    }
}
