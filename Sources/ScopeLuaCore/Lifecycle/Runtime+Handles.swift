import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Finding handles on the stack and describing them to scripts.
extension Runtime {

    /// The handle at `idx` if it is one of the runtime's (of `kind`, when given), open or
    /// released. Stack: 0.
    @inlinable @inline(__always)
    package func handle(at idx: Int32, _ L: LuaState, kind: ResourceKind? = nil) -> Handle? {
        let h = sl_tohandle(L, idx)
        if let kind, let h, h.pointee.kind != Int32(kind.index) { return nil }
        return h
    }

    /// Pushes `{ id, kind, label, site, scope, age }` for an open handle. Stack: +1.
    func pushDescriptor(_ h: Handle, _ L: LuaState) {
        lua_createtable(L, 0, 6)
        lua_pushinteger(L, lua_Integer(h.pointee.id))
        Lua.setField(L, -2, "id")
        Lua.push(L, kindNames[Int(h.pointee.kind)])
        Lua.setField(L, -2, "kind")
        if let label = label(h) {
            Lua.push(L, label)
            Lua.setField(L, -2, "label")
        }
        Lua.push(L, describe(h.pointee.site))
        Lua.setField(L, -2, "site")
        Lua.push(L, h.pointee.owningScope?.path ?? "?")
        Lua.setField(L, -2, "scope")
        lua_pushnumber(L, Double(sl_elapsed_ns(h.pointee.start)) / 1e9)
        Lua.setField(L, -2, "age")
    }

    /// Warns about a leak the first time its acquisition site leaks a resource of its
    /// kind; later ones are counted and summed up when the runtime closes
    /// (`summarizeLeaks`), so a forgotten `<close>` in a loop is one line, not thousands.
    package func noteLeak(_ h: Handle) {
        let key = LeakSite(kind: h.pointee.kind, site: h.pointee.site)
        let seen = leakSites[key, default: 0]
        leakSites[key] = seen + 1
        guard seen == 0 else { return }
        leakOrder.append(key)
        diagnose("scopelua: leak: \(describe(h)) acquired at \(describe(h.pointee.site)) was never released (reclaimed by the garbage collector)")
    }

    /// `scopelua: 2998 more leaks of files acquired at job.lua:4`, per site that leaked
    /// more than once, in the order the sites first leaked.
    func summarizeLeaks() {
        for key in leakOrder {
            guard let count = leakSites[key], count > 1 else { continue }
            let kind = ResourceKind(rawValue: key.kind)?.plural ?? "resources"
            diagnose("scopelua: \(count - 1) more leak\(count == 2 ? "" : "s") of \(kind) acquired at \(describe(key.site))")
        }
        leakSites = [:]
        leakOrder = []
    }
}
